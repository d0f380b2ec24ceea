"""The backend contract: the d2l RNN-from-scratch primitives, once per framework.

What goes in and what comes out:

* **Params** enter as a dict of NumPy arrays through ``params_from_numpy`` (validated with
  :func:`multirnn.params.validate_params`, then copied); after that they are the backend's own
  objects, in the structure it chooses. **Grads** share that structure: ``params_from_numpy`` and
  ``params_to_numpy`` must convert them too (the conformance suite builds the gradients it clips
  and applies that way).
* **Inputs** ``X`` and labels ``Y`` are always NumPy int arrays ``(batch, steps)``.
* **State** is a tuple with one ``(batch, hiddens)`` array per entry of
  ``model.state_names()``, in the params' dtype. Every method that takes a state (``forward``,
  ``loss_and_grads``, ``train_step``, ``evaluate_loss``) gets either what this backend itself
  returned (from ``init_state`` or an earlier call: the harness carries it from step to step
  without a host round trip) or plain NumPy arrays (the conformance suite starts from a random
  non-zero NumPy state to compare with the oracle, and ``run_conformance`` fails a backend that
  cannot take one). So convert each entry on the way in (``torch.as_tensor``, ``jnp.asarray``);
  the state a method returns may stay a framework object.
* **Outputs** (logits, grads, state, scalars) may stay framework objects, so a backend decides where
  and when it synchronises with the host; ``as_numpy`` and ``params_to_numpy`` bring NumPy back.
  Scalars (loss, gradient norm) are 0-d, in the params' dtype; ``float(x)`` must work on them.
* Callers use only the params and state a method returns: a backend may update or reuse (donate)
  the ones it was given. It must never modify the NumPy arrays it is given (the harness converts
  the same checkpoint's params more than once).

A subclass implements the abstract methods below; ``train_step`` and ``evaluate_loss`` have
composed defaults. Models other than the one-layer tanh RNN also need :meth:`Backend.unsupported`
overridden. ``multirnn.testing.run_conformance`` checks all of this against the NumPy oracle.
"""

from __future__ import annotations

import abc
import functools
import math
import numbers
from typing import Any, ClassVar

import numpy as np

from ..cells import RNN, Model
from ..errors import UnsupportedModelError
from ..ops import cross_entropy
from ..params import check_model

Params = Any  # a dict keyed by the model's d2l names (W_xh, W_hh, b_h, W_hq, b_q for the tanh RNN)
State = tuple  # one array per entry of model.state_names(): (H,) for one tanh layer, (H, C, H_l1, C_l1)...
DEVICES = ("cpu", "gpu")
MODES = ("eager", "fast")
IMPLS = ("scratch", "layers")


class Backend(abc.ABC):
    """One framework's version of the RNN-from-scratch primitives (the contract: this module's docstring).

    Args:
        device: ``"cpu"`` (default) or ``"gpu"``; a GPU that is not there raises
            :class:`multirnn.GPUUnavailableError`, never a silent fallback.
        mode: ``"eager"`` composes the primitives one by one, as d2l writes them (readable);
            ``"fast"`` lets the backend fuse or compile ``train_step`` (same maths, same results).
        model: the cell and layers to compute, a :class:`multirnn.Model` (default: d2l's one-layer
            tanh RNN; ``Model("lstm", num_layers=2)``, ``TrainConfig.model``); anything else is a
            TypeError. One the class cannot compute raises :class:`multirnn.UnsupportedModelError`
            with the reason.
    """

    name: ClassVar[str]  # the id used by get_backend and in messages, e.g. "torch"; default: the class name
    framework: ClassVar[str]  # the framework's import name, e.g. "torch"
    impl: ClassVar[str] = "scratch"  # "scratch" (d2l from scratch) or "layers" (the framework's own RNN layer)

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        if device not in DEVICES:
            raise ValueError(f"Unknown device {device!r}; expected one of {list(DEVICES)}.")
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {list(MODES)}.")
        # Checked here, not where a subclass first reads it: a str fails there as an AttributeError.
        self.model = RNN if model is None else check_model(model)
        self.device = device
        self.mode = mode
        reason = self.unsupported(self.model)
        if reason is not None:
            raise UnsupportedModelError(f"{type(self).__name__} cannot compute {self.model.name}: {reason}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Messages (e.g. a diverged run's) name backend.name: a third-party class need not set it.
        if not isinstance(getattr(cls, "name", None), str):
            cls.name = cls.__name__
        # Every implementation's entry points check their inputs the same way: labels of another shape,
        # negative ids or a non-positive clipping bound were silently wrong numbers in some backends.
        for method, check in _CHECKS.items():
            if method in cls.__dict__ and not getattr(cls.__dict__[method], "_checks_inputs", False):
                setattr(cls, method, _checking(cls.__dict__[method], check, _SCALARS.get(method)))

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        """Why this implementation cannot compute ``model``, or None if it can (the default: only
        the one-layer tanh RNN, the contract's original model).

        Override it to accept GRU, LSTM or deep models (``model.cell.name``, ``model.num_layers``,
        ``model.second_bias``); ``compare`` reports a model refused here as an ``unsupported`` row.
        """
        return None if model == RNN else "only the one-layer tanh RNN is implemented here"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, mode={self.mode!r}, model={self.model.name!r})"

    # --- conversion -------------------------------------------------------------------------
    @abc.abstractmethod
    def version(self) -> str:
        """The framework's version string."""

    def openblas_named(self) -> dict[str, str] | None:
        """``{"detected": ..., "core": ...}`` where this backend named the kernels of its framework's own
        OpenBLAS copy (:func:`multirnn.blas.core_named_while_loading`), for reports; else None."""
        return None

    @abc.abstractmethod
    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        """Copy NumPy params (or grads) to the framework; the dtype (float32/float64) is kept.

        Call :func:`multirnn.params.validate_params` ``(params, self.model)`` first: a wrong dict
        must be a ValueError/TypeError naming what is wrong (e.g. ``missing ['b_q']``), not an
        error inside the framework; the conformance suite checks those words.
        """

    @abc.abstractmethod
    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        """Copy params (or grads, which share their structure) back to NumPy, exactly."""

    @abc.abstractmethod
    def as_numpy(self, x: Any) -> np.ndarray:
        """One array or scalar this backend returned (logits, a state entry, the loss) as NumPy."""

    # --- the model --------------------------------------------------------------------------
    @abc.abstractmethod
    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> Any:
        """``X`` int ``(batch, steps)`` -> ``(steps, batch, vocab_size)`` float, time-major."""

    @abc.abstractmethod
    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        """Zeros ``(batch_size, num_hiddens)``, one per entry of ``self.model.state_names()``
        (``(H,)`` for the tanh RNN), as this backend's own arrays (or NumPy)."""

    @abc.abstractmethod
    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[Any, State]:
        """Run the recurrence over ``X`` ``(batch, steps)`` from ``state``.

        ``state`` is what this backend returned or a tuple of NumPy arrays (module docstring).

        Returns:
            ``(logits, new_state)``: logits ``(steps * batch, vocab)``, rows time-major.
        """

    @abc.abstractmethod
    def loss_and_grads(self, params: Params, X: np.ndarray, Y: np.ndarray, state: State) -> tuple[Any, Params, State]:
        """Mean cross-entropy over all ``steps * batch`` tokens and its gradients.

        ``state`` is what this backend returned or a tuple of NumPy arrays (module docstring);
        no gradient flows into it.

        Returns:
            ``(loss, grads, new_state)``; ``grads`` has the params' structure and ``new_state``
            is detached from the graph (sequential partitioning carries it on).
        """

    @abc.abstractmethod
    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, Any]:
        """d2l's rule: scale every gradient by θ/‖g‖ only when the global L2 norm ‖g‖ > θ.

        ``grads`` come from ``loss_and_grads`` or ``params_from_numpy``.

        Returns:
            ``(clipped grads, global norm before clipping)``; below θ the grads are unchanged
            bit for bit, and zero grads give norm 0 (no NaN).
        """

    @abc.abstractmethod
    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        """``p <- p - lr * g`` for every parameter (in place where the framework allows); returns the params."""

    # --- optional: what a framework's own layer brings ----------------------------------------
    def default_params(self, vocab_size: int, num_hiddens: int, seed: int, dtype: str = "float32") -> dict[str, np.ndarray] | None:
        """Initial weights from the framework's own initialisers (``--init framework``), by d2l
        name; ``None`` (the default, and every scratch backend) means d2l's: N(0, 0.01^2), zeros."""
        return None

    def param_layout(self) -> dict[str, Any] | None:
        """How the framework's own parameters hold the d2l ones (layers implementations): e.g.
        ``{"rnn.weight_ih_l0": {"shape": [H, V], "holds": "W_xh^T"}, ...}``; ``None`` for scratch
        backends, whose parameters are the d2l ones."""
        return None

    def _output_layer_of(self, params: Params) -> tuple[int | None, int | None, str | None]:
        """``(V, H, dtype name)`` read off the params without converting them (the input checks use them), in a
        dict by d2l names: vectors only, whose length is the same in any layout (a weight's axes are in d2l's
        order only in d2l's: a third-party backend may hold W_hq as (V, H)): V from ``b_q``, H from any other
        bias, the dtype from ``b_q``; None for what cannot be read, and nothing is checked against it. A backend
        with params of another form overrides it."""
        if not isinstance(params, dict):
            return None, None, None
        b_q = params.get("b_q")
        b_shape = getattr(b_q, "shape", None)
        hidden = next((int(a.shape[0]) for k, a in params.items()
                       if k != "b_q" and len(getattr(a, "shape", ())) == 1), None)
        return (int(b_shape[0]) if b_shape is not None and len(b_shape) == 1 else None, hidden,
                _dtype_name(b_q.dtype) if hasattr(b_q, "dtype") else None)

    # --- composed operations (a backend may override them with a fused version) --------------
    def train_step(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, Any, Any, State]:
        """One d2l training step: loss and grads, clip, SGD (a fast mode may fuse them).

        ``state`` is what this backend returned or a tuple of NumPy arrays (module docstring).

        Returns:
            ``(params, loss, grad_norm_before_clipping, new_state)``.
        """
        loss, grads, state = self.loss_and_grads(params, X, Y, state)
        grads, norm = self.clip_gradients(grads, max_grad_norm)
        return self.sgd_step(params, grads, lr), loss, norm, state

    def evaluate_loss(self, params: Params, X: np.ndarray, Y: np.ndarray, state: State) -> tuple[float, State]:
        """Mean cross-entropy without gradients (validation), computed on the host in float64."""
        logits, state = self.forward(params, X, state)
        return cross_entropy(self.as_numpy(logits), Y), state


# --- input checks, applied to every subclass's own forward / loss_and_grads / train_step / evaluate_loss /
# clip_gradients (Backend.__init_subclass__) -------------------------------------------------------------


def check_batch(X: Any, Y: Any = None, vocab_size: int | None = None) -> None:
    """``X`` (and ``Y``) are what the contract says: NumPy int arrays ``(batch, steps)`` of the same
    shape with ids in ``0 .. vocab_size - 1`` (NumPy and MXNet index from the end with a negative one, and
    MXNet, JAX and TensorFlow return a loss for one past the vocabulary)."""
    for name, a in (("X", X), ("Y", Y)):
        if isinstance(a, (list, tuple)):  # JAX took a list and returned a NaN loss for an id past the vocabulary
            raise TypeError(f"{name} must be a NumPy integer array (batch, steps) of token ids, got a "
                            f"{type(a).__name__}: pass np.asarray({name}).")
        if a is None or not isinstance(a, np.ndarray):
            continue  # the frameworks' own errors for other types; None: no labels here
        if a.ndim != 2 or a.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array (batch, steps) of token ids, got shape {a.shape} "
                             f"dtype {a.dtype}.")
        if a.size == 0:  # each framework failed in its own words, and JAX's layers returned a NaN loss
            raise ValueError(f"{name} is empty (shape {a.shape}): a batch needs at least one sequence of one step.")
        if a.min() < 0:
            raise ValueError(f"{name} holds negative token ids (min {a.min()}); ids are 0 .. vocab_size - 1.")
        if vocab_size is not None and a.max() >= vocab_size:
            raise ValueError(f"{name} holds token id {a.max()}, beyond the params' vocabulary of {vocab_size} "
                             f"(ids are 0 .. {vocab_size - 1}).")
    if isinstance(X, np.ndarray) and isinstance(Y, np.ndarray) and X.shape != Y.shape:
        raise ValueError(f"Y has shape {Y.shape} but X has {X.shape}: Y holds the next token of every input, "
                         "in the same (batch, steps) layout.")


def real_scalar(x: Any) -> float | None:
    """``x`` as a float when it is one real number: a Python or NumPy number, a 0-d array or a framework's
    scalar tensor; None for anything else (a str that float() would read, a bool, a complex, a Decimal)."""
    if isinstance(x, (bool, np.bool_, str, bytes)):
        return None
    if isinstance(x, numbers.Real):  # int, float, Fraction, NumPy's real scalars
        return float(x)
    try:
        a = np.asarray(x)
    except Exception:  # noqa: BLE001  (a tensor that will not leave its device or graph)
        return None
    return float(a) if a.ndim == 0 and a.dtype.kind in "iuf" else None


def check_max_grad_norm(max_grad_norm: Any) -> float:
    """θ > 0 (inf: no clipping) as a float: at 0 the clipping scale is 0/0, below it every gradient is flipped."""
    value = real_scalar(max_grad_norm)
    if value is None or not value > 0:
        raise ValueError(f"max_grad_norm must be a positive number, got {max_grad_norm!r}.")
    return value


def check_lr(lr: Any) -> float:
    """A finite real lr >= 0 as a float (TrainConfig's rule): a negative one climbs the loss, NaN ruins every
    weight."""
    value = real_scalar(lr)
    if value is None or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}.")
    return value


def _dtype_name(dtype: Any) -> str:
    """A framework's dtype by name ("float32"): NumPy's (a dtype or a type such as legacy MXNet arrays'
    ``numpy.float32``), JAX's and TensorFlow's ``.name``, torch's str."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        name = getattr(dtype, "name", None)
        return name if isinstance(name, str) else str(dtype).rsplit(".", 1)[-1]


def check_state(model: Any, X: Any, state: Any, hidden: int | None = None, want_dtype: str | None = None) -> None:
    """``state`` is what ``init_state`` makes for this batch: one ``(batch, hidden)`` array per entry of
    ``model.state_names()``, in the params' dtype (``hidden``, ``want_dtype``: the params', where they could be
    read). Only shapes and dtype names are read (no conversion, no device sync): a wrong state failed in each
    framework's words (flax: ScopeParamShapeError), extra entries were dropped silently, and a float64 state
    turned the NumPy oracle's float32 logits into float64."""
    names = model.state_names()
    if not isinstance(state, (tuple, list)):
        raise TypeError(f"state must be a tuple of {len(names)} arrays ({', '.join(names)}; backend.init_state makes "
                        f"it), got {type(state).__name__}.")
    if len(state) != len(names):
        raise ValueError(f"state holds {len(state)} arrays, but {model.name} has {len(names)} "
                         f"({', '.join(names)}; backend.init_state makes it).")
    shapes = [tuple(getattr(s, "shape", ())) for s in state]
    batch = X.shape[0] if isinstance(X, np.ndarray) and X.ndim == 2 else None
    for name, shape in zip(names, shapes):
        if len(shape) != 2 or (batch is not None and shape[0] != batch) or (hidden is not None and shape[1] != hidden):
            want = f"({batch if batch is not None else 'batch'}, {hidden if hidden is not None else 'num_hiddens'})"
            raise ValueError(f"state {name} has shape {shape}, expected {want}: one row per sequence of X, "
                             "num_hiddens columns (backend.init_state makes it).")
    for name, s in zip(names, state):
        if want_dtype is not None and hasattr(s, "dtype") and _dtype_name(s.dtype) != want_dtype:
            raise ValueError(f"state {name} is {_dtype_name(s.dtype)} but the params are {want_dtype}: make it with "
                             f"backend.init_state(batch, num_hiddens, dtype={want_dtype!r}).")


# ``args`` are a call's positional arguments, ``self`` first: (self, params, X, Y, state, lr, max_grad_norm)
def _check_batch_args(args: tuple, kwargs: dict, labels: bool) -> None:
    params = args[1] if len(args) > 1 else kwargs.get("params")
    X = args[2] if len(args) > 2 else kwargs.get("X")
    Y = (args[3] if len(args) > 3 else kwargs.get("Y")) if labels else None
    at = 4 if labels else 3
    state = args[at] if len(args) > at else kwargs.get("state")
    try:  # read once for both checks
        vocab_size, hidden, dtype = args[0]._output_layer_of(params)
    except (AttributeError, IndexError, KeyError, TypeError):  # params of an unexpected form: the method's own error
        vocab_size, hidden, dtype = None, None, None
    check_batch(X, Y, vocab_size)
    if state is not None or "state" in kwargs or len(args) > at:
        check_state(args[0].model, X, state, hidden, dtype)


_CHECKS = {
    "forward": lambda a, k: _check_batch_args(a, k, False),
    "loss_and_grads": lambda a, k: _check_batch_args(a, k, True),
    "evaluate_loss": lambda a, k: _check_batch_args(a, k, True),
    "train_step": lambda a, k: _check_batch_args(a, k, True),
    "clip_gradients": None,
    "sgd_step": None,
}
# The scalar arguments, by position in (self, *args): name and rule. Each is checked and handed on as the Python
# float its rule returns: MXNet's operators took no NumPy scalar (np.float64(1.0): 'numpy.float64' object has
# no attribute 'ctx'), torch's no Fraction, and no framework another's tensor.
_SCALARS: dict[str, dict[int, tuple[str, Any]]] = {
    "train_step": {5: ("lr", check_lr), 6: ("max_grad_norm", check_max_grad_norm)},
    "clip_gradients": {2: ("max_grad_norm", check_max_grad_norm)},
    "sgd_step": {3: ("lr", check_lr)},
}


def _checking(method: Any, check: Any, scalars: dict[int, tuple[str, Any]] | None = None) -> Any:
    @functools.wraps(method)
    def checked(self: Backend, *args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check((self, *args), kwargs)
        if scalars:
            args = list(args)
            for position, (name, rule) in scalars.items():
                if position - 1 < len(args):
                    args[position - 1] = rule(args[position - 1])
                else:
                    kwargs[name] = rule(kwargs.get(name))
        return method(self, *args, **kwargs)

    checked._checks_inputs = True  # type: ignore[attr-defined]
    return checked


# The composed defaults are entry points too (a subclass that keeps them gets them checked)
for _name in ("train_step", "evaluate_loss"):
    setattr(Backend, _name, _checking(getattr(Backend, _name), _CHECKS[_name], _SCALARS.get(_name)))
