"""A zoo of translation bugs: realistic, subtle mistakes made when translating d2l between frameworks.

Each class is the NumPy oracle with exactly one thing changed, as a person porting the book's code
might get it wrong. The verdict must flag every one of them with the default command, e.g.

    python -m multirnn.compare --backends numpy,tests.zoo:ClipPerParameter

and never flag a correct backend. ``BUGS`` lists them with a one-line description (the README's
catch table is generated from a run over all of them, see ``tests/test_zoo.py``).
"""

from __future__ import annotations

import numpy as np

from multirnn.backends.numpy_backend import (
    NumpyBackend, Params, _gru_reset_after_backward, _gru_reset_after_forward, _lstm_backward, _lstm_forward,
)
from multirnn.ops import log_softmax, time_major_labels
from multirnn.params import PARAM_NAMES


def _norm(grads: Params) -> np.ndarray:
    return np.sqrt(sum(np.sum(g * g) for g in grads.values()))


def _rnn_states(be: NumpyBackend, params: Params, X: np.ndarray, state: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One-hot inputs (T, B, V) and hidden states (T + 1, B, H) of the tanh RNN, hs[0] the initial state."""
    inputs = be.one_hot(X, params["W_xh"].shape[0], params["W_xh"].dtype.name)
    hs = np.empty((inputs.shape[0] + 1, inputs.shape[1], params["W_hh"].shape[0]), dtype=params["W_hh"].dtype)
    hs[0] = state[0]
    for t in range(inputs.shape[0]):
        hs[t + 1] = np.tanh(inputs[t] @ params["W_xh"] + hs[t] @ params["W_hh"] + params["b_h"])
    return inputs, hs


class _Bug(NumpyBackend):
    """Base of the zoo: the oracle under another name (so it is never mistaken for the reference)."""

    name = "zoo"
    description = ""

    def version(self) -> str:
        return f"zoo ({type(self).__name__})"


# --- clipping --------------------------------------------------------------------------------------


class ClipPerParameter(_Bug):
    name = "clip-per-parameter"
    description = "each gradient clipped to θ by its own norm (torch's clip_grad_norm_ called per tensor)"

    def clip_gradients(self, grads, max_grad_norm):
        out = {}
        for k, g in grads.items():
            n = np.sqrt(np.sum(g * g))
            out[k] = g * np.asarray(max_grad_norm / n, g.dtype) if n > max_grad_norm else g
        return out, _norm(grads)


class ClipAlways(_Bug):
    name = "clip-always"
    description = "gradients rescaled to norm θ even when ‖g‖ ≤ θ (the `if` of d2l's grad_clipping dropped)"

    def clip_gradients(self, grads, max_grad_norm):
        norm = _norm(grads)
        scale = np.asarray(max_grad_norm / norm, norm.dtype)
        return {k: g * scale for k, g in grads.items()}, norm


class ClipForgetsOneParameter(_Bug):
    name = "clip-forgets-b_q"
    description = "a fused clip whose parameter list misses the output bias: b_q is never scaled"

    def clip_gradients(self, grads, max_grad_norm):
        norm = _norm(grads)
        if norm > max_grad_norm:
            scale = np.asarray(max_grad_norm / norm, norm.dtype)
            grads = {k: g if k == "b_q" else g * scale for k, g in grads.items()}
        return grads, norm


class ClipBySquaredNorm(_Bug):
    name = "clip-squared-norm"
    description = "the norm's square root forgotten: clipping compares and rescales by ‖g‖²"

    def clip_gradients(self, grads, max_grad_norm):
        norm2 = sum(np.sum(g * g) for g in grads.values())
        if norm2 > max_grad_norm:
            grads = {k: g * np.asarray(max_grad_norm / norm2, g.dtype) for k, g in grads.items()}
        return grads, norm2


# --- state rules -----------------------------------------------------------------------------------


class StateResetEveryMinibatch(_Bug):
    name = "state-reset-every-minibatch"
    description = "sequential partitioning that re-initialises the state for every minibatch"

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        return super().train_step(params, X, Y, (np.zeros_like(state[0]),), lr, max_grad_norm)


class StateCarriedAcrossResets(_Bug):
    name = "state-carried-across-resets"
    description = ("a stateful layer: init_state hands back the last state (carried into a new epoch, "
                   "and in random sampling into every minibatch)")

    _last = None

    def init_state(self, batch_size, num_hiddens, dtype="float32"):
        if self._last is not None and self._last.shape == (batch_size, num_hiddens) and self._last.dtype == dtype:
            return (self._last.copy(),)
        return super().init_state(batch_size, num_hiddens, dtype)

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        out = super().train_step(params, X, Y, state, lr, max_grad_norm)
        self._last = out[3][0]
        return out


class StateNotDetached(_Bug):
    name = "state-not-detached"
    description = "the carried state not detached: backpropagation runs on into the previous minibatch"

    _prev = None  # (the state handed out, the previous minibatch's one-hot inputs and hidden states)

    def loss_and_grads(self, params, X, Y, state):
        loss, grads, new_state = super().loss_and_grads(params, X, Y, state)
        prev = self._prev
        if prev is not None and state[0] is prev[0]:
            # the extra path: dL/dH_0 of this minibatch flows back through the previous one
            inputs, hs, d_h0 = prev[1], prev[2], self._d_h0(params, X, Y, state)
            d_next = d_h0
            for t in reversed(range(inputs.shape[0])):
                d_pre = d_next * (1 - hs[t + 1] ** 2)
                grads["W_xh"] = grads["W_xh"] + inputs[t].T @ d_pre
                grads["W_hh"] = grads["W_hh"] + hs[t].T @ d_pre
                grads["b_h"] = grads["b_h"] + d_pre.sum(axis=0)
                d_next = d_pre @ params["W_hh"].T
        inputs, hs = _rnn_states(self, params, X, state)
        self._prev = (new_state[0], inputs, hs)
        return loss, grads, new_state

    def _d_h0(self, params, X, Y, state):
        """dL/dH_0 of this minibatch, by the oracle's backward pass."""
        W_hh, W_hq = params["W_hh"], params["W_hq"]
        inputs, hs = _rnn_states(self, params, X, state)
        T, B, _ = inputs.shape
        logits = hs[1:].reshape(T * B, -1) @ W_hq + params["b_q"]
        y = time_major_labels(Y)
        d_logits = np.exp(log_softmax(logits))
        d_logits[np.arange(T * B), y] -= 1
        d_logits /= T * B
        d_hidden = (d_logits @ W_hq.T).reshape(T, B, -1)
        d_next = np.zeros_like(hs[0])
        for t in reversed(range(T)):
            d_next = ((d_hidden[t] + d_next) * (1 - hs[t + 1] ** 2)) @ W_hh.T
        return d_next


# --- parameters and updates -------------------------------------------------------------------------


class _Frozen(_Bug):
    """One parameter left out of the optimiser's parameter list: it never updates."""

    frozen = ""

    def sgd_step(self, params, grads, lr):
        for k in PARAM_NAMES:
            if k != self.frozen:
                params[k] -= np.asarray(lr, dtype=params[k].dtype) * grads[k]
        return params


class HiddenBiasFrozen(_Frozen):
    name = "hidden-bias-frozen"
    description = "b_h left out of the optimiser's parameter list: it never updates"
    frozen = "b_h"


class RecurrentWeightFrozen(_Frozen):
    name = "recurrent-weight-frozen"
    description = "W_hh left out of the optimiser's parameter list: it never updates"
    frozen = "W_hh"


class LrAppliedTwice(_Bug):
    name = "lr-applied-twice"
    description = "the gradient scaled by lr twice (once in a custom clip/step helper, once in SGD)"

    def sgd_step(self, params, grads, lr):
        for k in PARAM_NAMES:
            params[k] -= np.asarray(lr * lr, dtype=params[k].dtype) * grads[k]
        return params


class EvalForgetsOutputBias(_Bug):
    name = "eval-forgets-output-bias"
    description = ("the forward pass written a second time for evaluation and prediction (no gradients), without "
                   "b_q: training is right, validation perplexity and samples are not")

    def forward(self, params, X, state):
        return super().forward(dict(params, b_q=np.zeros_like(params["b_q"])), X, state)


# --- the model and the loss --------------------------------------------------------------------------


class _Forward(_Bug):
    """A bug in the forward pass, with the gradient autodiff would give for it (finite differences
    in tests/test_zoo.py check that these gradients are the buggy model's true gradients)."""

    def loss_and_grads(self, params, X, Y, state):
        inputs, hs, logits, y = self._forward_parts(params, X, Y, state)
        T, B, _ = inputs.shape
        loss, d_logits = self._loss(logits, y)
        hidden = hs[1:].reshape(T * B, -1)
        grads = {"W_hq": hidden.T @ d_logits, "b_q": self._b_q_factor * d_logits.sum(axis=0),
                 "W_xh": np.zeros_like(params["W_xh"]), "W_hh": np.zeros_like(params["W_hh"]),
                 "b_h": np.zeros_like(params["b_h"])}
        d_hidden = (d_logits @ params["W_hq"].T).reshape(T, B, -1)
        d_next = np.zeros_like(hs[0])
        W = self._recurrent(params)
        for t in self._backward_steps(T):
            d_pre = (d_hidden[t] + d_next) * (1 - hs[t + 1] ** 2)
            grads["W_xh"] += inputs[t].T @ d_pre
            grads["W_hh"] += self._recurrent_grad(hs[t], d_pre)
            grads["b_h"] += d_pre.sum(axis=0)
            d_next = d_pre @ W.T
        dtype = params["W_hh"].dtype
        return np.asarray(loss, dtype), {k: grads[k].astype(dtype, copy=False) for k in PARAM_NAMES}, (hs[-1].copy(),)

    _b_q_factor = 1

    def _inputs(self, X, vocab_size, dtype):
        return self.one_hot(X, vocab_size, dtype)

    def _labels(self, Y):
        return time_major_labels(Y)

    def _recurrent(self, params):
        return params["W_hh"]

    def _recurrent_grad(self, h_prev, d_pre):
        return h_prev.T @ d_pre

    def _backward_steps(self, T):
        return reversed(range(T))

    def _loss(self, logits, y):
        N = len(y)
        logp = log_softmax(logits)
        d_logits = np.exp(logp)
        d_logits[np.arange(N), y] -= 1
        return -logp[np.arange(N), y].mean(), d_logits / N

    def _forward_parts(self, params, X, Y, state):
        W_xh, b_h, W_hq, b_q = params["W_xh"], params["b_h"], params["W_hq"], params["b_q"]
        W = self._recurrent(params)
        inputs = self._inputs(X, W_xh.shape[0], W_xh.dtype.name)
        T, B = inputs.shape[:2]
        hs = np.empty((T + 1, B, W.shape[0]), dtype=W.dtype)
        hs[0] = state[0]
        for t in range(T):
            hs[t + 1] = np.tanh(inputs[t] @ W_xh + hs[t] @ W + b_h)
        logits = hs[1:].reshape(T * B, -1) @ W_hq + self._b_q_factor * b_q
        return inputs, hs, logits, self._labels(Y)

    def forward(self, params, X, state):
        _, hs, logits, _ = self._forward_parts(params, X, X, state)
        return logits, (hs[-1].copy(),)


class RecurrentWeightTransposed(_Forward):
    name = "W_hh-transposed"
    description = "H W_hhᵀ instead of H W_hh (a (H, H) matrix: every shape still checks out)"

    def _recurrent(self, params):
        return params["W_hh"].T

    def _recurrent_grad(self, h_prev, d_pre):
        return d_pre.T @ h_prev


class OutputBiasTwice(_Forward):
    name = "output-bias-twice"
    description = "b_q added twice (once by hand, once inside a Dense layer that kept its own bias)"
    _b_q_factor = 2


class LossSummed(_Forward):
    name = "loss-summed"
    description = "cross-entropy summed over tokens instead of averaged (reduction='sum')"

    def _loss(self, logits, y):
        loss, d_logits = super()._loss(logits, y)
        return loss * len(y), d_logits * len(y)


class TargetsShiftedByOne(_Forward):
    name = "targets-shifted"
    description = "labels taken one step too far ahead (Y[:, t + 1] for X[:, t])"

    def _labels(self, Y):
        return time_major_labels(np.concatenate([Y[:, 1:], Y[:, -1:]], axis=1))


class LabelsBatchMajor(_Forward):
    name = "labels-batch-major"
    description = "labels flattened batch-major (Y.reshape(-1)) against time-major logits (d2l uses Y.T.reshape(-1))"

    def _labels(self, Y):
        return np.asarray(Y).reshape(-1)


class InputsReshapedNotTransposed(_Forward):
    name = "inputs-reshaped"
    description = "one-hot inputs from X.reshape(steps, batch) instead of X.T (same shape, wrong order)"

    def _inputs(self, X, vocab_size, dtype):
        X = np.asarray(X)
        return self.one_hot(X.reshape(X.shape[1], X.shape[0]).T, vocab_size, dtype)


class SoftmaxOverWrongAxis(_Forward):
    name = "softmax-wrong-axis"
    description = "log-softmax over the token axis (axis 0) instead of the vocabulary axis"

    def _loss(self, logits, y):
        N = len(y)
        shifted = logits - logits.max(axis=0, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))
        counts = np.bincount(y, minlength=logits.shape[1]).astype(logits.dtype)
        d_logits = np.exp(logp) * counts[None, :]
        d_logits[np.arange(N), y] -= 1
        return -logp[np.arange(N), y].mean(), d_logits / N


class BackpropSkipsLastStep(_Forward):
    name = "bptt-skips-last-step"
    description = "an off-by-one in the backward loop: the last time step's gradient is never propagated"

    def _backward_steps(self, T):
        return reversed(range(T - 1))


# --- gated cells (run with --cell lstm / --cell gru) ------------------------------------------------


class _CellBug(_Bug):
    """A bug in one cell's step: the oracle's forward and backward step of ``cell`` replaced. The
    rest (stacking, loss, weight gradients) is the oracle's, so the model stays differentiable and
    the gradients are the buggy model's own (tests/test_zoo.py checks them by finite differences)."""

    cell = ""

    def __init__(self, device="cpu", mode="eager", model=None):
        super().__init__(device, mode, model)
        self._forward_step, self._backward_step = self._step, self._step_backward

    @classmethod
    def unsupported(cls, model):
        if model.cell.name != cls.cell:
            return f"this bug lives in the {cls.cell} cell (run it with --cell {cls.cell})"
        return None


def _swap_if(d: dict) -> dict:
    return {{"i": "f", "f": "i"}.get(k, k): v for k, v in d.items()}


class _SwappedLayer:
    def __init__(self, L):
        self.p = {{"W_hi": "W_hf", "W_hf": "W_hi"}.get(k, k): v for k, v in L.p.items()}


class LstmInputForgetSwapped(_CellBug):
    name = "lstm-input-forget-swapped"
    cell = "lstm"
    description = ("LSTM gate order mixed up when mapping torch's (i, f, g, o) blocks onto d2l's names: "
                   "the input gate computed with the forget gate's weights and vice versa")

    def _step(self, L, xp, state):
        return _lstm_forward(_SwappedLayer(L), _swap_if(xp), state)

    def _step_backward(self, L, cache, d_state):
        da, dr, d_prev = _lstm_backward(_SwappedLayer(L), cache, d_state)
        return _swap_if(da), _swap_if(dr), d_prev


class LstmForgetBiasOffset(_CellBug):
    name = "lstm-forget-bias-plus-one"
    cell = "lstm"
    description = ("Keras' unit_forget_bias carried into a hand-written step: 1 added to the forget gate's "
                   "pre-activation (d2l's LSTM has none)")

    def _step(self, L, xp, state):
        return _lstm_forward(L, {**xp, "f": xp["f"] + 1}, state)

    def _step_backward(self, L, cache, d_state):
        return _lstm_backward(L, cache, d_state)  # the constant changes f (in the cache), not the formula


class _AsResetAfter:
    """d2l's GRU layer seen as the reset-after one: the candidate's weights as W_hn, no b_hn."""

    def __init__(self, L):
        self.p = {**L.p, "W_hn": L.p["W_hh"], "b_hn": np.zeros_like(L.p["b_h"])}


class GruResetAfterMatmul(_CellBug):
    name = "gru-reset-after-matmul"
    cell = "gru"
    description = ("d2l's GRU with the reset gate applied on the wrong side of the recurrent matmul: "
                   "R ⊙ (H W_hh) instead of (R ⊙ H) W_hh (torch's formula, without its b_hn)")

    def _step(self, L, xp, state):
        return _gru_reset_after_forward(_AsResetAfter(L), {"z": xp["z"], "r": xp["r"], "n": xp["h"]}, state)

    def _step_backward(self, L, cache, d_state):
        da, dr, d_prev = _gru_reset_after_backward(_AsResetAfter(L), cache, d_state)
        rename = {"z": "z", "r": "r", "n": "h"}
        return {rename[g]: a for g, a in da.items()}, {rename[g]: a for g, a in dr.items()}, d_prev


BUGS: tuple[type[_Bug], ...] = (
    ClipPerParameter, ClipAlways, ClipForgetsOneParameter, ClipBySquaredNorm,
    StateResetEveryMinibatch, StateCarriedAcrossResets, StateNotDetached,
    HiddenBiasFrozen, LrAppliedTwice, EvalForgetsOutputBias,
    RecurrentWeightTransposed, OutputBiasTwice, LossSummed, TargetsShiftedByOne, LabelsBatchMajor,
    InputsReshapedNotTransposed, SoftmaxOverWrongAxis, BackpropSkipsLastStep,
)


# Bugs a small lr hides from probes at the run's own lr: float32 cannot resolve W_hh's update there (at --lr
# 1e-5 the rounding of the parameter was 340x the update), so the probes raise their lr (lockstep.probe_lr).
SMALL_LR_BUGS: tuple[type[_Bug], ...] = (RecurrentWeightFrozen,)

# The cell bugs, by the --cell their run needs.
CELL_BUGS: dict[str, tuple[type[_CellBug], ...]] = {
    "lstm": (LstmInputForgetSwapped, LstmForgetBiasOffset),
    "gru": (GruResetAfterMatmul,),
}


def spec(bug: type[_Bug]) -> str:
    """How to name the bug on the command line."""
    return f"{__name__}:{bug.__name__}"


# --- controls: correct translations under other names (they must never be flagged) -----------------


class OracleCopy(_Bug):
    name = "oracle-copy"
    description = "no bug: the oracle under another name"


class OracleCopy2(OracleCopy):
    name = "oracle-copy-2"


class OracleCopy3(OracleCopy):
    name = "oracle-copy-3"
