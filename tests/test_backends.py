"""Conformance: every backend, implementation, mode and model computes what the NumPy oracle computes.

The checks themselves live in :mod:`multirnn.testing` (so a third-party backend runs the very same
ones); here they are parametrized over backend x impl (scratch, layers) x mode x model (cell,
depth, bias layout). The one-layer tanh RNN, d2l's own model, gets every check; the other models
get the core ones (forward, loss and gradients in both dtypes, a clipped step, a clipped training
curve, state carry, greedy decoding, and in fast mode the float32 re-anchored run), which keeps CI
within its time budget.

A model an implementation cannot compute must say so (UnsupportedModelError with the reason, e.g.
torch.nn.GRU is reset-after, so it cannot be d2l's GRU): ``EXPECTED_UNSUPPORTED`` lists every such
combination and ``test_unsupported_models_say_why`` holds each implementation to it, so a model
is never silently skipped. The NumPy oracle runs only the checks that compare with an independent
NumPy computation: comparing it with itself proves nothing (its gradients are checked against
finite differences in ``test_oracle.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import multirnn
import multirnn.backends
from multirnn import GPUUnavailableError, UnsupportedModelError
from multirnn.cells import CELLS, Model
from multirnn.testing import (
    CONFORMANCE,
    Check,
    check_float32_step,
    check_forward,
    check_greedy_decode,
    check_init_state,
    check_lockstep,
    check_loss_and_grads,
    check_params_round_trip,
    check_state_carry,
    check_train_step,
    check_training_curve,
)
from tests.conftest import FRAMEWORKS, MODES, SELECTED, require_backend, require_module

RNN = Model()
MODELS = [Model(c, n) for c in CELLS for n in (1, 2)] + [Model(c, 1, True) for c in ("rnn", "gru-reset-after", "lstm")]
CORE: tuple[Check, ...] = (
    Check(check_params_round_trip, {"dtype": "float64"}, against_oracle=False),
    Check(check_init_state, {"dtype": "float32"}, against_oracle=False),
    Check(check_forward, {"dtype": "float64", "batch_size": 3, "num_steps": 5}),
    Check(check_loss_and_grads, {"dtype": "float64", "batch_size": 3, "num_steps": 5}),
    Check(check_loss_and_grads, {"dtype": "float32", "batch_size": 4, "num_steps": 7}),
    Check(check_state_carry, against_oracle=False),
    Check(check_train_step, {"clip": "on"}),
    Check(check_training_curve, {"sampling": "sequential"}),
    Check(check_float32_step),
    Check(check_lockstep, {"dtype": "float32"}),
    Check(check_greedy_decode),
)
IMPLS = ["scratch", "layers"]
# (backend, impl, cell, second_bias) that cannot be computed, and a word the reason must contain.
_RESET_AFTER = "reset"  # torch.nn.GRU, Gluon's GRU and flax's GRUCell apply the reset gate after the matmul
EXPECTED_UNSUPPORTED: dict[tuple[str, str, str, bool], str] = {
    ("torch", "layers", "gru", False): _RESET_AFTER,
    ("mxnet", "layers", "gru", False): _RESET_AFTER,
    ("jax", "layers", "gru", False): _RESET_AFTER,
    ("torch", "layers", "gru", True): _RESET_AFTER,
    ("mxnet", "layers", "gru", True): _RESET_AFTER,
    ("jax", "layers", "gru", True): _RESET_AFTER,
    # Keras' SimpleRNN, GRU(reset_after=False) and LSTM and flax's cells carry one bias per gate: a trained
    # second bias has nowhere to live (Keras' GRU(reset_after=True) has a recurrent bias row: supported)
    ("tensorflow", "layers", "rnn", True): "bias",
    ("tensorflow", "layers", "lstm", True): "bias",
    ("jax", "layers", "rnn", True): "bias",
    ("jax", "layers", "lstm", True): "bias",
    ("jax", "layers", "gru-reset-after", True): "bias",
}


def _expected_unsupported(name: str, impl: str, model: Model) -> str | None:
    return EXPECTED_UNSUPPORTED.get((name, impl, model.cell.name, model.second_bias))


def _cases() -> list[tuple[str, str, str, Model, Check]]:
    cases = []
    for model in MODELS:
        checks = CONFORMANCE if model == RNN else CORE
        for name in FRAMEWORKS:
            for impl in IMPLS:
                if _expected_unsupported(name, impl, model):
                    continue
                for mode in MODES:
                    # The float32 re-anchored run goes through the fast path compare uses by default; an
                    # eager path of another model is held to the oracle by the float64 curve and steps.
                    cases += [(name, impl, mode, model, c) for c in checks
                              if model == RNN or mode == "fast" or c.fn is not check_lockstep]
        if "numpy" in SELECTED:
            cases += [("numpy", "scratch", "eager", model, c) for c in checks if not c.against_oracle]
    return cases


CASES = _cases()


def _id(name: str, impl: str, mode: str, model: Model, check: Check) -> str:
    m = model.name.replace(" ", "").replace("(twobiases)", "+b2")
    return f"{name}-{impl}-{mode}-{m}-{check}"


def make(name: str, impl: str = "scratch", mode: str = "eager", model: Model = RNN) -> multirnn.Backend:
    require_backend(name)
    return multirnn.get_backend(name, impl=impl, mode=mode, model=model)


@pytest.mark.parametrize("name, impl, mode, model, check", CASES, ids=[_id(*c) for c in CASES])
def test_conformance(name: str, impl: str, mode: str, model: Model, check: Check) -> None:
    check(make(name, impl, mode, model))


UNSUPPORTED = [(n, i, m) for m in MODELS for n in FRAMEWORKS for i in IMPLS if _expected_unsupported(n, i, m)]


@pytest.mark.parametrize("name, impl, model", UNSUPPORTED, ids=[f"{n}-{i}-{m.name}" for n, i, m in UNSUPPORTED])
def test_unsupported_models_say_why(name: str, impl: str, model: Model) -> None:
    require_backend(name)
    with pytest.raises(UnsupportedModelError, match=_expected_unsupported(name, impl, model)):
        multirnn.get_backend(name, impl=impl, model=model)


ALL_ROWS = [(n, i, m) for m in MODELS for n in FRAMEWORKS for i in IMPLS]


@pytest.mark.parametrize("name, impl, model", ALL_ROWS, ids=[f"{n}-{i}-{m.name}" for n, i, m in ALL_ROWS])
def test_the_parent_refuses_what_the_rule_says(name: str, impl: str, model: Model) -> None:
    """compare and sweep refuse an unsupported layer without starting its worker (backends.refusal,
    framework-neutral: it runs with no framework installed)."""
    told = multirnn.backends.refusal(name, impl, model)
    expected = _expected_unsupported(name, impl, model)
    assert (told is not None) == bool(expected), (told, expected)
    if told:
        assert re.search(expected, told), told


@pytest.mark.parametrize("name, impl, model", ALL_ROWS, ids=[f"{n}-{i}-{m.name}" for n, i, m in ALL_ROWS])
def test_the_parent_refuses_exactly_what_the_backend_refuses(name: str, impl: str, model: Model) -> None:
    """The parent's rule says what the class itself raises, word for word."""
    require_backend(name)
    if impl == "layers" and name == "jax":
        require_module("flax", "pip install 'multirnn[jax]'")
    told = multirnn.backends.refusal(name, impl, model)
    try:
        multirnn.get_backend(name, impl=impl, model=model)
        raised = None
    except UnsupportedModelError as exc:
        raised = str(exc)
    assert raised == told


def test_refusal_imports_no_framework() -> None:
    code = ("import sys, multirnn.backends as b; from multirnn.cells import Model; "
            "assert b.refusal('torch', 'layers', Model('gru')); "
            "print(sorted(m for m in ('torch', 'jax', 'mxnet', 'tensorflow', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("name", SELECTED)
def test_gpu_request_without_gpu_is_a_clear_error(name):
    require_backend(name)
    try:
        multirnn.get_backend(name, device="gpu")
    except GPUUnavailableError as exc:
        assert "gpu" in str(exc).lower()
    else:
        pytest.skip(f"{name} sees a GPU here; nothing to check")


def test_every_check_has_a_distinct_id():
    ids = [str(c) for c in CONFORMANCE]
    assert len(ids) == len(set(ids)), ids


def test_the_oracle_computes_every_model():
    for model in MODELS:
        assert multirnn.get_backend("numpy", model=model).model == model
