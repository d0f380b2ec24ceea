"""JAX-specific checks beyond the shared conformance suite: the compiled step on edge shapes,
buffer donation, no float64 in float32 programs under x64, copies on the way in, the log level."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import multirnn
from multirnn import PARAM_NAMES
from tests.conftest import _load, random_problem, require_backend_module

require_backend_module("jax")


@pytest.fixture
def fast() -> multirnn.Backend:
    return _load("jax", "fast")


@pytest.mark.parametrize("batch_size,num_steps,num_hiddens", [(1, 1, 1), (2, 1, 5), (1, 3, 4), (3, 7, 9)])
def test_fast_train_step_matches_oracle_on_edge_shapes(fast, oracle, batch_size, num_steps, num_hiddens):
    # The compiled backward peels off the last time step; T=1 leaves an empty scan.
    params, X, Y, h0 = random_problem(2, 6, num_hiddens, batch_size, num_steps, "float64")
    p_want, l_want, n_want, s_want = oracle.train_step(oracle.params_from_numpy(params), X, Y, (h0.copy(),), 0.5, 1.0)
    p_got, l_got, n_got, s_got = fast.train_step(fast.params_from_numpy(params), X, Y, (h0.copy(),), 0.5, 1.0)
    np.testing.assert_allclose(float(l_got), float(l_want), rtol=1e-10)
    np.testing.assert_allclose(float(n_got), float(n_want), rtol=1e-9)
    np.testing.assert_allclose(fast.as_numpy(s_got[0]), s_want[0], rtol=1e-10, atol=1e-12)
    got = fast.params_to_numpy(p_got)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[k], p_want[k], rtol=1e-9, atol=1e-12)


def test_fast_step_compiles_without_float64_for_float32(fast):
    # Under x64 a stray Python float or default dtype would silently widen float32 work.
    from multirnn.backends import jax_backend as jb

    params, X, Y, _ = random_problem(dtype="float32")
    p = fast.params_from_numpy(params)
    h = fast.init_state(3, 7, "float32")[0]
    one = np.float32(1)
    hlo = jb._fast_train_step.lower(p, X.astype(np.int32), Y.astype(np.int32), h, one, one).as_text()
    assert "f64" not in hlo


def test_donation_is_used_and_dict_stays_valid(fast):
    params, X, Y, _ = random_problem(dtype="float64")
    p = fast.params_from_numpy(params)
    old = dict(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Some donated buffers were not usable" must not appear
        out, *_ = fast.train_step(p, X, Y, fast.init_state(3, 7, "float64"), 0.1, 1.0)
    assert out is p and all(old[k].is_deleted() for k in PARAM_NAMES)  # updated in place
    assert all(np.isfinite(v).all() for v in fast.params_to_numpy(p).values())


def test_params_from_numpy_copies():
    be = _load("jax")
    params, *_ = random_problem()
    p = be.params_from_numpy(params)
    params["W_hh"][:] = 0.0  # the caller's arrays are theirs to mutate
    assert be.params_to_numpy(p)["W_hh"].any()


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_user_log_level_is_respected():
    _load("jax")
    code = "import os, multirnn.backends.jax_backend; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    assert _run_python(code, TF_CPP_MIN_LOG_LEVEL="0").stdout.strip() == "0"
    assert _run_python(code).stdout.strip() == "2"
