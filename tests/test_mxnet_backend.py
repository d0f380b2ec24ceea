"""MXNet-specific checks: the compiled (mode="fast") paths against the oracle, and import hygiene.

The shared suite (test_backends.py) checks fast mode through ``train_step`` in float64 only;
these add ``forward`` in fast mode, float32 training steps, shape caching and a clean import.
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

require_backend_module("mxnet")

TOL = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture
def fast() -> multirnn.Backend:
    return multirnn.get_backend("mxnet", mode="fast")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch_size,num_steps", [(3, 5), (1, 1)])
def test_fast_forward_matches_oracle(fast, oracle, dtype, batch_size, num_steps):
    params, X, _, h0 = random_problem(dtype=dtype, batch_size=batch_size, num_steps=num_steps)
    want_logits, want_state = oracle.forward(params, X, (h0.copy(),))
    logits, state = fast.forward(fast.params_from_numpy(params), X, (h0.copy(),))
    assert fast.as_numpy(logits).dtype == np.dtype(dtype)
    np.testing.assert_allclose(fast.as_numpy(logits), want_logits, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(fast.as_numpy(state[0]), want_state[0], rtol=TOL[dtype], atol=TOL[dtype])


def test_fast_float32_step_matches_oracle(fast, oracle):
    # One step from the same point: float32 differs from the oracle only by summation order.
    params, X, Y, h0 = random_problem(dtype="float32", num_hiddens=16)
    want_p, want_loss, want_norm, _ = oracle.train_step(oracle.params_from_numpy(params), X, Y, (h0.copy(),), 0.5, 1.0)
    p, loss, norm, state = fast.train_step(fast.params_from_numpy(params), X, Y, (h0.copy(),), 0.5, 1.0)
    assert np.ndim(fast.as_numpy(loss)) == 0 and np.ndim(fast.as_numpy(norm)) == 0
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    np.testing.assert_allclose(float(norm), float(want_norm), rtol=1e-4)
    got = fast.params_to_numpy(p)
    for k in PARAM_NAMES:
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], want_p[k], rtol=1e-4, atol=1e-5)


def test_fast_blocks_are_compiled_once_per_shape(fast):
    params, X, Y, _ = random_problem()
    p = fast.params_from_numpy(params)
    state = fast.init_state(3, 7, "float64")
    for _ in range(3):
        p, _, _, state = fast.train_step(p, X, Y, state, 0.1, 1.0)
    assert len(fast._blocks) == 2  # the loss graph and the clip+SGD graph
    fast.train_step(p, X[:, :2], Y[:, :2], state, 0.1, 1.0)  # new shape -> one new loss graph
    assert len(fast._blocks) == 3


def test_import_is_quiet_and_imports_only_mxnet():
    code = (
        "import sys, multirnn; b = multirnn.get_backend('mxnet', mode='fast'); "
        "import numpy as np; from tests.conftest import random_problem; "
        "p, X, Y, h = random_problem(); s = b.init_state(3, 7, 'float64'); "
        "float(b.train_step(b.params_from_numpy(p), X, Y, s, 0.1, 1.0)[1]); "
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'flax') if m in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""
