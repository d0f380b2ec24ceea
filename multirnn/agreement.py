"""Building blocks of agreement: pure functions over recorded curves, no framework.

:mod:`multirnn.verdict` assembles them into the verdict. Free-running per-step loss curves are
compared as relative deviations ``|loss - ref| / |ref|`` from a reference curve (the NumPy oracle's,
or the per-step median of the backends). Over long float32 runs such curves drift apart even
between correct implementations (training at lr = 1 is chaotic), which is why the verdict relies on
re-anchored stretches (:mod:`multirnn.lockstep`) and uses these for information and for
``--lockstep off``.

Independent initial weights (``--init independent``): curves cannot match step by step, so the
final perplexities are compared: each backend's median over its last epochs must lie within
``INDEPENDENT_RTOL`` of the median across backends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .cells import RNN, Model

# Independent weights: final perplexities of different random initialisations differ by a few
# per cent on the quick preset; a disagreement beyond 15 % points at a wrong implementation.
INDEPENDENT_RTOL = 0.15


@dataclass(frozen=True)
class Deviation:
    """How far one backend's per-step loss curve strays from the reference."""

    max_deviation: float  # largest relative deviation over the compared steps
    first_step: int | None  # 1-based global step where it first left the band (None: never)
    first_epoch: int | None  # the epoch of that step
    per_step: list[float]  # relative deviation of every compared step
    agrees: bool


def reference_curve(curves: Mapping[str, Sequence[float]], reference: str | None) -> np.ndarray:
    """The reference backend's curve, or the per-step median of the curves that have that step (as far as the
    longest goes): one curve that stopped early (a wrong backend's divergence) must not cut the others' short,
    and it is judged on the steps it lacks."""
    if reference is not None:
        return np.asarray(curves[reference], dtype=np.float64)
    n = max((len(c) for c in curves.values()), default=0)
    return np.array([np.median([float(c[t]) for c in curves.values() if len(c) > t]) for t in range(n)], dtype=np.float64)


def epoch_of_step(step: int, steps_per_epoch: Sequence[int]) -> int:
    """The 1-based epoch that the 1-based global ``step`` belongs to."""
    bounds = np.cumsum(steps_per_epoch)
    return int(np.searchsorted(bounds, step) + 1)


def relative_error(got: float, ref: float) -> float:
    """``|got - ref| / |ref|`` of two numbers; a non-finite pair is 0 if equal, else inf."""
    if not (math.isfinite(got) and math.isfinite(ref)):
        return 0.0 if got == ref else math.inf
    return abs(got - ref) / max(abs(ref), np.finfo(np.float64).tiny)


def relative_deviation(losses: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    """``|losses - reference| / |reference|`` over the steps both curves have."""
    n = min(len(losses), len(reference))
    got, ref = np.asarray(losses[:n], dtype=np.float64), np.asarray(reference[:n], dtype=np.float64)
    return np.abs(got - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)


def compare_curve(
    losses: Sequence[float], reference: Sequence[float], rtol: float, steps_per_epoch: Sequence[int],
) -> Deviation:
    """Relative deviation of ``losses`` from ``reference`` step by step, against a fixed ``rtol``.

    Curves of different length (one run diverged earlier) disagree: the missing steps count as
    leaving the band at the first step that only one of them has.
    """
    dev = relative_deviation(losses, reference)
    n = len(dev)
    outside = np.flatnonzero(~(dev <= rtol))
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


def expected_shapes(batch_size: int, num_steps: int, vocab_size: int, num_hiddens: int,
                    model: Model = RNN) -> dict[str, list[int]]:
    """The shapes every backend must produce on the first minibatch: one-hot inputs, logits, every
    state entry and every gradient (by the model's d2l names)."""
    out = {"one_hot": [num_steps, batch_size, vocab_size], "logits": [num_steps * batch_size, vocab_size]}
    out.update({f"state_{name}": [batch_size, num_hiddens] for name in model.state_names()})
    out.update({f"grad_{k}": list(s) for k, s in model.param_shapes(vocab_size, num_hiddens).items()})
    return out


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


def compare_finals(finals: Mapping[str, float], rtol: float = INDEPENDENT_RTOL,
                   center: float | None = None) -> dict[str, tuple[float, bool]]:
    """Independent initialisations: ``{name: (relative distance to the center, within rtol)}``.

    ``center``: the reference's final perplexity (the oracle's); without one, the rows' median. With
    two rows the median is their midpoint, which let a pair 35 % apart pass a 15 % band."""
    if center is None:
        center = float(np.median(list(finals.values())))
    return {name: (abs(v - center) / center, abs(v - center) <= rtol * center) for name, v in finals.items()}
