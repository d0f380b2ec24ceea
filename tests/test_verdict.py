"""The verdict as pure functions over recorded numbers: no processes, no frameworks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from multirnn import agreement, verdict


def oracle_row(losses, norms=None, name="numpy"):
    """Two epochs of three steps; a stretch is epoch 1 and the first step of epoch 2 (4 steps), or epoch 2 (3)."""
    return {"name": name, "status": "ok", "step_loss": list(losses), "step_grad_norm": list(norms or [1.0] * len(losses)),
            "steps_per_epoch": [3, 3], "perplexity": [2.0], "shapes": None}


def probe(epoch=1, kind="clip", diff=1e-9, update=1e-2, size=1.0, loss=(2.0, 2.0), norm=(0.5, 0.5)):
    return {"epoch": epoch, "kind": kind, "lr": 0.5, "max_grad_norm": 0.25, "loss": loss[0], "ref_loss": loss[1],
            "grad_norm": norm[0], "ref_grad_norm": norm[1], "params": {"W_hh": [diff, update, size]}}


def backend_row(name, ref, stretches, probes=(), **extra):
    """A backend whose stretch at each (epoch, start) multiplies the reference's losses by ``factors``."""
    recs = []
    for epoch, start, factors in stretches:
        n = len(factors)
        recs.append({"epoch": epoch, "start_step": start,
                     "loss": [ref["step_loss"][start + i] * f for i, f in enumerate(factors)],
                     "grad_norm": ref["step_grad_norm"][start:start + n]})
    row = oracle_row(ref["step_loss"], ref["step_grad_norm"], name)
    row.update(lockstep={"stretches": recs, "probes": list(probes)}, **extra)
    return row


REF = oracle_row([3.0, 2.5, 2.0, 1.5, 1.2, 1.1], [0.5, 0.6, 1.5, 0.7, 0.4, 0.3])


def judge(rows, **kw):
    kw.setdefault("dtype", "float32")
    kw.setdefault("max_grad_norm", 1.0)
    return verdict.judge(rows, **kw)


def test_agreeing_backends_and_the_applied_bands():
    rows = [REF, backend_row("torch", REF, [(1, 0, [1, 1 + 5e-4, 1, 1]), (2, 3, [1, 1, 1])], [probe(1), probe(2)])]
    v = judge(rows)
    assert v.status == "agree" and v.reference == "numpy"
    torch = v.backend("torch")
    assert torch.status == "agrees" and torch.checkpoints_checked == 2
    assert torch.max_loss_deviation == pytest.approx(5e-4)
    assert (v.step_rtol, v.norm_rtol, v.probe_rtol) == (1e-3, 1e-3, 1e-3)
    assert v.backend("numpy").status == "reference"
    assert v.clipped_steps == 1 and v.total_steps == 6  # one reference norm (1.5) above θ = 1
    assert "at 2 checkpoints" in v.summary


def test_the_first_crossing_is_named_with_epoch_and_step():
    rows = [REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1 + 3e-3, 1])])]
    v = judge(rows)
    assert v.status == "disagree" and v.disagreeing == ["torch"]
    c = v.backend("torch").first_crossing
    # global step 5 is epoch 2's second step: named by its epoch's count, the run's in brackets
    assert (c.epoch, c.step, c.global_step, c.what) == (2, 2, 5, "loss") and c.deviation == pytest.approx(3e-3)
    assert "epoch 2, step 2 (step 5 of the run)" in v.summary


def test_a_probe_outside_its_band_is_a_disagreement_and_rounding_is_allowed():
    ok = [probe(1, diff=5e-6, update=1e-2, size=1.0)]  # 5e-4 of the update: inside 1e-3
    rounding = [probe(1, diff=2e-8, update=1e-5, size=0.05)]  # 2e-3 of a tiny update, but below the rounding allowance
    bad = [probe(1, diff=2e-5, update=1e-2, size=1.0)]  # 2e-3 of the update
    for probes, status in ((ok, "agrees"), (rounding, "agrees"), (bad, "disagrees")):
        v = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], probes)])
        assert v.backend("jax").status == status, probes
    c = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], bad)]).backend("jax").first_crossing
    assert c.step is None and "W_hh update" in c.what and "clipping on" in c.what


def test_a_parameter_the_oracles_step_leaves_unchanged_must_stay_unchanged():
    """Its band was infinite: a backend that moved a parameter the oracle's step did not move (a zero gradient,
    an untrained slot) agreed, and the table showed 'infx band' beside 'agrees'."""
    moved = probe(1, diff=8.5e-3, update=0.0, size=0.17)  # 5e-2 of the parameter
    rounded = probe(1, diff=1e-8, update=0.0, size=0.17)  # 6e-8 of it: float32 rounding (2.4e-7)
    zero = probe(1, diff=1e-9, update=0.0, size=0.0)  # a zero parameter the oracle left at zero, moved
    denormal = probe(1, diff=1e-40, update=0.0, size=0.0)  # by a float32 denormal: rounding
    exact = probe(1, diff=0.0, update=0.0, size=0.0)
    for probes, status in (([moved], "disagrees"), ([rounded], "agrees"), ([zero], "disagrees"), ([exact], "agrees"),
                           ([denormal], "agrees")):
        b = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], probes)]).backend("jax")
        assert b.status == status, probes
        assert math.isfinite(b.max_probe_ratio) or status == "disagrees"
    b = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], [moved])]).backend("jax")
    assert "W_hh update (the oracle's is 0; relative to the parameter) deviates by 5.00e-02 (band 2.4e-07)" in b.reason
    assert b.max_probe_ratio == pytest.approx(5e-2 / 2.384185791015625e-07)


def test_a_probe_names_every_update_outside_its_band_the_worst_first():
    p = probe(1, diff=2e-5, update=1e-2, size=1.0)
    p["params"]["W_xh"] = [5e-5, 1e-2, 1.0]  # 5e-3 of its update: worse than W_hh's 2e-3
    c = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], [p])]).backend("jax").first_crossing
    assert c.what.endswith("W_xh update") and c.also == ("W_hh update",)
    assert c.describe().endswith("; also outside: W_hh update")


def test_a_probe_the_oracles_own_step_overflowed_blames_no_row():
    """lr 1e300 in float64: the oracle's probe update (or its norm) was infinite, the row's too, and each row was
    called "disagrees" (exit 1) for "W_hh update is NaN or infinite" where the run was simply not judgeable."""
    overflowed = probe(1, diff=math.nan, update=math.inf, size=math.inf, loss=(math.inf, math.inf), norm=(math.nan, math.nan))
    b = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], [overflowed])]).backend("jax")
    assert b.status == "agrees" and b.checkpoints_checked == 1 and b.max_probe_ratio == 0.0  # judged on its stretch
    b = judge([REF, backend_row("jax", REF, [], [overflowed])]).backend("jax")
    assert b.first_crossing is None and b.max_probe_ratio == 0.0
    # where the oracle's step stayed finite, the row's overflow is still outside any band
    own = probe(1, diff=math.inf, update=1e-2, size=1.0, loss=(math.inf, 2.0))
    b = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], [own])]).backend("jax")
    assert b.status == "disagrees"


def test_probe_norms_do_not_overflow_for_finite_updates():
    from multirnn.lockstep import _norm

    assert _norm(np.array([3e200, 4e200])) == pytest.approx(5e200)  # np.linalg.norm: inf
    assert _norm(np.zeros(3)) == 0.0 and math.isinf(_norm(np.array([math.inf, 1.0])))
    x = np.random.default_rng(0).normal(size=1000)
    assert _norm(x) == pytest.approx(np.linalg.norm(x), rel=1e-15)


def test_float64_bands_are_strict():
    rows = [REF, backend_row("torch", REF, [(1, 0, [1, 1 + 5e-9, 1, 1])])]
    assert judge(rows, dtype="float64").status == "disagree"
    assert judge(rows, dtype="float32").status == "agree"


def test_one_backend_without_the_oracle_is_not_agreement():
    v = judge([backend_row("torch", REF, [])])
    assert v.status == "not-judged" and v.reference is None
    assert v.backend("torch").status == "not-judged" and "include numpy" in v.summary
    assert judge([oracle_row(REF["step_loss"])]).status == "not-judged"  # the oracle alone compares nothing
    two = [backend_row("torch", REF, []), backend_row("jax", REF, [])]
    assert judge(two).status == "not-judged"


def test_median_of_three_backends_is_the_reference_without_the_oracle():
    good = [(1, 0, [1, 1, 1, 1])]
    rows = [backend_row("torch", REF, good), backend_row("jax", REF, good), backend_row("mxnet", REF, [(1, 0, [1, 1.1, 1, 1])])]
    v = judge(rows)
    assert v.reference == "median" and v.disagreeing == ["mxnet"]
    assert v.backend("torch").status == "agrees"


def test_without_the_oracle_the_anchor_s_free_run_joins_the_median():
    """The row the others restart from runs no stretch: its free run over the same steps is its stretch.
    Left out, the median of a correct row and a wrong one is their mean, and the correct row disagreed."""
    anchor = backend_row("torch", REF, [])
    anchor["lockstep"]["anchor"] = True
    rows = [anchor, backend_row("mxnet", REF, [(1, 0, [1, 1, 1, 1])]),
            backend_row("bug", REF, [(1, 0, [1, 1.1, 1, 1])])]
    v = judge(rows)
    assert v.reference == "median" and v.disagreeing == ["bug"], v.summary
    assert v.backend("mxnet").status == "agrees" and v.backend("torch").status == "agrees"
    assert v.backend("torch").checkpoints_checked == 1  # the anchor is judged on its free run too
    assert rows[0]["lockstep"]["stretches"] == []  # the input is not modified


def test_a_median_without_a_majority_says_it_is_no_reference():
    """Two bugs among four rows without the oracle: every row disagreed, the correct ones too, and nothing said
    why."""
    good, bad = [(1, 0, [1, 1, 1, 1])], [(1, 0, [1, 1.1, 1, 1])]
    rows = [backend_row("torch", REF, good), backend_row("mxnet", REF, good), backend_row("bug1", REF, bad),
            backend_row("bug2", REF, [(1, 0, [1, 1.2, 1, 1])])]
    v = judge(rows)
    assert v.reference == "median" and any("with no majority of correct rows" in n for n in v.notes), v.notes
    one_bug = judge([backend_row("torch", REF, good), backend_row("mxnet", REF, good), backend_row("bug1", REF, bad)])
    assert not any("majority" in n for n in one_bug.notes)


def test_crashed_and_unavailable_rows():
    rows = [REF, {"name": "mxnet", "status": "crashed", "error": "signal 11"},
            {"name": "tensorflow", "status": "unavailable", "error": "not installed"}]
    v = judge(rows)
    # a crash fails the run (exit 1) but is no disagreement: its own status
    assert v.status == "crashed" and v.crashed == ["mxnet"] and v.unavailable == ["tensorflow"]
    assert "crashed: mxnet" in v.summary
    assert judge([{"name": "jax", "status": "crashed"}]).status == "no-backend"


def test_judge_does_not_modify_its_input():
    rows = [REF, backend_row("torch", REF, [(1, 0, [1, 1 + 3e-4, 1, 1])], [probe()])]
    before = copy.deepcopy(rows)
    judge(rows)
    assert rows == before


def test_a_stretch_that_stopped_early_disagrees():
    rows = [REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])])]
    rows[1]["lockstep"]["stretches"][0]["loss"] = rows[1]["lockstep"]["stretches"][0]["loss"][:2]
    rows[1]["lockstep"]["stretches"][0]["grad_norm"] = rows[1]["lockstep"]["stretches"][0]["grad_norm"][:2]
    c = judge(rows).backend("torch").first_crossing
    assert c.what.startswith("missing steps") and c.step == 3 and c.epoch == 1 and c.global_step == 3


def test_without_lockstep_the_free_run_is_held_to_the_fixed_band():
    row = oracle_row([3.0, 2.5 * (1 + 5e-4), 2.0 * (1 + 3e-3), 1.5, 1.2, 1.1], REF["step_grad_norm"], "torch")
    v = judge([REF, row], lockstep=False)
    torch = v.backend("torch")
    assert torch.status == "disagrees" and torch.first_crossing.step == 3 and torch.first_crossing.global_step == 3
    assert torch.free_run_max_deviation == pytest.approx(3e-3)
    assert any("free-running float32 curves" in n for n in v.notes)
    agreeing = judge([REF, oracle_row(REF["step_loss"], REF["step_grad_norm"], "torch")], lockstep=False)
    assert agreeing.status == "agree"  # and it says what an agreement without probe steps cannot show
    assert any("no probe step forced gradient clipping or changed lr" in n for n in agreeing.notes), agreeing.notes


def test_the_checkpoint_count_goes_with_the_re_anchored_checks():
    rows = [dict(REF, perplexity=[5.0] * 20)] + [dict(backend_row(n, REF, [(1, 0, [1, 1, 1, 1])]), perplexity=[p] * 20)
                                                 for n, p in (("torch", 5.2), ("jax", 5.1))]
    v = judge(rows, init="independent")
    assert "probe updates within 0.001 at 1 checkpoint, final perplexities within 15% of the NumPy oracle's" in v.summary, v.summary


def test_independent_init_compares_final_perplexities():
    a, b, c = (dict(oracle_row(REF["step_loss"], name=n), perplexity=[p] * 20) for n, p in
               (("numpy", 5.0), ("torch", 5.2), ("jax", 7.0)))
    v = judge([a, b, c], init="independent")
    assert v.backend("jax").status == "disagrees" and "final perplexity" in v.backend("jax").reason
    assert v.backend("torch").status == "agrees" and v.backend("numpy").final_distance == 0.0
    assert v.backend("torch").final_distance == pytest.approx(0.2 / 5.0)


def _fw_row(name, main, seeds, paired=None):
    row = dict(oracle_row(REF["step_loss"], name=name), perplexity=[main] * 20,
               seed_runs=[{"seed": i + 1, "median_last_perplexity": p} for i, p in enumerate(seeds)])
    if paired is not None:
        row["paired_oracle_runs"] = [{"seed": i, "median_last_perplexity": p} for i, p in enumerate(paired)]
    return row


def test_framework_init_pairs_each_run_with_the_d2l_model_from_the_same_weights():
    """Own initialisers may train to a very different perplexity (the initialisers' effect, a note);
    the verdict pairs each run with the oracle trained from the same weights."""
    ref = _fw_row("numpy", 5.0, [5.1, 4.9])
    good = _fw_row("torch", 2.0, [2.02, 1.98], paired=[2.001, 2.03, 1.97])
    bad = _fw_row("jax", 2.0, [2.0, 2.0], paired=[1.5, 1.52, 1.49])  # the layer trains a different model
    v = judge([ref, good, bad], init="framework")
    torch, jax = v.backend("torch"), v.backend("jax")
    assert torch.status == "agrees" and torch.equivalence["equivalent"] is True
    assert torch.init_effect == pytest.approx(2.0 / 5.0 - 1)
    assert jax.status == "disagrees" and "same weights" in jax.reason and jax.equivalence["equivalent"] is not True
    assert any("initialisers" in n and "torch -60.0%" in n for n in v.notes)
    # a small effect keeps its sign and size ("mxnet/layers -0%" read as nothing)
    small = _fw_row("torch", 4.985, [5.0, 4.97], paired=[4.99, 5.0, 4.98])
    assert any("torch -0.3%" in n for n in judge([ref, small], init="framework").notes)


def test_framework_init_that_shows_neither_equivalence_nor_difference_is_not_judged():
    """--init framework --impl layers --epochs 10 failed correct Keras and Gluon layers (exit 1): 3 pairs
    spread over [-43 %, +7 %] showed nothing, and "not shown equivalent" was called a disagreement."""
    ref = _fw_row("numpy", 5.0, [5.1, 4.9])
    good = _fw_row("torch", 2.0, [2.02, 1.98], paired=[2.001, 2.03, 1.97])
    spread = _fw_row("tensorflow", 2.0, [2.6, 1.5], paired=[2.3, 2.0, 2.0])  # -13 %, +30 %, -25 %
    v = judge([ref, good, spread], init="framework")
    tf = v.backend("tensorflow")
    assert tf.equivalence["equivalent"] is None
    assert tf.status == "not-judged" and tf.reason.startswith("too little to judge (statistical)"), tf.reason
    assert "--init-seeds" in tf.reason
    assert v.backend("torch").status == "agrees"
    assert v.status == "not-judged", v.summary  # exit 4: not a pass, and not a disagreement
    assert "tensorflow: too little to judge" in v.summary and "torch agrees" in v.summary, v.summary


def test_framework_init_with_one_seed_holds_the_single_pair_to_the_margin():
    ref = _fw_row("numpy", 5.0, [])
    near, far = _fw_row("torch", 2.0, [], paired=[2.1]), _fw_row("jax", 2.0, [], paired=[2.6])
    v = judge([ref, near, far], init="framework")
    assert v.backend("torch").status == "agrees" and v.backend("jax").status == "disagrees"
    assert "one pair" in v.backend("jax").reason


def test_without_lockstep_other_inits_claim_no_curve_check():
    # own initialisers (or independent seeds) start elsewhere: no curve was compared, so none is claimed
    ref = _fw_row("numpy", 5.0, [])
    v = judge([ref, _fw_row("torch", 2.0, [], paired=[2.1])], init="framework", lockstep=False)
    assert v.status == "agree" and "free-running" not in v.summary and "statistical" in v.summary
    assert not any("free-running float32 curves" in n for n in v.notes)
    a, b = (dict(oracle_row(REF["step_loss"], name=n), perplexity=[p] * 20) for n, p in (("numpy", 5.0), ("torch", 5.2)))
    v = judge([a, b], init="independent", lockstep=False)
    assert "free-running" not in v.summary and "final perplexities within 15%" in v.summary


def test_framework_init_without_own_initialisers_pairs_with_the_oracles_seeds():
    ref = _fw_row("numpy", 5.0, [5.1, 4.9])
    same = _fw_row("torch", 5.001, [5.1, 4.902])  # no paired runs: it started from d2l's weights too
    v = judge([ref, same], init="framework")
    assert v.backend("torch").status == "agrees" and v.backend("torch").paired_finals == (5.0, 5.1, 4.9)
    # it started from d2l's weights: no initialisers' effect is reported for it
    assert v.backend("torch").init_effect is None and not any("initialisers, not the layers" in n for n in v.notes)


def test_shapes_are_checked():
    expected = agreement.expected_shapes(2, 3, 5, 4)
    bad = dict(backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])]), shapes={**expected, "state_H": [4, 2]})
    v = judge([REF, bad], expected_shapes=expected)
    assert v.backend("torch").status == "disagrees" and "state" in v.backend("torch").reason


def test_verdict_serialises_without_nan():
    import json

    rows = [REF, backend_row("torch", REF, [(1, 0, [1, math.inf, 1, 1])])]
    d = verdict.judge(rows, dtype="float32").to_dict()
    text = json.dumps(agreement_safe(d), allow_nan=False)
    assert '"disagreeing": ["torch"]' in text


def agreement_safe(obj):
    from multirnn.files import finite_or_none

    return finite_or_none(obj)


def test_checkpoint_epochs_and_auto_spacing():
    from multirnn import lockstep

    assert lockstep.checkpoint_epochs(60, 7) == [1, 8, 15, 22, 29, 36, 43, 50, 57, 60]
    assert lockstep.checkpoint_epochs(3, 1) == [1, 2, 3] and lockstep.checkpoint_epochs(5, 0) == []
    every = lockstep.auto_every(8)
    assert (8 + 3) / 8 / every <= lockstep.DEFAULT_BUDGET  # near the budget, never above it
    # a stretch stops at MAX_STRETCH_STEPS: 16 + 2 probe steps in a 1000-step epoch fit every epoch
    assert lockstep.MAX_STRETCH_STEPS == 16 and lockstep.auto_every(1000) == 1 and lockstep.auto_every(40) == 2
    # ... but not more than about MAX_AUTO_CHECKPOINTS of them; the book run (8-step epochs) keeps every 6th
    assert lockstep.auto_every(1000, 500) == 5 and lockstep.auto_every(8, 500) == 6 == lockstep.auto_every(8)


def test_a_row_stopped_by_the_user_is_interrupted_not_crashed():
    stopped = {"name": "jax", "status": "interrupted", "error": "interrupted (Ctrl-C) before it finished"}
    v = judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])], [probe(1)]), stopped])
    assert v.backend("jax").status == "interrupted" and v.interrupted == ["jax"] and v.crashed == []
    assert "stopped before finishing: jax" in v.summary and "crashed" not in v.summary
    assert v.to_dict()["interrupted"] == ["jax"]
    v = judge([dict(stopped, name="numpy"), stopped])
    assert v.status == "no-backend" and v.summary == "no backend finished before the run was stopped"


def diverged_oracle(losses, steps_per_epoch, epoch, step):
    row = oracle_row(losses)
    row.update(status="diverged", steps_per_epoch=list(steps_per_epoch), diverged_epoch=epoch, diverged_step=step,
               error="Training diverged")
    return row


def test_a_reference_diverging_in_its_first_stretch_is_too_little_to_judge():
    # the oracle blew up at epoch 1, step 3: two steps and the probes are no evidence about the state rules
    ref = diverged_oracle([3.0, 2.5], [], 1, 3)
    rows = [ref, backend_row("torch", ref, [(1, 0, [1, 1])], [probe(1)])]
    v = judge(rows)
    assert v.status == "not-judged", v.summary
    assert "too little to judge" in v.summary and "epoch 1, step 3" in v.summary
    assert "torch agrees with it on the probe steps only (the 2 steps before it are not judged" in v.summary
    assert v.backend("torch").status == "not-judged" and v.backend("torch").agrees is None  # not "agrees" either
    assert "too little to judge" in v.backend("torch").reason
    assert v.reference_diverged == {"name": "numpy", "epoch": 1, "step": 3, "steps_compared": 2,
                                    "whole_stretch": False, "how": "diverged", "detail": None}
    # a disagreement is still a disagreement (the probes say so), diverged or not
    bad = [ref, backend_row("torch", ref, [(1, 0, [1, 1])], [probe(1, diff=2e-5)])]
    assert judge(bad).status == "disagree"


def test_the_stretch_a_diverging_reference_cut_short_is_not_judged():
    # two whole epochs, then the blow-up at epoch 3, step 1: the stretch of epoch 2 misses its boundary step
    ref = diverged_oracle([3.0, 2.5, 2.0, 1.5, 1.2, 1.1], [3, 3], 3, 1)
    near_blowup = backend_row("torch", ref, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1 + 3e-3, 1])])
    v = judge([ref, near_blowup])
    assert v.status == "agree", v.summary
    assert "until the NumPy oracle diverged (epoch 3, step 1; the stretch it cut short is not judged)" in v.summary
    assert v.reference_diverged["whole_stretch"] is True
    # the report's plot leaves a gap there, not a point at "exact"
    assert [c.loss_deviation is None for c in v.backend("torch").checkpoints] == [False, True]
    # the whole stretch before it is still held to the band
    wrong = backend_row("torch", ref, [(1, 0, [1, 1 + 3e-3, 1, 1]), (2, 3, [1, 1, 1])])
    assert judge([ref, wrong]).status == "disagree"


def test_a_reference_that_blew_up_without_overflowing_is_judged_as_diverged_there():
    """At --lr 4 --clip 1e9 the oracle's loss jumped to ~350 nats and stayed finite: float32 rounding of such
    logits differs between correct implementations, so its steps from the blow-up on are not judged."""
    shapes = {"logits": [12, 28]}  # V = 28: a uniform guess scores ln 28 = 3.33, the blow-up line 33.3
    ref = oracle_row([3.0, 2.5, 2.0, 1.5, 350.0, 400.0])
    ref["shapes"] = shapes
    noisy = backend_row("torch", ref, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1 + 3e-3, 1])], shapes=shapes)
    v = judge([ref, noisy], expected_shapes=shapes)
    assert v.status == "agree", v.summary
    assert v.reference_diverged["how"] == "blew up" and (v.reference_diverged["epoch"], v.reference_diverged["step"]) == (2, 2)
    assert "until the NumPy oracle blew up at epoch 2, step 2 (loss 350" in v.summary
    assert "training blew up" in v.summary and "numpy (loss 350 at epoch 2, step 2)" in v.summary
    # the stretch before the blow-up is still held to the band
    wrong = backend_row("torch", ref, [(1, 0, [1, 1 + 3e-3, 1, 1]), (2, 3, [1, 1, 1])], shapes=shapes)
    assert judge([ref, wrong], expected_shapes=shapes).status == "disagree"
    # a backend that blows up where the oracle does not is judged on every step
    calm = oracle_row([3.0, 2.5, 2.0, 1.5, 1.2, 1.1])
    calm["shapes"] = shapes
    wild = backend_row("torch", calm, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 300, 1])], shapes=shapes)
    assert judge([calm, wild], expected_shapes=shapes).status == "disagree"


def test_without_the_oracle_the_median_is_not_judged_after_every_row_blew_up():
    """--lr 2 --clip 1e9 with torch, mxnet, jax: every correct row disagreed in the stretches after the blow-up,
    and at --lr 4 in a later checkpoint's probe step from blown-up weights."""
    shapes = {"logits": [12, 28]}
    ref = oracle_row([3.0, 2.5, 2.0, 1.5, 300.0, 400.0])
    rows = []
    for name, factor in (("torch", 1.0), ("mxnet", 1 + 3e-3), ("jax", 1 - 3e-3)):  # apart after the blow-up only
        row = backend_row(name, ref, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, factor, factor])],
                          [probe(1), probe(3, diff=2e-4)], shapes=shapes)  # epoch 3: after the blow-up
        rows.append(row)
    rows[0]["lockstep"]["anchor"] = True
    v = judge(rows, expected_shapes=shapes)
    assert v.status == "agree" and v.reference == "median", v.summary
    # epoch 1 whole, epoch 2 cut short by the blow-up; epoch 3's probe (from blown-up weights) not counted
    assert all(b.checkpoints_checked == 2 for b in v.backends), [b.checkpoints_checked for b in v.backends]
    assert "until the per-step median of the backends blew up at epoch 2, step 2" in v.summary


def test_a_diverged_reference_is_judged_until_it_blew_up_not_until_it_overflowed():
    shapes = {"logits": [12, 28]}
    ref = diverged_oracle([3.0, 2.5, 2.0, 1.5, 300.0], [3], 2, 3)  # blew up at epoch 2, step 2; overflowed at step 3
    ref["shapes"] = shapes
    noisy = backend_row("torch", ref, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1 + 3e-3])], shapes=shapes)
    v = judge([ref, noisy], expected_shapes=shapes)
    assert v.status == "agree" and (v.reference_diverged["epoch"], v.reference_diverged["step"]) == (2, 2), v.summary
    assert "in torch (loss 300" in v.summary and "numpy (loss 300" not in v.summary  # the diverged one is named so


def test_a_reference_that_did_not_diverge_records_nothing():
    v = judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])])])
    assert v.reference_diverged is None and "diverged" not in v.summary


def test_a_long_epoch_is_re_anchored_for_its_first_steps_only():
    """Rounding compounds over a stretch as over a free run: a stretch stops at MAX_STRETCH_STEPS."""
    from multirnn import lockstep
    from multirnn.backends.numpy_backend import NumpyBackend
    from multirnn.config import preset
    from multirnn.harness import prepare_data, train

    cap = lockstep.MAX_STRETCH_STEPS
    config = preset("quick", num_hiddens=8, num_epochs=2, max_tokens=200, batch_size=1, num_steps=1, dtype="float64")
    data = prepare_data(config)
    found = []
    result = train(NumpyBackend(), config, data, checkpoint_epochs=[1], on_checkpoint=found.append)
    stretch = lockstep.run_stretch(NumpyBackend(), config, data, found[0])
    assert result.history.steps_per_epoch[0] > cap + 1 and len(stretch.loss) == cap
    assert stretch.loss == result.history.step_loss[:cap]  # the same steps as the run's, bit for bit

    n = 3 * cap
    ref = {"name": "numpy", "status": "ok", "step_loss": [2.0] * n, "step_grad_norm": [0.5] * n,
           "steps_per_epoch": [n], "perplexity": [2.0], "shapes": None}
    good = backend_row("torch", ref, [(1, 0, [1.0] * cap)])
    v = judge([ref, good])
    assert v.status == "agree" and v.long_epoch_steps == n
    assert any(f"first {cap} steps" in note for note in v.notes)
    off = [1.0] * cap
    off[9] = 1 + 3e-3
    c = judge([ref, backend_row("torch", ref, [(1, 0, off)])]).backend("torch").first_crossing
    assert (c.epoch, c.step, c.what) == (1, 10, "loss")
    short = backend_row("torch", ref, [(1, 0, [1.0] * (cap - 4))])  # the cap does not excuse stopping early
    c = judge([ref, short]).backend("torch").first_crossing
    assert c.what.startswith("missing steps") and c.step == cap - 3
    # epochs that fit a stretch whole get no such note
    assert judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])])]).long_epoch_steps is None


def _long_ref(spe, status="ok", extra=0):
    n = sum(spe) + extra
    return {"name": "numpy", "status": status, "step_loss": [2.0 + 0.01 * i for i in range(n)],
            "step_grad_norm": [0.5] * n, "steps_per_epoch": list(spe), "perplexity": [2.0], "shapes": None}


def test_a_nan_recorded_as_null_is_outside_the_band_not_a_crash():
    """results.json writes NaN as null: a stretch or probe holding one disagrees, and the verdict is written."""
    row = backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])], [probe(1)])
    row["lockstep"]["stretches"][0]["loss"][2] = None
    c = judge([REF, row]).backend("torch").first_crossing
    assert (c.epoch, c.step, c.what) == (1, 3, "loss") and c.deviation == math.inf
    assert c.describe() == "epoch 1, step 3: loss is NaN or infinite"
    bad_probe = probe(1)
    bad_probe["loss"] = None
    bad_probe["params"]["W_hh"] = [None, 1e-2, 1.0]
    v = judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])], [bad_probe])]).backend("torch")
    assert v.status == "disagrees" and "probe step" in v.first_crossing.what


def test_an_oracle_that_diverged_at_the_next_epochs_first_step_leaves_nothing_judged():
    """Epochs longer than a stretch: the oracle blew up at epoch 2, step 1, so epoch 1's stretch is cut
    short (not judged), and 'agrees' on the probes alone would be no evidence."""
    ref = _long_ref([20], "diverged")
    ref.update(diverged_epoch=2, diverged_step=1)
    off = [1.0] * 16
    off[4] = 1.5
    v = judge([ref, backend_row("torch", ref, [(1, 0, off)], [probe(1)])])
    assert v.status == "not-judged" and "too little to judge" in v.summary
    torch = v.backend("torch")
    assert torch.max_loss_deviation is None and torch.max_norm_deviation is None  # no stretch was compared


def test_the_boundary_step_is_judged_when_the_oracle_diverged_later_in_the_next_epoch():
    ref = _long_ref([3], "diverged", extra=2)  # epoch 2 had two good steps, then blew up
    ref.update(diverged_epoch=2, diverged_step=3)
    v = judge([ref, backend_row("torch", ref, [(1, 0, [1, 1, 1, 1.5])])])
    c = v.backend("torch").first_crossing
    assert v.status == "disagree" and (c.epoch, c.step, c.global_step) == (2, 1, 4)


def test_the_median_reference_judges_older_longer_stretches_on_the_capped_steps():
    from multirnn.lockstep import MAX_STRETCH_STEPS as cap

    ref = _long_ref([50, 50])
    rows = [backend_row(n, ref, [(1, 0, [1.0] * k)]) for n, k in (("torch", cap), ("mxnet", cap), ("jax", 51))]
    v = judge(rows)
    assert v.reference == "median" and v.status == "agree", v.summary


@pytest.mark.parametrize("spe, note", [
    ([15, 15], None),  # every stretch holds its epoch and the step into the next
    ([16, 16], "first 16 steps, so the step into the next epoch was not re-anchored"),
    ([20], "first 16 steps"),  # one epoch: there is no next one to speak of
])
def test_the_long_epoch_note_at_its_edges(spe, note):
    ref = _long_ref(spe)
    v = judge([ref, backend_row("torch", ref, [(1, 0, [1.0] * min(spe[0] + (len(spe) > 1), 16))])])
    found = [n for n in v.notes if "re-anchored stretch is at most" in n]
    assert v.status == "agree", v.summary
    if note is None:
        assert not found
    else:
        assert len(found) == 1 and found[0].endswith(note), found


SHAPES = {"logits": [12, 28]}  # V = 28: the blow-up line is 10 x ln 28 = 33.3 nats


def _free(losses, name, status="ok"):
    row = oracle_row(losses, name=name)
    row.update(shapes=SHAPES, status=status)
    return row


def test_without_lockstep_a_reference_that_blew_up_is_judged_until_then():
    """--lockstep off: the free-running curves were compared over every step, so the oracle's shortened curve
    made a correct row (identical losses) disagree at the blow-up."""
    losses = [3.0, 2.5, 2.0, 1.5, 350.0, 400.0]
    rows = [_free(losses, "numpy"), _free(losses, "torch")]
    v = judge(rows, expected_shapes=SHAPES, lockstep=False)
    assert v.status == "agree", v.summary
    assert "until the NumPy oracle blew up at epoch 2, step 2" in v.summary and "later steps are not judged" in v.summary
    # before the blow-up the band holds
    wrong = _free([3.0, 2.5 * (1 + 3e-3), 2.0, 1.5, 350.0, 400.0], "torch")
    assert judge([rows[0], wrong], expected_shapes=SHAPES, lockstep=False).status == "disagree"
    # the same with the per-step median: three rows that blew up together
    median = judge([_free(losses, n) for n in ("torch", "mxnet", "jax")], expected_shapes=SHAPES, lockstep=False)
    assert median.status == "agree" and median.reference == "median", median.summary


def test_without_lockstep_one_wrong_row_that_blew_up_does_not_cut_the_median_short():
    good = [3.0, 2.5, 2.0, 1.5, 1.2, 1.1]
    rows = [_free(good, "torch"), _free(good, "mxnet"), _free([3.0, 2.5, 2.0, 1.5, 350.0, 400.0], "jax")]
    v = judge(rows, expected_shapes=SHAPES, lockstep=False)
    assert v.status == "disagree" and v.disagreeing == ["jax"], v.summary
    # a row that stopped early (it diverged alone) is judged on the steps it lacks
    rows[2] = _free([3.0, 2.5, 2.0], "jax", status="diverged")
    assert judge(rows, expected_shapes=SHAPES, lockstep=False).disagreeing == ["jax"]


def test_without_the_oracle_the_median_ends_where_the_first_row_blew_up():
    """The verdict judged nothing past the earliest blow-up (its cut) but took the latest one to decide whether a
    whole stretch came first: every row "agreed" with no checkpoint checked."""
    rows = []
    for name, blow in (("torch", 1), ("mxnet", 4), ("jax", 4)):  # torch at epoch 1, step 2; the others at 2, 2
        losses = [3.0, 2.5, 2.0, 1.5, 1.2, 1.1]
        losses[blow:] = [350.0] * (6 - blow)
        row = backend_row(name, oracle_row(losses), [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])], shapes=SHAPES)
        rows.append(row)
    rows[0]["lockstep"]["anchor"] = True
    v = judge(rows, expected_shapes=SHAPES)
    assert v.status == "not-judged", v.summary
    assert (v.reference_diverged["epoch"], v.reference_diverged["step"]) == (1, 2)
    assert "too little to judge" in v.summary and "epoch 1, step 2" in v.summary


def test_a_reference_that_blew_up_at_its_first_step_is_too_little_to_judge_not_a_disagreement():
    ref = oracle_row([50.0, 60.0, 70.0, 80.0, 90.0, 99.0])
    ref["shapes"] = SHAPES
    row = backend_row("torch", ref, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])], shapes=SHAPES)
    v = judge([ref, row], expected_shapes=SHAPES)
    assert v.status == "not-judged", v.summary
    assert v.backend("torch").status == "not-judged" and "too little to judge" in v.summary
    assert "nothing could be checked before it" in v.summary and "probe steps only" not in v.summary


def test_weights_that_overflowed_only_in_one_row_are_a_disagreement():
    """Finite losses throughout, but the row's last update left infinite weights where the oracle's stayed
    finite: the run said 'agrees' (exit 0), with the difference only in a Problems line."""
    rows = [REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])], non_finite_params=["W_hh"])]
    v = judge(rows)
    assert v.status == "disagree" and "last update left NaN or infinite weights (W_hh)" in v.backend("torch").reason
    both = [dict(REF, non_finite_params=["W_hh"]), rows[1]]  # the oracle's overflowed too: no difference
    assert judge(both).status == "agree"


def test_framework_init_without_the_oracle_and_without_lockstep_judges_nothing():
    """--init framework without numpy and --lockstep off compared nothing, yet every row "agreed" (exit 0) and the
    summary cited the paired TOST."""
    rows = [_fw_row(n, p, [], paired=[p]) for n, p in (("torch", 24.1), ("mxnet", 25.5), ("jax", 21.3))]
    v = judge(rows, init="framework", lockstep=False)
    assert v.status == "not-judged", v.summary
    assert all(b.status == "not-judged" and "needs the NumPy oracle" in b.reason for b in v.backends)
    assert "TOST" not in v.summary
    assert v.summary.startswith("torch, mxnet, jax: too little to judge") and v.summary.count("needs the NumPy") == 1, v.summary


def test_framework_init_without_the_oracle_claims_no_statistical_test():
    rows = [backend_row(n, REF, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])], [probe(1), probe(2)]) for n in ("torch", "mxnet", "jax")]
    v = judge(rows, init="framework")
    assert v.status == "agree" and "TOST" not in v.summary, v.summary
    assert any("needs the NumPy oracle" in n and "did not run" in n for n in v.notes), v.notes


def test_framework_init_run_that_diverged_alone_is_not_dropped():
    """Seeds whose runs diverged were dropped, and the one pair left "agreed"."""
    ref = _fw_row("numpy", 5.0, [5.1, 4.9])
    row = _fw_row("torch", 2.0, [None, None], paired=[2.001, 2.03, 1.97])
    v = judge([ref, row], init="framework")
    t = v.backend("torch")
    assert t.status == "not-judged" and "runs 2, 3 of 3 diverged" in t.reason, t.reason
    assert v.status == "not-judged"
    # the partner alone diverged: the pair is left out, and the row's reason or summary says so
    row = _fw_row("torch", 2.0, [2.02, 1.98], paired=[2.001, None, 1.97])
    t = judge([ref, row], init="framework").backend("torch")
    assert t.status == "agrees" and "1 pair left out" in t.equivalence["summary"], t.equivalence



def test_a_reference_norm_stored_as_null_counts_as_clipped():
    """An infinite gradient norm is written as null; counting the clipped steps raised TypeError on it."""
    ref = dict(REF, step_grad_norm=[0.5, None, 1.5, 0.7, 0.4, 0.3])
    v = judge([ref, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])], [probe(1), probe(2)])])
    assert (v.clipped_steps, v.total_steps) == (2, 6)


def test_independent_init_holds_two_rows_to_the_oracle_not_their_midpoint():
    """With two rows the median is their midpoint: 1.00 and 1.35 were each 14.9 % from it and passed a 15 % band."""
    a, b = (dict(oracle_row(REF["step_loss"], name=n), perplexity=[p] * 20) for n, p in (("numpy", 1.0), ("torch", 1.35)))
    v = judge([a, b], init="independent", lockstep=False)
    assert v.backend("torch").status == "disagrees" and "35.0% from the NumPy oracle's" in v.backend("torch").reason
    assert v.status == "disagree"


def test_a_probe_far_outside_its_band_is_named_beside_a_first_crossing_just_outside():
    """MXNet's float64 layer bug: the reason said 'grad norm deviates by 1.05e-09 (band 1.0e-09)', reading
    like a rounding miss, while a probe update was wrong by 100 %."""
    row = backend_row("torch", REF, [(1, 0, [1, 1, 1 + 1.05e-3, 1])], [probe(1, diff=1e-2, update=1e-2)])
    t = judge([REF, row]).backend("torch")
    assert t.status == "disagrees" and t.reason.startswith("first outside the band at epoch 1, step 3: loss"), t.reason
    assert "; the farthest: epoch 1: probe step with clipping on" in t.reason and "W_hh update" in t.reason, t.reason
    # a probe only a little farther out is not named twice
    row = backend_row("torch", REF, [(1, 0, [1, 1, 1 + 1.05e-3, 1])], [probe(1, diff=2e-5, update=1e-2)])
    assert "farthest" not in judge([REF, row]).backend("torch").reason


def test_the_summary_mentions_the_one_seed_rule_only_where_it_applied():
    ref = _fw_row("numpy", 5.0, [5.1, 4.9])
    three = judge([ref, _fw_row("torch", 2.0, [2.02, 1.98], paired=[2.001, 2.03, 1.97])], init="framework")
    assert "paired TOST (alpha 0.05)" in three.summary, three.summary
    one = judge([_fw_row("numpy", 5.0, []), _fw_row("torch", 2.0, [], paired=[2.1])], init="framework")
    assert "with one seed, the difference itself" in one.summary, one.summary


def test_independent_init_with_a_diverged_oracle_centres_on_the_median():
    """A diverged oracle's 'final' perplexity is an early epoch's: held to it, every healthy row disagreed."""
    a = dict(oracle_row(REF["step_loss"], name="numpy"), perplexity=[12.0] * 20, status="diverged")
    rows = [a] + [dict(oracle_row(REF["step_loss"], name=n), perplexity=[p] * 20) for n, p in (("torch", 5.0), ("jax", 5.1))]
    v = judge(rows, init="independent", lockstep=False)
    assert v.backend("torch").status == "agrees" and v.backend("jax").status == "agrees", v.summary
    assert v.finals_center == "their median"


def test_framework_init_run_that_diverged_alone_does_not_hide_a_difference():
    ref = _fw_row("numpy", 5.0, [5.1, 4.9])
    far = _fw_row("torch", 2.0, [None, 2.0], paired=[5.0] * 3)  # the finished pairs: -60 %
    t = judge([ref, far], init="framework").backend("torch")
    assert t.status == "disagrees" and "its run 2 of 3 diverged" in t.reason, t.reason


def test_framework_init_with_the_oracle_says_nothing_about_needing_it():
    ref = _fw_row("numpy", 5.0, [5.1, 4.9])
    row = backend_row("torch", REF, [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])], [probe(1), probe(2)])
    row.update(perplexity=[2.0] * 20, seed_runs=[{"seed": 1, "median_last_perplexity": None},
                                                 {"seed": 2, "median_last_perplexity": None}],
               paired_oracle_runs=[{"seed": i, "median_last_perplexity": 2.0} for i in range(3)])
    ref.update(lockstep=None)
    v = judge([ref, row], init="framework")
    assert not any("needs the NumPy oracle" in n for n in v.notes), v.notes


def test_the_forward_pass_is_its_own_check_at_each_checkpoint():
    """evaluate_loss (validation, --eval-text, predict) against the oracle's own, once per checkpoint."""
    stretches = [(1, 0, [1, 1, 1, 1]), (2, 3, [1, 1, 1])]
    good = [dict(probe(1), eval_loss=2.0, ref_eval_loss=2.0), dict(probe(2), eval_loss=2.0, ref_eval_loss=2.0)]
    assert judge([REF, backend_row("torch", REF, stretches, good)]).backend("torch").status == "agrees"
    bad = [dict(probe(1), eval_loss=2.0, ref_eval_loss=2.0), dict(probe(2), eval_loss=2.2, ref_eval_loss=2.0)]
    t = judge([REF, backend_row("torch", REF, stretches, bad)]).backend("torch")
    assert t.status == "disagrees" and t.first_crossing.epoch == 2, t.reason
    assert t.first_crossing.what.startswith("loss of its forward pass") and "probe step" not in t.reason, t.reason


def test_an_update_the_probes_could_not_resolve_is_named_in_a_note():
    """The raised probe lr resolves every update unless a gradient is 0 or the raise reached its cap; there
    the rounding allowance swamps the band, so a wrong update of that parameter passes: said, not hidden."""
    resolved = probe(1, diff=0.0, update=1e-2, size=1.0)
    # 1e-5 of the parameter: float32's rounding allowance (2.4e-7 of it) is 24x the band (1e-3 of 1e-5)
    small = probe(1, diff=0.0, update=1e-5, size=1.0)
    for probes, named in (([resolved], False), ([small], True),
                          # only the checkpoint's highest-lr probe counts: the half-lr pair stays small by design
                          ([small, {**resolved, "lr": 5.0}], False)):
        v = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], probes)])
        assert v.backend("jax").status == "agrees"
        note = [n for n in v.notes if "so little" in n]
        assert bool(note) == named, v.notes
        assert (v.unresolved_updates is not None) == named
    v = judge([REF, backend_row("jax", REF, [(1, 0, [1, 1, 1, 1])], [small])])
    assert any("moved W_hh 1.0e-05 of its size (at 1 checkpoint): so little" in n for n in v.notes), v.notes


def _with_float64(ref, epoch, start, norm_factors):
    """``ref`` with the oracle's float64 stretch at ``epoch``: its float32 norms times ``norm_factors``."""
    n = len(norm_factors)
    exact = {"epoch": epoch, "start_step": start, "loss": ref["step_loss"][start:start + n],
             "grad_norm": [g * f for g, f in zip(ref["step_grad_norm"][start:start + n], norm_factors)]}
    return {**ref, "rounding_stretches": [exact]}


def test_where_rounding_alone_moves_a_step_its_band_is_wider():
    """--lr 50: one step from a checkpoint put a correct torch's gradient norm 2.7 % off the oracle's, and the
    oracle itself lay 0.44 % off its own step in float64: both float32 roundings of a step rounding decides.
    There the band is ROUNDING_FACTOR x the oracle's distance from float64; everywhere else the fixed band."""
    # the oracle's second gradient norm of epoch 1 is 0.5 % off float64: from there its norm band is 100 x 0.5 %
    ref = _with_float64(REF, 1, 0, [1, 1.005, 1, 1])
    off_later = backend_row("torch", ref, [(1, 0, [1, 1, 1, 1])])
    off_later["lockstep"]["stretches"][0]["grad_norm"] = [0.5, 0.6 * 1.027, 1.5, 0.7]
    v = judge([ref, off_later])
    assert v.backend("torch").status == "agrees", v.summary
    lim = v.rounding_limited
    assert lim["steps"] == 3 and lim["checkpoints"] == 1 and lim["of"] == 1
    assert (lim["widest"]["epoch"], lim["widest"]["step"], lim["widest"]["what"]) == (1, 2, "grad norm")
    assert lim["widest"]["band"] == pytest.approx(100 * 0.005 / 1.005, rel=1e-6)
    note = next(n for n in v.notes if "rounding alone moves" in n)
    assert "at 3 steps, the widest at epoch 1, step 2: grad norm 0.5" in note, note
    # a bug far outside what rounding explains is still caught there (StateResetEveryMinibatch: 22x off)
    bug = backend_row("torch", ref, [(1, 0, [1, 1, 1, 1])])
    bug["lockstep"]["stretches"][0]["grad_norm"] = [0.5, 0.6 * 22, 1.5, 0.7]
    assert judge([ref, bug]).backend("torch").status == "disagrees"
    # ... and the loss, which rounding did not move, keeps its fixed band at the same step
    loss_bug = backend_row("torch", ref, [(1, 0, [1, 1 + 3e-3, 1, 1])])
    c = judge([ref, loss_bug]).backend("torch").first_crossing
    assert (c.step, c.what, c.band) == (2, "loss", 1e-3)
    # where that band would be 100 % or more, rounding decides the step outright: not judged (a correct MXNet
    # 1650x the oracle's gradient norm where the oracle lay 100 % from float64), its loss still is
    chaos = _with_float64(REF, 1, 0, [1, 1.03, 1, 1])
    wild = backend_row("torch", chaos, [(1, 0, [1, 1, 1, 1])])
    wild["lockstep"]["stretches"][0]["grad_norm"] = [0.5, 0.6 * 1650, 1.5 * 40, 0.7]
    v = judge([chaos, wild])
    assert v.backend("torch").status == "agrees" and v.rounding_limited["not_judged"] == 3, v.summary
    assert "3 of those losses and gradient norms" in next(n for n in v.notes if "rounding alone moves" in n)
    wild["lockstep"]["stretches"][0]["loss"][1] *= 1.01
    assert judge([chaos, wild]).backend("torch").status == "disagrees"
    # ... and a value that is not finite where the oracle's is fails there still (the reviewer's NaN)
    broken = backend_row("torch", chaos, [(1, 0, [1, 1, 1, 1])])
    broken["lockstep"]["stretches"][0]["grad_norm"] = [0.5, float("nan"), 1.5, 0.7]
    assert judge([chaos, broken]).backend("torch").status == "disagrees"
    # where float64 agrees with the oracle's float32 steps, every band is the fixed one
    exact = _with_float64(REF, 1, 0, [1, 1 + 1e-6, 1, 1])
    strict = backend_row("torch", exact, [(1, 0, [1, 1, 1, 1])])
    strict["lockstep"]["stretches"][0]["grad_norm"] = [0.5, 0.6 * 1.027, 1.5, 0.7]
    v = judge([exact, strict])
    assert v.backend("torch").status == "disagrees" and v.rounding_limited is None
    # without the float64 record (an older run, or it failed), too
    assert judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])])]).rounding_limited is None


def test_a_probe_that_rounding_moves_is_held_to_a_wider_band():
    """--lr 20, hidden 8: the oracle's own float32 W_hh gradient lay 3.4e-3 from float64 (it cancels to 1.9e-5
    of the whole), and a correct torch's probe update 4.0e-3 off the oracle's failed the 1.2e-3 band."""
    p = probe(1, diff=4e-5, update=1e-2, size=1.0)  # 4e-3 of the update
    assert judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])], [p])]).backend("torch").status == "disagrees"
    p["rounding"] = {"loss": 0.0, "grad_norm": 0.0, "params": {"W_hh": [3.4e-5, 1e-2]}}  # 3.4e-3 of the update
    v = judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])], [p])])
    assert v.backend("torch").status == "agrees" and v.probe_rounding == {"checkpoints": 1, "widened": 1, "not_judged": 0}
    assert any("rounding alone moves some probe steps" in n for n in v.notes), v.notes
    # a wrong update is still far outside it (a transposed W_hh moved it 1.4x its size)
    p["params"]["W_hh"][0] = 1.4e-2
    assert judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])], [p])]).backend("torch").status == "disagrees"
    # where the oracle's update is 2 % or more off float64 (a band of 100 %), the update is not judged
    p["rounding"]["params"]["W_hh"] = [3e-4, 1e-2]
    v = judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])], [p])])
    assert v.backend("torch").status == "agrees" and v.probe_rounding["not_judged"] == 1


def test_a_tiny_updates_fixed_band_is_judged_however_wide():
    """The rounding guard's 'not judged from 100 %' also dropped fixed bands of 1 or more (an update under
    ~2 ulp of its parameter: the half-lr pair at a small lr), and a weight decay of 1e-6 per step not scaled
    by lr agreed at --lr 1e-5 (the reviewer's FixedWeightDecay): it must stay 'disagrees'."""
    p = probe(1, diff=1e-5, update=1e-8, size=1.0)  # band 1e-3 + 2.4e-7 / 1e-8 = 24: 1000x the update off
    for rounding in (None, {"loss": 0.0, "grad_norm": 0.0, "params": {"W_hh": [0.0, 1e-8]}}):
        q = {**p, **({"rounding": rounding} if rounding else {})}
        b = judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])], [q])]).backend("torch")
        assert b.status == "disagrees" and "band 2.4e+01" in b.reason, b.reason


def test_a_failed_float64_stretch_is_said():
    """Without the oracle's float64 stretches every step keeps its fixed band: correct code at a large lr may
    then leave it, and the user must know why no band widened."""
    ref = {**REF, "rounding_stretches_error": "MemoryError: "}
    v = judge([ref, backend_row("torch", ref, [(1, 0, [1, 1, 1, 1])])])
    assert v.rounding_error == "MemoryError: "
    assert any("the oracle's float64 stretches failed (MemoryError: )" in n for n in v.notes), v.notes
    assert judge([REF, backend_row("torch", REF, [(1, 0, [1, 1, 1, 1])])]).rounding_error is None
