"""The backend contract: the d2l RNN-from-scratch primitives, once per framework.

NumPy goes in, and ``params_to_numpy`` / ``as_numpy`` bring NumPy back out. Everything in
between (params, grads, state, logits) stays a framework object, so a backend decides where
and when it synchronises with the host. Scalars (loss, gradient norm) may stay framework
scalars; ``float(x)`` must work on them.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from ..cells import RNN, Model
from ..errors import UnsupportedModelError
from ..ops import cross_entropy

Params = Any  # a dict keyed by the model's d2l names (W_xh, W_hh, b_h, W_hq, b_q for the tanh RNN)
State = tuple  # one array per entry of model.state_names(): (H,) for one tanh layer, (H, C, H_l1, C_l1)...
DEVICES = ("cpu", "gpu")
MODES = ("eager", "fast")
IMPLS = ("scratch", "layers")


class Backend(abc.ABC):
    """One framework's version of the RNN-from-scratch primitives.

    Args:
        device: ``"cpu"`` (default) or ``"gpu"``; a GPU that is not there raises
            :class:`multirnn.GPUUnavailableError`, never a silent fallback.
        mode: ``"eager"`` composes the primitives one by one, as d2l writes them (readable);
            ``"fast"`` lets the backend fuse or compile ``train_step`` (same maths, same results).
        model: the cell and layers to compute (default: d2l's one-layer tanh RNN); one the class
            cannot compute raises :class:`multirnn.UnsupportedModelError` with the reason.
    """

    name: ClassVar[str]  # the id used by get_backend, e.g. "torch"
    framework: ClassVar[str]  # the framework's import name, e.g. "torch"
    impl: ClassVar[str] = "scratch"  # "scratch" (d2l from scratch) or "layers" (the framework's own RNN layer)

    def __init__(self, device: str = "cpu", mode: str = "eager", model: Model | None = None) -> None:
        if device not in DEVICES:
            raise ValueError(f"Unknown device {device!r}; expected one of {list(DEVICES)}.")
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {list(MODES)}.")
        self.device = device
        self.mode = mode
        self.model = model if model is not None else RNN
        reason = self.unsupported(self.model)
        if reason is not None:
            raise UnsupportedModelError(f"{type(self).__name__} cannot compute {self.model.name}: {reason}")

    @classmethod
    def unsupported(cls, model: Model) -> str | None:
        """Why this implementation cannot compute ``model``, or None if it can (the default: only
        the one-layer tanh RNN, the contract's original model)."""
        return None if model == RNN else "only the one-layer tanh RNN is implemented here"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, mode={self.mode!r}, model={self.model.name!r})"

    # --- conversion -------------------------------------------------------------------------
    @abc.abstractmethod
    def version(self) -> str:
        """The framework's version string."""

    @abc.abstractmethod
    def params_from_numpy(self, params: dict[str, np.ndarray]) -> Params:
        """Copy NumPy params to the framework; the dtype (float32/float64) is kept."""

    @abc.abstractmethod
    def params_to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        """Copy params (or grads, which share their structure) back to NumPy, exactly."""

    @abc.abstractmethod
    def as_numpy(self, x: Any) -> np.ndarray:
        """One framework array (or scalar) as a NumPy array."""

    # --- the model --------------------------------------------------------------------------
    @abc.abstractmethod
    def one_hot(self, X: np.ndarray, vocab_size: int, dtype: str = "float32") -> Any:
        """``X`` int ``(batch, steps)`` -> ``(steps, batch, vocab_size)`` float, time-major."""

    @abc.abstractmethod
    def init_state(self, batch_size: int, num_hiddens: int, dtype: str = "float32") -> State:
        """Zeros ``(batch_size, num_hiddens)``, one per entry of ``self.model.state_names()``
        (``(H,)`` for the tanh RNN)."""

    @abc.abstractmethod
    def forward(self, params: Params, X: np.ndarray, state: State) -> tuple[Any, State]:
        """Run the recurrence over ``X`` ``(batch, steps)``.

        Returns:
            ``(logits, new_state)``: logits ``(steps * batch, vocab)``, rows time-major.
        """

    @abc.abstractmethod
    def loss_and_grads(self, params: Params, X: np.ndarray, Y: np.ndarray, state: State) -> tuple[Any, Params, State]:
        """Mean cross-entropy over all ``steps * batch`` tokens and its gradients.

        Returns:
            ``(loss, grads, new_state)``; ``grads`` has the params' structure and ``new_state``
            is detached from the graph (sequential partitioning carries it on).
        """

    @abc.abstractmethod
    def clip_gradients(self, grads: Params, max_grad_norm: float) -> tuple[Params, Any]:
        """d2l's rule: scale every gradient by θ/‖g‖ only when the global L2 norm ‖g‖ > θ.

        Returns:
            ``(clipped grads, global norm before clipping)``.
        """

    @abc.abstractmethod
    def sgd_step(self, params: Params, grads: Params, lr: float) -> Params:
        """``p <- p - lr * g`` for every parameter (in place where the framework allows)."""

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

    # --- composed operations (a backend may override them with a fused version) --------------
    def train_step(
        self, params: Params, X: np.ndarray, Y: np.ndarray, state: State, lr: float, max_grad_norm: float
    ) -> tuple[Params, Any, Any, State]:
        """One d2l training step: loss and grads, clip, SGD.

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
