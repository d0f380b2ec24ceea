"""``python -m multirnn.sweep``'s guards: a folder holds one sweep (spec.json records what defines it,
and starting again there with other settings is refused, writing nothing), and an unreachable Ray
--address fails at once instead of leaving Ray to retry for minutes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from multirnn import sweep as sweep_cli
from multirnn import sweep_exec
from multirnn.sweep_exec import check_reachable, ray_endpoint
from tests.conftest import require_module
from tests.fakes import not_installed
from tests.test_sweep import TINY, ends, load, sweep

BASE = ["--backends", "numpy,tests.zoo:OracleCopy", *TINY, "--quiet"]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file (contents, modification time) and folder under ``folder``: equal if nothing was written."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-cell sweep (plots included) and its run."""
    out = tmp_path_factory.mktemp("guards") / "sweep"
    proc = sweep([*BASE, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return proc, out


@pytest.fixture
def folder(finished, tmp_path) -> Path:
    """A private copy of the finished sweep's folder."""
    out = tmp_path / "sweep"
    shutil.copytree(finished[1], out)
    return out


def refused(argv: list[str], capsys) -> str:
    """Run the CLI in this process (it returns before touching signals); assert exit 2 and one line."""
    assert sweep_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("multirnn.sweep: error: ") and len(err.strip().splitlines()) == 1, err
    return err


# --- one sweep per folder ----------------------------------------------------------------------------


def test_the_folder_records_what_defines_the_sweep(finished):
    proc, out = finished
    spec = json.loads((out / "spec.json").read_text())
    assert spec["settings"] == load(out)["spec"]
    assert spec["settings"]["dimensions"]["epochs"] == ["2"] and spec["settings"]["seeds"] == [0]
    assert sorted(spec["cells"]) == sorted(p.stem for p in (out / "cells").glob("*.json"))
    assert "--epochs 2" in spec["command"]
    report = next(line for line in proc.stdout.splitlines() if line.startswith("Report: "))
    for name in ("perplexity_bands.png", "speed_heatmap.png"):
        assert (out / name).is_file() and name in report, report


@pytest.mark.parametrize("change, named", [
    (["--epochs", "3"], "--epochs 2 (now 3)"),
    (["--seeds", "0-1"], "--seeds 0 (now 0-1)"),
    (["--backends", "numpy"], "--backends numpy,tests.zoo:OracleCopy (now numpy)"),
    (["--lr", "0.5"], "--lr not given (now 0.5)"),
    (["--repeats", "2"], "--repeats 1 (now 2)"),
    (["--equivalence-margin", "0.1"], "--equivalence-margin 0.05 (now 0.1)"),
])
def test_resume_with_other_settings_is_refused_and_writes_nothing(folder, capsys, change, named):
    before = snapshot(folder)
    base = BASE[2:] if change[0] == "--backends" else BASE  # BASE opens with --backends: given once, changed
    err = refused([*base, *change, "--out", str(folder), "--resume"], capsys)
    assert f"--resume: the sweep in {str(folder)!r} used other settings: {named};" in err, err
    assert "repeat its command (python -m multirnn.sweep " in err and "--overwrite or another --out" in err
    assert snapshot(folder) == before


def test_the_command_to_repeat_never_carries_overwrite(folder, capsys):
    """A sweep run with --overwrite recorded it: the hint 'repeat its command (... --overwrite) with --resume'
    was refused again (the two exclude each other), and pasting it as it stood cleared the folder."""
    from multirnn.compare import without_run_control

    spec = json.loads((folder / "spec.json").read_text())
    spec["command"] += " --overwrite"
    (folder / "spec.json").write_text(json.dumps(spec))
    err = refused([*BASE, "--epochs", "3", "--out", str(folder), "--resume"], capsys)
    assert "repeat its command (python -m multirnn.sweep " in err and "--overwrite)" not in err, err
    assert without_run_control("python -m multirnn.compare --out 'my runs' --overwrite --resume --epochs 2") == \
        "python -m multirnn.compare --out 'my runs' --epochs 2"


def test_a_rerun_without_resume_is_refused_too(folder, capsys):
    before = snapshot(folder)
    err = refused([*BASE, "--epochs", "3", "--out", str(folder)], capsys)
    assert "holds a sweep with other settings: --epochs 2 (now 3); use --overwrite" in err, err
    assert snapshot(folder) == before


def test_a_changed_text_is_another_sweep(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the time machine by h g wells " * 400)
    args = [*BASE, "--no-plot", "--prefix", "the", "--text", str(text), "--out", str(tmp_path / "out")]
    assert sweep(args).returncode == 0
    text.write_text("the time machine by h g wells " * 401)  # same options, other cells
    before = snapshot(tmp_path / "out")
    err = refused([*args, "--resume"], capsys)
    assert "holds a sweep of other code or files: the same options now make other cells" in err, err
    assert "use --overwrite to start it again" in err and "repeat its" not in err, err  # repeating cannot help
    assert snapshot(tmp_path / "out") == before


def test_a_folder_from_before_spec_json_is_checked_by_its_sweep_json_then_its_cells(folder, capsys):
    (folder / "spec.json").unlink()
    before = snapshot(folder)
    assert "--epochs 2 (now 3)" in refused([*BASE, "--epochs", "3", "--out", str(folder), "--resume"], capsys)
    assert snapshot(folder) == before
    (folder / "sweep.json").unlink()  # killed before any aggregate: only the cell records tell
    before = snapshot(folder)
    err = refused([*BASE, "--epochs", "3", "--out", str(folder), "--resume"], capsys)
    assert "cells/ holds 2 cell(s) that are not in this sweep; repeat its settings with --resume" in err, err
    assert snapshot(folder) == before


def test_resume_with_the_same_settings_reruns_nothing_and_records_them_once(folder, tmp_path):
    spec = (folder / "spec.json").read_text()
    # the same settings from a TOML file: the same sweep
    (tmp_path / "s.toml").write_text('backends = "numpy,tests.zoo:OracleCopy"\nepochs = 2\nhidden = 16\n'
                                     'max-tokens = 3000\nbatch-size = 8\nnum-steps = 10\n')
    proc = sweep(["--spec", str(tmp_path / "s.toml"), "--quiet", "--out", str(folder), "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert sum(ends(folder).values()) == 2 and (folder / "spec.json").read_text() == spec


def test_overwrite_replaces_only_the_sweeps_files(folder, capsys):
    (folder / "notes.txt").write_text("mine")
    (folder / "cells" / "README.txt").write_text("mine")  # inside the sweep's own folders, too
    (folder / "groups" / "mine").mkdir(parents=True)
    (folder / "groups" / "mine" / "keep.txt").write_text("mine")
    (folder / "groups" / "mine" / "summary.csv").write_text("mine")  # a suffix the sweep also writes
    (folder / "cells" / "notes.json").write_text('{"mine": true}')
    (folder / "groups" / "mine" / "report.md").write_text("mine")  # the name a group's report has, in the user's folder
    (folder / "cells" / "saved").mkdir()
    (folder / "cells" / "saved" / "cell.json").write_text('{"id": "x", "spec": {}, "result": {}}')  # a copied record
    assert sweep_cli.main([*BASE, "--epochs", "3", "--out", str(folder), "--dry-run", "--overwrite"]) == 0
    assert "2 cell(s), 2 to run" in capsys.readouterr().out
    proc = sweep([*BASE, "--no-plot", "--epochs", "3", "--out", str(folder), "--overwrite"])
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["settings"]["dimensions"]["epochs"] == ["3"]
    assert sorted(p.stem for p in (folder / "cells").glob("*.json") if p.stem != "notes") == sorted(spec["cells"])
    assert not (folder / "perplexity_bands.png").exists() and (folder / "notes.txt").read_text() == "mine"
    assert (folder / "cells" / "README.txt").read_text() == (folder / "groups" / "mine" / "keep.txt").read_text() == "mine"
    assert (folder / "groups" / "mine" / "summary.csv").is_file() and (folder / "cells" / "notes.json").is_file()
    assert (folder / "groups" / "mine" / "report.md").is_file() and (folder / "cells" / "saved" / "cell.json").is_file()
    assert sum(ends(folder).values()) == 2  # a new journal
    refused([*BASE, "--out", str(folder), "--resume", "--overwrite"], capsys)


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist: no sweep to continue"),
    ("empty", "holds no sweep (no spec.json or cells/)"),
    ("compare", "holds no sweep (no spec.json or cells/) but a compare run"),
    ("other", "holds no sweep"),
    ("foreign-spec", "holds no sweep"),  # a spec.json of something else is not a sweep's
])
def test_resume_of_a_folder_without_a_sweep_is_refused(tmp_path, capsys, kind, message):
    out = tmp_path / "out"
    if kind != "missing":
        out.mkdir()
    if kind == "compare":
        (out / "results.json").write_text("{}")
    if kind == "other":
        (out / "data.txt").write_text("x")
    if kind == "foreign-spec":
        (out / "spec.json").write_text('{"name": "my project"}')
        (out / "report.md").write_text("mine")
    before = snapshot(out)
    assert message in refused([*BASE, "--out", str(out), "--resume"], capsys)
    assert snapshot(out) == before and out.exists() == (kind != "missing")
    assert not (tmp_path / "runs").exists()


# --- an unreachable Ray address ----------------------------------------------------------------------


@pytest.fixture
def closed_port():
    """A port bound on 127.0.0.1 where nothing listens (connections are refused; nobody else takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
@pytest.mark.parametrize("ray_importable", [True, False])
def test_an_unreachable_address_fails_at_once(tmp_path, closed_port, scheme, ray_importable):
    address = f"{scheme}127.0.0.1:{closed_port}"
    site = None if ray_importable else not_installed("ray")  # checked before importing ray
    start = time.monotonic()
    proc = sweep([*TINY, "--executor", "ray", "--address", address, "--out", str(tmp_path / "out")], site=site,
                 tmp_path=tmp_path, timeout=60)
    assert time.monotonic() - start < 60
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"multirnn.sweep: error: --address {address}: cannot connect to "
                                  f"127.0.0.1:{closed_port} (Connection refused)"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_address_ray_refuses_leaves_no_folder(tmp_path):
    """Refused by Ray itself (after --out was checked by creating it): an empty folder was left behind."""
    require_module("ray", "pip install 'multirnn[ray]'")  # skipped with the reason, or failed where ray is required
    out = tmp_path / "new" / "out"  # its parent made by the sweep too
    proc = sweep([*TINY, "--executor", "ray", "--address", "nonsense::", "--out", str(out)], tmp_path=tmp_path,
                 timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("multirnn.sweep: error: --executor ray: "), proc.stderr
    assert not (tmp_path / "new").exists()
    out.mkdir(parents=True)  # a folder that was there before stays
    assert sweep([*TINY, "--executor", "ray", "--address", "nonsense::", "--out", str(out)], tmp_path=tmp_path,
                 timeout=120).returncode == 2
    assert out.is_dir()


def test_the_addresses_ray_resolves_itself_are_left_to_it(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("no connection expected")

    monkeypatch.setattr(sweep_exec.socket, "create_connection", no_network)
    for address in ("auto", "local", "ray://head"):
        assert ray_endpoint(address) is None
        check_reachable(address)
    assert ray_endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert ray_endpoint("ray://head.example:10001") == ("head.example", 10001)
    assert ray_endpoint("[::1]:6379") == ("::1", 6379)


def test_a_silent_address_times_out_with_a_clear_reason(monkeypatch):
    seen = {}

    def silent(endpoint, timeout):
        seen["timeout"] = timeout
        raise TimeoutError("timed out")

    monkeypatch.setattr(sweep_exec.socket, "create_connection", silent)
    with pytest.raises(ConnectionError, match=r"cannot connect to 10\.0\.0\.5:6379 \(timed out\)"):
        check_reachable("ray://10.0.0.5:6379")
    assert seen["timeout"] == sweep_exec.CONNECT_TIMEOUT
    with pytest.raises(ConnectionError, match="not a port number"):
        check_reachable("10.0.0.5:70000")


def test_a_listening_address_passes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_reachable(f"127.0.0.1:{s.getsockname()[1]}")


# --- a partial aggregate compares like for like ------------------------------------------------------


def _synthetic_sweep(finished):
    """Two configurations (float32, float64) x seeds 0-2 x two rows, with records for the cells
    ``finished(cell)`` says; every run's median-last perplexity is 10 + seed (+ 0.1 off the oracle)."""
    from multirnn.sweep_spec import expand

    opts = sweep_cli.parse_options(["--backends", "numpy,tests.zoo:OracleCopy", "--init", "independent",
                                    "--dtype", "float32,float64", "--seeds", "0-2", *TINY])
    confs, groups, cells = expand(opts.dims, opts.fixed, opts.seeds, opts.repeats)
    records = {}
    for c in cells:
        if finished(c):
            ppl = 10.0 + c.group.seed + (0.0 if c.backend == "numpy" else 0.1)
            records[c.id] = {"id": c.id, "status": "ok", "attempts": 1, "run": {"executor": "local", "node": "local"},
                             "result": {"name": c.label, "backend": c.backend, "impl": c.impl, "status": "ok",
                                        "perplexity": [ppl + 1.0, ppl, ppl], "epoch_seconds": [1.0] * 3,
                                        "tokens_per_sec": [1000.0] * 3, "tokens_per_sec_median": 1000.0}}
    return confs, groups, cells, records


def test_a_partial_aggregate_uses_only_the_seeds_every_row_finished(tmp_path):
    from multirnn import sweep_plots, sweep_report

    # float64 stopped early: the oracle finished seeds 0-2, the other row seed 0 only
    confs, groups, cells, records = _synthetic_sweep(
        lambda c: c.group.configuration.index == 0 or c.backend == "numpy" or c.group.seed == 0)
    s = sweep_report.aggregate({}, confs, groups, cells, records, 1, 0.05, {"stopped": "Ctrl-C"})
    stats = {(x["configuration"], x["row"]): x for x in s["statistics"]}
    for row in ("numpy", "tests.zoo:OracleCopy"):  # float64: seed 0 alone, for both rows
        assert stats[(1, row)]["median_last_perplexity"]["n"] == 1 and stats[(1, row)]["statuses"] == {"ok": 1}
        assert stats[(0, row)]["median_last_perplexity"]["n"] == 3  # float32 is complete: all its seeds
    assert stats[(1, "numpy")]["median_last_perplexity"]["mean"] == 10.0  # not the mean of seeds 0-2 (11.0)
    assert {r["configuration"]: r["n"] for r in s["equivalence"]["rows"]} == {0: 3, 1: 1}
    assert {(r["configuration"], r["row"]): r["n"] for r in s["speed"]["rows"]}[(1, "numpy")] == 1
    assert s["partial"]["configurations"] == [{"configuration": 1, "seeds": [0, 1, 2], "complete_seeds": [0],
                                               "finished_not_aggregated": 2}]
    assert sweep_plots._curves(s, records, 1, "numpy").shape[0] == 1
    text = sweep_report.markdown(s, [])
    assert "## Partial aggregate" in text
    assert ("- dtype=float64: partial: seed 0 of 0-2 complete for this configuration; 2 other finished cells "
            "not aggregated") in text
    assert "dtype=float32: partial" not in text
    assert "seed 0 of 0-2 complete" in sweep_cli._summary(s)
    sweep_report.write_all(s, tmp_path, records, cells, groups, 1, make_plots=False)
    assert len(list((tmp_path / "groups").iterdir())) == 4  # compare's reports: the complete groups only

    # the same sweep finished: every seed counts, and nothing says partial
    confs, groups, cells, records = _synthetic_sweep(lambda c: True)
    s = sweep_report.aggregate({}, confs, groups, cells, records, 1, 0.05, {})
    assert "partial" not in s and all(x["median_last_perplexity"]["n"] == 3 for x in s["statistics"])
    assert stats[(0, "numpy")] == s["statistics"][0]
    assert "artial" not in sweep_report.markdown(s, [])


# --- a bad value in a --spec file is named there -----------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ("epochs = 0", "--spec 'sweep.toml': epochs = 0: expected a positive integer"),
    ("batch-size = 0", "--spec 'sweep.toml': batch-size = 0: expected a positive integer"),
    ("hidden = [16, -3]", "--spec 'sweep.toml': hidden = [16, -3]: expected a positive integer, got '-3'"),
    ('dtype = "float16"', "--spec 'sweep.toml': dtype = \"float16\": invalid choice: 'float16' (choose from 'float32', 'float64')"),
    ("jobs = 0", "--spec 'sweep.toml': jobs = 0: expected a positive integer"),
    ('seeds = "4-1"', "--spec 'sweep.toml': seeds = \"4-1\": the range goes down"),
    ("quiet = 3", "--spec 'sweep.toml': quiet = 3: expected true or false"),
    ("epochs = []", "--spec 'sweep.toml': epochs = []: is empty"),
    ('impl = "bogus"', "--spec 'sweep.toml': impl = \"bogus\": expected scratch, layers, all or a comma list of them"),
    ('text = "missing.txt"', "--spec 'sweep.toml': text = \"missing.txt\": no such file"),  # found by compare's plan
    ("overwrite = true", "--spec 'sweep.toml': overwrite is for the command line, one run at a time: remove it from "
                         "the file and add --overwrite to the command"),
    ("resume = true", "--spec 'sweep.toml': resume is for the command line, one run at a time: remove it from "
                      "the file and add --resume to the command"),
])
def test_a_bad_value_in_a_spec_file_is_named_there(tmp_path, monkeypatch, capsys, line, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.toml").write_text(line + "\n")
    err = refused(["--spec", "sweep.toml", "--backends", "numpy", "--out", "out"], capsys)
    assert err.strip() == f"multirnn.sweep: error: {message}", err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_bad_value_on_the_command_line_is_still_the_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.toml").write_text("epochs = 2\njobs = 1\n")
    for args, message in ((["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
                          (["--jobs", "0"], "argument --jobs: expected a positive integer, got '0'")):
        for spec in ([], ["--spec", "sweep.toml"]):  # the command line's value wins over the file's, and its error
            err = refused([*spec, "--backends", "numpy", *args, "--out", "out"], capsys)
            assert err.strip() == f"multirnn.sweep: error: {message}", err
    assert not (tmp_path / "out").exists()


def test_a_foreign_spec_json_is_neither_a_sweep_nor_cleared_by_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.json").write_text('{"name": "my project"}')
    (out / "report.md").write_text("mine")
    before = snapshot(out)
    assert "is not empty and not a sweep folder" in refused([*BASE, "--out", str(out), "--overwrite"], capsys)
    assert snapshot(out) == before


def test_defaults_given_explicitly_make_the_same_cells_and_resume(folder):
    """--dtype float32 --impl scratch are the defaults: the same cells, so the same sweep (not 'other settings')."""
    proc = sweep([*BASE, "--dtype", "float32", "--impl", "scratch", "--out", str(folder), "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert sum(ends(folder).values()) == 2  # nothing ran again


def test_a_sweep_with_nothing_to_compare_is_exit_4_not_agreement(tmp_path):
    # one backend and no oracle: every group is not-judged, as compare's exit 4 (it used to be 1)
    proc = sweep(["--backends", "tests.zoo:OracleCopy", *TINY, "--quiet", "--out", str(tmp_path / "out")])
    assert proc.returncode == 4, proc.stderr
    assert [g["status"] for g in load(tmp_path / "out")["groups"]] == ["not-judged"]


def test_compare_does_not_write_into_a_sweep_folder(folder, capsys):
    """The sweep refuses a compare run's folder; compare --overwrite refuses a sweep's the same way."""
    from multirnn import compare as compare_cli

    before = snapshot(folder)
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert compare_cli.main(["--backends", "numpy", *TINY, "--out", str(folder), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert "holds a sweep" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(folder) == before


def test_a_ray_task_names_openblas_s_core_on_its_own_node(tmp_path, monkeypatch):
    """A cluster started by `ray start` never sees the driver's environment: each task decides for its
    node, before its worker loads NumPy (a hand-started cluster ran the oracle on generic kernels)."""
    import types

    from multirnn import blas
    from multirnn.worker import WorkerTask

    seen = {}

    def fake_worker(task, channel, stall, env):
        seen["core"] = os.environ.get("OPENBLAS_CORETYPE")
        seen["folder"] = Path(task.data_path).parent.name
        return {"status": "ok"}

    fake_ray = types.SimpleNamespace(get_runtime_context=lambda: types.SimpleNamespace(get_node_id=lambda: "node"))
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setattr(sweep_exec, "run_worker", fake_worker)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv(blas.DETECTED_VARIABLE, raising=False)
    monkeypatch.setattr(blas, "_generic_cores", lambda: ("Prescott", "SkylakeX"))
    monkeypatch.setattr(sweep_exec.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(sweep_exec.tempfile, "tempdir", str(tmp_path))
    orphan = tmp_path / f"{sweep_exec.CELL_FOLDER_PREFIX}999999999-x"  # a Ray worker killed with its task
    (orphan / "anchor").mkdir(parents=True)
    task = {f.name: None for f in dataclasses.fields(WorkerTask)}
    outcome, packed = sweep_exec.ray_cell({"task": task, "saves_checkpoints": False, "stall_timeout": 1.0, "env": {}},
                                          b"data", None, None)
    assert seen["core"] == "SkylakeX" and outcome["raw"] == {"status": "ok"} and packed is None
    assert seen["folder"].startswith(f"{sweep_exec.CELL_FOLDER_PREFIX}{os.getpid()}-")
    assert not orphan.exists() and not list(tmp_path.glob(f"{sweep_exec.CELL_FOLDER_PREFIX}*"))  # its own: removed


@pytest.mark.parametrize("jobs, threads, contended", [(1, 1, False), (2, 1, True), (1, 64, True)])
def test_a_cell_is_contended_when_it_shares_the_machine_or_has_more_threads_than_cores(jobs, threads, contended):
    """--jobs 1 --threads 4 on 2 cores printed "timings will be contended" and then recorded "no"."""
    import types

    from multirnn.sweep_engine import Engine

    executor = sweep_exec.LocalExecutor(jobs, threads, 10.0)
    engine = types.SimpleNamespace(executor=executor, records={})
    cell = types.SimpleNamespace(id="c", label="numpy", backend="numpy", impl="scratch", repeat=0, spec={},
                                 group=types.SimpleNamespace(configuration=types.SimpleNamespace(label="x"), seed=0))
    job = types.SimpleNamespace(attempt=1)
    record = Engine._record(engine, cell, job, {"raw": {"status": "ok"}}, None)
    assert record["run"]["contended"] is contended  # 64 threads: more than this machine's cores


def test_init_seeds_crossed_with_shared_init_applies_to_the_framework_configurations(tmp_path, capsys):
    """--init shared,framework --init-seeds 2 was refused whole: compare's refusal of --init-seeds without
    --init framework reached the shared configuration."""
    from tests.conftest import require_backend

    require_backend("torch")  # a layers row to start from its framework's initialisers
    argv = ["--backends", "numpy,torch", "--impl", "layers", *TINY, "--out", str(tmp_path / "s"), "--dry-run"]
    assert sweep_cli.main([*argv, "--init", "shared,framework", "--init-seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 configuration(s)" in out
    assert "--init-seeds applies to the --init framework configurations; --init shared trains one seed per row" in out
    assert "--init-seeds applies to --init framework only" in refused([*argv, "--init", "shared", "--init-seeds", "2"],
                                                                      capsys)


def test_a_groups_machine_is_where_its_rows_ran():
    """On a Ray cluster a group's report gave the sweep driver's machine, not the nodes' its rows ran on."""
    from multirnn.sweep_report import group_machine

    driver = {"platform": "driver-linux", "cpu_count": 2, "python": "3.11", "isa": "avx2"}
    node = {"platform": "node-linux", "cpu_count": 64, "python": "3.11", "isa": "avx512"}
    assert group_machine([{"host": "me"}, {"host": "me"}], driver) == driver  # local: the driver's own
    assert group_machine([{"host": "n1", "machine": node}], driver) == node
    both = group_machine([{"host": "n2"}, {"host": "n1", "machine": node}], driver)
    assert both["platform"] == "node-linux" and both["hosts"] == ["n1", "n2"] and both["described_host"] == "n1"
    # no row brought its machine (cells of an older sweep): the driver's, said so
    assert group_machine([{"host": "n2"}, {"host": "n1"}], driver)["described_host"] is None


def test_a_busy_machine_is_named_beside_the_speeds(finished):
    """The sweep measures other processes' load on its machine (multirnn.load), as compare does."""
    from multirnn import sweep_report

    sweep = load(finished[1])
    assert "other_load_cores" in sweep["run"]  # measured with the local executor (None: too short a session)
    sweep["run"]["other_load_cores"] = 1.3
    text = sweep_report.markdown(sweep, [])
    assert "**Busy machine**: other processes kept 1.3 of the " in text
    sweep["run"]["usable_cores"] = 3  # taskset: the cores the load was measured over, not the machine's
    assert "kept 1.3 of the 3 cores this run could use" in sweep_report.markdown(sweep, [])
    sweep["run"]["other_load_cores"] = 0.1
    assert "Busy machine" not in sweep_report.markdown(sweep, [])


def test_a_spec_lists_items_are_values_even_with_a_comma(tmp_path, monkeypatch, capsys):
    """text = ["a,b.txt"] was joined into the command line's comma list and split again: "'a': no such file"."""
    from multirnn.data import bundled_text_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a,b.txt").write_bytes(bundled_text_path("timemachine").read_bytes())
    (tmp_path / "sweep.toml").write_text('text = ["a,b.txt"]\n')
    assert sweep_cli.main(["--spec", "sweep.toml", "--backends", "numpy", "--epochs", "1", "--hidden", "16",
                           "--max-tokens", "3000", "--out", "out", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "a,b.txt" in out and "no such file" not in out


def test_a_groups_report_names_a_busy_machine_too(tmp_path, monkeypatch):
    """groups/<configuration>-s<seed>/report.md, compare's report of one configuration and seed, showed
    the sweep's tokens/s without the busy-machine note the sweep's own report gave. The session's load
    is set here (a spinner beside a sweep of a second or two measured nothing in a CI run: too short)."""
    import signal as signal_mod

    class Busy:
        def cores(self) -> float:
            return 1.5

    monkeypatch.setattr(sweep_cli, "OtherLoad", Busy)
    handlers = {s: signal_mod.getsignal(s) for s in (signal_mod.SIGTERM, signal_mod.SIGHUP)}
    try:
        assert sweep_cli.main([*BASE, "--out", str(tmp_path / "busy")]) == 0
    finally:
        for s, h in handlers.items():
            signal_mod.signal(s, h)
    assert load(tmp_path / "busy")["run"]["other_load_cores"] == 1.5
    reports = list((tmp_path / "busy" / "groups").glob("*/report.md"))
    assert reports
    for r in reports:
        assert "In this sweep session, other processes kept 1.5 of the" in r.read_text(), r.read_text()[-2000:]
        assert json.loads((r.parent / "results.json").read_text())["options"]["other_load_cores"] == 1.5


@pytest.mark.parametrize("stop, status, said", [(KeyboardInterrupt(), 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM")])
def test_a_stop_while_the_executor_starts_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys, stop,
                                                                          status, said):
    """Ctrl-C while a local Ray instance started (seconds) was a bare KeyboardInterrupt traceback from inside
    Ray, and left the empty --out folder behind."""
    import signal as signal_mod

    from multirnn.runner import Stopped

    exc = Stopped(signal_mod.SIGTERM) if stop == "SIGTERM" else stop

    def starting(opts):
        raise exc

    monkeypatch.setattr(sweep_cli, "_executor", starting)
    handlers = {s: signal_mod.getsignal(s) for s in (signal_mod.SIGTERM, signal_mod.SIGHUP)}
    try:
        code = sweep_cli.main([*BASE, "--out", str(tmp_path / "new" / "sweep")])  # any executor: its start is stopped
    finally:
        for s, h in handlers.items():
            signal_mod.signal(s, h)
    err = capsys.readouterr().err
    assert code == status, err
    assert err.strip() == f"multirnn.sweep: stopped ({said}) before any cell ran: nothing was written", err
    assert not (tmp_path / "new").exists()


def test_a_stop_while_the_executor_closes_still_writes_the_aggregate(tmp_path, monkeypatch, capsys):
    """Ctrl-C while Ray shut down (seconds, after the last cell) was a bare traceback from inside ray.shutdown()
    and no report.md, sweep.json or cells.csv, every cell finished."""
    import os
    import signal as signal_mod

    from multirnn import sweep_exec

    close = sweep_exec.LocalExecutor.close

    def interrupted_close(self):
        os.kill(os.getpid(), signal_mod.SIGINT)  # delivered to the main thread before close returns
        close(self)

    monkeypatch.setattr(sweep_exec.LocalExecutor, "close", interrupted_close)
    handlers = {s: signal_mod.getsignal(s) for s in (signal_mod.SIGINT, signal_mod.SIGTERM, signal_mod.SIGHUP)}
    out = tmp_path / "sweep"
    try:
        code = sweep_cli.main([*BASE, "--out", str(out)])
    finally:
        for s, h in handlers.items():
            signal_mod.signal(s, h)
    err = capsys.readouterr().err
    assert code == 130, err
    assert "every cell had ended and the aggregate is complete" in err, err
    assert all((out / f).is_file() for f in ("report.md", "sweep.json", "cells.csv"))


def _sweep_whose_close_hangs(monkeypatch, out: Path) -> list[int]:
    """Run the sweep with an executor close that hangs after two Ctrl-Cs (a ray.shutdown() that never
    returns); returns the codes os._exit was called with (it raises instead, or pytest would end too)."""
    import os
    import signal as signal_mod
    import threading
    import time

    from multirnn import sweep_exec

    close = sweep_exec.LocalExecutor.close
    released = threading.Event()

    def hanging_close(self):
        os.kill(os.getpid(), signal_mod.SIGINT)
        time.sleep(0.5)  # two signals at once are one (POSIX does not queue them)
        os.kill(os.getpid(), signal_mod.SIGINT)
        released.wait(60)  # a shutdown that does not return while the test looks
        close(self)

    class Left(BaseException):  # not an Exception: nothing on the way out may catch it
        pass

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Left

    monkeypatch.setattr(sweep_exec.LocalExecutor, "close", hanging_close)
    monkeypatch.setattr(os, "_exit", fake_exit)
    handlers = {s: signal_mod.getsignal(s) for s in (signal_mod.SIGINT, signal_mod.SIGTERM, signal_mod.SIGHUP)}
    try:
        with pytest.raises(Left):
            sweep_cli.main([*BASE, "--out", str(out)])
    finally:
        released.set()
        for s, h in handlers.items():
            signal_mod.signal(s, h)
    return exits


def test_a_second_stop_abandons_a_close_that_hangs_and_still_writes_the_aggregate(tmp_path, monkeypatch, capsys):
    """With the signals deferred while the executor closed, a ray.shutdown() that hung could be ended only
    by SIGKILL, and the aggregate was lost. A second signal now stops waiting for it."""
    out = tmp_path / "sweep"
    exits = _sweep_whose_close_hangs(monkeypatch, out)
    err = capsys.readouterr().err
    assert exits == [130], err
    assert "a second signal stops waiting" in err and "no longer waiting for the executor" in err, err
    assert all((out / f).is_file() for f in ("report.md", "sweep.json", "cells.csv"))


def test_a_failure_after_an_abandoned_close_still_leaves(tmp_path, monkeypatch, capsys):
    """An exception once the close was given up on (a full disk while the aggregate was written) ended
    the interpreter normally, and Ray's exit hook waited for the same hung shutdown: only SIGKILL ended it."""
    from multirnn import sweep_report

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep_report, "aggregate", full_disk)
    exits = _sweep_whose_close_hangs(monkeypatch, tmp_path / "sweep")
    err = capsys.readouterr().err
    assert exits == [1], err
    assert "No space left on device" in err, err


def test_a_close_that_raises_is_said_in_one_line():
    from multirnn import sweep_exec

    class Broken:
        def close(self):
            raise RuntimeError("raylet gone")

    said: list[str] = []
    assert sweep_exec.close_executor(Broken(), [], said.append) is True
    assert said == ["the executor did not close cleanly (RuntimeError: raylet gone); every cell had ended"]
