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


class _EvalLossScaled(NumpyBackend):
    """evaluate_loss overridden wrongly: validation and --eval-text perplexities off, every other check passing."""

    def evaluate_loss(self, params, X, Y, state):
        loss, state = super().evaluate_loss(params, X, Y, state)
        return 1.5 * loss, state


class _RaisesInForward(NumpyBackend):
    def forward(self, params, X, state):
        return {}["no such key"]  # a bug of the backend's own: its file and line must show


def test_a_wrong_evaluate_loss_override_is_caught():
    failures = dict(run_conformance(_EvalLossScaled()))
    # its own checks, and the verdict's forward-pass check in the lockstep ones (the evaluation path is judged)
    assert sorted(failures) == ["evaluate_loss[float32]", "evaluate_loss[float64]", "lockstep[float32]",
                                "lockstep[float64]"], failures
    assert "evaluate_loss's loss" in failures["evaluate_loss[float64]"]
    assert "loss of its forward pass" in failures["lockstep[float32]"], failures["lockstep[float32]"]


def test_a_backend_s_own_error_is_reported_with_its_location_and_a_class_is_refused_at_once():
    failures = dict(run_conformance(_RaisesInForward()))
    assert f"(raised at {__file__}:" in failures["forward[float64,3,5]"] and "in forward)" in failures["forward[float64,3,5]"]
    with pytest.raises(TypeError, match=r"needs a multirnn.Backend instance \(an instance: MyBackend\(mode=...\)\)"):
        run_conformance(NumpyBackend)


class _NoVersion(NumpyBackend):
    def version(self) -> str:
        return ""


def test_a_backend_without_a_version_fails_only_that_check() -> None:
    failures = run_conformance(_NoVersion())
    assert [name for name, _ in failures] == ["version"], failures
    assert "return the framework's version string" in failures[0][1]
