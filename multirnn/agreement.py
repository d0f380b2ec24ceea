"""Agreement between training runs: pure functions over recorded numbers, no framework.

Shared initial weights and batches (``--init shared``): every backend's per-step loss is compared
with a reference curve (the NumPy oracle when it ran, else the per-step median of the others),
as a relative deviation ``|loss - ref| / |ref|``. A backend agrees when its shapes are right and
the deviation never leaves the band for its dtype.

float64 runs must agree step by step to ``STEP_RTOL["float64"]`` over the whole run. float32 runs
cannot have a fixed band over long runs: training at lr = 1 is chaotic, so rounding differences
of one ulp (different summation orders) grow from ~1e-7 to ~1e-2 over 100 epochs between *correct*
implementations (measured, see README). The float32 band is therefore the larger of
``STEP_RTOL["float32"]`` and ``ENVELOPE_FACTOR`` times the *rounding envelope*: how far float32
rounding alone moves the oracle's own curve (the NumPy oracle trained in float32 versus float64,
same weights and batches), as a running maximum. A wrong implementation leaves that band within
the first steps, long before chaos widens it.

Independent initial weights (``--init independent``): curves cannot match step by step, so the
final perplexities are compared: each backend's median over its last epochs must lie within
``INDEPENDENT_RTOL`` of the median across backends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Relative per-step loss tolerance when all backends start from the same weights and batches.
# float32: summation order alone differs between frameworks; measured worst cases are in the README
# (well below 1e-4). float64: the same maths agrees to ~1e-12; 1e-9 leaves room for long runs.
STEP_RTOL: dict[str, float] = {"float32": 1e-4, "float64": 1e-9}
# How many times the oracle's own float32 drift another float32 implementation may drift: each
# implementation rounds differently, and chaos amplifies each difference by a similar factor.
ENVELOPE_FACTOR = 10.0
# Independent weights: final perplexities of different random initialisations differ by a few
# per cent on the quick preset; a disagreement beyond 15 % points at a wrong implementation.
INDEPENDENT_RTOL = 0.15
# Where the rounding envelope passes this, float32 curves no longer follow each other step by step
# (measured on d2l-ed1: epoch 229 of 500); the report says so.
DECORRELATED = 0.1


@dataclass(frozen=True)
class Deviation:
    """How far one backend's per-step loss curve strays from the reference."""

    max_deviation: float  # largest relative deviation over the compared steps
    first_step: int | None  # 1-based global step where it first left the band (None: never)
    first_epoch: int | None  # the epoch of that step
    per_step: list[float]  # relative deviation of every compared step
    agrees: bool


def reference_curve(curves: Mapping[str, Sequence[float]], reference: str | None) -> np.ndarray:
    """The reference backend's curve, or the per-step median of all curves (over their common length)."""
    if reference is not None:
        return np.asarray(curves[reference], dtype=np.float64)
    n = min(len(c) for c in curves.values())
    return np.median(np.array([np.asarray(c[:n], dtype=np.float64) for c in curves.values()]), axis=0)


def epoch_of_step(step: int, steps_per_epoch: Sequence[int]) -> int:
    """The 1-based epoch that the 1-based global ``step`` belongs to."""
    bounds = np.cumsum(steps_per_epoch)
    return int(np.searchsorted(bounds, step) + 1)


def relative_deviation(losses: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    """``|losses - reference| / |reference|`` over the steps both curves have."""
    n = min(len(losses), len(reference))
    got, ref = np.asarray(losses[:n], dtype=np.float64), np.asarray(reference[:n], dtype=np.float64)
    return np.abs(got - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)


def band(num_steps: int, rtol: float, envelope: Sequence[float] | None = None,
         factor: float = ENVELOPE_FACTOR) -> np.ndarray:
    """The tolerance at every step: ``rtol``, widened to ``factor`` x the running maximum of the
    rounding ``envelope`` where one is given (steps past its end keep its last width)."""
    out = np.full(num_steps, rtol, dtype=np.float64)
    if envelope is not None and len(envelope):
        env = np.maximum.accumulate(np.nan_to_num(np.asarray(envelope, dtype=np.float64), nan=np.inf))
        env = np.concatenate([env, np.full(max(num_steps - len(env), 0), env[-1])])[:num_steps]
        out = np.maximum(out, factor * env)
    return out


def compare_curve(
    losses: Sequence[float], reference: Sequence[float], rtol: float, steps_per_epoch: Sequence[int],
    envelope: Sequence[float] | None = None,
) -> Deviation:
    """Relative deviation of ``losses`` from ``reference`` step by step, against :func:`band`.

    Curves of different length (one run diverged earlier) disagree: the missing steps count as
    leaving the band at the first step that only one of them has.
    """
    dev = relative_deviation(losses, reference)
    n = len(dev)
    outside = np.flatnonzero(~(dev <= band(n, rtol, envelope)))
    first = int(outside[0]) + 1 if outside.size else (n + 1 if len(losses) != len(reference) else None)
    epochs = list(steps_per_epoch) or [max(n, 1)]
    first_epoch = epoch_of_step(first, epochs) if first is not None else None
    return Deviation(
        max_deviation=float(dev.max()) if n else float("nan"),
        first_step=first,
        first_epoch=first_epoch,
        per_step=dev.tolist(),
        agrees=first is None,
    )


def expected_shapes(batch_size: int, num_steps: int, vocab_size: int, num_hiddens: int) -> dict[str, list[int]]:
    """The shapes every backend must produce on the first minibatch."""
    return {
        "one_hot": [num_steps, batch_size, vocab_size],
        "logits": [num_steps * batch_size, vocab_size],
        "state": [batch_size, num_hiddens],
        "grad_W_xh": [vocab_size, num_hiddens],
        "grad_W_hh": [num_hiddens, num_hiddens],
        "grad_b_h": [num_hiddens],
        "grad_W_hq": [num_hiddens, vocab_size],
        "grad_b_q": [vocab_size],
    }


def shape_mismatches(got: Mapping[str, Sequence[int]], want: Mapping[str, Sequence[int]]) -> list[str]:
    """Human-readable list of the shapes that differ (empty when all agree)."""
    return [
        f"{name}: got {list(got.get(name, []))}, expected {list(shape)}"
        for name, shape in want.items()
        if list(got.get(name, [])) != list(shape)
    ]


def robust_final(perplexity: Sequence[float]) -> float:
    """Median perplexity over the last 10 % of the epochs (at least 10): one spiking final epoch
    does not decide. On d2l-ed1 (500 epochs) three of five backends ended on a spike (final 1.17-1.18)
    while every median over the last 50 epochs was 1.036-1.041."""
    last = max(10, len(perplexity) // 10)
    return float(np.median(np.asarray(perplexity[-last:], dtype=np.float64)))


def decorrelation_step(envelope: Sequence[float], threshold: float = DECORRELATED) -> int | None:
    """1-based first step where the rounding envelope exceeds ``threshold`` (None: never)."""
    above = np.flatnonzero(np.asarray(envelope, dtype=np.float64) > threshold)
    return int(above[0]) + 1 if above.size else None


def compare_finals(finals: Mapping[str, float], rtol: float = INDEPENDENT_RTOL) -> dict[str, tuple[float, bool]]:
    """Independent initialisations: ``{name: (relative distance to the median, within rtol)}``."""
    center = float(np.median(list(finals.values())))
    return {name: (abs(v - center) / center, abs(v - center) <= rtol * center) for name, v in finals.items()}
