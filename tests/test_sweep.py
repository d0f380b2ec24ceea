"""``python -m multirnn.sweep``: the spec, local and Ray execution, resume after a kill, crashes.

The sweeps are tiny (2 backends x 2 seeds x 2 dtypes, 2 epochs of a 16-unit RNN) and go through
the command line in a subprocess, as a user's would. The second backend is torch when it is
installed, else a third-party copy of the oracle (the sweep machinery is the same). Ray runs on
a two-node cluster started once for the module (head and worker node on this machine), which also
shows that cells land on both nodes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from multirnn import sweep as sweep_cli
from multirnn.backends import probe
from multirnn.sweep_report import identity
from multirnn.sweep_spec import SpecError, expand, parse_seeds
from multirnn.sweep_stats import mean_interval, t_ppf, t_sf, tost_paired
from tests.conftest import SELECTED, require_module
from tests.fakes import not_installed
from tests.test_compare import CRASHING_MXNET
from tests.test_reliability import processes_mentioning, wait_for

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--hidden", "16", "--max-tokens", "3000", "--batch-size", "8", "--num-steps", "10"]
SECOND = "torch" if "torch" in SELECTED and probe("torch") is None else "tests.zoo:OracleCopy"
SPEC = ["--backends", f"numpy,{SECOND}", "--dtype", "float32,float64", "--seeds", "0-1", *TINY]


def sweep(args: list[str], site: str | None = None, tmp_path: Path | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "multirnn.sweep", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=_env(site, tmp_path), check=False)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "multirnn.sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _env(site: str | None, tmp_path: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if site is not None:
        (tmp_path / "site").mkdir(exist_ok=True)
        (tmp_path / "site" / "sitecustomize.py").write_text(site)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "site"), env.get("PYTHONPATH", "")]))
    return env


def load(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def ends(out: Path) -> Counter:
    """How many times each cell ran to the end (the journal's 'end' events)."""
    lines = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    return Counter(e["cell"] for e in lines if e["event"] == "end")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "local"
    proc = sweep([*SPEC, "--jobs", "2", "--out", str(out), "--quiet"])
    return proc, out


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a worker node, one CPU each, on this machine; shut down after the module."""
    require_module("ray", "pip install 'multirnn[ray]'")
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="mrsweep")  # short: Ray's socket paths must stay under ~100 characters
    # Ray 2.60's Cluster writes the head's address to $RAY_TMPDIR/ray/ray_current_cluster (default
    # /tmp/ray) even when given temp_dir, without creating that folder: on a machine where Ray never
    # ran, the fixture failed with FileNotFoundError. Point it into our folder, which we create.
    os.makedirs(os.path.join(temp, "ray"), exist_ok=True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAY_TMPDIR", temp)
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": temp})
            try:
                cluster.add_node(num_cpus=1)
                yield cluster
            finally:
                cluster.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# --- the spec ----------------------------------------------------------------------------------------


def test_seeds_accept_ranges_and_lists():
    assert parse_seeds("0-2,7,2") == [0, 1, 2, 7]
    assert parse_seeds([3, "5-6"]) == [3, 5, 6]
    for bad in ("2-1", "a", "-1", ""):
        with pytest.raises(SpecError):
            parse_seeds(bad)


def test_cells_have_stable_ids_and_share_one_oracle_per_configuration_and_seed():
    opts = sweep_cli.parse_options(SPEC)
    confs, groups, cells = expand(opts.dims, opts.fixed, opts.seeds, opts.repeats)
    assert len(confs) == 2 and len(groups) == 4 and len(cells) == 8
    again = expand(opts.dims, opts.fixed, opts.seeds, opts.repeats)[2]
    assert [c.id for c in again] == [c.id for c in cells] and len({c.id for c in cells}) == 8
    for g in groups:
        mine = [c for c in cells if c.group is g]
        oracle = next(c for c in mine if c.backend == "numpy")
        assert oracle.saves_checkpoints and oracle.anchor is None
        assert all(c.anchor == oracle.id for c in mine if c is not oracle)
    longer = sweep_cli.parse_options([*SPEC, "--epochs", "3"])
    assert not {c.id for c in expand(longer.dims, longer.fixed, longer.seeds, 1)[2]} & {c.id for c in cells}


def test_a_toml_spec_is_the_same_sweep(tmp_path):
    (tmp_path / "s.toml").write_text(f'backends = ["numpy", "{SECOND}"]\ndtype = ["float32", "float64"]\n'
                                     'seeds = "0-1"\nepochs = 2\nhidden = 16\nmax-tokens = 3000\nbatch_size = 8\n'
                                     'num-steps = 10\n')
    a, b = sweep_cli.parse_options(["--spec", str(tmp_path / "s.toml")]), sweep_cli.parse_options(SPEC)
    ids = [[c.id for c in expand(o.dims, o.fixed, o.seeds, o.repeats)[2]] for o in (a, b)]
    assert ids[0] == ids[1]


@pytest.mark.parametrize("args", [
    ["--dtype", "float32,float16"], ["--seeds", "4-1"], ["--hidden", "16,-3"], ["--jobs", "0"],
    ["--address", "auto"], ["--backends", "numpy,nosuchframework"], ["--retries", "x"], ["--bogus"],
    ["--spec", "/nonexistent/sweep.toml"],
    # compare's own refusals of contradicting options apply to every configuration
    ["--init", "framework", "--backends", "numpy"], ["--init-seeds", "2"], ["--keep-checkpoints", "--lockstep", "off"],
])
def test_invalid_values_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert sweep_cli.main([*TINY, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multirnn.sweep: error: ") and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_spec_giving_one_option_twice_is_refused(tmp_path, capsys):
    (tmp_path / "s.toml").write_text('backends = ["numpy"]\nbatch_size = 16\nbatch-size = 8\n')
    assert sweep_cli.main(["--spec", str(tmp_path / "s.toml"), "--dry-run"]) == 2
    assert "'batch_size' and 'batch-size' are the same option; give it once" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("in the way")
    assert sweep_cli.main([*TINY, "--backends", "numpy", "--out", str(tmp_path / "afile" / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multirnn.sweep: error: cannot write to output folder") and len(err.strip().splitlines()) == 1, err


def test_dry_run_lists_the_cells_and_an_estimate(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep_cli.main([*SPEC, "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert sum(line.endswith("  to run") for line in text.splitlines()) == 8  # the table's state column
    assert "8 cell(s), 8 to run" in text and "Estimated cost" in text and "estimate:" in text
    assert not out.exists()


def test_dry_run_estimates_oversubscribed_jobs_no_faster(tmp_path, capsys, monkeypatch):
    """--jobs 8 on 2 cores was estimated 4x faster than --jobs 2 for the same work."""
    monkeypatch.setattr(sweep_cli, "usable_cores", lambda: 2)
    walls = {}
    for jobs in (2, 8):
        assert sweep_cli.main([*SPEC, "--jobs", str(jobs), "--threads", "1", "--dry-run"]) == 0
        text = capsys.readouterr().out
        walls[jobs] = float(re.search(r"about ([\d,.]+) s wall", text).group(1).replace(",", ""))
    assert walls[8] >= walls[2] * 0.9, walls
    # one cell asking for more threads than there are cores is no slower for it
    from multirnn.sweep_engine import estimate_wall

    cell = type("Cell", (), {"id": "a", "anchor": None})()
    assert estimate_wall([cell], {"a": 100.0}, 1, threads=4, cores=2) == 100.0
    assert "8 x 1 thread(s) on 2 cores: cells running together share them" in text


def test_missing_ray_is_a_clear_error(tmp_path):
    proc = sweep([*TINY, "--executor", "ray", "--out", str(tmp_path / "out")], site=not_installed("ray"),
                 tmp_path=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "pip install 'multirnn[ray]'" in proc.stderr and not (tmp_path / "out").exists()


# --- running -----------------------------------------------------------------------------------------


def test_a_local_sweep_writes_the_aggregate(local_run):
    proc, out = local_run
    assert proc.returncode == 0, proc.stderr
    for name in ("sweep.json", "report.md", "cells.csv", "perplexity_bands.png", "speed_heatmap.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "cells").glob("*.json"))) == 8 and not (out / ".work").exists()
    s = load(out)
    assert s["schema_version"] == 1 and [g["status"] for g in s["groups"]] == ["agree"] * 4
    assert len(list((out / "groups").glob("*/results.json"))) == 4  # compare's report of every group
    stats = {(x["configuration"], x["row"]): x for x in s["statistics"]}
    assert len(stats) == 4 and all(x["median_last_perplexity"]["n"] == 2 for x in stats.values())
    ci = stats[(0, "numpy")]["final_perplexity"]["ci95"]
    assert ci[0] < stats[(0, "numpy")]["final_perplexity"]["mean"] < ci[1]
    assert s["speed"]["contended"] is True and "Contended timings" in (out / "report.md").read_text()
    assert max(r["ratio_to_fastest"] for r in s["speed"]["rows"]) == 1.0
    assert set(ends(out).values()) == {1}


# Ray starts its node processes with subprocess (fork, then exec at once), which JAX's fork hook
# warns about when an earlier test imported JAX into this process; nothing runs between the two.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_ray_on_two_nodes_gives_the_local_aggregate(local_run, ray_cluster, tmp_path):
    out = tmp_path / "ray"
    proc = sweep([*SPEC, "--executor", "ray", "--address", ray_cluster.address, "--out", str(out), "--quiet"])
    assert proc.returncode == 0, proc.stderr
    assert identity(load(out)) == identity(load(local_run[1]))
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    nodes = Counter(c["run"]["node"] for c in cells)
    assert len(nodes) == 2, nodes  # cells landed on both nodes
    assert len(load(out)["run"]["executor"]["nodes"]) == 2


def test_a_stopped_then_killed_sweep_resumes_to_the_same_aggregate(local_run, tmp_path):
    out = tmp_path / "resumed"
    args = [*SPEC, "--jobs", "2", "--out", str(out), "--quiet"]

    def cells() -> int:
        return len(list((out / "cells").glob("*.json"))) if (out / "cells").is_dir() else 0

    first = start(args)
    assert wait_for(lambda: cells() >= 2, 120)
    first.send_signal(signal.SIGTERM)  # as Ctrl-C: the cells in flight end, a partial aggregate is written
    time.sleep(0.1)  # soon enough to land while the cells in flight end (they take longer than that)
    first.send_signal(signal.SIGTERM)  # a second one while they end: was a traceback, and no aggregate, exit 1
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 143 and "Traceback" not in stderr, stderr
    assert "Continue it (finished cells are kept): python -m multirnn.sweep " in stdout and stdout.rstrip().endswith(
        f"--out {out} --quiet --resume"), stdout
    partial = load(out)
    assert partial["run"]["stopped"] == "SIGTERM" and "pending" in {c["status"] for c in partial["cells"]}
    second = start([*args, "--resume"])
    assert wait_for(lambda: cells() >= 5, 120)
    second.kill()  # SIGKILL: no chance to clean up
    second.wait(30)
    assert wait_for(lambda: processes_mentioning(str(out)) == [], 10), "a worker outlived its driver"
    third = sweep([*args, "--resume"])
    assert third.returncode == 0, third.stderr
    assert identity(load(out)) == identity(load(local_run[1]))
    assert set(ends(out).values()) == {1}  # no cell ran twice to completion


def test_a_crashing_cell_is_retried_recorded_and_the_rest_finish(tmp_path):
    out = tmp_path / "crash"
    args = ["--backends", "numpy,mxnet", *TINY, "--retries", "1", "--out", str(out), "--quiet", "--no-plot"]
    proc = sweep(args, site=CRASHING_MXNET, tmp_path=tmp_path)  # mxnet: the oracle, segfaulting at step 5
    assert proc.returncode == 1, proc.stderr
    s = load(out)
    status = {c["row"]: c["status"] for c in s["cells"]}
    assert status == {"numpy": "ok", "mxnet": "crashed"}
    crashed = next(json.loads(p.read_text()) for p in (out / "cells").glob("mxnet-*.json"))
    assert crashed["attempts"] == 2 and all("SIGSEGV" in e for e in crashed["errors"])
    assert "crashed after 2 attempt(s)" in (out / "report.md").read_text()
    again = sweep(args, site=CRASHING_MXNET, tmp_path=tmp_path)  # rerun into the same folder: nothing left to run
    assert again.returncode == 1 and sum(ends(out).values()) == 3
    # and it says how to run the crashed cell again (a rerun after the cause was removed kept it, silently)
    assert "the same command with --retries 2 runs each once more" in again.stderr, again.stderr


def test_a_layer_that_cannot_compute_the_model_is_refused_without_a_worker(tmp_path):
    out = tmp_path / "gru"
    args = ["--backends", "numpy,torch", "--impl", "layers", "--cell", "gru", *TINY, "--out", str(out), "--quiet",
            "--no-plot"]
    proc = sweep(args, site=not_installed("torch"), tmp_path=tmp_path)  # a worker: unavailable
    cells = {c["row"]: c for c in load(out)["cells"]}
    assert cells["torch/layers"]["status"] == "unsupported", (proc.stderr, cells)
    assert "--cell gru-reset-after" in cells["torch/layers"]["error"]
    assert re.search(r"torch/layers +no finished run \(unsupported 1\)", proc.stdout), proc.stdout


SEGFAULTING = """
import os
import signal

from multirnn.backends.numpy_backend import NumpyBackend


class Segv(NumpyBackend):
    name = "segv"

    def version(self):
        return "fake"

    def train_step(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_each_finished_cell_prints_a_line_of_its_own_without_a_terminal(tmp_path):
    """A line per finished attempt: the count, status, row, configuration and seed, final perplexity (ok),
    wall time and why it did not end ok, aligned; plain text in a log (no cursor codes)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "segfaulting.py").write_text(SEGFAULTING)
    args = ["--backends", "numpy,segfaulting:Segv", "--lr", "1,100000", *TINY, "--lockstep", "off", "--jobs", "1",
            "--out", str(tmp_path / "s"), "--no-plot"]
    proc = sweep(args, site="", tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "\x1b[" not in err and "\r" not in err and "overall" not in err, err
    cells = [ln for ln in err.splitlines() if re.match(r"\[\d/4\] ", ln)]
    assert len(cells) == 6, err  # a crashed cell twice (--retries 1 by default)
    ok = next(ln for ln in cells if " ok " in ln)
    assert re.fullmatch(r"\[\d/4\] ok {11}numpy {13}lr=1 seed 0 {7}final ppl \d+\.\d{3}  \d+\.\d s", ok), ok
    diverged = next(ln for ln in cells if "numpy" in ln and "lr=100000" in ln)
    assert re.fullmatch(r"\[\d/4\] diverged {5}numpy {13}lr=100000 seed 0  \d+\.\d s  \(Training diverged: .*\)",
                        diverged), diverged
    crashed = [ln for ln in cells if "segfaulting:Segv" in ln]
    assert len(crashed) == 4 and sum(ln.endswith("; retrying") for ln in crashed) == 2, crashed
    assert all(" crashed      segfaulting:Segv  " in ln and "SIGSEGV" in ln for ln in crashed), crashed
    assert [ln[:5] for ln in cells][-1] == "[4/4]" and "4/4 done, 2 failed  (100%" in err, err


def test_a_finished_rerun_says_every_cell_was_already_done_and_shows_no_bar(tmp_path):
    """A --resume of a finished sweep showed a bar of 'cells 0/0 done' (and an 'overall' one above it)."""
    args = ["--backends", "numpy", "--seeds", "0-1", *TINY, "--out", str(tmp_path / "s"), "--no-plot"]
    first = sweep(args)
    assert first.returncode == 4, first.stderr  # nothing to compare numpy with
    assert "cells        0/2 done  (0%)" in first.stderr and "overall" not in first.stderr, first.stderr
    # one configuration: a cell's line names its seed alone (the configuration, every setting given, is in the summary)
    assert re.search(r"^\[1/2\] ok {11}numpy  seed [01]  final ppl \d", first.stderr, re.MULTILINE), first.stderr
    again = sweep([*args, "--resume"])
    assert again.returncode == 4, again.stderr
    assert "all 2 cells were already done: nothing to run; the report is written again from their records" in again.stderr
    assert "0/0" not in again.stderr and "cells        " not in again.stderr, again.stderr
    assert "numpy  median-last ppl" in again.stdout  # the summary, from the records


def test_a_resume_runs_again_the_cells_whose_framework_was_unavailable(tmp_path, capsys):
    """Install the framework the report named, resume: the sweep said "2 cells (2 already done)" and ran nothing,
    where compare's --resume runs such a row again."""
    from tests.conftest import require_backend

    require_backend("torch")
    out = tmp_path / "s"
    args = ["--backends", "numpy,torch", *TINY, "--out", str(out), "--quiet", "--no-plot"]
    sweep(args, site=not_installed("torch"), tmp_path=tmp_path)  # torch missing here
    assert {c["row"]: c["status"] for c in load(out)["cells"]}["torch"] == "unavailable"
    dry = sweep([*args, "--resume", "--dry-run"])
    # torch again, and the oracle whose checkpoints it restarts from (a finished sweep keeps none)
    assert dry.returncode == 0 and "2 to run" in dry.stdout, dry.stdout
    # still not installed: nothing runs again (the oracle retrained on every resume, for nobody)
    from multirnn import info

    with pytest.MonkeyPatch.context() as mp:
        for module in (info, sweep_cli):  # info.may_be_installed reads the metadata through info's own name
            mp.setattr(module, "installed_version", lambda name: None)
        assert sweep_cli.main([*args, "--resume", "--dry-run"]) == 0
    assert "0 to run" in capsys.readouterr().out
    again = sweep([*args, "--resume"])  # torch "installed" now
    assert again.returncode == 0, again.stderr
    assert {c["row"]: c["status"] for c in load(out)["cells"]}["torch"] == "ok"


def test_a_dry_run_marks_frameworks_that_are_not_installed_and_costs_them_nothing(tmp_path, monkeypatch, capsys):
    """A NumPy-only installation: the dry run listed torch "to run" and added its nominal seconds to the cost."""
    monkeypatch.setattr(sweep_cli, "installed_version", lambda name: None)
    argv = ["--backends", "numpy,torch", *TINY, "--out", str(tmp_path / "s"), "--dry-run"]
    assert sweep_cli.main(argv) == 0
    out = capsys.readouterr().out
    torch_row = next(line for line in out.splitlines() if line.split() and "torch" in line.split())
    assert torch_row.rstrip().endswith("not installed") and " 0.0 " in torch_row
    assert "1 to run, 1 not installed here" in out


def test_two_drivers_never_share_a_folder(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out"
    (out / "cells").mkdir(parents=True)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running sweep holds it
    try:
        assert sweep_cli.main([*TINY, "--backends", "numpy", "--out", str(out), "--quiet"]) == 2
    finally:
        os.close(fd)
    assert "another sweep is running" in capsys.readouterr().err
    assert not list((out / "cells").iterdir())


# --- statistics --------------------------------------------------------------------------------------


def test_t_distribution_matches_its_closed_forms():
    """Without scipy too: Student's t has closed forms at 1 (Cauchy) and 2 degrees of freedom, and tends to the
    normal distribution."""
    from statistics import NormalDist
    for p in (0.6, 0.9, 0.975, 0.995):
        assert math.isclose(t_ppf(p, 1), math.tan(math.pi * (p - 0.5)), rel_tol=1e-8)
        assert math.isclose(t_ppf(p, 2), (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel_tol=1e-8)
        assert math.isclose(t_ppf(p, 10**6), NormalDist().inv_cdf(p), rel_tol=1e-4)
    for t in (-2.0, 0.3, 3.0, 40.0):
        assert math.isclose(t_sf(t, 1), 0.5 - math.atan(t) / math.pi, rel_tol=1e-8)
        assert math.isclose(t_sf(t, 2), 0.5 - t / (2 * math.sqrt(2 + t * t)), rel_tol=1e-8)


def test_perplexity_intervals_are_of_the_log_and_stay_positive():
    """Two seeds at --lr 50 blew up to 1.8e12 and 1.3e74: the arithmetic interval ran from -1.5e75, and the
    report printed both ends in 75 digits."""
    from multirnn import sweep_report

    m = mean_interval([1776220264273.302, 1.3309e74], log=True, least=1.0)
    assert m["n"] == 2 and m["scale"] == "log" and m["ci95"][0] == 1.0 < m["mean"] < m["ci95"][1]  # two seeds this
    # far apart leave t(1) an interval from exp(-806) to inf: its lower end stops at a perplexity's least, 1
    assert "sd" not in m and m["sd_log"] > 0  # the log's standard deviation, under a name that says so
    near = mean_interval([10.0, 12.0, 11.0], log=True)
    assert 0 < near["ci95"][0] < 10.0 and 12.0 < near["ci95"][1] < 15.0
    assert m["mean"] == pytest.approx(math.sqrt(1776220264273.302 * 1.3309e74))  # the geometric mean
    assert math.isinf(mean_interval([1e300, 1e-300], log=True)["ci95"][1])  # exp overflowed: inf, not an error
    text = sweep_report._ci(m)
    assert len(text) < 40 and "e+" in text and "-" not in text, text
    same = mean_interval([5.0, 5.0, 5.0], log=True)
    assert same["mean"] == pytest.approx(5.0) and same["ci95"] == pytest.approx([5.0, 5.0])
    assert mean_interval([0.0, math.nan, math.inf], log=True) == {"n": 0, "mean": None, "sd_log": None, "ci95": None,
                                                                   "scale": "log"}


def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 30):
        assert math.isclose(t_ppf(0.975, df), stats.t.ppf(0.975, df), rel_tol=1e-8)
        for t in (-2.0, 0.3, 3.0):
            assert math.isclose(t_sf(t, df), stats.t.sf(t, df), rel_tol=1e-8)
    m = mean_interval([1.0, 2.0, 3.0, 4.0])
    lo, hi = stats.t.interval(0.95, 3, loc=2.5, scale=stats.sem([1.0, 2.0, 3.0, 4.0]))
    assert math.isclose(m["ci95"][0], lo) and math.isclose(m["ci95"][1], hi)


def test_tost_says_equivalent_only_inside_the_margin():
    assert tost_paired([0.01, 0.02, -0.01, 0.0, 0.015], 0.05)["equivalent"] is True
    assert tost_paired([0.20, 0.22, 0.19, 0.21], 0.05)["equivalent"] is False
    assert tost_paired([0.04, -0.04], 0.05)["equivalent"] is None  # too few, too spread: not shown
    assert tost_paired([0.01], 0.05)["equivalent"] is None


def test_thread_caps_reach_every_framework_and_keep_the_users_xla_flags(monkeypatch):
    from multirnn.sweep_exec import thread_env

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
    one = thread_env(1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS", "MXNET_CPU_WORKER_NTHREADS"):
        assert one[var] == "1" and thread_env(3)[var] == "3"
    assert one["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX2 --xla_cpu_multi_thread_eigen=false"
    assert "XLA_FLAGS" not in thread_env(2)  # XLA takes no thread count: left at its default


def test_the_sweep_imports_no_framework_and_no_ray():
    code = ("import sys, multirnn.sweep, multirnn.sweep_report; "
            "print(sorted(m for m in ('ray', 'torch', 'jax', 'tensorflow', 'mxnet') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_framework_init_equivalence_pairs_with_the_oracle_from_the_same_weights():
    """--init framework: a row is compared with the d2l model trained from its own initial weights
    (the worker's paired run), not with the d2l-initialised oracle, whose start differs."""
    from multirnn.sweep_report import _equivalence

    conf = {"index": 0, "init": "framework", "rows": ["numpy", "torch/layers"]}
    cells = [{"configuration": 0, "row": "numpy", "seed": s, "repeat": 0, "status": "ok", "median_last_perplexity": 8.4,
              "paired_median_last_perplexity": None, "paired": False} for s in range(3)]
    cells += [{"configuration": 0, "row": "torch/layers", "seed": s, "repeat": 0, "status": "ok", "median_last_perplexity": p,
               "paired_median_last_perplexity": q, "paired": True}
              for s, (p, q) in enumerate([(7.10, 7.11), (7.20, 7.19), (7.05, 7.05)])]
    row = _equivalence([conf], cells, 0.05)["rows"][0]
    assert row["row"] == "torch/layers" and row["equivalent"] is True and abs(row["mean"]) < 1e-3
    # a pair whose d2l run diverged is left out, not paired with the d2l-initialised oracle (8.4: -15 %)
    cells[-1]["paired_median_last_perplexity"] = None
    row = _equivalence([conf], cells, 0.05)["rows"][0]
    assert row["n"] == 2 and abs(row["mean"]) < 1e-2, row
    assert row["left_out"] == {"the d2l model from the same weights diverged": 1}


# --- what a new user ran into ------------------------------------------------------------------------


def _refusal(capsys, argv: list[str]) -> tuple[int, str]:
    code = sweep_cli.main(argv)
    return code, capsys.readouterr().err


def test_dry_run_refuses_a_folder_holding_another_sweep_as_the_real_run_does(tmp_path, capsys):
    out = tmp_path / "out"
    before = sweep_cli.parse_options([*TINY, "--backends", "numpy", "--epochs", "3"])
    cells = expand(before.dims, before.fixed, before.seeds, before.repeats)[2]
    out.mkdir()
    (out / "spec.json").write_text(json.dumps({"settings": sweep_cli._settings(before), "cells": [c.id for c in cells],
                                               "command": "python -m multirnn.sweep --epochs 3"}))
    argv = [*TINY, "--backends", "numpy", "--out", str(out), "--quiet"]
    real, real_err = _refusal(capsys, argv)
    dry, dry_err = _refusal(capsys, [*argv, "--dry-run"])
    assert real == dry == 2 and dry_err == real_err and len(dry_err.strip().splitlines()) == 1, dry_err
    assert "holds a sweep with other settings: --epochs 3 (now 2)" in dry_err
    assert sorted(p.name for p in out.iterdir()) == ["spec.json"]  # nothing written by either


@pytest.mark.parametrize("given, as_compare", [
    (["--max-tokens", "3000"], ["--max-tokens", "3000"]), (["--sampling", "random"], ["--sampling", "random"]),
    (["--sampling", "sequential,random", "--max-tokens", "3000"], ["--sampling", "random", "--max-tokens", "3000"])])
def test_ed2_preset_refuses_ed1_options_as_compare_does(tmp_path, capsys, monkeypatch, given, as_compare):
    from multirnn import compare

    monkeypatch.chdir(tmp_path)
    base = ["--backends", "numpy", "--preset", "d2l-ed2", "--epochs", "1", "--quiet"]
    assert sweep_cli.main([*base, *given, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multirnn.sweep: error: ") and len(err.strip().splitlines()) == 1, err
    assert compare.main([*base, *as_compare]) == 2
    assert err.split("error: ", 1)[1] == capsys.readouterr().err.split("error: ", 1)[1]  # compare's own words
    assert sweep_cli.main([*base, *given, "--out", str(tmp_path / "out")]) == 2  # the real run too, nothing written
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_mixed_presets_note_every_ed1_option_ed2_ignores(capsys):
    base = ["--backends", "numpy", "--preset", "d2l-ed1,d2l-ed2", "--epochs", "1", "--dry-run"]
    assert sweep_cli.main([*base, "--max-tokens", "3000"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert any("d2l-ed2 ignores --max-tokens" in n for n in notes), notes
    assert sweep_cli.main([*base, "--sampling", "sequential,random", "--max-tokens", "3000"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert any("ignores --sampling and --max-tokens" in n and "once per --sampling value" in n for n in notes), notes


def _wall(text: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith("Estimated cost"))
    return float(line.split("about ")[1].split(" s wall")[0].replace(",", ""))


def test_dry_run_wall_time_waits_for_the_oracle(capsys):
    """A row restarts from its oracle's checkpoints: it cannot start before the oracle ends, however many jobs."""
    one = [*TINY, "--backends", f"numpy,{SECOND}", "--jobs", "4", "--dry-run"]
    assert sweep_cli.main(one) == 0
    text = capsys.readouterr().out
    est = [float(line.split()[-3]) for line in text.splitlines() if line.endswith("  to run")]
    assert len(est) == 2 and abs(_wall(text) - sum(est)) <= 1, text  # a chain: oracle, then its row
    assert sweep_cli.main([*one, "--dtype", "float32,float64"]) == 0  # two chains side by side
    text = capsys.readouterr().out
    est = [float(line.split()[-3]) for line in text.splitlines() if line.endswith("  to run")]
    assert len(est) == 4 and abs(_wall(text) - max(est[0] + est[1], est[2] + est[3])) <= 1, text
    assert "estimate" in text.lower()


def test_dry_run_marks_a_layer_that_cannot_compute_the_model_and_costs_it_nothing(capsys):
    """The real run refuses such a row without a worker: the dry run must not list it as to run."""
    from tests.conftest import require_backend

    require_backend("torch")  # without it torch's scratch row is "not installed", not "to run"
    args = [*TINY, "--backends", "numpy,torch", "--impl", "scratch,layers", "--cell", "gru", "--dry-run"]
    assert sweep_cli.main(args) == 0
    text = capsys.readouterr().out
    refused = [line for line in text.splitlines() if line.endswith("  unsupported")]
    assert len(refused) == 1 and " torch/layers " in refused[0] and float(refused[0].split()[-2]) == 0.0, text
    assert "3 cell(s), 2 to run, 1 unsupported" in text
    est = [float(line.split()[-3]) for line in text.splitlines() if line.endswith("  to run")]
    assert abs(_wall(text) - sum(est)) <= 1, text  # torch's scratch row after the oracle, nothing for the refused one


def test_dry_run_counts_an_eval_text(capsys):
    base = [*TINY, "--backends", "numpy", "--dry-run"]
    costs = []
    for extra in ([], ["--eval-text", "war_of_the_worlds"]):
        assert sweep_cli.main([*base, *extra]) == 0
        costs.append(next(float(line.split()[-3]) for line in capsys.readouterr().out.splitlines()
                          if line.endswith("  to run")))
    # a whole book (~330k characters) read once through a 16-unit model: 330k/16 units at 30k tokens/s, halved
    assert 0.2 < costs[1] - costs[0] < 0.6, costs


class _KeepFigures:
    """matplotlib.pyplot that keeps the figures it makes open, to read their texts."""

    def __init__(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.figures = plt, []

    def __getattr__(self, name):
        return getattr(self.plt, name)

    def subplots(self, *args, **kwargs):
        fig, axes = self.plt.subplots(*args, **kwargs)
        self.figures.append(fig)
        return fig, axes

    def close(self, fig):
        pass

    def texts(self) -> str:
        from matplotlib.text import Text

        return "\n".join(t.get_text() for f in self.figures for t in f.findobj(Text))


def _partial_sweep() -> tuple[dict, dict]:
    """Two configurations; the second has no finished seed (a sweep stopped early)."""
    confs = [{"index": i, "label": f"dtype={d}", "rows": ["numpy", "torch/scratch"]} for i, d in enumerate(["float32", "float64"])]
    groups = [{"configuration": 0, "seed": 0, "complete": True}, {"configuration": 1, "seed": 0, "complete": False}]
    cells = [{"id": f"{row}-{c}", "configuration": c, "seed": 0, "repeat": 0, "row": row,
              "status": "ok" if c == 0 else "pending"} for c in (0, 1) for row in ("numpy", "torch/scratch")]
    records = {f"{row}-0": {"result": {"perplexity": [30.0, 20.0]}} for row in ("numpy", "torch/scratch")}
    speed = [{"configuration": 0, "row": "numpy", "median": 3e4, "ratio_to_fastest": 0.5},
             {"configuration": 0, "row": "torch/scratch", "median": 6e4, "ratio_to_fastest": 1.0},
             *({"configuration": 1, "row": r, "median": None, "ratio_to_fastest": None} for r in ("numpy", "torch/scratch"))]
    sweep = {"configurations": confs, "groups": groups, "cells": cells, "speed": {"contended": False, "rows": speed},
             "partial": {"rule": "", "configurations": [{"configuration": 1, "seeds": [0], "complete_seeds": [],
                                                         "finished_not_aggregated": 0}]}}
    return sweep, records


def test_partial_plots_say_what_is_missing(tmp_path):
    pytest.importorskip("matplotlib")
    from multirnn import sweep_plots

    sweep, records = _partial_sweep()
    plt = _KeepFigures()
    assert sweep_plots.perplexity_bands(sweep, records, tmp_path / "bands.png", plt, [])
    bands = plt.texts()
    assert "no finished run" in bands and "partial" in bands.lower(), bands
    plt = _KeepFigures()
    assert sweep_plots.speed_heatmap(sweep, tmp_path / "speed.png", plt)
    speed = plt.texts()
    assert "no finished run" in speed and "partial" in speed.lower(), speed


def test_the_heat_map_shows_the_spread_of_several_timings(tmp_path):
    """A cell's ratio to the fastest row came without how far its seeds' timings spread."""
    pytest.importorskip("matplotlib")
    from multirnn import sweep_plots

    sweep, _ = _partial_sweep()
    sweep["speed"]["rows"][0].update(n=3, min=2.1e4, max=3.9e4)
    sweep["speed"]["rows"][1].update(n=1, min=6e4, max=6e4)
    plt = _KeepFigures()
    assert sweep_plots.speed_heatmap(sweep, tmp_path / "speed.png", plt)
    texts = plt.texts()
    assert "30.0k\n[21.0-39.0]\n0.50" in texts, texts
    assert "60.0k\n1.00" in texts, texts  # one timing: no range


def test_the_bands_name_a_disagreeing_row_and_why_a_panel_is_empty(tmp_path):
    """A wrong row's lower curve read as better training; an all-diverged panel said only 'no finished run'."""
    pytest.importorskip("matplotlib")
    from multirnn import sweep_plots

    sweep, records = _partial_sweep()
    sweep["groups"][0]["rows"] = [{"name": "numpy", "judgement": "reference"},
                                  {"name": "torch/scratch", "judgement": "disagrees"}]
    for c in sweep["cells"]:
        c["status"] = "ok" if c["configuration"] == 0 else "diverged"
    plt = _KeepFigures()
    assert sweep_plots.perplexity_bands(sweep, records, tmp_path / "bands.png", plt, [])
    texts = plt.texts()
    assert "torch/scratch (n=1): DISAGREES in 1/1 seeds" in texts and "numpy (n=1)" in texts, texts
    assert "numpy (n=1):" not in texts
    assert "numpy: 1 diverged" in texts and "torch/scratch: 1 diverged" in texts, texts


def test_summary_omits_empty_parentheses():
    none = {"mean": None}
    sweep = {"configurations": [{"index": 0, "label": "dtype=float32"}], "groups": [],
             "statistics": [{"configuration": 0, "row": "numpy", "statuses": {}, "median_last_perplexity": none}],
             "speed": {"rows": []}}
    text = sweep_cli._summary(sweep)
    assert re.search(r"numpy +none recorded \(stopped first\)", text) and "()" not in text, text


def test_a_single_configuration_is_named_by_its_settings(capsys):
    opts = sweep_cli.parse_options([*TINY, "--backends", "numpy"])
    confs = expand(opts.dims, opts.fixed, opts.seeds, opts.repeats)[0]
    assert confs[0].label == "epochs=2 hidden=16 batch-size=8 num-steps=10 max-tokens=3000" or \
        set(confs[0].label.split()) == {"epochs=2", "hidden=16", "batch-size=8", "num-steps=10", "max-tokens=3000"}
    bare = sweep_cli.parse_options(["--backends", "numpy"])
    label = expand(bare.dims, bare.fixed, bare.seeds, bare.repeats)[0][0].label
    assert label != "all" and "default" in label, label
    assert sweep_cli.main([*TINY, "--backends", "numpy", "--dry-run"]) == 0
    assert " all " not in capsys.readouterr().out


def test_keep_checkpoints_on_a_finished_sweep_writes_no_empty_folder(tmp_path):
    out = tmp_path / "out"
    args = [*TINY, "--backends", "numpy", "--out", str(out), "--quiet", "--no-plot"]
    assert sweep(args).returncode == 4
    again = sweep([*args, "--resume", "--keep-checkpoints"])
    assert again.returncode == 4, again.stderr
    assert not (out / "checkpoints").exists()


def test_keep_checkpoints_on_resume_keeps_the_ones_kept_before(tmp_path):
    from multirnn.sweep_engine import Engine, Store

    store = Store(tmp_path)
    kept = tmp_path / "checkpoints" / "numpy-abc" / "epoch-00001.npz"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"x")
    store.create()  # a resume: nothing new in .work/checkpoints
    Engine([], store, None, 0, None, {}).cleanup(keep_checkpoints=True)
    assert kept.is_file() and not store.work.exists()
    store.create()
    (store.work / "checkpoints" / "numpy-def").mkdir()
    (store.work / "checkpoints" / "numpy-def" / "epoch-00001.npz").write_bytes(b"y")
    Engine([], store, None, 0, None, {}).cleanup(keep_checkpoints=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["numpy-abc", "numpy-def"]


def test_the_sweep_reports_the_eval_text_perplexity_across_seeds(tmp_path):
    """--eval-text's perplexity was only in cells.csv and each group's report."""
    out = tmp_path / "sweep"
    proc = sweep(["--backends", "numpy,tests.zoo:OracleCopy", *TINY, "--seeds", "0-1", "--eval-text",
                  "war_of_the_worlds", "--out", str(out), "--no-plot"])
    assert proc.returncode == 0, proc.stderr
    cells = load(out)["cells"]
    mean = math.exp(sum(math.log(c["eval_perplexity"]) for c in cells if c["row"] == "numpy") / 2)  # geometric
    assert "eval text ppl, geo. mean [95 % CI]" in (out / "report.md").read_text()
    assert f"eval-text ppl {mean:.3f}" in proc.stdout, proc.stdout


def test_the_summary_lines_up_long_row_names():
    stat = {"configuration": 0, "median_last_perplexity": {"mean": 5.0, "ci95": None}}
    sweep = {"configurations": [{"index": 0, "label": "epochs=2"}], "groups": [{"configuration": 0, "status": "agree"}],
             "statistics": [{**stat, "row": "numpy"}, {**stat, "row": "tensorflow/layers"}], "speed": {"rows": []}}
    rows = [line for line in sweep_cli._summary(sweep).splitlines() if "median-last" in line]
    assert len(rows) == 2 and len({line.index("median-last") for line in rows}) == 1, rows


def test_the_summary_says_where_the_reference_blew_up():
    """--lr 50: 'agree 2/2 seeds' stood above perplexities of 1.8e12 with nothing saying the runs blew up."""
    stat = {"configuration": 0, "row": "numpy", "median_last_perplexity": {"mean": 2.3e11, "ci95": None}}
    blew = {"configuration": 0, "status": "agree", "verdict": {"reference_diverged": {"how": "blew up"}}}
    sweep = {"configurations": [{"index": 0, "label": "lr=50"}], "groups": [blew, {**blew, "verdict": {}}],
             "statistics": [stat], "speed": {"rows": []}}
    assert sweep_cli._summary(sweep).splitlines()[0] == "lr=50: agree 2/2 seeds; the reference blew up in 1/2"
    assert "median-last ppl 2.3e+11" in sweep_cli._summary(sweep)  # three digits, not 230000000000.000


def test_the_summary_says_why_a_row_has_no_run():
    """Under --quiet the install hint of an unavailable framework reached only report.md."""
    hint = "Backend 'mxnet' needs mxnet, which is not installed. Install it with: pip install 'multirnn[mxnet]'"
    stat = {"configuration": 0, "row": "mxnet", "statuses": {"unavailable": 1},
            "median_last_perplexity": {"mean": None, "ci95": None}}
    sweep = {"configurations": [{"index": 0, "label": "epochs=2"}], "groups": [{"configuration": 0, "status": "agree"}],
             "statistics": [stat], "speed": {"rows": []},
             "cells": [{"configuration": 0, "row": "mxnet", "status": "unavailable", "error": hint + "\nmore"}]}
    assert sweep_cli._summary(sweep).splitlines()[1] == f"  mxnet  no finished run (unavailable 1): {hint}"


def test_configurations_whose_labels_make_the_same_folder_name_get_their_own(tmp_path):
    """'/x/b.txt' and '/x_b.txt' both become 'text=_x_b.txt': one group's report overwrote the other's."""
    text = (ROOT / "multirnn" / "texts" / "timemachine.txt").read_text()[:60000]
    (tmp_path / "x").mkdir()
    a, b = tmp_path / "x" / "b.txt", tmp_path / "x_b.txt"
    a.write_text(text)
    b.write_text(text[:50000])
    opts = sweep_cli.parse_options(["--backends", "numpy", "--text", f"{a},{b}", *TINY])
    groups = sweep_cli.expand_options(opts)[1]
    assert len(groups) == 2 and len({g.folder for g in groups}) == 2, [g.folder for g in groups]
    plain = sweep_cli.expand_options(sweep_cli.parse_options(["--backends", "numpy", *TINY[:2], "--hidden", "8,16"]))[1]
    assert [g.folder for g in plain] == ["hidden=8-s0", "hidden=16-s0"]  # readable names where they are unique


def test_a_partial_aggregate_does_not_say_a_finished_row_has_no_runs():
    """Stopped before any seed was complete: numpy had finished every seed, yet read 'no finished run'."""
    stat = {"configuration": 0, "row": "numpy", "statuses": {}, "median_last_perplexity": {"mean": None}}
    sweep = {"configurations": [{"index": 0, "label": "epochs=2"}], "groups": [{"configuration": 0, "status": "stopped"}],
             "statistics": [stat], "speed": {"rows": []},
             "partial": {"configurations": [{"configuration": 0, "seeds": [0, 1], "complete_seeds": [],
                                             "finished_not_aggregated": 2}]}}
    text = sweep_cli._summary(sweep)
    assert "no finished run" not in text and "none aggregated (no seed of this configuration is complete)" in text, text


def test_the_report_says_how_the_cells_ran_when_this_start_differs():
    """A finished sweep started again with --jobs 2 --threads 1 ran nothing, yet the report said every cell
    ran that way; cells run on Ray and then locally were all "local"."""
    from multirnn.sweep_report import _cells_ran_text

    timings = {"a": {"executor": "local", "threads": 2, "concurrency": 1},
               "b": {"executor": "local", "threads": 2, "concurrency": 1}}
    same = {"run": {"executor": {"executor": "local", "jobs": 1, "threads": 2}}, "timings": timings}
    assert _cells_ran_text(same) == ""
    other = {**same, "run": {"executor": {"executor": "local", "jobs": 2, "threads": 1}}}
    assert _cells_ran_text(other) == "; the cells ran: 2 on local, 2 thread(s), 1 at a time"
    mixed = {**same, "timings": {**timings, "c": {"executor": "ray", "threads": 2, "concurrency": 1}}}
    assert "2 on local" in _cells_ran_text(mixed) and "1 on ray" in _cells_ran_text(mixed)


def test_a_re_run_without_plots_leaves_no_plot_of_earlier_results(tmp_path):
    out = tmp_path / "out"
    args = [*TINY, "--backends", "numpy", "--out", str(out), "--quiet"]
    assert sweep(args).returncode == 4 and (out / "perplexity_bands.png").is_file()
    assert sweep([*args, "--no-plot"]).returncode == 4
    assert not (out / "perplexity_bands.png").exists() and "perplexity_bands.png" not in (out / "report.md").read_text()


def test_the_heat_map_lists_many_configurations_down_not_across(tmp_path):
    """12 configurations across made a 20-inch strip under a band of slanted labels."""
    pytest.importorskip("matplotlib")
    from multirnn import sweep_plots

    sweep, _ = _partial_sweep()
    rows = ["numpy", "torch/scratch"]
    sweep["configurations"] = [{"index": i, "label": f"hidden={h}, batch-size={b}", "rows": rows}
                               for i, (h, b) in enumerate((h, b) for h in (128, 256, 512) for b in (1, 16, 64, 256))]
    sweep["speed"]["rows"] = [{"configuration": i, "row": r, "median": 1e4 * (k + 1), "ratio_to_fastest": (k + 1) / 2}
                              for i in range(12) for k, r in enumerate(rows)]
    sweep["partial"]["configurations"] = []
    plt = _KeepFigures()
    assert sweep_plots.speed_heatmap(sweep, tmp_path / "speed.png", plt)
    fig = plt.figures[-1]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [c["label"] for c in sweep["configurations"]]
    assert [t.get_text() for t in ax.get_xticklabels()] == rows
    width, height = fig.get_size_inches()
    assert height >= 0.4 * 12 and width < 10, (width, height)  # each configuration a line of its own
