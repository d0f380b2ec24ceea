"""Shared test helpers: which backends are selected, and the one skip-or-fail rule for them.

A backend whose framework is not installed is *skipped with a reason*; with
``MULTIRNN_REQUIRE_BACKENDS=1`` (set by CI and the per-backend tox envs) it *fails* instead, so a
run can never pass by skipping. ``MULTIRNN_BACKENDS=torch,jax`` narrows the selection.
"""

from __future__ import annotations

import importlib
import os
import signal

import pytest

import multirnn
import multirnn.blas
import multirnn.testing
from multirnn.backends import install_hint, probe

multirnn.keep_freed_memory()  # as the harness's workers do (the tests train in this process)
multirnn.blas.name_openblas_core()  # as compare does: xdist's workers, started after this, inherit it

_selected = os.getenv("MULTIRNN_BACKENDS", "").strip()
SELECTED = [b.strip() for b in _selected.split(",") if b.strip()] if _selected else multirnn.known_backends()
REQUIRED = os.getenv("MULTIRNN_REQUIRE_BACKENDS") == "1"
FRAMEWORKS = [b for b in SELECTED if b != "numpy"]
MODES = ["eager", "fast"]


def _load(name: str, mode: str = "eager") -> multirnn.Backend:
    require_backend(name)
    return multirnn.get_backend(name, mode=mode)


def require_backend(name: str, module_level: bool = False) -> None:
    """Skip unless backend ``name`` is selected and installed; fail instead when it is selected,
    missing and ``MULTIRNN_REQUIRE_BACKENDS=1`` -- the one rule every backend test follows."""
    if name not in SELECTED:
        pytest.skip(f"{name} not selected (MULTIRNN_BACKENDS={_selected})", allow_module_level=module_level)
    reason = probe(name)
    if reason and REQUIRED:
        pytest.fail(f"{name} is required (MULTIRNN_REQUIRE_BACKENDS=1) but unavailable: {reason}", pytrace=False)
    if reason:  # the reason names the install command where the backend knows it: said once, not twice
        hint = "" if install_hint(name) in reason else f" ({install_hint(name)})"
        pytest.skip(f"{name} not installed{hint}: {reason}", allow_module_level=module_level)


# Optional modules that are not part of a backend: required only where every backend is (the [all]
# environment of CI and the README), not in the one-framework tox environments that lack them.
EXTRAS_OUTSIDE_BACKENDS = ("ray",)


def require_module(module: str, hint: str) -> None:
    """Skip when an optional module (e.g. flax, ray) is missing; fail instead under
    MULTIRNN_REQUIRE_BACKENDS=1 (for ray: only when every backend is selected, i.e. the [all] env)."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if REQUIRED and (module not in EXTRAS_OUTSIDE_BACKENDS or not _selected):
            pytest.fail(f"{module} is required (MULTIRNN_REQUIRE_BACKENDS=1) but cannot be imported: {exc}", pytrace=False)
        pytest.skip(f"{module} is not installed ({hint}): {exc}")


def require_backend_module(name: str) -> None:
    """Module-level :func:`require_backend` for a backend-specific test file."""
    require_backend(name, module_level=True)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per usable core, at most 4 -- each worker imports
    every framework (~2 GB) and runs their thread pools, so more would only compete."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


@pytest.fixture(scope="session")
def oracle() -> multirnn.Backend:
    return multirnn.get_backend("numpy")


# One definition of the random test problem, shared with the importable conformance checks.
random_problem = multirnn.testing.random_problem



# Tests that send SIGINT to a child need the child to get Ctrl-C's default behaviour. A shell without job
# control starts background commands with SIGINT *ignored*, an ignored signal stays ignored across exec,
# and Python keeps an inherited SIG_IGN: so when this test run itself was started that way, give it a
# handler instead (a handler, unlike SIG_IGN, is reset to the default in every child it starts).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
