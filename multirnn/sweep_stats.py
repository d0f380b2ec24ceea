"""Statistics across seeds: Student-t intervals and a paired TOST equivalence test.

Written out (the regularised incomplete beta function, as in *Numerical Recipes*) so that the core
package needs nothing beyond NumPy; ``tests/test_sweep.py`` checks it against SciPy when present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Equivalence margin of the paired TOST (relative difference of mean perplexities); see EQUIVALENCE_TEXT.
DEFAULT_MARGIN = 0.05
ALPHA = 0.05
EQUIVALENCE_TEXT = (
    "paired TOST (two one-sided t-tests, alpha 0.05, i.e. the 90 % t interval of the mean must lie inside "
    "the margin) on the per-seed relative difference of the median-last perplexity from the NumPy oracle's "
    "run with the same seed (same batches; with --init framework, the oracle trained from the row's own "
    "initial weights, so that the initialisers' effect is not taken for a difference). Margin +-{margin:.0%}: a third of compare's single-run band for "
    "independent initialisations (15 %, the spread one run may show); a mean over seeds whose 90 % interval "
    "stays within it is a difference nobody choosing a framework would act on. Too few seeds or too much "
    "spread give 'not shown', never 'equivalent'")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_sf`; q in (0, 1))."""
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_sf(mid, df) > 1.0 - q else (lo, mid)
    return (lo + hi) / 2.0


def mean_interval(values: Sequence[float], level: float = 0.95, log: bool = False,
                  least: float | None = None) -> dict[str, Any]:
    """Mean, sample standard deviation and the two-sided ``level`` t interval of the mean.

    ``log``: of the values' logarithms, mapped back (the geometric mean and an interval that stays positive;
    the standard deviation is then the logarithms', ``sd_log``, not ``sd``). For perplexities: the log of one is
    a mean cross-entropy, and a seed that blew up to 1e74 made the arithmetic interval run from -1e75. ``least``:
    the smallest value the quantity can take (a perplexity's is 1), where the interval's lower end stops. Values
    that are not finite (or not positive, with ``log``) are left out; ``n`` counts those used."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    x = [math.log(v) for v in kept] if log else kept
    n = len(x)
    sd_key = "sd_log" if log else "sd"
    out: dict[str, Any] = {"n": n, "mean": None, sd_key: None, "ci95": None, **({"scale": "log"} if log else {})}
    if n == 0:
        return out
    back = math.exp if log else float
    mean = math.fsum(x) / n
    out["mean"] = kept[0] if n == 1 else _capped(back, mean)  # one seed: its own value, not exp(log(v))
    if n >= 2:
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
        half = t_ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
        low = _capped(back, mean - half)
        out.update({sd_key: sd, "ci95": [low if least is None else max(low, least), _capped(back, mean + half)]})
    return out


def _capped(back: Any, x: float) -> float:
    """``back(x)``, or inf where exp overflows (an interval's upper end for a blown-up seed)."""
    try:
        return back(x)
    except OverflowError:
        return math.inf


def tost_paired(diffs: Sequence[float], margin: float, alpha: float = ALPHA) -> dict[str, Any]:
    """Two one-sided t-tests that the mean of ``diffs`` lies within (-margin, +margin).

    Returns n, the mean, the (1 - 2 alpha) t interval, the TOST p-value (the larger one-sided p)
    and ``equivalent``: True (p < alpha), False (shown *not* equivalent: the whole interval is
    outside the margin), or None (not shown either way, or fewer than 2 pairs).
    """
    d = [float(v) for v in diffs if v is not None and math.isfinite(v)]
    n = len(d)
    out: dict[str, Any] = {"n": n, "margin": margin, "alpha": alpha, "mean": None, "ci90": None, "p_value": None,
                           "equivalent": None}
    if n == 0:
        return out
    mean = math.fsum(d) / n
    out["mean"] = mean
    if n < 2:
        return out
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in d) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:
        p = 0.0 if abs(mean) < margin else 1.0
        lo = hi = mean
    else:
        p = max(t_sf((mean + margin) / se, n - 1), t_sf((margin - mean) / se, n - 1))
        half = t_ppf(1.0 - alpha, n - 1) * se
        lo, hi = mean - half, mean + half
    out.update(ci90=[lo, hi], p_value=p)
    if p < alpha:
        out["equivalent"] = True
    elif lo >= margin or hi <= -margin:
        out["equivalent"] = False
    return out
