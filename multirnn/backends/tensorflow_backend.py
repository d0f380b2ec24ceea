"""The TensorFlow 2 backends: d2l's model from scratch (every cell and depth), and Keras' own layers.

``TensorFlowBackend`` (impl ``scratch``): ``mode="eager"`` is the readable d2l translation:
``tf.one_hot``, a Python loop over time steps with the cell step as d2l writes it, layer after
layer, ``tf.GradientTape`` over ``tf.Variable`` params, clipping on the device, ``assign_sub`` SGD.

``mode="fast"`` runs ``train_step`` (and ``forward`` / ``loss_and_grads``) as one ``tf.function``
per (shapes, dtype): the one-hot product is a row gather, the output layer and its gradients are
one matmul over all time steps (as is a deeper layer's input product), and only the recurrence is
sequential. Each cell's recurrence carries a hand-written gradient (``tf.custom_gradient``) so that
its recurrent weights' gradients are one matmul too; GradientTape differentiates everything around
it. Clipping and SGD happen inside the same graph, so a step never waits on the host. d2l's own
one-layer tanh RNN keeps its dedicated, tuned path (``_fused_forward``).

``TensorFlowLayersBackend`` (impl ``layers``): Keras 3's ``SimpleRNN`` / ``GRU`` / ``LSTM`` and
``Dense`` with d2l's weights copied in (see ``_keras_join``); eager calls them under GradientTape,
fast wraps the same calls, clipping and update in one ``tf.function``.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
import weakref
from typing import Any

import numpy as np

from ..cells import RNN, Model, layer_suffix
from ..errors import BackendUnavailableError, GPUUnavailableError
from ..params import PARAM_NAMES, check_dtype, validate_params
from . import layer_limits
from .base import Backend, Params, State

# TensorFlow reads these when its C++ runtime loads, so they must be set before the import.
# setdefault: a value the user already exported wins. "2" hides INFO and WARNING, keeps errors.
# TF_ENABLE_ONEDNN_OPTS is left as the user has it: with oneDNN on (TensorFlow's default on
# x86) float64 still matches the oracle within the suite's 1e-10 / 1e-9 tolerances.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_LOG_LEVEL_ENV = os.environ["TF_CPP_MIN_LOG_LEVEL"]
_MIN_LOG_LEVEL = int(_LOG_LEVEL_ENV) if _LOG_LEVEL_ENV.strip().isdigit() else 0
# An absl/TSL log line: "I0000 00:00:1795451034.743851    4122 port.cc:153] ..." (before absl is
# initialised the "seconds" field holds the Unix time) or the older
# "2025-01-01 12:00:00.000000: I tensorflow/core/...cc:42] ...". The letter is the severity.
_LOG_LINE = re.compile(
    r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )\S+:\d+\]"
)
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_PREINIT_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _is_log_noise(line: str) -> bool:
    """True for a C++ log line below ``TF_CPP_MIN_LOG_LEVEL`` (or absl's pre-init notice)."""
    if line.startswith(_ABSL_PREINIT_NOTICE):
        return _MIN_LOG_LEVEL >= 1
    match = _LOG_LINE.match(line)
    return bool(match) and _SEVERITY[match.group(1) or match.group(2)] < _MIN_LOG_LEVEL


def _flush_c_stdio() -> None:
    """``fflush(NULL)``: push C-level buffered output to its file descriptor now, not at exit."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no libc symbol table (e.g. some Windows builds): nothing to do
        pass


def _import_tensorflow() -> Any:
    """Import TensorFlow without importing JAX and without its import-time log banners.

    Two TensorFlow quirks are handled here:

    * ``tensorflow.lite.python.util`` runs ``from jax import jit`` at import time whenever JAX is
      installed, so ``import tensorflow`` would drag in JAX (seconds, and another framework in
      ``sys.modules``). TFLite catches the ImportError, so JAX is hidden (``sys.modules["jax"] =
      None``) for the duration of the import only; the TFLite JAX converter is not used here.
    * oneDNN's "custom operations are on" notice is logged through absl before absl is
      initialised, which ignores ``TF_CPP_MIN_LOG_LEVEL`` (tensorflow/tensorflow#100442). The
      import therefore runs with file descriptor 2 captured; every captured line is written back
      except C++ log lines below the requested level, so real errors still reach the terminal.
    """
    hide_jax = "jax" not in sys.modules
    if hide_jax:
        sys.modules["jax"] = None  # type: ignore[assignment]  # makes "import jax" raise ImportError
    capture = _MIN_LOG_LEVEL >= 1 and sys.stderr is not None
    if capture:
        try:
            sys.stderr.flush()
            saved_fd = os.dup(2)
        except (OSError, ValueError):  # no usable fd 2 (closed, or a detached stream): nothing to filter
            capture = False
    if capture:
        buffer = tempfile.TemporaryFile()
        os.dup2(buffer.fileno(), 2)
    try:
        import tensorflow

        return tensorflow
    finally:
        if capture:
            sys.stderr.flush()
            _flush_c_stdio()  # absl's notices sit in C stdio's buffer when stderr is not a terminal
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            buffer.seek(0)
            text = buffer.read().decode("utf-8", errors="replace")
            buffer.close()
            kept = "".join(line for line in text.splitlines(keepends=True) if not _is_log_noise(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
        if hide_jax and sys.modules.get("jax", False) is None:
            del sys.modules["jax"]


tf = _import_tensorflow()

# No XLA: tried with jit_compile=True, the d2l ed.1 step (batch 32, 35 steps, 512 hiddens) took
# 6.6 s to compile (the limit is 5 s) and then ran slower than the graph runtime with oneDNN
# (19k vs 26k tokens/s on 2 shared cores): XLA's CPU dots do no better on these small,
# sequential matmuls. The switch stays for machines where that balance differs.
_JIT_COMPILE = False


# Token ids are transposed to time-major on the host (a tiny int copy): a Transpose op on an
# integer tensor inside a graph makes oneDNN log an E-level "oneDNN supports DT_INT32 only on
# platforms with AVX-512" line, which TF_CPP_MIN_LOG_LEVEL=2 does not hide.
def _tokens(X: np.ndarray) -> Any:
    """``(batch, steps)`` token ids -> ``(steps, batch)`` int32 tensor, time-major."""
    return tf.constant(np.ascontiguousarray(np.asarray(X, dtype=np.int32).T))


def _labels(Y: np.ndarray) -> Any:
    """``(batch, steps)`` labels -> ``(steps * batch,)``, the time-major row order of the logits."""
    return tf.constant(np.asarray(Y, dtype=np.int32).T.reshape(-1))


def _transposed(W: Any) -> Any:
    """``W^T`` as its own tensor, for the backward chains' ``d @ W^T``.

    Not a bare ``tf.transpose``: grappler folds a Transpose feeding a MatMul into the MatMul's
    ``transpose_b``, which oneDNN runs 2.2-2.8x slower at (32, 512) @ (512, 512) (35 of them: 13.5
    against 6.3 ms on an AMD EPYC, `python -m benchmarks.probes tf-transpose`). ``Snapshot`` (a copy
    op grappler does not look through) keeps the transposed copy, made once per step: the d2l ed. 1
    step 1.44x faster (`python -m benchmarks.probes ab tensorflow DIR`, same first-epoch loss).
    """
    return tf.raw_ops.Snapshot(input=tf.transpose(W))


@tf.custom_gradient
def _recurrence(inputs: Any, h0: Any, W_hh: Any) -> tuple[Any, Any]:
    """``H_t = tanh(inputs[t] + H_{t-1} W_hh)`` for every ``t``, with a hand-written BPTT gradient.

    Autodiff of the unrolled loop would build one ``(H, B) @ (B, H)`` product per step for
    ``dW_hh``; the custom gradient runs only the sequential part step by step and forms ``dW_hh``
    as one ``(H, T*B) @ (T*B, H)`` matmul, the same sum as the oracle's, in another order.

    Args:
        inputs: ``(T, B, H)`` pre-activations ``X_t W_xh + b_h`` (static ``T``: the loop unrolls).
        h0: ``(B, H)`` initial state.
        W_hh: ``(H, H)``.

    Returns:
        ``hs`` ``(T, B, H)``, the hidden states ``H_1 ... H_T``, and the gradient function.
    """
    h, hs = h0, []
    for x_t in tf.unstack(inputs):  # one op splits the steps; indexing would add one per step
        h = tf.tanh(x_t + tf.matmul(h, W_hh))
        hs.append(h)

    def grad(d_hs: Any) -> tuple[Any, Any, Any]:
        W_hh_T = _transposed(W_hh)  # transposed once, not in each of the T backward matmuls
        d_next, d_pres = tf.zeros_like(h0), []
        for d_h, h_t in zip(reversed(tf.unstack(d_hs)), reversed(hs)):
            # Through tanh: dy * (1 - y^2) in one kernel, the op TensorFlow's own tanh gradient uses.
            d_pre = tf.raw_ops.TanhGrad(y=h_t, dy=d_h + d_next)
            d_pres.append(d_pre)
            d_next = tf.matmul(d_pre, W_hh_T)
        d_inputs = tf.stack(d_pres[::-1])  # (T, B, H)
        prev = tf.stack([h0, *hs[:-1]])  # H_0 ... H_{T-1}
        num_hiddens = W_hh.shape[0]
        d_W_hh = tf.matmul(  # (H, T*B) @ (T*B, H)
            tf.reshape(prev, (-1, num_hiddens)), tf.reshape(d_inputs, (-1, num_hiddens)), transpose_a=True
        )
        return d_inputs, d_next, d_W_hh

    return tf.stack(hs), grad  # (T, B, H)


@tf.custom_gradient
def _add_bias(x: Any, b: Any) -> tuple[Any, Any]:
    """``x + b`` (``b`` broadcast over every leading axis of ``x``) whose bias gradient sums in float64.

    TensorFlow's own gradient of the broadcast sums the T·B rows in float32: at T·B = 262,144 (d2l ed. 2,
    batch 8192) b_q's gradient was 3.6e-4 off its float64 value (BiasAdd's 6.8e-4), against 3.7e-8 with a
    float64 accumulator, which costs a cast of the (T·B, V) gradient. Used for the output layer only: the
    hidden biases' gradients, (T, B, H) sums, were 2.0e-5 off there, and casting them too made the d2l
    ed. 1 step 0.943x [0.868-1.026] as fast (python -m benchmarks.probes ab tensorflow DIR 30)."""
    def grad(d: Any) -> tuple[Any, Any]:
        axes = list(range(len(d.shape) - 1))
        return d, tf.cast(tf.reduce_sum(tf.cast(d, tf.float64), axis=axes), d.dtype)

    return x + b, grad


def _fused_forward(W_xh: Any, W_hh: Any, b_h: Any, W_hq: Any, b_q: Any, X: Any, h0: Any) -> tuple[Any, Any]:
    """The forward pass with the fast-mode algebra (traced inside a ``tf.function``).

    Args:
        W_xh, W_hh, b_h, W_hq, b_q: the params (variables or tensors).
        X: ``(T, B)`` int32 token ids, already time-major.
        h0: ``(B, H)`` initial state.

    Returns:
        ``(logits, hs)``: logits ``(T * B, V)`` time-major, hidden states ``(T, B, H)``.
    """
    inputs = tf.gather(W_xh, X) + b_h  # (T, B, H): one-hot @ W_xh is a row gather
    hs = _recurrence(inputs, h0, W_hh)
    logits = _add_bias(tf.matmul(tf.reshape(hs, (-1, W_hh.shape[0])), W_hq), b_q)  # one matmul for all steps
    return logits, hs


def _fused_loss_and_grads(variables: list[Any], X: Any, y: Any, h0: Any) -> tuple[Any, list[Any], Any]:
    """Mean cross-entropy, dense gradients (in ``PARAM_NAMES`` order) and the final state."""
    with tf.GradientTape() as tape:
        tape.watch(variables)  # needed when they arrive as tensors (forward/loss_and_grads signatures)
        logits, hs = _fused_forward(*variables, X, h0)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    # The gather's gradient is IndexedSlices; the norm and SGD want a dense (V, H) tensor.
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    return loss, grads, tf.stop_gradient(hs[-1])


def _clip(grads: list[Any], max_grad_norm: Any) -> tuple[list[Any], Any]:
    """d2l's rule on the device: scale by θ/‖g‖ only when ‖g‖ > θ.

    ``tf.clip_by_global_norm`` is not used: it scales by ``θ * min(1/‖g‖, 1/θ)``, which differs
    from θ/‖g‖ in the last bit and, below the bound, multiplies by ``θ * (1/θ)``, not always
    exactly 1 (e.g. θ = 49 in float64), so it would not leave small gradients untouched.
    """
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))
    # where, not a division guarded afterwards: for zero gradients θ/0 = inf is computed but never
    # selected, so no NaN appears (and nothing differentiates through this).
    scale = tf.where(norm > max_grad_norm, max_grad_norm / norm, tf.ones_like(norm))
    return [g * scale for g in grads], norm


# --- fast mode for every other model: one custom-gradient recurrence per cell ---------------------
# Each recurrence takes the input-side pre-activations of every gate for all steps at once, and
# runs only the sequential part step by step; its hand-written BPTT returns those pre-activations'
# gradients (so the input weights' gradients are one matmul, or one scatter-add for the one-hot
# layer, outside) and forms each recurrent weight's gradient as one (H, T*B) @ (T*B, n*H) matmul,
# as _recurrence does for the tanh RNN. Gates are concatenated in d2l's order (cells.py), so one
# (B, H) @ (H, n*H) matmul per step serves every gate that reads H directly.


def _state_grad(d: Any, like: Any) -> Any:
    """The upstream gradient of a returned final state, zeros when nothing depends on it."""
    return tf.zeros_like(like) if d is None else d


@tf.custom_gradient
def _gru_recurrence(inputs: Any, h0: Any, W_h_zr: Any, W_hh: Any) -> tuple[Any, Any]:
    """d2l's GRU (reset before the recurrent matmul) over every step.

    Args:
        inputs: ``(T, B, 3H)`` input-side pre-activations ``[X W_xz + b_z | X W_xr + b_r | X W_xh + b_h]``.
        h0: ``(B, H)``.
        W_h_zr: ``(H, 2H)`` = ``[W_hz | W_hr]``; W_hh: ``(H, H)``, the candidate's, applied to ``R ⊙ H``.

    Returns:
        ``hs`` ``(T, B, H)`` and the gradient function.
    """
    H = W_hh.shape[0]
    h, hs, cache = h0, [], []
    for x_t in tf.unstack(inputs):
        zr = tf.sigmoid(x_t[:, : 2 * H] + tf.matmul(h, W_h_zr))
        z, r = zr[:, :H], zr[:, H:]
        hr = r * h
        c = tf.tanh(x_t[:, 2 * H:] + tf.matmul(hr, W_hh))
        cache.append((h, zr, hr, c))
        h = z * h + (1 - z) * c
        hs.append(h)

    def grad(d_hs: Any) -> tuple[Any, Any, Any, Any]:
        W_zr_T, W_hh_T = _transposed(W_h_zr), _transposed(W_hh)
        d_next, d_zrs, d_cs = tf.zeros_like(h0), [], []
        for d_h, (h_prev, zr, hr, c) in zip(reversed(tf.unstack(d_hs)), reversed(cache)):
            d_h = d_h + d_next
            z, r = zr[:, :H], zr[:, H:]
            d_c = tf.raw_ops.TanhGrad(y=c, dy=d_h * (1 - z))
            d_hr = tf.matmul(d_c, W_hh_T)
            d_zr = tf.raw_ops.SigmoidGrad(y=zr, dy=tf.concat([d_h * (h_prev - c), d_hr * h_prev], 1))
            d_next = d_h * z + d_hr * r + tf.matmul(d_zr, W_zr_T)
            d_zrs.append(d_zr)
            d_cs.append(d_c)
        d_zr_all, d_c_all = tf.stack(d_zrs[::-1]), tf.stack(d_cs[::-1])
        prev = tf.reshape(tf.stack([c[0] for c in cache]), (-1, H))
        hrs = tf.reshape(tf.stack([c[2] for c in cache]), (-1, H))
        d_W_h_zr = tf.matmul(prev, tf.reshape(d_zr_all, (-1, 2 * H)), transpose_a=True)
        d_W_hh = tf.matmul(hrs, tf.reshape(d_c_all, (-1, H)), transpose_a=True)
        return tf.concat([d_zr_all, d_c_all], 2), d_next, d_W_h_zr, d_W_hh

    return tf.stack(hs), grad


@tf.custom_gradient
def _gru_reset_after_recurrence(inputs: Any, h0: Any, W_h: Any, b_hn: Any) -> tuple[Any, Any]:
    """The reset-after GRU (cuDNN's formula) over every step.

    Args:
        inputs: ``(T, B, 3H)`` = ``[X W_xz + b_z | X W_xr + b_r | X W_xn + b_n]``.
        h0: ``(B, H)``.
        W_h: ``(H, 3H)`` = ``[W_hz | W_hr | W_hn]``; b_hn: ``(H,)``, inside the reset.

    Returns:
        ``hs`` ``(T, B, H)`` and the gradient function.
    """
    H = W_h.shape[0]
    h, hs, cache = h0, [], []
    for x_t in tf.unstack(inputs):
        hw = tf.matmul(h, W_h)
        zr = tf.sigmoid(x_t[:, : 2 * H] + hw[:, : 2 * H])
        z, r = zr[:, :H], zr[:, H:]
        hn = hw[:, 2 * H:] + b_hn
        n = tf.tanh(x_t[:, 2 * H:] + r * hn)
        cache.append((h, zr, hn, n))
        h = z * h + (1 - z) * n
        hs.append(h)

    def grad(d_hs: Any) -> tuple[Any, Any, Any, Any]:
        W_h_T = _transposed(W_h)
        d_next, d_zrs, d_ns, d_hns = tf.zeros_like(h0), [], [], []
        for d_h, (h_prev, zr, hn, n) in zip(reversed(tf.unstack(d_hs)), reversed(cache)):
            d_h = d_h + d_next
            z, r = zr[:, :H], zr[:, H:]
            d_n = tf.raw_ops.TanhGrad(y=n, dy=d_h * (1 - z))
            d_zr = tf.raw_ops.SigmoidGrad(y=zr, dy=tf.concat([d_h * (h_prev - n), d_n * hn], 1))
            d_hn = d_n * r  # dL/d(H W_hn + b_hn)
            d_next = d_h * z + tf.matmul(tf.concat([d_zr, d_hn], 1), W_h_T)
            d_zrs.append(d_zr)
            d_ns.append(d_n)
            d_hns.append(d_hn)
        d_zr_all, d_hn_all = tf.stack(d_zrs[::-1]), tf.stack(d_hns[::-1])
        prev = tf.reshape(tf.stack([c[0] for c in cache]), (-1, H))
        d_W_h = tf.matmul(prev, tf.reshape(tf.concat([d_zr_all, d_hn_all], 2), (-1, 3 * H)), transpose_a=True)
        d_b_hn = tf.reduce_sum(d_hn_all, axis=(0, 1))
        return tf.concat([d_zr_all, tf.stack(d_ns[::-1])], 2), d_next, d_W_h, d_b_hn

    return tf.stack(hs), grad


@tf.custom_gradient
def _lstm_recurrence(inputs: Any, h0: Any, c0: Any, W_h: Any) -> tuple[Any, Any]:
    """d2l's LSTM over every step.

    Args:
        inputs: ``(T, B, 4H)`` = ``[X W_xi + b_i | X W_xf + b_f | X W_xo + b_o | X W_xc + b_c]``.
        h0, c0: ``(B, H)``.
        W_h: ``(H, 4H)`` = ``[W_hi | W_hf | W_ho | W_hc]``.

    Returns:
        ``(hs (T, B, H), final memory C_T (B, H))`` and the gradient function.
    """
    H = W_h.shape[0]
    h, c, hs, cache = h0, c0, [], []
    for x_t in tf.unstack(inputs):
        a = x_t + tf.matmul(h, W_h)
        ifo, g = tf.sigmoid(a[:, : 3 * H]), tf.tanh(a[:, 3 * H:])
        c_prev = c
        c = ifo[:, H: 2 * H] * c + ifo[:, :H] * g
        tc = tf.tanh(c)
        h = ifo[:, 2 * H:] * tc
        cache.append((ifo, g, c_prev, tc))
        hs.append(h)

    def grad(d_hs: Any, d_c_final: Any) -> tuple[Any, Any, Any, Any]:
        W_h_T = _transposed(W_h)
        d_next, d_c_next, d_as = tf.zeros_like(h0), _state_grad(d_c_final, c0), []
        for d_h, (ifo, g, c_prev, tc) in zip(reversed(tf.unstack(d_hs)), reversed(cache)):
            d_h = d_h + d_next
            i, f, o = ifo[:, :H], ifo[:, H: 2 * H], ifo[:, 2 * H:]
            d_c = d_c_next + tf.raw_ops.TanhGrad(y=tc, dy=d_h * o)
            d_ifo = tf.raw_ops.SigmoidGrad(y=ifo, dy=tf.concat([d_c * g, d_c * c_prev, d_h * tc], 1))
            d_a = tf.concat([d_ifo, tf.raw_ops.TanhGrad(y=g, dy=d_c * i)], 1)
            d_next = tf.matmul(d_a, W_h_T)
            d_c_next = d_c * f
            d_as.append(d_a)
        d_inputs = tf.stack(d_as[::-1])  # (T, B, 4H)
        prev = tf.reshape(tf.stack([h0, *hs[:-1]]), (-1, H))
        d_W_h = tf.matmul(prev, tf.reshape(d_inputs, (-1, 4 * H)), transpose_a=True)
        return d_inputs, d_next, d_c_next, d_W_h

    return (tf.stack(hs), c), grad


def _layer_recurrence(model: Model, p: dict[str, Any], layer: int, inputs: Any, state: tuple) -> tuple[Any, list]:
    """One layer's recurrence on its input-side pre-activations; returns ``hs`` and its final state."""
    s = layer_suffix(layer)
    cell = model.cell.name
    if cell == "rnn":
        hs = _recurrence(inputs, state[0], p[f"W_hh{s}"])
        return hs, [hs[-1]]
    if cell == "gru":
        W_h_zr = tf.concat([p[f"W_hz{s}"], p[f"W_hr{s}"]], 1)
        hs = _gru_recurrence(inputs, state[0], W_h_zr, p[f"W_hh{s}"])
        return hs, [hs[-1]]
    if cell == "gru-reset-after":
        W_h = tf.concat([p[f"W_h{g}{s}"] for g in model.cell.gates], 1)
        hs = _gru_reset_after_recurrence(inputs, state[0], W_h, p[f"b_hn{s}"])
        return hs, [hs[-1]]
    W_h = tf.concat([p[f"W_h{g}{s}"] for g in model.cell.gates], 1)
    hs, c = _lstm_recurrence(inputs, state[0], state[1], W_h)
    return hs, [hs[-1], c]


def _model_forward(model: Model, values: list[Any], X: Any, states: list[Any]) -> tuple[Any, list[Any]]:
    """Any model's forward pass with the fast-mode algebra (traced inside a ``tf.function``).

    Args:
        model: the cell and depth.
        values: the params in ``model.param_names()`` order.
        X: ``(T, B)`` int32 token ids, time-major.
        states: one ``(B, H)`` tensor per entry of ``model.state_names()``.

    Returns:
        ``(logits (T * B, V) time-major, final states)``.
    """
    p = dict(zip(model.param_names(), values))
    per_layer = len(model.cell.state)
    hidden_side = set(model.cell.hidden_bias_gates)  # b_hn sits inside the reset: not folded
    num_steps, batch_size = X.shape
    hs, finals = None, []
    for layer in range(model.num_layers):
        s = layer_suffix(layer)
        W_x = tf.concat([p[f"W_x{g}{s}"] for g in model.cell.gates], 1)  # (inputs, gates * H)
        # A second bias adds to the same pre-activation as the first: one sum, the same gradient.
        b = tf.concat([p[f"b_{g}{s}"] + p[f"b_h{g}{s}"] if f"b_h{g}{s}" in p and g not in hidden_side
                       else p[f"b_{g}{s}"] for g in model.cell.gates], 0)
        if hs is None:
            inputs = tf.gather(W_x, X) + b  # (T, B, gates * H): one-hot @ W_x is a row gather
        else:  # the layer below's outputs for all steps in one matmul
            num_hiddens = hs.shape[-1]
            inputs = tf.reshape(tf.matmul(tf.reshape(hs, (-1, num_hiddens)), W_x), (num_steps, batch_size, -1)) + b
        hs, final = _layer_recurrence(model, p, layer, inputs, tuple(states[layer * per_layer:(layer + 1) * per_layer]))
        finals += final
    logits = _add_bias(tf.matmul(tf.reshape(hs, (-1, hs.shape[-1])), p["W_hq"]), p["b_q"])
    return logits, finals


def _model_loss_and_grads(
    model: Model, values: list[Any], X: Any, y: Any, states: list[Any]
) -> tuple[Any, list[Any], list[Any]]:
    """Mean cross-entropy, dense gradients (in ``model.param_names()`` order) and the final states."""
    with tf.GradientTape() as tape:
        tape.watch(values)
        logits, finals = _model_forward(model, values, X, states)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, values)]
    return loss, grads, [tf.stop_gradient(f) for f in finals]


def _compile(python_fn: Any, signature: list | None) -> Any:
    """``python_fn`` as a ``tf.function`` (no autograph: its loops are plain Python over static step
    counts and must unroll).

    Each compiled function is traced once, for one key (shapes, dtype; for the layers, also one
    params object), but TensorFlow counts traces per Python *code object* across all functions, so
    many keys (e.g. tests, or lockstep probes on fresh params) would log its "triggered tf.function
    retracing" warning. That warning is off for these functions; the attribute is the one
    TensorFlow itself sets on restored SavedModel functions, and a TensorFlow without it ignores it.
    """
    fn = tf.function(python_fn, input_signature=signature, jit_compile=_JIT_COMPILE, autograph=False)
    fn._omit_frequent_tracing_warning = True
    return fn


def _check_gpu(device: str) -> None:
    if device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise GPUUnavailableError(
            "device='gpu' was requested, but TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
            "is empty). Install a CUDA build of TensorFlow on a machine with a GPU, or use device='cpu'."
        )


class TensorFlowBackend(Backend):
    """TensorFlow 2 version of the d2l RNN-from-scratch primitives, for every cell and depth.

    Params are ``tf.Variable`` objects, so SGD updates them in place with ``assign_sub``.

    Args:
        device: ``"cpu"`` or ``"gpu"``; ``"gpu"`` places params, data and state on ``/GPU:0``.
        mode: ``"eager"`` (d2l style, op by op) or ``"fast"`` (one compiled ``tf.function`` per
            (shapes, dtype) for the forward pass, loss and grads, and the whole train step).
        model: any cell, depth and bias layout (default: d2l's one-layer tanh RNN).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but TensorFlow sees no GPU.
    """

    name = "tensorflow"
    framework = "tensorflow"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        _check_gpu(device)
        self._device = "/GPU:0" if device == "gpu" else "/CPU:0"
        self._names = self.model.param_names()
        # d2l's own model keeps its tuned fast path (_fused_forward); every other model runs
        # _model_forward, which computes the same thing for any cell and depth.
        self._tanh_rnn = self.model == RNN
        # Compiled functions keyed by (kind, shapes, dtype): one trace each, never a retrace.
        self._compiled: dict[tuple, Any] = {}

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return None  # every cell, any depth, one or two biases

    # --- conversion -------------------------------------------------------------------------
    def version(self) -> str:
        return tf.__version__

    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        validate_params(params, self.model)
        with tf.device(self._device):
            return {k: tf.Variable(np.asarray(params[k]), name=k) for k in self._names}

    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        return {k: np.array(self.as_numpy(params[k]), copy=True) for k in self._names}

    def as_numpy(self, x: Any) -> np.ndarray:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    # --- the model --------------------------------------------------------------------------
    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> Any:
        with tf.device(self._device):
            # (steps, batch, vocab)
            return tf.one_hot(np.asarray(X, dtype=np.int32).T, vocab_size, dtype=check_dtype(dtype))

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        with tf.device(self._device):
            dtype = check_dtype(dtype)
            return tuple(tf.zeros((batch_size, num_hiddens), dtype=dtype) for _ in self.model.state_names())

    def _state(self, state: State, dtype: Any) -> tuple:
        """The state as tensors of the params' dtype on this device (NumPy accepted)."""
        with tf.device(self._device):
            out = []
            for s in state:
                s = tf.convert_to_tensor(s)
                out.append(s if s.dtype == dtype else tf.cast(s, dtype))
            return tuple(out)

    def _step(self, p: dict[str, Any], layer: int, X: Any, state: tuple) -> tuple:
        """One time step of one layer, as d2l writes the cell (``X`` ``(batch, inputs)``)."""
        s = layer_suffix(layer)

        def gate(g: str, X: Any, H: Any) -> Any:  # X W_x{g} + H W_h{g} + b_{g} (+ b_h{g} with a second bias)
            out = tf.matmul(X, p[f"W_x{g}{s}"]) + tf.matmul(H, p[f"W_h{g}{s}"]) + p[f"b_{g}{s}"]
            return out + p[f"b_h{g}{s}"] if f"b_h{g}{s}" in p else out

        cell = self.model.cell.name
        if cell == "rnn":
            (H,) = state
            return (tf.tanh(gate("h", X, H)),)
        if cell == "gru":
            (H,) = state
            Z, R = tf.sigmoid(gate("z", X, H)), tf.sigmoid(gate("r", X, H))
            H_tilda = tf.tanh(gate("h", X, R * H))  # d2l: the reset gate acts before the recurrent matmul
            return (Z * H + (1 - Z) * H_tilda,)
        if cell == "gru-reset-after":
            (H,) = state
            Z, R = tf.sigmoid(gate("z", X, H)), tf.sigmoid(gate("r", X, H))
            N = tf.tanh(tf.matmul(X, p[f"W_xn{s}"]) + p[f"b_n{s}"] + R * (tf.matmul(H, p[f"W_hn{s}"]) + p[f"b_hn{s}"]))
            return (Z * H + (1 - Z) * N,)
        H, C = state
        I, F, O = (tf.sigmoid(gate(g, X, H)) for g in "ifo")
        C_tilda = tf.tanh(gate("c", X, H))
        C = F * C + I * C_tilda
        return (O * tf.tanh(C), C)

    def _rnn(self, params: Params, inputs: Any, state: tuple) -> tuple[Any, tuple]:
        """d2l's ``rnn``, stacked: each layer steps through the time-major one-hot ``inputs``
        (or the outputs of the layer below), then the output layer reads the top layer's states."""
        per_layer = len(self.model.cell.state)
        xs, final = list(inputs), []  # (batch, vocab) per step
        for layer in range(self.model.num_layers):
            s = state[layer * per_layer:(layer + 1) * per_layer]
            outputs = []
            for X_t in xs:
                s = self._step(params, layer, X_t, s)
                outputs.append(s[0])
            xs, final = outputs, final + list(s)
        W_hq, b_q = params["W_hq"], params["b_q"]
        logits = [tf.matmul(H, W_hq) + b_q for H in xs]
        return tf.concat(logits, axis=0), tuple(final)  # (steps * batch, vocab), rows time-major

    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[Any, State]:
        dtype = params["W_hq"].dtype
        states = self._state(state, dtype)
        if self.mode == "fast":
            with tf.device(self._device):
                X = _tokens(X)
            if self._tanh_rnn:
                logits, h = self._function("forward", params, X)(*self._values(params), X, states[0])
                return logits, (h,)
            logits, finals = self._model_function("forward", params, X)(self._values(params), X, list(states))
            return logits, tuple(finals)
        with tf.device(self._device):
            return self._rnn(params, self.one_hot(X, params["W_hq"].shape[1], dtype.name), states)

    def loss_and_grads(self, params: Params, X: np.ndarray, Y: np.ndarray, state: State) -> tuple[Any, Params, State]:
        dtype = params["W_hq"].dtype
        states = self._state(state, dtype)
        if self.mode == "fast":
            with tf.device(self._device):
                X, y = _tokens(X), _labels(Y)
            if self._tanh_rnn:
                fn = self._function("loss_and_grads", params, X)
                loss, grads, h = fn(*self._values(params), X, y, states[0])
                return loss, dict(zip(self._names, grads)), (h,)
            loss, grads, finals = self._model_function("loss_and_grads", params, X)(self._values(params), X, y,
                                                                                       list(states))
            return loss, dict(zip(self._names, grads)), tuple(finals)
        variables = self._values(params)
        with tf.device(self._device), tf.GradientTape() as tape:
            tape.watch(variables)  # a no-op for tf.Variable; lets plain tensors work too
            logits, final = self._rnn(params, self.one_hot(X, params["W_hq"].shape[1], dtype.name), states)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=_labels(Y), logits=logits))
        grads = tape.gradient(loss, variables)
        # Eager tensors hold no graph, but stop_gradient says what the contract wants: the next
        # minibatch's tape must not reach back into this one.
        return loss, dict(zip(self._names, grads)), tuple(tf.stop_gradient(s) for s in final)

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, Any]:
        # One global norm over all tensors, as in d2l, but without d2l's per-parameter .numpy().
        with tf.device(self._device):
            clipped, norm = _clip([tf.convert_to_tensor(grads[k]) for k in self._names], max_grad_norm)
        return dict(zip(self._names, clipped)), norm

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        with tf.device(self._device):
            for k in self._names:
                if isinstance(params[k], tf.Variable):
                    params[k].assign_sub(lr * grads[k])  # in place; the Python float takes p's dtype
                else:
                    params[k] = params[k] - lr * grads[k]
        return params

    # --- fast mode --------------------------------------------------------------------------
    def train_step(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, Any, Any, State]:
        if self.mode != "fast" or not all(isinstance(params[k], tf.Variable) for k in self._names):
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        dtype = params["W_hq"].dtype
        states = self._state(state, dtype)
        with tf.device(self._device):
            # lr and θ go in as tensors so that new values reuse the compiled step.
            X, y = _tokens(X), _labels(Y)
            hyper = tf.constant(lr, dtype), tf.constant(max_grad_norm, dtype)
        if self._tanh_rnn:
            loss, norm, h = self._function("train_step", params, X)(*self._values(params), X, y, states[0], *hyper)
            return params, loss, norm, (h,)
        loss, norm, finals = self._model_function("train_step", params, X)(self._values(params), X, y, list(states),
                                                                            *hyper)
        return params, loss, norm, tuple(finals)

    def _values(self, params: Params) -> list[Any]:
        return [params[k] for k in self._names]

    def _function(self, kind: str, params: Params, X: Any) -> Any:
        """The compiled ``kind`` for these shapes and dtype, traced on first use.

        Each function gets a fixed ``input_signature``, so it is traced exactly once; a new batch
        shape (e.g. ``predict``'s ``(1, 1)``) or dtype gets its own entry instead of a retrace.
        """
        dtype = params["W_hh"].dtype
        vocab_size, num_hiddens = params["W_xh"].shape
        num_steps, batch_size = X.shape  # X is time-major here
        X_dtype = X.dtype
        key = (kind, batch_size, num_steps, vocab_size, num_hiddens, dtype.name, X_dtype.name)
        if key in self._compiled:
            return self._compiled[key]

        spec = tf.TensorSpec
        param_specs = [spec(params[k].shape, dtype) for k in PARAM_NAMES]
        X_spec = spec((num_steps, batch_size), X_dtype)
        y_spec = spec((num_steps * batch_size,), X_dtype)
        h_spec = spec((batch_size, num_hiddens), dtype)
        device = self._device

        if kind == "forward":

            def forward(W_xh, W_hh, b_h, W_hq, b_q, X, h0):  # noqa: ANN001, ANN202, N803
                with tf.device(device):
                    logits, hs = _fused_forward(W_xh, W_hh, b_h, W_hq, b_q, X, h0)
                    return logits, hs[-1]

            signature = [*param_specs, X_spec, h_spec]
            python_fn = forward
        elif kind == "loss_and_grads":

            def loss_and_grads(W_xh, W_hh, b_h, W_hq, b_q, X, y, h0):  # noqa: ANN001, ANN202, N803
                with tf.device(device):
                    return _fused_loss_and_grads([W_xh, W_hh, b_h, W_hq, b_q], X, y, h0)

            signature = [*param_specs, X_spec, y_spec, h_spec]
            python_fn = loss_and_grads
        else:

            def train_step(W_xh, W_hh, b_h, W_hq, b_q, X, y, h0, lr, max_grad_norm):  # noqa: ANN001, ANN202, N803
                # The variables come in as arguments (traced by shape and dtype), so one trace
                # serves every params dict of these shapes, and assign_sub updates them in place.
                variables = [W_xh, W_hh, b_h, W_hq, b_q]
                with tf.device(device):
                    loss, grads, h = _fused_loss_and_grads(variables, X, y, h0)
                    grads, norm = _clip(grads, max_grad_norm)
                    for var, g in zip(variables, grads):
                        var.assign_sub(lr * g)
                    return loss, norm, h

            # Variables cannot be described by a TensorSpec, so this one is keyed by our cache and
            # traced once per key from its first call (lr and θ are scalar tensors, never Python
            # floats, so their values never trigger a retrace).
            signature = None
            python_fn = train_step

        fn = _compile(python_fn, signature)
        self._compiled[key] = fn
        return fn

    def _model_function(self, kind: str, params: Params, X: Any) -> Any:
        """:meth:`_function` for every model but the one-layer tanh RNN: params and states travel
        as lists (in ``model.param_names()`` / ``model.state_names()`` order)."""
        dtype = params["W_hq"].dtype
        num_hiddens, vocab_size = params["W_hq"].shape
        num_steps, batch_size = X.shape  # X is time-major here
        key = ("model", kind, batch_size, num_steps, vocab_size, num_hiddens, dtype.name, X.dtype.name)
        if key in self._compiled:
            return self._compiled[key]

        spec = tf.TensorSpec
        param_specs = [spec(params[k].shape, dtype) for k in self._names]
        X_spec = spec((num_steps, batch_size), X.dtype)
        y_spec = spec((num_steps * batch_size,), X.dtype)
        state_specs = [spec((batch_size, num_hiddens), dtype) for _ in self.model.state_names()]
        device, model = self._device, self.model

        if kind == "forward":

            def python_fn(values, X, states):  # noqa: ANN001, ANN202, N803
                with tf.device(device):
                    return _model_forward(model, values, X, states)

            signature = [param_specs, X_spec, state_specs]
        elif kind == "loss_and_grads":

            def python_fn(values, X, y, states):  # noqa: ANN001, ANN202, N803
                with tf.device(device):
                    return _model_loss_and_grads(model, values, X, y, states)

            signature = [param_specs, X_spec, y_spec, state_specs]
        else:

            def python_fn(variables, X, y, states, lr, max_grad_norm):  # noqa: ANN001, ANN202, N803
                # As in _function: variables as arguments, one trace per key, updated in place.
                with tf.device(device):
                    loss, grads, finals = _model_loss_and_grads(model, variables, X, y, states)
                    grads, norm = _clip(grads, max_grad_norm)
                    for var, g in zip(variables, grads):
                        var.assign_sub(lr * g)
                    return loss, norm, finals

            signature = None

        fn = _compile(python_fn, signature)
        self._compiled[key] = fn
        return fn


# --- the layers implementation: Keras 3's own recurrent layers and Dense ------------------------


def _import_keras() -> Any:
    """Keras 3 on TensorFlow, for the layers implementation only.

    ``import tensorflow`` normally imports Keras itself; Keras reads ``KERAS_BACKEND`` once, at its
    import, so a Keras not yet imported is pointed at TensorFlow here (another backend would run
    JAX or torch code, not TensorFlow's).

    Raises:
        BackendUnavailableError: Keras was already imported with another backend.
    """
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    if keras.backend.backend() != "tensorflow":
        raise BackendUnavailableError(
            f"keras was already imported with the {keras.backend.backend()!r} backend; the TensorFlow layers "
            "implementation needs KERAS_BACKEND=tensorflow (set it before anything imports keras)."
        )
    return keras


# d2l's gate letters in the order of a Keras cell's concatenated kernel columns (and bias).
_KERAS_GATES = {"rnn": ("h",), "gru": ("z", "r", "h"), "gru-reset-after": ("z", "r", "n"), "lstm": ("i", "f", "c", "o")}
# The Keras layer of each cell: its class and default name (the cell is named "<name>_cell").
_KERAS_LAYER = {"rnn": ("SimpleRNN", "simple_rnn"), "gru": ("GRU", "gru"), "gru-reset-after": ("GRU", "gru"),
                "lstm": ("LSTM", "lstm")}


def _keras_prefix(model: Model, layer: int) -> str:
    """``gru/gru_cell``, ``gru_1/gru_cell``...: the variable path prefix of layer ``layer``'s cell,
    named as Keras names a user's stacked layers."""
    base = _KERAS_LAYER[model.cell.name][1]
    return f"{base if layer == 0 else f'{base}_{layer}'}/{base}_cell"


def _keras_paths(model: Model) -> list[str]:
    """Every trained Keras variable's path, in the order of the layers' ``trainable_weights``."""
    cells = [f"{_keras_prefix(model, layer)}/{w}" for layer in range(model.num_layers)
             for w in ("kernel", "recurrent_kernel", "bias")]
    return cells + ["dense/kernel", "dense/bias"]


def _keras_join(model: Model, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """d2l's params -> the Keras variables' values, by path.

    Keras computes ``x @ kernel + bias`` with ``kernel`` ``(inputs, gates * H)``: d2l's
    orientation, gates side by side in Keras' order. ``GRU(reset_after=True)``'s bias is
    ``(2, 3H)``: the input-side row and the recurrent row, whose ``n`` entry is ``b_hn`` and whose
    ``z`` and ``r`` entries are zeros (frozen) unless the model trains them.
    """
    gates, out = _KERAS_GATES[model.cell.name], {}
    for layer in range(model.num_layers):
        s, prefix = layer_suffix(layer), _keras_prefix(model, layer)
        out[f"{prefix}/kernel"] = np.concatenate([p[f"W_x{g}{s}"] for g in gates], 1)
        out[f"{prefix}/recurrent_kernel"] = np.concatenate([p[f"W_h{g}{s}"] for g in gates], 1)
        bias = np.concatenate([p[f"b_{g}{s}"] for g in gates])
        if model.cell.name == "gru-reset-after":
            zeros = np.zeros_like(p[f"b_n{s}"])
            bias = np.stack([bias, np.concatenate([p.get(f"b_h{g}{s}", zeros) for g in gates])])
        out[f"{prefix}/bias"] = bias
    out["dense/kernel"], out["dense/bias"] = p["W_hq"], p["b_q"]
    return out


def _keras_split(model: Model, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Keras variables' values, by path -> d2l's params (copies), the inverse of :func:`_keras_join`."""
    gates, hidden, out = _KERAS_GATES[model.cell.name], model.hidden_bias_gates(), {}
    for layer in range(model.num_layers):
        s, prefix = layer_suffix(layer), _keras_prefix(model, layer)
        kernel, recurrent, bias = (np.asarray(values[f"{prefix}/{w}"]) for w in ("kernel", "recurrent_kernel", "bias"))
        H = recurrent.shape[0]
        for i, g in enumerate(gates):
            cols = slice(i * H, (i + 1) * H)
            out[f"W_x{g}{s}"], out[f"W_h{g}{s}"] = kernel[:, cols], recurrent[:, cols]
            out[f"b_{g}{s}"] = bias[0, cols] if bias.ndim == 2 else bias[cols]
            if g in hidden:
                out[f"b_h{g}{s}"] = bias[1, cols]
    out["W_hq"], out["b_q"] = np.asarray(values["dense/kernel"]), np.asarray(values["dense/bias"])
    return {k: np.array(out[k], copy=True) for k in model.param_names()}


def _keras_layout(model: Model, vocab_size: int | str = "V", num_hiddens: int | str = "H") -> dict[str, Any]:
    """The Keras variables by path: shape and the d2l params they hold (shapes symbolic until known)."""
    gates, hidden, G = _KERAS_GATES[model.cell.name], model.hidden_bias_gates(), len(_KERAS_GATES[model.cell.name])
    V, H = vocab_size, num_hiddens
    GH = G * H if isinstance(H, int) else (f"{G}{H}" if G > 1 else H)

    def row(fmt: str, s: str) -> str:
        return "[" + " | ".join(fmt.format(g=g, s=s) for g in gates) + "]"

    layout: dict[str, Any] = {}
    for layer in range(model.num_layers):
        s, prefix = layer_suffix(layer), _keras_prefix(model, layer)
        layout[f"{prefix}/kernel"] = {"shape": [V if layer == 0 else H, GH], "holds": row("W_x{g}{s}", s)}
        layout[f"{prefix}/recurrent_kernel"] = {"shape": [H, GH], "holds": row("W_h{g}{s}", s)}
        if model.cell.name == "gru-reset-after":
            rec = "[" + " | ".join(f"b_h{g}{s}" if g in hidden else "0" for g in gates) + "]"
            layout[f"{prefix}/bias"] = {"shape": [2, GH], "holds": f"[{row('b_{g}{s}', s)}, {rec}]"}
        else:
            layout[f"{prefix}/bias"] = {"shape": [GH], "holds": row("b_{g}{s}", s)}
    layout["dense/kernel"] = {"shape": [H, V], "holds": "W_hq"}
    layout["dense/bias"] = {"shape": [V], "holds": "b_q"}
    return layout


class _KerasNet:
    """One set of Keras layers: ``num_layers`` recurrent layers (batch-major, each returning its
    sequence and state) and ``Dense(V)``, with the ``tf.Variable`` behind each Keras variable.

    Stacked as separate layers, the way a Keras user stacks them: ``keras.layers.RNN(list_of_cells,
    dtype="float64")`` would wrap the cells in a ``StackedRNNCells`` without the dtype, which then
    computes every step in float32 (keras/src/layers/rnn/rnn.py, Keras 3.15).
    """

    def __init__(self, keras: Any, model: Model, vocab_size: int, num_hiddens: int, dtype: str, device: str,
                 seed: int | None = None) -> None:
        self.model, self.vocab_size, self.num_hiddens, self.dtype = model, vocab_size, num_hiddens, tf.as_dtype(dtype)
        seeds = [int(x) % (2**31 - 1) for x in np.random.SeedSequence(seed).generate_state(2 * model.num_layers + 1)] \
            if seed is not None else None

        def init(i: int, recurrent: bool = True) -> dict[str, Any]:
            # The layers' default initialisers, only given a seed (for default_params).
            if seeds is None:
                return {}
            kw = {"kernel_initializer": keras.initializers.GlorotUniform(seed=seeds[2 * i])}
            if recurrent:
                kw["recurrent_initializer"] = keras.initializers.Orthogonal(seed=seeds[2 * i + 1])
            return kw

        cls_name, base = _KERAS_LAYER[model.cell.name]
        cls = getattr(keras.layers, cls_name)
        options = {"gru": {"reset_after": False}, "gru-reset-after": {"reset_after": True}}.get(model.cell.name, {})
        with tf.device(device):
            self.rnns = []
            for layer in range(model.num_layers):
                # return_sequences: the next layer (or Dense) reads every step; return_state: the
                # final state is carried to the next minibatch. SimpleRNN's default activation is
                # tanh, GRU's and LSTM's recurrent activation sigmoid: d2l's.
                rnn = cls(num_hiddens, return_sequences=True, return_state=True, dtype=dtype,
                          name=base if layer == 0 else f"{base}_{layer}", **options, **init(layer))
                rnn.build((None, None, vocab_size if layer == 0 else num_hiddens))
                self.rnns.append(rnn)
            self.dense = keras.layers.Dense(vocab_size, dtype=dtype, name="dense", **init(model.num_layers, False))
            self.dense.build((None, num_hiddens))
        weights = [w for layer in (*self.rnns, self.dense) for w in layer.trainable_weights]
        # The underlying tf.Variables: GradientTape and assign_sub act on them directly.
        self.variables: dict[str, Any] = {w.path: w.value for w in weights}
        if list(self.variables) != _keras_paths(model):  # another Keras layout must not pass silently
            raise RuntimeError(f"Keras weights {list(self.variables)} are not the layout this backend maps "
                               f"({_keras_paths(model)}).")
        # Entries of a Keras variable that d2l's model does not have (GRU(reset_after=True)'s
        # recurrent z and r biases without a trained second bias): held at zero by a 0/1 mask on
        # their gradient, so they get no update and add nothing to the clipping norm.
        self.masks: dict[str, Any] = {}
        if model.cell.name == "gru-reset-after":
            gates, hidden = _KERAS_GATES[model.cell.name], model.hidden_bias_gates()
            mask = np.ones((2, len(gates) * num_hiddens), dtype=self.dtype.as_numpy_dtype)
            for i, g in enumerate(gates):
                mask[1, i * num_hiddens:(i + 1) * num_hiddens] = g in hidden
            if not mask.all():
                with tf.device(device):
                    self.masks = {f"{_keras_prefix(model, l)}/bias": tf.constant(mask) for l in range(model.num_layers)}
        self.compiled: dict[tuple, Any] = {}  # fast mode's tf.functions, by (kind, batch, steps)

    def __call__(self, X: Any, states: tuple) -> tuple[Any, list[Any]]:
        """Logits ``(T * B, V)`` (rows time-major) and the final states, from int ``X`` ``(B, T)``."""
        batch_size, num_steps = X.shape
        x = tf.one_hot(X, self.vocab_size, dtype=self.dtype)  # (B, T, V): Keras layers are batch-major
        per_layer, finals = len(self.model.cell.state), []
        for layer, rnn in enumerate(self.rnns):
            x, *final = rnn(x, initial_state=list(states[layer * per_layer:(layer + 1) * per_layer]))
            finals += final  # LSTM returns [h, c], d2l's order too
        logits = self.dense(tf.reshape(x, (-1, self.num_hiddens)))  # (B * T, V)
        # Time-major rows by transposing the small logits (V columns), not the states (H columns).
        logits = tf.transpose(tf.reshape(logits, (batch_size, num_steps, self.vocab_size)), (1, 0, 2))
        return tf.reshape(logits, (-1, self.vocab_size)), finals

    def loss_and_grads(self, X: Any, y: Any, states: tuple) -> tuple[Any, list[Any], list[Any]]:
        """Mean cross-entropy, the masked gradients (by ``self.variables``' order) and the final states."""
        variables = list(self.variables.values())
        with tf.GradientTape() as tape:
            logits, finals = self(X, states)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, variables)
        grads = [g * self.masks[k] if k in self.masks else g for k, g in zip(self.variables, grads)]
        return loss, grads, [tf.stop_gradient(f) for f in finals]


class LayerParams(dict):
    """The layers implementation's params: Keras variable path -> ``tf.Variable``, plus ``net``,
    the Keras layers that own them. Gradients are plain dicts with the same keys."""

    net: _KerasNet


class TensorFlowLayersBackend(Backend):
    """The d2l model with Keras 3's own layers: ``SimpleRNN`` / ``GRU`` / ``LSTM`` (one per layer,
    stacked) and ``Dense``, d2l's weights copied into theirs.

    ``mode="eager"`` calls the layers as a user would, under ``tf.GradientTape``, and updates the
    variables with ``assign_sub`` (what ``keras.optimizers.SGD`` does); ``mode="fast"`` wraps the
    same calls, the clipping and the update in one ``tf.function`` per params object and batch shape.
    Keras' layers run their ``tf.while_loop`` over the cell on the CPU (cuDNN only on a GPU, and only for
    the reset-after GRU and the LSTM).

    Args:
        device: ``"cpu"`` or ``"gpu"``.
        mode: ``"eager"`` or ``"fast"``.
        model: any cell and depth (``GRU(reset_after=False)`` is d2l's GRU, ``reset_after=True``
            the reset-after one); a trained second bias is unsupported (see :meth:`unsupported`).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but TensorFlow sees no GPU.
        BackendUnavailableError: Keras runs on another backend in this process.
    """

    name = "tensorflow"
    framework = "tensorflow"
    impl = "layers"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        _check_gpu(device)
        self._keras = _import_keras()
        self._device = "/GPU:0" if device == "gpu" else "/CPU:0"
        self._paths = _keras_paths(self.model)
        self._shapes: tuple[int, int] | None = None  # (V, H) of the last layers built, for param_layout
        # Nets of params objects that no longer exist, by (V, H, dtype): see params_from_numpy.
        self._spare: dict[tuple[int, int, str], list[_KerasNet]] = {}

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return layer_limits.layers_unsupported("tensorflow", model)

    # --- conversion -------------------------------------------------------------------------
    def version(self) -> str:
        return f"{tf.__version__} (keras {self._keras.__version__})"

    def _net(self, vocab_size: int, num_hiddens: int, dtype: str, seed: int | None = None) -> _KerasNet:
        self._shapes = (vocab_size, num_hiddens)
        return _KerasNet(self._keras, self.model, vocab_size, num_hiddens, dtype, self._device, seed)

    def _output_layer_of(self, params: Any) -> tuple[int | None, int | None, str | None]:
        """V, H, dtype: the output layer's bias (V,) and kernel (H, V) (the input checks read them; no conversion)."""
        kernel = params["dense/kernel"]
        return int(params["dense/bias"].shape[0]), int(kernel.shape[0]), kernel.dtype.name

    def params_from_numpy(self, params: dict[str, np.ndarray]) -> LayerParams:
        """New params: Keras layers holding ``params`` (a params object owns its layers' variables).

        Once a params object is garbage (no reference left to the dict), its layers, variables and
        traced ``tf.function``s serve the next params object of the same shapes and dtype, which
        assigns its own values: a new net would trace its functions again (~2 s each on a 2-core
        machine), and the re-anchored checks build params at every checkpoint (the verdict's test of
        a two-layer GRU traced 9 nets in 16 s). So do not keep a params object's variables after
        dropping the object itself.
        """
        V, H, dtype = validate_params(params, self.model)
        spare = self._spare.setdefault((V, H, dtype), [])
        if spare:
            net, self._shapes = spare.pop(), (V, H)
        else:
            net = self._net(V, H, dtype)
        values = _keras_join(self.model, {k: np.asarray(v) for k, v in params.items()})
        out = LayerParams()
        with tf.device(self._device):
            for k, var in net.variables.items():
                var.assign(values[k])
                out[k] = var
        out.net = net
        weakref.finalize(out, spare.append, net).atexit = False
        return out

    def params_to_numpy(self, params: Any) -> dict[str, np.ndarray]:
        """Params (or gradients, keyed by the same Keras paths) as d2l's dict."""
        return _keras_split(self.model, {k: self.as_numpy(params[k]) for k in self._paths})

    def as_numpy(self, x: Any) -> np.ndarray:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    def default_params(
        self, vocab_size: int, num_hiddens: int, seed: int, dtype: str = "float32"
    ) -> dict[str, np.ndarray]:
        """Keras' own initialisers, seeded: kernels ``glorot_uniform``, recurrent kernels
        ``orthogonal`` (one ``(H, gates*H)`` matrix per layer), biases zero except the LSTM forget
        gate's, which ``unit_forget_bias=True`` sets to one; Dense ``glorot_uniform`` and zeros."""
        net = self._net(vocab_size, num_hiddens, check_dtype(dtype), seed=seed)
        return _keras_split(self.model, {k: v.numpy() for k, v in net.variables.items()})

    def param_layout(self) -> dict[str, Any]:
        """Keras' variable paths (``gru/gru_cell/kernel``...), shapes and the d2l params they hold;
        the shapes are numbers once params were built, ``V`` and ``H`` before."""
        return _keras_layout(self.model, *(self._shapes or ("V", "H")))

    # --- the model --------------------------------------------------------------------------
    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> Any:
        with tf.device(self._device):
            return tf.one_hot(np.asarray(X, dtype=np.int32).T, vocab_size, dtype=check_dtype(dtype))  # (T, B, V)

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        with tf.device(self._device):
            dtype = check_dtype(dtype)
            return tuple(tf.zeros((batch_size, num_hiddens), dtype=dtype) for _ in self.model.state_names())

    def _inputs(self, params: LayerParams, X: np.ndarray, state: State, Y: np.ndarray | None = None) -> tuple:
        """Token ids ``(B, T)`` int32 (batch-major, as the layers want them), labels in the logits'
        time-major order (transposed on the host: see _tokens) and the state as tensors."""
        dtype = params.net.dtype
        with tf.device(self._device):
            X = tf.constant(np.asarray(X, dtype=np.int32))
            states = []
            for s in state:
                s = tf.convert_to_tensor(s)
                states.append(s if s.dtype == dtype else tf.cast(s, dtype))
            return X, (None if Y is None else _labels(Y)), states

    def forward(self, params: LayerParams, X: np.ndarray, state: State) -> tuple[Any, State]:
        X, _, states = self._inputs(params, X, state)
        if self.mode == "fast":
            logits, finals = self._compiled(params.net, "forward", X)(X, states)
        else:
            with tf.device(self._device):
                logits, finals = params.net(X, states)
        return logits, tuple(finals)

    def loss_and_grads(
        self, params: LayerParams, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[Any, dict, State]:
        X, y, states = self._inputs(params, X, state, Y)
        if self.mode == "fast":
            loss, grads, finals = self._compiled(params.net, "loss_and_grads", X)(X, y, states)
        else:
            with tf.device(self._device):
                loss, grads, finals = params.net.loss_and_grads(X, y, states)
        return loss, dict(zip(self._paths, grads)), tuple(finals)

    def clip_gradients(self, grads: Any, max_grad_norm: float) -> tuple[dict, Any]:
        # Frozen entries hold zero gradients (masked), so they add nothing to the norm.
        with tf.device(self._device):
            clipped, norm = _clip([tf.convert_to_tensor(grads[k]) for k in self._paths], max_grad_norm)
        return dict(zip(self._paths, clipped)), norm

    def sgd_step(self, params: LayerParams, grads: Any, lr: float) -> LayerParams:
        masks = params.net.masks
        with tf.device(self._device):
            for k in self._paths:
                g = grads[k] * masks[k] if k in masks else grads[k]
                params[k].assign_sub(lr * g)  # in place, as keras.optimizers.SGD does
        return params

    def train_step(
        self, params: LayerParams, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[LayerParams, Any, Any, State]:
        if self.mode != "fast":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        X, y, states = self._inputs(params, X, state, Y)
        dtype = params.net.dtype
        with tf.device(self._device):
            hyper = tf.constant(lr, dtype), tf.constant(max_grad_norm, dtype)
        loss, norm, finals = self._compiled(params.net, "train_step", X)(X, y, states, *hyper)
        return params, loss, norm, tuple(finals)

    def _compiled(self, net: _KerasNet, kind: str, X: Any) -> Any:
        """``kind`` as one ``tf.function`` around the net's layers for this batch shape.

        The layers own their variables, so each params object (each net) traces its own functions,
        once per batch shape (a fixed ``input_signature``: never a retrace).
        """
        batch_size, num_steps = X.shape
        key = (kind, batch_size, num_steps)
        if key in net.compiled:
            return net.compiled[key]
        spec = tf.TensorSpec
        X_spec = spec((batch_size, num_steps), tf.int32)
        y_spec = spec((num_steps * batch_size,), tf.int32)
        state_specs = [spec((batch_size, net.num_hiddens), net.dtype) for _ in self.model.state_names()]
        scalar = spec((), net.dtype)
        device = self._device

        if kind == "forward":

            def python_fn(X, states):  # noqa: ANN001, ANN202, N803
                with tf.device(device):
                    return net(X, states)

            signature = [X_spec, state_specs]
        elif kind == "loss_and_grads":

            def python_fn(X, y, states):  # noqa: ANN001, ANN202, N803
                with tf.device(device):
                    return net.loss_and_grads(X, y, states)

            signature = [X_spec, y_spec, state_specs]
        else:

            def python_fn(X, y, states, lr, max_grad_norm):  # noqa: ANN001, ANN202, N803
                with tf.device(device):
                    loss, grads, finals = net.loss_and_grads(X, y, states)
                    grads, norm = _clip(grads, max_grad_norm)
                    for var, g in zip(net.variables.values(), grads):
                        var.assign_sub(lr * g)
                    return loss, norm, finals

            signature = [X_spec, y_spec, state_specs, scalar, scalar]

        fn = _compile(python_fn, signature)
        net.compiled[key] = fn
        return fn
