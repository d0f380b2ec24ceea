"""MXNet 1.9 backend, written against the NumPy interface (``mxnet.np`` / ``mxnet.npx``).

``mode="eager"`` is d2l's MXNet chapter almost line by line: ``npx.one_hot`` inputs, the tanh
recurrence as a Python loop, cross-entropy as logsumexp(o) - o[y], gradients from
``autograd.record()`` / ``backward()``, clipping and SGD as ``mx.np`` expressions on the device.

``mode="fast"`` replaces ``train_step`` and ``forward`` with hybridized Gluon blocks
(``static_alloc``/``static_shape``, compiled once per shapes and dtype) around MXNet's fused
``RNN`` operator: the whole recurrence and its backward pass are one operator each (oneDNN RNN
primitives for float32 on CPU), the output layer is one matmul over all time steps, and clipping
plus SGD for all five params is a second small graph. A step is three calls into MXNet's
asynchronous engine (loss, backward, clip+SGD) and never waits for the device.

Measured here (CPU, MXNet 1.9.1): a hand-unrolled BPTT graph (the oracle's algebra, one GEMM per
step) ran ~25% slower than the fused operator, whose per-step GEMMs are oneDNN's.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as onp

# Keep MXNet's C++ logging quiet unless the user asked otherwise (setdefault respects their value).
# These must be set before the import: the library reads them once, when it loads.
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")  # "storage fallback" notices
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # oneDNN subgraph-partitioning banners

# mxnet 1.9.1 still reads ``numpy.bool``, an alias NumPy 1.24 removed. Restore it only if missing;
# look in the module dict, because ``hasattr(numpy, "bool")`` itself emits a FutureWarning on 1.2x.
if "bool" not in vars(onp):
    onp.bool = bool  # type: ignore[attr-defined]

with warnings.catch_warnings():
    # mxnet's import touches deprecated NumPy aliases; the warnings say nothing to our users.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    import mxnet as mx
    from mxnet import autograd, gluon, npx
    from mxnet import np as mnp

from ..errors import GPUUnavailableError
from ..params import PARAM_NAMES, check_dtype, validate_params
from ..cells import Model
from .base import Backend, State

# NumPy semantics for the whole process: ``shape`` makes 0-d arrays (the mean loss, the gradient
# norm) legal -- legacy MXNet has no scalars -- and ``array`` makes Gluon trace hybrid blocks with
# ``mx.np`` symbols and makes autograd hand back ``mx.np`` arrays. The ``mx.np`` API needs both.
npx.set_np(shape=True, array=True)

Params = dict[str, Any]  # name -> mxnet.np.ndarray


def _legacy(*arrays: Any) -> list:
    """``mx.np`` arrays or symbols -> legacy ones (a view change, no copy).

    The compiled blocks use legacy operators inside: on CPU several ``mx.np`` kernels are generic,
    index-computing loops, e.g. ``np.transpose`` is ~5x and ``np.dot``/``np.vdot`` of two vectors
    ~30x slower than legacy ``transpose`` / ``dot`` (BLAS). Results go back to ``mx.np`` at the edge.
    """
    return [a.as_nd_ndarray() for a in arrays]


def _fused_rnn(F, shape: tuple[int, int], dtype: str, x, h0, W_xh, W_hh, b_h, W_hq, b_q):  # noqa: N803
    """The model through MXNet's fused ``RNN`` operator (what ``gluon.rnn.RNN`` runs).

    One operator runs the whole recurrence and, under autograd, its whole backward pass: oneDNN
    RNN primitives for float32 on CPU (cuDNN on GPU), MXNet's native kernel for float64. It wants
    its weights as one flat vector ``[W_i2h (H, V), W_h2h (H, H), b_i2h, b_h2h]``, i.e. d2l's
    weights transposed; packing them inside the graph makes autograd hand the gradients back in
    d2l's layout. d2l has a single bias, so ``b_h2h`` is zero (adding 0 is exact).

    Args:
        F: ``mx.sym`` (hybridized) or ``mx.nd``; every array below is a legacy one.
        shape: ``(vocab_size, num_hiddens)``.
        dtype: the params' dtype name.
        x: time-major token ids ``(T, B)``; h0: ``(B, H)``; the params as in d2l.

    Returns:
        ``(logits, h_T)``: ``(T * B, V)`` with rows time-major, and ``(B, H)``.
    """
    vocab_size, num_hiddens = shape
    # Pieces as (1, n) rows joined along axis 1, then flattened: the same bytes in the same order,
    # but MXNet's concat along axis 0 of 1-D arrays is slow (2.6 ms for these 1.1 MB against
    # 0.08 ms for a plain copy); this layout made the whole step 1.12x faster (benchmarks/PROFILES.md).
    pieces = [F.transpose(W_xh), F.transpose(W_hh), b_h, F.zeros_like(b_h)]
    flat = F.reshape(F.concat(*[F.reshape(p, (1, -1)) for p in pieces], dim=1), (-1,))
    inputs = F.one_hot(x, vocab_size, dtype=dtype)  # (T, B, V)
    outputs, h_T = F.RNN(
        inputs, flat, F.expand_dims(h0, axis=0), mode="rnn_tanh", state_size=num_hiddens, num_layers=1,
        state_outputs=True,
    )  # (T, B, H), (1, B, H)
    # The output layer of all steps at once: one matmul, not T. FullyConnected runs on oneDNN
    # (dot on OpenBLAS was slower); it wants the weight as (out, in), i.e. W_hq transposed.
    logits = F.FullyConnected(F.reshape(outputs, (-3, -2)), F.transpose(W_hq), b_q, num_hidden=vocab_size)
    return logits, F.reshape(h_T, (-3, -2))


def _logsumexp(F: Any, logits: Any) -> Any:
    """Row-wise log-sum-exp, shifted by the row maximum; ``(N, V)`` -> ``(N,)``.

    Cross-entropy is ``logsumexp(o) - o[y]``. MXNet's own ``log_softmax`` operator (and so Gluon's
    ``SoftmaxCrossEntropyLoss``) is less exact in float32: on d2l ed.1 logits its mean loss is
    off by 3.7e-7 relative where this formula, like NumPy, is off by 2.4e-8, and training's
    chaotic dynamics amplify that into a 20x larger gap between MXNet's curve and the others'.
    """
    m = F.max(logits, axis=-1, keepdims=True)
    return F.reshape(m, (-1,)) + F.log(F.sum(F.exp(F.broadcast_sub(logits, m)), axis=-1))


class _Loss(gluon.HybridBlock):
    """Mean cross-entropy of one minibatch (and the final state), for ``mode="fast"``."""

    def __init__(self, shape: tuple[int, int], dtype: str) -> None:
        super().__init__()
        self._shape, self._dtype = shape, dtype

    def hybrid_forward(self, F, x, y, h0, W_xh, W_hh, b_h, W_hq, b_q):  # noqa: N803
        x, y, *rest = _legacy(x, y, h0, W_xh, W_hh, b_h, W_hq, b_q)
        logits, h_T = _fused_rnn(F, self._shape, self._dtype, x, *rest)
        loss = F.mean(_logsumexp(F, logits) - F.pick(logits, y, axis=-1))
        return F.np.reshape(loss.as_np_ndarray(), ()), h_T.as_np_ndarray()  # a 0-d loss, as in NumPy


class _Forward(gluon.HybridBlock):
    """Logits and final state (no loss), for ``mode="fast"``."""

    def __init__(self, shape: tuple[int, int], dtype: str) -> None:
        super().__init__()
        self._shape, self._dtype = shape, dtype

    def hybrid_forward(self, F, x, h0, W_xh, W_hh, b_h, W_hq, b_q):  # noqa: N803
        logits, h_T = _fused_rnn(F, self._shape, self._dtype, *_legacy(x, h0, W_xh, W_hh, b_h, W_hq, b_q))
        return logits.as_np_ndarray(), h_T.as_np_ndarray()


class _ClipSGD(gluon.HybridBlock):
    """d2l's gradient clipping and SGD for all five params in one graph.

    ``‖g‖²`` comes from BLAS dot products of flat views: ``sum(g * g)`` is a generic (slow)
    reduction kernel in MXNet 1.9 on CPU. θ / max(‖g‖, θ) is exactly 1 at or below the bound (so
    an unclipped step is bit-identical to plain SGD) and never 0/0 for zero gradients.
    """

    def hybrid_forward(self, F, lr, theta, W_xh, W_hh, b_h, W_hq, b_q, *grads):  # noqa: N803
        lr, theta, *params = _legacy(lr, theta, W_xh, W_hh, b_h, W_hq, b_q)
        grads = _legacy(*grads)
        norm = F.sqrt(F.add_n(*(F.dot(F.reshape(g, (-1,)), F.reshape(g, (-1,))) for g in grads)))
        norm = F.reshape(norm, (1,))
        scale = F.broadcast_div(theta, F.broadcast_maximum(norm, theta))
        # p - lr * (g * scale): the oracle's order of operations (clip, then step).
        new = [p - F.broadcast_mul(lr, F.broadcast_mul(g, scale)) for p, g in zip(params, grads)]
        return (*(p.as_np_ndarray() for p in new), F.np.reshape(norm.as_np_ndarray(), ()))


class MXNetBackend(Backend):
    """The d2l RNN in MXNet 1.9 (``mxnet.np``); see the module docstring for the two modes.

    Args:
        device: ``"cpu"`` or ``"gpu"`` (the first GPU MXNet sees).
        mode: ``"eager"`` (d2l-style) or ``"fast"`` (compiled ``train_step``/``forward`` around the
            fused RNN operator); ``loss_and_grads``, ``clip_gradients`` and ``sgd_step`` are the
            eager ones in both modes.

    Raises:
        GPUUnavailableError: ``device="gpu"`` but MXNet sees no GPU (e.g. a CPU-only build).
    """

    name = "mxnet"
    framework = "mxnet"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        if device == "gpu":
            if mx.context.num_gpus() == 0:
                raise GPUUnavailableError(
                    "device='gpu' was requested, but MXNet sees no GPU (this mxnet build or machine has "
                    "no CUDA device). Install a CUDA build of mxnet on a GPU machine, or use device='cpu'."
                )
            self._ctx = mx.gpu(0)
        else:
            self._ctx = mx.cpu()
        # Compiled blocks, one per (kind, steps, batch, vocab, hidden, dtype): a CachedOp with
        # static_alloc/static_shape plans its memory for exactly one set of shapes.
        self._blocks: dict[tuple, gluon.HybridBlock] = {}
        self._scalars: dict[tuple, Any] = {}  # lr / θ as device arrays, made once per value

    def version(self) -> str:
        return mx.__version__

    # --- conversion -------------------------------------------------------------------------
    def _array(self, x: Any, dtype: Any = None) -> Any:
        """A NumPy (or MXNet) array on this backend's device; MXNet arrays are not copied."""
        if isinstance(x, mnp.ndarray):
            return x if x.ctx == self._ctx else x.as_in_context(self._ctx)
        x = onp.asarray(x)
        # mx.np.array keeps a NumPy array's dtype (float64 stays float64); contiguity avoids a
        # strided copy path.
        return mnp.array(onp.ascontiguousarray(x, dtype=dtype), dtype=dtype or x.dtype, ctx=self._ctx)

    def params_from_numpy(self, params: dict[str, onp.ndarray]) -> Params:
        validate_params(params)
        return {k: self._array(params[k]) for k in PARAM_NAMES}

    def params_to_numpy(self, params: Params) -> dict[str, onp.ndarray]:
        return {k: self.as_numpy(params[k]) for k in PARAM_NAMES}

    def as_numpy(self, x: Any) -> onp.ndarray:
        if isinstance(x, mnp.ndarray):
            return x.asnumpy()  # waits for the engine: this is the synchronisation point
        return onp.asarray(x)

    def _tokens(self, X: onp.ndarray, flat: bool = True) -> Any:
        """``(batch, steps)`` ints -> int32 on the device, time-major: ``(steps * batch,)`` or
        ``(steps, batch)``."""
        ids = onp.asarray(X).T
        return self._array(ids.reshape(-1) if flat else ids, dtype=onp.int32)

    def _state(self, state: State, dtype: str) -> Any:
        (h,) = state
        return self._array(h, dtype=None if isinstance(h, mnp.ndarray) else dtype)

    # --- the model --------------------------------------------------------------------------
    def one_hot(self, X: onp.ndarray, vocab_size: int, dtype: str = "float32") -> Any:
        X = onp.asarray(X)
        ids = self._array(X.T, dtype=onp.int32)  # (steps, batch)
        return npx.one_hot(ids, vocab_size, dtype=check_dtype(dtype))  # (steps, batch, vocab)

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        return (mnp.zeros((batch_size, num_hiddens), dtype=check_dtype(dtype), ctx=self._ctx),)

    def _rnn(self, params: Params, X: onp.ndarray, state: State) -> tuple[Any, State]:
        """d2l's ``rnn``: one-hot inputs, a Python loop over time steps, logits stacked."""
        W_xh, W_hh, b_h, W_hq, b_q = (params[k] for k in PARAM_NAMES)
        inputs = self.one_hot(X, W_xh.shape[0], W_xh.dtype.name)  # (steps, batch, vocab)
        H = self._state(state, W_hh.dtype.name)
        outputs = []
        for X_t in inputs:  # X_t: (batch, vocab)
            H = mnp.tanh(mnp.dot(X_t, W_xh) + mnp.dot(H, W_hh) + b_h)
            outputs.append(mnp.dot(H, W_hq) + b_q)
        return mnp.concatenate(outputs, axis=0), (H,)  # (steps * batch, vocab), rows time-major

    def forward(self, params: Params, X: onp.ndarray, state: State) -> tuple[Any, State]:
        if self.mode == "eager":
            return self._rnn(params, X, state)
        block = self._block(_Forward, params, X)
        logits, h = block(self._tokens(X, flat=False), self._state(state, params["W_hh"].dtype.name), *self._list(params))
        return logits, (h,)

    def loss_and_grads(self, params: Params, X: onp.ndarray, Y: onp.ndarray, state: State) -> tuple[Any, Params, State]:
        for p in params.values():
            # A fresh gradient buffer per call: grads returned earlier are never overwritten.
            p.attach_grad()
        y = self._tokens(Y)  # labels in the logits' time-major row order
        with autograd.record():
            logits, (H,) = self._rnn(params, X, state)
            # d2l uses Gluon's SoftmaxCrossEntropyLoss; its log_softmax is less exact in float32
            # (see _logsumexp), so the same cross-entropy is written out: logsumexp(o) - o[y].
            m = logits.max(axis=-1, keepdims=True)
            lse = m[:, 0] + mnp.log(mnp.exp(logits - m).sum(axis=-1))
            loss = (lse - npx.pick(logits, y, axis=-1)).mean()  # keeps the params' dtype
        loss.backward()
        grads = {k: params[k].grad for k in PARAM_NAMES}
        return loss, grads, (H.detach(),)

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, Any]:
        # All on the device (d2l reads every norm back to the host). θ / max(‖g‖, θ) is exactly 1
        # at or below the bound, so grads stay bit-identical, and zero grads give no 0/0.
        norm = mnp.sqrt(sum((g * g).sum() for g in grads.values()))
        scale = max_grad_norm / mnp.maximum(norm, max_grad_norm)
        return {k: g * scale for k, g in grads.items()}, norm

    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        for k in PARAM_NAMES:
            params[k] -= lr * grads[k]  # in place, as d2l's ``param[:] = param - lr * grad``
        return params

    # --- mode="fast" -------------------------------------------------------------------------
    @staticmethod
    def _list(params: Params) -> list:
        return [params[k] for k in PARAM_NAMES]

    def _block(self, kind: type, params: Params, X: onp.ndarray | None = None) -> gluon.HybridBlock:
        """The compiled ``kind`` block for these shapes and dtype, built and hybridized once."""
        W_xh = params["W_xh"]
        key = (kind.__name__, onp.shape(X) if X is not None else None, *W_xh.shape, W_xh.dtype.name)
        block = self._blocks.get(key)
        if block is None:
            block = kind() if kind is _ClipSGD else kind(W_xh.shape, W_xh.dtype.name)
            block.hybridize(static_alloc=True, static_shape=True)
            self._blocks[key] = block
        return block

    def _scalar(self, value: float, dtype: str) -> Any:
        key = (float(value), dtype)
        if key not in self._scalars:
            if len(self._scalars) >= 64:  # e.g. an lr schedule: do not grow without bound
                self._scalars.clear()
            # Shape (1,), not 0-d: _ClipSGD broadcasts it with legacy operators.
            self._scalars[key] = mnp.array([value], dtype=dtype, ctx=self._ctx)
        return self._scalars[key]

    def train_step(
        self, params: Params, X: onp.ndarray, Y: onp.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, Any, Any, State]:
        """One d2l training step; in ``mode="fast"`` three engine calls: loss, backward, clip+SGD.

        Nothing here waits for the device (no ``asnumpy()``/``item()``): MXNet's engine runs the
        queued work asynchronously, and the caller's ``float(loss)`` is the synchronisation point.
        """
        if self.mode == "eager":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        dtype = params["W_xh"].dtype.name
        weights = self._list(params)
        for w in weights:
            w.attach_grad()  # fresh buffers: every step's params are new arrays from _ClipSGD
        with autograd.record():
            loss, h = self._block(_Loss, params, X)(
                self._tokens(X, flat=False), self._tokens(Y), self._state(state, dtype), *weights
            )
        loss.backward()
        *new, norm = self._block(_ClipSGD, params)(
            self._scalar(lr, dtype), self._scalar(max_grad_norm, dtype), *weights, *(w.grad for w in weights)
        )
        # detach(): the state was recorded; the next step must not backpropagate into this graph.
        return dict(zip(PARAM_NAMES, new)), loss.detach(), norm, (h.detach(),)
