"""JAX backends: d2l's RNNs from scratch in ``jax.numpy``, and flax's own recurrent layers.

:class:`JaxBackend` (impl ``"scratch"``) computes every model of :mod:`multirnn.cells`: the tanh
RNN, d2l's GRU (reset gate before the recurrent matmul), the reset-after GRU, the LSTM, stacked
``num_layers`` deep, with or without the second (hidden-side) bias per gate.

``mode="eager"`` is the readable d2l translation: ``jax.nn.one_hot``, a Python loop over time
steps with the cell step as d2l writes it, ``jax.value_and_grad`` for the gradients, and
clipping/SGD as separate on-device ops.

``mode="fast"`` replaces ``train_step`` (and ``forward``) by one ``jax.jit``-compiled function:
the recurrence is a ``lax.scan``, the one-hot matmul is a row gather, the output layer and the
weight gradients are single matmuls over all time steps, clipping and SGD happen inside the
compiled step, and the params and state buffers are donated so XLA updates them in place.
Only the recurrence itself (forward and backward) runs step by step. d2l's one-layer tanh RNN
keeps its own tuned path; every other model runs one generic custom-VJP recurrence per layer.

:class:`JaxLayersBackend` (impl ``"layers"``) is the same model built from flax.linen's
``nn.RNN`` over ``nn.SimpleCell`` / ``nn.GRUCell`` / ``nn.LSTMCell`` (``OptimizedLSTMCell`` in
fast mode), one ``nn.RNN`` per layer, and ``nn.Dense``; flax (and optax, a flax dependency) are
imported only when it is constructed, so the scratch backend needs neither.

Importing this module enables JAX's 64-bit mode for the whole process (float64 runs would be
silently truncated to float32 otherwise); every array is therefore created with an explicit
dtype so that float32 runs stay float32.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

# XLA's C++ logging (absl/tsl) reads this once, at import: keep its INFO/WARNING chatter off the
# user's terminal unless they chose a level themselves. Errors are still shown.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402  (the environment above must be set before the import)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from ..cells import RNN, Model, get_cell, layer_suffix  # noqa: E402
from ..errors import BackendUnavailableError, GPUUnavailableError  # noqa: E402
from ..params import check_dtype, validate_params  # noqa: E402
from . import layer_limits  # noqa: E402
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


def _global_norm(leaves: Any) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """``sqrt(sum_k sum(g_k * g_k))`` over the gradients in the given order, and the per-leaf sums
    (which a compiled step may need to return: see :func:`_clip_tree_squares`)."""
    # jnp.sum(g * g), not jnp.vdot(g, g): XLA on the CPU lowers vdot to one sequential float32 dot,
    # whose rounding error on real gradients reached 1.8e-4 of ||dW_hh||^2 (sum: 1.7e-7), and the
    # clipping scale carried that error into every update: in the book run it alone pushed the
    # re-anchored loss deviation to 6.6e-4 where the other frameworks stayed below 2.6e-5.
    squares = tuple(jnp.sum(g * g) for g in leaves)
    return jnp.sqrt(sum(squares)), squares


def _clip_scale(norm: jax.Array, max_grad_norm: Any) -> jax.Array:
    """d2l's clipping factor ``min(1, theta / norm)``."""
    theta = jnp.asarray(max_grad_norm, dtype=norm.dtype)  # a Python float must not widen float32
    # Zero grads give theta / 0 = inf, but jnp.where then picks 1: no NaN. Below the bound the
    # scale is exactly 1, so the grads come back bit-for-bit unchanged, as d2l's rule requires.
    return jnp.where(norm > theta, theta / norm, jnp.ones_like(norm))


def _clip(grads: Params, max_grad_norm: Any) -> tuple[Params, jax.Array]:
    """d2l's global-norm clipping, entirely on the device (no host sync, no Python ``if``)."""
    norm, _ = _global_norm(grads.values())
    scale = _clip_scale(norm, max_grad_norm)
    return {k: g * scale for k, g in grads.items()}, norm


# --- fast mode: the compiled recurrence --------------------------------------------------------


@jax.custom_vjp
def _recurrence(xw: jax.Array, W_hh: jax.Array, h0: jax.Array) -> jax.Array:
    """All hidden states ``(T, B, H)`` of ``h_t = tanh(xw_t + h_{t-1} W_hh)``.

    ``xw`` ``(T, B, H)`` is ``X_t W_xh + b_h`` for every step, computed up front. The custom VJP
    keeps only ``dL/d(pre-activation)`` in the backward loop; autodiff of the scan would also
    accumulate ``h_{t-1}^T d_pre`` one small matmul per step instead of one large one.
    """
    return _recurrence_fwd(xw, W_hh, h0)[0]


# Both loops run feature-major: the state as (H, B), each step h^T = tanh(xw^T + W_hh^T h^T)
# (the same products and sums). XLA's CPU dot runs the (H, H) @ (H, B) chain 1.5-1.7x faster than
# (B, H) @ (H, H) (the 70 products of `benchmarks.floor.chain_runners` on an AMD EPYC: 6.46-6.70
# against 9.68-11.28 ms; benchmarks/PROFILES.md finding 12). The loops' stacked inputs and outputs
# are transposed outside them: transposing inside the loop bodies instead cost more than the loops
# gained (an ad-hoc A/B: 0.993x).
# Each loop overwrites its own input buffer step by step (h_t over xw_t forward, d_pre_t over
# dL/dh_t backward) instead of scanning into new stacked outputs: lax.scan zero-fills its outputs
# and XLA then copied, sliced and concatenated them around the loops, five passes over (T, H, B)
# arrays per step that this form does not make (PROFILES.md finding 14).
def _recurrence_fwd(xw: jax.Array, W_hh: jax.Array, h0: jax.Array):
    W_hh_T = W_hh.T

    def step(t: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        buf, h = carry
        h = jnp.tanh(lax.dynamic_index_in_dim(buf, t, keepdims=False) + W_hh_T @ h)
        return lax.dynamic_update_index_in_dim(buf, h, t, 0), h

    hs_f, _ = lax.fori_loop(0, xw.shape[0], step, (_fm(xw), h0.T))  # (T, H, B)
    return _fm(hs_f), (hs_f, W_hh, h0)


def _recurrence_bwd(res, d_hs: jax.Array):
    hs_f, W_hh, h0 = res
    T, H = hs_f.shape[0], hs_f.shape[1]
    d_f = _fm(d_hs)  # (T, H, B)
    # The last step has no later step feeding back, so it is peeled off: the loop then does
    # exactly T - 1 sequential matmuls and dL/dh0 is one matmul outside it (dropped by XLA when
    # unused, which it is: the initial state is detached).
    d_last = d_f[-1] * (1 - hs_f[-1] * hs_f[-1])

    def step(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        buf, d_pre_next = carry
        t = T - 2 - i
        h_t = lax.dynamic_index_in_dim(hs_f, t, keepdims=False)
        # (H, B): d_pre^T = (d_h^T + W_hh d_next^T) ⊙ tanh'^T, tanh' = 1 - h_t²
        d_pre = (lax.dynamic_index_in_dim(buf, t, keepdims=False) + W_hh @ d_pre_next) * (1 - h_t * h_t)
        return lax.dynamic_update_index_in_dim(buf, d_pre, t, 0), d_pre

    d_pres, d_first = lax.fori_loop(0, T - 1, step, (d_f.at[-1].set(d_last), d_last))
    d_pre = _fm(d_pres)  # (T, B, H)
    h_prev = jnp.concatenate([h0[None], _fm(hs_f[:-1])])  # (T, B, H): h_{t-1} for every step
    d_W_hh = h_prev.reshape(-1, H).T @ d_pre.reshape(-1, H)  # one (H, T*B) @ (T*B, H) matmul
    return d_pre, d_W_hh, (W_hh @ d_first).T  # dL/dh0 = d_pre_1 W_hh^T = (W_hh d_pre_1^T)^T


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


@jax.custom_vjp
def _project(h: jax.Array, W: jax.Array) -> jax.Array:
    """``h @ W`` for the output layer, ``(T*B, H) @ (H, V)``, with a faster weight gradient.

    Autodiff's ``dW = h^T g`` contracts both operands' long first axis, which XLA's CPU dot runs
    at ~28 GFLOP/s for (512, 1120) @ (1120, 28); ``(g^T h)^T`` runs ~2.9x faster (1.23 against 0.43 ms
    on an AMD EPYC, `python -m benchmarks.probes jax-output`). XLA rewrites a bare ``(g^T h)^T`` back
    into the slow form (1.23 ms too), so the barrier keeps the product and transposes only its
    small (V, H) result.
    """
    return h @ W


def _project_fwd(h: jax.Array, W: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return h @ W, (h, W)


def _project_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    h, W = res
    return g @ W.T, lax.optimization_barrier(g.T @ h).T


_project.defvjp(_project_fwd, _project_bwd)


def _fast_logits(params: Params, X: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits ``(T*B, V)`` (rows time-major) and all hidden states ``(T, B, H)``."""
    # one_hot(X_t) @ W_xh is a row gather; do it (and add b_h) for every step at once.
    xw = params["W_xh"][X.T] + params["b_h"]  # (T, B, H)
    hs = _recurrence(xw, params["W_hh"], h0)
    T, B, H = hs.shape
    logits = _project(hs.reshape(T * B, H), params["W_hq"]) + params["b_q"]  # one matmul for all steps
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


def _clip_tree_squares(grads: Any, max_grad_norm: Any) -> tuple[Any, jax.Array, tuple[jax.Array, ...]]:
    """:func:`_clip_tree`, plus every leaf's sum of squares, for a compiled step to return.

    Returning the sums (the caller drops them) makes XLA materialise each one in its own small
    kernel. Otherwise XLA:CPU fuses up to six of these reductions, with the additions and the
    sqrt after them, into one kernel (its limit, kMaxReductionsInFusion, exists for this very
    reason), and LLVM spends a superlinear time on it: 1, 2, 4 and 6 float32 (32, 32) reductions in
    one kernel took 0.4, 1.6, 15 and 55 s to compile. The layers' leaves are sorted by name, so
    the last six, the ones fused, were the second LSTM layer's five (H, H) kernels and a bias:
    ~33 s of the first step at H=32 in float32, for each batch shape (2 GRU layers: three, ~6 s).
    Same bits either way: each reduction is the same loop, fused or not (checked for every cell).
    The scratch steps keep :func:`_clip`: there the fused ones are biases, cheap to compile, and
    the extra outputs would cost ~1% of a step.
    """
    norm, squares = _global_norm(jax.tree_util.tree_leaves(grads))
    scale = _clip_scale(norm, max_grad_norm)
    return jax.tree_util.tree_map(lambda g: g * scale, grads), norm, squares


def _clip_tree(grads: Any, max_grad_norm: Any) -> tuple[Any, jax.Array]:
    """:func:`_clip` for any pytree of gradients (the flax layers' nested params)."""
    clipped, norm, _ = _clip_tree_squares(grads, max_grad_norm)
    return clipped, norm


# --- eager mode, every model: d2l's cell steps -------------------------------------------------


def _layer_params(params: Params, model: Model, layer: int) -> Params:
    """One layer's parameters by their d2l names without the ``_l{layer}`` suffix."""
    s = layer_suffix(layer)
    return {k[: len(k) - len(s)] if s else k: params[k] for k in model.layer_param_names(layer)}


def _pre(p: Params, g: str, X: jax.Array, H: jax.Array) -> jax.Array:
    """``X W_x{g} + H W_h{g} + b_{g}``, plus the second bias ``b_h{g}`` when the model has it."""
    out = X @ p[f"W_x{g}"] + H @ p[f"W_h{g}"] + p[f"b_{g}"]
    return out + p[f"b_h{g}"] if f"b_h{g}" in p else out


def _rnn_step(p: Params, X: jax.Array, state: tuple) -> tuple:
    (H,) = state
    return (jnp.tanh(_pre(p, "h", X, H)),)


def _gru_step(p: Params, X: jax.Array, state: tuple) -> tuple:
    (H,) = state
    Z = jax.nn.sigmoid(_pre(p, "z", X, H))
    R = jax.nn.sigmoid(_pre(p, "r", X, H))
    H_tilde = X @ p["W_xh"] + (R * H) @ p["W_hh"] + p["b_h"]  # d2l: reset before the matmul
    if "b_hh" in p:
        H_tilde = H_tilde + p["b_hh"]
    H_tilde = jnp.tanh(H_tilde)
    return (Z * H + (1 - Z) * H_tilde,)


def _gru_reset_after_step(p: Params, X: jax.Array, state: tuple) -> tuple:
    (H,) = state
    Z = jax.nn.sigmoid(_pre(p, "z", X, H))
    R = jax.nn.sigmoid(_pre(p, "r", X, H))
    N = jnp.tanh(X @ p["W_xn"] + p["b_n"] + R * (H @ p["W_hn"] + p["b_hn"]))  # cuDNN: reset after
    return (Z * H + (1 - Z) * N,)


def _lstm_step(p: Params, X: jax.Array, state: tuple) -> tuple:
    H, C = state
    I, F, O = (jax.nn.sigmoid(_pre(p, g, X, H)) for g in "ifo")
    C_tilde = jnp.tanh(_pre(p, "c", X, H))
    C = F * C + I * C_tilde
    return (O * jnp.tanh(C), C)


_EAGER_STEPS: dict[str, Callable[[Params, jax.Array, tuple], tuple]] = {
    "rnn": _rnn_step, "gru": _gru_step, "gru-reset-after": _gru_reset_after_step, "lstm": _lstm_step,
}


# --- fast mode, every model: one custom-VJP recurrence per layer -------------------------------
#
# A layer's step is split into what must run step by step and what need not. Before the loop,
# the input projections of every step and gate are one gather (first layer) or one matmul:
# ``xw`` (T, B, G*H), biases folded in. In the loop, one matmul ``hw = h W_A (+ b_A)`` with the
# recurrent weights of the gates that read h directly, concatenated in d2l's gate order; d2l's
# GRU needs a second one, ``hb = u W_B`` with ``u = R ⊙ h`` (its reset gate acts before the
# matmul). Everything else is elementwise (``_PW``). The backward loop keeps only the cotangents
# of ``hw`` and ``hb`` per step (one matmul back to dh per step, plus W_B's for the GRU); the
# weight gradients are then single (H, T*B) @ (T*B, G*H) matmuls. Autodiff of the scan would
# instead accumulate h^T d(hw) one small matmul per step inside the sequential loop.

_A_GATES = {"rnn": ("h",), "gru": ("z", "r"), "gru-reset-after": ("z", "r", "n"), "lstm": ("i", "f", "o", "c")}

# The loops run feature-major, as the tanh RNN's do: the state as (H, B), each recurrent product
# W^T h^T (the same sums). XLA's CPU dot runs those (G*H, H) @ (H, B) products 1.25-1.5x faster than
# (B, H) @ (H, G*H) for G = 1-4 on an AMD EPYC (35 dependent products alternating, an ad-hoc script;
# the tanh RNN's chain: PROFILES.md finding 12). Every gate's stacked input, saved product and
# cotangent is its own (T, H, B) array, transposed outside the loops: a fusion that reads a gate's
# rows out of a step's (G*H, B) slice of one stacked array cost XLA ~5 ms more per 35-step GRU
# forward loop than reading three separate arrays (+5.5 against +1.6 ms over the loop without
# inputs, PROFILES.md finding 16).


def _pw_rnn(x: tuple, hw: tuple, hb: Any, s: tuple) -> tuple:
    return (jnp.tanh(x[0] + hw[0]),)


def _pw_lstm(x: tuple, hw: tuple, hb: Any, s: tuple) -> tuple:
    _, c = s
    i, f, o, g = (a + b for a, b in zip(x, hw))  # d2l's gate order i, f, o, c
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return (jax.nn.sigmoid(o) * jnp.tanh(c_new), c_new)


def _pw_gru_reset_after(x: tuple, hw: tuple, hb: Any, s: tuple) -> tuple:
    (h,) = s
    xz, xr, xn = x
    hz, hr, hn = hw  # hn includes b_hn (b_A): it sits inside r ⊙ (...)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + jax.nn.sigmoid(xr + hr) * hn)
    return (z * h + (1 - z) * n,)


def _mid_gru(x: tuple, hw: tuple, s: tuple) -> jax.Array:
    """d2l's GRU: ``u = R ⊙ h``, the input of the candidate's recurrent matmul ``hb = W_hh^T u``."""
    return jax.nn.sigmoid(x[1] + hw[1]) * s[0]


def _pw_gru(x: tuple, hw: tuple, hb: jax.Array, s: tuple) -> tuple:
    (h,) = s
    z = jax.nn.sigmoid(x[0] + hw[0])
    c = jnp.tanh(x[2] + hb)
    return (z * h + (1 - z) * c,)


# cell -> (pointwise step, the input u of the second recurrent matmul or None); x and hw are
# tuples of the gates' (H, B) blocks, in d2l's gate order and _A_GATES' order.
_PW: dict[str, tuple[Callable[..., tuple], Callable[..., jax.Array] | None]] = {
    "rnn": (_pw_rnn, None), "gru": (_pw_gru, _mid_gru),
    "gru-reset-after": (_pw_gru_reset_after, None), "lstm": (_pw_lstm, None),
}


# Where each gate's input cotangent dL/dx_g already is, in d2l's gate order: gate g's
# pre-activation is x_g + (recurrent product i), so dL/dx_g is that product's cotangent, the same
# bits (i: a block of d_hw; "hb": d2l's GRU candidate, x_h + (R ⊙ h) W_hh). None: x enters
# otherwise (the reset-after GRU's candidate x_n + R ⊙ hn), so the backward loop stacks it itself.
# Reusing them saves stacking and transposing G more (T, H, B) arrays per layer.
_X_COTANGENT: dict[str, tuple[int | str | None, ...]] = {
    "rnn": (0,), "gru": (0, 1, "hb"), "gru-reset-after": (0, 1, None), "lstm": (0, 1, 2, 3),
}


def _fm(a: jax.Array) -> jax.Array:
    """Stacked ``(T, B, n)`` <-> ``(T, n, B)``: batch-major to feature-major and back.

    The tanh RNN's recurrence makes its stacked arrays' layout changes here too: ``benchmarks.ladder``
    traces its step with this replaced by a free reshape, to time the step without them."""
    return jnp.swapaxes(a, 1, 2)


def _gates_fm(xw: jax.Array, cell: str) -> tuple:
    """``(T, B, G*H)`` -> one feature-major ``(T, H, B)`` array per gate."""
    G = len(get_cell(cell).gates)
    H = xw.shape[-1] // G
    return tuple(_fm(xw[..., g * H:(g + 1) * H]) for g in range(G))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer_scan(cell: str, xw: jax.Array, W_A: jax.Array, b_A: Any, W_B: Any, s0: tuple) -> tuple[jax.Array, tuple]:
    """One layer over all steps: ``(outputs h_t (T, B, H), final state)``.

    Args:
        cell: the cell's name (static).
        xw: ``(T, B, G*H)`` input projections and biases of every gate, d2l's gate order.
        W_A: ``(H, G_A*H)`` recurrent weights of the gates that read h (``_A_GATES``).
        b_A: ``(G_A*H,)`` a bias added to ``h W_A`` (the reset-after GRU's ``b_hn``), or None.
        W_B: d2l's GRU's ``W_hh``, applied to ``R ⊙ h``; None for the other cells.
        s0: the layer's initial state, ``(h,)`` or ``(h, c)``, each ``(B, H)``.
    """
    s_T, (hs, *_) = _scan_layer(cell, _gates_fm(xw, cell), W_A, b_A, W_B, tuple(s.T for s in s0), keep=False)
    return _fm(hs), tuple(s.T for s in s_T)


def _scan_layer(cell: str, xs: tuple, W_A: jax.Array, b_A: Any, W_B: Any, s0: tuple, keep: bool):
    """The forward loop, feature-major: ``xs`` one ``(T, H, B)`` array per gate, states ``(H, B)``;
    ``keep`` also returns what the backward loop needs (states, hw per gate, u, hb), stacked."""
    pw, mid = _PW[cell]
    W_A_T = W_A.T
    W_B_T = None if W_B is None else W_B.T
    b_col = None if b_A is None else b_A[:, None]
    n_A = len(_A_GATES[cell])

    def step(s: tuple, x: tuple) -> tuple[tuple, tuple]:
        hw = W_A_T @ s[0]
        if b_col is not None:
            hw = hw + b_col
        hw = tuple(jnp.split(hw, n_A, axis=0))
        u = hb = None
        if mid is not None:
            u = mid(x, hw, s)
            hb = W_B_T @ u
        s_new = pw(x, hw, hb, s)
        return s_new, ((s_new, hw, u, hb) if keep else (s_new[0],))

    return lax.scan(step, s0, xs)


def _layer_scan_fwd(cell: str, xw: jax.Array, W_A: jax.Array, b_A: Any, W_B: Any, s0: tuple):
    xs, s0_f = _gates_fm(xw, cell), tuple(s.T for s in s0)
    s_T, (states, hws, us, hbs) = _scan_layer(cell, xs, W_A, b_A, W_B, s0_f, keep=True)
    return (_fm(states[0]), tuple(s.T for s in s_T)), (xs, W_A, b_A, W_B, s0_f, states, hws, us, hbs)


def _layer_scan_bwd(cell: str, res: tuple, cts: tuple) -> tuple:
    xs, W_A, b_A, W_B, s0, states, hws, us, hbs = res  # feature-major
    d_hs, d_sT = cts  # batch-major, as the layer returned them
    pw, mid = _PW[cell]
    prev = tuple(jnp.concatenate([a[None], b[:-1]]) for a, b in zip(s0, states))  # s_{t-1} for every t

    def step(d_s: tuple, inputs: tuple) -> tuple[tuple, tuple]:
        x_t, hw_t, hb_t, s_prev, d_h_t = inputs
        d_s = (d_s[0] + d_h_t, *d_s[1:])  # the output h_t feeds the layer above too
        # The elementwise part is recomputed from the saved matmul results (cheap, no matmul).
        if mid is None:
            _, vjp = jax.vjp(lambda a, b, s: pw(a, b, None, s), x_t, hw_t, s_prev)
            d_x, d_hw, d_prev = vjp(d_s)
            d_hb = None
        else:
            _, vjp = jax.vjp(pw, x_t, hw_t, hb_t, s_prev)
            d_x, d_hw, d_hb, d_prev = vjp(d_s)
            _, vjp_mid = jax.vjp(mid, x_t, hw_t, s_prev)
            d_x2, d_hw2, d_prev2 = vjp_mid(W_B @ d_hb)
            d_x = tuple(a + b for a, b in zip(d_x, d_x2))
            d_hw = tuple(a + b for a, b in zip(d_hw, d_hw2))
            d_prev = tuple(a + b for a, b in zip(d_prev, d_prev2))
        d_hw = jnp.concatenate(d_hw, axis=0)  # (G_A*H, B): one product back to dh
        d_prev = (d_prev[0] + W_A @ d_hw, *d_prev[1:])
        # Only the input cotangents not already stacked as d_hw or d_hb (_X_COTANGENT).
        return d_prev, (tuple(d for d, src in zip(d_x, _X_COTANGENT[cell]) if src is None), d_hw, d_hb)

    d_s0, (d_x, d_hw, d_hb) = lax.scan(step, tuple(d.T for d in d_sT), (xs, hws, hbs, prev, _fm(d_hs)),
                                       reverse=True)

    def flat(a: jax.Array) -> jax.Array:
        return _fm(a).reshape(-1, a.shape[1])  # (T, n, B) -> (T*B, n), batch-major rows

    d_hw_rows = flat(d_hw)  # (T*B, G_A*H)
    d_W_A = flat(prev[0]).T @ d_hw_rows  # one matmul over all steps
    d_b_A = None if b_A is None else jnp.sum(d_hw, axis=(0, 2))
    d_hb_rows = None if W_B is None else flat(d_hb)
    d_W_B = None if W_B is None else flat(us).T @ d_hb_rows
    T, H, B = d_hw.shape[0], prev[0].shape[1], d_hw.shape[2]
    own = iter(d_x)
    pieces = [flat(next(own)) if src is None else d_hb_rows if src == "hb" else d_hw_rows[:, src * H:(src + 1) * H]
              for src in _X_COTANGENT[cell]]
    d_xw = jnp.concatenate(pieces, axis=1).reshape(T, B, -1)  # (T, B, G*H)
    return d_xw, d_W_A, d_b_A, d_W_B, tuple(d.T for d in d_s0)


_layer_scan.defvjp(_layer_scan_fwd, _layer_scan_bwd)


def _model_logits(model: Model, params: Params, X: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
    """Logits ``(T*B, V)`` (rows time-major) and the final state of any model, for jit."""
    cell = model.cell.name
    gates, per = model.cell.gates, len(model.cell.state)
    T, B = X.shape[1], X.shape[0]
    outs, final = None, []
    for layer in range(model.num_layers):
        p = _layer_params(params, model, layer)
        W_x = jnp.concatenate([p[f"W_x{g}"] for g in gates], axis=1)
        # Second biases that are plain additions to a pre-activation fold into the input bias;
        # the reset-after GRU's b_hn cannot: it is multiplied by R with h W_hn.
        inside = {"n"} if cell == "gru-reset-after" else set()
        b = jnp.concatenate([p[f"b_{g}"] + p[f"b_h{g}"] if f"b_h{g}" in p and g not in inside else p[f"b_{g}"]
                             for g in gates])
        if layer == 0:
            xw = W_x[X.T] + b  # one_hot(X_t) @ W_x is a row gather: (T, B, G*H)
        else:
            xw = (outs.reshape(T * B, -1) @ W_x + b).reshape(T, B, -1)
        W_A = jnp.concatenate([p[f"W_h{g}"] for g in _A_GATES[cell]], axis=1)
        b_A = None
        if cell == "gru-reset-after":
            zeros = jnp.zeros(2 * p["b_hn"].shape[0], dtype=p["b_hn"].dtype)
            b_A = jnp.concatenate([zeros, p["b_hn"]])
        W_B = p["W_hh"] if cell == "gru" else None
        outs, s_T = _layer_scan(cell, xw, W_A, b_A, W_B, tuple(state[layer * per:(layer + 1) * per]))
        final += list(s_T)
    H = outs.shape[-1]
    return _project(outs.reshape(T * B, H), params["W_hq"]) + params["b_q"], tuple(final)


@functools.partial(jax.jit, static_argnums=0)
def _model_forward(model: Model, params: Params, X: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
    return _model_logits(model, params, X, state)


def _model_loss(model: Model, params: Params, X: jax.Array, Y: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
    logits, state = _model_logits(model, params, X, state)
    return _cross_entropy(logits, Y.T.reshape(-1)), state


@functools.partial(jax.jit, static_argnums=0)
def _model_loss_and_grads(model: Model, params: Params, X: jax.Array, Y: jax.Array, state: tuple):
    (loss, state), grads = jax.value_and_grad(_model_loss, argnums=1, has_aux=True)(model, params, X, Y, state)
    return loss, grads, state


# Params (arg 1) and state (arg 4) are donated, as in _fast_train_step.
@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 4))
def _model_train_step(
    model: Model, params: Params, X: jax.Array, Y: jax.Array, state: tuple, lr: jax.Array, max_grad_norm: jax.Array
) -> tuple[Params, jax.Array, jax.Array, tuple]:
    (loss, state), grads = jax.value_and_grad(_model_loss, argnums=1, has_aux=True)(model, params, X, Y, state)
    grads, norm = _clip(grads, max_grad_norm)
    new_params = {k: p - jnp.asarray(lr, dtype=p.dtype) * grads[k] for k, p in params.items()}
    return new_params, loss, norm, state


# --- the backends ------------------------------------------------------------------------------


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


class _JaxBase(Backend):
    """What the scratch and the layers backends share: the device, copies in and out, the state."""

    name = "jax"
    framework = "jax"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        self._device = jax_device(device)

    def version(self) -> str:
        return jax.__version__

    def _put(self, x: Any, dtype: Any = None) -> jax.Array:
        """NumPy (or JAX) -> a JAX array on this backend's device, copied, dtype explicit."""
        # On the CPU device_put may alias a suitably aligned NumPy buffer instead of copying it
        # (seen here: the copy check failed only in some runs), so copy first: the caller may
        # mutate its arrays, and the fast path donates (overwrites) these buffers.
        return jax.device_put(np.array(x, dtype=dtype, copy=True), self._device)

    def as_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)  # np.asarray would give a read-only view of the JAX buffer

    def _state_in(self, state: State, dtype: Any) -> tuple[jax.Array, ...]:
        """The state as JAX arrays of the params' dtype; NumPy arrays are copied over."""
        n = len(self.model.state_names())
        if len(state) != n:
            raise ValueError(f"state must be a tuple of {n} arrays {self.model.state_names()}, got {len(state)}.")
        return tuple(s if isinstance(s, jax.Array) and s.dtype == dtype else self._put(s, dtype) for s in state)

    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> jax.Array:
        X_t = self._put(np.asarray(X).T)  # (num_steps, batch_size), time-major as d2l's X.T
        return jax.nn.one_hot(X_t, vocab_size, dtype=jnp.dtype(check_dtype(dtype)))  # (T, B, V)


class JaxBackend(_JaxBase):
    """d2l's RNNs from scratch in JAX: every cell, any depth, one or two biases per gate.

    Args:
        device: ``"cpu"`` or ``"gpu"``; everything (params, data, state) is placed on that device.
        mode: ``"eager"`` (d2l-style, op by op) or ``"fast"`` (one jitted ``train_step``).
        model: the cell and layers (default: d2l's one-layer tanh RNN).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but JAX sees no GPU.
    """

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        self._names = self.model.param_names()

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return None  # every cell, any depth, one or two biases

    # --- conversion ---------------------------------------------------------------------------
    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        validate_params(params, self.model)
        return {k: self._put(params[k], check_dtype(np.asarray(params[k]).dtype)) for k in self._names}

    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        return {k: np.array(params[k], copy=True) for k in self._names}

    # --- the model ----------------------------------------------------------------------------
    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        dt = jnp.dtype(check_dtype(dtype))
        shape = (batch_size, num_hiddens)
        return tuple(jnp.zeros(shape, dtype=dt, device=self._device) for _ in self.model.state_names())

    def _rnn(self, params: Params, X: np.ndarray, state: tuple) -> tuple[jax.Array, tuple]:
        """d2l's ``rnn``, stacked: one-hot inputs, then each layer's cell step in a Python loop over
        time steps (a layer's outputs are the next layer's inputs), the output layer per step."""
        m = self.model
        step, per = _EAGER_STEPS[m.cell.name], len(m.cell.state)
        W_hq, b_q = params["W_hq"], params["b_q"]
        inputs = list(self.one_hot(X, W_hq.shape[1], W_hq.dtype.name))  # num_steps x (batch_size, vocab_size)
        new_state: list[jax.Array] = []
        for layer in range(m.num_layers):
            p = _layer_params(params, m, layer)
            s = tuple(state[layer * per:(layer + 1) * per])
            outputs = []
            for X_t in inputs:
                s = step(p, X_t, s)
                outputs.append(s[0])
            new_state += s
            inputs = outputs
        outputs = [H @ W_hq + b_q for H in inputs]
        return jnp.concatenate(outputs, axis=0), tuple(new_state)  # (num_steps * batch_size, vocab_size)

    def _compiled(self) -> bool:
        """Fast mode of any model but the tanh RNN, which keeps its own tuned functions."""
        return self.mode == "fast" and self.model != RNN

    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[jax.Array, State]:
        state = self._state_in(state, params["W_hq"].dtype)
        if self.mode == "fast" and self.model == RNN:
            logits, h = _fast_forward(params, self._put(X, np.int32), state[0])
            return logits, (h,)
        if self._compiled():
            return _model_forward(self.model, params, self._put(X, np.int32), state)
        return self._rnn(params, X, state)

    def loss_and_grads(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[jax.Array, Params, State]:
        state = self._state_in(state, params["W_hq"].dtype)
        if self._compiled():
            return _model_loss_and_grads(self.model, params, self._put(X, np.int32), self._put(Y, np.int32), state)
        y = self._put(np.asarray(Y).T.reshape(-1))  # (num_steps * batch_size,), the logits' row order

        def loss_fn(params: Params) -> tuple[jax.Array, tuple]:
            logits, new_state = self._rnn(params, X, state)
            return _cross_entropy(logits, y), new_state

        # Only the params are differentiated; the returned state is a plain array (JAX keeps no
        # graph between calls), so it is already detached.
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, new_state

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, jax.Array]:
        return _clip(grads, max_grad_norm)

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        # JAX arrays are immutable: "in place" here means the caller's dict now holds the new
        # arrays (fast mode donates the old buffers, so XLA really writes in place there).
        for k in self._names:
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
        dtype = params["W_hq"].dtype
        state = self._state_in(state, dtype)
        # lr and theta go in as traced scalars of the params' dtype: a new lr does not recompile,
        # and a Python float (float64 under x64) never enters a float32 computation.
        args = (self._put(X, np.int32), self._put(Y, np.int32))
        scalars = (np.asarray(lr, dtype=dtype), np.asarray(max_grad_norm, dtype=dtype))
        mine = {k: params[k] for k in self._names}
        if self.model == RNN:
            new_params, loss, norm, h = _fast_train_step(mine, *args, state[0], *scalars)
            state = (h,)
        else:
            new_params, loss, norm, state = _model_train_step(self.model, mine, *args, state, *scalars)
        params.update(new_params)  # the old arrays were donated (deleted); keep the dict usable
        return params, loss, norm, state


# --- flax's own layers -------------------------------------------------------------------------

_INSTALL_HINT = "pip install 'multirnn[jax]'"


def _flax() -> tuple[Any, Any, Any]:
    """``(flax, flax.linen, optax)``, imported on first use: the scratch backend needs none of them.

    Raises:
        BackendUnavailableError: flax (or optax, which flax depends on) is not installed.
    """
    try:
        import flax
        import flax.linen as nn
        import optax
    except ImportError as exc:
        raise BackendUnavailableError(
            f"The jax 'layers' implementation needs flax and optax ({exc}); install them with: {_INSTALL_HINT}"
        ) from exc
    return flax, nn, optax


# d2l gate -> (flax's input Dense, its recurrent Dense, the one of them that carries the gate's
# bias). flax cells have one Dense per gate and one bias per gate, on different sides: SimpleCell
# and GRUCell bias the input Dense, LSTMCell the recurrent one; GRUCell's 'hn' Dense carries a
# second bias inside r * (h W_hn + b_hn) (reset-after), which is the model's b_hn. Kernels are
# (in, out): d2l's orientation, no transposes.
_FLAX_GATES: dict[str, dict[str, tuple[str, str, str]]] = {
    "rnn": {"h": ("i", "h", "i")},
    "gru-reset-after": {"z": ("iz", "hz", "iz"), "r": ("ir", "hr", "ir"), "n": ("in", "hn", "in")},
    "lstm": {"i": ("ii", "hi", "hi"), "f": ("if", "hf", "hf"), "o": ("io", "ho", "ho"), "c": ("ig", "hg", "hg")},
}
_FLAX_CELLS = {"rnn": "SimpleCell", "gru": "GRUCell", "gru-reset-after": "GRUCell", "lstm": "LSTMCell"}


def _flax_paths(model: Model) -> dict[str, tuple[str, ...]]:
    """Where each d2l parameter lives in the flax variables, by d2l name in the model's order.

    ``nn.RNN`` layer ``l`` is named ``rnn{l}`` and holds its cell as ``cell`` (the cell is built
    with ``parent=None``: a cell created inline in a compact method would otherwise be adopted by
    the enclosing module as ``LSTMCell_0``); the output layer is ``dense``.
    """
    table = _FLAX_GATES[model.cell.name]
    paths: dict[str, tuple[str, ...]] = {}
    for layer in range(model.num_layers):
        s, cell = layer_suffix(layer), ("params", f"rnn{layer}", "cell")
        for g, (i, h, b) in table.items():
            paths[f"W_x{g}{s}"] = (*cell, i, "kernel")
            paths[f"W_h{g}{s}"] = (*cell, h, "kernel")
            paths[f"b_{g}{s}"] = (*cell, b, "bias")
        for g in model.hidden_bias_gates():  # only the reset-after GRU's b_hn (a second bias is unsupported)
            paths[f"b_h{g}{s}"] = (*cell, table[g][1], "bias")
    paths["W_hq"], paths["b_q"] = ("params", "dense", "kernel"), ("params", "dense", "bias")
    return {k: paths[k] for k in model.param_names()}


@functools.cache
def _char_rnn_class() -> type:
    """The flax module, defined on first use (flax is imported lazily)."""
    _, nn, _ = _flax()

    class FlaxCharRNN(nn.Module):
        """d2l's language model from flax's layers: one-hot inputs, ``num_layers`` ``nn.RNN``
        layers (time-major), ``nn.Dense`` on top; returns logits ``(T*B, V)`` (rows time-major)
        and every layer's final carry."""

        cell_type: Any  # a flax cell class: SimpleCell, GRUCell, LSTMCell or OptimizedLSTMCell
        num_layers: int
        num_hiddens: int
        vocab_size: int
        dtype: Any

        @nn.compact
        def __call__(self, X: jax.Array, carries: tuple) -> tuple[jax.Array, tuple]:
            # The one-hot is built time-major from X.T, so the outputs come out in d2l's row order.
            x = jax.nn.one_hot(X.T, self.vocab_size, dtype=self.dtype)  # (T, B, V)
            finals = []
            for layer in range(self.num_layers):
                cell = self.cell_type(features=self.num_hiddens, dtype=self.dtype, param_dtype=self.dtype, parent=None)
                carry, x = nn.RNN(cell, time_major=True, return_carry=True, name=f"rnn{layer}")(
                    x, initial_carry=carries[layer])
                finals.append(carry)
            logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=self.dtype, name="dense")(x)
            return logits.reshape(-1, self.vocab_size), tuple(finals)

    return FlaxCharRNN


class _FlaxModel:
    """One flax model (cell, depth, V, H, dtype) and its compiled functions, shared by backends."""

    def __init__(self, model: Model, vocab_size: int, num_hiddens: int, dtype: str, optimized: bool) -> None:
        _, nn, optax = _flax()
        name = _FLAX_CELLS[model.cell.name]
        # OptimizedLSTMCell: the same parameters as LSTMCell, its 8 kernels concatenated into 2
        # matmuls per step (flax: faster for H up to ~2048); verified equal to 1e-16 in float64.
        self.cell_type = nn.OptimizedLSTMCell if optimized and name == "LSTMCell" else getattr(nn, name)
        self.dtype = jnp.dtype(dtype)
        self.module = _char_rnn_class()(self.cell_type, model.num_layers, num_hiddens, vocab_size, self.dtype)
        self.paths = _flax_paths(model)
        self.cell = self.cell_type(features=num_hiddens, dtype=self.dtype, param_dtype=self.dtype, parent=None)
        self.lstm = model.cell.name == "lstm"
        self.num_layers = model.num_layers
        self.template = jax.eval_shape(self.module.init, jax.random.key(0), *self.dummy_inputs(1, vocab_size))
        leaves = jax.tree_util.tree_flatten_with_path(self.template)[0]
        got = {tuple(k.key for k in path): tuple(v.shape) for path, v in leaves}
        shapes = model.param_shapes(vocab_size, num_hiddens)
        want = {path: shapes[name] for name, path in self.paths.items()}
        if got != want:  # a flax version with another layout (e.g. another bias) must not pass silently
            raise ValueError(f"flax.linen.{name}'s params do not match the d2l mapping: flax {got}, mapping {want}")

        # Eager and fast both run the layers' forward compiled: nn.RNN is a lax.scan, which JAX
        # otherwise retraces and recompiles on every call (~2 s per training step here).
        self.apply = apply = jax.jit(self.module.apply)

        def loss(variables: Any, X: jax.Array, Y: jax.Array, carries: tuple) -> tuple[jax.Array, tuple]:
            logits, finals = apply(variables, X, carries)
            return _cross_entropy(logits, Y.T.reshape(-1)), finals

        def train_step(variables: Any, X: jax.Array, Y: jax.Array, carries: tuple, lr: jax.Array,
                       max_grad_norm: jax.Array) -> tuple[Any, jax.Array, jax.Array, tuple, tuple]:
            (value, finals), grads = jax.value_and_grad(loss, has_aux=True)(variables, X, Y, carries)
            # The per-leaf sums of squares are returned only to keep XLA from fusing their
            # reductions into one kernel: the 2-layer LSTM's step then took ~33 s to compile
            # at H=32 in float32 (_clip_tree_squares).
            grads, norm, squares = _clip_tree_squares(grads, max_grad_norm)
            return _sgd(optax, variables, grads, lr), value, norm, finals, squares

        self.loss = loss
        self.loss_and_grads = jax.jit(jax.value_and_grad(loss, has_aux=True))
        # The variables (arg 0) and carries (arg 3) are donated: XLA updates them in place.
        self.train_step = jax.jit(train_step, donate_argnums=(0, 3))

    def dummy_inputs(self, batch_size: int, vocab_size: int) -> tuple[jax.Array, tuple]:
        X = jnp.zeros((batch_size, 1), dtype=jnp.int32)
        return X, tuple(self.cell.initialize_carry(jax.random.key(0), (batch_size, vocab_size))
                        for _ in range(self.num_layers))

    def carries(self, state: tuple) -> tuple:
        """d2l's state ``(H, C, H_l1, C_l1, ...)`` -> one flax carry per layer; LSTM: ``(c, h)``."""
        if self.lstm:
            return tuple((state[2 * k + 1], state[2 * k]) for k in range(self.num_layers))
        return tuple(state)

    def state(self, carries: tuple) -> tuple:
        """Inverse of :meth:`carries`."""
        if self.lstm:
            return tuple(a for c, h in carries for a in (h, c))
        return tuple(carries)


def _sgd(optax: Any, variables: Any, grads: Any, lr: Any) -> Any:
    """``p <- p - lr * g`` the optax way: ``optax.sgd`` makes ``-lr * g``, ``apply_updates`` adds it
    (bit for bit ``p - lr * g``: negation is exact)."""
    sgd = optax.sgd(learning_rate=lr)
    updates, _ = sgd.update(grads, sgd.init(variables), variables)
    return optax.apply_updates(variables, updates)


_FLAX_MODELS: dict[tuple, _FlaxModel] = {}


class JaxLayersBackend(_JaxBase):
    """d2l's models from flax.linen's own layers: ``nn.RNN`` over ``nn.SimpleCell`` /
    ``nn.GRUCell`` (reset-after) / ``nn.LSTMCell`` (``nn.OptimizedLSTMCell`` in fast mode), one
    ``nn.RNN`` per layer, and ``nn.Dense``.

    Params are flax's variables, ``{"params": {"rnn0": {"cell": {...}}, ..., "dense": {...}}}``,
    holding d2l's weights as :func:`_flax_paths` says. Every flax parameter is a trained d2l
    parameter: flax cells carry one bias per gate (plus the reset-after GRU's ``b_hn``), so there
    is no frozen second bias. Eager mode differentiates the layers with ``jax.value_and_grad``
    and updates with ``optax.sgd``, op by op (only the layers' forward is compiled, see
    ``_FlaxModel``); fast mode compiles the whole step, with the params and state donated.

    Raises:
        BackendUnavailableError: flax is not installed.
        GPUUnavailableError: ``device="gpu"`` but JAX sees no GPU.
        UnsupportedModelError: d2l's GRU (flax's is reset-after) or a second bias per gate.
    """

    impl = "layers"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        self._flax, self._nn, self._optax = _flax()
        self._dims: tuple[int, int] | None = None  # (V, H), once params have been seen

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return layer_limits.layers_unsupported("jax", model)

    def version(self) -> str:
        return f"{jax.__version__} (flax {self._flax.__version__})"

    def _model(self, vocab_size: int, num_hiddens: int, dtype: Any) -> _FlaxModel:
        dtype = check_dtype(dtype)
        self._dims = (vocab_size, num_hiddens)
        key = (self.model, vocab_size, num_hiddens, dtype, self.mode == "fast")
        if key not in _FLAX_MODELS:
            _FLAX_MODELS[key] = _FlaxModel(self.model, vocab_size, num_hiddens, dtype, optimized=self.mode == "fast")
        return _FLAX_MODELS[key]

    def _model_of(self, variables: Any) -> _FlaxModel:
        kernel = variables["params"]["dense"]["kernel"]  # W_hq (H, V)
        return self._model(kernel.shape[1], kernel.shape[0], kernel.dtype)

    # --- conversion ---------------------------------------------------------------------------
    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Any:
        V, H, dtype = validate_params(params, self.model)
        fm = self._model(V, H, dtype)
        variables: dict[str, Any] = {}
        for name, path in fm.paths.items():
            node = variables
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = self._put(params[name], dtype)  # copied: these buffers may get donated
        return variables

    def _output_layer_of(self, params: Any) -> tuple[int | None, int | None, str | None]:
        """V, H, dtype: the output Dense's kernel is ``(H, V)`` (the input checks read it; no conversion)."""
        kernel = params["params"]["dense"]["kernel"]
        return int(kernel.shape[-1]), int(kernel.shape[0]), kernel.dtype.name

    def params_to_numpy(self, params: Any) -> dict[str, np.ndarray]:
        out = {}
        for name, path in _flax_paths(self.model).items():
            leaf = params
            for key in path:
                leaf = leaf[key]
            out[name] = np.array(leaf, copy=True)
        return out

    # --- the model ----------------------------------------------------------------------------
    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        """The cell's own zero carry (``initialize_carry``), as d2l's state tuple ``(H[, C], ...)``."""
        dt = jnp.dtype(check_dtype(dtype))
        cell = getattr(self._nn, _FLAX_CELLS[self.model.cell.name])(
            features=num_hiddens, dtype=dt, param_dtype=dt, parent=None)
        carry = cell.initialize_carry(jax.random.key(0), (batch_size, num_hiddens))  # LSTM: (c, h)
        layer = (carry[1], carry[0]) if self.model.cell.name == "lstm" else (carry,)
        return tuple(jax.device_put(jnp.array(a, dtype=dt), self._device)  # one buffer per entry (donation)
                     for _ in range(self.model.num_layers) for a in layer)

    def forward(self, params: Any, X: np.ndarray, state: State) -> tuple[jax.Array, State]:
        fm = self._model_of(params)
        carries = fm.carries(self._state_in(state, fm.dtype))
        logits, finals = fm.apply(params, self._put(X, np.int32), carries)
        return logits, fm.state(finals)

    def loss_and_grads(self, params: Any, X: np.ndarray, Y: np.ndarray, state: State) -> tuple[jax.Array, Any, State]:
        fm = self._model_of(params)
        carries = fm.carries(self._state_in(state, fm.dtype))
        args = (params, self._put(X, np.int32), self._put(Y, np.int32), carries)
        if self.mode == "fast":
            (loss, finals), grads = fm.loss_and_grads(*args)
        else:  # autodiff op by op around the compiled layers
            (loss, finals), grads = jax.value_and_grad(fm.loss, has_aux=True)(*args)
        return loss, grads, fm.state(finals)

    def clip_gradients(self, grads: Any, max_grad_norm: float) -> tuple[Any, jax.Array]:
        return _clip_tree(grads, max_grad_norm)

    def sgd_step(self, params: Any, grads: Any, lr: float) -> Any:
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        new = _sgd(self._optax, params, grads, jnp.asarray(lr, dtype=dtype))
        params.update(new)  # the caller's dict holds the new arrays, as in the scratch backend
        return params

    def train_step(
        self, params: Any, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Any, Any, Any, State]:
        """One training step; in fast mode one compiled call that donates the params' and the
        state's buffers (use the returned ones; the given dict is updated too)."""
        if self.mode != "fast":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        fm = self._model_of(params)
        carries = fm.carries(self._state_in(state, fm.dtype))
        new, loss, norm, finals, _ = fm.train_step(
            params, self._put(X, np.int32), self._put(Y, np.int32), carries,
            np.asarray(lr, dtype=fm.dtype), np.asarray(max_grad_norm, dtype=fm.dtype))
        params.update(new)
        return params, loss, norm, fm.state(finals)

    # --- what the layers bring ----------------------------------------------------------------
    def default_params(
        self, vocab_size: int, num_hiddens: int, seed: int, dtype: str = "float32"
    ) -> dict[str, np.ndarray]:
        """flax's own initialisers, seeded by ``seed``: kernels ``lecun_normal`` (truncated normal,
        std 1/sqrt(fan_in)), recurrent kernels ``orthogonal``, biases zeros; as d2l's dict."""
        fm = self._model(vocab_size, num_hiddens, dtype)
        variables = fm.module.init(jax.random.key(seed), *fm.dummy_inputs(1, vocab_size))
        return self.params_to_numpy(variables)

    def param_layout(self) -> dict[str, Any]:
        """``{"params/rnn0/cell/i/kernel": {"shape": [V, H], "holds": "W_xh"}, ...}``; shapes in
        numbers once params were seen (else in the letters V and H)."""
        V, H = self._dims if self._dims is not None else ("V", "H")
        shapes = self.model.param_shapes(V, H)  # type: ignore[arg-type]  (letters are fine here)
        return {"/".join(path): {"shape": list(shapes[name]), "holds": name}
                for name, path in _flax_paths(self.model).items()}
