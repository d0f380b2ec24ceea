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

from multirnn.testing import random_problem
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
    eps, worst = 1e-6, 0.0
    for k in params:
        for idx in np.ndindex(params[k].shape):
            shifted = {n: v.copy() for n, v in params.items()}
            shifted[k][idx] += eps
            up = float(be.loss_and_grads(shifted, X, Y, (h0,))[0])
            shifted[k][idx] -= 2 * eps
            down = float(be.loss_and_grads(shifted, X, Y, (h0,))[0])
            fd = (up - down) / (2 * eps)
            worst = max(worst, abs(fd - grads[k][idx]) / max(abs(fd) + abs(grads[k][idx]), 1e-8))
    assert worst < 1e-5, worst  # a wrong gradient is off by O(1); 1e-5 is finite-difference noise here


def _run_zoo(tmp_path: Path, extra: list[str]) -> dict:
    out = tmp_path / "run"
    specs = ",".join(zoo.spec(b) for b in zoo.BUGS)
    proc = compare(["--backends", f"numpy,{specs}", *extra, "--out", str(out), "--quiet", "--no-plot"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    rows = {b["name"]: b for b in res["backends"]}
    assert rows["numpy"]["judgement"]["status"] == "reference"
    missed = [b.__name__ for b in zoo.BUGS if rows[zoo.spec(b)]["judgement"]["status"] != "disagrees"]
    assert not missed, f"not caught: {missed}"
    for b in zoo.BUGS:
        j = rows[zoo.spec(b)]["judgement"]
        assert j["first_crossing"]["epoch"] >= 1 and zoo.spec(b) in res["verdict"]["summary"]
    report = (out / "report.md").read_text()
    assert all(zoo.spec(b) in report for b in zoo.BUGS)
    return res


def test_every_bug_is_caught_in_float32_with_the_default_settings(tmp_path):
    """The default preset (quick: d2l ed. 1 shapes, float32, shared init), 3 epochs instead of 60."""
    _run_zoo(tmp_path, ["--epochs", "3"])


def test_every_bug_is_caught_in_float64(tmp_path):
    _run_zoo(tmp_path, ["--epochs", "2", "--hidden", "64", "--dtype", "float64"])


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


def catch_table(results: dict) -> str:
    """The README's table: bug, what it is, first checkpoint flagged, what crossed and by how much."""
    lines = ["| bug | the mistake | first flagged | what left the band |", "|---|---|---|---|"]
    rows = {b["name"]: b for b in results["backends"]}
    for bug in zoo.BUGS:
        j = rows[zoo.spec(bug)]["judgement"]
        c = j["first_crossing"] or {}
        where = f"epoch {c.get('epoch')}" + (f", step {c['step']}" if c.get("step") else "")
        what = c.get("what", "-")
        dev = f"{c['deviation']:.1e} (band {c['band']:.0e})" if c.get("deviation") is not None else ""
        lines.append(f"| `{bug.__name__}` | {bug.description} | {where} | {what} {dev} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.test_zoo OUT: the default command over the whole zoo
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/zoo")
    specs = ",".join(zoo.spec(b) for b in zoo.BUGS)
    subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", f"numpy,{specs}", "--out", str(out),
                    "--quiet", "--no-plot"], cwd=ROOT)
    print(catch_table(json.loads((out / "results.json").read_text())))
