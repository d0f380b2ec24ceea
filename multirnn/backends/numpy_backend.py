"""The NumPy oracle: forward pass and hand-written backpropagation through time, for every cell.

No autodiff library is involved, so this backend is the independent reference every framework
backend is checked against. It is written for clarity, step by step as in d2l, and computes in
the params' own dtype (float32 or float64). Each cell has a forward step that keeps what its
backward step needs; stacked layers feed each layer's outputs to the next, and backpropagation
runs from the top layer down, each layer's input gradients becoming the output gradients of the
layer below. Gradients are checked against central finite differences in ``tests/test_oracle.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import blas
from ..cells import Model, layer_suffix
from ..errors import GPUUnavailableError
from ..ops import log_softmax, time_major_labels
from ..params import check_dtype, validate_params
from .base import Backend, State

Params = dict[str, np.ndarray]
Grads = dict[str, np.ndarray]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) as 1 / (1 + e^-x) in the array's dtype; e^-x may overflow to inf for x < -88 (float32),
    which gives the right limit 0 without a warning."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


class _Layer:
    """One layer's parameters by d2l name (the suffix of deeper layers dropped)."""

    def __init__(self, params: Params, model: Model, layer: int) -> None:
        s = layer_suffix(layer)
        self.p = {k[: len(k) - len(s)] if s else k: params[k] for k in model.layer_param_names(layer)}
        self.suffix = s
        self.gates = model.cell.gates

    def input_part(self, xs: np.ndarray) -> dict[str, np.ndarray]:
        """X_t W_x{g} + b_{g} (+ b_h{g}, unless the cell keeps it inside the gate) for every step at once:
        the inputs do not depend on the recurrence, so one matmul per gate serves all T steps."""
        T, B, _ = xs.shape
        flat = xs.reshape(T * B, -1)
        out = {}
        for g in self.gates:
            a = flat @ self.p[f"W_x{g}"] + self.p[f"b_{g}"]
            if f"b_h{g}" in self.p and not (g == "n" and "W_hn" in self.p):  # reset-after's b_hn sits inside R ⊙ (.)
                a = a + self.p[f"b_h{g}"]
            out[g] = a.reshape(T, B, -1)
        return out


# --- one time step of each cell. forward(L, xp_t, state): xp_t is every gate's input part at step t;
# --- it returns the new state and what backward needs. backward(L, cache, d_state) returns, per gate,
# --- dL/d(input part) and (recurrent input, dL/d(recurrent part)), and dL/d(previous state). The
# --- weight gradients are formed by the caller, one matmul per parameter over all steps. -----------


def _rnn_forward(L: _Layer, xp: dict, state: tuple) -> tuple[tuple, tuple]:
    (h,) = state
    h_new = np.tanh(xp["h"] + h @ L.p["W_hh"])
    return (h_new,), (h, h_new)


def _rnn_backward(L: _Layer, cache: tuple, d_state: tuple) -> tuple[dict, dict, tuple]:
    h, h_new = cache
    da = d_state[0] * (1 - h_new**2)  # through tanh
    return {"h": da}, {"h": (h, da)}, (da @ L.p["W_hh"].T,)


def _gru_forward(L: _Layer, xp: dict, state: tuple) -> tuple[tuple, tuple]:
    (h,) = state
    z = sigmoid(xp["z"] + h @ L.p["W_hz"])
    r = sigmoid(xp["r"] + h @ L.p["W_hr"])
    hr = r * h  # d2l: the reset gate acts before the recurrent matmul
    c = np.tanh(xp["h"] + hr @ L.p["W_hh"])
    return (z * h + (1 - z) * c,), (h, z, r, hr, c)


def _gru_backward(L: _Layer, cache: tuple, d_state: tuple) -> tuple[dict, dict, tuple]:
    h, z, r, hr, c = cache
    (d_out,) = d_state
    dac = d_out * (1 - z) * (1 - c**2)
    d_hr = dac @ L.p["W_hh"].T
    daz = d_out * (h - c) * z * (1 - z)
    dar = d_hr * h * r * (1 - r)
    d_h = d_out * z + d_hr * r + daz @ L.p["W_hz"].T + dar @ L.p["W_hr"].T
    return {"z": daz, "r": dar, "h": dac}, {"z": (h, daz), "r": (h, dar), "h": (hr, dac)}, (d_h,)


def _gru_reset_after_forward(L: _Layer, xp: dict, state: tuple) -> tuple[tuple, tuple]:
    (h,) = state
    z = sigmoid(xp["z"] + h @ L.p["W_hz"])
    r = sigmoid(xp["r"] + h @ L.p["W_hr"])
    hn = h @ L.p["W_hn"] + L.p["b_hn"]  # cuDNN / torch: the reset gate acts after the recurrent matmul
    n = np.tanh(xp["n"] + r * hn)
    return (z * h + (1 - z) * n,), (h, z, r, hn, n)


def _gru_reset_after_backward(L: _Layer, cache: tuple, d_state: tuple) -> tuple[dict, dict, tuple]:
    h, z, r, hn, n = cache
    (d_out,) = d_state
    dan = d_out * (1 - z) * (1 - n**2)
    d_hn = dan * r
    daz = d_out * (h - n) * z * (1 - z)
    dar = dan * hn * r * (1 - r)
    d_h = d_out * z + d_hn @ L.p["W_hn"].T + daz @ L.p["W_hz"].T + dar @ L.p["W_hr"].T
    return {"z": daz, "r": dar, "n": dan}, {"z": (h, daz), "r": (h, dar), "n": (h, d_hn)}, (d_h,)


def _lstm_forward(L: _Layer, xp: dict, state: tuple) -> tuple[tuple, tuple]:
    h, c = state
    i, f, o = (sigmoid(xp[g] + h @ L.p[f"W_h{g}"]) for g in "ifo")
    g = np.tanh(xp["c"] + h @ L.p["W_hc"])  # the candidate memory, d2l's C̃
    c_new = f * c + i * g
    tc = np.tanh(c_new)
    return (o * tc, c_new), (h, c, i, f, o, g, tc)


def _lstm_backward(L: _Layer, cache: tuple, d_state: tuple) -> tuple[dict, dict, tuple]:
    h, c, i, f, o, g, tc = cache
    d_h_new, d_c_new = d_state
    d_c = d_c_new + d_h_new * o * (1 - tc**2)
    da = {"i": d_c * g * i * (1 - i), "f": d_c * c * f * (1 - f), "o": d_h_new * tc * o * (1 - o),
          "c": d_c * i * (1 - g**2)}
    d_h = sum(a @ L.p[f"W_h{gate}"].T for gate, a in da.items())
    return da, {gate: (h, a) for gate, a in da.items()}, (d_h, d_c * f)


STEPS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "rnn": (_rnn_forward, _rnn_backward),
    "gru": (_gru_forward, _gru_backward),
    "gru-reset-after": (_gru_reset_after_forward, _gru_reset_after_backward),
    "lstm": (_lstm_forward, _lstm_backward),
}


def _column_sums(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=0)`` for a bias gradient, accumulated in float64 (at least).

    NumPy's ``sum(axis=0)`` of a C-ordered (N, k) array adds the rows one after another (pairwise
    summation only runs along the contiguous axis), so in float32 its error grows with N: at batch
    4096 x 64 steps b_q's gradient was 4.3e-4 off its float64 value (the frameworks' ~1e-7), and correct
    backends "disagreed" with the oracle. A float64 accumulator keeps the reference the most accurate row
    (0.33 ms for (1120, 512) float32 against 0.10; a pairwise sum over a transposed copy took 1.9)."""
    return a.sum(axis=0, dtype=np.promote_types(a.dtype, np.float64))


_BLAS_CHECKED = False


def _warn_generic_blas() -> None:
    """Once per process: warn when NumPy's OpenBLAS runs generic kernels here (multirnn.blas)."""
    global _BLAS_CHECKED
    if not _BLAS_CHECKED:
        _BLAS_CHECKED = True
        if note := blas.generic_kernels_note():
            warnings.warn(note, RuntimeWarning, stacklevel=4)  # at get_backend's caller


class NumpyBackend(Backend):
    name = "numpy"
    framework = "numpy"

    # The oracle has one implementation: mode="fast" runs the same code.
    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        if device == "gpu":
            raise GPUUnavailableError("device='gpu' was requested, but the NumPy backend runs on the CPU only; use device='cpu'.")
        self._forward_step, self._backward_step = STEPS[self.model.cell.name]
        _warn_generic_blas()

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return None  # every cell, any depth, one or two biases

    def version(self) -> str:
        return np.__version__

    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        validate_params(params, self.model)
        return {k: np.array(params[k], copy=True) for k in self.model.param_names()}

    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        return {k: np.array(params[k], copy=True) for k in self.model.param_names()}

    def as_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> np.ndarray:
        X = np.asarray(X)
        out = np.zeros((*X.T.shape, vocab_size), dtype=check_dtype(dtype))  # (steps, batch, vocab)
        np.put_along_axis(out, X.T[..., None], 1, axis=-1)
        return out

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        return tuple(np.zeros((batch_size, num_hiddens), dtype=check_dtype(dtype)) for _ in self.model.state_names())

    def _run(self, params: Params, X: np.ndarray, state: State) -> tuple[list[np.ndarray], list[list[tuple]], np.ndarray, State]:
        """Forward pass keeping what backpropagation needs.

        Returns:
            ``(inputs, caches, top, final_state)``: each layer's inputs ``(T, B, in)`` (one-hot for the
            first), per layer the per-step caches, the top layer's outputs ``(T, B, H)`` and the final state.
        """
        m = self.model
        per_layer = len(m.cell.state)
        xs = self.one_hot(X, params["W_hq"].shape[1], params["W_hq"].dtype.name)  # (T, B, V)
        inputs, caches, final = [], [], []
        for layer in range(m.num_layers):
            L = _Layer(params, m, layer)
            xp = L.input_part(xs)
            s = tuple(state[layer * per_layer:(layer + 1) * per_layer])
            outs, layer_caches = [], []
            for t in range(xs.shape[0]):
                s, cache = self._forward_step(L, {g: a[t] for g, a in xp.items()}, s)
                outs.append(s[0])
                layer_caches.append(cache)
            inputs.append(xs)
            caches.append(layer_caches)
            final += list(s)
            xs = np.stack(outs)  # (T, B, H): the next layer's inputs
        return inputs, caches, xs, tuple(np.array(a, copy=True) for a in final)

    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        _, _, top, final = self._run(params, X, state)
        T, B, _ = top.shape
        return top.reshape(T * B, -1) @ params["W_hq"] + params["b_q"], final  # (T * B, V), rows time-major

    def loss_and_grads(self, params: Params, X: np.ndarray, Y: np.ndarray, state: State) -> tuple[np.ndarray, Params, State]:
        m = self.model
        inputs, caches, top, final = self._run(params, X, state)
        T, B, _ = top.shape
        N = T * B
        logits = top.reshape(N, -1) @ params["W_hq"] + params["b_q"]
        y = time_major_labels(Y)
        logp = log_softmax(logits)
        loss = -logp[np.arange(N), y].mean()

        # d(mean CE)/d(logits) = (softmax - one_hot(y)) / N
        d_logits = np.exp(logp)
        d_logits[np.arange(N), y] -= 1
        d_logits /= N
        grads: Grads = {"W_hq": top.reshape(N, -1).T @ d_logits, "b_q": _column_sums(d_logits)}
        d_out = (d_logits @ params["W_hq"].T).reshape(T, B, -1)  # dL/d(top layer's output at each step)
        for layer in reversed(range(m.num_layers)):
            L = _Layer(params, m, layer)
            d_in: dict[str, list[np.ndarray]] = {g: [] for g in m.cell.gates}  # dL/d(input part), per step
            rec: dict[str, list[tuple]] = {g: [] for g in m.cell.gates}  # (recurrent input, dL/d(recurrent part))
            d_state = tuple(np.zeros_like(state[0]) for _ in m.cell.state)  # through the next step's state
            for t in reversed(range(T)):
                d_state = (d_state[0] + d_out[t], *d_state[1:])
                da, dr, d_state = self._backward_step(L, caches[layer][t], d_state)
                for g in m.cell.gates:
                    d_in[g].append(da[g])
                    rec[g].append(dr[g])
            # The initial state is an input, not a parameter: its gradient is dropped (detached).
            # Weight gradients: each one matmul over all T steps (sum_t x_t^T da_t), not T small ones.
            x_flat = inputs[layer].reshape(N, -1)
            d_x = None
            for g in m.cell.gates:
                DA = np.concatenate(d_in[g][::-1])  # (T * B, H), time order
                H_in = np.concatenate([a for a, _ in rec[g][::-1]])
                DR = np.concatenate([d for _, d in rec[g][::-1]])
                s = L.suffix
                grads[f"W_x{g}{s}"] = x_flat.T @ DA
                grads[f"b_{g}{s}"] = _column_sums(DA)
                grads[f"W_h{g}{s}"] = H_in.T @ DR
                if f"b_h{g}" in L.p:
                    grads[f"b_h{g}{s}"] = _column_sums(DR)
                if layer > 0:  # the first layer's inputs are one-hot data: no gradient needed
                    part = DA @ L.p[f"W_x{g}"].T
                    d_x = part if d_x is None else d_x + part
            if layer > 0:
                d_out = d_x.reshape(T, B, -1)  # the layer below's output gradients
        dtype = params["W_hq"].dtype
        return np.asarray(loss, dtype=dtype), {k: grads[k].astype(dtype, copy=False) for k in m.param_names()}, final

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, np.ndarray]:
        # Each sum of squares in the grads' dtype, their total, the root and θ/‖g‖ in float64, the scale
        # rounded to the grads' dtype: how the oracle always clipped (NumPy 1.x promoted sum()'s int 0
        # start to float64), spelled out so that the clipping does not hang on NumPy's promotion rules.
        norm = np.sqrt(sum((np.sum(g * g) for g in grads.values()), np.float64(0)))
        if norm > max_grad_norm:  # zero gradients have norm 0 and are left alone: no 0/0
            scale = np.float64(max_grad_norm / norm)
            grads = {k: g * scale.astype(g.dtype) for k, g in grads.items()}
        # Reported in the grads' dtype, as every backend reports it (float32 for float32 params).
        return grads, norm.astype(grads["W_hq"].dtype)

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        for k in self.model.param_names():
            params[k] -= np.asarray(lr, dtype=params[k].dtype) * grads[k]
        return params
