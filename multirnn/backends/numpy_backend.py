"""The NumPy oracle: forward pass and hand-written backpropagation through time, for every cell.

No autodiff library is involved, so this backend is the independent reference every framework
backend is checked against. It is written for clarity, step by step as in d2l, and computes in
the params' own dtype (float32 or float64). Each cell has a forward step that keeps what its
backward step needs; stacked layers feed each layer's outputs to the next, and backpropagation
runs from the top layer down, each layer's input gradients becoming the output gradients of the
layer below. Gradients are checked against central finite differences in ``tests/test_oracle.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

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
    """One layer's parameters by d2l name (the suffix of deeper layers dropped) and the model's
    hidden-side biases; missing hidden-side biases read as zero."""

    def __init__(self, params: Params, model: Model, layer: int) -> None:
        s = layer_suffix(layer)
        self.p = {k[: len(k) - len(s)] if s else k: params[k] for k in model.layer_param_names(layer)}
        self.suffix = s

    def pre(self, g: str, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        """X W_x{g} + H W_h{g} + b_{g} (+ b_h{g} when the model has it)."""
        out = x @ self.p[f"W_x{g}"] + h @ self.p[f"W_h{g}"] + self.p[f"b_{g}"]
        return out + self.p[f"b_h{g}"] if f"b_h{g}" in self.p else out


# --- one time step of each cell: forward keeps a cache, backward turns output gradients into
# --- parameter, input and previous-state gradients -------------------------------------------------


def _rnn_forward(L: _Layer, x: np.ndarray, state: tuple) -> tuple[tuple, tuple]:
    (h,) = state
    h_new = np.tanh(L.pre("h", x, h))
    return (h_new,), (x, h, h_new)


def _rnn_backward(L: _Layer, cache: tuple, d_state: tuple, grads: Grads) -> tuple[np.ndarray, tuple]:
    x, h, h_new = cache
    (d_h_new,) = d_state
    da = d_h_new * (1 - h_new**2)  # through tanh
    _gate_grads(L, "h", x, h, da, grads)
    return da @ L.p["W_xh"].T, (da @ L.p["W_hh"].T,)


def _gru_forward(L: _Layer, x: np.ndarray, state: tuple) -> tuple[tuple, tuple]:
    (h,) = state
    z = sigmoid(L.pre("z", x, h))
    r = sigmoid(L.pre("r", x, h))
    hr = r * h  # d2l: the reset gate acts before the recurrent matmul
    cand = x @ L.p["W_xh"] + hr @ L.p["W_hh"] + L.p["b_h"]
    if "b_hh" in L.p:
        cand = cand + L.p["b_hh"]
    c = np.tanh(cand)
    return (z * h + (1 - z) * c,), (x, h, z, r, hr, c)


def _gru_backward(L: _Layer, cache: tuple, d_state: tuple, grads: Grads) -> tuple[np.ndarray, tuple]:
    x, h, z, r, hr, c = cache
    (d_out,) = d_state
    d_h = d_out * z
    dac = d_out * (1 - z) * (1 - c**2)
    grads["W_xh"] += x.T @ dac
    grads["W_hh"] += hr.T @ dac
    grads["b_h"] += dac.sum(axis=0)
    if "b_hh" in grads:
        grads["b_hh"] += dac.sum(axis=0)
    d_hr = dac @ L.p["W_hh"].T
    d_h = d_h + d_hr * r
    daz = d_out * (h - c) * z * (1 - z)
    dar = d_hr * h * r * (1 - r)
    _gate_grads(L, "z", x, h, daz, grads)
    _gate_grads(L, "r", x, h, dar, grads)
    d_h = d_h + daz @ L.p["W_hz"].T + dar @ L.p["W_hr"].T
    d_x = dac @ L.p["W_xh"].T + daz @ L.p["W_xz"].T + dar @ L.p["W_xr"].T
    return d_x, (d_h,)


def _gru_reset_after_forward(L: _Layer, x: np.ndarray, state: tuple) -> tuple[tuple, tuple]:
    (h,) = state
    z = sigmoid(L.pre("z", x, h))
    r = sigmoid(L.pre("r", x, h))
    hn = h @ L.p["W_hn"] + L.p["b_hn"]  # cuDNN / torch: the reset gate acts after the recurrent matmul
    n = np.tanh(x @ L.p["W_xn"] + L.p["b_n"] + r * hn)
    return (z * h + (1 - z) * n,), (x, h, z, r, hn, n)


def _gru_reset_after_backward(L: _Layer, cache: tuple, d_state: tuple, grads: Grads) -> tuple[np.ndarray, tuple]:
    x, h, z, r, hn, n = cache
    (d_out,) = d_state
    d_h = d_out * z
    dan = d_out * (1 - z) * (1 - n**2)
    grads["W_xn"] += x.T @ dan
    grads["b_n"] += dan.sum(axis=0)
    d_hn = dan * r
    grads["W_hn"] += h.T @ d_hn
    grads["b_hn"] += d_hn.sum(axis=0)
    daz = d_out * (h - n) * z * (1 - z)
    dar = dan * hn * r * (1 - r)
    _gate_grads(L, "z", x, h, daz, grads)
    _gate_grads(L, "r", x, h, dar, grads)
    d_h = d_h + d_hn @ L.p["W_hn"].T + daz @ L.p["W_hz"].T + dar @ L.p["W_hr"].T
    d_x = dan @ L.p["W_xn"].T + daz @ L.p["W_xz"].T + dar @ L.p["W_xr"].T
    return d_x, (d_h,)


def _lstm_forward(L: _Layer, x: np.ndarray, state: tuple) -> tuple[tuple, tuple]:
    h, c = state
    i, f, o = (sigmoid(L.pre(g, x, h)) for g in "ifo")
    g = np.tanh(L.pre("c", x, h))  # the candidate memory, d2l's C̃
    c_new = f * c + i * g
    tc = np.tanh(c_new)
    return (o * tc, c_new), (x, h, c, i, f, o, g, tc)


def _lstm_backward(L: _Layer, cache: tuple, d_state: tuple, grads: Grads) -> tuple[np.ndarray, tuple]:
    x, h, c, i, f, o, g, tc = cache
    d_h_new, d_c_new = d_state
    d_c = d_c_new + d_h_new * o * (1 - tc**2)
    da = {"i": d_c * g * i * (1 - i), "f": d_c * c * f * (1 - f), "o": d_h_new * tc * o * (1 - o),
          "c": d_c * i * (1 - g**2)}
    d_h = np.zeros_like(h)
    d_x = np.zeros_like(x)
    for gate, a in da.items():
        _gate_grads(L, gate, x, h, a, grads)
        d_h = d_h + a @ L.p[f"W_h{gate}"].T
        d_x = d_x + a @ L.p[f"W_x{gate}"].T
    return d_x, (d_h, d_c * f)


def _gate_grads(L: _Layer, g: str, x: np.ndarray, h: np.ndarray, da: np.ndarray, grads: Grads) -> None:
    """A gate's parameter gradients from dL/d(pre-activation) at one step (summed over the batch)."""
    grads[f"W_x{g}"] += x.T @ da
    grads[f"W_h{g}"] += h.T @ da
    grads[f"b_{g}"] += da.sum(axis=0)
    if f"b_h{g}" in grads:
        grads[f"b_h{g}"] += da.sum(axis=0)


STEPS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "rnn": (_rnn_forward, _rnn_backward),
    "gru": (_gru_forward, _gru_backward),
    "gru-reset-after": (_gru_reset_after_forward, _gru_reset_after_backward),
    "lstm": (_lstm_forward, _lstm_backward),
}


class NumpyBackend(Backend):
    name = "numpy"
    framework = "numpy"

    # The oracle has one implementation: mode="fast" runs the same code.
    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        if device == "gpu":
            raise GPUUnavailableError("device='gpu' was requested, but the NumPy backend runs on the CPU only; use device='cpu'.")
        self._forward_step, self._backward_step = STEPS[self.model.cell.name]

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

    def _run(self, params: Params, X: np.ndarray, state: State) -> tuple[np.ndarray, list[list[tuple]], np.ndarray, State]:
        """Forward pass keeping what backpropagation needs.

        Returns:
            ``(inputs, caches, top, final_state)``: one-hot inputs ``(T, B, V)``, per layer the
            per-step caches, the top layer's outputs ``(T, B, H)`` and the final state.
        """
        m = self.model
        per_layer = len(m.cell.state)
        xs = self.one_hot(X, params["W_hq"].shape[1], params["W_hq"].dtype.name)  # (T, B, V)
        inputs, caches, final = xs, [], []
        for layer in range(m.num_layers):
            L = _Layer(params, m, layer)
            s = tuple(state[layer * per_layer:(layer + 1) * per_layer])
            outs, layer_caches = [], []
            for x in xs:
                s, cache = self._forward_step(L, x, s)
                outs.append(s[0])
                layer_caches.append(cache)
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
        _, caches, top, final = self._run(params, X, state)
        T, B, _ = top.shape
        logits = top.reshape(T * B, -1) @ params["W_hq"] + params["b_q"]
        y = time_major_labels(Y)
        logp = log_softmax(logits)
        loss = -logp[np.arange(T * B), y].mean()

        # d(mean CE)/d(logits) = (softmax - one_hot(y)) / N
        d_logits = np.exp(logp)
        d_logits[np.arange(T * B), y] -= 1
        d_logits /= T * B
        grads: Grads = {k: np.zeros_like(v) for k, v in params.items()}
        grads["W_hq"] = top.reshape(T * B, -1).T @ d_logits
        grads["b_q"] = d_logits.sum(axis=0)
        d_out = (d_logits @ params["W_hq"].T).reshape(T, B, -1)  # dL/d(top layer's output at each step)
        for layer in reversed(range(m.num_layers)):
            L = _Layer(params, m, layer)
            layer_grads = {k: grads[k + L.suffix] for k in L.p}  # the same arrays, by the layer's short names
            d_inputs = []
            d_state = tuple(np.zeros_like(state[0]) for _ in m.cell.state)  # through the next step's state
            for t in reversed(range(T)):
                d_state = (d_state[0] + d_out[t], *d_state[1:])
                d_x, d_state = self._backward_step(L, caches[layer][t], d_state, layer_grads)
                d_inputs.append(d_x)
            # The initial state is an input, not a parameter: its gradient is dropped (detached).
            d_out = np.stack(d_inputs[::-1])  # the layer below's output gradients
        dtype = params["W_hq"].dtype
        return np.asarray(loss, dtype=dtype), {k: grads[k].astype(dtype, copy=False) for k in m.param_names()}, final

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, np.ndarray]:
        norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
        if norm > max_grad_norm:  # zero gradients have norm 0 and are left alone: no 0/0
            scale = np.asarray(max_grad_norm / norm, dtype=norm.dtype)
            grads = {k: g * scale for k, g in grads.items()}
        return grads, norm

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        for k in self.model.param_names():
            params[k] -= np.asarray(lr, dtype=params[k].dtype) * grads[k]
        return params
