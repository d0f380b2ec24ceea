"""The NumPy oracle on its own: finite differences, hand-checkable cases, clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

import multirnn
from multirnn.backends.numpy_backend import NumpyBackend
from multirnn.cells import Model
from multirnn.testing import central_differences, random_model_problem
from tests.conftest import random_problem


MODELS = [Model(), Model("gru"), Model("gru-reset-after"), Model("lstm"), Model("rnn", 2), Model("lstm", 2),
          Model("gru", 2), Model("gru-reset-after", 2, True), Model("rnn", 1, True), Model("lstm", 1, True)]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name.replace(" ", ""))
def test_gradients_match_central_finite_differences(model):
    """Hand-written BPTT of every cell, stacked or not, one or two biases: relative error < 1e-6."""
    oracle = NumpyBackend(model=model)
    params, X, Y, state = random_model_problem(model, seed=1, vocab_size=7, num_hiddens=5, batch_size=3, num_steps=4,
                                               scale=0.5)
    loss = lambda p: float(oracle.loss_and_grads(p, X, Y, state)[0])  # noqa: E731
    _, grads, _ = oracle.loss_and_grads(params, X, Y, state)
    assert set(grads) == set(model.param_names())
    # error relative to each parameter's gradient norm: an entry-wise relative error is dominated
    # by the finite differences' own rounding on tiny entries; a wrong formula is off by O(1)
    fds = central_differences(loss, params)
    worst = max(float(np.max(np.abs(fd - grads[k]))) / float(np.linalg.norm(fd)) for k, fd in fds.items())
    assert worst < 1e-6, worst


def test_second_bias_is_a_second_copy_of_the_first():
    """Two biases b_g + b_hg compute what one bias of their sum computes, and both get its gradient."""
    one, two = Model("lstm"), Model("lstm", second_bias=True)
    params, X, Y, state = random_model_problem(two, seed=2)
    merged = {k: v for k, v in params.items() if k in one.param_names()}
    for g in one.cell.gates:
        merged[f"b_{g}"] = params[f"b_{g}"] + params[f"b_h{g}"]
    l2, g2, _ = NumpyBackend(model=two).loss_and_grads(params, X, Y, state)
    l1, g1, _ = NumpyBackend(model=one).loss_and_grads(merged, X, Y, state)
    assert float(l1) == pytest.approx(float(l2), rel=1e-12)
    for g in one.cell.gates:
        np.testing.assert_allclose(g2[f"b_h{g}"], g2[f"b_{g}"], rtol=1e-12)
        np.testing.assert_allclose(g2[f"b_{g}"], g1[f"b_{g}"], rtol=1e-10)


def test_one_layer_rnn_is_unchanged_by_the_generalisation(oracle):
    """The generic oracle computes exactly what d2l's rnn() computes (hand-written here)."""
    params, X, Y, h0 = random_problem(seed=4)
    logits, (h,) = oracle.forward(params, X, (h0,))
    H = h0
    outs = []
    for x in oracle.one_hot(X, 11, "float64"):
        H = np.tanh(x @ params["W_xh"] + H @ params["W_hh"] + params["b_h"])
        outs.append(H @ params["W_hq"] + params["b_q"])
    np.testing.assert_allclose(logits, np.concatenate(outs), rtol=1e-14)
    np.testing.assert_allclose(h, H, rtol=1e-14)


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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clipping_reports_the_norm_in_the_grads_dtype(oracle, dtype):
    """The norm is summed and rooted in float64 and θ/‖g‖ rounded to the grads' dtype (how the oracle has
    always clipped, kept so that its training curves do not change); the norm is returned in the grads'
    dtype, as every backend returns it."""
    params, *_ = random_problem(dtype=dtype)
    grads = {k: v * 10 for k, v in params.items()}
    norm64 = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    clipped, norm = oracle.clip_gradients(grads, 1.0)
    assert np.ndim(norm) == 0 and norm.dtype == np.dtype(dtype) and norm == np.dtype(dtype).type(norm64)
    for k, g in grads.items():
        np.testing.assert_array_equal(clipped[k], g * np.dtype(dtype).type(1.0 / norm64), err_msg=k)
        assert clipped[k].dtype == np.dtype(dtype)
    _, X, Y, _ = random_problem(dtype=dtype)
    _, _, norm, _ = oracle.train_step(params, X, Y, oracle.init_state(3, 7, dtype), 0.1, 1.0)
    assert norm.dtype == np.dtype(dtype)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_float32_bias_gradients_stay_accurate_over_many_rows(cell):
    """NumPy's sum(axis=0) adds rows one by one: at batch 4096 x 64 steps the float32 oracle's b_q
    gradient was 4.3e-4 off its float64 value (the weights' 1.3e-6), so correct frameworks, whose sums
    are pairwise, 'disagreed' with it (a new user's d2l-ed2 run at --batch-size 4096 --num-steps 64)."""
    model = Model(cell)
    be = NumpyBackend(model=model)
    B, T, H, V = 4096, 64, 8, 28
    rng = np.random.default_rng(0)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    p32 = multirnn.init_params(V, H, seed=0, model=model)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    state = be.init_state(B, H)
    _, g32, _ = be.loss_and_grads(be.params_from_numpy(p32), X, Y, state)
    _, g64, _ = be.loss_and_grads(be.params_from_numpy(p64), X, Y, tuple(s.astype(np.float64) for s in state))
    for name in (n for n in g32 if n.startswith("b_")):
        error = np.abs(g32[name] - g64[name]).max() / np.abs(g64[name]).max()
        assert error < 1e-5, (name, error)


@pytest.mark.parametrize("value", ["frozen", "trained", "yes", 1])
def test_model_takes_second_bias_as_a_bool_only(value):
    """Model("rnn", second_bias="frozen") built the two-bias model (any truthy value did)."""
    with pytest.raises(TypeError, match="second_bias must be True or False"):
        Model("rnn", second_bias=value)
    assert Model("rnn", second_bias=False).name == "rnn" and Model("rnn", second_bias=True).name == "rnn (two biases)"
