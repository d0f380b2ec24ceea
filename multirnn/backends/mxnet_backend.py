"""MXNet 1.9 backend, written against the NumPy interface (``mxnet.np`` / ``mxnet.npx``).

Two implementations of every model (cell x layers x biases, see :mod:`multirnn.cells`):

``MXNetBackend`` (d2l from scratch). ``mode="eager"`` is d2l's MXNet chapters almost line by
line: ``npx.one_hot`` inputs, each cell step as a Python loop over time steps (layer by layer for
stacked models), cross-entropy as logsumexp(o) - o[y], gradients from ``autograd.record()`` /
``backward()``, clipping and SGD as ``mx.np`` expressions on the device.
``mode="fast"`` replaces ``train_step`` and ``forward`` with hybridized Gluon blocks
(``static_alloc``/``static_shape``, compiled once per shapes and dtype). The tanh RNN, the LSTM and
the reset-after GRU, at any depth, run MXNet's fused ``RNN`` operator: the whole recurrence and
its backward pass are one operator each (oneDNN RNN primitives for float32 on CPU), the output
layer is one matmul over all time steps, and clipping plus SGD for all params is a second small
graph. Between steps ``train_step`` keeps those cells' params packed in the operator's layout
(:class:`PackedParams`: one flat vector per layer), so a step does not pack them and unpack their
gradients again; the other methods take packed params too and unpack them exactly. A step is three calls into MXNet's asynchronous engine (loss, backward, clip+SGD) and never
waits for the device. d2l's GRU applies the reset gate before the recurrent matmul, which no fused
kernel computes: it runs as its own unrolled graph (one gather for the first layer's inputs, one
GEMM for deeper layers' inputs over all steps, two GEMMs per step), differentiated by autograd.

Measured here (CPU, MXNet 1.9.1): a hand-unrolled BPTT graph (the oracle's algebra, one GEMM per
step) ran ~25% slower than the fused operator, whose per-step GEMMs are oneDNN's.

``MXNetLayersBackend`` (Gluon's own layers): ``gluon.rnn.RNN`` / ``LSTM`` / ``GRU`` with
``num_layers`` and ``gluon.nn.Dense``, d2l's weights mapped onto the layers' Parameters (see the
class). ``mode="eager"`` calls the model imperatively, as d2l's concise chapters do;
``mode="fast"`` compiles it once per input shape for all params of those shapes (:class:`_LayersGraph`) and fuses
clipping and SGD into one graph.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as onp

from .. import blas

# Keep MXNet's C++ logging quiet unless the user asked otherwise (setdefault respects their value).
# These must be set before the import: the library reads them once, when it loads.
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")  # "storage fallback" notices
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # oneDNN subgraph-partitioning banners

# mxnet 1.9.1 still reads ``numpy.bool``, an alias NumPy 1.24 removed. Restore it only if missing;
# look in the module dict, because ``hasattr(numpy, "bool")`` itself emits a FutureWarning on 1.2x.
if "bool" not in vars(onp):
    onp.bool = bool  # type: ignore[attr-defined]

# MXNet's own OpenBLAS copy (0.3.13) may not know this CPU and run generic kernels; its ``dot`` (the eager
# code's matmuls) runs on them: d2l's eager step took 1.3-1.6x longer so on an Emerald Rapids. The fused
# RNN operator (oneDNN) did not change. Name the core while it loads (multirnn.blas.core_named_while_loading).
_spec = importlib.util.find_spec("mxnet")
_OPENBLAS = Path(_spec.submodule_search_locations[0]) / "libopenblas.so.0" if _spec and _spec.submodule_search_locations \
    else None
with warnings.catch_warnings(), blas.core_named_while_loading(_OPENBLAS) as _named:
    # mxnet's import touches deprecated NumPy aliases; the warnings say nothing to our users.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    import mxnet as mx
    from mxnet import autograd, gluon, npx
    from mxnet import np as mnp

from ..cells import Model, layer_suffix
from ..errors import GPUUnavailableError
from ..params import check_dtype, validate_params
from . import layer_limits
from .base import Backend, State

# What MXNet's OpenBLAS runs, where multirnn named its core (reports show it): the core it ran, as it
# says (0.3.13 runs Haswell kernels when asked for SkylakeX), and the one it would have picked.
OPENBLAS_NAMED = {"detected": _named["detected"], "core": blas.loaded_core(_OPENBLAS) or _named["core"]} \
    if _named and _OPENBLAS else None

# NumPy semantics for the whole process: ``shape`` makes 0-d arrays (the mean loss, the gradient
# norm) legal -- legacy MXNet has no scalars -- and ``array`` makes Gluon trace hybrid blocks with
# ``mx.np`` symbols and makes autograd hand back ``mx.np`` arrays. The ``mx.np`` API needs both.
npx.set_np(shape=True, array=True)

Params = dict[str, Any]  # name -> mxnet.np.ndarray

# The fused RNN operator's (and Gluon's layers') mode and gate order, in d2l's gate letters: Gluon's
# GRU is r, z, n and its LSTM i, f, g, o, where d2l's LSTM candidate C̃ is ``c`` (rnn_impl.h).
FUSED: dict[str, tuple[str, tuple[str, ...]]] = {
    "rnn": ("rnn_tanh", ("h",)),
    "gru-reset-after": ("gru", ("r", "z", "n")),
    "lstm": ("lstm", ("i", "f", "c", "o")),
}


def _legacy(*arrays: Any) -> list:
    """``mx.np`` arrays or symbols -> legacy ones (a view change, no copy).

    The compiled blocks use legacy operators inside: on CPU several ``mx.np`` kernels are generic,
    index-computing loops, e.g. ``np.transpose`` is ~5x and ``np.dot``/``np.vdot`` of two vectors
    ~30x slower than legacy ``transpose`` / ``dot`` (BLAS). Results go back to ``mx.np`` at the edge.
    """
    return [a.as_nd_ndarray() for a in arrays]


def _stack_layers(F, model: Model, states: list) -> list:
    """Our flat state ``(H, C, H_l1, C_l1, ...)`` of ``(B, H)`` arrays -> a Gluon layer's
    ``[h0 (L, B, H)]`` or ``[h0, c0]``."""
    per = len(model.cell.state)
    if model.num_layers == 1:  # one layer: a free view, not a copy
        return [F.expand_dims(s, axis=0) for s in states]
    return [F.stack(*states[i::per], axis=0) for i in range(per)]


def _unstack_layers(F, model: Model, stacked: list) -> list:
    """The inverse of :func:`_stack_layers`: ``[h_T (L, B, H), c_T]`` -> our flat state."""
    if model.num_layers == 1:
        return [F.reshape(s, (-3, -2)) for s in stacked]
    split = [F.split(s, num_outputs=model.num_layers, axis=0, squeeze_axis=True) for s in stacked]
    return [parts[layer] for layer in range(model.num_layers) for parts in split]


def _output_layer(F, outputs, W_out, b_q, vocab_size: int):
    """The output layer of all steps at once: one matmul, not T. FullyConnected runs on oneDNN
    (dot on OpenBLAS was slower); it wants the weight as (out, in): ``W_out`` is W_hq transposed.

    The bias is added apart: FullyConnected's own bias gradient sums the N = T·B rows in a float32
    accumulator, and at N = 262,144 (d2l ed. 2, batch 8192) b_q's gradient was 1.6e-3 off its float64
    value (a sum growing to ~10^4 drops part of each small term), which put the step's gradient norm
    outside the verdict's band; broadcast_add's backward sum was 3e-8 off."""
    logits = F.FullyConnected(F.reshape(outputs, (-3, -2)), W_out, no_bias=True, num_hidden=vocab_size)
    return F.broadcast_add(logits, F.reshape(b_q, (1, -1)))


def _fused_layers(F, model: Model, num_hiddens: int, inputs, states: list, flats: list) -> tuple:
    """The fused ``RNN`` operator once per layer, each layer's outputs the next one's inputs:
    ``(top layer's outputs (T, B, H), the new flat state)``; ``flats`` holds each layer's weights in
    the operator's layout (:func:`_pack_layer`)."""
    mode, _ = FUSED[model.cell.name]
    per, new_states = len(model.cell.state), []
    for layer, flat in enumerate(flats):
        layer_states = [F.expand_dims(h, axis=0) for h in states[layer * per : (layer + 1) * per]]  # (1, B, H)
        out = F.RNN(inputs, flat, *layer_states, mode=mode, state_size=num_hiddens, num_layers=1, state_outputs=True)
        inputs = out[0]
        new_states += [F.reshape(out[i], (-3, -2)) for i in range(1, per + 1)]  # h_T (and c_T) (B, H)
    return inputs, new_states


def _layer_pieces(model: Model, layer: int) -> list[tuple[str, str | None, bool]]:
    """One layer's pieces of the fused operator's flat weight vector, in its order:
    ``(d2l name, or None for a zero second bias, transposed)``; see :func:`_fused_rnn`."""
    _, gates = FUSED[model.cell.name]
    s, names = layer_suffix(layer), set(model.param_names())
    pieces = [(f"W_{side}{g}{s}", True) for side in ("x", "h") for g in gates]
    pieces += [(f"b_{g}{s}", False) for g in gates]
    pieces += [(f"b_h{g}{s}", False) for g in gates]
    return [(name, name if name in names else None, t) for name, t in pieces]


def pack_params(model: Model, params: dict[str, onp.ndarray]) -> list[onp.ndarray]:
    """d2l's params (NumPy) -> the packed fast step's arrays: one flat vector per layer in the fused
    operator's layout, then ``W_hq^T`` (V, H) and ``b_q``. Only copies and transposes: exact."""
    H = params["W_hq"].shape[0]
    flats = [onp.concatenate([(params[key].T if t else params[key]).ravel() if key else
                              onp.zeros(H, params["W_hq"].dtype) for _, key, t in _layer_pieces(model, layer)])
             for layer in range(model.num_layers)]
    return [*flats, onp.ascontiguousarray(params["W_hq"].T), params["b_q"]]


def unpack_params(model: Model, arrays: list[onp.ndarray]) -> dict[str, onp.ndarray]:
    """The inverse of :func:`pack_params` (the zero second biases are dropped)."""
    *flats, W_out, b_q = arrays
    V, H = W_out.shape
    shapes, out = model.param_shapes(V, H), {"W_hq": onp.ascontiguousarray(W_out.T), "b_q": b_q}
    sizes = [sum(int(onp.prod(shapes[key])) if key else H for _, key, _ in _layer_pieces(model, layer))
             for layer in range(model.num_layers)]
    if [f.size for f in flats] != sizes:  # another model's packed params: a layer more or fewer, another cell
        raise ValueError(f"packed params hold {len(flats)} layer vector(s) of sizes {[f.size for f in flats]}, but "
                         f"{model.name} at V={V}, H={H} has {len(sizes)} of sizes {sizes}: params of another model")
    for layer, flat in enumerate(flats):
        at = 0
        for name, key, t in _layer_pieces(model, layer):
            shape = shapes[key] if key else (H,)
            n = int(onp.prod(shape))
            piece = flat[at : at + n]
            at += n
            if key:
                out[key] = onp.ascontiguousarray(piece.reshape(shape[::-1]).T if t else piece.reshape(shape))
    return {k: out[k] for k in model.param_names()}


def _fused_rnn(F, model: Model, shape: tuple[int, int], dtype: str, steps: int, x, states: list, p: dict):
    """The model through MXNet's fused ``RNN`` operator (what ``gluon.rnn.RNN`` / ``GRU`` / ``LSTM`` run).

    One operator per layer runs that layer's whole recurrence and, under autograd, its whole
    backward pass: oneDNN RNN primitives for float32 on CPU (cuDNN on GPU), MXNet's native kernel
    for float64. It wants a layer's weights as one flat vector ``[W_i2h (G*H, in), W_h2h (G*H, H),
    b_i2h, b_h2h]``, gate-stacked in the operator's gate order (:data:`FUSED`), i.e. d2l's weights
    transposed; packing them inside the graph makes autograd hand the gradients back in d2l's
    layout. ``b_h2h`` is the model's ``b_h{g}`` where it has one (two biases; the reset-after GRU's
    ``b_hn``), else zero (adding 0 is exact).

    Why not one operator with ``num_layers=L``: MXNet 1.9.1's native kernel (float64, or any
    build without oneDNN) then gets the lower layers' gradients wrong whenever the operator's input
    needs no gradient, as one-hot inputs do: ``rnn_impl.h`` passes the input's ``req_data`` to
    every layer, so an inner layer's ``dx`` (the ``dy`` of the layer below) is never computed.
    Chained per layer, every input above the first needs its gradient anyway.

    Args:
        F: ``mx.sym`` (hybridized) or ``mx.nd``; every array below is a legacy one.
        model: the cell and depth (not d2l's reset-before GRU, see :func:`_unrolled_gru`).
        shape: ``(vocab_size, num_hiddens)``.
        dtype: the params' dtype name.
        steps: unused (the unrolled graph's signature).
        x: time-major token ids ``(T, B)``; states: our flat state; p: the params by d2l name.

    Returns:
        ``(logits, states)``: ``(T * B, V)`` with rows time-major, and the new flat state.
    """
    vocab_size, num_hiddens = shape
    flats = []
    for layer in range(model.num_layers):
        zero = F.zeros_like(p[f"b_{FUSED[model.cell.name][1][0]}{layer_suffix(layer)}"])
        pieces = [(F.transpose(p[key]) if t else p[key]) if key else zero for _, key, t in _layer_pieces(model, layer)]
        # Pieces as (1, n) rows joined along axis 1, then flattened: the same bytes in the same order,
        # but MXNet's concat along axis 0 of 1-D arrays is slow (2.6 ms for these 1.1 MB against
        # 0.08 ms for a plain copy); this layout made the whole step 1.12x faster (benchmarks/PROFILES.md).
        flats.append(F.reshape(F.concat(*[F.reshape(w, (1, -1)) for w in pieces], dim=1), (-1,)))
    outputs, new_states = _fused_layers(F, model, num_hiddens, F.one_hot(x, vocab_size, dtype=dtype), states, flats)
    return _output_layer(F, outputs, F.transpose(p["W_hq"]), p["b_q"], vocab_size), new_states


def _unrolled_gru(F, model: Model, shape: tuple[int, int], dtype: str, steps: int, x, states: list, p: dict):
    """d2l's GRU (reset gate *before* the recurrent matmul) as one unrolled graph, layer by layer.

    No fused kernel computes this GRU (the RNN operator's, oneDNN's and cuDNN's are reset-after),
    so the recurrence is written out, ``steps`` steps deep (the block is built per sequence length):
    the input projections of all steps at once (a row gather of ``[W_xz | W_xr | W_xh]`` for the
    one-hot first layer, one GEMM for deeper layers), then per step one GEMM for both gates and one
    for the candidate. Every bias, including the second ones, adds to a pre-activation, so they are
    folded into the input projection. Autograd differentiates the graph (same signature as
    :func:`_fused_rnn`).
    """
    vocab_size, H = shape
    layer_inputs, new_states = None, []
    for layer in range(model.num_layers):
        s = layer_suffix(layer)

        def bias(g: str, s: str = s) -> Any:
            b = p[f"b_{g}{s}"]
            return b + p[f"b_h{g}{s}"] if f"b_h{g}{s}" in p else b

        W_x = F.concat(p[f"W_xz{s}"], p[f"W_xr{s}"], p[f"W_xh{s}"], dim=1)  # (inputs, 3H)
        b = F.concat(bias("z"), bias("r"), bias("h"), dim=0)
        if layer == 0:  # one-hot inputs: X_t W_x is row x_t of W_x
            # The bias is added to the (V, 3H) table before the gather, not to the (T, B, 3H) rows
            # after it: the same additions, but the bias gradient then sums 28 rows instead of
            # T*B = 1120 (MXNet's profiler put the backward segment holding that reduction at 23.5 ms
            # of a ~130 ms step; the step is 1.09x faster, `python -m benchmarks.probes ab mxnet DIR 10 gru`).
            proj = F.take(F.broadcast_add(W_x, b), x, axis=0)  # (T, B, 3H)
        else:
            proj = F.FullyConnected(F.reshape(layer_inputs, (-3, -2)), F.transpose(W_x), b, num_hidden=3 * H)
            proj = F.reshape(proj, (steps, -1, 3 * H))
        x_zr = F.split(F.slice_axis(proj, axis=2, begin=0, end=2 * H), num_outputs=steps, axis=0, squeeze_axis=True)
        x_h = F.split(F.slice_axis(proj, axis=2, begin=2 * H, end=3 * H), num_outputs=steps, axis=0, squeeze_axis=True)
        # FullyConnected (oneDNN for float32) wants its weights as (out, in): transposed once per call.
        W_zr = F.transpose(F.concat(p[f"W_hz{s}"], p[f"W_hr{s}"], dim=1))  # (2H, H)
        W_hh = F.transpose(p[f"W_hh{s}"])
        h, outputs = states[layer], []
        for t in range(steps):
            zr = F.sigmoid(x_zr[t] + F.FullyConnected(h, W_zr, no_bias=True, num_hidden=2 * H))
            z, r = F.split(zr, num_outputs=2, axis=1)
            h_tilde = F.tanh(x_h[t] + F.FullyConnected(r * h, W_hh, no_bias=True, num_hidden=H))
            h = z * h + (1 - z) * h_tilde
            outputs.append(h)
        new_states.append(h)
        layer_inputs = F.stack(*outputs, axis=0)  # (T, B, H)
    return _output_layer(F, layer_inputs, F.transpose(p["W_hq"]), p["b_q"], vocab_size), new_states


def _logsumexp(F: Any, logits: Any) -> Any:
    """Row-wise log-sum-exp, shifted by the row maximum; ``(N, V)`` -> ``(N,)``.

    Cross-entropy is ``logsumexp(o) - o[y]``. MXNet's own ``log_softmax`` operator (and so Gluon's
    ``SoftmaxCrossEntropyLoss``) is less exact in float32: on d2l ed.1 logits its mean loss is
    off by 3.7e-7 relative where this formula, like NumPy, is off by 2.4e-8, and training's
    chaotic dynamics amplify that into a 20x larger gap between MXNet's curve and the others'.
    """
    m = F.max(logits, axis=-1, keepdims=True)
    return F.reshape(m, (-1,)) + F.log(F.sum(F.exp(F.broadcast_sub(logits, m)), axis=-1))


def _mean_cross_entropy(F: Any, logits: Any, y: Any) -> Any:
    """``mean(logsumexp(o) - o[y])`` of legacy logits ``(N, V)`` and labels ``(N,)``, as a 0-d ``mx.np``."""
    loss = F.mean(_logsumexp(F, logits) - F.pick(logits, y, axis=-1))
    return F.np.reshape(loss.as_np_ndarray(), ())  # a 0-d loss, as in NumPy


class _Graph(gluon.HybridBlock):
    """The scratch model's compiled graph for ``mode="fast"``: logits or the mean loss, and the state."""

    def __init__(self, model: Model, shape: tuple[int, int], dtype: str, steps: int) -> None:
        super().__init__()
        self._model, self._shape, self._dtype, self._steps = model, shape, dtype, steps
        self._graph = _unrolled_gru if model.cell.name == "gru" else _fused_rnn
        self._num_states = len(model.state_names())

    def _run(self, F, x, args):
        x, *args = _legacy(x, *args)
        states, weights = args[: self._num_states], args[self._num_states :]
        p = dict(zip(self._model.param_names(), weights))
        return self._graph(F, self._model, self._shape, self._dtype, self._steps, x, states, p)


class _Loss(_Graph):
    """Mean cross-entropy of one minibatch (and the final state)."""

    def hybrid_forward(self, F, x, y, *args):
        logits, states = self._run(F, x, args)
        return (_mean_cross_entropy(F, logits, y.as_nd_ndarray()), *(s.as_np_ndarray() for s in states))


class _Forward(_Graph):
    """Logits and final state (no loss)."""

    def hybrid_forward(self, F, x, *args):
        logits, states = self._run(F, x, args)
        return (logits.as_np_ndarray(), *(s.as_np_ndarray() for s in states))


class _PackedLoss(gluon.HybridBlock):
    """:class:`_Loss` on the packed params (:class:`PackedParams`): ``(x, y, *states, *flats, W_hq^T,
    b_q)``; the graph packs nothing, so its gradients come back in the packed layout too."""

    def __init__(self, model: Model, shape: tuple[int, int], dtype: str) -> None:
        super().__init__()
        self._model, self._shape, self._dtype = model, shape, dtype
        self._num_states = len(model.state_names())

    def hybrid_forward(self, F, x, y, *args):
        x, y, *args = _legacy(x, y, *args)
        n, L = self._num_states, self._model.num_layers
        states, flats, (W_out, b_q) = args[:n], args[n : n + L], args[n + L :]
        V, H = self._shape
        outputs, new_states = _fused_layers(F, self._model, H, F.one_hot(x, V, dtype=self._dtype), states, flats)
        logits = _output_layer(F, outputs, W_out, b_q, V)
        return (_mean_cross_entropy(F, logits, y), *(s.as_np_ndarray() for s in new_states))


def _finite_theta(max_grad_norm: float, dtype: Any) -> float:
    """θ for θ / max(‖g‖, θ): an infinite θ (no clipping) is the dtype's largest number, which gives the scale 1
    where inf / inf gave NaN weights."""
    return min(float(max_grad_norm), float(onp.finfo(onp.dtype(dtype)).max))


def _clip(grads: dict[str, Any], max_grad_norm: float) -> tuple[dict[str, Any], Any]:
    """Eager clipping, both implementations': all on the device (d2l reads every norm back to the host).
    θ / max(‖g‖, θ) is exactly 1 at or below the bound, so grads stay bit-identical, and zero grads give no 0/0."""
    norm = mnp.sqrt(sum((g * g).sum() for g in grads.values()))
    theta = _finite_theta(max_grad_norm, next(iter(grads.values())).dtype)
    scale = theta / mnp.maximum(norm, theta)
    return {k: g * scale for k, g in grads.items()}, norm


class _ClipSGD(gluon.HybridBlock):
    """d2l's gradient clipping and SGD for all params in one graph: ``(lr, θ, *params, *grads,
    *masks)`` -> ``(*new params, norm)``; the first ``masked`` gradients are multiplied by their 0/1
    masks first (the packed layout's zero second biases: no gradient, no update, not in the norm).

    ``‖g‖²`` comes from BLAS dot products of flat views: ``sum(g * g)`` is a generic (slow)
    reduction kernel in MXNet 1.9 on CPU. θ / max(‖g‖, θ) is exactly 1 at or below the bound (so
    an unclipped step is bit-identical to plain SGD) and never 0/0 for zero gradients.
    """

    def __init__(self, masked: int = 0) -> None:
        super().__init__()
        self._masked = masked

    def hybrid_forward(self, F, lr, theta, *args):
        lr, theta, *args = _legacy(lr, theta, *args)
        if self._masked:
            masks, args = args[-self._masked :], args[: -self._masked]
        params, grads = args[: len(args) // 2], list(args[len(args) // 2 :])
        for i in range(self._masked):
            grads[i] = grads[i] * masks[i]
        norm = F.sqrt(F.add_n(*(F.dot(F.reshape(g, (-1,)), F.reshape(g, (-1,))) for g in grads)))
        norm = F.reshape(norm, (1,))
        scale = F.broadcast_div(theta, F.broadcast_maximum(norm, theta))
        # p - g * (lr * scale): one broadcast multiply per tensor, not two (MXNet's broadcast kernel
        # is slow: 10 of them took 0.7 ms per step); lr * scale rounds once, as in torch's fast step.
        step = F.broadcast_mul(lr, scale)
        new = [p - F.broadcast_mul(g, step) for p, g in zip(params, grads)]
        return (*(p.as_np_ndarray() for p in new), F.np.reshape(norm.as_np_ndarray(), ()))


class _MXNetBase(Backend):
    """What both implementations share: the device, conversions, one-hot inputs, the state."""

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
        self._scalars: dict[tuple, Any] = {}  # lr / θ as device arrays, made once per value

    def version(self) -> str:
        return mx.__version__

    def openblas_named(self) -> dict[str, str] | None:
        return OPENBLAS_NAMED

    def _output_layer_of(self, params: Any) -> tuple[int | None, int | None, str | None]:
        """V, H, dtype: packed params and Gluon's layers carry ``shape`` ``(V, H)`` and ``dtype``; d2l's dict,
        the base's rule."""
        if isinstance(params, (PackedParams, LayersParams)):
            return params.shape[0], params.shape[1], params.dtype
        return super()._output_layer_of(params)

    # --- conversion -------------------------------------------------------------------------
    def _array(self, x: Any, dtype: Any = None) -> Any:
        """A NumPy (or MXNet) array on this backend's device; MXNet arrays are not copied."""
        if isinstance(x, mnp.ndarray):
            return x if x.ctx == self._ctx else x.as_in_context(self._ctx)
        x = onp.asarray(x)
        # mx.np.array keeps a NumPy array's dtype (float64 stays float64); contiguity avoids a
        # strided copy path.
        return mnp.array(onp.ascontiguousarray(x, dtype=dtype), dtype=dtype or x.dtype, ctx=self._ctx)

    def as_numpy(self, x: Any) -> onp.ndarray:
        if isinstance(x, mnp.ndarray):
            return x.asnumpy()  # waits for the engine: this is the synchronisation point
        return onp.asarray(x)

    def _tokens(self, X: onp.ndarray, flat: bool = True) -> Any:
        """``(batch, steps)`` ints -> int32 on the device, time-major: ``(steps * batch,)`` or
        ``(steps, batch)``."""
        ids = onp.asarray(X).T
        return self._array(ids.reshape(-1) if flat else ids, dtype=onp.int32)

    def _state(self, state: State, dtype: str) -> tuple:
        """The state on the device (NumPy arrays are converted to the params' dtype)."""
        return tuple(self._array(s, dtype=None if isinstance(s, mnp.ndarray) else dtype) for s in state)

    def _theta(self, max_grad_norm: float, dtype: str) -> Any:
        """θ as the compiled clipping graphs take it (:meth:`_scalar`), an infinite one made finite."""
        return self._scalar(_finite_theta(max_grad_norm, dtype), dtype)

    def _scalar(self, value: float, dtype: str) -> Any:
        key = (float(value), dtype)
        if key not in self._scalars:
            if len(self._scalars) >= 64:  # e.g. an lr schedule: do not grow without bound
                self._scalars.clear()
            # Shape (1,), not 0-d: _ClipSGD broadcasts it with legacy operators.
            self._scalars[key] = mnp.array([value], dtype=dtype, ctx=self._ctx)
        return self._scalars[key]

    # --- the model --------------------------------------------------------------------------
    def one_hot(self, X: onp.ndarray, vocab_size: int, dtype: str = "float32") -> Any:
        X = onp.asarray(X)
        ids = self._array(X.T, dtype=onp.int32)  # (steps, batch)
        return npx.one_hot(ids, vocab_size, dtype=check_dtype(dtype))  # (steps, batch, vocab)

    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        dtype = check_dtype(dtype)
        return tuple(mnp.zeros((batch_size, num_hiddens), dtype=dtype, ctx=self._ctx) for _ in self.model.state_names())


# --- d2l's cell steps, as the book writes them (mode="eager"); p holds one layer's params by short name


def _gate(p: dict, g: str, X: Any, H: Any) -> Any:
    """``X W_x{g} + H W_h{g} + b_{g}``, plus the second bias ``b_h{g}`` when the model has one."""
    out = mnp.dot(X, p[f"W_x{g}"]) + mnp.dot(H, p[f"W_h{g}"]) + p[f"b_{g}"]
    return out + p[f"b_h{g}"] if f"b_h{g}" in p else out


def _rnn_step(p: dict, X: Any, state: tuple) -> tuple:
    (H,) = state
    return (mnp.tanh(_gate(p, "h", X, H)),)


def _gru_step(p: dict, X: Any, state: tuple) -> tuple:
    (H,) = state
    Z = npx.sigmoid(_gate(p, "z", X, H))
    R = npx.sigmoid(_gate(p, "r", X, H))
    H_tilde = mnp.dot(X, p["W_xh"]) + mnp.dot(R * H, p["W_hh"]) + p["b_h"]  # reset before the matmul
    H_tilde = mnp.tanh(H_tilde + p["b_hh"] if "b_hh" in p else H_tilde)
    return (Z * H + (1 - Z) * H_tilde,)


def _gru_reset_after_step(p: dict, X: Any, state: tuple) -> tuple:
    (H,) = state
    Z = npx.sigmoid(_gate(p, "z", X, H))
    R = npx.sigmoid(_gate(p, "r", X, H))
    N = mnp.tanh(mnp.dot(X, p["W_xn"]) + p["b_n"] + R * (mnp.dot(H, p["W_hn"]) + p["b_hn"]))  # reset after
    return (Z * H + (1 - Z) * N,)


def _lstm_step(p: dict, X: Any, state: tuple) -> tuple:
    H, C = state
    I, F, O = (npx.sigmoid(_gate(p, g, X, H)) for g in "ifo")
    C_tilde = mnp.tanh(_gate(p, "c", X, H))
    C = F * C + I * C_tilde
    return (O * mnp.tanh(C), C)


STEPS = {"rnn": _rnn_step, "gru": _gru_step, "gru-reset-after": _gru_reset_after_step, "lstm": _lstm_step}


class MXNetBackend(_MXNetBase):
    """The d2l model from scratch in MXNet 1.9 (``mxnet.np``); see the module docstring for the two modes.

    Every cell (``rnn``, d2l's ``gru``, ``gru-reset-after``, ``lstm``), any depth, one or two biases.

    Args:
        device: ``"cpu"`` or ``"gpu"`` (the first GPU MXNet sees).
        mode: ``"eager"`` (d2l-style) or ``"fast"`` (compiled ``train_step``/``forward``: the fused
            RNN operator, or an unrolled graph for d2l's GRU); ``loss_and_grads``,
            ``clip_gradients`` and ``sgd_step`` are the eager ones in both modes.
        model: the cell and layers (default: d2l's one-layer tanh RNN).

    Raises:
        GPUUnavailableError: ``device="gpu"`` but MXNet sees no GPU (e.g. a CPU-only build).
    """

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        self._names = self.model.param_names()
        self._step = STEPS[self.model.cell.name]
        # Compiled blocks, one per (kind, steps, batch, vocab, hidden, dtype): a CachedOp with
        # static_alloc/static_shape plans its memory for exactly one set of shapes.
        self._blocks: dict[tuple, gluon.HybridBlock] = {}
        self._packed_masks: dict[tuple, list] = {}  # (shape, dtype) -> per layer, see _masks

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return None  # every cell, any depth, one or two biases

    # --- conversion -------------------------------------------------------------------------
    def params_from_numpy(self, params: dict[str, onp.ndarray]) -> Params:
        validate_params(params, self.model)
        return {k: self._array(params[k]) for k in self._names}

    def params_to_numpy(self, params: Params | PackedParams) -> dict[str, onp.ndarray]:
        if isinstance(params, PackedParams):
            return unpack_params(self.model, [self.as_numpy(a) for a in params.arrays])
        return {k: self.as_numpy(params[k]) for k in self._names}

    def _dict(self, params: Params | PackedParams, fresh: bool = False) -> Params:
        """d2l's dict of params; packed ones are unpacked (exactly), once per packed params unless ``fresh``
        (a dict the caller will update in place must not be the cached one)."""
        if not isinstance(params, PackedParams):
            return params
        if fresh:
            return self.params_from_numpy(self.params_to_numpy(params))
        if params.unpacked is None:
            params.unpacked = self.params_from_numpy(self.params_to_numpy(params))
        return params.unpacked

    # --- the model --------------------------------------------------------------------------
    def _layer(self, params: Params, layer: int) -> dict:
        """One layer's params by d2l's short names (``W_xh_l1`` -> ``W_xh``)."""
        s = layer_suffix(layer)
        return {k[: len(k) - len(s)] if s else k: params[k] for k in self.model.layer_param_names(layer)}

    def _rnn(self, params: Params, X: onp.ndarray, state: State) -> tuple[Any, State]:
        """d2l's ``rnn``: one-hot inputs, a Python loop over time steps per layer (each layer's
        outputs are the next one's inputs), the output layer on the top layer's states."""
        W_hq, b_q = params["W_hq"], params["b_q"]
        inputs = self.one_hot(X, W_hq.shape[1], W_hq.dtype.name)  # (steps, batch, vocab)
        state = self._state(state, W_hq.dtype.name)
        per, new_state = len(self.model.cell.state), []
        for layer in range(self.model.num_layers):
            p, s = self._layer(params, layer), state[layer * per : (layer + 1) * per]
            outputs = []
            for X_t in inputs:  # X_t: (batch, inputs)
                s = self._step(p, X_t, s)
                outputs.append(s[0])
            new_state += s
            inputs = outputs
        logits = [mnp.dot(H, W_hq) + b_q for H in inputs]
        return mnp.concatenate(logits, axis=0), tuple(new_state)  # (steps * batch, vocab), rows time-major

    def forward(self, params: Params | PackedParams, X: onp.ndarray, state: State) -> tuple[Any, State]:
        params = self._dict(params)
        if self.mode == "eager":
            return self._rnn(params, X, state)
        block = self._block(_Forward, params, X)
        logits, *state = block(self._tokens(X, flat=False), *self._state(state, params["W_hq"].dtype.name),
                               *self._list(params))
        return logits, tuple(state)

    def loss_and_grads(self, params: Params | PackedParams, X: onp.ndarray, Y: onp.ndarray,
                       state: State) -> tuple[Any, Params, State]:
        params = self._dict(params)
        for p in params.values():
            # A fresh gradient buffer per call: grads returned earlier are never overwritten.
            p.attach_grad()
        y = self._tokens(Y)  # labels in the logits' time-major row order
        with autograd.record():
            logits, state = self._rnn(params, X, state)
            # d2l uses Gluon's SoftmaxCrossEntropyLoss; its log_softmax is less exact in float32
            # (see _logsumexp), so the same cross-entropy is written out: logsumexp(o) - o[y].
            m = logits.max(axis=-1, keepdims=True)
            lse = m[:, 0] + mnp.log(mnp.exp(logits - m).sum(axis=-1))
            loss = (lse - npx.pick(logits, y, axis=-1)).mean()  # keeps the params' dtype
        loss.backward()
        grads = {k: params[k].grad for k in self._names}
        return loss, grads, tuple(s.detach() for s in state)

    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, Any]:
        return _clip(grads, max_grad_norm)

    def sgd_step(self, params: Params | PackedParams, grads: Params, lr: float) -> Params:
        params = self._dict(params, fresh=True)
        for k in self._names:
            params[k] -= lr * grads[k]  # in place, as d2l's ``param[:] = param - lr * grad``
        return params

    # --- mode="fast" -------------------------------------------------------------------------
    def _list(self, params: Params) -> list:
        return [params[k] for k in self._names]

    def _block(self, kind: type, params: Params, X: onp.ndarray | None = None) -> gluon.HybridBlock:
        """The compiled ``kind`` block for these shapes and dtype, built and hybridized once."""
        W_hq = params["W_hq"]
        H, V = W_hq.shape
        key = (kind.__name__, onp.shape(X) if X is not None else None, V, H, W_hq.dtype.name)
        return self._compiled(key, lambda: kind() if kind is _ClipSGD else
                              kind(self.model, (V, H), W_hq.dtype.name, onp.shape(X)[1]))

    def train_step(
        self, params: Params, X: onp.ndarray, Y: onp.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, Any, Any, State]:
        """One d2l training step; in ``mode="fast"`` three engine calls: loss, backward, clip+SGD.

        Nothing here waits for the device (no ``asnumpy()``/``item()``): MXNet's engine runs the
        queued work asynchronously, and the caller's ``float(loss)`` is the synchronisation point.
        """
        if self.mode == "eager":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        if self.model.cell.name in FUSED:
            return self._packed_step(params, X, Y, state, lr, max_grad_norm)
        dtype = params["W_hq"].dtype.name
        weights = self._list(params)
        for w in weights:
            w.attach_grad()  # fresh buffers: every step's params are new arrays from _ClipSGD
        with autograd.record():
            loss, *state = self._block(_Loss, params, X)(
                self._tokens(X, flat=False), self._tokens(Y), *self._state(state, dtype), *weights
            )
        loss.backward()
        *new, norm = self._block(_ClipSGD, params)(
            self._scalar(lr, dtype), self._theta(max_grad_norm, dtype), *weights, *(w.grad for w in weights)
        )
        # detach(): the state was recorded; the next step must not backpropagate into this graph.
        return dict(zip(self._names, new)), loss.detach(), norm, tuple(s.detach() for s in state)


    def _packed_step(
        self, params: Params | PackedParams, X: onp.ndarray, Y: onp.ndarray, state: State, lr: float,
        max_grad_norm: float,
    ) -> tuple[PackedParams, Any, Any, State]:
        """:meth:`train_step` on params kept packed between steps (:class:`PackedParams`)."""
        if not isinstance(params, PackedParams):
            params = PackedParams([self._array(a) for a in pack_params(self.model, self.params_to_numpy(params))])
        weights, masks = params.arrays, self._masks(params)
        loss_block = self._compiled(("_PackedLoss", onp.shape(X), params.shape, params.dtype),
                                    lambda: _PackedLoss(self.model, params.shape, params.dtype))
        clip_block = self._compiled(("_ClipSGD", "packed", params.shape, params.dtype), lambda: _ClipSGD(len(masks)))
        for w in weights:
            w.attach_grad()  # fresh buffers: every step's params are new arrays from _ClipSGD
        with autograd.record():
            loss, *state = loss_block(self._tokens(X, flat=False), self._tokens(Y), *self._state(state, params.dtype),
                                      *weights)
        loss.backward()
        *new, norm = clip_block(self._scalar(lr, params.dtype), self._theta(max_grad_norm, params.dtype), *weights,
                                *(w.grad for w in weights), *masks)
        return PackedParams(new), loss.detach(), norm, tuple(s.detach() for s in state)

    def _masks(self, params: PackedParams) -> list:
        """Per layer, 1 for every element of the flat vector the model trains and 0 for its zero
        second biases (cached per shape and dtype)."""
        key = (params.shape, params.dtype)
        if key not in self._packed_masks:
            H, shapes = params.shape[1], self.model.param_shapes(*params.shape)
            self._packed_masks[key] = [
                self._array(onp.concatenate([onp.full(int(onp.prod(shapes[k])) if k else H, 1.0 if k else 0.0)
                                             for _, k, _ in _layer_pieces(self.model, layer)]), params.dtype)
                for layer in range(self.model.num_layers)]
        return self._packed_masks[key]

    def _compiled(self, key: tuple, make: Any) -> gluon.HybridBlock:
        """The block ``make()`` builds, hybridized once per ``key`` (kind, shapes, dtype)."""
        if key not in self._blocks:
            block = self._blocks[key] = make()
            block.hybridize(static_alloc=True, static_shape=True)
        return self._blocks[key]


class PackedParams:
    """The scratch fast step's params between steps, for the cells the fused operator runs: each
    layer's weights as the operator's one flat vector (``[W_x*^T, W_h*^T, b_*, b_h* or 0]``), then
    ``W_hq^T`` and ``b_q``, so a step packs nothing (packing them in the graph, and the gradients'
    way back, cost every step a concat, its backward and the transposes). The backend unpacks them
    exactly where d2l's dict is needed (``params_to_numpy``, ``forward``, the eager primitives).
    Never updated in place: every step makes new arrays."""

    def __init__(self, arrays: list) -> None:
        self.arrays = arrays
        self.shape: tuple[int, int] = tuple(arrays[-2].shape)  # (V, H)
        self.dtype: str = arrays[-1].dtype.name
        self.unpacked: Params | None = None  # d2l's dict, made once when first asked for


# --- Gluon's own layers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """One Gluon Parameter and the d2l params it holds, gate-stacked in Gluon's gate order.

    Gluon stores weights as ``(out, in)`` (d2l's transposed, ``transpose``); ``parts`` are the d2l
    names stacked along the gate axis, ``None`` for a slice held at zero (a second bias d2l lacks).
    """

    name: str  # "rnn.l0_i2h_weight", "dense.bias": the attribute path on the model
    parts: tuple[str | None, ...]
    transpose: bool

    @property
    def trained(self) -> bool:
        return any(self.parts)

    @property
    def masked(self) -> bool:
        """Partly trained: the reset-after GRU's ``h2h_bias`` without second biases holds only ``b_hn``."""
        return self.trained and None in self.parts

    def to_layer(self, params: dict[str, onp.ndarray], num_hiddens: int) -> onp.ndarray:
        """d2l's arrays -> this Parameter's value."""
        blocks = [params[n] if n else onp.zeros(num_hiddens, dtype=params["W_hq"].dtype) for n in self.parts]
        value = onp.concatenate(blocks, axis=-1)
        return onp.ascontiguousarray(value.T if self.transpose else value)

    def to_d2l(self, value: onp.ndarray) -> dict[str, onp.ndarray]:
        """This Parameter's value (or gradient) -> d2l's arrays (the zero slices dropped)."""
        value = value.T if self.transpose else value
        blocks = onp.split(value, len(self.parts), axis=-1)
        return {n: onp.ascontiguousarray(b) for n, b in zip(self.parts, blocks) if n}

    def shape(self) -> list[str]:
        """Symbolic shape, e.g. ``["4H", "V"]`` (V: vocabulary, H: hidden width)."""
        if self.name.startswith("dense."):
            return ["V", "H"] if self.transpose else ["V"]
        gates = f"{len(self.parts)}H" if len(self.parts) > 1 else "H"
        if not self.transpose:
            return [gates]
        return [gates, "V" if self.name == "rnn.l0_i2h_weight" else "H"]


def _slots(model: Model) -> list[_Slot]:
    """Where each d2l param lives in ``gluon.rnn.RNN/GRU/LSTM(num_layers=L)`` + ``gluon.nn.Dense``."""
    _, gates = FUSED[model.cell.name]
    hidden = model.hidden_bias_gates()
    slots = []
    for layer in range(model.num_layers):
        s, prefix = layer_suffix(layer), f"rnn.l{layer}_"
        slots += [
            _Slot(prefix + "i2h_weight", tuple(f"W_x{g}{s}" for g in gates), True),
            _Slot(prefix + "h2h_weight", tuple(f"W_h{g}{s}" for g in gates), True),
            _Slot(prefix + "i2h_bias", tuple(f"b_{g}{s}" for g in gates), False),
            # cuDNN's second bias: d2l's b_h{g} with two biases (and the reset-after GRU's b_hn), else 0
            _Slot(prefix + "h2h_bias", tuple(f"b_h{g}{s}" if g in hidden else None for g in gates), False),
        ]
    return slots + [_Slot("dense.weight", ("W_hq",), True), _Slot("dense.bias", ("b_q",), False)]


class _LayersLM(gluon.HybridBlock):
    """d2l's concise ``RNNModel`` from Gluon's layers: the recurrent layer (all ``num_layers`` in
    one) on one-hot inputs, ``Dense`` on every step's output; returns logits and our flat state.

    The layers are built in float32 and cast by the caller: under ``npx.set_np``, ``initialize()``
    of a float64 Gluon layer fails (``_npi_uniform`` "0-th output has invalid shape/type").
    """

    def __init__(self, model: Model, vocab_size: int, num_hiddens: int) -> None:
        super().__init__()
        self._model, self._vocab_size = model, vocab_size
        L, cell = model.num_layers, model.cell.name
        with self.name_scope():
            # input_size / in_units given: the shapes are known now, no deferred initialization,
            # so d2l's weights can be loaded before the first call. TNC: the one-hot is built from
            # X.T, so the outputs are already in d2l's time-major row order.
            if cell == "rnn":  # the layer's default activation is relu
                self.rnn = gluon.rnn.RNN(num_hiddens, L, activation="tanh", layout="TNC", input_size=vocab_size)
            elif cell == "lstm":
                self.rnn = gluon.rnn.LSTM(num_hiddens, L, layout="TNC", input_size=vocab_size)
            else:  # reset-after (rnn_impl.h: r ⊙ (h W_hn + b_hn))
                self.rnn = gluon.rnn.GRU(num_hiddens, L, layout="TNC", input_size=vocab_size)
            # flatten=False: one FullyConnected over the last axis of (T, B, H), all steps at once.
            self.dense = gluon.nn.Dense(vocab_size, flatten=False, in_units=num_hiddens)

    def hybrid_forward(self, F, X, *states):
        """``X``: one-hot inputs ``(T, B, V)`` (made by the caller, see ``MXNetLayersBackend._inputs``)."""
        return self.run(F, X, states)

    def run(self, F, X, states: tuple, weights: dict[str, Any] | None = None) -> tuple:
        """Logits and the new flat state. ``weights``: ``None`` calls the layers on their own Parameters
        (as d2l does); else ``{slot name: array}`` runs the same layers' code (their ``hybrid_forward``,
        which Gluon calls with its Parameters' arrays) on these, so one compiled graph serves every
        model of these shapes (:class:`_LayersGraph`)."""
        # The layer's state is [h (L, B, H)] (LSTM: [h, c]); ours is (H, C, H_l1, C_l1, ...) of (B, H).
        layer_states = [s.as_np_ndarray() for s in _stack_layers(F, self._model, _legacy(*states))]
        if weights is None:
            outputs, layer_states = self.rnn(X, layer_states)
            logits = self.dense(outputs)
        else:
            self.rnn.skip_states = False  # what calling the layer with states sets: return them too
            rnn = {name[len("rnn."):]: w for name, w in weights.items() if name.startswith("rnn.")}
            outputs, layer_states = self.rnn.hybrid_forward(F, X, layer_states, **rnn)
            logits = self.dense.hybrid_forward(F, outputs, weights["dense.weight"], weights["dense.bias"])
        logits = F.np.reshape(logits, (-1, self._vocab_size))  # (T * B, V), rows time-major
        return (logits, *(s.as_np_ndarray() for s in _unstack_layers(F, self._model, _legacy(*layer_states))))


class _LayersLoss(gluon.HybridBlock):
    """The model's mean cross-entropy (logsumexp(o) - o[y], see :func:`_logsumexp`) and new state."""

    def __init__(self, lm: _LayersLM) -> None:
        super().__init__()
        self.lm = lm

    def hybrid_forward(self, F, X, y, *states):
        logits, *states = self.lm(X, *states)
        return (_mean_cross_entropy(F, logits.as_nd_ndarray(), y.as_nd_ndarray()), *states)


class _LayersForward(gluon.HybridBlock):
    """The model's logits and new state (``mode="eager"``; the fast path's graph is :class:`_LayersGraph`)."""

    def __init__(self, lm: _LayersLM) -> None:
        super().__init__()
        self.lm = lm

    def hybrid_forward(self, F, X, *states):
        return self.lm(X, *states)


class _LayersGraph(gluon.HybridBlock):
    """Gluon's layers as one compiled graph (``mode="fast"``) with the weights as inputs:
    ``(X, [y,] *states, *weights)``, the weights in ``names`` order (every slot's Parameter, the frozen
    ones too) -> the mean loss (``loss``) or the logits, then the new state.

    One per backend, input shape, ``(V, H)`` and dtype, whichever params it runs, as the scratch fast
    path's graphs: a graph holding a model's own Parameters would be one more graph, compiled again with
    its own ``static_alloc`` memory, for every params object. The lockstep checks make several per
    checkpoint (``params_from_numpy``), and MXNet 1.9's Gluon blocks are freed only by Python's cyclic
    garbage collector (``_BlockScope`` holds its block: apache/mxnet#18328, reverted on 1.x by #19181),
    so their graphs' memory piled up: 0.65-1.1 GB per checkpoint for a 3-layer LSTM at batch 3120.
    ``template`` only lends its layers' code (:meth:`_LayersLM.run`); its own Parameters are never used.
    """

    def __init__(self, template: _LayersLM, names: list[str], loss: bool) -> None:
        super().__init__()
        self._run = template.run  # a bound method, not a child Block: its Parameters are not this graph's
        self._names, self._loss = names, loss

    def hybrid_forward(self, F, X, *args):
        y, args = (args[0], args[1:]) if self._loss else (None, args)
        n = len(self._names)
        logits, *states = self._run(F, X, args[:-n], dict(zip(self._names, args[-n:])))
        if self._loss:
            return (_mean_cross_entropy(F, logits.as_nd_ndarray(), y.as_nd_ndarray()), *states)
        return (logits, *states)


class LayersParams:
    """The layers implementation's params: the Gluon model whose Parameters hold them.

    ``params_to_numpy`` reads them out by d2l name; gradients and clipped gradients are plain dicts
    keyed like :attr:`parameters` (Gluon's layout).
    """

    def __init__(self, lm: _LayersLM, slots: list[_Slot]) -> None:
        self.lm = lm
        self.dtype: str = lm.dense.weight.data().dtype.name
        self.shape: tuple[int, int] = tuple(lm.dense.weight.shape)  # (V, H): Gluon's Dense holds W_hq^T
        self.parameters: dict[str, gluon.Parameter] = {s.name: _parameter(lm, s) for s in slots if s.trained}
        self.blocks: dict[str, gluon.HybridBlock] = {}  # mode="eager": the model's blocks, by kind

    def arrays(self) -> dict[str, Any]:
        return {k: p.data() for k, p in self.parameters.items()}


def _parameter(lm: _LayersLM, slot: _Slot) -> gluon.Parameter:
    child, attr = slot.name.split(".")
    return getattr(getattr(lm, child), attr)


class MXNetLayersBackend(_MXNetBase):
    """d2l's model from Gluon's own layers: ``gluon.rnn.RNN(activation="tanh")`` / ``LSTM`` /
    ``GRU`` (reset-after only) with ``num_layers``, and ``gluon.nn.Dense``.

    Mapping (per layer ``k``; Gluon stores ``(out, in)``, so weights go in transposed; gate order
    LSTM i, f, c, o and GRU r, z, n)::

        [W_x* ...]^T -> rnn.l{k}_i2h_weight (G*H, in)    [b_* ...]  -> rnn.l{k}_i2h_bias (G*H,)
        [W_h* ...]^T -> rnn.l{k}_h2h_weight (G*H, H)     [b_h* ...] -> rnn.l{k}_h2h_bias (G*H,)
        W_hq^T       -> dense.weight (V, H)               b_q        -> dense.bias (V,)

    The layer adds cuDNN's two biases ``b_i2h + b_h2h``; d2l has one. Without ``model.second_bias``
    the ``h2h_bias`` is held at zero and frozen (``grad_req="null"``: no gradient, no update, not
    in the clipping norm); training it would move the effective bias twice as fast as d2l's. The
    reset-after GRU's ``b_hn`` lives in that same Parameter (``h2h_bias[2H:]``), so there the
    Parameter is trained and the gradients of its ``b_hr``, ``b_hz`` slices are zeroed (masked)
    before clipping and SGD. With ``model.second_bias`` every ``h2h_bias`` is trained as d2l's ``b_h*``.

    Params are :class:`LayersParams` (the model holding them); ``train_step`` and ``sgd_step``
    update its Parameters in place, as an optimizer does. The update is SGD written out, not
    ``gluon.Trainer``: MXNet's SGD kernels take the learning rate as a C ``float``, which rounds
    e.g. 0.7 to 0.699999988 and would break float64 equality with the oracle.
    """

    impl = "layers"

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        super().__init__(device, mode, model)
        self._slots = _slots(self.model)
        self._trained = [s for s in self._slots if s.trained]
        self._masks: dict[tuple, Any] = {}  # (slot name, shape, dtype) -> 0/1 per element of a masked slot
        self._clip_blocks: dict[tuple, gluon.HybridBlock] = {}  # compiled clip+SGD, per (V, H) and dtype
        self._graphs: dict[tuple, _LayersGraph] = {}  # mode="fast": the model, per kind, input shape, (V, H), dtype
        self._templates: dict[tuple, _LayersLM] = {}  # (V, H) -> the layers whose code the graphs run
        self._warned: set[str] = set()  # dtypes whose known framework bug was said (params_from_numpy)

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        return layer_limits.layers_unsupported("mxnet", model)

    # --- the model and its params ---------------------------------------------------------------
    def _build(self, vocab_size: int, num_hiddens: int, dtype: str) -> _LayersLM:
        """The Gluon model, initialised by Gluon's own initialisers (global default
        ``Uniform(0.07)`` for weights, zeros for biases) and cast to ``dtype``."""
        lm = _LayersLM(self.model, vocab_size, num_hiddens)
        mapped = {id(_parameter(lm, s)) for s in self._slots}
        unmapped = [name for name, p in lm.collect_params().items() if id(p) not in mapped]
        if unmapped:  # another Gluon version with another layout must not pass silently
            raise ValueError(f"Gluon parameters not covered by the d2l mapping: {unmapped}")
        for slot in self._slots:
            if not slot.trained:
                _parameter(lm, slot).grad_req = "null"  # frozen: no gradient buffer, no update
        lm.initialize(ctx=self._ctx)  # in float32 (see _LayersLM), then cast
        if dtype != "float32":
            lm.cast(dtype)
        return lm

    def params_from_numpy(self, params: dict[str, onp.ndarray]) -> LayersParams:
        V, H, dtype = validate_params(params, self.model)
        issue = layer_limits.layers_known_issue("mxnet", self.model, dtype)
        if issue and dtype not in self._warned:  # once per backend and dtype (a run converts params often)
            # compare's verdict shows it (and a note names the bug); an API user would get wrong gradients silently
            self._warned.add(dtype)
            warnings.warn(f"MXNet's layer gives wrong gradients here: {issue}", RuntimeWarning, stacklevel=2)
        lm = self._build(V, H, dtype)
        for slot in self._slots:
            _parameter(lm, slot).set_data(self._array(slot.to_layer(params, H), dtype))
        return LayersParams(lm, self._slots)

    def _arrays(self, params: LayersParams | Params) -> Params:
        return params.arrays() if isinstance(params, LayersParams) else params

    def params_to_numpy(self, params: LayersParams | Params) -> dict[str, onp.ndarray]:
        """Params, or grads (a dict keyed like ``LayersParams.parameters``), by d2l name."""
        arrays, out = self._arrays(params), {}
        for slot in self._trained:
            out.update(slot.to_d2l(self.as_numpy(arrays[slot.name])))
        return {k: out[k] for k in self.model.param_names()}

    def default_params(self, vocab_size: int, num_hiddens: int, seed: int, dtype: str = "float32") -> dict[str, onp.ndarray]:
        """Gluon's initialisers (``initialize()``'s default ``Uniform(0.07)`` for every weight, zero
        biases), drawn after ``mx.random.seed(seed)`` (MXNet's global generator), by d2l name."""
        mx.random.seed(seed)
        return self.params_to_numpy(LayersParams(self._build(vocab_size, num_hiddens, check_dtype(dtype)), self._slots))

    def param_layout(self) -> dict[str, Any]:
        layout = {}
        for slot in self._slots:
            holds = " | ".join(n or "0" for n in slot.parts)
            holds = f"[{holds}]" if len(slot.parts) > 1 else holds
            holds += "^T" if slot.transpose else ""
            if not slot.trained:
                holds += " (frozen: grad_req='null')"
            elif slot.masked:
                holds += " (the 0 slices' gradients are masked: held at 0)"
            layout[slot.name] = {"shape": slot.shape(), "holds": holds}
        return layout

    def _mask(self, slot: _Slot, params: LayersParams) -> Any:
        key = (slot.name, params.parameters[slot.name].shape, params.dtype)
        if key not in self._masks:
            H = params.parameters[slot.name].shape[0] // len(slot.parts)
            mask = onp.repeat([1.0 if n else 0.0 for n in slot.parts], H)
            self._masks[key] = self._array(mask, params.dtype)
        return self._masks[key]

    def _model(self, params: LayersParams, kind: type, X: onp.ndarray, *inputs: Any) -> Any:
        """The model (``kind``: loss or forward) on ``inputs``. Eager: the params' own model called
        imperatively, as d2l's concise chapter does. Fast: one compiled graph per kind, input shape,
        ``(V, H)`` and dtype, shared by all params of those shapes (see :class:`_LayersGraph`), given
        the params' own Parameter arrays (their gradients land in those Parameters)."""
        if self.mode == "eager":
            block = params.blocks.get(kind.__name__)
            if block is None:
                block = params.blocks[kind.__name__] = kind(params.lm)
            return block(*inputs)
        key = (kind.__name__, onp.shape(X), params.shape, params.dtype)
        graph = self._graphs.get(key)
        if graph is None:
            if params.shape not in self._templates:
                V, H = params.shape
                self._templates[params.shape] = _LayersLM(self.model, V, H)  # never initialised: no arrays
            graph = self._graphs[key] = _LayersGraph(self._templates[params.shape], [s.name for s in self._slots],
                                                     loss=kind is _LayersLoss)
            graph.hybridize(static_alloc=True, static_shape=True)
        return graph(*inputs, *(_parameter(params.lm, s).data() for s in self._slots))

    # --- the primitives ---------------------------------------------------------------------------
    def _inputs(self, params: LayersParams, X: onp.ndarray, grad: bool = False) -> Any:
        """One-hot inputs ``(T, B, V)``; with ``grad`` and stacked layers, their (unused) gradient
        is requested: MXNet 1.9.1's native RNN kernel (float64; any dtype without oneDNN) gets
        the lower layers' gradients wrong when the input of a ``num_layers > 1`` call needs none
        (``rnn_impl.h`` passes the input's ``req_data`` to every layer, so an inner layer's ``dx``,
        the ``dy`` of the layer below, is never computed). It costs one small GEMM."""
        inputs = self.one_hot(X, params.parameters["dense.weight"].shape[0], params.dtype)
        if grad and self.model.num_layers > 1:
            inputs.attach_grad()
        return inputs

    def forward(self, params: LayersParams, X: onp.ndarray, state: State) -> tuple[Any, State]:
        logits, *state = self._model(params, _LayersForward, X, self._inputs(params, X),
                                     *self._state(state, params.dtype))
        return logits, tuple(state)

    def _backward(self, params: LayersParams, X: onp.ndarray, Y: onp.ndarray, state: State) -> tuple[Any, State]:
        """Loss and new state; the gradients land in the Parameters' buffers (masked slices zeroed)."""
        with autograd.record():
            loss, *state = self._model(params, _LayersLoss, X, self._inputs(params, X, grad=True), self._tokens(Y),
                                       *self._state(state, params.dtype))
        loss.backward()
        for slot in self._trained:
            if slot.masked:
                params.parameters[slot.name].grad()[:] *= self._mask(slot, params)
        return loss, tuple(s.detach() for s in state)

    def loss_and_grads(self, params: LayersParams, X: onp.ndarray, Y: onp.ndarray, state: State) -> tuple[Any, Params, State]:
        loss, state = self._backward(params, X, Y, state)
        # Copies: the next backward overwrites the Parameters' gradient buffers.
        return loss, {k: p.grad().copy() for k, p in params.parameters.items()}, state

    def clip_gradients(self, grads: LayersParams | Params, max_grad_norm: float) -> tuple[Params, Any]:
        return _clip(self._arrays(grads), max_grad_norm)

    def sgd_step(self, params: LayersParams, grads: LayersParams | Params, lr: float) -> LayersParams:
        grads = self._arrays(grads)
        for k, p in params.parameters.items():
            w = p.data()
            w -= lr * grads[k]  # in place in the Parameter, as an optimizer updates it
        return params

    def train_step(
        self, params: LayersParams, X: onp.ndarray, Y: onp.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[LayersParams, Any, Any, State]:
        """One d2l training step. ``mode="fast"``: the compiled model's loss and backward, then
        clipping and SGD of every trained Parameter in one compiled graph, copied back in place;
        nothing waits for the device."""
        if self.mode == "eager":
            return super().train_step(params, X, Y, state, lr, max_grad_norm)
        loss, state = self._backward(params, X, Y, state)
        weights = list(params.parameters.values())
        key = (params.parameters["dense.weight"].shape, params.dtype)  # (V, H): every weight's shape
        clip_sgd = self._clip_blocks.get(key)
        if clip_sgd is None:
            clip_sgd = self._clip_blocks[key] = _ClipSGD()
            clip_sgd.hybridize(static_alloc=True, static_shape=True)
        *new, norm = clip_sgd(self._scalar(lr, params.dtype), self._theta(max_grad_norm, params.dtype),
                              *(w.data() for w in weights), *(w.grad() for w in weights))
        for w, value in zip(weights, new):
            w.set_data(value)
        return params, loss.detach(), norm, state
