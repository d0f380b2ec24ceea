"""The TensorFlow 2 backend: d2l's RNN from scratch in eager mode, plus a compiled train step.

``mode="eager"`` is the readable d2l translation: ``tf.one_hot``, a Python loop over time steps,
``tf.GradientTape`` over ``tf.Variable`` params, clipping on the device, ``assign_sub`` SGD.

``mode="fast"`` runs ``train_step`` (and ``forward`` / ``loss_and_grads``) as one ``tf.function``
per (shapes, dtype): the one-hot product is a row gather, the output layer and its gradients are
one matmul over all time steps, and only the recurrence is sequential. The recurrence carries a
hand-written gradient (``tf.custom_gradient``) so that ``dW_hh`` is one matmul too; GradientTape
differentiates everything around it. Clipping and SGD happen inside the same graph, so a step
never waits on the host.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
from typing import Any

import numpy as np

from ..errors import GPUUnavailableError
from ..params import PARAM_NAMES, check_dtype, validate_params
from ..cells import Model
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
        W_hh_T = tf.transpose(W_hh)  # transposed once, not in each of the T backward matmuls
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
    logits = tf.matmul(tf.reshape(hs, (-1, W_hh.shape[0])), W_hq) + b_q  # one matmul for all steps
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


class TensorFlowBackend(Backend):
    """TensorFlow 2 version of the d2l RNN-from-scratch primitives.

    Params are ``tf.Variable`` objects, so SGD updates them in place with ``assign_sub``.

    Args:
        device: ``"cpu"`` or ``"gpu"``; ``"gpu"`` places params, data and state on ``/GPU:0``.
        mode: ``"eager"`` (d2l style, op by op) or ``"fast"`` (one compiled ``tf.function`` per
            (shapes, dtype) for the forward pass, loss and grads, and the whole train step).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but TensorFlow sees no GPU.
    """

    name = "tensorflow"
    framework = "tensorflow"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            raise GPUUnavailableError(
                "device='gpu' was requested, but TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
                "is empty). Install a CUDA build of TensorFlow on a machine with a GPU, or use device='cpu'."
            )
        self._device = "/GPU:0" if device == "gpu" else "/CPU:0"
        # Compiled functions keyed by (kind, shapes, dtype): one trace each, never a retrace.
        self._compiled: dict[tuple, Any] = {}

    # --- conversion -------------------------------------------------------------------------
    def version(self) -> str:
        return tf.__version__

    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        validate_params(params)
        with tf.device(self._device):
            return {k: tf.Variable(np.asarray(params[k]), name=k) for k in PARAM_NAMES}

    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        return {k: np.array(self.as_numpy(params[k]), copy=True) for k in PARAM_NAMES}

    def as_numpy(self, x: Any) -> np.ndarray:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    # --- the model --------------------------------------------------------------------------
    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> Any:
        with tf.device(self._device):
            # (steps, batch, vocab)
            return tf.one_hot(np.asarray(X, dtype=np.int32).T, vocab_size, dtype=check_dtype(dtype))

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        with tf.device(self._device):
            return (tf.zeros((batch_size, num_hiddens), dtype=check_dtype(dtype)),)

    def _state(self, state: State, dtype: Any) -> Any:
        """The hidden state as a tensor of the params' dtype on this device (NumPy accepted)."""
        with tf.device(self._device):
            h = tf.convert_to_tensor(state[0])
            return h if h.dtype == dtype else tf.cast(h, dtype)

    def _rnn(self, params: Params, inputs: Any, h: Any) -> tuple[Any, Any]:
        """d2l's ``rnn``: one step at a time over the time-major one-hot ``inputs``."""
        W_xh, W_hh, b_h, W_hq, b_q = (params[k] for k in PARAM_NAMES)
        outputs = []
        for X_t in inputs:  # (batch, vocab) per step
            h = tf.tanh(tf.matmul(X_t, W_xh) + tf.matmul(h, W_hh) + b_h)
            outputs.append(tf.matmul(h, W_hq) + b_q)
        return tf.concat(outputs, axis=0), h  # (steps * batch, vocab), rows time-major

    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[Any, State]:
        dtype = params["W_hh"].dtype
        h0 = self._state(state, dtype)
        if self.mode == "fast":
            with tf.device(self._device):
                X = _tokens(X)
            logits, h = self._function("forward", params, X)(*self._values(params), X, h0)
            return logits, (h,)
        with tf.device(self._device):
            logits, h = self._rnn(params, self.one_hot(X, params["W_xh"].shape[0], dtype.name), h0)
        return logits, (h,)

    def loss_and_grads(self, params: Params, X: np.ndarray, Y: np.ndarray, state: State) -> tuple[Any, Params, State]:
        dtype = params["W_hh"].dtype
        h0 = self._state(state, dtype)
        if self.mode == "fast":
            with tf.device(self._device):
                X, y = _tokens(X), _labels(Y)
            fn = self._function("loss_and_grads", params, X)
            loss, grads, h = fn(*self._values(params), X, y, h0)
            return loss, dict(zip(PARAM_NAMES, grads)), (h,)
        variables = [params[k] for k in PARAM_NAMES]
        with tf.device(self._device), tf.GradientTape() as tape:
            tape.watch(variables)  # a no-op for tf.Variable; lets plain tensors work too
            logits, h = self._rnn(params, self.one_hot(X, params["W_xh"].shape[0], dtype.name), h0)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=_labels(Y), logits=logits))
        grads = tape.gradient(loss, variables)
        # Eager tensors hold no graph, but stop_gradient says what the contract wants: the next
        # minibatch's tape must not reach back into this one.
        return loss, dict(zip(PARAM_NAMES, grads)), (tf.stop_gradient(h),)

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, Any]:
        # One global norm over all tensors, as in d2l, but without d2l's per-parameter .numpy().
        with tf.device(self._device):
            clipped, norm = _clip([tf.convert_to_tensor(grads[k]) for k in PARAM_NAMES], max_grad_norm)
        return dict(zip(PARAM_NAMES, clipped)), norm

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        with tf.device(self._device):
            for k in PARAM_NAMES:
                if isinstance(params[k], tf.Variable):
                    params[k].assign_sub(lr * grads[k])  # in place; the Python float takes p's dtype
                else:
                    params[k] = params[k] - lr * grads[k]
        return params

    # --- fast mode --------------------------------------------------------------------------
    def train_step(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, Any, Any, State]:
        if self.mode != "fast" or not all(isinstance(params[k], tf.Variable) for k in PARAM_NAMES):
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        dtype = params["W_hh"].dtype
        h0 = self._state(state, dtype)
        with tf.device(self._device):
            # lr and θ go in as tensors so that new values reuse the compiled step.
            X, y = _tokens(X), _labels(Y)
            hyper = tf.constant(lr, dtype), tf.constant(max_grad_norm, dtype)
        fn = self._function("train_step", params, X)
        loss, norm, h = fn(*self._values(params), X, y, h0, *hyper)
        return params, loss, norm, (h,)

    @staticmethod
    def _values(params: Params) -> list[Any]:
        return [params[k] for k in PARAM_NAMES]

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

        # autograph=False: the loops are plain Python over static step counts and must unroll.
        fn = tf.function(python_fn, input_signature=signature, jit_compile=_JIT_COMPILE, autograph=False)
        self._compiled[key] = fn
        return fn
