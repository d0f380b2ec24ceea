"""PyTorch backends: d2l's RNNs from scratch (``TorchBackend``) and on torch's own layers (``TorchLayersBackend``).

``TorchBackend`` (impl ``"scratch"``) computes every model of :mod:`multirnn.cells` (tanh RNN, d2l's
GRU, the reset-after GRU, LSTM; stacked; with or without the second bias). Eager mode is the
readable translation: one-hot inputs, a Python loop of d2l's cell steps, autograd through
``loss.backward()``, d2l's clipping rule and in-place SGD. Fast mode keeps the same maths but
backpropagates by hand: the first layer's input product is a row gather, deeper layers' input
products, the output layer and every weight gradient are single matmuls over all time steps, and
only the recurrence itself (forward and backward) is a loop. Clipping and SGD are fused
``torch._foreach_*`` calls with the clipping scale kept on the device, so a training step never
waits on the host. d2l's one-layer tanh RNN keeps its own tuned fast path.

``TorchLayersBackend`` (impl ``"layers"``) runs ``torch.nn.RNN(nonlinearity="tanh")`` /
``nn.GRU`` / ``nn.LSTM`` (stacked with their own ``num_layers``) and ``nn.Linear`` as the output
layer, with d2l's weights mapped onto the layers' parameters (see :func:`_layer_layout`).
"""

from __future__ import annotations

import os

# c10's C++ logger prints warnings (e.g. "Could not initialize NNPACK") straight to stderr; keep
# them out of the user's terminal unless the user chose a level. Must be set before the import.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from dataclasses import dataclass  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..cells import RNN, Model, layer_suffix  # noqa: E402
from ..errors import GPUUnavailableError  # noqa: E402
from ..ops import time_major_labels  # noqa: E402
from ..params import check_dtype, validate_params  # noqa: E402
from . import layer_limits  # noqa: E402
from .base import Backend, State  # noqa: E402

Params = dict[str, torch.Tensor]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _torch_dtype(dtype: str | np.dtype) -> torch.dtype:
    """A dtype name (or NumPy dtype) as a torch dtype; only float32 and float64 are accepted."""
    return _DTYPES[check_dtype(dtype)]


def _dtype_name(x: torch.Tensor) -> str:
    """A tensor's dtype as the NumPy-style name the contract uses (``"float32"``)."""
    return str(x.dtype).removeprefix("torch.")


def _cross_entropy_and_grad(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``logits`` ``(N, V)`` against ``y`` ``(N, 1)`` and its gradient
    ``(softmax - one_hot(y)) / N``; call under ``torch.no_grad()``."""
    N = logits.shape[0]
    logp = torch.log_softmax(logits, dim=1)  # (N, V)
    loss = -logp.gather(1, y).mean()
    # d(mean CE)/d(logits), built in place in logp's buffer.
    d_logits = logp.exp_()
    d_logits.scatter_add_(1, y, torch.full_like(y, -1, dtype=d_logits.dtype))
    return loss, d_logits.div_(N)


def _clip_scale(grads: list[torch.Tensor], max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The global L2 norm and d2l's clipping factor, both device scalars.

    Returns:
        ``(norm, scale)`` with ``scale = θ/norm`` if ``norm > θ`` else ``1``.
    """
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    # torch.where keeps the branch on the device; at norm 0 the unused θ/0 = inf is discarded.
    return norm, torch.where(norm > max_grad_norm, max_grad_norm / norm, 1.0)


def _d2l_clip_(grads: list[torch.Tensor], max_grad_norm: float) -> torch.Tensor:
    """d2l's ``grad_clipping`` on a list of gradients, in place; call under ``torch.no_grad()``.

    Not ``torch.nn.utils.clip_grad_norm_``: that scales by ``θ / (‖g‖ + 1e-6)`` (and so also
    when ‖g‖ is just below θ), which is not d2l's rule.
    """
    # One global norm over all tensors, as in d2l. It stays a device scalar: d2l's float(norm) /
    # .numpy() would wait on the device at every step.
    norm = torch.sqrt(sum(torch.sum(g * g) for g in grads))
    # d2l's exact rule (no epsilon, untouched below θ). torch.where, not `if`, keeps it on the
    # device; at norm 0 the discarded branch is θ/0 = inf, never NaN in the result.
    scale = torch.where(norm > max_grad_norm, max_grad_norm / norm, 1.0)
    for g in grads:
        g.mul_(scale)
    return norm


class _TorchCommon(Backend):
    """What both torch implementations share: the device, conversions, inputs and states.

    Args:
        device: ``"cpu"`` or ``"gpu"`` (the first CUDA/ROCm device).
        mode: ``"eager"`` or ``"fast"``.
        model: the cell and layers to compute.

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

    def version(self) -> str:
        return torch.__version__

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

    def _labels(self, Y: np.ndarray) -> torch.Tensor:
        """``Y`` ``(batch, steps)`` -> int64 ``(steps * batch,)``, the logits' row order (d2l's ``Y.T``)."""
        return self._tensor(time_major_labels(Y), torch.int64)

    def _states(self, state: State, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every state array as a tensor with ``like``'s dtype, cut from any earlier graph."""
        return tuple(self._tensor(s, like.dtype).detach() for s in state)

    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> torch.Tensor:
        return F.one_hot(self._tokens(X), vocab_size).to(_torch_dtype(dtype))  # (steps, batch, vocab)

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        return tuple(torch.zeros((batch_size, num_hiddens), dtype=_torch_dtype(dtype), device=self._device)
                     for _ in self.model.state_names())


# --- scratch, eager: d2l's cell steps -----------------------------------------------------------------


def _gate(p: Params, g: str, X: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """d2l's pre-activation ``X W_x{g} + H W_h{g} + b_{g}``, plus ``b_h{g}`` when the model has it."""
    out = torch.mm(X, p[f"W_x{g}"]) + torch.mm(H, p[f"W_h{g}"]) + p[f"b_{g}"]
    return out + p[f"b_h{g}"] if f"b_h{g}" in p else out


def _rnn_step(p: Params, X: torch.Tensor, state: tuple) -> tuple:
    (H,) = state
    return (torch.tanh(_gate(p, "h", X, H)),)


def _gru_step(p: Params, X: torch.Tensor, state: tuple) -> tuple:
    (H,) = state
    Z = torch.sigmoid(_gate(p, "z", X, H))
    R = torch.sigmoid(_gate(p, "r", X, H))
    H_tilde = torch.tanh(_gate(p, "h", X, R * H))  # d2l: the reset gate acts before the recurrent matmul
    return (Z * H + (1 - Z) * H_tilde,)


def _gru_reset_after_step(p: Params, X: torch.Tensor, state: tuple) -> tuple:
    (H,) = state
    Z = torch.sigmoid(_gate(p, "z", X, H))
    R = torch.sigmoid(_gate(p, "r", X, H))
    # cuDNN / torch.nn.GRU: the reset gate acts after the recurrent matmul, on H W_hn + b_hn.
    N = torch.tanh(torch.mm(X, p["W_xn"]) + p["b_n"] + R * (torch.mm(H, p["W_hn"]) + p["b_hn"]))
    return (Z * H + (1 - Z) * N,)


def _lstm_step(p: Params, X: torch.Tensor, state: tuple) -> tuple:
    H, C = state
    I = torch.sigmoid(_gate(p, "i", X, H))  # d2l's names
    F_ = torch.sigmoid(_gate(p, "f", X, H))
    O = torch.sigmoid(_gate(p, "o", X, H))
    C_tilde = torch.tanh(_gate(p, "c", X, H))
    C = F_ * C + I * C_tilde
    return (O * torch.tanh(C), C)


_EAGER_STEPS = {"rnn": _rnn_step, "gru": _gru_step, "gru-reset-after": _gru_reset_after_step, "lstm": _lstm_step}


def _layer_params(params: Params, model: Model, layer: int) -> Params:
    """One layer's parameters by d2l's short names (``W_xh``, not ``W_xh_l1``)."""
    s = layer_suffix(layer)
    return {k[: len(k) - len(s)] if s else k: params[k] for k in model.layer_param_names(layer)}


# --- scratch, fast: hand-written BPTT of one layer over all steps ---------------------------------------


class _Packed(NamedTuple):
    """One layer's weights with the gates side by side, in d2l's gate order (fast mode)."""

    Wx: torch.Tensor  # (inputs, G*H)
    Wh: torch.Tensor  # (H, G*H)
    bx: torch.Tensor  # (G*H,): every bias that just adds to a pre-activation (b_g, and b_hg where it has one)
    bh: torch.Tensor | None  # reset-after GRU only: (G*H,) = [0, 0, b_hn], added to H W_h inside R ⊙ (...)


def _dsigmoid(s: torch.Tensor) -> torch.Tensor:
    """σ' from σ's output: s (1 - s)."""
    return s * (1 - s)


def _one_minus_sq(x: torch.Tensor) -> torch.Tensor:
    """1 - x², tanh' from tanh's output, in one fused pass (addcmul broadcasts the 1)."""
    return torch.addcmul(x.new_ones(()), x, x, value=-1)


# Each cell's forward takes the input projections xp (T, B, G*H) (X W_x + biases, overwritten with
# the gates' activations), the packed weights and the layer's initial state; it returns the
# hidden states hs (T + 1, B, H) with hs[0] = H_0, the final state and what its backward needs.
# Each backward turns dH (T, B, H), dL/d(the layer's outputs) (overwritten), into d_xp (T*B, G*H)
# (dL/d(input projections): the input weights' and biases' gradients and the layer below's
# output gradients follow from it in single matmuls), dWh (H, G*H), and the hidden-side biases'
# gradient (G*H,) where it differs from d_xp's (reset-after GRU), else None. The derivative
# factors that need no recurrence are computed for all steps at once before the backward loop, so
# the loop is a matmul and a few elementwise kernels per step.


def _rnn_forward(xp: torch.Tensor, P: _Packed, state: tuple) -> tuple[torch.Tensor, tuple, Any]:
    T, B, H = xp.shape
    hs = xp.new_empty((T + 1, B, H))
    hs[0] = state[0]
    h, x = hs.unbind(0), xp.unbind(0)
    for t in range(T):
        torch.addmm(x[t], h[t], P.Wh, out=h[t + 1]).tanh_()
    return hs, (hs[-1].clone(),), None  # clone: a view of hs[-1] would keep all of hs alive


def _rnn_backward(hs: torch.Tensor, cache: Any, dH: torch.Tensor, P: _Packed) -> tuple:
    T = dH.shape[0]
    d_tanh = _one_minus_sq(hs[1:])
    # In place in dH, which becomes dL/d(pre-activation): d_pre_t = (dH_t + d_pre_{t+1} W_hh^T) ⊙ (1 - H_t²).
    WhT = P.Wh.T.contiguous()  # not the .T view: see TorchBackend._fast_loss_and_grads
    d, k = dH.unbind(0), d_tanh.unbind(0)
    d[T - 1].mul_(k[T - 1])
    for t in range(T - 2, -1, -1):
        d[t].addmm_(d[t + 1], WhT).mul_(k[t])
    d = dH.view(-1, dH.shape[2])
    return d, torch.mm(hs[:-1].reshape(d.shape[0], -1).T, d), None


def _lstm_forward(xp: torch.Tensor, P: _Packed, state: tuple) -> tuple[torch.Tensor, tuple, Any]:
    T, B, G = xp.shape
    H = G // 4
    hs, cs, tcs = xp.new_empty((T + 1, B, H)), xp.new_empty((T + 1, B, H)), xp.new_empty((T, B, H))
    hs[0], cs[0] = state
    for t in range(T):
        a = xp[t].addmm_(hs[t], P.Wh)  # (B, 4H) pre-activations, d2l's order i, f, o, c
        a[:, : 3 * H].sigmoid_()
        a[:, 3 * H:].tanh_()
        torch.mul(a[:, H: 2 * H], cs[t], out=cs[t + 1]).addcmul_(a[:, :H], a[:, 3 * H:])  # C = F C + I C̃
        torch.mul(a[:, 2 * H: 3 * H], torch.tanh(cs[t + 1], out=tcs[t]), out=hs[t + 1])  # H = O tanh(C)
    return hs, (hs[-1].clone(), cs[-1].clone()), (xp, cs, tcs)


def _lstm_backward(hs: torch.Tensor, cache: Any, dH: torch.Tensor, P: _Packed) -> tuple:
    acts, cs, tcs = cache
    T, B, G = acts.shape
    H = G // 4
    i, f, o, g = acts.view(T, B, 4, H).unbind(2)
    dc_from_h = o * _one_minus_sq(tcs)  # dL/dC_t = dL/dC_{t+1} F_{t+1} + dL/dH_t O_t (1 - tanh²(C_t))
    # dL/d(pre-activation) per unit of dL/dC_t (i, f, c) and of dL/dH_t (o), in d2l's gate order.
    K = torch.stack([g * _dsigmoid(i), cs[:-1] * _dsigmoid(f), tcs * _dsigmoid(o), i * _one_minus_sq(g)], dim=2)
    d = torch.empty_like(acts)
    d4 = d.view(T, B, 4, H)
    WhT = P.Wh.T
    dc = torch.zeros_like(hs[0])  # the final state is detached: no gradient flows in from later
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            dH[t].addmm_(d[t + 1], WhT)
        dc = torch.addcmul(dc, dH[t], dc_from_h[t])
        torch.mul(dc.unsqueeze(1), K[t], out=d4[t])  # i, f, c (o is overwritten next)
        torch.mul(dH[t], K[t, :, 2], out=d4[t, :, 2])
        dc.mul_(f[t])  # -> dL/dC_{t-1} through C_t = F C_{t-1} + ...
    d = d.view(T * B, G)
    return d, torch.mm(hs[:-1].reshape(T * B, H).T, d), None


def _gru_forward(xp: torch.Tensor, P: _Packed, state: tuple) -> tuple[torch.Tensor, tuple, Any]:
    T, B, G = xp.shape
    H = G // 3
    hs, hrs = xp.new_empty((T + 1, B, H)), xp.new_empty((T, B, H))
    hs[0] = state[0]
    W_zr, W_hh = P.Wh[:, : 2 * H], P.Wh[:, 2 * H:]  # views (BLAS reads them with their row stride)
    for t in range(T):
        a = xp[t]  # d2l's order z, r, h
        a[:, : 2 * H].addmm_(hs[t], W_zr).sigmoid_()
        torch.mul(a[:, H: 2 * H], hs[t], out=hrs[t])  # R ⊙ H, before the recurrent matmul (d2l)
        cand = a[:, 2 * H:].addmm_(hrs[t], W_hh).tanh_()
        torch.lerp(cand, hs[t], a[:, :H], out=hs[t + 1])  # Z H + (1 - Z) H̃ = H̃ + Z (H - H̃)
    return hs, (hs[-1].clone(),), (xp, hrs)


def _gru_backward(hs: torch.Tensor, cache: Any, dH: torch.Tensor, P: _Packed) -> tuple:
    acts, hrs = cache
    T, B, G = acts.shape
    H = G // 3
    z, r, c = acts.view(T, B, 3, H).unbind(2)
    h = hs[:-1]
    K_zc = torch.stack([(h - c) * _dsigmoid(z), (1 - z) * _one_minus_sq(c)], dim=2)  # per unit of dL/dH_t
    K_r = h * _dsigmoid(r)  # per unit of dL/d(R ⊙ H)
    d = torch.empty_like(acts)
    d4 = d.view(T, B, 3, H)
    d_hr = torch.empty_like(hrs)  # dL/d(R_t ⊙ H_{t-1})
    W_zr_T, W_hh_T = P.Wh[:, : 2 * H].T, P.Wh[:, 2 * H:].T
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            dH[t].addmm_(d[t + 1, :, : 2 * H], W_zr_T).addcmul_(dH[t + 1], z[t + 1]).addcmul_(d_hr[t + 1], r[t + 1])
        torch.mul(dH[t].unsqueeze(1), K_zc[t], out=d4[t, :, ::2])  # z and the candidate
        torch.mm(d[t, :, 2 * H:], W_hh_T, out=d_hr[t])
        torch.mul(d_hr[t], K_r[t], out=d4[t, :, 1])
    d = d.view(T * B, G)
    dWh = P.Wh.new_empty(P.Wh.shape)
    torch.mm(h.reshape(T * B, H).T, d[:, : 2 * H], out=dWh[:, : 2 * H])
    torch.mm(hrs.view(T * B, H).T, d[:, 2 * H:], out=dWh[:, 2 * H:])
    return d, dWh, None


def _gru_reset_after_forward(xp: torch.Tensor, P: _Packed, state: tuple) -> tuple[torch.Tensor, tuple, Any]:
    T, B, G = xp.shape
    H = G // 3
    hs, hh = xp.new_empty((T + 1, B, H)), xp.new_empty((T, B, G))
    hs[0] = state[0]
    for t in range(T):
        a = xp[t]  # z, r, n
        torch.addmm(P.bh, hs[t], P.Wh, out=hh[t])  # H W_h + [0, 0, b_hn]
        a[:, : 2 * H].add_(hh[t, :, : 2 * H]).sigmoid_()
        n = a[:, 2 * H:].addcmul_(a[:, H: 2 * H], hh[t, :, 2 * H:]).tanh_()  # the reset gate after the matmul
        torch.lerp(n, hs[t], a[:, :H], out=hs[t + 1])
    return hs, (hs[-1].clone(),), (xp, hh)


def _gru_reset_after_backward(hs: torch.Tensor, cache: Any, dH: torch.Tensor, P: _Packed) -> tuple:
    acts, hh = cache
    T, B, G = acts.shape
    H = G // 3
    z, r, n = acts.view(T, B, 3, H).unbind(2)
    K_n = (1 - z) * _one_minus_sq(n)
    # dL/d(H W_h + b_h) per unit of dL/dH_t: z and r as their pre-activations, n through R.
    K_hh = torch.stack([(hs[:-1] - n) * _dsigmoid(z), K_n * hh[:, :, 2 * H:] * _dsigmoid(r), K_n * r], dim=2)
    d_hh = torch.empty_like(acts)
    WhT = P.Wh.T
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            dH[t].addmm_(d_hh[t + 1], WhT).addcmul_(dH[t + 1], z[t + 1])
        torch.mul(dH[t].unsqueeze(1), K_hh[t], out=d_hh[t].view(B, 3, H))
    d_xp = d_hh.clone()  # z and r: the same; n: before the reset gate
    torch.mul(dH, K_n, out=d_xp.view(T, B, 3, H)[:, :, 2])
    d_hh = d_hh.view(T * B, G)
    return d_xp.view(T * B, G), torch.mm(hs[:-1].reshape(T * B, H).T, d_hh), d_hh.sum(dim=0)


_FAST_CELLS = {
    "rnn": (_rnn_forward, _rnn_backward),
    "gru": (_gru_forward, _gru_backward),
    "gru-reset-after": (_gru_reset_after_forward, _gru_reset_after_backward),
    "lstm": (_lstm_forward, _lstm_backward),
}


class TorchBackend(_TorchCommon):
    """PyTorch version of the d2l RNN-from-scratch primitives, for every cell, depth and bias layout.

    Args:
        device: ``"cpu"`` or ``"gpu"`` (the first CUDA/ROCm device).
        mode: ``"eager"`` (d2l-style, autograd) or ``"fast"`` (hand-written BPTT, fused updates).
        model: the cell and layers (default: d2l's one-layer tanh RNN).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but torch sees no CUDA/ROCm GPU.
    """

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        self._names = self.model.param_names()
        self._tuned = self.model == RNN  # d2l's one-layer tanh RNN has its own tuned fast path

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return None  # every cell, any depth, one or two biases

    # --- conversion -------------------------------------------------------------------------
    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        """Copy NumPy params to the device, keeping their dtype.

        In eager mode the tensors are autograd leaves (``requires_grad=True``), as in d2l; fast
        mode computes gradients by hand and keeps plain tensors.
        """
        validate_params(params, self.model)  # names, shapes, dtype: say so here, not later inside a matmul
        out = {}
        for k in self._names:
            array = np.asarray(params[k])
            # torch.tensor copies, so sgd_step never writes into the caller's arrays.
            out[k] = torch.tensor(array, device=self._device).requires_grad_(self.mode == "eager")
        return out

    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        return {k: self.as_numpy(params[k]).copy() for k in self._names}

    # --- the model --------------------------------------------------------------------------
    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[torch.Tensor, State]:
        # forward serves prediction and evaluation only: no graph is recorded.
        with torch.no_grad():
            if self.mode == "fast" and self._tuned:
                hs, logits = self._fast_forward(params, self._tokens(X), self._states(state, params["W_hh"])[0])
                return logits, (hs[-1].clone(),)  # clone: hs[-1] is a view keeping all of hs alive
            if self.mode == "fast":
                _, top, final = self._stack_forward(params, self._tokens(X), state)
                T, B, H = top.shape
                return torch.addmm(params["b_q"], top.view(T * B, H), params["W_hq"]), final
            W_hq = params["W_hq"]
            inputs = self.one_hot(X, W_hq.shape[1], _dtype_name(W_hq))
            return self._eager(params, inputs, self._states(state, W_hq))

    def loss_and_grads(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[torch.Tensor, Params, State]:
        if self.mode == "fast":
            with torch.no_grad():
                return self._fast_loss_and_grads(params, X, Y, state)
        for p in params.values():
            # Fresh .grad tensors each call: backward() would otherwise accumulate into the last
            # call's gradients (d2l zeroes them), and grads handed out earlier must not change.
            p.grad = None
            if not p.requires_grad:  # e.g. params created by a fast-mode backend
                p.requires_grad_(True)
        W_hq = params["W_hq"]
        inputs = self.one_hot(X, W_hq.shape[1], _dtype_name(W_hq))  # (steps, batch, vocab)
        logits, new_state = self._eager(params, inputs, self._states(state, W_hq))
        loss = F.cross_entropy(logits, self._labels(Y))  # mean over all tokens, like the oracle
        loss.backward()
        grads = {k: params[k].grad for k in self._names}
        return loss.detach(), grads, tuple(s.detach() for s in new_state)

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, torch.Tensor]:
        # No autograd here: the grads may be leaves that require grad, which forbids in-place ops.
        with torch.no_grad():
            if self.mode == "fast":
                g = list(grads.values())
                norm, scale = _clip_scale(g, max_grad_norm)
                torch._foreach_mul_(g, scale)
                return grads, norm
            return grads, _d2l_clip_(list(grads.values()), max_grad_norm)

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        with torch.no_grad():  # an in-place update of a leaf that requires grad must not be recorded
            if self.mode == "fast":
                torch._foreach_add_([params[k] for k in self._names], [grads[k] for k in self._names], alpha=-lr)
            else:
                for k in self._names:
                    params[k].sub_(grads[k], alpha=lr)  # p -= lr * g, in one pass
        return params

    def train_step(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, torch.Tensor, torch.Tensor, State]:
        if self.mode != "fast":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        with torch.no_grad():
            loss, grads, state = self._fast_loss_and_grads(params, X, Y, state)
            g = [grads[k] for k in self._names]
            norm, scale = _clip_scale(g, max_grad_norm)
            # Fold -lr into the clipping scale: p += g * (-lr * scale), one pass per tensor, with the
            # scale read on the device (no host sync).
            torch._foreach_addcmul_([params[k] for k in self._names], g, [scale * -lr] * len(g))
        return params, loss, norm, state

    # --- eager: d2l's rnn(), every cell, layer after layer ------------------------------------------
    def _eager(self, params: Params, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """d2l's ``rnn`` generalised: ``inputs`` ``(steps, batch, vocab)`` one-hot -> logits
        ``(steps * batch, vocab)``; each layer runs over all steps and its outputs are the next
        layer's inputs (d2l's stacked RNN from scratch)."""
        m = self.model
        step, per_layer = _EAGER_STEPS[m.cell.name], len(m.cell.state)
        new_state: list[torch.Tensor] = []
        for layer in range(m.num_layers):
            p = _layer_params(params, m, layer)
            s = tuple(state[layer * per_layer:(layer + 1) * per_layer])
            outputs = []
            for X in inputs:  # X: (batch, inputs), one time step
                s = step(p, X, s)
                outputs.append(s[0])
            new_state += s
            inputs = outputs
        W_hq, b_q = params["W_hq"], params["b_q"]
        return torch.cat([torch.mm(H, W_hq) + b_q for H in inputs], dim=0), tuple(new_state)

    # --- fast: d2l's one-layer tanh RNN (tuned) -------------------------------------------------------
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
        W_xh, W_hh, b_h, W_hq, b_q = (params[k] for k in ("W_xh", "W_hh", "b_h", "W_hq", "b_q"))
        T, B = tokens.shape
        hs = torch.empty((T + 1, B, W_hh.shape[0]), dtype=W_hh.dtype, device=W_hh.device)
        hs[0] = h0
        # one_hot(x) @ W_xh is row x of W_xh (exact, even in float32), so all steps' input terms
        # are one gather; they are written where the hidden states go, and each step adds
        # H_{t-1} W_hh on top in place, then applies tanh in place: two kernels per step.
        # b_h is added to the V rows before the gather (the same float sums), not to all T*B rows after.
        torch.index_select(W_xh + b_h, 0, tokens.reshape(-1), out=hs[1:].view(T * B, -1))  # (T*B, H)
        h = hs.unbind(0)  # every step's view in one call: indexing hs[t] in the loop costs a dispatch each
        for t in range(T):
            h[t + 1].addmm_(h[t], W_hh).tanh_()
        # The output layer for all steps at once: one (T*B, H) x (H, V) matmul.
        logits = torch.addmm(b_q, hs[1:].reshape(T * B, -1), W_hq)  # (T * B, V)
        return hs, logits

    def _fast_loss_and_grads(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[torch.Tensor, Params, State]:
        """Loss, gradients and the new state by hand-written BPTT; call under ``torch.no_grad()``.

        Same maths as the oracle; the weight gradients are each one matmul over all time steps
        instead of a sum of per-step products, so only the recurrence runs step by step.
        """
        if not self._tuned:
            return self._stack_loss_and_grads(params, X, Y, state)
        W_hh, W_hq = params["W_hh"], params["W_hq"]
        tokens = self._tokens(X)  # (T, B)
        T, B = tokens.shape
        N = T * B
        hs, logits = self._fast_forward(params, tokens, self._states(state, W_hh)[0])
        loss, d_logits = _cross_entropy_and_grad(logits, self._labels(Y)[:, None])

        hidden = hs[1:].reshape(N, -1)  # (N, H), every step's output state
        d_h = torch.mm(d_logits, W_hq.T).view(T, B, -1)  # dL/dH_t through the output layer
        # Backward recurrence, in place in d_h, which becomes dL/d(pre-activation) per step:
        # d_pre_t = (d_h_t + d_pre_{t+1} W_hh^T) * (1 - H_t^2).
        # A contiguous copy, not the .T view: MKL's 32x512x512 product with a transposed operand ran
        # the 34 backward matmuls 1.3x slower (`python -m benchmarks.probes transpose`, AVX-512); the copy is 1 MB.
        W_hh_T = W_hh.T.contiguous()
        # tanh_backward(d, H) = d * (1 - H^2) in one kernel per step: no pass computing tanh' for all
        # steps first, and no (T, B, H) buffer of it to read back (it left the caches between the loops).
        d, h = d_h.unbind(0), hs.unbind(0)
        tanh_backward = torch.ops.aten.tanh_backward.grad_input
        tanh_backward(d[T - 1], h[T], grad_input=d[T - 1])
        for t in range(T - 2, -1, -1):
            tanh_backward(d[t].addmm_(d[t + 1], W_hh_T), h[t + 1], grad_input=d[t])
        d_pre = d_h.view(N, -1)  # (N, H)
        # one_hot(x)^T @ d_pre is a scatter-add of d_pre's rows into W_xh's shape.
        d_W_xh = torch.zeros_like(params["W_xh"]).index_add_(0, tokens.reshape(-1), d_pre)

        grads = {
            "W_xh": d_W_xh,
            "W_hh": torch.mm(hs[:-1].reshape(N, -1).T, d_pre),  # sum_t H_{t-1}^T d_pre_t in one matmul
            # the sum of d_pre's rows, from the V rows they were scattered into, not the T*B rows again
            "b_h": d_W_xh.sum(dim=0),
            # (d_logits^T hidden)^T: the same products, but MKL runs (V, N) @ (N, H) 2x faster than
            # (H, N) @ (N, V) with V = 28 (probes transpose: 0.13 vs 0.23 ms); the gradient is a transposed view.
            "W_hq": torch.mm(d_logits.T, hidden).T,
            "b_q": d_logits.sum(dim=0),
        }
        return loss, grads, (hs[-1].clone(),)  # clone: a view of hs[-1] would keep all of hs alive

    # --- fast: every other model ------------------------------------------------------------------------
    def _pack(self, params: Params, layer: int) -> _Packed:
        """One layer's weights with the gates side by side (a copy each step: O(G H (inputs + H)),
        small beside the recurrence's T matmuls)."""
        m, s = self.model, layer_suffix(layer)
        gates, hidden = m.cell.gates, m.hidden_bias_gates()

        def cat(kind: str) -> torch.Tensor:
            ts = [params[f"{kind}{g}{s}"] for g in gates]
            return ts[0] if len(ts) == 1 else torch.cat(ts, dim=1)

        bh = None
        if m.cell.name == "gru-reset-after":  # b_hn acts inside R ⊙ (H W_hn + b_hn); b_hz, b_hr just add
            b_hn = params[f"b_hn{s}"]
            bh = torch.cat([b_hn.new_zeros(2 * b_hn.shape[0]), b_hn])
            hidden = tuple(g for g in hidden if g != "n")
        bx = torch.cat([params[f"b_{g}{s}"] + params[f"b_h{g}{s}"] if g in hidden else params[f"b_{g}{s}"]
                        for g in gates])
        return _Packed(cat("W_x"), cat("W_h"), bx, bh)

    def _stack_forward(self, params: Params, tokens: torch.Tensor, state: State) -> tuple[list, torch.Tensor, State]:
        """Every layer's forward pass; call under ``torch.no_grad()``.

        Returns:
            ``(records, top, final_state)``: per layer ``(packed weights, its inputs, hs, cache)``,
            the top layer's outputs ``(T, B, H)`` and the final state tuple.
        """
        m = self.model
        forward = _FAST_CELLS[m.cell.name][0]
        per_layer = len(m.cell.state)
        state = self._states(state, params["W_hq"])
        T, B = tokens.shape
        x, records, final = None, [], []
        for layer in range(m.num_layers):
            P = self._pack(params, layer)
            if x is None:  # one_hot(x) @ W_x is a row gather, for all steps and gates at once
                xp = P.Wx.index_select(0, tokens.reshape(-1)).add_(P.bx)
            else:  # the layer below's outputs, all steps in one matmul
                xp = torch.addmm(P.bx, x.reshape(T * B, -1), P.Wx)
            hs, s, cache = forward(xp.view(T, B, -1), P, state[layer * per_layer:(layer + 1) * per_layer])
            records.append((P, x, hs, cache))
            final += s
            x = hs[1:]
        return records, x, tuple(final)

    def _stack_loss_and_grads(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[torch.Tensor, Params, State]:
        """Hand-written BPTT of any model, top layer first; call under ``torch.no_grad()``."""
        m = self.model
        backward = _FAST_CELLS[m.cell.name][1]
        tokens = self._tokens(X)
        T, B = tokens.shape
        N = T * B
        records, top, final = self._stack_forward(params, tokens, state)
        hidden = top.reshape(N, -1)
        logits = torch.addmm(params["b_q"], hidden, params["W_hq"])
        loss, d_logits = _cross_entropy_and_grad(logits, self._labels(Y)[:, None])
        grads = {"W_hq": torch.mm(hidden.T, d_logits), "b_q": d_logits.sum(dim=0)}
        dH = torch.mm(d_logits, params["W_hq"].T).view(T, B, -1)  # dL/d(top layer's outputs)
        for layer in range(m.num_layers - 1, -1, -1):
            P, x, hs, cache = records[layer]
            d_xp, dWh, dbh = backward(hs, cache, dH, P)  # (N, G*H), (H, G*H), (G*H,) or None
            if x is None:  # the gather's gradient: a scatter-add of d_xp's rows
                dWx = torch.zeros_like(P.Wx).index_add_(0, tokens.reshape(-1), d_xp)
            else:
                dWx = torch.mm(x.reshape(N, -1).T, d_xp)
                dH = torch.mm(d_xp, P.Wx.T).view(T, B, -1)  # the layer below's output gradients
            db = d_xp.sum(dim=0)
            if dbh is None and m.second_bias:
                dbh = db.clone()  # b_hg adds where b_g does; a copy, as clipping scales grads in place
            grads.update(self._unpack(layer, dWx, dWh, db, dbh))
        return loss, {k: grads[k] for k in self._names}, final

    def _unpack(self, layer: int, dWx: torch.Tensor, dWh: torch.Tensor, db: torch.Tensor,
                dbh: torch.Tensor | None) -> Params:
        """Packed gradients -> one layer's gradients by d2l name (column views, no copies)."""
        m, s = self.model, layer_suffix(layer)
        H = dWh.shape[0]
        out = {}
        for j, g in enumerate(m.cell.gates):
            cols = slice(j * H, (j + 1) * H)
            out[f"W_x{g}{s}"], out[f"W_h{g}{s}"], out[f"b_{g}{s}"] = dWx[:, cols], dWh[:, cols], db[cols]
            if g in m.hidden_bias_gates():
                out[f"b_h{g}{s}"] = dbh[cols]
        return out


# --- layers: torch.nn.RNN / GRU / LSTM and nn.Linear ---------------------------------------------------

# torch's gate order in its stacked weights (rnn.py docs: W_ir|W_iz|W_in, W_ii|W_if|W_ig|W_io), by
# d2l's gate letter: d2l's LSTM candidate c is torch's g, the reset-after GRU's n is torch's n.
_TORCH_GATES = {"rnn": ("h",), "gru-reset-after": ("r", "z", "n"), "lstm": ("i", "f", "c", "o")}
_TORCH_LAYERS = {"rnn": "RNN", "gru-reset-after": "GRU", "lstm": "LSTM"}


@dataclass(frozen=True)
class _Slot:
    """One torch parameter and the d2l parameters stacked in it (row blocks, torch's gate order)."""

    name: str  # torch's name in the net, e.g. "rnn.weight_ih_l0"
    holds: tuple[str | None, ...]  # per row block the d2l name, or None: held at 0 (a frozen second bias)
    transposed: bool  # torch stores x @ W.T: d2l's (in, out) weights go in as (out, in)
    shape: tuple[str, ...]  # symbolic ("4H", "V"), for param_layout

    @property
    def trained(self) -> bool:
        return any(n is not None for n in self.holds)


def _layer_layout(model: Model) -> tuple[_Slot, ...]:
    """Where every d2l parameter lives in ``rnn`` (the recurrent layer) and ``linear`` (the output layer)."""
    gates = _TORCH_GATES[model.cell.name]
    rows = f"{len(gates)}H" if len(gates) > 1 else "H"
    hidden = model.hidden_bias_gates()
    slots = []
    for k in range(model.num_layers):
        s = layer_suffix(k)
        slots += [
            _Slot(f"rnn.weight_ih_l{k}", tuple(f"W_x{g}{s}" for g in gates), True, (rows, "V" if k == 0 else "H")),
            _Slot(f"rnn.weight_hh_l{k}", tuple(f"W_h{g}{s}" for g in gates), True, (rows, "H")),
            _Slot(f"rnn.bias_ih_l{k}", tuple(f"b_{g}{s}" for g in gates), False, (rows,)),
            # cuDNN's second bias: d2l's b_h{g} where the model has it, else held at 0.
            _Slot(f"rnn.bias_hh_l{k}", tuple(f"b_h{g}{s}" if g in hidden else None for g in gates), False, (rows,)),
        ]
    return (*slots, _Slot("linear.weight", ("W_hq",), True, ("V", "H")), _Slot("linear.bias", ("b_q",), False, ("V",)))


class _Net(torch.nn.Module):
    """torch's recurrent layer (``num_layers`` deep, time-major) and ``nn.Linear`` on top."""

    def __init__(self, model: Model, vocab_size: int, num_hiddens: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__()
        layer = getattr(torch.nn, _TORCH_LAYERS[model.cell.name])
        options = {"nonlinearity": "tanh"} if model.cell.name == "rnn" else {}
        self.rnn = layer(vocab_size, num_hiddens, num_layers=model.num_layers, dtype=dtype, device=device, **options)
        self.linear = torch.nn.Linear(num_hiddens, vocab_size, dtype=dtype, device=device)


class _LayerParams(dict):
    """The trained parameters of a :class:`_Net`, keyed by torch's own names (``rnn.weight_ih_l0``,
    ``linear.bias``); ``net`` is the module they belong to. Gradients are plain dicts with the
    same keys."""

    def __init__(self, net: _Net, items: dict[str, torch.nn.Parameter]) -> None:
        super().__init__(items)
        self.net = net


class TorchLayersBackend(_TorchCommon):
    """d2l's models on torch's own layers: ``nn.RNN(nonlinearity="tanh")`` / ``nn.GRU`` / ``nn.LSTM``
    with ``num_layers``, and ``nn.Linear`` as the output layer.

    Params are the layers' trained parameters keyed by torch's names (:class:`_LayerParams`);
    ``params_from_numpy`` / ``params_to_numpy`` map them from and to d2l's names. The layers carry
    two biases per gate (``b_ih + b_hh``, cuDNN's layout): without ``model.second_bias`` the
    hidden-side one is held at 0, untrained and outside the clipping norm, so the model is d2l's;
    with it, both are trained (d2l's ``b_{g}`` and ``b_h{g}``).

    Eager mode calls the layers as a user would (autograd, d2l's clipping rule, ``torch.optim.SGD``);
    fast mode is one fused ``train_step``: the one-hot input as a row gather, the layers and
    ``torch.autograd.grad``, then ``torch._foreach_*`` clipping and SGD with the scale on the device.
    torch's layers are already fused C++ operators (oneDNN for float32 LSTM on CPU), and
    ``torch.compile`` does not trace them, so there is no faster honest path around them.

    Args:
        device: ``"cpu"`` or ``"gpu"`` (the first CUDA/ROCm device).
        mode: ``"eager"`` or ``"fast"``.
        model: the cell and layers (default: d2l's one-layer tanh RNN).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but torch sees no CUDA/ROCm GPU.
        UnsupportedModelError: ``cell="gru"`` (torch's GRU is reset-after).
    """

    impl = "layers"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        self._layout = _layer_layout(self.model)
        self._eyes: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return layer_limits.layers_unsupported("torch", model)

    # --- conversion -------------------------------------------------------------------------
    def _build(self, vocab_size: int, num_hiddens: int, dtype: torch.dtype) -> tuple[_Net, dict[str, torch.nn.Parameter]]:
        """A fresh net with uninitialised weights: built on the meta device, so that no
        initialiser runs (every value is overwritten) and torch's global RNG is not touched."""
        net = _Net(self.model, vocab_size, num_hiddens, dtype, "meta").to_empty(device=self._device)
        return net, self._named(net)

    def _named(self, net: _Net) -> dict[str, torch.nn.Parameter]:
        named = dict(net.named_parameters())
        unmapped = set(named) - {slot.name for slot in self._layout}
        if unmapped:  # another torch version with another layout must not pass silently
            raise ValueError(f"torch parameters not covered by the d2l mapping: {sorted(unmapped)}")
        return named

    def _output_layer_of(self, params: Any) -> tuple[int | None, int | None, str | None]:
        """V, H, dtype: the output layer's bias (V,) and weight (V, H) (the input checks read them; no conversion)."""
        weight = params["linear.weight"]
        return int(params["linear.bias"].shape[0]), int(weight.shape[1]), _dtype_name(weight)

    def params_from_numpy(self, params: dict[str, np.ndarray]) -> _LayerParams:
        """A fresh net holding d2l's ``params`` (copied, transposed and stacked in torch's gate order);
        returns its trained parameters."""
        V, H, dtype = validate_params(params, self.model)
        net, named = self._build(V, H, _torch_dtype(dtype))
        with torch.no_grad():  # copying into leaves that require grad must not be recorded
            for slot in self._layout:
                blocks = [np.zeros(H, dtype) if n is None else (np.asarray(params[n]).T if slot.transposed else params[n])
                          for n in slot.holds]
                named[slot.name].copy_(torch.from_numpy(np.ascontiguousarray(np.concatenate(blocks, axis=0))))
        for slot in self._layout:
            if not slot.trained:
                named[slot.name].requires_grad_(False)  # d2l has one bias per gate: b_hh is no parameter
        if self._device.type == "cuda":
            # cuDNN wants all RNN weights in one contiguous buffer; copy_ kept them in place, but
            # re-flatten so the layer never warns about (and re-copies) non-contiguous weights.
            net.rnn.flatten_parameters()
        return _LayerParams(net, {s.name: named[s.name] for s in self._layout if s.trained})

    def params_to_numpy(self, params: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Params or grads (torch's names) -> d2l's names, cut out of torch's stacked rows."""
        out = {}
        for slot in self._layout:
            if not slot.trained:
                continue
            blocks = np.split(self.as_numpy(params[slot.name]), len(slot.holds), axis=0)
            for n, block in zip(slot.holds, blocks):
                if n is not None:
                    out[n] = np.ascontiguousarray(block.T if slot.transposed else block)  # always a copy
        return {k: out[k] for k in self.model.param_names()}

    def _frozen_rows(self, grads: dict[str, torch.Tensor]) -> None:
        """Zero the gradient rows of second biases held at 0 inside a trained tensor: the
        reset-after GRU's ``bias_hh`` trains its ``b_hn`` rows only (d2l's model has no b_hr,
        b_hz), so they are neither updated nor part of the clipping norm."""
        for slot in self._layout:
            if slot.trained and None in slot.holds:
                g = grads[slot.name]
                for block, n in zip(g.chunk(len(slot.holds)), slot.holds):
                    if n is None:
                        block.zero_()

    # --- the model --------------------------------------------------------------------------
    def _inputs(self, X: np.ndarray, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
        """One-hot ``(T, B, V)``: ``F.one_hot`` in eager mode, as a user writes it; a row gather
        of the identity in fast mode (no int64 one-hot and cast)."""
        if self.mode == "eager":
            return F.one_hot(self._tokens(X), vocab_size).to(dtype)
        eye = self._eyes.get((vocab_size, dtype))
        if eye is None:
            eye = self._eyes[(vocab_size, dtype)] = torch.eye(vocab_size, dtype=dtype, device=self._device)
        tokens = self._tokens(X)
        return eye.index_select(0, tokens.reshape(-1)).view(*tokens.shape, vocab_size)

    def _run(self, params: _LayerParams, X: np.ndarray, state: State) -> tuple[torch.Tensor, State]:
        """The layers on ``X`` (autograd as the caller has it): logits ``(T*B, V)`` and the new state."""
        net = params.net
        weight = net.linear.weight  # (V, H)
        V, H = weight.shape
        states = self._states(state, weight)
        lstm = self.model.cell.name == "lstm"
        # The contract's state is one (B, H) array per layer (and C per layer for the LSTM); the
        # layer's is (num_layers, B, H), with (h, c) as two such stacks.
        hx = (torch.stack(states[0::2]), torch.stack(states[1::2])) if lstm else torch.stack(states)
        out, h_n = net.rnn(self._inputs(X, V, weight.dtype), hx)  # out: the top layer's (T, B, H)
        logits = net.linear(out.reshape(-1, H))  # rows time-major
        if lstm:
            h_n, c_n = h_n
            new = tuple(s.detach() for k in range(self.model.num_layers) for s in (h_n[k], c_n[k]))
        else:
            new = tuple(h.detach() for h in h_n)
        return logits, new

    def forward(self, params: _LayerParams, X: np.ndarray, state: State) -> tuple[torch.Tensor, State]:
        with torch.no_grad():  # prediction and evaluation only: no graph is recorded
            return self._run(params, X, state)

    def _loss(self, params: _LayerParams, X: np.ndarray, Y: np.ndarray, state: State) -> tuple[torch.Tensor, State]:
        with torch.enable_grad():
            logits, new_state = self._run(params, X, state)
            return F.cross_entropy(logits, self._labels(Y)), new_state  # mean over all tokens

    def loss_and_grads(
        self, params: _LayerParams, X: np.ndarray, Y: np.ndarray, state: State
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], State]:
        if self.mode == "fast":
            loss, new_state = self._loss(params, X, Y, state)
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        else:
            for p in params.values():
                p.grad = None  # backward() writes fresh gradients instead of accumulating
            loss, new_state = self._loss(params, X, Y, state)
            loss.backward()
            grads = {k: p.grad for k, p in params.items()}
        with torch.no_grad():
            self._frozen_rows(grads)
        return loss.detach(), grads, new_state

    def clip_gradients(self, grads: dict[str, torch.Tensor], max_grad_norm: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with torch.no_grad():  # the grads may be leaves that require grad (params_from_numpy of grads)
            if self.mode == "fast":
                g = list(grads.values())
                norm, scale = _clip_scale(g, max_grad_norm)
                torch._foreach_mul_(g, scale)
                return grads, norm
            return grads, _d2l_clip_(list(grads.values()), max_grad_norm)

    def sgd_step(self, params: _LayerParams, grads: dict[str, torch.Tensor], lr: float) -> _LayerParams:
        if self.mode == "fast":
            with torch.no_grad():
                torch._foreach_add_(list(params.values()), [grads[k] for k in params], alpha=-lr)
            return params
        # As a user would: the gradients in .grad, then an optimizer step (plain SGD: p -= lr * g).
        for k, p in params.items():
            p.grad = grads[k].detach()
        torch.optim.SGD(params.values(), lr=lr).step()
        return params

    def train_step(
        self, params: _LayerParams, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[_LayerParams, torch.Tensor, torch.Tensor, State]:
        if self.mode != "fast":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        loss, state = self._loss(params, X, Y, state)
        weights = list(params.values())
        grads = list(torch.autograd.grad(loss, weights))  # fresh tensors: nothing accumulates in .grad
        with torch.no_grad():
            self._frozen_rows(dict(zip(params, grads)))
            norm, scale = _clip_scale(grads, max_grad_norm)
            # Fold -lr into the clipping scale: one fused multiply and one fused add, no host sync.
            torch._foreach_mul_(grads, scale * -lr)
            torch._foreach_add_(weights, grads)
        return params, loss.detach(), norm, state

    # --- what the layers bring ------------------------------------------------------------------
    def default_params(self, vocab_size: int, num_hiddens: int, seed: int, dtype: str = "float32") -> dict[str, np.ndarray]:
        """The layers' own initialisers, seeded by ``seed``, by d2l name: every weight and bias of
        ``nn.RNN``/``GRU``/``LSTM`` ~ U(-1/√H, 1/√H); ``nn.Linear``'s weight and bias ~ U(-1/√H, 1/√H)
        (kaiming_uniform with a=√5 over H inputs). A second bias held at 0 stays 0. Drawn in
        float32 and cast, so float32 and float64 runs start from the same weights; torch's global
        RNG is left as it was."""
        check_dtype(dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _Net(self.model, vocab_size, num_hiddens, torch.float32, "cpu")  # reset_parameters() runs here
        named = self._named(net)
        return {k: v.astype(dtype) for k, v in self.params_to_numpy(named).items()}

    def param_layout(self) -> dict[str, Any]:
        """torch's parameter names, symbolic shapes, and the d2l parameters each one holds."""
        def holds(slot: _Slot) -> str:
            parts = ["0" if n is None else n for n in slot.holds]
            text = parts[0] if len(parts) == 1 else "[" + " | ".join(parts) + "]"
            return text + ("^T" if slot.transposed else "")

        layer = f"torch.nn.{_TORCH_LAYERS[self.model.cell.name]}(V, H, num_layers={self.model.num_layers})"
        out: dict[str, Any] = {}
        for slot in self._layout:
            entry = {"shape": list(slot.shape), "holds": holds(slot), "trained": slot.trained}
            if not slot.trained:
                entry["note"] = "held at 0: requires_grad=False, outside the clipping norm"
            elif None in slot.holds:
                entry["note"] = "the 0 rows are held at 0: their gradient is zeroed before clipping and SGD"
            entry["module"] = layer if slot.name.startswith("rnn.") else "torch.nn.Linear(H, V)"
            out[slot.name] = entry
        return out
