"""What the verdict can see of broken state rules: lockstep.state_effects against the zoo's real
bugs, and the verdict's note when those effects lie inside the band."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from multirnn import lockstep, verdict
from multirnn.backends.numpy_backend import NumpyBackend
from multirnn.config import preset
from multirnn.harness import prepare_data, train
from tests import zoo
from tests.test_verdict import REF, backend_row, judge, probe

ROOT = Path(__file__).resolve().parents[1]


def _first_checkpoint(sampling: str = "sequential", scale: float = 30.0):
    """A float64 run's first checkpoint, its weights scaled up so that the state matters."""
    config = preset("quick", num_hiddens=16, num_epochs=1, max_tokens=2000, batch_size=4, num_steps=6,
                    dtype="float64", sampling=sampling)
    data = prepare_data(config)
    found = []
    train(NumpyBackend(), config, data, checkpoint_epochs=[1], on_checkpoint=found.append)
    ckpt = found[0]
    ckpt.params.update({k: v * scale for k, v in ckpt.params.items() if k.startswith("W_")})
    return config, data, ckpt


def _two_batches(data, ckpt):
    batches = data.train_batches(lockstep._generator(ckpt.rng_state))
    return next(batches), next(batches)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_detach_is_what_the_zoo_backend_that_keeps_the_graph_changes():
    config, data, ckpt = _first_checkpoint()
    effects = lockstep.state_effects(NumpyBackend(), config, data, ckpt)
    (X1, Y1), (X2, Y2) = _two_batches(data, ckpt)
    norms = []
    for be in (NumpyBackend(), zoo.StateNotDetached()):
        p = be.params_from_numpy(ckpt.params)
        _, _, carried = be.loss_and_grads(p, X1, Y1, be.init_state(4, 16, "float64"))
        _, grads, _ = be.loss_and_grads(p, X2, Y2, carried)
        norms.append(math.sqrt(sum(float(np.sum(g * g)) for g in grads.values())))
    want = _rel(norms[1], norms[0])
    assert want > 1e-4  # the bug really changes the step here
    assert effects["detach"] == pytest.approx(want, rel=1e-8)


def test_reset_is_what_the_zoo_backend_that_resets_every_minibatch_changes():
    config, data, ckpt = _first_checkpoint()
    effects = lockstep.state_effects(NumpyBackend(), config, data, ckpt)
    (X1, Y1), (X2, Y2) = _two_batches(data, ckpt)
    ok, bug = NumpyBackend(), zoo.StateResetEveryMinibatch()
    p = ok.params_from_numpy(ckpt.params)
    _, _, carried = ok.loss_and_grads(p, X1, Y1, ok.init_state(4, 16, "float64"))
    # lr 0 and no clipping: the step reports the loss and the gradient norm and changes nothing
    _, l_ok, n_ok, _ = ok.train_step(ok.params_from_numpy(ckpt.params), X2, Y2, carried, 0.0, math.inf)
    _, l_bug, n_bug, _ = bug.train_step(bug.params_from_numpy(ckpt.params), X2, Y2, carried, 0.0, math.inf)
    want = max(_rel(float(l_bug), float(l_ok)), _rel(float(n_bug), float(n_ok)))
    assert want > 1e-4
    assert effects["reset"] == pytest.approx(want, rel=1e-8)


def test_random_sampling_has_no_carried_state_to_detach():
    config, data, ckpt = _first_checkpoint(sampling="random")
    effects = lockstep.state_effects(NumpyBackend(), config, data, ckpt)
    assert set(effects) == {"reset"} and effects["reset"] > 0


def _rows(effects):
    oracle = dict(REF, state_effects=effects)
    return [oracle, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])], [probe(1), probe(2)])]


def test_the_verdict_says_when_the_band_cannot_see_broken_state_rules():
    small = [{"epoch": 1, "reset": 1e-6, "detach": 2e-6}, {"epoch": 2, "reset": 1.6e-5, "detach": 4.9e-6}]
    v = judge(_rows(small))
    assert v.status == "agree" and v.state_effects == {"reset": 1.6e-5, "detach": 4.9e-6}
    note = next(n for n in v.notes if "state rules" in n)
    assert "1.6e-05" in note and "4.9e-06" in note and "float64" in note
    # one checkpoint where the state matters is enough for that rule
    v = judge(_rows([*small, {"epoch": 3, "reset": 5e-3, "detach": 1e-6}]))
    note = next(n for n in v.notes if "state rules" in n)
    assert "not detached" in note and "fresh state" not in note
    v = judge(_rows([*small, {"epoch": 3, "reset": 5e-3, "detach": 2e-3}]))
    assert not any("state rules" in n for n in v.notes)
    # in float64 the bands are 1e-9: the same effects are seen (the backend agreeing within them)
    exact = [REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])],
                              [probe(1, diff=1e-13), probe(2, diff=1e-13)])]
    exact[0] = dict(exact[0], state_effects=small)
    v = judge(exact, dtype="float64")
    assert v.status == "agree" and not any("state rules" in n for n in v.notes)
    assert "state rules" in (verdict._unseen_state_rules(v.state_effects, 1e-3) or "")
    # a non-finite effect (null in JSON) is skipped, not a crash
    assert judge(_rows([{"epoch": 1, "reset": None, "detach": 2e-6}])).state_effects == {"detach": 2e-6}


def test_the_note_stays_when_another_row_disagrees():
    # a row that agrees may still hide a state bug, whatever the other rows do
    small = [{"epoch": 1, "reset": 1e-6, "detach": 2e-6}]
    rows = [*_rows(small), backend_row("mxnet", REF, [(1, 0, [1, 1 + 3e-3, 1, 1]), (2, 3, [1, 1, 1])])]
    v = judge(rows)
    assert v.status == "disagree" and v.backend("torch").status == "agrees"
    assert any("state rules" in n for n in v.notes)
    rows[1] = backend_row("torch", REF, [(1, 0, [1, 1 + 3e-3, 1, 1]), (2, 3, [1, 1, 1])])
    assert not any("state rules" in n for n in judge(rows).notes)  # no row agrees: nothing to hide


def test_a_small_young_float32_run_warns_that_state_bugs_may_pass(tmp_path):
    """End to end (worker -> row -> verdict -> terminal): at hidden 64 after 2 epochs the zoo's
    not-detached state moves the re-anchored checks by ~2e-4 at most, inside the 1e-3 band."""
    proc = subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", "numpy,tests.zoo:StateNotDetached",
                           "--epochs", "2", "--hidden", "64", "--out", str(tmp_path / "run"), "--quiet", "--no-plot"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Note: at these settings the state rules barely move a step" in proc.stdout
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["verdict"]["state_effects"]["detach"] < 1e-3


def test_measuring_stops_once_every_rule_has_moved_a_step_past_the_band():
    assert not lockstep.state_rules_settled([], 1e-3)
    assert not lockstep.state_rules_settled([{"epoch": 1, "reset": 5e-3, "detach": 1e-4}], 1e-3)
    assert lockstep.state_rules_settled([{"epoch": 1, "reset": 5e-3, "detach": 1e-4},
                                         {"epoch": 7, "reset": 1e-5, "detach": 2e-3}], 1e-3)
    assert lockstep.state_rules_settled([{"epoch": 1, "reset": 5e-3}], 1e-3)  # random sampling: one rule
