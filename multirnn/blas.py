"""NumPy's OpenBLAS on a CPU newer than it knows: name the kernels for the processes started later.

OpenBLAS (built with DYNAMIC_ARCH, as NumPy's wheels are) picks its kernels from the CPU's family and
model when it loads. A model newer than the bundled OpenBLAS falls back to a generic SSE3 core: NumPy
1.26's OpenBLAS 0.3.23 calls Intel's Emerald Rapids (family 6, model 207) "Prescott", and there NumPy's
float32 2048³ product ran at ~50 GFLOP/s against ~260 with ``OPENBLAS_CORETYPE=SkylakeX``, 70 of the
recurrence's (32, 512) x (512, 512) products in ~28-42 ms against ~11 (``benchmarks/PROFILES.md``). The
NumPy oracle trains in every comparison, so on such a machine it was the run's slowest row by far.

``OPENBLAS_CORETYPE`` only acts when OpenBLAS loads, so :func:`name_openblas_core` sets it in this
process's environment for the processes it starts afterwards (compare's and the sweep's workers, the
benchmarks' timed processes), and only when OpenBLAS chose a core without AVX2 on a CPU that has it.
Set ``MULTIRNN_OPENBLAS=default`` to leave OpenBLAS's own choice, or set ``OPENBLAS_CORETYPE`` yourself.

A framework's own OpenBLAS copy (MXNet's) gets the same treatment where it loads:
:func:`core_named_while_loading`.
"""

from __future__ import annotations

import ctypes
import glob
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# OpenBLAS's x86-64 cores whose kernels stop short of AVX2 (its driver/others/dynamic.c names).
NO_AVX2_CORES = frozenset({
    "katmai", "coppermine", "northwood", "prescott", "banias", "core2", "penryn", "dunnington", "nehalem",
    "sandybridge", "atom", "opteron", "opteron_sse3", "barcelona", "bobcat", "bulldozer", "piledriver",
    "steamroller",
})
_CORENAME_SYMBOLS = ("openblas_get_corename64_", "openblas_get_corename", "scipy_openblas_get_corename64_",
                     "scipy_openblas_get_corename")
# Set beside OPENBLAS_CORETYPE when multirnn named the core (the core OpenBLAS had picked), so that
# descendants (workers, xdist's processes) tell multirnn's choice from a user's ISA cap.
DETECTED_VARIABLE = "MULTIRNN_OPENBLAS_DETECTED"


def openblas_core() -> str | None:
    """The core whose kernels NumPy's bundled OpenBLAS runs in this process (e.g. ``"SkylakeX"``), or None
    where NumPy has no bundled OpenBLAS that says (another BLAS, another platform)."""
    libs_dir = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(glob.glob(str(libs_dir / "*openblas*.so*"))):
        if (name := loaded_core(path)) is not None:
            return name
    return None


def loaded_core(path: str | Path) -> str | None:
    """The core of the OpenBLAS at ``path`` in this process (loading it, if nothing has yet), or None."""
    try:
        lib = ctypes.CDLL(str(path))  # already loaded (by NumPy, by a framework): this returns the same library
    except OSError:
        return None
    for symbol in _CORENAME_SYMBOLS:
        fn = getattr(lib, symbol, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            name = fn()
            return name.decode() if name else None
    return None


def wanted_core() -> str | None:
    """The OpenBLAS core this CPU can run: ``"SkylakeX"`` with AVX-512 (F, CD, BW, DQ, VL), ``"Haswell"``
    with AVX2 and FMA, else None."""
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":  # NumPy 2 moved it (numpy.core warns there)
        from numpy._core._multiarray_umath import __cpu_features__ as features
    else:
        from numpy.core._multiarray_umath import __cpu_features__ as features
    if features.get("AVX512_SKX"):
        return "SkylakeX"
    if features.get("AVX2") and features.get("FMA3"):
        return "Haswell"
    return None


def name_openblas_core() -> dict[str, str] | None:
    """Set ``OPENBLAS_CORETYPE`` for child processes where OpenBLAS picked a core without AVX2 on a CPU
    with it (see the module's docstring).

    Returns:
        :func:`chosen_core`: what multirnn named here or in an ancestor process, else None.
    """
    if cores := _generic_cores():
        os.environ[DETECTED_VARIABLE], os.environ["OPENBLAS_CORETYPE"] = cores
    return chosen_core()


def _generic_cores() -> tuple[str, str] | None:
    """``(the core OpenBLAS picked, the one this CPU can run)`` where the first lacks AVX2 and the second
    has it, and neither the user (``OPENBLAS_CORETYPE``, ``MULTIRNN_OPENBLAS=default``) nor an ancestor
    process named the core; else None."""
    if os.environ.get("MULTIRNN_OPENBLAS", "").lower() == "default" or "OPENBLAS_CORETYPE" in os.environ:
        return None
    detected, wanted = openblas_core(), wanted_core()
    return (detected, wanted) if detected and wanted and detected.lower() in NO_AVX2_CORES else None


def library_core(path: str | Path) -> str | None:
    """The core the OpenBLAS at ``path`` picks on this CPU with this environment, asked in a fresh process
    (loading it here would fix its choice for this process); None where that cannot be told."""
    # ctypes alone (not this module, which imports NumPy): the answer in ~30 ms, not ~400.
    code = ("import ctypes, sys\nlib = ctypes.CDLL(sys.argv[1])\n"
            f"fn = next(getattr(lib, s) for s in {_CORENAME_SYMBOLS!r} if hasattr(lib, s))\n"
            "fn.restype = ctypes.c_char_p\nprint((fn() or b'').decode())")
    # Its dependencies sit beside it in wheels (NumPy's libgfortran has no RUNPATH to find it by).
    search = os.pathsep.join(filter(None, [str(Path(path).resolve().parent), os.environ.get("LD_LIBRARY_PATH")]))
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                              check=False, env={**os.environ, "LD_LIBRARY_PATH": search})
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


@contextmanager
def core_named_while_loading(path: str | Path | None) -> Iterator[dict[str, str] | None]:
    """Name the kernels of a framework's own OpenBLAS copy while the framework loads.

    MXNet 1.9.1 bundles OpenBLAS 0.3.13, older than NumPy's: on a CPU it does not know (an Emerald
    Rapids, say), it runs its generic Prescott kernels, and MXNet's ``dot`` runs on them. Where
    that copy would pick a core without AVX2 on a CPU with it, and nobody named a core
    (``OPENBLAS_CORETYPE``, ``MULTIRNN_OPENBLAS=default``, or :func:`name_openblas_core` in an ancestor),
    ``OPENBLAS_CORETYPE`` is set inside the block and removed after it, so processes started later keep
    their own NumPy's choice. Wrap the framework's import in it (``path`` None: nothing to name).

    Yields:
        ``{"detected": the core it would pick, "core": the one named}``, or None where nothing was named.
    """
    chosen = None
    if os.environ.get("MULTIRNN_OPENBLAS", "").lower() != "default" and "OPENBLAS_CORETYPE" not in os.environ:
        wanted = wanted_core()
        detected = library_core(path) if wanted and path and Path(path).is_file() else None
        if detected and detected.lower() in NO_AVX2_CORES:
            chosen = {"detected": detected, "core": wanted}
    if chosen is None:
        yield None
        return
    os.environ["OPENBLAS_CORETYPE"] = chosen["core"]
    try:
        yield chosen
    finally:
        os.environ.pop("OPENBLAS_CORETYPE", None)


def generic_kernels_note() -> str | None:
    """Why this process's NumPy runs slowly, where its OpenBLAS loaded on a core without AVX2 on a CPU with
    it and nobody named the core (too late to fix here: a script that trains the NumPy backend in-process,
    not one of compare's workers). None otherwise, or with ``MULTIRNN_OPENBLAS=default``."""
    if not (cores := _generic_cores()):
        return None
    detected, wanted = cores
    return (f"NumPy's OpenBLAS runs its generic {detected} kernels on this CPU, which can run its {wanted} ones "
            "(OpenBLAS does not know this CPU), so the NumPy backend trains several times slower (the oracle "
            f"3.1x in compare's default run on an Emerald Rapids). Set OPENBLAS_CORETYPE={wanted} before Python "
            "starts (python -m multirnn.compare and the sweep do it for their workers), or "
            "MULTIRNN_OPENBLAS=default to keep OpenBLAS's choice without this warning.")


def chosen_core() -> dict[str, str] | None:
    """``{"detected": the core OpenBLAS picked, "core": the one named}`` where :func:`name_openblas_core`
    named it (in this process or an ancestor), else None."""
    if DETECTED_VARIABLE in os.environ and "OPENBLAS_CORETYPE" in os.environ:
        return {"detected": os.environ[DETECTED_VARIABLE], "core": os.environ["OPENBLAS_CORETYPE"]}
    return None


def user_environ(names: tuple[str, ...]) -> dict[str, str]:
    """Those of ``names`` set in the environment by the user (not by :func:`name_openblas_core`)."""
    set_here = {"OPENBLAS_CORETYPE"} if chosen_core() else set()
    return {k: os.environ[k] for k in names if k in os.environ and k not in set_here}
