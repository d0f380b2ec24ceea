"""Baseline: the d2l character RNN trained with PyTorch's own RNN layer.

The recurrence is ``torch.nn.RNN(V, H, nonlinearity="tanh")`` (time-major, the default
``batch_first=False``) and the output layer is ``torch.nn.Linear(H, V)``; the one-hot inputs, mean
cross-entropy over time-major logits, d2l's global-norm clipping and plain SGD are the same maths
as :mod:`multirnn.backends.numpy_backend`, in float32. A training step is eager PyTorch without a
Python loop over time: the layer's fused ``rnn_tanh`` operator runs the recurrence in C++,
``loss.backward()`` differentiates it, and clipping and SGD are three fused ``torch._foreach_*``
calls with the clipping scale kept on the device, so a step never waits on the host.

Layer layout (PyTorch 2.x): both layers compute ``x @ weight.T + bias`` with ``weight``
``(out, in)``, so d2l's weights go in transposed. The RNN carries cuDNN's two biases::

    W_xh.T -> rnn.weight_ih_l0 (H, V)    b_h -> rnn.bias_ih_l0 (H,)
    W_hh.T -> rnn.weight_hh_l0 (H, H)    0   -> rnn.bias_hh_l0 (H,), frozen (requires_grad=False)
    W_hq.T -> linear.weight    (V, H)    b_q -> linear.bias    (V,)

Used by ``benchmarks/bench_train.py`` (``--variants builtin``) through :func:`make_trainer`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The project's backend imports torch with its quirks handled (TORCH_CPP_LOG_LEVEL set before the
# import, so c10's C++ warnings such as "Could not initialize NNPACK" stay off stderr): reuse it.
from multirnn.backends.torch_backend import F, torch
from multirnn.errors import GPUUnavailableError
from multirnn.ops import time_major_labels
from multirnn.params import PARAM_NAMES

DTYPE = torch.float32


class Trainer:
    """Trains ``nn.RNN`` + ``nn.Linear`` with autograd and fused ``_foreach`` clipping and SGD.

    Args:
        params: d2l's parameter dict (``W_xh`` ``(V, H)``, ``W_hh``, ``b_h``, ``W_hq``, ``b_q``);
            copied (transposed, cast to float32) into the layers' parameters.
        lr: SGD learning rate.
        max_grad_norm: θ of d2l's gradient clipping.
        device: ``"cpu"`` or ``"gpu"`` (the first CUDA/ROCm device).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but torch sees no CUDA/ROCm GPU.
        ValueError: unknown ``device``, or the params' shapes do not fit the layers.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float, max_grad_norm: float, device: str = "cpu") -> None:
        self.framework_version = f"torch {torch.__version__}"
        self._device = _device(device)
        V, H = np.shape(params["W_xh"])
        self.vocab_size, self.num_hiddens = int(V), int(H)
        self._lr, self._theta = float(lr), float(max_grad_norm)

        self.rnn = torch.nn.RNN(self.vocab_size, self.num_hiddens, nonlinearity="tanh",
                                device=self._device, dtype=DTYPE)
        self.linear = torch.nn.Linear(self.num_hiddens, self.vocab_size, device=self._device, dtype=DTYPE)
        # name -> (torch parameter, whether d2l's array goes in transposed)
        self._map = {
            "W_xh": (self.rnn.weight_ih_l0, True),
            "W_hh": (self.rnn.weight_hh_l0, True),
            "b_h": (self.rnn.bias_ih_l0, False),
            "W_hq": (self.linear.weight, True),
            "b_q": (self.linear.bias, False),
        }
        # d2l has one bias; the layer adds two (b_ih + b_hh). b_h goes into bias_ih and bias_hh is
        # held at zero (adding 0 is exact). Both biases get the same gradient, so training both
        # would move the effective bias b_ih + b_hh twice as fast as d2l's: bias_hh is frozen.
        self._frozen = self.rnn.bias_hh_l0
        mapped = {id(p) for p, _ in self._map.values()} | {id(self._frozen)}
        unmapped = [name for name, p in (*self.rnn.named_parameters(), *self.linear.named_parameters())
                    if id(p) not in mapped]
        if unmapped:  # another torch version with another layout must not pass silently
            raise ValueError(f"torch parameters not covered by the d2l mapping: {unmapped}")

        with torch.no_grad():  # copying into leaves that require grad must not be recorded
            for name in PARAM_NAMES:
                param, transpose = self._map[name]
                value = np.asarray(params[name], dtype=np.float32)
                value = value.T if transpose else value
                if value.shape != tuple(param.shape):
                    raise ValueError(f"{name} has shape {np.shape(params[name])}, but the layer expects "
                                     f"{tuple(param.shape)}{' (transposed)' if transpose else ''}.")
                param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
            self._frozen.zero_()
        self._frozen.requires_grad_(False)
        if self._device.type == "cuda":
            # cuDNN wants all RNN weights in one contiguous buffer; copy_ kept them in place, but
            # re-flatten so the layer never warns about (and re-copies) non-contiguous weights.
            self.rnn.flatten_parameters()
        self._weights = [self._map[k][0] for k in PARAM_NAMES]  # the trained leaves, d2l's order
        # The one-hot of token i is row i of the identity: one gather builds all (T, B, V) inputs
        # in float32 directly (F.one_hot would make an int64 tensor first, then a cast).
        self._eye = torch.eye(self.vocab_size, dtype=DTYPE, device=self._device)

    # --- conversion -----------------------------------------------------------------------------
    def _tokens(self, X: np.ndarray) -> torch.Tensor:
        """``(B, T)`` ints -> int64 ``(T, B)`` on the device: time-major, the layer's layout and
        the logits' row order (d2l's ``Y.T``). int64: the index type ``index_select`` takes."""
        return torch.as_tensor(np.ascontiguousarray(np.asarray(X).T), dtype=torch.int64, device=self._device)

    def _one_hot(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 ``(T, B)`` -> float32 one-hot ``(T, B, V)``, the layer's input."""
        return self._eye.index_select(0, tokens.reshape(-1)).view(*tokens.shape, self.vocab_size)

    def _state(self, state: Any) -> torch.Tensor:
        """The layer's state ``h (1, B, H)`` (also takes NumPy ``(B, H)``), cut from any graph."""
        if not isinstance(state, torch.Tensor):
            h = np.asarray(state, dtype=np.float32)
            state = torch.from_numpy(np.ascontiguousarray(h.reshape(1, *h.shape[-2:])))
        return state.to(device=self._device, dtype=DTYPE).detach()

    def params_to_numpy(self) -> dict[str, np.ndarray]:
        """The current weights as d2l's dict ``W_xh W_hh b_h W_hq b_q`` (float32 copies)."""
        out = {}
        for name in PARAM_NAMES:
            param, transpose = self._map[name]
            value = param.detach().cpu().numpy()
            out[name] = np.ascontiguousarray(value.T if transpose else value)  # always a copy
        return out

    # --- the model ------------------------------------------------------------------------------
    def _loss(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and the layer's final state ``(1, B, H)``."""
        tokens = self._tokens(X)
        T, B = tokens.shape
        outputs, h_T = self.rnn(self._one_hot(tokens), self._state(state))  # (T, B, H), (1, B, H)
        # The output layer for all steps at once: one (T*B, H) x (H, V) GEMM, rows time-major.
        logits = self.linear(outputs.view(T * B, self.num_hiddens))
        y = torch.as_tensor(time_major_labels(Y), dtype=torch.int64, device=self._device)
        return F.cross_entropy(logits, y), h_T  # mean over all T * B tokens, like the oracle

    def state_to_numpy(self, state: torch.Tensor) -> np.ndarray:
        """The layer's ``(1, batch, hidden)`` state as NumPy ``(batch, hidden)``."""
        return state.detach().cpu().numpy()[0]

    def init_state(self, batch_size: int) -> torch.Tensor:
        """Zeros in the layer's own format: ``h_0`` ``(num_layers=1, batch_size, H)``."""
        return torch.zeros((1, batch_size, self.num_hiddens), dtype=DTYPE, device=self._device)

    def loss(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[float, torch.Tensor]:
        """Forward only.

        Args:
            X: int tokens ``(B, T)``.
            Y: int labels ``(B, T)``.
            state: the layer's state ``h (1, B, H)`` (or a NumPy ``(B, H)`` array).

        Returns:
            ``(mean cross-entropy as a Python float, new state h (1, B, H))``.
        """
        with torch.no_grad():
            loss, h = self._loss(X, Y, state)
        return float(loss), h

    def train_step(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on the minibatch ``X``, ``Y`` (int ``(B, T)``), starting from ``state``.

        Nothing here waits for the device (no ``.item()``, no ``if`` on a tensor): the caller's
        ``float(loss)`` is the synchronisation point.

        Returns:
            ``(0-d loss tensor, not synchronised; detached new state h (1, B, H))``.
        """
        for w in self._weights:
            w.grad = None  # backward then writes fresh gradients instead of accumulating
        loss, h = self._loss(X, Y, state)
        loss.backward()
        with torch.no_grad():  # in-place updates of leaves that require grad must not be recorded
            grads = [w.grad for w in self._weights]
            # d2l's global L2 norm over all five gradients (frozen bias_hh has none: it is no weight).
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            # d2l's exact rule (no epsilon, untouched at or below θ). torch.where, not `if`, keeps
            # it on the device; at norm 0 the unused θ/0 = inf is discarded, never NaN.
            scale = torch.where(norm > self._theta, self._theta / norm, 1.0)
            # Fold -lr into the clipping scale: one fused multiply and one fused add update all
            # five weights in place. (-lr * scale) * g instead of d2l's lr * (g * scale): equal
            # up to float32 rounding.
            torch._foreach_mul_(grads, scale * -self._lr)
            torch._foreach_add_(self._weights, grads)
        # detach(): the next step must not backpropagate into this step's graph.
        return loss.detach(), h.detach()


def _device(device: str) -> torch.device:
    if device == "gpu":
        if not torch.cuda.is_available():
            raise GPUUnavailableError(
                f"device='gpu' was requested, but torch {torch.__version__} sees no CUDA/ROCm GPU "
                "(torch.cuda.is_available() is False). Use device='cpu' or install a CUDA build of torch."
            )
        return torch.device("cuda")
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}.")
    return torch.device("cpu")


def make_trainer(params: dict[str, np.ndarray], lr: float, max_grad_norm: float, device: str = "cpu") -> Trainer:
    """A :class:`Trainer` starting from d2l's ``params`` (see :class:`Trainer` for the arguments)."""
    return Trainer(params, lr, max_grad_norm, device)
