"""The verdict catches every bug of the zoo (tests/zoo.py) through the command line, and never a correct copy.

Each bug is a backend subclass loaded as ``tests.zoo:ClassName``, the door any third-party backend
uses. The runs are short (a few epochs) to keep CI fast; the README's catch table comes from the
default command (60 epochs), produced by ``python -m tests.test_zoo`` (see the bottom of this file).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from multirnn.cells import Model
from multirnn.testing import central_differences, random_model_problem, random_problem
from tests import zoo

ROOT = Path(__file__).resolve().parents[1]


def compare(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multirnn.compare", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


FORWARD_BUGS = [b for b in zoo.BUGS if issubclass(b, zoo._Forward) and b is not zoo.BackpropSkipsLastStep]


@pytest.mark.parametrize("bug", FORWARD_BUGS, ids=lambda b: b.__name__)
def test_forward_bugs_have_their_own_true_gradients(bug):
    """A forward-pass bug comes with the gradient autodiff would give for it (central differences),
    so the zoo models real translations, not inconsistent code."""
    be = bug()
    params, X, Y, h0 = random_problem(seed=3, vocab_size=6, num_hiddens=4, batch_size=2, num_steps=3, scale=0.5)
    _, grads, _ = be.loss_and_grads(params, X, Y, (h0,))
    fds = central_differences(lambda p: float(be.loss_and_grads(p, X, Y, (h0,))[0]), params)
    worst = max(float(np.max(np.abs(fd - grads[k]) / np.maximum(np.abs(fd) + np.abs(grads[k]), 1e-8)))
                for k, fd in fds.items())
    assert worst < 1e-5, worst  # a wrong gradient is off by O(1); 1e-5 is finite-difference noise here


CELL_BUGS = [b for bugs in zoo.CELL_BUGS.values() for b in bugs]


@pytest.mark.parametrize("bug", CELL_BUGS, ids=lambda b: b.__name__)
def test_cell_bugs_have_their_own_true_gradients(bug):
    """The same for the gated cells' bugs, in a two-layer stack (both layers run the buggy step)."""
    be = bug(model=Model(bug.cell, num_layers=2))
    params, X, Y, state = random_model_problem(be.model, 3, 6, 4, 2, 3, "float64", 0.5)
    _, grads, _ = be.loss_and_grads(params, X, Y, state)
    fds = central_differences(lambda p: float(be.loss_and_grads(p, X, Y, state)[0]), params)
    worst = max(float(np.linalg.norm(fd - grads[k]) / np.linalg.norm(fd)) for k, fd in fds.items())
    assert worst < 1e-6, worst  # of each gradient's norm, as the oracle's own check; a wrong one is O(1)
    oracle_loss = float(zoo.NumpyBackend(model=be.model).loss_and_grads(params, X, Y, state)[0])
    assert abs(float(be.loss_and_grads(params, X, Y, state)[0]) - oracle_loss) > 1e-6  # it is a different model


def _run_zoo(tmp_path: Path, extra: list[str], bugs=zoo.BUGS) -> dict:
    out = tmp_path / "run"
    specs = ",".join(zoo.spec(b) for b in bugs)
    proc = compare(["--backends", f"numpy,{specs}", *extra, "--out", str(out), "--quiet", "--no-plot"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    rows = {b["name"]: b for b in res["backends"]}
    assert rows["numpy"]["judgement"]["status"] == "reference"
    missed = [b.__name__ for b in bugs if rows[zoo.spec(b)]["judgement"]["status"] != "disagrees"]
    assert not missed, f"not caught: {missed}"
    for b in bugs:
        j = rows[zoo.spec(b)]["judgement"]
        assert j["first_crossing"]["epoch"] >= 1 and zoo.spec(b) in res["verdict"]["summary"]
    report = (out / "report.md").read_text()
    assert all(zoo.spec(b) in report for b in bugs)
    return res


def test_every_bug_is_caught_in_float32_with_the_default_settings(tmp_path):
    """The default preset (quick: d2l ed. 1 shapes, float32, shared init), 3 epochs instead of 60."""
    _run_zoo(tmp_path, ["--epochs", "3"])


def test_every_bug_is_caught_in_float64(tmp_path):
    _run_zoo(tmp_path, ["--epochs", "2", "--hidden", "64", "--dtype", "float64"])


@pytest.mark.parametrize("lr, dtype", [("1e-5", "float32"), ("1e-9", "float32"), ("1e-12", "float32"),
                                       ("1e-20", "float64")])
def test_a_small_lr_hides_no_update_bug(tmp_path, lr, dtype):
    """At --lr 1e-5 a backend that never updated W_hh agreed: the verdict's allowance for rounding the
    parameter was 340x its update. The probes now raise their lr until float32 resolves every update.
    At 1e-9 every float32 update rounded to 0 and asked for no raise; at 1e-12 the raise hit its cap;
    in float64 at 1e-20 the updates rounded to 0 too. The need now comes from float64 gradients."""
    _run_zoo(tmp_path, ["--lr", lr, "--dtype", dtype, "--epochs", "3", "--hidden", "16", "--max-tokens", "3000"],
             zoo.SMALL_LR_BUGS + (zoo.HiddenBiasFrozen,))


@pytest.mark.parametrize("cell", sorted(zoo.CELL_BUGS))
def test_every_cell_bug_is_caught_with_the_default_settings(tmp_path, cell):
    """The default preset with --cell, 2 epochs (float32, hidden 512: the shapes users run)."""
    _run_zoo(tmp_path, ["--cell", cell, "--epochs", "2"], zoo.CELL_BUGS[cell])


def test_a_cell_bug_is_unsupported_for_another_cell(tmp_path):
    out = tmp_path / "run"
    proc = compare(["--backends", f"numpy,{zoo.spec(zoo.GruResetAfterMatmul)}", "--epochs", "1", "--hidden", "16",
                    "--out", str(out), "--quiet", "--no-plot"])
    res = json.loads((out / "results.json").read_text())
    row = {b["name"]: b for b in res["backends"]}[zoo.spec(zoo.GruResetAfterMatmul)]
    assert row["status"] == "unsupported" and "--cell gru" in row["error"], (proc.returncode, row)


def test_correct_copies_agree_without_the_oracle(tmp_path):
    """Three correct third-party backends and no numpy: the per-step median is the reference, the
    first one's checkpoints anchor the others, and all agree (exit 0)."""
    out = tmp_path / "run"
    copies = ",".join(zoo.spec(b) for b in (zoo.OracleCopy, zoo.OracleCopy2, zoo.OracleCopy3))
    proc = compare(["--backends", copies, "--epochs", "3", "--hidden", "64", "--out", str(out), "--quiet", "--no-plot"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"]["reference"] == "median"
    checked = [b["judgement"]["checkpoints_checked"] for b in res["backends"]]
    assert all(n >= 2 for n in checked), checked


def catch_table(results: dict, bugs=zoo.BUGS, header: bool = True) -> str:
    """The README's table: bug, what it is, first checkpoint flagged, what crossed and by how much."""
    lines = ["| bug | the mistake | first flagged | what left the band |", "|---|---|---|---|"] if header else []
    rows = {b["name"]: b for b in results["backends"]}
    for bug in bugs:
        j = rows[zoo.spec(bug)]["judgement"]
        c = j["first_crossing"] or {}
        where = f"epoch {c.get('epoch')}" + (f", step {c['step']}" if c.get("step") else "")
        what = c.get("what", "-")
        dev = f"{c['deviation']:.1e} (band {c['band']:.0e})" if c.get("deviation") is not None else ""
        lines.append(f"| `{bug.__name__}` | {bug.description} | {where} | {what} {dev} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.test_zoo OUT: the default command over the whole zoo
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/zoo")
    runs = [("rnn", zoo.BUGS, [])] + [(c, b, ["--cell", c]) for c, b in zoo.CELL_BUGS.items()]
    table = []
    for cell, bugs, extra in runs:
        folder = out if cell == "rnn" else out.with_name(f"{out.name}-{cell}")
        if not (folder / "results.json").exists():
            specs = ",".join(zoo.spec(b) for b in bugs)
            subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", f"numpy,{specs}", *extra,
                            "--out", str(folder), "--quiet", "--no-plot"], cwd=ROOT)
        table.append(catch_table(json.loads((folder / "results.json").read_text()), bugs, header=not table))
    print("\n".join(table))


def test_a_step_whose_gradient_norm_rounding_moves_still_holds_its_loss_to_the_band(tmp_path):
    """--lr 50: the oracle's own float32 gradient norm lay 0.44 % from float64 at epoch 3's second step. Leaving
    that whole step out (the first version of the rule) passed StateResetEveryMinibatch, whose loss there was
    3.9e-2 off where rounding moved the oracle's loss by 1.7e-8: the band now widens per quantity."""
    res = _run_zoo(tmp_path, ["--lr", "50", "--epochs", "3", "--hidden", "16", "--max-tokens", "3000"],
                   (zoo.StateResetEveryMinibatch,))
    assert res["verdict"]["rounding_limited"] is not None
