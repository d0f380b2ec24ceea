"""PyTorch-specific checks beyond the shared conformance suite.

The shared suite checks forward, gradients and training steps of both modes; here fast mode's own
``clip_gradients`` and ``sgd_step`` are checked against the oracle too, along with the torch-only
rules (no aliasing of caller data, global settings untouched, the log level).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import multirnn
from multirnn import PARAM_NAMES
from tests.conftest import random_problem, require_backend_module
from multirnn.testing import FWD_RTOL, assert_grads_close

require_backend_module("torch")
import torch  # noqa: E402  (after the guard)

MODES = ["eager", "fast"]
DTYPES = ["float64", "float32"]


@pytest.fixture(params=MODES)
def torch_backend(request: pytest.FixtureRequest) -> multirnn.Backend:
    return multirnn.get_backend("torch", mode=request.param)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [10.0, 1e-3, 0.0])
def test_clip_and_sgd_match_oracle_in_both_modes(torch_backend, oracle, dtype, scale):
    be = torch_backend
    params, *_ = random_problem(seed=4, dtype=dtype)
    g = {k: (v * scale).astype(dtype) for k, v in random_problem(seed=5, dtype=dtype)[0].items()}
    want_clipped, want_norm = oracle.clip_gradients({k: v.copy() for k, v in g.items()}, 1.0)
    clipped, norm = be.clip_gradients(be.params_from_numpy(g), 1.0)
    np.testing.assert_allclose(float(norm), float(want_norm), rtol=FWD_RTOL[dtype])
    want = oracle.sgd_step(oracle.params_from_numpy(params), want_clipped, 0.5)
    got = be.params_to_numpy(be.sgd_step(be.params_from_numpy(params), clipped, 0.5))
    for k in PARAM_NAMES:
        assert got[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(got[k], want[k], rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])


def test_modes_share_params(oracle):
    """Params made by one mode train in the other (eager needs autograd leaves, fast does not)."""
    params, X, Y, _ = random_problem(seed=2)
    eager, fast = multirnn.get_backend("torch", mode="eager"), multirnn.get_backend("torch", mode="fast")
    _, want, _ = oracle.loss_and_grads(params, X, Y, oracle.init_state(3, 7, "float64"))
    for be, other in ((eager, fast), (fast, eager)):
        _, grads, _ = be.loss_and_grads(other.params_from_numpy(params), X, Y, be.init_state(3, 7, "float64"))
        assert_grads_close(be.params_to_numpy(grads), want, 1e-9)


def test_caller_data_is_never_aliased(torch_backend):
    """sgd_step updates the backend's copies; returned states and grads stay as they were handed out."""
    be = torch_backend
    params, X, Y, _ = random_problem(seed=6)
    original = {k: v.copy() for k, v in params.items()}
    p = be.params_from_numpy(params)
    _, grads1, state1 = be.loss_and_grads(p, X, Y, be.init_state(3, 7, "float64"))
    g1, s1 = be.params_to_numpy(grads1), be.as_numpy(state1[0]).copy()
    p, _, _, state2 = be.train_step(p, X, Y, state1, 0.5, 1.0)
    be.train_step(p, X, Y, state2, 0.5, 1.0)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(params[k], original[k])
        np.testing.assert_array_equal(be.as_numpy(grads1[k]), g1[k])
    np.testing.assert_array_equal(be.as_numpy(state1[0]), s1)


def test_results_need_no_grad_and_torch_defaults_are_untouched(torch_backend):
    be = torch_backend
    params, X, Y, _ = random_problem(seed=8, dtype="float32")
    p, loss, norm, state = be.train_step(be.params_from_numpy(params), X, Y, be.init_state(3, 7, "float32"), 0.1, 1.0)
    assert not loss.requires_grad and not norm.requires_grad and not state[0].requires_grad
    assert loss.dtype == norm.dtype == torch.float32
    assert torch.get_default_dtype() == torch.float32


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_user_log_level_is_respected():
    code = "import os, multirnn; multirnn.get_backend('torch'); print(os.environ['TORCH_CPP_LOG_LEVEL'])"
    assert _run(code, TORCH_CPP_LOG_LEVEL="INFO").stdout.strip() == "INFO"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CPP_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == "ERROR"
