"""Small NumPy numerics shared by the oracle backend and framework-neutral evaluation."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, shifted by the row maximum so that exp never overflows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def time_major_labels(Y: np.ndarray) -> np.ndarray:
    """``(batch, steps)`` labels -> ``(steps * batch,)``, the row order of every backend's logits."""
    return np.asarray(Y).T.reshape(-1)


def cross_entropy(logits: np.ndarray, Y: np.ndarray) -> float:
    """Mean cross-entropy of ``(steps * batch, vocab)`` logits against ``(batch, steps)`` labels."""
    y = time_major_labels(Y)
    logp = log_softmax(np.asarray(logits, dtype=np.float64))
    return float(-logp[np.arange(len(y)), y].mean())
