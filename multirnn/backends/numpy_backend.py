"""The NumPy oracle: forward pass and hand-written backpropagation through time.

No autodiff library is involved, so this backend is the independent reference every framework
backend is checked against. It is written for clarity, step by step as in d2l, and computes in
the params' own dtype (float32 or float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import GPUUnavailableError
from ..ops import log_softmax, time_major_labels
from ..params import PARAM_NAMES, check_dtype, validate_params
from .base import Backend, State

Params = dict[str, np.ndarray]


class NumpyBackend(Backend):
    name = "numpy"
    framework = "numpy"

    # The oracle has one implementation: mode="fast" runs the same code.
    def __init__(self, device: str = "cpu", mode: str = "eager") -> None:
        super().__init__(device, mode)
        if device == "gpu":
            raise GPUUnavailableError("device='gpu' was requested, but the NumPy backend runs on the CPU only; use device='cpu'.")

    def version(self) -> str:
        return np.__version__

    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        validate_params(params)
        return {k: np.array(params[k], copy=True) for k in PARAM_NAMES}

    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        return {k: np.array(params[k], copy=True) for k in PARAM_NAMES}

    def as_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> np.ndarray:
        X = np.asarray(X)
        out = np.zeros((*X.T.shape, vocab_size), dtype=check_dtype(dtype))  # (steps, batch, vocab)
        np.put_along_axis(out, X.T[..., None], 1, axis=-1)
        return out

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        return (np.zeros((batch_size, num_hiddens), dtype=check_dtype(dtype)),)

    def _run(self, params: Params, X: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward pass keeping what backpropagation needs.

        Returns:
            ``(inputs, hs, logits)``: one-hot inputs ``(T, B, V)``, hidden states ``(T + 1, B, H)``
            with ``hs[0]`` the initial state, logits ``(T * B, V)``.
        """
        W_xh, W_hh, b_h, W_hq, b_q = (params[k] for k in PARAM_NAMES)
        inputs = self.one_hot(X, W_xh.shape[0], W_xh.dtype.name)  # (T, B, V)
        T, B = inputs.shape[:2]
        hs = np.empty((T + 1, B, W_hh.shape[0]), dtype=W_hh.dtype)
        hs[0] = state[0]
        for t in range(T):
            hs[t + 1] = np.tanh(inputs[t] @ W_xh + hs[t] @ W_hh + b_h)
        logits = hs[1:].reshape(T * B, -1) @ W_hq + b_q  # (T * B, V), rows time-major
        return inputs, hs, logits

    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        _, hs, logits = self._run(params, X, state)
        return logits, (hs[-1].copy(),)

    def loss_and_grads(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[np.ndarray, Params, State]:
        W_hh, W_hq = params["W_hh"], params["W_hq"]
        inputs, hs, logits = self._run(params, X, state)
        T, B, _ = inputs.shape
        y = time_major_labels(Y)
        logp = log_softmax(logits)
        loss = -logp[np.arange(T * B), y].mean()

        # d(mean CE)/d(logits) = (softmax - one_hot(y)) / N
        d_logits = np.exp(logp)
        d_logits[np.arange(T * B), y] -= 1
        d_logits /= T * B
        hidden = hs[1:].reshape(T * B, -1)
        grads = {
            "W_hq": hidden.T @ d_logits,
            "b_q": d_logits.sum(axis=0),
            "W_xh": np.zeros_like(params["W_xh"]),
            "W_hh": np.zeros_like(W_hh),
            "b_h": np.zeros_like(params["b_h"]),
        }
        d_hidden = (d_logits @ W_hq.T).reshape(T, B, -1)  # dL/dH_t through the output layer
        d_next = np.zeros_like(hs[0])  # dL/dH_t through H_{t+1}
        for t in reversed(range(T)):
            d_pre = (d_hidden[t] + d_next) * (1 - hs[t + 1] ** 2)  # through tanh
            grads["W_xh"] += inputs[t].T @ d_pre
            grads["W_hh"] += hs[t].T @ d_pre
            grads["b_h"] += d_pre.sum(axis=0)
            d_next = d_pre @ W_hh.T
        # The initial state is an input, not a parameter: its gradient is dropped (detached).
        dtype = params["W_hh"].dtype
        return np.asarray(loss, dtype=dtype), {k: grads[k].astype(dtype, copy=False) for k in PARAM_NAMES}, (hs[-1].copy(),)

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, np.ndarray]:
        norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
        if norm > max_grad_norm:  # zero gradients have norm 0 and are left alone: no 0/0
            scale = np.asarray(max_grad_norm / norm, dtype=norm.dtype)
            grads = {k: g * scale for k, g in grads.items()}
        return grads, norm

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        for k in PARAM_NAMES:
            params[k] -= np.asarray(lr, dtype=params[k].dtype) * grads[k]
        return params
