"""Conformance: every backend computes what the NumPy oracle computes, from the same inputs.

Tolerances (relative): forward logits and loss 1e-10 (float64) / 1e-5 (float32); gradients
1e-9 (float64) / 1e-4 (float32), measured as max |g - g_oracle| / ||g_oracle||; 20 training
steps' losses 1e-9 (float64). float32 differences come only from summation order.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import multirnn
from multirnn import PARAM_NAMES, GPUUnavailableError
from tests.conftest import random_problem

FWD_RTOL = {"float64": 1e-10, "float32": 1e-5}
GRAD_RTOL = {"float64": 1e-9, "float32": 1e-4}
DTYPES = ["float64", "float32"]


def to_np(be: multirnn.Backend, x) -> np.ndarray:
    return be.as_numpy(x)


def assert_grads_close(got: dict, want: dict, rtol: float) -> None:
    for k in PARAM_NAMES:
        scale = np.linalg.norm(want[k]) or 1.0
        err = np.max(np.abs(got[k].astype(np.float64) - want[k].astype(np.float64))) / scale
        assert err <= rtol, f"grad {k}: max error {err:.3g} x ||g|| exceeds rtol {rtol}"


# --- conversion and shapes ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_params_round_trip_is_exact(backend, dtype):
    params, *_ = random_problem(dtype=dtype)
    back = backend.params_to_numpy(backend.params_from_numpy(params))
    assert set(back) == set(PARAM_NAMES)
    for k in PARAM_NAMES:
        assert back[k].dtype == np.dtype(dtype), k
        np.testing.assert_array_equal(back[k], params[k])


def test_one_hot_is_time_major(backend):
    X = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    out = to_np(backend, backend.one_hot(X, 28))
    assert out.shape == (5, 2, 28)
    np.testing.assert_array_equal(out.argmax(-1), X.T)
    np.testing.assert_array_equal(out.sum(-1), np.ones((5, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_init_state_is_zeros(backend, dtype):
    state = backend.init_state(4, 6, dtype)
    assert isinstance(state, tuple) and len(state) == 1
    h = to_np(backend, state[0])
    assert h.shape == (4, 6) and h.dtype == np.dtype(dtype) and not h.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes(backend, dtype):
    params, X, Y, h0 = random_problem(dtype=dtype, batch_size=3, num_steps=5, vocab_size=11, num_hiddens=7)
    p = backend.params_from_numpy(params)
    logits, state = backend.forward(p, X, backend.init_state(3, 7, dtype))
    assert to_np(backend, logits).shape == (15, 11)
    assert to_np(backend, state[0]).shape == (3, 7)
    loss, grads, state = backend.loss_and_grads(p, X, Y, state)
    assert np.ndim(to_np(backend, loss)) == 0 and isinstance(float(loss), float)
    g = backend.params_to_numpy(grads)
    assert {k: v.shape for k, v in g.items()} == {k: v.shape for k, v in params.items()}
    assert all(v.dtype == np.dtype(dtype) for v in g.values())


# --- values against the oracle --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_oracle(backend, oracle, dtype):
    # A state may always be given as NumPy arrays (here a random, non-zero one).
    params, X, _, h0 = random_problem(dtype=dtype)
    want_logits, want_state = oracle.forward(oracle.params_from_numpy(params), X, (h0.copy(),))
    logits, state = backend.forward(backend.params_from_numpy(params), X, (h0.copy(),))
    np.testing.assert_allclose(to_np(backend, logits), want_logits, rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])
    np.testing.assert_allclose(to_np(backend, state[0]), want_state[0], rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_and_grads_match_oracle(backend, oracle, dtype):
    params, X, Y, h0 = random_problem(dtype=dtype)
    want_loss, want_grads, want_state = oracle.loss_and_grads(oracle.params_from_numpy(params), X, Y, (h0.copy(),))
    loss, grads, state = backend.loss_and_grads(backend.params_from_numpy(params), X, Y, (h0.copy(),))
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=FWD_RTOL[dtype])
    assert_grads_close(backend.params_to_numpy(grads), want_grads, GRAD_RTOL[dtype])
    np.testing.assert_allclose(to_np(backend, state[0]), want_state[0], rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch_size=st.integers(1, 4), num_steps=st.integers(1, 6), num_hiddens=st.integers(1, 9),
    vocab_size=st.integers(2, 12), seed=st.integers(0, 2**16),
)
def test_loss_and_grads_match_oracle_on_random_shapes(backend, oracle, batch_size, num_steps, num_hiddens, vocab_size, seed):
    params, X, Y, _ = random_problem(seed, vocab_size, num_hiddens, batch_size, num_steps, "float64")
    want_loss, want_grads, _ = oracle.loss_and_grads(params, X, Y, oracle.init_state(batch_size, num_hiddens, "float64"))
    p = backend.params_from_numpy(params)
    loss, grads, _ = backend.loss_and_grads(p, X, Y, backend.init_state(batch_size, num_hiddens, "float64"))
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-10)
    assert_grads_close(backend.params_to_numpy(grads), want_grads, 1e-9)


# --- clipping and SGD -----------------------------------------------------------------------


def _grads(backend, dtype, scale):
    params, *_ = random_problem(seed=3, dtype=dtype)
    g = {k: (v * scale).astype(dtype) for k, v in params.items()}
    return g, backend.params_from_numpy(g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipping_above_theta_rescales_to_theta(backend, dtype):
    g, bg = _grads(backend, dtype, 10.0)
    norm_before = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in g.values()))
    clipped, norm = backend.clip_gradients(bg, 1.0)
    c = backend.params_to_numpy(clipped)
    np.testing.assert_allclose(float(norm), norm_before, rtol=FWD_RTOL[dtype])
    norm_after = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in c.values()))
    np.testing.assert_allclose(norm_after, 1.0, rtol=FWD_RTOL[dtype])
    for k in PARAM_NAMES:  # direction kept: every tensor scaled by the same factor
        np.testing.assert_allclose(c[k], g[k] / norm_before, rtol=FWD_RTOL[dtype] * 10, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipping_below_theta_leaves_grads_untouched(backend, dtype):
    g, bg = _grads(backend, dtype, 1e-3)
    clipped, norm = backend.clip_gradients(bg, 1.0)
    assert float(norm) < 1.0
    for k, v in backend.params_to_numpy(clipped).items():
        np.testing.assert_array_equal(v, g[k])


def test_clipping_zero_grads_gives_no_nan(backend):
    zeros = {k: np.zeros_like(v) for k, v in random_problem()[0].items()}
    clipped, norm = backend.clip_gradients(backend.params_from_numpy(zeros), 1.0)
    assert float(norm) == 0.0
    assert all(not v.any() and np.isfinite(v).all() for v in backend.params_to_numpy(clipped).values())


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_step(backend, dtype):
    params, *_ = random_problem(seed=4, dtype=dtype)
    grads, *_ = random_problem(seed=5, dtype=dtype)
    out = backend.params_to_numpy(backend.sgd_step(backend.params_from_numpy(params), backend.params_from_numpy(grads), 0.5))
    for k in PARAM_NAMES:
        np.testing.assert_allclose(out[k], params[k] - 0.5 * grads[k], rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])


# --- state rules and training ---------------------------------------------------------------


def test_state_is_carried_not_reset(backend, oracle):
    """Two halves with the state carried equal one call over the whole sequence."""
    params, X, _, _ = random_problem(num_steps=6)
    p = backend.params_from_numpy(params)
    whole, _ = backend.forward(p, X, backend.init_state(3, 7, "float64"))
    first, state = backend.forward(p, X[:, :3], backend.init_state(3, 7, "float64"))
    second, _ = backend.forward(p, X[:, 3:], state)
    np.testing.assert_allclose(np.concatenate([to_np(backend, first), to_np(backend, second)]), to_np(backend, whole), rtol=1e-12)
    # and a re-initialised state gives something else
    fresh, _ = backend.forward(p, X[:, 3:], backend.init_state(3, 7, "float64"))
    assert not np.allclose(to_np(backend, fresh), to_np(backend, second))


def test_returned_state_is_detached(backend):
    """Gradients of a second call do not flow into the first call's graph."""
    params, X, Y, _ = random_problem(num_steps=4)
    p = backend.params_from_numpy(params)
    _, _, state = backend.loss_and_grads(p, X, Y, backend.init_state(3, 7, "float64"))
    _, grads_carried, _ = backend.loss_and_grads(p, X, Y, state)
    # The same computation from a state handed over as plain NumPy (no history at all).
    h = to_np(backend, state[0]).copy()
    _, grads_fresh, _ = backend.loss_and_grads(p, X, Y, (h,))
    assert_grads_close(backend.params_to_numpy(grads_carried), backend.params_to_numpy(grads_fresh), 1e-12)


def _training_matches_oracle(be, oracle, sampling):
    config = multirnn.TrainConfig(
        batch_size=4, num_steps=6, num_hiddens=16, num_epochs=3, max_tokens=200, dtype="float64", sampling=sampling
    )
    data = multirnn.prepare_data(config)
    want = multirnn.train(oracle, config, data).history
    got = multirnn.train(be, config, data).history
    assert len(got.step_loss) == len(want.step_loss) >= 20
    np.testing.assert_allclose(got.step_loss, want.step_loss, rtol=1e-9)
    np.testing.assert_allclose(got.step_grad_norm, want.step_grad_norm, rtol=1e-9)
    np.testing.assert_allclose(got.perplexity, want.perplexity, rtol=1e-9)


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_training_curves_match_oracle_in_every_mode(framework_backend, oracle, sampling):
    """Fast and eager training curves (float64) equal the oracle's to 1e-9 over a whole run."""
    _training_matches_oracle(framework_backend, oracle, sampling)


def test_train_step_modes_match_oracle(framework_backend, oracle):
    """The fused/compiled train_step (mode="fast") and the eager one equal the oracle in float64."""
    be = framework_backend
    params, X, Y, _ = random_problem(seed=7, num_steps=6, batch_size=4)
    p_want = oracle.params_from_numpy(params)
    p_got = be.params_from_numpy(params)
    s_want, s_got = oracle.init_state(4, 7, "float64"), be.init_state(4, 7, "float64")
    for step in range(5):  # carried state, repeated calls (compiled paths get re-used)
        Xs, Ys = np.roll(X, step, axis=1), np.roll(Y, step, axis=1)
        p_want, l_want, n_want, s_want = oracle.train_step(p_want, Xs, Ys, s_want, 0.7, 1.0)
        p_got, l_got, n_got, s_got = be.train_step(p_got, Xs, Ys, s_got, 0.7, 1.0)
        np.testing.assert_allclose(float(l_got), float(l_want), rtol=1e-10)
        np.testing.assert_allclose(float(n_got), float(n_want), rtol=1e-9)
    got = be.params_to_numpy(p_got)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[k], p_want[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size,num_steps", [(3, 5), (4, 7), (1, 1)])
def test_every_mode_forward_and_grads_match_oracle(framework_backend, oracle, dtype, batch_size, num_steps):
    """forward and loss_and_grads of both modes (fast ones are compiled or hand-written) equal the oracle."""
    be = framework_backend
    params, X, Y, h0 = random_problem(seed=11, dtype=dtype, batch_size=batch_size, num_steps=num_steps)
    want_logits, want_state = oracle.forward(params, X, (h0.copy(),))
    logits, state = be.forward(be.params_from_numpy(params), X, (h0.copy(),))
    assert to_np(be, logits).dtype == np.dtype(dtype)
    np.testing.assert_allclose(to_np(be, logits), want_logits, rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])
    np.testing.assert_allclose(to_np(be, state[0]), want_state[0], rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])

    want_loss, want_grads, want_state = oracle.loss_and_grads(params, X, Y, (h0.copy(),))
    loss, grads, state = be.loss_and_grads(be.params_from_numpy(params), X, Y, (h0.copy(),))
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=FWD_RTOL[dtype])
    got = be.params_to_numpy(grads)
    assert all(v.dtype == np.dtype(dtype) for v in got.values())
    assert_grads_close(got, want_grads, GRAD_RTOL[dtype])
    np.testing.assert_allclose(to_np(be, state[0]), want_state[0], rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])


def test_float32_step_matches_oracle_and_stays_float32(framework_backend, oracle):
    """One float32 train_step from the same point: only summation order differs from the oracle."""
    be = framework_backend
    params, X, Y, h0 = random_problem(dtype="float32", num_hiddens=32, num_steps=10, batch_size=4)
    p_want, l_want, n_want, _ = oracle.train_step(oracle.params_from_numpy(params), X, Y, (h0.copy(),), 0.5, 1.0)
    p, loss, norm, state = be.train_step(be.params_from_numpy(params), X, Y, (h0.copy(),), 0.5, 1.0)
    for scalar in (loss, norm):
        assert np.ndim(to_np(be, scalar)) == 0 and to_np(be, scalar).dtype == np.float32
    assert to_np(be, state[0]).dtype == np.float32
    np.testing.assert_allclose(float(loss), float(l_want), rtol=1e-5)
    np.testing.assert_allclose(float(norm), float(n_want), rtol=1e-4)
    got = be.params_to_numpy(p)
    for k in PARAM_NAMES:
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], p_want[k], rtol=1e-4, atol=1e-5)


def test_gpu_request_without_gpu_is_a_clear_error(backend):
    try:
        multirnn.get_backend(backend.name, device="gpu")
    except GPUUnavailableError as exc:
        assert "gpu" in str(exc).lower()
    else:
        pytest.skip(f"{backend.name} sees a GPU here; nothing to check")


@pytest.fixture(scope="session")
def trained_params(oracle):
    """A small float64 model trained long enough to say something other than spaces."""
    config = multirnn.preset("quick", num_hiddens=64, num_epochs=25, dtype="float64", lr=1.0)
    result = multirnn.train(oracle, config)
    return oracle.params_to_numpy(result.params), result.vocab


def test_greedy_prediction_matches_oracle(backend, oracle, trained_params):
    params, vocab = trained_params
    want = multirnn.predict(oracle, oracle.params_from_numpy(params), vocab, "time traveller", 20)
    got = multirnn.predict(backend, backend.params_from_numpy(params), vocab, "time traveller", 20)
    assert got == want
    assert len(set(want[len("time traveller"):])) > 2  # the model says something, not one repeated char
