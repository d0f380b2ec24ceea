"""Conformance: every backend and mode computes what the NumPy oracle computes.

The checks themselves live in :mod:`multirnn.testing` (so a third-party backend runs the very same
ones); here they are parametrized over every selected backend and mode. The NumPy oracle runs only
the checks that compare with an independent NumPy computation: comparing it with itself proves
nothing (its own gradients are checked against finite differences in ``test_oracle.py``).
"""

from __future__ import annotations

import pytest

import multirnn
from multirnn import GPUUnavailableError
from multirnn.testing import CONFORMANCE, Check
from tests.conftest import FRAMEWORKS, MODES, SELECTED, _load

CASES = [(name, mode, check) for name in FRAMEWORKS for mode in MODES for check in CONFORMANCE]
CASES += [("numpy", "eager", check) for check in CONFORMANCE if not check.against_oracle and "numpy" in SELECTED]


@pytest.mark.parametrize("name, mode, check", CASES, ids=[f"{n}-{m}-{c}" for n, m, c in CASES])
def test_conformance(name: str, mode: str, check: Check) -> None:
    check(_load(name, mode))


@pytest.mark.parametrize("name", SELECTED)
def test_gpu_request_without_gpu_is_a_clear_error(name):
    _load(name)
    try:
        multirnn.get_backend(name, device="gpu")
    except GPUUnavailableError as exc:
        assert "gpu" in str(exc).lower()
    else:
        pytest.skip(f"{name} sees a GPU here; nothing to check")


def test_every_check_has_a_distinct_id():
    ids = [str(c) for c in CONFORMANCE]
    assert len(ids) == len(set(ids)), ids
