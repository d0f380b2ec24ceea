"""Baseline: the d2l character RNN trained with TensorFlow/Keras's own RNN layer.

The recurrence is ``keras.layers.SimpleRNN(H, activation="tanh", return_sequences=True,
return_state=True)`` and the output layer is ``keras.layers.Dense(V)``; the one-hot inputs, mean
cross-entropy over time-major logits, d2l's global-norm clipping and plain SGD are the same maths
as :mod:`multirnn.backends.numpy_backend`, in float32. The whole training step (forward,
``tf.GradientTape``, clipping, ``assign_sub`` SGD) is one ``tf.function`` traced once per batch
shape, so a step never waits on the host: this is what a TensorFlow user gets from the
framework's layer, to compare the project's hand-written backends against.

Layer layout (Keras 3): both layers compute ``x @ kernel + bias`` with ``kernel`` ``(in, out)``,
d2l's own orientation, so the mapping is direct, without transposes::

    W_xh -> simple_rnn_cell/kernel           (V, H)    b_h -> simple_rnn_cell/bias (H,)
    W_hh -> simple_rnn_cell/recurrent_kernel (H, H)    (one bias only, unlike cuDNN-style layers)
    W_hq -> dense/kernel                     (H, V)    b_q -> dense/bias           (V,)

Used by ``benchmarks/bench_train.py`` (``--variants builtin``) through :func:`make_trainer`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

# Keras 3 picks its backend once, when it is first imported, and ``import tensorflow`` itself
# imports keras: so the choice must be made before the TensorFlow import below. This baseline is
# the TensorFlow one whatever KERAS_BACKEND the user exported (e.g. "jax" would run flax/JAX code).
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "tensorflow"

# The project's backend imports TensorFlow with its quirks handled (TF_CPP_MIN_LOG_LEVEL default,
# the oneDNN banner filtered from stderr, JAX hidden from TFLite's import-time probe): reuse it.
from multirnn.backends.tensorflow_backend import tf  # noqa: E402

import keras  # noqa: E402  (after TensorFlow: see above)

from multirnn.errors import GPUUnavailableError  # noqa: E402
from multirnn.params import PARAM_NAMES  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"keras was already imported with the {keras.backend.backend()!r} backend; this baseline needs "
        "KERAS_BACKEND=tensorflow (set it before anything imports keras)."
    )

DTYPE = tf.float32

# No XLA (jit_compile=False): the project's TensorFlow backend measured jit_compile=True on the
# d2l ed.1 step at 6.6 s of compilation and slower steps than the graph runtime with oneDNN
# (19k vs 26k tokens/s on 2 cores); XLA's CPU dots do no better on these small sequential matmuls.
_JIT_COMPILE = False


class Trainer:
    """Trains Keras ``SimpleRNN`` + ``Dense`` with one compiled ``tf.function`` call per minibatch.

    Args:
        params: d2l's parameter dict (``W_xh`` ``(V, H)``, ``W_hh``, ``b_h``, ``W_hq``, ``b_q``);
            copied into the layers' variables (cast to float32).
        lr: SGD learning rate.
        max_grad_norm: θ of d2l's gradient clipping.
        device: ``"cpu"`` or ``"gpu"``.

    Raises:
        GPUUnavailableError: ``device="gpu"`` but TensorFlow sees no GPU.
        ValueError: unknown ``device``, or the params' shapes do not fit the layers.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float, max_grad_norm: float, device: str = "cpu") -> None:
        self.framework_version = f"tensorflow {tf.__version__}, keras {keras.__version__}"
        self._device = _device(device)
        V, H = np.shape(params["W_xh"])
        self.vocab_size, self.num_hiddens = int(V), int(H)

        with tf.device(self._device):
            # Default unroll=False: the layer runs a tf.while_loop over a TensorArray, as a Keras
            # user would get it. Keras 3 layers are batch-major (no time_major switch): the layer
            # transposes (B, T, V) -> (T, B, V) on the way in and back on the way out itself.
            self._rnn = keras.layers.SimpleRNN(
                self.num_hiddens, activation="tanh", return_sequences=True, return_state=True, dtype="float32"
            )
            self._dense = keras.layers.Dense(self.vocab_size, dtype="float32")
            self._rnn.build((None, None, self.vocab_size))
            self._dense.build((None, self.num_hiddens))
            cell = self._rnn.cell
            # The underlying tf.Variables: GradientTape and assign_sub act on them directly.
            self._vars: dict[str, Any] = {
                "W_xh": cell.kernel.value,
                "W_hh": cell.recurrent_kernel.value,
                "b_h": cell.bias.value,
                "W_hq": self._dense.kernel.value,
                "b_q": self._dense.bias.value,
            }
        mapped = {id(v) for v in self._vars.values()}
        unmapped = [w.path for w in self._rnn.weights + self._dense.weights if id(w.value) not in mapped]
        if unmapped:  # a Keras version with another layout (e.g. a second bias) must not pass silently
            raise ValueError(f"Keras weights not covered by the d2l mapping: {unmapped}")
        for name in PARAM_NAMES:
            value = np.asarray(params[name])
            if tuple(value.shape) != tuple(self._vars[name].shape):
                want = tuple(self._vars[name].shape)
                raise ValueError(f"{name} has shape {value.shape}, but the layer expects {want}.")
            self._vars[name].assign(value.astype(np.float32))

        variables = [self._vars[k] for k in PARAM_NAMES]
        lr32, theta32 = tf.constant(lr, DTYPE), tf.constant(max_grad_norm, DTYPE)  # fixed per trainer

        def train_step(X: Any, y: Any, h0: Any) -> tuple[Any, Any]:
            with tf.device(self._device):
                with tf.GradientTape() as tape:
                    loss, h = self._forward(X, y, h0)
                grads = tape.gradient(loss, variables)
                # d2l's rule, not tf.clip_by_global_norm: that one scales by θ * min(1/‖g‖, 1/θ),
                # which differs in the last bit and below the bound is not always exactly 1.
                norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))
                # where: for zero grads θ/0 = inf is computed but never selected (no NaN).
                scale = tf.where(norm > theta32, theta32 / norm, tf.ones_like(norm))
                for var, g in zip(variables, grads):
                    var.assign_sub(lr32 * (g * scale))
                return loss, h

        # One trace per distinct input shape (tf.function's own cache), never per call: the
        # arguments are always tensors of fixed dtype, lr and θ are captured constants.
        self._train_step = tf.function(train_step, jit_compile=_JIT_COMPILE)
        self._loss = tf.function(self._forward, jit_compile=_JIT_COMPILE)

    # --- the model ------------------------------------------------------------------------------
    def _forward(self, X: Any, y: Any, h0: Any) -> tuple[Any, Any]:
        """Mean cross-entropy and the detached final state (traced inside a ``tf.function``).

        Args:
            X: int32 tokens ``(B, T)``, batch-major as the layer wants them.
            y: int32 labels ``(T * B,)``, already in d2l's time-major order ``Y.T.reshape(-1)``.
            h0: the initial state ``(B, H)``.
        """
        B, T = X.shape
        # The layer multiplies each one-hot step by its kernel: exactly d2l's X_t @ W_xh.
        inputs = tf.one_hot(X, self.vocab_size, dtype=DTYPE)  # (B, T, V)
        hs, h = self._rnn(inputs, initial_state=h0)  # (B, T, H), (B, H)
        # Dense on the free (B*T, H) reshape, then put the small (B, T, V) logits in time-major
        # row order: a transpose of V columns instead of H (the same numbers, moved).
        logits = self._dense(tf.reshape(hs, (-1, self.num_hiddens)))
        logits = tf.transpose(tf.reshape(logits, (B, T, self.vocab_size)), (1, 0, 2))  # (T, B, V)
        logits = tf.reshape(logits, (-1, self.vocab_size))  # (T * B, V), rows time-major
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        return loss, tf.stop_gradient(h)  # the next minibatch's tape must not reach back into this one

    # --- conversion -----------------------------------------------------------------------------
    def _inputs(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[Any, Any, Any]:
        # The labels are put in time-major order on the host (a tiny int copy): an int32 Transpose
        # inside the graph makes oneDNN log an E-level "DT_INT32 only with AVX-512" line.
        with tf.device(self._device):
            X = tf.constant(np.asarray(X, dtype=np.int32))
            y = tf.constant(np.ascontiguousarray(np.asarray(Y, dtype=np.int32).T).reshape(-1))
            h0 = tf.convert_to_tensor(state)
            return X, y, (h0 if h0.dtype == DTYPE else tf.cast(h0, DTYPE))

    def params_to_numpy(self) -> dict[str, np.ndarray]:
        """The current weights as d2l's dict ``W_xh W_hh b_h W_hq b_q`` (float32 copies)."""
        return {k: np.array(self._vars[k].numpy(), copy=True) for k in PARAM_NAMES}

    # --- training -------------------------------------------------------------------------------
    def state_to_numpy(self, state: Any) -> np.ndarray:
        """The layer's ``(batch, hidden)`` state as NumPy."""
        return np.asarray(state.numpy())

    def init_state(self, batch_size: int) -> Any:
        """Zeros ``(batch_size, H)``: the layer's state, a single tensor as ``return_state`` gives it."""
        with tf.device(self._device):
            (h0,) = self._rnn.get_initial_state(batch_size)  # Keras wraps SimpleRNN's one state in a list
            return h0

    def loss(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[float, Any]:
        """Forward only.

        Args:
            X: int tokens ``(B, T)``.
            Y: int labels ``(B, T)``.
            state: ``(B, H)`` (a tensor or a NumPy array).

        Returns:
            ``(mean cross-entropy as a Python float, new state)``.
        """
        loss, h = self._loss(*self._inputs(X, Y, state))
        return float(loss), h

    def train_step(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[Any, Any]:
        """One SGD step on the minibatch ``X``, ``Y`` (int ``(B, T)``), starting from ``state``.

        Returns:
            ``(loss as a TensorFlow scalar, not synchronised; detached new state)``.
        """
        return self._train_step(*self._inputs(X, Y, state))


def _device(device: str) -> str:
    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise GPUUnavailableError(
                "device='gpu' was requested, but TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
                "is empty). Install a CUDA build of TensorFlow on a machine with a GPU, or use device='cpu'."
            )
        return "/GPU:0"
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}.")
    return "/CPU:0"


def make_trainer(params: dict[str, np.ndarray], lr: float, max_grad_norm: float, device: str = "cpu") -> Trainer:
    """A :class:`Trainer` starting from d2l's ``params`` (see :class:`Trainer` for the arguments)."""
    return Trainer(params, lr, max_grad_norm, device)
