"""The benchmark's built-in-layer baselines (benchmarks/builtin_<framework>.py) compute the oracle's
maths, so that comparing their speed with the hand-written backends is fair.

Float32, from ``random_problem`` weights: loss within rtol 1e-5 of the NumPy oracle, and after three
training steps with the state carried, every parameter within 1e-4 of its norm (the layers sum
their weight gradients in another order than the oracle).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from multirnn import PARAM_NAMES
from tests.conftest import FRAMEWORKS, random_problem, require_backend, require_module

SHAPES = {"vocab_size": 11, "num_hiddens": 16, "batch_size": 4, "num_steps": 8}


def _problem(seed: int = 0):
    return random_problem(seed, dtype="float32", **SHAPES)


@pytest.fixture(params=FRAMEWORKS, ids=FRAMEWORKS)
def builtin(request: pytest.FixtureRequest):
    """The baseline module of every selected framework (skipped or failed like the backend)."""
    require_backend(request.param)
    if request.param == "jax":
        require_module("flax", "pip install 'multirnn[jax]'")
    return importlib.import_module(f"benchmarks.builtin_{request.param}")


def test_params_round_trip_is_exact(builtin):
    params, *_ = _problem()
    got = builtin.make_trainer(params, 1.0, 1.0).params_to_numpy()
    assert set(got) == set(PARAM_NAMES)
    for k in PARAM_NAMES:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], params[k])


def test_init_state_is_zeros(builtin):
    params, *_ = _problem()
    trainer = builtin.make_trainer(params, 1.0, 1.0)
    h = trainer.state_to_numpy(trainer.init_state(SHAPES["batch_size"]))
    np.testing.assert_array_equal(h, np.zeros((SHAPES["batch_size"], SHAPES["num_hiddens"]), np.float32))


@pytest.mark.parametrize("initial", ["zeros", "random"])
def test_loss_matches_oracle(builtin, oracle, initial):
    params, X, Y, h0 = _problem()
    trainer = builtin.make_trainer(params, 1.0, 1.0)
    state = trainer.init_state(X.shape[0]) if initial == "zeros" else h0.copy()  # NumPy (B, H) accepted
    want_state = np.zeros_like(h0) if initial == "zeros" else h0.copy()
    want, _, (want_h,) = oracle.loss_and_grads(oracle.params_from_numpy(params), X, Y, (want_state,))
    got, h = trainer.loss(X, Y, state)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, float(want), rtol=1e-5)
    np.testing.assert_allclose(trainer.state_to_numpy(h), want_h, rtol=1e-5, atol=1e-6)


# θ = 0.5 clips every step, θ = 100 never: both branches of d2l's rule are exercised (asserted).
@pytest.mark.parametrize("max_grad_norm,clipped", [(0.5, True), (100.0, False)])
def test_three_train_steps_match_oracle(builtin, oracle, max_grad_norm, clipped):
    params, *_ = _problem()
    batches = [_problem(seed)[1:3] for seed in (1, 2, 3)]  # a different (X, Y) every step
    lr = 0.7
    trainer = builtin.make_trainer(params, lr, max_grad_norm)
    p_want = oracle.params_from_numpy(params)
    state = trainer.init_state(SHAPES["batch_size"])
    want_state = (np.zeros((SHAPES["batch_size"], SHAPES["num_hiddens"]), np.float32),)
    for X, Y in batches:  # the state is carried between steps, as in sequential partitioning
        p_want, l_want, norm, want_state = oracle.train_step(p_want, X, Y, want_state, lr, max_grad_norm)
        assert (float(norm) > max_grad_norm) == clipped
        loss, state = trainer.train_step(X, Y, state)
        assert not isinstance(loss, (float, np.floating))  # a framework scalar: no host sync per step
        np.testing.assert_allclose(float(loss), float(l_want), rtol=1e-5)
    got = trainer.params_to_numpy()
    for k in PARAM_NAMES:
        assert got[k].dtype == np.float32
        err = np.linalg.norm(got[k] - p_want[k])
        assert err <= 1e-4 * np.linalg.norm(p_want[k]), f"{k}: |got - want| = {err:.3g}"
    np.testing.assert_allclose(trainer.state_to_numpy(state), want_state[0], rtol=1e-4, atol=1e-5)
