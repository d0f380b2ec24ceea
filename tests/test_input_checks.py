"""Every backend's entry points check their inputs the same way (Backend.__init_subclass__): labels of
another shape and negative ids gave silent losses in some backends (torch's fast gather read the first
rows; NumPy and MXNet index from the end), and a clipping bound <= 0 flips or zeroes the gradients."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import multirnn
from tests.conftest import require_backend

BACKENDS = [("numpy", "scratch"), ("torch", "scratch"), ("torch", "layers"), ("mxnet", "scratch"), ("mxnet", "layers"),
            ("tensorflow", "scratch"), ("tensorflow", "layers"), ("jax", "scratch"), ("jax", "layers")]
V, H, B, T = 28, 8, 4, 5


@pytest.fixture(params=BACKENDS, ids=lambda p: "/".join(p))
def setup(request):
    name, impl = request.param
    require_backend(name)
    be = multirnn.get_backend(name, impl=impl, mode="fast")
    rng = np.random.default_rng(0)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    return be, be.params_from_numpy(multirnn.init_params(V, H, seed=0)), X, Y


@pytest.mark.parametrize("labels, message", [
    (lambda Y: Y[:, :3], r"Y has shape \(4, 3\) but X has \(4, 5\)"),
    (lambda Y: Y.reshape(-1)[:20].reshape(5, 4), r"Y has shape \(5, 4\) but X has \(4, 5\)"),  # batch-major mix-up
    (lambda Y: -Y - 1, "Y holds negative token ids"),
    (lambda Y: np.full_like(Y, V), "Y holds token id 28, beyond the params' vocabulary of 28"),  # MXNet, JAX: a loss
    (lambda Y: Y.astype(np.float32), "Y must be an integer array"),
])
def test_labels_that_do_not_fit_the_inputs_are_refused(setup, labels, message):
    be, p, X, Y = setup
    for call in (lambda: be.loss_and_grads(p, X, labels(Y), be.init_state(B, H)),
                 lambda: be.train_step(p, X, labels(Y), be.init_state(B, H), 0.5, 1.0),
                 lambda: be.evaluate_loss(p, X, labels(Y), be.init_state(B, H))):
        with pytest.raises(ValueError, match=message):
            call()


def test_a_state_that_does_not_fit_the_batch_or_the_params_is_refused(setup):
    """The state was not checked: a wrong batch or hidden size failed in each framework's words (flax:
    ScopeParamShapeError, TensorFlow: 'Binding inputs to tf.function failed'), extra entries were dropped
    silently, and a float64 state turned the NumPy oracle's float32 logits into float64."""
    be, p, X, Y = setup
    good = be.init_state(B, H)
    wrong = [
        (be.init_state(B + 1, H), ValueError, r"state H has shape \(5, 8\), expected \(4, "),
        ((*good, *good), ValueError, r"state holds 2 arrays, but rnn has 1 \(H; backend.init_state makes it\)"),
        (good[0], TypeError, "state must be a tuple of 1 arrays"),
        (be.init_state(B, H, "float64"), ValueError, "state H is float64 but the params are float32"),
    ]
    wrong.append((be.init_state(B, H + 1), ValueError, r"state H has shape \(4, 9\), expected \(4, 8\)"))
    for state, error, message in wrong:
        for call in (lambda s: be.forward(p, X, s), lambda s: be.loss_and_grads(p, X, Y, s),
                     lambda s: be.train_step(p, X, Y, s, 0.5, 1.0), lambda s: be.evaluate_loss(p, X, Y, s)):
            with pytest.raises(error, match=message):
                call(state)
    be.forward(p, X, good)  # what fits still runs


def test_negative_inputs_and_non_positive_clipping_bounds_are_refused(setup):
    be, p, X, Y = setup
    with pytest.raises(ValueError, match="X holds negative token ids"):
        be.forward(p, -X - 1, be.init_state(B, H))
    with pytest.raises(ValueError, match="X holds token id 1000, beyond the params' vocabulary of 28"):
        be.forward(p, np.full_like(X, 1000), be.init_state(B, H))
    for theta in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_grad_norm must be a positive number"):
            be.train_step(p, X, Y, be.init_state(B, H), 0.5, theta)
    _, grads, _ = be.loss_and_grads(p, X, Y, be.init_state(B, H))
    with pytest.raises(ValueError, match="max_grad_norm must be a positive number"):
        be.clip_gradients(grads, -1.0)
    be.train_step(p, X, Y, be.init_state(B, H), 0.5, 1.0)  # what fits still runs


@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_numpy_scalars_are_numbers_and_lists_empty_batches_and_bad_rates_are_refused(setup, mode):
    """MXNet crashed on a NumPy scalar θ ('numpy.float64' object has no attribute 'ctx'); JAX took labels as a
    list and returned a NaN loss for an id past the vocabulary; an empty batch failed in each framework's own
    words (JAX's layers returned a NaN loss); a negative or NaN lr was applied silently."""
    be, _, X, Y = setup
    be = multirnn.get_backend(be.name, impl=be.impl, mode=mode)
    fresh = lambda: be.params_from_numpy(multirnn.init_params(V, H, seed=0))  # noqa: E731 (fast paths donate)
    # the updated weights, not the loss (computed before the update): a mishandled lr or θ would show there
    ref = be.params_to_numpy(be.train_step(fresh(), X, Y, be.init_state(B, H), 0.5, 0.1)[0])
    for lr, theta in ((np.float32(0.5), np.float64(0.1)), (np.float64(0.5), np.float32(0.1)), (np.array(0.5), 0.1),
                      (Fraction(1, 2), np.array(0.1)), (np.float16(0.5), 0.1)):
        got = be.params_to_numpy(be.train_step(fresh(), X, Y, be.init_state(B, H), lr, theta)[0])
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=f"{k}: lr {lr!r}, θ {theta!r}")
    _, grads, _ = be.loss_and_grads(fresh(), X, Y, be.init_state(B, H))
    be.clip_gradients(grads, np.float32(1.0))
    for bad in (Y.tolist(), tuple(map(tuple, Y.tolist()))):
        with pytest.raises(TypeError, match=r"Y must be a NumPy integer array .* pass np.asarray\(Y\)"):
            be.loss_and_grads(fresh(), X, bad, be.init_state(B, H))
    empty = np.zeros((B, 0), dtype=X.dtype)
    with pytest.raises(ValueError, match=r"X is empty \(shape \(4, 0\)\)"):
        be.loss_and_grads(fresh(), empty, empty, be.init_state(B, H))
    for lr in (-0.5, float("nan"), float("inf"), True, np.True_, "0.5", b"0.5", Decimal("0.5"), 0.5j, np.array([0.5])):
        with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
            be.train_step(fresh(), X, Y, be.init_state(B, H), lr, 1.0)
        with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
            be.sgd_step(fresh(), grads, lr)
    for theta in (True, "1.0", 0.0, float("nan")):
        with pytest.raises(ValueError, match="max_grad_norm must be a positive number"):
            be.train_step(fresh(), X, Y, be.init_state(B, H), 0.5, theta)
    # θ = inf: no clipping (MXNet's θ / max(‖g‖, θ) was inf / inf, NaN weights)
    unclipped = be.params_to_numpy(be.train_step(fresh(), X, Y, be.init_state(B, H), 0.5, math.inf)[0])
    oracle = multirnn.get_backend("numpy")
    want = oracle.params_to_numpy(oracle.train_step(oracle.params_from_numpy(multirnn.init_params(V, H, seed=0)), X, Y,
                                                    oracle.init_state(B, H), 0.5, math.inf)[0])
    for k in want:
        np.testing.assert_allclose(unclipped[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_params_carried_between_steps_are_checked_too(setup):
    """After a step a fast path hands back its own form of params (MXNet's packed vector, Gluon's layers)."""
    be, p, X, Y = setup
    p, *_ = be.train_step(p, X, Y, be.init_state(B, H), 0.5, 1.0)
    with pytest.raises(ValueError, match="X holds token id 1000, beyond the params' vocabulary of 28"):
        be.forward(p, np.full_like(X, 1000), be.init_state(B, H))


def test_v_is_read_where_every_layout_agrees_and_never_guessed():
    """A third-party backend may keep d2l's names in its framework's layout (W_xh as (H, V), torch's): V came
    from W_xh's first axis, so H, and every valid id >= H was refused "beyond the vocabulary" on every step."""
    be = multirnn.get_backend("numpy")
    torch_layout = {"W_xh": np.zeros((16, V)), "W_hh": np.zeros((16, 16)), "b_h": np.zeros(16),
                    "W_hq": np.zeros((V, 16)), "b_q": np.zeros(V)}
    assert be._output_layer_of(torch_layout)[0] == V
    assert be._output_layer_of({"W_xh": np.zeros((16, V))})[0] is None  # no b_q: nothing is checked against V
    assert be._output_layer_of(np.zeros((48, 45)))[0] is None  # one packed array of some backend's own: not guessed
    # H likewise from a vector: W_hq's first axis (V here) made the state check refuse every (B, 16) state
    assert be._output_layer_of(torch_layout)[1] == 16
