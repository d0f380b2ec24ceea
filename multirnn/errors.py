"""Exceptions raised by multirnn (all framework-neutral)."""

from __future__ import annotations

from typing import Any


class BackendUnavailableError(ImportError):
    """A known backend whose framework cannot be imported here; the message names the pip extra."""


class GPUUnavailableError(RuntimeError):
    """``device="gpu"`` was asked for, but the framework sees no GPU (never a silent CPU fallback)."""


class UnsupportedModelError(ValueError):
    """This implementation cannot compute the requested model (e.g. torch.nn.GRU is reset-after,
    so it cannot be d2l's GRU); the message says why. Reported as an ``unsupported`` row, never a
    silently different model."""


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite. ``history`` holds everything recorded before that step."""

    def __init__(self, message: str, history: Any, epoch: int, step: int) -> None:
        super().__init__(message)
        self.history = history
        self.epoch = epoch
        self.step = step
