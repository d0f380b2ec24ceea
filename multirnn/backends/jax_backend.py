"""JAX backend: d2l's RNN from scratch in ``jax.numpy``, eager or compiled.

``mode="eager"`` is the readable d2l translation: ``jax.nn.one_hot``, a Python loop over time
steps, ``jax.value_and_grad`` for the gradients, and clipping/SGD as separate on-device ops.

``mode="fast"`` replaces ``train_step`` (and ``forward``) by one ``jax.jit``-compiled function:
the recurrence is a ``lax.scan``, the one-hot matmul is a row gather, the output layer and the
weight gradients are single matmuls over all time steps, clipping and SGD happen inside the
compiled step, and the params and state buffers are donated so XLA updates them in place.
Only the recurrence itself (forward and backward) runs step by step.

Importing this module enables JAX's 64-bit mode for the whole process (float64 runs would be
silently truncated to float32 otherwise); every array is therefore created with an explicit
dtype so that float32 runs stay float32.
"""

from __future__ import annotations

import functools
import os
from typing import Any

# XLA's C++ logging (absl/tsl) reads this once, at import: keep its INFO/WARNING chatter off the
# user's terminal unless they chose a level themselves. Errors are still shown.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402  (the environment above must be set before the import)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from ..errors import GPUUnavailableError  # noqa: E402
from ..params import PARAM_NAMES, check_dtype, validate_params  # noqa: E402
from ..cells import Model
from .base import Backend, State  # noqa: E402

# Without x64, jnp.asarray(float64 array) silently becomes float32 and float64 runs could not
# match the oracle to 1e-9. The flag is process-wide; explicit dtypes keep float32 runs float32.
jax.config.update("jax_enable_x64", True)

Params = dict[str, jax.Array]


# --- shared maths ------------------------------------------------------------------------------


def _cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of ``(N, V)`` logits against ``(N,)`` int labels, in the logits' dtype."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def _clip(grads: Params, max_grad_norm: Any) -> tuple[Params, jax.Array]:
    """d2l's global-norm clipping, entirely on the device (no host sync, no Python ``if``)."""
    # jnp.sum(g * g), not jnp.vdot(g, g): XLA on the CPU lowers vdot to one sequential float32 dot,
    # whose rounding error on real gradients reached 1.8e-4 of ||dW_hh||^2 (sum: 1.7e-7), and the
    # clipping scale carried that error into every update: in the book run it alone pushed the
    # re-anchored loss deviation to 6.6e-4 where the other frameworks stayed below 2.6e-5.
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads.values()))
    theta = jnp.asarray(max_grad_norm, dtype=norm.dtype)  # a Python float must not widen float32
    # Zero grads give theta / 0 = inf, but jnp.where then picks 1: no NaN. Below the bound the
    # scale is exactly 1, so the grads come back bit-for-bit unchanged, as d2l's rule requires.
    scale = jnp.where(norm > theta, theta / norm, jnp.ones_like(norm))
    return {k: g * scale for k, g in grads.items()}, norm


# --- fast mode: the compiled recurrence --------------------------------------------------------


@jax.custom_vjp
def _recurrence(xw: jax.Array, W_hh: jax.Array, h0: jax.Array) -> jax.Array:
    """All hidden states ``(T, B, H)`` of ``h_t = tanh(xw_t + h_{t-1} W_hh)``.

    ``xw`` ``(T, B, H)`` is ``X_t W_xh + b_h`` for every step, computed up front. The custom VJP
    keeps only ``dL/d(pre-activation)`` in the backward loop; autodiff of the scan would also
    accumulate ``h_{t-1}^T d_pre`` one small matmul per step instead of one large one.
    """

    def step(h: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = jnp.tanh(x_t + h @ W_hh)
        return h, h

    _, hs = lax.scan(step, h0, xw)
    return hs


def _recurrence_fwd(xw: jax.Array, W_hh: jax.Array, h0: jax.Array):
    hs = _recurrence(xw, W_hh, h0)
    return hs, (hs, W_hh, h0)


def _recurrence_bwd(res, d_hs: jax.Array):
    hs, W_hh, h0 = res
    H = hs.shape[-1]
    d_tanh = 1 - hs * hs  # (T, B, H): tanh' for all steps at once, outside the sequential loop
    W_hh_T = W_hh.T
    # The last step has no later step feeding back, so it is peeled off: the loop then does
    # exactly T - 1 sequential matmuls and dL/dh0 is one matmul outside it (dropped by XLA when
    # unused, which it is: the initial state is detached).
    d_last = d_hs[-1] * d_tanh[-1]

    def step(d_pre_next: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        d_h_t, d_tanh_t = xs
        d_pre = (d_h_t + d_pre_next @ W_hh_T) * d_tanh_t
        return d_pre, d_pre

    d_first, d_pres = lax.scan(step, d_last, (d_hs[:-1], d_tanh[:-1]), reverse=True)
    d_pre = jnp.concatenate([d_pres, d_last[None]])  # (T, B, H)
    h_prev = jnp.concatenate([h0[None], hs[:-1]])  # (T, B, H): h_{t-1} for every step
    d_W_hh = h_prev.reshape(-1, H).T @ d_pre.reshape(-1, H)  # one (H, T*B) @ (T*B, H) matmul
    return d_pre, d_W_hh, d_first @ W_hh_T


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _fast_logits(params: Params, X: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits ``(T*B, V)`` (rows time-major) and all hidden states ``(T, B, H)``."""
    # one_hot(X_t) @ W_xh is a row gather; do it (and add b_h) for every step at once.
    xw = params["W_xh"][X.T] + params["b_h"]  # (T, B, H)
    hs = _recurrence(xw, params["W_hh"], h0)
    T, B, H = hs.shape
    logits = hs.reshape(T * B, H) @ params["W_hq"] + params["b_q"]  # one matmul for all steps
    return logits, hs


@jax.jit
def _fast_forward(params: Params, X: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, hs = _fast_logits(params, X, h0)
    return logits, hs[-1]


def _fast_loss(params: Params, X: jax.Array, Y: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, hs = _fast_logits(params, X, h0)
    return _cross_entropy(logits, Y.T.reshape(-1)), hs[-1]


# Params (arg 0) and state (arg 3) are donated: their buffers are reused for the new params and
# state, so the update happens in place. jit caches one executable per shapes/dtypes/device.
@functools.partial(jax.jit, donate_argnums=(0, 3))
def _fast_train_step(
    params: Params, X: jax.Array, Y: jax.Array, h0: jax.Array, lr: jax.Array, max_grad_norm: jax.Array
) -> tuple[Params, jax.Array, jax.Array, jax.Array]:
    (loss, h), grads = jax.value_and_grad(_fast_loss, has_aux=True)(params, X, Y, h0)
    grads, norm = _clip(grads, max_grad_norm)
    new_params = {k: p - jnp.asarray(lr, dtype=p.dtype) * grads[k] for k, p in params.items()}
    return new_params, loss, norm, h


# --- the backend -------------------------------------------------------------------------------


def jax_device(device: str) -> Any:
    """The JAX device for ``"cpu"`` or ``"gpu"``; no GPU is a clear error, never a CPU fallback.

    Raises:
        GPUUnavailableError: ``device="gpu"`` but JAX sees no GPU.
    """
    if device == "gpu":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # JAX raises when no GPU platform is installed or initialised
            gpus = []
        if not gpus:
            raise GPUUnavailableError(
                f"device='gpu' was requested, but JAX sees no GPU (devices: {jax.devices()}). "
                "Install a CUDA-enabled jaxlib (pip install 'jax[cuda12]') or use device='cpu'."
            )
        return gpus[0]
    # Explicit, so that device="cpu" stays on the CPU even where a GPU is the default.
    return jax.devices("cpu")[0]


class JaxBackend(Backend):
    """The d2l RNN from scratch in JAX.

    Args:
        device: ``"cpu"`` or ``"gpu"``; everything (params, data, state) is placed on that device.
        mode: ``"eager"`` (d2l-style, op by op) or ``"fast"`` (one jitted ``train_step``).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but JAX sees no GPU.
    """

    name = "jax"
    framework = "jax"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        self._device = jax_device(device)

    # --- conversion ---------------------------------------------------------------------------
    def version(self) -> str:
        return jax.__version__

    def _put(self, x: Any, dtype: Any = None) -> jax.Array:
        """NumPy (or JAX) -> a JAX array on this backend's device, copied, dtype explicit."""
        # On the CPU device_put may alias a suitably aligned NumPy buffer instead of copying it
        # (seen here: the copy check failed only in some runs), so copy first: the caller may
        # mutate its arrays, and the fast path donates (overwrites) these buffers.
        return jax.device_put(np.array(x, dtype=dtype, copy=True), self._device)

    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        validate_params(params)
        return {k: self._put(params[k], check_dtype(np.asarray(params[k]).dtype)) for k in PARAM_NAMES}

    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        return {k: np.array(params[k], copy=True) for k in PARAM_NAMES}

    def as_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)  # np.asarray would give a read-only view of the JAX buffer

    def _state_in(self, state: State, dtype: Any) -> jax.Array:
        """The hidden state as a JAX array of the params' dtype; a NumPy state is copied over."""
        (h,) = state
        if isinstance(h, jax.Array) and h.dtype == dtype:
            return h
        return self._put(h, dtype)

    # --- the model ----------------------------------------------------------------------------
    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> jax.Array:
        X_t = self._put(np.asarray(X).T)  # (num_steps, batch_size), time-major as d2l's X.T
        return jax.nn.one_hot(X_t, vocab_size, dtype=jnp.dtype(check_dtype(dtype)))  # (T, B, V)

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        return (jnp.zeros((batch_size, num_hiddens), dtype=jnp.dtype(check_dtype(dtype)), device=self._device),)

    def _rnn(self, params: Params, X: np.ndarray, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """d2l's ``rnn``: one-hot inputs, then the recurrence as a Python loop over time steps."""
        W_xh, W_hh, b_h, W_hq, b_q = (params[k] for k in PARAM_NAMES)
        inputs = self.one_hot(X, W_xh.shape[0], W_xh.dtype.name)  # (num_steps, batch_size, vocab_size)
        outputs = []
        for X_t in inputs:
            h = jnp.tanh(X_t @ W_xh + h @ W_hh + b_h)
            outputs.append(h @ W_hq + b_q)
        return jnp.concatenate(outputs, axis=0), h  # (num_steps * batch_size, vocab_size)

    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[jax.Array, State]:
        h = self._state_in(state, params["W_hh"].dtype)
        if self.mode == "fast":
            logits, h = _fast_forward(params, self._put(X, np.int32), h)
        else:
            logits, h = self._rnn(params, X, h)
        return logits, (h,)

    def loss_and_grads(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[jax.Array, Params, State]:
        h0 = self._state_in(state, params["W_hh"].dtype)
        y = self._put(np.asarray(Y).T.reshape(-1))  # (num_steps * batch_size,), the logits' row order

        def loss_fn(params: Params) -> tuple[jax.Array, jax.Array]:
            logits, h = self._rnn(params, X, h0)
            return _cross_entropy(logits, y), h

        # Only the params are differentiated; the returned state is a plain array (JAX keeps no
        # graph between calls), so it is already detached.
        (loss, h), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, (h,)

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, jax.Array]:
        return _clip(grads, max_grad_norm)

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        # JAX arrays are immutable: "in place" here means the caller's dict now holds the new
        # arrays (fast mode donates the old buffers, so XLA really writes in place there).
        for k in PARAM_NAMES:
            params[k] = params[k] - jnp.asarray(lr, dtype=params[k].dtype) * grads[k]
        return params

    # --- fast mode ----------------------------------------------------------------------------
    def train_step(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, Any, Any, State]:
        """One training step; in fast mode a single compiled call.

        In fast mode the params' and the state's buffers are donated to the compiled step: use
        the returned params and state (the given dict is updated to the new arrays too).
        """
        if self.mode != "fast":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        dtype = params["W_hh"].dtype
        h0 = self._state_in(state, dtype)
        # lr and theta go in as traced scalars of the params' dtype: a new lr does not recompile,
        # and a Python float (float64 under x64) never enters a float32 computation.
        new_params, loss, norm, h = _fast_train_step(
            {k: params[k] for k in PARAM_NAMES}, self._put(X, np.int32), self._put(Y, np.int32),
            h0, np.asarray(lr, dtype=dtype), np.asarray(max_grad_norm, dtype=dtype),
        )
        params.update(new_params)  # the old arrays were donated (deleted); keep the dict usable
        return params, loss, norm, (h,)
