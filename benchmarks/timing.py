"""Timing in turns: the one loop behind every side-by-side measurement in the benchmarks.

Variants measured side by side take turns call by call, so the machine's drift (benchmarks/PROFILES.md
finding 5) touches them alike. This module prints nothing: the floor server's stdout carries JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def turns(calls: list[Callable[[], Any]], rounds: int = 0, seconds: float = 0.0) -> list[list[float]]:
    """Seconds of each call of every variant in ``calls``, the variants taking turns.

    Turns continue for ``rounds`` rounds and until ``seconds`` have passed, whichever is later,
    and always at least one round. Each entry of ``calls`` must wait for its own result (sync)."""
    times: list[list[float]] = [[] for _ in calls]
    t0 = time.perf_counter()
    done = 0
    while done < max(rounds, 1) or time.perf_counter() - t0 < seconds:
        for record, call in zip(times, calls):
            t = time.perf_counter()
            call()
            record.append(time.perf_counter() - t)
        done += 1
    return times
