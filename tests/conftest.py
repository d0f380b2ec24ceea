"""Shared fixtures: the backend fixture is parametrized over every known backend.

A backend whose framework is not installed is *skipped with a reason*; with
``MULTIRNN_REQUIRE_BACKENDS=1`` (set by CI and the per-backend tox envs) it *fails* instead, so a
run can never pass by skipping. ``MULTIRNN_BACKENDS=torch,jax`` narrows the selection.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import multirnn
from multirnn.backends import install_hint, probe

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
    if reason:
        pytest.skip(f"{name} not installed ({install_hint(name)}): {reason}", allow_module_level=module_level)


def require_backend_module(name: str) -> None:
    """Module-level :func:`require_backend` for a backend-specific test file."""
    require_backend(name, module_level=True)


@pytest.fixture(params=SELECTED, ids=SELECTED)
def backend(request: pytest.FixtureRequest) -> multirnn.Backend:
    """Every selected backend in its eager (d2l-style) mode, NumPy included."""
    return _load(request.param)


@pytest.fixture(params=[(b, m) for b in FRAMEWORKS for m in MODES], ids=[f"{b}-{m}" for b in FRAMEWORKS for m in MODES])
def framework_backend(request: pytest.FixtureRequest) -> multirnn.Backend:
    """Every selected framework backend (not the oracle), in each mode."""
    name, mode = request.param
    return _load(name, mode)


@pytest.fixture(scope="session")
def oracle() -> multirnn.Backend:
    return multirnn.get_backend("numpy")


def random_problem(
    seed: int = 0, vocab_size: int = 11, num_hiddens: int = 7, batch_size: int = 3, num_steps: int = 5,
    dtype: str = "float64", scale: float = 0.4,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Params with non-zero biases and a weight scale large enough that tanh is non-linear,
    random token batches and a random initial state."""
    rng = np.random.default_rng(seed)
    shapes = multirnn.params.param_shapes(vocab_size, num_hiddens)
    params = {k: (rng.standard_normal(s) * scale).astype(dtype) for k, s in shapes.items()}
    X = rng.integers(0, vocab_size, (batch_size, num_steps))
    Y = rng.integers(0, vocab_size, (batch_size, num_steps))
    h0 = (rng.standard_normal((batch_size, num_hiddens)) * 0.5).astype(dtype)
    return params, X, Y, h0
