"""Baseline: the d2l character RNN trained with MXNet 1.9 Gluon's own RNN layer.

The recurrence is ``gluon.rnn.RNN(H, activation="tanh", layout="TNC")`` (the layer defaults to
ReLU) and the output layer is ``gluon.nn.Dense(V, flatten=False)``; the one-hot inputs, mean
cross-entropy over time-major logits, d2l's global-norm clipping and plain SGD are the same maths
as :mod:`multirnn.backends.numpy_backend`, in float32. The model and its loss are one hybridized
block (``static_alloc``/``static_shape``: a CachedOp whose memory is planned once per shape), so
a training step is four calls into MXNet's asynchronous engine (forward, backward, the clipping
scale, one fused SGD update of all weights) and never waits for the device.

Layer layout (MXNet 1.9): both layers compute ``x @ weight.T + bias`` with ``weight``
``(out, in)``, so d2l's weights go in transposed. The layer carries cuDNN's two biases::

    W_xh.T -> rnn.l0_i2h_weight (H, V)    b_h -> rnn.l0_i2h_bias (H,)
    W_hh.T -> rnn.l0_h2h_weight (H, H)    0   -> rnn.l0_h2h_bias (H,), frozen (grad_req="null")
    W_hq.T -> dense.weight      (V, H)    b_q -> dense.bias      (V,)

Used by ``benchmarks/bench_train.py`` (``--variants builtin``) through :func:`make_trainer`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The project's backend imports MXNet with its quirks handled (log silencing set before the import,
# the ``numpy.bool`` alias mxnet 1.9.1 still reads, deprecation warnings filtered) and switches on
# NumPy semantics (``npx.set_np``), so Gluon below makes ``mx.np`` parameters: reuse it.
from multirnn.backends.mxnet_backend import autograd, gluon, mx
from multirnn.backends.mxnet_backend import mnp
from multirnn.errors import GPUUnavailableError
from multirnn.params import PARAM_NAMES

DTYPE = "float32"


class _CharRNN(gluon.HybridBlock):
    """d2l's RNN language model from Gluon's built-in layers, returning its mean loss.

    Args:
        vocab_size: V, the one-hot input width and the number of output classes.
        num_hiddens: H, the hidden state's width.
    """

    def __init__(self, vocab_size: int, num_hiddens: int) -> None:
        super().__init__()
        self._vocab_size = vocab_size
        with self.name_scope():
            # input_size / in_units given: the shapes are known now, no deferred initialization,
            # so d2l's weights can be loaded before the first call. TNC: the one-hot is built from
            # X.T, so the outputs are already in d2l's time-major row order (no swapaxes).
            self.rnn = gluon.rnn.RNN(num_hiddens, activation="tanh", layout="TNC", input_size=vocab_size,
                                     dtype=DTYPE)
            # flatten=False: one FullyConnected over the last axis of (T, B, H), i.e. one GEMM for
            # all time steps.
            self.dense = gluon.nn.Dense(vocab_size, flatten=False, in_units=num_hiddens, dtype=DTYPE)

    def hybrid_forward(self, F, x, y, h0):  # noqa: N803  (Gluon's signature)
        """Mean cross-entropy and the final state.

        Args:
            F: ``mx.sym`` when hybridized (NumPy-semantics symbols), ``mx.nd`` otherwise.
            x: int32 tokens ``(T, B)``, time-major.
            y: int32 labels ``(T, B)``, time-major (d2l's ``Y.T``).
            h0: the layer's state ``(1, B, H)``.

        Returns:
            ``(0-d mean loss, h_T (1, B, H))``.
        """
        inputs = F.npx.one_hot(x, self._vocab_size, dtype=DTYPE)  # (T, B, V): X_t @ W_xh as d2l
        outputs, (h_T,) = self.rnn(inputs, [h0])  # the fused RNN operator: oneDNN on CPU
        logits = self.dense(outputs)  # (T, B, V)
        # Mean over all T * B tokens: the same as d2l's mean over the (T * B, V) time-major rows.
        loss = -F.np.mean(F.npx.pick(F.npx.log_softmax(logits, axis=-1), y, axis=-1))
        return loss, h_T


class _ClipLR(gluon.HybridBlock):
    """Per-weight learning rates ``lr * θ / max(‖g‖, θ)``: d2l's clipping folded into SGD's step.

    θ / max(‖g‖, θ) is exactly 1 at or below the bound and θ / ‖g‖ above it (d2l's rule; zero
    gradients give no 0/0). ``gluon.utils.clip_global_norm`` is not used: it reads the norm back
    to the host (``asnumpy``) and scales by θ / (‖g‖ + 1e-8).
    """

    def __init__(self, num_weights: int) -> None:
        super().__init__()
        self._num_weights = num_weights

    def hybrid_forward(self, F, lr, theta, *grads):
        # Legacy operators (zero-copy views): ‖g‖² as BLAS dot products of flat views, where
        # mx.np's generic reductions are slow on CPU in 1.9. (contrib multi_sum_sq would be one
        # kernel, but it registers no gradient, and a hybridized CachedOp refuses to build then.)
        lr, theta, *grads = (a.as_nd_ndarray() for a in (lr, theta, *grads))
        norm = F.sqrt(F.add_n(*(F.dot(F.reshape(g, (-1,)), F.reshape(g, (-1,))) for g in grads)))
        scale = F.broadcast_div(theta, F.broadcast_maximum(F.reshape(norm, (1,)), theta))
        return F.broadcast_to(F.broadcast_mul(lr, scale), (self._num_weights,)).as_np_ndarray()


class Trainer:
    """Trains Gluon ``rnn.RNN`` + ``nn.Dense`` with a hybridized model and a fused SGD update.

    Args:
        params: d2l's parameter dict (``W_xh`` ``(V, H)``, ``W_hh``, ``b_h``, ``W_hq``, ``b_q``);
            copied (transposed, cast to float32) into the layers' parameters.
        lr: SGD learning rate.
        max_grad_norm: θ of d2l's gradient clipping.
        device: ``"cpu"`` or ``"gpu"``.

    Raises:
        GPUUnavailableError: ``device="gpu"`` but MXNet sees no GPU.
        ValueError: unknown ``device``, or the params' shapes do not fit the layers.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float, max_grad_norm: float, device: str = "cpu") -> None:
        self.framework_version = f"mxnet {mx.__version__}"
        self._ctx = _context(device)
        V, H = np.shape(params["W_xh"])
        self.vocab_size, self.num_hiddens = int(V), int(H)

        self._net = _CharRNN(self.vocab_size, self.num_hiddens)
        rnn, dense = self._net.rnn, self._net.dense
        # name -> (Gluon parameter, whether d2l's array goes in transposed)
        self._map = {
            "W_xh": (rnn.l0_i2h_weight, True),
            "W_hh": (rnn.l0_h2h_weight, True),
            "b_h": (rnn.l0_i2h_bias, False),
            "W_hq": (dense.weight, True),
            "b_q": (dense.bias, False),
        }
        # d2l has one bias; the layer adds two (b_i2h + b_h2h). b_h goes into i2h_bias and h2h_bias
        # is held at zero (adding 0 is exact). Both biases get the same gradient, so training both
        # would move the effective bias b_i2h + b_h2h twice as fast as d2l's: h2h_bias is frozen.
        self._frozen = rnn.l0_h2h_bias
        self._frozen.grad_req = "null"
        mapped = {id(p) for p, _ in self._map.values()} | {id(self._frozen)}
        unmapped = [name for name, p in self._net.collect_params().items() if id(p) not in mapped]
        if unmapped:  # another Gluon version with another layout must not pass silently
            raise ValueError(f"Gluon parameters not covered by the d2l mapping: {unmapped}")

        self._net.initialize(ctx=self._ctx)  # shapes are known: allocates now (values replaced below)
        for name in PARAM_NAMES:
            param, transpose = self._map[name]
            value = np.asarray(params[name], dtype=np.float32)
            value = np.ascontiguousarray(value.T if transpose else value)
            if value.shape != param.shape:
                raise ValueError(f"{name} has shape {np.shape(params[name])}, but the layer expects "
                                 f"{param.shape}{' (transposed)' if transpose else ''}.")
            param.set_data(mnp.array(value, dtype=DTYPE, ctx=self._ctx))
        self._frozen.set_data(mnp.zeros(self._frozen.shape, dtype=DTYPE, ctx=self._ctx))
        # One CachedOp per input shape, memory planned once; the same block serves loss() (no
        # autograd recording) and train_step().
        self._net.hybridize(static_alloc=True, static_shape=True)

        # The trained weights' and gradients' buffers, fixed for the trainer's life: the update
        # below writes into the weights in place, and backward into the gradient buffers.
        self._weights = [self._map[k][0].data(self._ctx) for k in PARAM_NAMES]
        self._grads = [self._map[k][0].grad(self._ctx) for k in PARAM_NAMES]
        self._weights_nd = [w.as_nd_ndarray() for w in self._weights]  # views: same memory
        self._grads_nd = [g.as_nd_ndarray() for g in self._grads]
        self._clip_lr = _ClipLR(len(PARAM_NAMES))
        self._clip_lr.hybridize(static_alloc=True, static_shape=True)
        # lr and θ as device arrays, once: the per-step learning rates are computed on the device.
        self._lr = mnp.array([lr], dtype=DTYPE, ctx=self._ctx)
        self._theta = mnp.array([max_grad_norm], dtype=DTYPE, ctx=self._ctx)
        self._wds = mx.nd.zeros((len(PARAM_NAMES),), ctx=self._ctx, dtype=DTYPE)  # plain SGD: no decay
        # Interleaved (w_1, g_1, ..., w_n, g_n), the fused update's operand order.
        self._update_args = [a for pair in zip(self._weights_nd, self._grads_nd) for a in pair]

    # --- conversion -----------------------------------------------------------------------------
    def _tokens(self, X: np.ndarray) -> Any:
        """``(B, T)`` ints -> int32 ``(T, B)`` on the device (time-major, the layer's TNC)."""
        return mnp.array(np.ascontiguousarray(np.asarray(X, dtype=np.int32).T), dtype=np.int32, ctx=self._ctx)

    def _state(self, state: Any) -> Any:
        """The layer's state ``[h (1, B, H)]`` -> ``h`` on the device (also takes NumPy ``(B, H)``)."""
        h = state[0] if isinstance(state, (list, tuple)) else state
        if not isinstance(h, mnp.ndarray):
            h = np.asarray(h, dtype=np.float32)
            h = mnp.array(h.reshape(1, *h.shape[-2:]), dtype=DTYPE, ctx=self._ctx)
        return h if h.ctx == self._ctx else h.as_in_context(self._ctx)

    def params_to_numpy(self) -> dict[str, np.ndarray]:
        """The current weights as d2l's dict ``W_xh W_hh b_h W_hq b_q`` (float32 copies)."""
        out = {}
        for name in PARAM_NAMES:
            param, transpose = self._map[name]
            value = param.data(self._ctx).asnumpy()  # waits for the engine
            out[name] = np.ascontiguousarray(value.T if transpose else value)
        return out

    # --- training -------------------------------------------------------------------------------
    def state_to_numpy(self, state: Any) -> np.ndarray:
        """The layer's ``[h (1, batch, hidden)]`` state as NumPy ``(batch, hidden)``."""
        return state[0].asnumpy()[0]

    def init_state(self, batch_size: int) -> Any:
        """Zeros in the layer's own format: a list of one ``(num_layers=1, batch_size, H)`` array."""
        return self._net.rnn.begin_state(batch_size, ctx=self._ctx, dtype=DTYPE)

    def loss(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[float, Any]:
        """Forward only.

        Args:
            X: int tokens ``(B, T)``.
            Y: int labels ``(B, T)``.
            state: the layer's state ``[h (1, B, H)]`` (or a NumPy ``(B, H)`` array).

        Returns:
            ``(mean cross-entropy as a Python float, new state [h (1, B, H)])``.
        """
        loss, h = self._net(self._tokens(X), self._tokens(Y), self._state(state))
        return float(loss), [h]

    def train_step(self, X: np.ndarray, Y: np.ndarray, state: Any) -> tuple[Any, Any]:
        """One SGD step on the minibatch ``X``, ``Y`` (int ``(B, T)``), starting from ``state``.

        Nothing here waits for the device (no ``asnumpy()``/``item()``): the caller's
        ``float(loss)`` is the synchronisation point.

        Returns:
            ``(0-d mx.np loss, not synchronised; detached new state [h (1, B, H)])``.
        """
        x, y, h0 = self._tokens(X), self._tokens(Y), self._state(state)
        with autograd.record():
            loss, h = self._net(x, y, h0)
        loss.backward()  # grad_req="write": overwrites the gradient buffers
        lrs = self._clip_lr(self._lr, self._theta, *self._grads)  # (5,) lr * clipping scale
        # w -= lrs[i] * g for all five weights in one fused kernel, in place in the Parameters.
        # (lr * scale) * g instead of d2l's lr * (g * scale): equal up to float32 rounding.
        mx.nd.preloaded_multi_sgd_update(
            *self._update_args, lrs.as_nd_ndarray(), self._wds, num_weights=len(PARAM_NAMES),
            out=self._weights_nd,
        )
        # detach(): the next step must not backpropagate into this step's graph.
        return loss.detach(), [h.detach()]


def _context(device: str) -> Any:
    if device == "gpu":
        if mx.context.num_gpus() == 0:
            raise GPUUnavailableError(
                "device='gpu' was requested, but MXNet sees no GPU (this mxnet build or machine has no CUDA "
                "device). Install a CUDA build of mxnet on a GPU machine, or use device='cpu'."
            )
        return mx.gpu(0)
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}.")
    return mx.cpu()


def make_trainer(params: dict[str, np.ndarray], lr: float, max_grad_norm: float, device: str = "cpu") -> Trainer:
    """A :class:`Trainer` starting from d2l's ``params`` (see :class:`Trainer` for the arguments)."""
    return Trainer(params, lr, max_grad_norm, device)
