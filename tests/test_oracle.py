"""The NumPy oracle on its own: finite differences, hand-checkable cases, clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

import multirnn
from multirnn import PARAM_NAMES
from tests.conftest import random_problem


def test_gradients_match_central_finite_differences(oracle):
    params, X, Y, h0 = random_problem(seed=1, vocab_size=7, num_hiddens=5, batch_size=3, num_steps=4, scale=0.5)
    _, grads, _ = oracle.loss_and_grads(params, X, Y, (h0,))
    eps, worst = 1e-6, 0.0
    for k in PARAM_NAMES:
        for idx in np.ndindex(params[k].shape):
            shifted = {n: v.copy() for n, v in params.items()}
            shifted[k][idx] += eps
            up = float(oracle.loss_and_grads(shifted, X, Y, (h0,))[0])
            shifted[k][idx] -= 2 * eps
            down = float(oracle.loss_and_grads(shifted, X, Y, (h0,))[0])
            fd = (up - down) / (2 * eps)
            worst = max(worst, abs(fd - grads[k][idx]) / max(abs(fd) + abs(grads[k][idx]), 1e-8))
    assert worst < 1e-6, worst


def test_zero_weights_give_uniform_predictions(oracle):
    V, H = 9, 4
    params = {k: np.zeros(s) for k, s in multirnn.params.param_shapes(V, H).items()}
    X = np.array([[1, 2, 3], [4, 5, 6]])
    logits, state = oracle.forward(params, X, oracle.init_state(2, H, "float64"))
    assert logits.shape == (6, V) and not logits.any() and not state[0].any()
    loss, grads, _ = oracle.loss_and_grads(params, X, X, oracle.init_state(2, H, "float64"))
    assert float(loss) == pytest.approx(math.log(V))
    # with zero weights only the output bias gets a gradient: mean of (1/V - one_hot(y))
    expected = np.full(V, 1 / V) - np.bincount(X.T.reshape(-1), minlength=V) / 6
    np.testing.assert_allclose(grads["b_q"], expected)
    assert not grads["W_xh"].any() and not grads["W_hh"].any()


def test_one_step_by_hand(oracle):
    """V=2, H=1: every number can be written down."""
    params = {"W_xh": np.array([[0.5], [-1.0]]), "W_hh": np.array([[2.0]]), "b_h": np.array([0.1]),
              "W_hq": np.array([[1.0, -1.0]]), "b_q": np.array([0.0, 0.3])}
    h_prev = 0.2
    h = math.tanh(0.5 + 2.0 * h_prev + 0.1)  # input token 0
    logits, state = oracle.forward(params, np.array([[0]]), (np.array([[h_prev]]),))
    np.testing.assert_allclose(logits, [[h, -h + 0.3]])
    np.testing.assert_allclose(state[0], [[h]])
    loss, _, _ = oracle.loss_and_grads(params, np.array([[0]]), np.array([[1]]), (np.array([[h_prev]]),))
    assert float(loss) == pytest.approx(-((-h + 0.3) - math.log(math.exp(h) + math.exp(-h + 0.3))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_oracle_runs_in_both_dtypes(oracle, dtype):
    params, X, Y, _ = random_problem(dtype=dtype)
    loss, grads, state = oracle.loss_and_grads(params, X, Y, oracle.init_state(3, 7, dtype))
    assert np.asarray(loss).dtype == np.dtype(dtype) and state[0].dtype == np.dtype(dtype)
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())


def test_init_params_follows_d2l():
    p = multirnn.init_params(28, 512, seed=0)
    assert {k: v.shape for k, v in p.items()} == {"W_xh": (28, 512), "W_hh": (512, 512), "b_h": (512,),
                                                   "W_hq": (512, 28), "b_q": (28,)}
    assert all(v.dtype == np.float32 for v in p.values())
    assert not p["b_h"].any() and not p["b_q"].any()
    assert abs(p["W_hh"].std() - 0.01) < 2e-4 and abs(p["W_hh"].mean()) < 1e-4
    p64 = multirnn.init_params(28, 512, seed=0, dtype="float64")
    np.testing.assert_array_equal(p64["W_hh"].astype(np.float32), p["W_hh"])  # same draw, then cast
    assert not np.array_equal(multirnn.init_params(28, 512, seed=1)["W_hh"], p["W_hh"])


@pytest.mark.parametrize("bad", [{"vocab_size": 0}, {"num_hiddens": -3}, {"dtype": "float16"}])
def test_init_params_rejects_bad_input(bad):
    kwargs = {"vocab_size": 28, "num_hiddens": 8, **bad}
    with pytest.raises(ValueError):
        multirnn.init_params(**kwargs)
