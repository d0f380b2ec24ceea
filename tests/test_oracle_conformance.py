"""The NumPy oracle passes the whole exported conformance suite, every check and both modes.

``tests/test_backends.py`` runs only the oracle's checks against an independent NumPy computation
(comparing it with itself proves little), but whoever subclasses the oracle or runs
``run_conformance(NumpyBackend())`` runs every check: a failure there must be theirs, never the
oracle's (e.g. a float64 gradient norm from a float32 step, which ``check_float32_step`` rejects).
"""

from __future__ import annotations

import pytest

from multirnn.backends.numpy_backend import NumpyBackend
from multirnn.cells import Model
from multirnn.testing import CONFORMANCE, run_conformance
from tests.conftest import MODES
from tests.test_backends import MODELS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name.replace(" ", "").replace("(twobiases)", "+b2"))
def test_the_oracle_passes_every_conformance_check(model: Model, mode: str) -> None:
    assert len(CONFORMANCE) >= 30  # the whole suite, not a subset
    assert run_conformance(NumpyBackend(mode=mode, model=model)) == []
