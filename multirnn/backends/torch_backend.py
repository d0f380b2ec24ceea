"""PyTorch backend: d2l's RNN from scratch, eager (as d2l writes it) or fused (``mode="fast"``).

Eager mode is the readable translation: one-hot inputs, a Python loop of ``tanh`` cells, autograd
through ``loss.backward()``, d2l's clipping rule and in-place SGD. Fast mode keeps the same maths
but backpropagates by hand: the input layer is a row gather, the output layer and every weight
gradient are single matmuls over all time steps, and only the recurrence itself (forward and
backward) is a loop. Clipping and SGD are fused ``torch._foreach_*`` calls with the clipping
scale kept on the device, so a training step never waits on the host.
"""

from __future__ import annotations

import os

# c10's C++ logger prints warnings (e.g. "Could not initialize NNPACK") straight to stderr; keep
# them out of the user's terminal unless the user chose a level. Must be set before the import.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..errors import GPUUnavailableError  # noqa: E402
from ..ops import time_major_labels  # noqa: E402
from ..params import PARAM_NAMES, check_dtype, validate_params  # noqa: E402
from ..cells import Model
from .base import Backend, State  # noqa: E402

Params = dict[str, torch.Tensor]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _torch_dtype(dtype: str | np.dtype) -> torch.dtype:
    """A dtype name (or NumPy dtype) as a torch dtype; only float32 and float64 are accepted."""
    return _DTYPES[check_dtype(dtype)]


def _dtype_name(x: torch.Tensor) -> str:
    """A tensor's dtype as the NumPy-style name the contract uses (``"float32"``)."""
    return str(x.dtype).removeprefix("torch.")


class TorchBackend(Backend):
    """PyTorch version of the d2l RNN-from-scratch primitives.

    Args:
        device: ``"cpu"`` or ``"gpu"`` (the first CUDA/ROCm device).
        mode: ``"eager"`` (d2l-style, autograd) or ``"fast"`` (hand-written BPTT, fused updates).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but torch sees no CUDA/ROCm GPU.
    """

    name = "torch"
    framework = "torch"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        if device == "gpu":
            if not torch.cuda.is_available():
                raise GPUUnavailableError(
                    f"device='gpu' was requested, but torch {torch.__version__} sees no CUDA/ROCm GPU "
                    "(torch.cuda.is_available() is False). Use device='cpu' or install a CUDA build of torch."
                )
            self._device = torch.device("cuda")
        else:
            self._device = torch.device("cpu")

    # --- conversion -------------------------------------------------------------------------
    def version(self) -> str:
        return torch.__version__

    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        """Copy NumPy params to the device, keeping their dtype.

        In eager mode the tensors are autograd leaves (``requires_grad=True``), as in d2l; fast
        mode computes gradients by hand and keeps plain tensors.
        """
        validate_params(params)  # names, shapes, dtype: say so here, not later inside a matmul
        out = {}
        for k in PARAM_NAMES:
            array = np.asarray(params[k])
            # torch.tensor copies, so sgd_step never writes into the caller's arrays.
            out[k] = torch.tensor(array, device=self._device).requires_grad_(self.mode == "eager")
        return out

    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        return {k: self.as_numpy(params[k]).copy() for k in PARAM_NAMES}

    def as_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def _tensor(self, x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A NumPy array or tensor on this backend's device (no copy when it is already there)."""
        return torch.as_tensor(x, dtype=dtype, device=self._device)

    def _tokens(self, X: np.ndarray) -> torch.Tensor:
        """``X`` ``(batch, steps)`` int -> ``(steps, batch)`` int64 on the device, time-major.

        int64 because ``F.one_hot`` and ``gather`` accept no other index type.
        """
        return self._tensor(np.ascontiguousarray(np.asarray(X).T), torch.int64)

    def _state(self, state: State, like: torch.Tensor) -> torch.Tensor:
        """The hidden state as a tensor with ``like``'s dtype, cut from any earlier graph."""
        return self._tensor(state[0], like.dtype).detach()

    # --- the model --------------------------------------------------------------------------
    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> torch.Tensor:
        return F.one_hot(self._tokens(X), vocab_size).to(_torch_dtype(dtype))  # (steps, batch, vocab)

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        return (torch.zeros((batch_size, num_hiddens), dtype=_torch_dtype(dtype), device=self._device),)

    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[torch.Tensor, State]:
        # forward serves prediction and evaluation only: no graph is recorded.
        with torch.no_grad():
            if self.mode == "fast":
                hs, logits = self._fast_forward(params, self._tokens(X), self._state(state, params["W_hh"]))
                return logits, (hs[-1].clone(),)  # clone: hs[-1] is a view keeping all of hs alive
            inputs = self.one_hot(X, params["W_xh"].shape[0], _dtype_name(params["W_xh"]))
            return self._rnn(params, inputs, (self._state(state, params["W_hh"]),))

    def loss_and_grads(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[torch.Tensor, Params, State]:
        if self.mode == "fast":
            with torch.no_grad():
                loss, grads, h = self._fast_loss_and_grads(params, X, Y, state)
            return loss, grads, (h,)
        for p in params.values():
            # Fresh .grad tensors each call: backward() would otherwise accumulate into the last
            # call's gradients (d2l zeroes them), and grads handed out earlier must not change.
            p.grad = None
            if not p.requires_grad:  # e.g. params created by a fast-mode backend
                p.requires_grad_(True)
        W_xh = params["W_xh"]
        inputs = self.one_hot(X, W_xh.shape[0], _dtype_name(W_xh))  # (steps, batch, vocab)
        logits, (h,) = self._rnn(params, inputs, (self._state(state, params["W_hh"]),))
        y = self._tensor(time_major_labels(Y), torch.int64)  # (steps * batch,), the logits' row order
        loss = F.cross_entropy(logits, y)  # mean over all tokens, like the oracle
        loss.backward()
        grads = {k: params[k].grad for k in PARAM_NAMES}
        return loss.detach(), grads, (h.detach(),)

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, torch.Tensor]:
        # No autograd here: the grads may be leaves that require grad, which forbids in-place ops.
        with torch.no_grad():
            if self.mode == "fast":
                return grads, self._fast_clip(list(grads.values()), max_grad_norm)
            # One global norm over all tensors, as in d2l. It stays a device scalar: d2l's
            # float(norm) / .numpy() would wait on the device at every step.
            norm = torch.sqrt(sum(torch.sum(g * g) for g in grads.values()))
            # d2l's exact rule (no epsilon, untouched below θ). torch.where, not `if`, keeps it on
            # the device; at norm 0 the discarded branch is θ/0 = inf, never NaN in the result.
            scale = torch.where(norm > max_grad_norm, max_grad_norm / norm, 1.0)
            for g in grads.values():
                g.mul_(scale)
            return grads, norm

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        with torch.no_grad():  # an in-place update of a leaf that requires grad must not be recorded
            if self.mode == "fast":
                torch._foreach_add_([params[k] for k in PARAM_NAMES], [grads[k] for k in PARAM_NAMES], alpha=-lr)
            else:
                for k in PARAM_NAMES:
                    params[k].sub_(grads[k], alpha=lr)  # p -= lr * g, in one pass
        return params

    def train_step(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, torch.Tensor, torch.Tensor, State]:
        if self.mode != "fast":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        with torch.no_grad():
            loss, grads, h = self._fast_loss_and_grads(params, X, Y, state)
            g = [grads[k] for k in PARAM_NAMES]
            norm, scale = self._clip_scale(g, max_grad_norm)
            # Fold -lr into the clipping scale: one fused multiply and one fused add update all
            # five tensors, with the scale read on the device (no host sync).
            torch._foreach_mul_(g, scale * -lr)
            torch._foreach_add_([params[k] for k in PARAM_NAMES], g)
        return params, loss, norm, (h,)

    # --- eager: d2l's rnn() -----------------------------------------------------------------
    @staticmethod
    def _rnn(params: Params, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """d2l's ``rnn``: ``inputs`` ``(steps, batch, vocab)`` one-hot -> logits ``(steps * batch, vocab)``."""
        W_xh, W_hh, b_h, W_hq, b_q = (params[k] for k in PARAM_NAMES)
        (H,) = state
        outputs = []
        for X in inputs:  # X: (batch, vocab), one time step
            H = torch.tanh(torch.mm(X, W_xh) + torch.mm(H, W_hh) + b_h)
            outputs.append(torch.mm(H, W_hq) + b_q)
        return torch.cat(outputs, dim=0), (H,)

    # --- fast: hand-written BPTT --------------------------------------------------------------
    @staticmethod
    def _fast_forward(params: Params, tokens: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence with the input layer as a gather; call under ``torch.no_grad()``.

        Args:
            tokens: ``(steps, batch)`` int64.
            h0: ``(batch, hiddens)`` initial state.

        Returns:
            ``(hs, logits)``: hidden states ``(steps + 1, batch, hiddens)`` with ``hs[0] = h0``,
            and logits ``(steps * batch, vocab)``, rows time-major.
        """
        W_xh, W_hh, b_h, W_hq, b_q = (params[k] for k in PARAM_NAMES)
        T, B = tokens.shape
        hs = torch.empty((T + 1, B, W_hh.shape[0]), dtype=W_hh.dtype, device=W_hh.device)
        hs[0] = h0
        # one_hot(x) @ W_xh is row x of W_xh (exact, even in float32), so all steps' input terms
        # are one gather; they are written where the hidden states go, and each step adds
        # H_{t-1} W_hh on top in place, then applies tanh in place: two kernels per step.
        torch.index_select(W_xh, 0, tokens.reshape(-1), out=hs[1:].view(T * B, -1)).add_(b_h)  # (T*B, H)
        for t in range(T):
            hs[t + 1].addmm_(hs[t], W_hh).tanh_()
        # The output layer for all steps at once: one (T*B, H) x (H, V) matmul.
        logits = torch.addmm(b_q, hs[1:].reshape(T * B, -1), W_hq)  # (T * B, V)
        return hs, logits

    def _fast_loss_and_grads(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[torch.Tensor, Params, torch.Tensor]:
        """Loss, gradients and the new state by hand-written BPTT; call under ``torch.no_grad()``.

        Same maths as the oracle; the weight gradients are each one matmul over all time steps
        instead of a sum of per-step products, so only the recurrence runs step by step.
        """
        W_hh, W_hq = params["W_hh"], params["W_hq"]
        tokens = self._tokens(X)  # (T, B)
        T, B = tokens.shape
        N = T * B
        hs, logits = self._fast_forward(params, tokens, self._state(state, W_hh))
        y = self._tensor(time_major_labels(Y), torch.int64)[:, None]  # (N, 1)

        logp = torch.log_softmax(logits, dim=1)  # (N, V)
        loss = -logp.gather(1, y).mean()
        # d(mean CE)/d(logits) = (softmax - one_hot(y)) / N, built in place in logp's buffer.
        d_logits = logp.exp_()
        d_logits.scatter_add_(1, y, torch.full_like(y, -1, dtype=d_logits.dtype))
        d_logits.div_(N)

        hidden = hs[1:].reshape(N, -1)  # (N, H), every step's output state
        d_h = torch.mm(d_logits, W_hq.T).view(T, B, -1)  # dL/dH_t through the output layer
        # tanh' = 1 - H_t^2 for all steps at once, in one fused pass (addcmul broadcasts the 1).
        d_tanh = torch.addcmul(hidden.new_ones(()), hidden, hidden, value=-1).view(T, B, -1)
        # Backward recurrence, in place in d_h, which becomes dL/d(pre-activation) per step:
        # d_pre_t = (d_h_t + d_pre_{t+1} W_hh^T) * (1 - H_t^2).
        W_hh_T = W_hh.T  # a view: BLAS reads it transposed, no copy
        d_h[T - 1].mul_(d_tanh[T - 1])
        for t in range(T - 2, -1, -1):
            d_h[t].addmm_(d_h[t + 1], W_hh_T).mul_(d_tanh[t])
        d_pre = d_h.view(N, -1)  # (N, H)

        grads = {
            # one_hot(x)^T @ d_pre is a scatter-add of d_pre's rows into W_xh's shape.
            "W_xh": torch.zeros_like(params["W_xh"]).index_add_(0, tokens.reshape(-1), d_pre),
            "W_hh": torch.mm(hs[:-1].reshape(N, -1).T, d_pre),  # sum_t H_{t-1}^T d_pre_t in one matmul
            "b_h": d_pre.sum(dim=0),
            "W_hq": torch.mm(hidden.T, d_logits),
            "b_q": d_logits.sum(dim=0),
        }
        return loss, grads, hs[-1].clone()  # clone: a view of hs[-1] would keep all of hs alive

    @staticmethod
    def _clip_scale(grads: list[torch.Tensor], max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The global L2 norm and d2l's clipping factor, both device scalars.

        Returns:
            ``(norm, scale)`` with ``scale = θ/norm`` if ``norm > θ`` else ``1``.
        """
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        # torch.where keeps the branch on the device; at norm 0 the unused θ/0 = inf is discarded.
        return norm, torch.where(norm > max_grad_norm, max_grad_norm / norm, 1.0)

    def _fast_clip(self, grads: list[torch.Tensor], max_grad_norm: float) -> torch.Tensor:
        norm, scale = self._clip_scale(grads, max_grad_norm)
        torch._foreach_mul_(grads, scale)
        return norm
