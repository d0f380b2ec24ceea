"""Keep freed heap memory in the process, so a training loop does not page-fault on every step.

A training step allocates the same few multi-megabyte buffers every time (hidden states, their
gradients, tanh' for all steps). glibc's malloc serves blocks above its mmap threshold with fresh
``mmap`` pages and gives them back on ``free`` (and trims the top of the heap past its trim
threshold), so each step touches those megabytes as new, zero-filled pages: at the d2l ed. 1 shapes
torch's fast step took ~2,200 minor page faults per step (the NumPy oracle ~4,300) and 15-25 % of
its time (``benchmarks/PROFILES.md``). Raising both thresholds keeps the pages in the heap for reuse;
MXNet, TensorFlow and XLA pool their buffers already (0-20 faults per step either way).

The harness's worker processes, ``benchmarks/`` and the test suite call :func:`keep_freed_memory`
once at start; a script using a backend directly may do the same. Set ``MULTIRNN_MALLOC=default``
to leave malloc as it is (for example to measure the difference).
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1024 * 1024 * 1024  # give memory back only when 1 GiB at the heap's top is free


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (Linux/glibc only; elsewhere a no-op).

    Returns:
        Whether the thresholds were set: ``False`` off glibc, when ``MULTIRNN_MALLOC=default``, or
        when the user already chose them (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``).
    """
    if os.environ.get("MULTIRNN_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # absent on musl: AttributeError
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
