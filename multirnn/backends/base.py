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

from ..ops import cross_entropy

Params = Any  # a dict with the keys W_xh, W_hh, b_h, W_hq, b_q, holding framework arrays
State = tuple  # (H,), H of shape (batch_size, num_hiddens)
DEVICES = ("cpu", "gpu")
MODES = ("eager", "fast")


class Backend(abc.ABC):
    """One framework's version of the RNN-from-scratch primitives.

    Args:
        device: ``"cpu"`` (default) or ``"gpu"``; a GPU that is not there raises
            :class:`multirnn.GPUUnavailableError`, never a silent fallback.
        mode: ``"eager"`` composes the primitives one by one, as d2l writes them (readable);
            ``"fast"`` lets the backend fuse or compile ``train_step`` (same maths, same results).
    """

    name: ClassVar[str]  # the id used by get_backend, e.g. "torch"
    framework: ClassVar[str]  # the framework's import name, e.g. "torch"

    def __init__(self, device: str = "cpu", mode: str = "eager") -> None:
        if device not in DEVICES:
            raise ValueError(f"Unknown device {device!r}; expected one of {list(DEVICES)}.")
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {list(MODES)}.")
        self.device = device
        self.mode = mode

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, mode={self.mode!r})"

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
        """``(H,)`` with ``H`` zeros ``(batch_size, num_hiddens)``."""

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
