"""Baseline: the d2l character RNN trained with JAX/flax's own RNN layer.

The recurrence is ``flax.linen.RNN(flax.linen.SimpleCell(H))`` (tanh) and the output layer is
``flax.linen.Dense(V)``; the one-hot inputs, mean cross-entropy, d2l's global-norm clipping and
plain SGD are the same maths as :mod:`multirnn.backends.numpy_backend`, in float32. The whole
training step (forward, ``value_and_grad`` over the flax params pytree, clipping, SGD) is a single
``jax.jit`` call with the params and the carried state donated, so this is what a JAX user would
get from the framework's layer, to compare the project's hand-written backends against.

Layer layout (flax 0.12): ``Dense`` computes ``x @ kernel + bias`` with ``kernel`` ``(in, out)``,
the same orientation as d2l's weights, so no transposes are needed::

    W_xh -> rnn/cell/i/kernel (V, H)    b_h -> rnn/cell/i/bias (H,)
    W_hh -> rnn/cell/h/kernel (H, H)    (SimpleCell's recurrent Dense has no bias: one bias only)
    W_hq -> dense/kernel      (H, V)    b_q -> dense/bias      (V,)

Used by ``benchmarks/bench_train.py`` (``--variants builtin``) through :func:`make_trainer`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

# XLA's C++ logging (absl/tsl) reads this once, at import: keep its INFO/WARNING chatter off the
# terminal unless the user chose a level. Errors are still shown.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flax  # noqa: E402  (the environment above must be set before the import)
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from multirnn.backends.jax_backend import jax_device  # noqa: E402  (also: x64 on, dtypes explicit below)
from multirnn.params import PARAM_NAMES  # noqa: E402

# The baseline is float32 only. Every dtype below is explicit because multirnn's JAX backend turns
# on x64 process-wide when it is imported: without explicit dtypes float32 runs could widen.
DTYPE = jnp.float32

# Where each d2l parameter lives in the flax params pytree (see the module docstring).
_PATHS: dict[str, tuple[str, ...]] = {
    "W_xh": ("rnn", "cell", "i", "kernel"),
    "b_h": ("rnn", "cell", "i", "bias"),
    "W_hh": ("rnn", "cell", "h", "kernel"),
    "W_hq": ("dense", "kernel"),
    "b_q": ("dense", "bias"),
}


class CharRNN(nn.Module):
    """d2l's RNN language model from flax's built-in layers.

    Attributes:
        vocab_size: V, the one-hot input width and the number of output classes.
        num_hiddens: H, the hidden state's width.
    """

    vocab_size: int
    num_hiddens: int

    def setup(self) -> None:
        # time_major: the one-hot is built as (T, B, V) from X.T, so the outputs come out in
        # d2l's time-major row order with a plain reshape and no transpose of a 3-D tensor.
        self.rnn = nn.RNN(
            nn.SimpleCell(features=self.num_hiddens, dtype=DTYPE, param_dtype=DTYPE),
            time_major=True,
            return_carry=True,
        )
        self.dense = nn.Dense(self.vocab_size, dtype=DTYPE, param_dtype=DTYPE)

    def __call__(self, X: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Logits ``(T * B, V)`` (rows time-major) and the final hidden state ``(B, H)``.

        Args:
            X: int tokens ``(B, T)``.
            h0: the initial carry ``(B, H)``.
        """
        # SimpleCell's input Dense multiplies the one-hot by its kernel, exactly d2l's X_t @ W_xh.
        inputs = jax.nn.one_hot(X.T, self.vocab_size, dtype=DTYPE)  # (T, B, V)
        h, hs = self.rnn(inputs, initial_carry=h0)  # hs: (T, B, H)
        logits = self.dense(hs)  # (T, B, V)
        return logits.reshape(-1, self.vocab_size), h


def _mean_cross_entropy(logits: jax.Array, Y: jax.Array) -> jax.Array:
    """Mean CE of time-major logits ``(T * B, V)`` against labels ``Y`` ``(B, T)``."""
    y = Y.T.reshape(-1)  # d2l's Y.T.reshape(-1): the logits' row order
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def _clip(grads: Any, max_grad_norm: jax.Array) -> Any:
    """d2l's rule on the whole pytree, on the device: scale by θ/‖g‖ only when ‖g‖ > θ."""
    leaves = jax.tree_util.tree_leaves(grads)
    norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in leaves))
    # No Python `if` under jit; below the bound the scale is exactly 1 (grads unchanged), and zero
    # grads give θ/0 = inf which jnp.where discards: no NaN.
    scale = jnp.where(norm > max_grad_norm, max_grad_norm / norm, jnp.ones_like(norm))
    return jax.tree_util.tree_map(lambda g: g * scale, grads)


class Trainer:
    """Trains :class:`CharRNN` with one compiled call per minibatch.

    Args:
        params: d2l's parameter dict (``W_xh`` ``(V, H)``, ``W_hh``, ``b_h``, ``W_hq``, ``b_q``);
            copied into the layers' params (cast to float32).
        lr: SGD learning rate.
        max_grad_norm: θ of d2l's gradient clipping.
        device: ``"cpu"`` or ``"gpu"``.

    Raises:
        GPUUnavailableError: ``device="gpu"`` but JAX sees no GPU.
        ValueError: the params' shapes do not fit the layers.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float, max_grad_norm: float, device: str = "cpu") -> None:
        self.framework_version = f"jax {jax.__version__}, flax {flax.__version__}"
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}.")
        self._device = jax_device(device)
        V, H = np.shape(params["W_xh"])
        self.vocab_size, self.num_hiddens = int(V), int(H)
        self._model = CharRNN(self.vocab_size, self.num_hiddens)
        self._cell = nn.SimpleCell(features=self.num_hiddens, dtype=DTYPE, param_dtype=DTYPE)
        self._params = self._params_from_numpy(params)

        model = self._model
        lr32, theta32 = np.float32(lr), np.float32(max_grad_norm)  # fixed per trainer: baked in

        def loss_fn(variables: Any, X: jax.Array, Y: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
            logits, h = model.apply(variables, X, h0)
            return _mean_cross_entropy(logits, Y), h

        # Params (arg 0) and state (arg 3) are donated: XLA writes the new params and state into
        # the old buffers. Only the params are differentiated, so the returned state is detached.
        @functools.partial(jax.jit, donate_argnums=(0, 3))
        def train_step(variables: Any, X: jax.Array, Y: jax.Array, h0: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
            (loss, h), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables, X, Y, h0)
            grads = _clip(grads, theta32)
            variables = jax.tree_util.tree_map(lambda p, g: p - lr32 * g, variables, grads)
            return variables, loss, h

        self._train_step = train_step
        self._loss = jax.jit(loss_fn)  # no donation: the caller may reuse the state it passed

    # --- conversion -----------------------------------------------------------------------------
    def _put(self, x: Any, dtype: Any) -> jax.Array:
        return jax.device_put(np.asarray(x, dtype=dtype), self._device)

    def _params_from_numpy(self, params: dict[str, np.ndarray]) -> Any:
        # The layers' own pytree, from shapes only (eval_shape: no random init is computed).
        template = jax.eval_shape(
            self._model.init, jax.random.key(0),
            jax.ShapeDtypeStruct((1, 1), jnp.int32), jax.ShapeDtypeStruct((1, self.num_hiddens), DTYPE),
        )
        tree = jax.tree_util.tree_map(lambda _: None, template)
        for name in PARAM_NAMES:
            leaf = template["params"]
            for key in _PATHS[name]:
                leaf = leaf[key]
            value = np.asarray(params[name])
            if value.shape != leaf.shape:
                raise ValueError(f"{name} has shape {value.shape}, but the layer expects {leaf.shape}.")
            node = tree["params"]
            for key in _PATHS[name][:-1]:
                node = node[key]
            # device_put copies: the caller's arrays stay theirs, and these buffers get donated.
            node[_PATHS[name][-1]] = self._put(value, np.float32)
        leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
        missing = [jax.tree_util.keystr(path) for path, v in leaves if v is None]
        if missing:  # a flax version with another layout (e.g. a second bias) must not pass silently
            raise ValueError(f"flax params not covered by the d2l mapping: {missing}")
        return tree

    def params_to_numpy(self) -> dict[str, np.ndarray]:
        """The current weights as d2l's dict ``W_xh W_hh b_h W_hq b_q`` (float32 copies)."""
        out = {}
        for name in PARAM_NAMES:
            leaf = self._params["params"]
            for key in _PATHS[name]:
                leaf = leaf[key]
            out[name] = np.array(leaf, copy=True)
        return out

    def _state_in(self, state: Any) -> jax.Array:
        # The carry is donated by train_step, so a caller's NumPy array is copied to the device
        # (device_put never aliases host memory we would then invalidate).
        if isinstance(state, jax.Array) and state.dtype == DTYPE:
            return state
        return self._put(state, np.float32)

    # --- training -------------------------------------------------------------------------------
    def state_to_numpy(self, state: Any) -> np.ndarray:
        """The cell's ``(batch, hidden)`` carry as NumPy."""
        return np.array(state)

    def init_state(self, batch_size: int) -> jax.Array:
        """Zeros ``(batch_size, H)``: SimpleCell's own carry (a single array, no tuple)."""
        carry = self._cell.initialize_carry(jax.random.key(0), (batch_size, self.vocab_size))
        return jax.device_put(carry, self._device)

    def loss(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[float, jax.Array]:
        """Forward only.

        Returns:
            ``(mean cross-entropy as a Python float, new state)``.
        """
        loss, h = self._loss(self._params, self._put(X, np.int32), self._put(Y, np.int32), self._state_in(state))
        return float(loss), h

    def train_step(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[jax.Array, jax.Array]:
        """One SGD step on the minibatch ``X``, ``Y`` (int ``(B, T)``), starting from ``state``.

        The given state's device buffer is donated: use the returned one.

        Returns:
            ``(loss as a JAX scalar, still on the device; detached new state)``.
        """
        self._params, loss, h = self._train_step(
            self._params, self._put(X, np.int32), self._put(Y, np.int32), self._state_in(state)
        )
        return loss, h


def make_trainer(params: dict[str, np.ndarray], lr: float, max_grad_norm: float, device: str = "cpu") -> Trainer:
    """A :class:`Trainer` starting from d2l's ``params`` (see :class:`Trainer` for the arguments)."""
    return Trainer(params, lr, max_grad_norm, device)
