"""TensorFlow-specific checks: trace caching, in-place variable updates, the clipping rule (not
tf.clip_by_global_norm), the log filter, the hand-written recurrence gradients, and the Keras
layers' own variables (mapping, frozen biases, initialisers, layout); the shared suite covers
forward and gradients of every model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import multirnn
from multirnn import PARAM_NAMES
from multirnn.testing import random_model_problem
from tests.conftest import random_problem, require_backend_module

require_backend_module("tensorflow")


@pytest.fixture(scope="module")
def fast() -> multirnn.Backend:
    return multirnn.get_backend("tensorflow", mode="fast")


@pytest.fixture(scope="module")
def oracle() -> multirnn.Backend:
    return multirnn.get_backend("numpy")


def test_fast_train_step_is_traced_once_per_shape(fast):
    """New params, new lr/θ values and a new state reuse the compiled step; a new shape adds one."""
    for seed, lr in ((0, 0.5), (1, 0.25), (2, 1.0)):
        params, X, Y, _ = random_problem(seed=seed)
        p = fast.params_from_numpy(params)
        fast.train_step(p, X, Y, fast.init_state(3, 7, "float64"), lr, 1.0 + seed)
    steps = {k: f for k, f in fast._compiled.items() if k[0] == "train_step"}
    assert len(steps) == 1
    assert next(iter(steps.values())).experimental_get_tracing_count() == 1

    params, X, Y, _ = random_problem(num_steps=2)
    fast.train_step(fast.params_from_numpy(params), X, Y, fast.init_state(3, 7, "float64"), 0.5, 1.0)
    assert len({k for k in fast._compiled if k[0] == "train_step"}) == 2


def test_fast_sgd_updates_the_variables_in_place(fast):
    params, X, Y, _ = random_problem()
    p = fast.params_from_numpy(params)
    before = {k: id(v) for k, v in p.items()}
    p2, *_ = fast.train_step(p, X, Y, fast.init_state(3, 7, "float64"), 0.5, 1.0)
    assert p2 is p and {k: id(v) for k, v in p2.items()} == before
    assert not np.array_equal(fast.params_to_numpy(p)["W_hh"], params["W_hh"])


def test_fast_prediction_matches_eager():
    """``predict`` feeds (1, 1) batches one by one: fast forward compiles that shape once."""
    params, *_ = random_problem(vocab_size=28, num_hiddens=16)
    vocab = multirnn.Vocab(list("abcdefghijklmnopqrstuvwxyz "))
    results = []
    for mode in ("eager", "fast"):
        be = multirnn.get_backend("tensorflow", mode=mode)
        results.append(multirnn.predict(be, be.params_from_numpy(params), vocab, "time traveller", 10))
    assert results[0] == results[1]


def test_clipping_follows_d2l_not_clip_by_global_norm():
    """Why the backend does not use tf.clip_by_global_norm: below the bound it multiplies by
    θ * (1/θ), which is not exactly 1 for θ = 49, so "untouched" gradients would change."""
    from multirnn.backends.tensorflow_backend import tf

    be = multirnn.get_backend("tensorflow")
    g = {k: np.full(v.shape, 1e-3) for k, v in random_problem()[0].items()}
    clipped, norm = be.clip_gradients(be.params_from_numpy(g), 49.0)
    assert float(norm) < 49.0
    for k, v in be.params_to_numpy(clipped).items():
        np.testing.assert_array_equal(v, g[k])
    library, _ = tf.clip_by_global_norm([tf.constant(g[k]) for k in PARAM_NAMES], 49.0)
    assert any(not np.array_equal(t.numpy(), g[k]) for t, k in zip(library, PARAM_NAMES))


def test_log_filter_keeps_errors_and_drops_info(monkeypatch):
    from multirnn.backends import tensorflow_backend as tfb

    monkeypatch.setattr(tfb, "_MIN_LOG_LEVEL", 2)
    info = "I0000 00:00:1795451034.743851    4122 port.cc:153] oneDNN custom operations are on."
    error = "E0000 00:00:1795451034.743851    4122 util.cc:131] something failed"
    old = "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] no cuda"
    assert tfb._is_log_noise(info) and tfb._is_log_noise(old) and tfb._is_log_noise(tfb._ABSL_PREINIT_NOTICE)
    assert not tfb._is_log_noise(error) and not tfb._is_log_noise("Traceback (most recent call last):")
    monkeypatch.setattr(tfb, "_MIN_LOG_LEVEL", 0)  # the user asked for everything
    assert not tfb._is_log_noise(info) and not tfb._is_log_noise(tfb._ABSL_PREINIT_NOTICE)


def test_default_log_level_hides_info_and_warnings():
    # Quietness and import isolation: tests/test_registry.py, for every backend.
    code = "import multirnn, os; multirnn.get_backend('tensorflow'); print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


# --- every model, from scratch ---------------------------------------------------------------------


def test_fast_model_train_step_is_traced_once_per_shape():
    """Models other than the tanh RNN go through _model_function: the same one-trace-per-key rule."""
    model = multirnn.Model("lstm", 2)
    be = multirnn.get_backend("tensorflow", mode="fast", model=model)
    for seed in range(3):
        params, X, Y, state = random_model_problem(model, seed=seed)
        p = be.params_from_numpy(params)
        p2, *_ = be.train_step(p, X, Y, state, 0.5, 1.0 + seed)
        assert p2 is p
    fns = [f for k, f in be._compiled.items() if k[:2] == ("model", "train_step")]
    assert len(fns) == 1 and fns[0].experimental_get_tracing_count() == 1


def _plain(cell: str):
    """The recurrences' forward loops without their hand-written gradients (autodiff reference)."""
    from multirnn.backends.tensorflow_backend import tf

    def gru(inputs, h0, W_h_zr, W_hh):
        H, h, hs = W_hh.shape[0], h0, []
        for x in tf.unstack(inputs):
            z, r = tf.split(tf.sigmoid(x[:, : 2 * H] + h @ W_h_zr), 2, 1)
            h = z * h + (1 - z) * tf.tanh(x[:, 2 * H:] + (r * h) @ W_hh)
            hs.append(h)
        return tf.stack(hs)

    def gru_reset_after(inputs, h0, W_h, b_hn):
        H, h, hs = W_h.shape[0], h0, []
        for x in tf.unstack(inputs):
            hw = h @ W_h
            z, r = tf.split(tf.sigmoid(x[:, : 2 * H] + hw[:, : 2 * H]), 2, 1)
            h = z * h + (1 - z) * tf.tanh(x[:, 2 * H:] + r * (hw[:, 2 * H:] + b_hn))
            hs.append(h)
        return tf.stack(hs)

    def lstm(inputs, h0, c0, W_h):
        h, c, hs = h0, c0, []
        for x in tf.unstack(inputs):
            i, f, o, g = tf.split(x + h @ W_h, 4, 1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            hs.append(h)
        return tf.stack(hs), c

    return {"gru": gru, "gru-reset-after": gru_reset_after, "lstm": lstm}[cell]


@pytest.mark.parametrize("cell", ["gru", "gru-reset-after", "lstm"])
def test_hand_written_recurrence_gradients_equal_autodiff(cell):
    """Every input's gradient, including through the LSTM's final memory cell (which the training
    loss never reaches: it is only carried as state), equals autodiff of the plain loop."""
    from multirnn.backends import tensorflow_backend as tfb
    from multirnn.backends.tensorflow_backend import tf

    fast = {"gru": tfb._gru_recurrence, "gru-reset-after": tfb._gru_reset_after_recurrence,
            "lstm": tfb._lstm_recurrence}[cell]
    rng = np.random.default_rng(0)
    T, B, H = 4, 3, 5
    G = 4 if cell == "lstm" else 3
    shapes = {"gru": [(T, B, 3 * H), (B, H), (H, 2 * H), (H, H)],
              "gru-reset-after": [(T, B, 3 * H), (B, H), (H, 3 * H), (H,)],
              "lstm": [(T, B, G * H), (B, H), (B, H), (H, G * H)]}[cell]
    args = [tf.constant(rng.standard_normal(s) * 0.5) for s in shapes]
    # Random output weights, so that every output gradient differs; the LSTM also returns C_T.
    weights = [tf.constant(rng.standard_normal(s)) for s in ([(T, B, H), (B, H)] if cell == "lstm" else [(T, B, H)])]
    results = []
    for fn in (fast, _plain(cell)):
        with tf.GradientTape() as tape:
            tape.watch(args)
            out = fn(*args)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            loss = sum(tf.reduce_sum(o * w) for o, w in zip(outs, weights))
        results.append((outs, tape.gradient(loss, args)))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-13, atol=1e-14)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-13)


# --- Keras' own layers -----------------------------------------------------------------------------

# The Keras cells' gate order (their kernel's column blocks), independently of the backend's table.
KERAS_ORDER = {"rnn": "h", "gru": "zrh", "gru-reset-after": "zrn", "lstm": "ifco"}


def layers(model: multirnn.Model, mode: str = "eager") -> multirnn.Backend:
    return multirnn.get_backend("tensorflow", impl="layers", mode=mode, model=model)


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-reset-after", "lstm"])
def test_weights_map_onto_the_keras_layers_own_variables(cell):
    """d2l's weights land in each Keras layer's kernel / recurrent_kernel / bias (d2l orientation,
    Keras gate order) and in Dense, read back through the layers' own get_weights."""
    model = multirnn.Model(cell, 2)
    be = layers(model)
    params, *_ = random_model_problem(model)
    p = be.params_from_numpy(params)
    assert [type(r).__name__ for r in p.net.rnns] == [{"rnn": "SimpleRNN", "lstm": "LSTM"}.get(cell, "GRU")] * 2
    for layer, rnn in enumerate(p.net.rnns):
        s = "" if layer == 0 else f"_l{layer}"
        kernel, recurrent, bias = rnn.get_weights()
        np.testing.assert_array_equal(kernel, np.hstack([params[f"W_x{g}{s}"] for g in KERAS_ORDER[cell]]))
        np.testing.assert_array_equal(recurrent, np.hstack([params[f"W_h{g}{s}"] for g in KERAS_ORDER[cell]]))
        b = np.concatenate([params[f"b_{g}{s}"] for g in KERAS_ORDER[cell]])
        if cell == "gru-reset-after":
            assert rnn.reset_after and bias.shape == (2, 21)  # H = 7
            np.testing.assert_array_equal(bias[0], b)
            np.testing.assert_array_equal(bias[1], np.concatenate([np.zeros(14), params[f"b_hn{s}"]]))
        else:
            np.testing.assert_array_equal(bias, b)
            assert cell != "gru" or not rnn.reset_after
    kernel, bias = p.net.dense.get_weights()
    np.testing.assert_array_equal(kernel, params["W_hq"])
    np.testing.assert_array_equal(bias, params["b_q"])
    back = be.params_to_numpy(p)
    assert list(back) == list(model.param_names())
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])


@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_frozen_recurrent_biases_stay_exactly_zero(mode):
    """GRU(reset_after=True)'s recurrent z and r biases are not d2l's: zero gradient, no update,
    nothing added to the clipping norm, exactly zero after training; b_hn (its n entry) trains."""
    model = multirnn.Model("gru-reset-after", 2)
    be = layers(model, mode)
    params, X, Y, state = random_model_problem(model)
    p = be.params_from_numpy(params)
    H = 7
    _, grads, _ = be.loss_and_grads(p, X, Y, state)
    for path in ("gru/gru_cell/bias", "gru_1/gru_cell/bias"):
        g = grads[path].numpy()
        assert not g[1, : 2 * H].any() and g[1, 2 * H:].any() and g[0].all()
    _, full_norm = be.clip_gradients(grads, 1e9)
    want = np.sqrt(sum(np.sum(v**2) for v in be.params_to_numpy(grads).values()))  # d2l's params only
    np.testing.assert_allclose(float(full_norm), want, rtol=1e-12)
    for step in range(3):
        p, *_ = be.train_step(p, np.roll(X, step, 1), Y, state, 0.5, 1.0)
    # An update with gradients on the frozen entries (not from loss_and_grads) leaves them too.
    be.sgd_step(p, {k: np.ones(v.shape, v.dtype.as_numpy_dtype) for k, v in p.items()}, 0.5)
    for path in ("gru/gru_cell/bias", "gru_1/gru_cell/bias"):
        bias = p[path].numpy()
        assert np.array_equal(bias[1, : 2 * H], np.zeros(2 * H))
    trained = be.params_to_numpy(p)
    assert not np.array_equal(trained["b_hn"], params["b_hn"])


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-reset-after", "lstm"])
def test_default_params_draw_keras_initialisers(cell):
    """glorot_uniform kernels (|w| <= sqrt(6 / (fan_in + fan_out)), the bound nearly reached),
    one orthogonal (H, gates*H) recurrent kernel per layer, zero biases except the LSTM's forget
    gate (unit_forget_bias: ones); seeded, and in the requested dtype."""
    model = multirnn.Model(cell, 2)
    be = layers(model)
    V, H = 40, 16
    d = be.default_params(V, H, seed=3, dtype="float64")
    assert list(d) == list(model.param_names()) and all(v.dtype == np.float64 for v in d.values())
    gates = KERAS_ORDER[cell]
    for layer in range(2):
        s = "" if layer == 0 else f"_l{layer}"
        kernel = np.hstack([d[f"W_x{g}{s}"] for g in gates])
        bound = np.sqrt(6 / (kernel.shape[0] + kernel.shape[1]))
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
        recurrent = np.hstack([d[f"W_h{g}{s}"] for g in gates])
        np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(H), atol=1e-10)
        for g in gates:
            np.testing.assert_array_equal(d[f"b_{g}{s}"], np.full(H, 1.0 if (cell, g) == ("lstm", "f") else 0.0))
        if cell == "gru-reset-after":
            np.testing.assert_array_equal(d[f"b_hn{s}"], np.zeros(H))
    bound = np.sqrt(6 / (H + V))
    assert np.abs(d["W_hq"]).max() <= bound and np.abs(d["W_hq"]).max() > 0.9 * bound and not d["b_q"].any()
    again, other = be.default_params(V, H, seed=3, dtype="float64"), be.default_params(V, H, seed=4, dtype="float64")
    assert all(np.array_equal(again[k], d[k]) for k in d)
    first = model.param_names()[0]  # the first gate's input weights
    assert not np.array_equal(other[first], d[first])
    assert be.default_params(V, H, seed=3)["W_hq"].dtype == np.float32


def test_param_layout_names_the_layers_real_variables():
    model = multirnn.Model("gru-reset-after", 2)
    be = layers(model)
    before = be.param_layout()
    assert before["gru/gru_cell/kernel"]["shape"] == ["V", "3H"]
    p = be.params_from_numpy(random_model_problem(model)[0])
    layout = be.param_layout()
    weights = [w for layer in (*p.net.rnns, p.net.dense) for w in layer.trainable_weights]
    assert list(layout) == [w.path for w in weights] == list(before)
    for w in weights:
        assert layout[w.path]["shape"] == list(w.shape)
    assert layout["gru/gru_cell/bias"]["holds"] == "[[b_z | b_r | b_n], [0 | 0 | b_hn]]"
    assert layout["gru_1/gru_cell/recurrent_kernel"]["holds"] == "[W_hz_l1 | W_hr_l1 | W_hn_l1]"
    assert layout["dense/kernel"] == {"shape": [7, 11], "holds": "W_hq"}


def test_layers_fast_mode_traces_once_per_params_and_shape():
    """The Keras layers own their variables: one trace per params object and batch shape, updated in place."""
    model = multirnn.Model("lstm")
    be = layers(model, "fast")
    params, X, Y, state = random_model_problem(model)
    p = be.params_from_numpy(params)
    variables = {k: id(v) for k, v in p.items()}
    for step in range(3):
        p2, *_ = be.train_step(p, np.roll(X, step, 1), Y, state, 0.5, 1.0)
        assert p2 is p
    assert {k: id(v) for k, v in p.items()} == variables
    (fn,) = p.net.compiled.values()
    assert fn.experimental_get_tracing_count() == 1
    assert not np.array_equal(be.params_to_numpy(p)["W_hi"], params["W_hi"])


def test_layers_params_reuse_a_dropped_params_objects_net_and_trace():
    """A params object that is gone hands its layers and traced step to the next one of its shapes
    (which holds its own values and trains like fresh layers); live params objects never share."""
    import gc

    model = multirnn.Model("gru-reset-after")
    be = layers(model, "fast")
    params, X, Y, state = random_model_problem(model)
    other = {k: v * 0.5 for k, v in params.items()}
    first = be.params_from_numpy(params)
    net = first.net
    be.train_step(first, X, Y, state, 0.5, 1.0)
    (fn,) = net.compiled.values()
    live = be.params_from_numpy(other)
    assert live.net is not net and all(v is not first[k] for k, v in live.items())
    del first
    gc.collect()
    again = be.params_from_numpy(other)
    assert again.net is net  # the dropped object's layers, not new ones
    for k, v in be.params_to_numpy(again).items():
        np.testing.assert_array_equal(v, other[k], err_msg=k)
    got = be.params_to_numpy(be.train_step(again, X, Y, state, 0.5, 1.0)[0])
    want = be.params_to_numpy(be.train_step(live, X, Y, state, 0.5, 1.0)[0])
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert fn.experimental_get_tracing_count() == 1  # the first object's trace ran the new values
