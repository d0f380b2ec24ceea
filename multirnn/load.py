"""How much of the machine other processes took while a run trained (Linux; None elsewhere).

A busy machine makes tokens/s meaningless, and not by a little: with two other processes keeping this
project's 2 cores busy, torch trained compare's `--hidden 16` rows at 7.2k tokens/s with its two OpenMP
threads against 1.1M with one (each parallel region waits for a thread that has no core). So a run
measures the CPU time spent on the whole machine (``/proc/stat``, steal included: a hypervisor's other
guests count too) minus its own and its reaped workers' (``getrusage``), over its wall time.
"""

from __future__ import annotations

import os
import resource
import time

# Other processes' mean load, in cores, from which a run's report says its speeds are not this machine's.
BUSY_CORES = 0.5


def _machine_busy_seconds() -> float | None:
    """CPU seconds the cores this process may use have spent busy since boot (user, nice, system, irq,
    softirq, steal); other cores (another container's) do not slow it down."""
    try:
        usable = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        with open("/proc/stat", encoding="ascii") as f:
            rows = [ln.split() for ln in f if ln.startswith("cpu")]
    except (OSError, AttributeError):  # no /proc (macOS), no sched_getaffinity
        return None
    ticks = 0
    for fields in rows:
        if fields[0] in usable and len(fields) >= 9:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK") if ticks else None


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the workers, once waited for)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class OtherLoad:
    """Started when a run starts; :meth:`cores` is the mean number of cores other processes kept busy since."""

    def __init__(self) -> None:
        self.wall0, self.busy0, self.own0 = time.monotonic(), _machine_busy_seconds(), _own_seconds()

    def cores(self) -> float | None:
        """Other processes' mean load in cores since the start (None: not measurable here, or too short)."""
        busy, wall = _machine_busy_seconds(), time.monotonic() - self.wall0
        if busy is None or self.busy0 is None or wall < 0.5:  # /proc/stat counts in ticks of 10 ms per core
            return None
        return max(0.0, (busy - self.busy0 - (_own_seconds() - self.own0)) / wall)


def busy_note(cores: float | None, total: int) -> str | None:
    """The report's note when other processes took at least :data:`BUSY_CORES` cores, else None."""
    if cores is None or cores < BUSY_CORES:
        return None
    return (f"other processes kept {cores:.1f} of the {total} cores this run could use busy during it (on average, "
            "from /proc/stat): tokens/s are below what this machine does, for small models by two orders of "
            "magnitude where threads wait for busy cores; the verdict is unaffected. Time speeds on an idle machine, "
            "or with one thread per row so that no thread waits for a busy core (compare's --jobs set to the core "
            "count, the sweep's --threads 1: each caps every framework's thread pools, which OMP_NUM_THREADS=1 alone "
            "does for NumPy and torch only)")
