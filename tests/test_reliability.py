"""Faults and odd input: divergence, signals, hung workers, existing output folders, file modes,
text encodings and API misuse. Every run goes through the command line in a subprocess, as a user's."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import multirnn
from multirnn import compare as compare_cli
from tests.conftest import require_backend

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "3", "--hidden", "16", "--max-tokens", "3000", "--batch-size", "8", "--num-steps", "10"]
COPY = "tests.zoo:OracleCopy"


def compare(args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "multirnn.compare", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **kw)


def start(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "multirnn.compare", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **kw)


def strict_json(path: Path) -> dict:
    def refuse(token):
        raise AssertionError(f"{path} contains {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (the run's output folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if text in cmd and "zombie" not in state:
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout=60.0, every=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


# --- divergence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("other", [COPY, "torch"])
def test_divergence_is_a_result_not_a_crash(tmp_path, other):
    if other == "torch":
        require_backend("torch")
    out = tmp_path / "run"
    proc = compare(["--backends", f"numpy,{other}", "--epochs", "3", "--hidden", "32", "--lr", "1e6", "--clip", "1e300",
                    "--out", str(out), "--quiet"])
    assert proc.returncode not in (2, 3), proc.stderr
    res = strict_json(out / "results.json")  # no NaN or Infinity anywhere
    for b in res["backends"]:
        assert b["status"] == "diverged", b["error"]
        assert b["diverged_epoch"] >= 1 and b["diverged_step"] >= 1 and "diverged" in b["error"]
    assert "OverflowError" not in proc.stdout + proc.stderr
    # both blew up the same way: the verdict can still judge them, and the report names the divergence
    assert "diverged" in proc.stdout


def test_perplexity_overflow_is_inf_in_memory_and_null_in_json(tmp_path):
    from multirnn.harness import safe_perplexity

    assert safe_perplexity(800.0) == float("inf") and safe_perplexity(1.0) == pytest.approx(np.e)
    from multirnn.files import write_json_atomic

    write_json_atomic(tmp_path / "x.json", {"ppl": [1.0, float("inf"), float("nan")]})
    assert strict_json(tmp_path / "x.json") == {"ppl": [1.0, None, None]}


# --- signals and hung workers ----------------------------------------------------------------------


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_a_signal_writes_a_partial_report_and_ends_every_process(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = start(["--backends", "numpy", "--epochs", "100000", "--hidden", "16", "--max-tokens", "3000",
                  "--batch-size", "8", "--num-steps", "10", "--out", str(out)])
    task = str(out / "backends" / "numpy.task.json")
    assert wait_for(lambda: processes_mentioning(task) != [], 120), "the worker never started"
    time.sleep(3)  # training (100,000 epochs take far longer)
    assert proc.poll() is None
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"--out {out} --resume" in stdout  # how to continue it
    res = strict_json(out / "results.json")
    assert res["verdict"]["status"] == "interrupted"
    assert (out / "report.md").exists() and "Traceback" not in err
    # no work file of the stopped worker is left, nor a log of nothing (README: deleted when empty)
    left = sorted(p.name for p in (out / "backends").iterdir())
    assert "numpy.task.json" not in left and all((out / "backends" / n).stat().st_size for n in left if n.endswith(".log")), left
    time.sleep(5)
    assert processes_mentioning(str(out)) == [], "a process of the run outlived it"


def test_a_stopped_run_lists_the_rows_that_never_started(tmp_path):
    """The partial report named only rows that had started: one stopped during the oracle left the
    others out of the table and the verdict, and "no backend could run (see the problems below)" had
    nothing below it; the Report line also named plots that were not written."""
    out = tmp_path / "run"
    proc = start(["--backends", f"numpy,{COPY}", "--epochs", "100000", "--hidden", "16", "--max-tokens", "3000",
                  "--batch-size", "8", "--num-steps", "10", "--out", str(out), "--quiet", "--no-plot"])
    assert wait_for(lambda: processes_mentioning(str(out / "backends" / "numpy.task.json")) != [], 120)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = {r["name"]: r for r in strict_json(out / "results.json")["backends"]}
    assert rows[COPY]["status"] == "interrupted" and rows[COPY]["error"] == "stopped (Ctrl-C) before it started"
    assert rows["numpy"]["error"] == "interrupted (Ctrl-C) before it finished"
    assert "no backend finished before the run was stopped" in stdout and f"{COPY}: stopped (Ctrl-C) before" in stdout
    assert "(results.json, curves.csv)" in stdout  # --no-plot: no plot named


def test_sigkill_of_the_parent_ends_the_worker(tmp_path):
    out = tmp_path / "run"
    proc = start(["--backends", "numpy", "--epochs", "100000", "--hidden", "64", "--out", str(out), "--quiet"])
    assert wait_for(lambda: processes_mentioning(str(out / "backends" / "numpy.task.json")) != [], 60), "no worker"
    time.sleep(2)
    proc.kill()
    proc.wait(30)
    assert wait_for(lambda: processes_mentioning(str(out)) == [], 10), processes_mentioning(str(out))
    # the run folder is usable: a later --resume can continue it
    assert (out / ".work" / "data.npz").exists()


def test_a_hung_worker_is_ended_after_the_stall_timeout(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = compare(["--backends", "numpy,tests.fakes:HangingBackend", *TINY, "--stall-timeout", "3", "--out", str(out),
                    "--quiet", "--no-plot"], timeout=120)
    assert proc.returncode == 1, proc.stderr
    rows = {b["name"]: b for b in strict_json(out / "results.json")["backends"]}
    hung = rows["tests.fakes:HangingBackend"]
    assert hung["status"] == "crashed" and "hung: no progress for 3 s" in hung["error"]
    assert rows["numpy"]["status"] == "ok"
    assert time.monotonic() - t0 < 90
    assert processes_mentioning(str(out)) == []


# --- rows side by side (--jobs) ---------------------------------------------------------------------


def test_jobs_runs_rows_side_by_side_each_with_its_share_of_the_cores(tmp_path):
    meet, out = tmp_path / "meet", tmp_path / "run"
    meet.mkdir()
    rows = ["numpy", "tests.fakes:RendezvousBackend", "tests.fakes:RendezvousBackend2"]
    proc = compare(["--backends", ",".join(rows), *TINY, "--jobs", "2", "--out", str(out), "--quiet", "--no-plot"],
                   env={**os.environ, "MULTIRNN_TEST_RENDEZVOUS": str(meet)})
    assert proc.returncode == 0, proc.stderr
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for cls in ("RendezvousBackend", "RendezvousBackend2"):  # each waited for the other: they ran at once
        assert json.loads((meet / f"{cls}.json").read_text()) == {"met": True, "omp": share}
    res = strict_json(out / "results.json")
    assert [b["name"] for b in res["backends"]] == rows  # the command's order, not the order they finished in
    assert res["options"]["jobs"] == 2 and res["options"]["threads"] == int(share)
    for b in res["backends"][1:]:  # re-anchored on the oracle
        assert b["judgement"]["status"] == "agrees" and b["judgement"]["checkpoints_checked"] >= 2
    assert "--jobs 2" in proc.stdout and "--jobs 2" in (out / "report.md").read_text()


def test_jobs_trains_the_oracle_beside_rows_that_wait_for_its_checkpoints(tmp_path):
    meet, out = tmp_path / "meet", tmp_path / "run"
    meet.mkdir()
    proc = compare(["--backends", "numpy,tests.fakes:OracleWatcher", "--epochs", "150", "--hidden", "64", "--max-tokens",
                    "3000", "--batch-size", "8", "--num-steps", "10", "--jobs", "2", "--out", str(out), "--no-plot"],
                   env={**os.environ, "MULTIRNN_TEST_RENDEZVOUS": str(meet)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((meet / "OracleWatcher.json").read_text()) == {"oracle_running": True}  # side by side
    row = strict_json(out / "results.json")["backends"][1]
    assert row["judgement"]["status"] == "agrees" and row["judgement"]["checkpoints_checked"] >= 5  # re-anchored on it
    assert "the oracle beside them" in proc.stdout and not (out / ".work").exists()


def test_a_signal_during_jobs_ends_every_worker_and_marks_the_started_rows(tmp_path):
    out = tmp_path / "run"
    proc = start(["--backends", f"numpy,{COPY},tests.zoo:OracleCopy2", "--epochs", "100000", "--hidden", "16",
                  "--max-tokens", "3000", "--batch-size", "8", "--num-steps", "10", "--lockstep", "off",
                  "--jobs", "2", "--out", str(out)])
    assert wait_for(lambda: len(processes_mentioning(str(out / "backends"))) == 2, 120), "two workers never ran"
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    res = strict_json(out / "results.json")
    assert res["verdict"]["status"] == "interrupted" and "Traceback" not in err
    rows = {b["name"]: b for b in res["backends"]}
    assert all(rows[n]["status"] == "interrupted" and "interrupted (SIGTERM)" in rows[n]["error"] for n in ("numpy", COPY))
    # the third never started: listed as such, so the partial report names every row asked for
    assert rows["tests.zoo:OracleCopy2"]["error"] == "stopped (SIGTERM) before it started"
    assert "crashed" not in res["verdict"]["summary"]
    time.sleep(5)
    assert processes_mentioning(str(out)) == [], "a process of the run outlived it"


# --- output folders and files ----------------------------------------------------------------------


def test_an_existing_output_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    assert compare(["--backends", f"numpy,{COPY}", *TINY, "--out", str(out), "--quiet", "--no-plot"]).returncode == 0
    (out / "backends" / "torch.json").write_text('{"name": "torch", "status": "ok"}')  # an earlier, different run's row
    (out / "my notes.txt").write_text("mine")
    (out / "backends" / "mine" / "deep").mkdir(parents=True)  # the user's own files inside the run's folders
    (out / "backends" / "mine" / "deep" / "keep.txt").write_text("mine")
    (out / "backends" / "README.txt").write_text("mine")
    (out / "backends" / "notes.md").write_text("mine")  # suffixes multirnn also writes: kept by what they are
    (out / "backends" / "analysis.json").write_text('{"mine": true}')
    (out / "backends" / "mine" / "data.npy").write_bytes(b"mine")
    # multirnn's own names, one folder down: a saved copy of a row (and its log), the user's report
    (out / "backends" / "old").mkdir()
    (out / "backends" / "old" / "torch-before-fix.json").write_text('{"name": "torch", "status": "ok"}')
    (out / "backends" / "old" / "torch-before-fix.log").write_text("mine")
    (out / "backends" / "mine" / "report.md").write_text("mine")
    (out / "checkpoints" / "mine").mkdir(parents=True)
    (out / "checkpoints" / "mine" / "notes.txt").write_text("mine")
    (out / "backends" / "old" / ".draft.tmp").write_text("mine")  # a temporary's suffix, not one of multirnn's
    import tarfile

    with tarfile.open(out / "checkpoints" / "mine.tar", "w") as tar:  # a tar of checkpoints, under the user's name
        (tmp_path / "epoch-00001.npz").write_bytes(b"x")
        tar.add(tmp_path / "epoch-00001.npz", arcname="epoch-00001.npz")
    proc = compare(["--backends", "numpy", *TINY, "--out", str(out), "--quiet"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--overwrite" in proc.stderr
    proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--out", str(out), "--quiet", "--no-plot", "--overwrite"])
    assert proc.returncode == 0, proc.stderr
    assert not (out / "backends" / "torch.json").exists()  # cleared: it belonged to the earlier run
    assert (out / "my notes.txt").read_text() == "mine"  # not a run file: untouched
    assert (out / "backends" / "README.txt").read_text() == "mine"
    assert (out / "backends" / "mine" / "deep" / "keep.txt").read_text() == "mine"
    for mine in ("notes.md", "analysis.json", "mine/data.npy", "old/torch-before-fix.json", "old/torch-before-fix.log",
                 "mine/report.md"):
        assert (out / "backends" / mine).is_file(), mine
    assert (out / "checkpoints" / "mine" / "notes.txt").is_file() and (out / "checkpoints" / "mine.tar").is_file()
    assert (out / "backends" / "old" / ".draft.tmp").is_file()


def test_a_signal_while_the_report_is_written_still_ends_the_run_with_its_status(tmp_path, monkeypatch, capsys):
    """SIGTERM (a scheduler's) or Ctrl-C after the last row, while the report and plots were written, was
    ignored: exit 0, as if nobody had asked the run to stop."""
    from multirnn import report

    write_all = report.write_all

    def interrupted_write_all(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return write_all(*args, **kwargs)

    monkeypatch.setattr(report, "write_all", interrupted_write_all)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    out = tmp_path / "run"
    try:
        code = compare_cli.main(["--backends", "numpy", *TINY, "--out", str(out), "--quiet", "--no-plot"])
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert code == 143, capsys.readouterr().err
    assert "stopped by SIGTERM while the report was written" in capsys.readouterr().err
    assert strict_json(out / "results.json")["verdict"]["status"] == "not-judged"  # the report is whole


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    """Two runs shared --out: the second one's --overwrite deleted the first one's checkpoints mid-run, and the
    first then judged its rows without them ("agrees", exit 0); a --resume beside it ended in "DISAGREES"."""
    out = tmp_path / "run"
    # a row that stops making progress keeps the first run going for as long as this test needs
    first = start(["--backends", "numpy,tests.fakes:HangingBackend", *TINY, "--stall-timeout", "600", "--out", str(out),
                   "--quiet", "--no-plot"])
    try:
        deadline = time.monotonic() + 120
        while not ((out / ".lock").is_file() and (out / ".lock").read_text() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        (out / "results.json").write_text("{}")  # as if its first rows were in: --resume reads it, held first
        for again in (["--overwrite"], ["--resume"], []):
            proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--out", str(out), "--quiet", "--no-plot", *again])
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (again, proc.stderr)
            assert f"another run is using --out {str(out)!r} (pid {first.pid})" in proc.stderr, proc.stderr
        assert first.poll() is None and (out / ".work" / "data.npz").is_file()  # the first run's scratch untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    # once it has ended the folder is free again
    proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--out", str(out), "--quiet", "--no-plot", "--overwrite"])
    assert proc.returncode == 0, proc.stderr


def test_a_folder_a_run_left_at_its_start_takes_the_same_command_again(tmp_path):
    """Stopped right after it made its folder, a run left only .work and an empty backends/; the same command was
    then refused as "not empty" (and --resume: no results.json), and only --overwrite got out of it."""
    out = tmp_path / "run"
    (out / "backends").mkdir(parents=True)
    (out / ".work" / "checkpoints" / "numpy").mkdir(parents=True)
    (out / ".work" / "checkpoints" / "numpy" / "epoch-00002.npz").write_bytes(b"stale")  # never read by the new run
    (out / ".lock").write_text("12345")
    proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--out", str(out), "--quiet", "--no-plot"])
    assert proc.returncode == 0, proc.stderr
    assert strict_json(out / "results.json")["verdict"]["status"] == "agree"


def test_overwrite_refuses_a_folder_named_like_a_run_file_before_removing_anything(tmp_path):
    out = tmp_path / "run"
    assert compare(["--backends", "numpy", *TINY, "--out", str(out), "--quiet", "--no-plot"]).returncode == 4
    (out / "report.md").unlink()
    (out / "report.md" / "sub").mkdir(parents=True)  # the user's folder
    proc = compare(["--backends", "numpy", *TINY, "--out", str(out), "--quiet", "--no-plot", "--overwrite"])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr  # was an IsADirectoryError traceback
    assert "is a folder, not the report.md of a run" in proc.stderr
    assert (out / "results.json").is_file() and (out / "report.md" / "sub").is_dir()


def test_resume_of_a_results_json_that_is_not_a_runs_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("[]")  # valid JSON, not an object: an AttributeError traceback before
    proc = compare(["--backends", "numpy", *TINY, "--out", str(out), "--quiet", "--no-plot", "--resume"])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is not the results.json of a compare run" in proc.stderr


def test_default_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = compare_cli._prepare_out_dir(None, False, False)
    b = compare_cli._prepare_out_dir(None, False, False)
    assert a != b and a.parent == b.parent == Path("runs")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_result_files_follow_the_umask(tmp_path, umask, mode):
    out = tmp_path / "run"
    code = (f"import os, sys; os.umask({umask}); from multirnn.compare import main; "
            f"sys.exit(main({['--backends', 'numpy', *TINY, '--out', str(out), '--quiet']!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 4, proc.stderr  # numpy alone: nothing to compare
    for name in ("results.json", "report.md", "curves.csv", "perplexity.png", "backends/numpy.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name


def test_resume_keeps_finished_backends(tmp_path):
    out = tmp_path / "run"
    args = ["--backends", f"numpy,{COPY},tests.fakes:SlowBackend", "--epochs", "40", "--hidden", "16",
            "--max-tokens", "3000", "--batch-size", "8", "--num-steps", "10", "--out", str(out), "--quiet", "--no-plot"]
    proc = start(args)
    assert wait_for(lambda: (out / "backends" / "tests_zoo_OracleCopy.json").exists()
                    and len(strict_json(out / "results.json")["backends"]) == 2, 120)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    numpy_mtime = (out / "backends" / "numpy.json").stat().st_mtime_ns
    done = compare([*args[:1], f"numpy,{COPY},tests.zoo:OracleCopy2", *args[2:], "--resume"])
    assert done.returncode == 0, done.stderr
    rows = {b["name"]: b for b in strict_json(out / "results.json")["backends"]}
    assert (out / "backends" / "numpy.json").stat().st_mtime_ns == numpy_mtime  # not run again
    assert rows["tests.zoo:OracleCopy2"]["judgement"]["checkpoints_checked"] >= 2  # anchored on the kept checkpoints
    assert not (out / ".work").exists()
    # resuming the finished run trains nothing again, the oracle included (its checkpoints are gone)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "backends").glob("*.json")}
    again = compare([*args[:1], f"numpy,{COPY},tests.zoo:OracleCopy2", *args[2:], "--resume"])
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "backends").glob("*.json")} == mtimes
    # leaving out a finished row would drop it from results.json while its files stay: refused
    fewer = compare([*args[:1], "numpy,tests.zoo:OracleCopy2", *args[2:], "--resume"])
    assert fewer.returncode == 2 and f"also has {COPY}, which this command leaves out" in fewer.stderr, fewer.stderr
    assert len(strict_json(out / "results.json")["backends"]) == 3
    other = compare([*args[:1], "numpy", *args[2:6], "--hidden", "32", *args[8:], "--resume"])
    want = ("used other settings (--max-tokens 3000 (now 10000); --hidden 16 (now 32); "
            "--lockstep (checkpoint epochs) [1, 3, ..., 40] (21) (now [1, 2, ..., 40] (40)))")  # long lists by their ends
    assert other.returncode == 2 and want in other.stderr, other.stderr


def test_rows_kept_by_a_resume_keep_the_sharing_they_were_timed_under(tmp_path):
    """Resuming a --jobs 2 run without --jobs dropped the note that its rows' tokens/s were measured two
    at a time, though every kept row still carried those figures."""
    out = tmp_path / "run"
    args = ["--backends", f"numpy,{COPY}", "--epochs", "2", "--hidden", "8", "--max-tokens", "600", "--batch-size",
            "4", "--num-steps", "5", "--no-plot", "--quiet", "--out", str(out)]
    first = compare([*args, "--jobs", "2"])
    assert first.returncode == 0, first.stderr
    assert {r["rows_at_a_time"] for r in strict_json(out / "results.json")["backends"]} == {2}
    for _ in range(2):  # and again: the second resume's earlier run ran one row at a time
        again = compare([*args, "--resume"])
        assert again.returncode == 0, again.stderr
        res = strict_json(out / "results.json")
        assert {r["rows_at_a_time"] for r in res["backends"]} == {2} and res["options"]["jobs"] == 1
        note = (f"numpy, {COPY} were kept from an earlier run that ran up to 2 rows at a time: their tokens/s and "
                "peak memory were measured under that sharing")
        assert note in res["options"]["run_notes"] and note in again.stdout, again.stdout


def test_rows_kept_by_a_resume_say_the_earlier_session_was_busy(tmp_path):
    """A resumed run measures other processes' load over its own session only: rows kept from a busy
    earlier session showed their low tokens/s with nothing to say so."""
    import json

    out = tmp_path / "run"
    args = ["--backends", f"numpy,{COPY}", "--epochs", "2", "--hidden", "8", "--max-tokens", "600", "--batch-size",
            "4", "--num-steps", "5", "--no-plot", "--quiet", "--out", str(out)]
    assert compare(args).returncode == 0
    note = f"numpy, {COPY} were kept from an earlier session during which other processes kept 1.4 cores busy"
    for then, said in ((1.4, True), (0.1, False)):  # as the earlier session measured it
        res = json.loads((out / "results.json").read_text())
        res["options"]["other_load_cores"] = then
        (out / "results.json").write_text(json.dumps(res))
        again = compare([*args, "--resume"])
        assert again.returncode == 0, again.stderr
        notes = strict_json(out / "results.json")["options"]["run_notes"]
        assert any(n.startswith(note) for n in notes) is said, notes
        assert (note in again.stdout) is said, again.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_workers_peak_memory_is_its_own_not_its_parents():
    """ru_maxrss keeps the pre-exec high-water mark (the forked copy of the parent): every row showed at
    least compare's memory, 229 MB for NumPy once the parent had imported torch, against 45 MB."""
    held = bytearray(300 * 1024 * 1024)
    held[::4096] = b"\1" * len(held[::4096])  # touched: resident in this process
    code = "from multirnn.worker import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert child.returncode == 0, child.stderr
    assert float(child.stdout) < 200, child.stdout  # a Python with NumPy: tens of MB, not this process's 300+
    del held


# --- text input ---------------------------------------------------------------------------------------


def _book(tmp_path: Path, encoding: str, text: str | None = None, bom: bytes = b"") -> Path:
    text = text if text is not None else multirnn.bundled_text_path("timemachine").read_text()[:30000]
    path = tmp_path / f"book-{encoding}.txt"
    path.write_bytes(bom + text.encode(encoding))
    return path


def test_utf16_and_utf32_with_a_bom_read_like_utf8(tmp_path):
    want, vocab = multirnn.load_corpus(_book(tmp_path, "utf-8"))
    for enc, bom in (("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\x00\x00"),
                     ("utf-8", b"\xef\xbb\xbf")):
        got, got_vocab = multirnn.load_corpus(_book(tmp_path, enc, bom=bom))
        np.testing.assert_array_equal(got, want)
        assert got_vocab.idx_to_token == vocab.idx_to_token


@pytest.mark.parametrize("make, message", [
    (lambda p: Path("/bin/ls"), "looks binary"),
    (lambda p: _book(p, "latin-1", "caf\xe9 " * 3000), "not valid UTF-8 text (byte 0xe9 at offset 3)"),
    (lambda p: _book(p, "utf-16-le"), "looks binary"),  # UTF-16 without a BOM: not guessed
    (lambda p: p, "is a directory"),
])
def test_undecodable_or_binary_text_is_exit_2(tmp_path, make, message):
    proc = compare(["--text", str(make(tmp_path)), "--out", str(tmp_path / "never")])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "never").exists()


@pytest.mark.parametrize("make, encoding, message", [
    # a byte-order mark wins over --encoding (it trained on NUL-spaced letters, 30,759 tokens for 18,766)
    (lambda p: _book(p, "utf-16-le", bom=b"\xff\xfe"), "latin-1", None),
    (lambda p: _book(p, "utf-16-le"), "utf8", "looks binary (it contains NUL bytes)"),  # every spelling of UTF-8
    (lambda p: Path("/bin/ls"), "latin-1", "looks binary"),  # any single-byte encoding decodes any bytes
    (lambda p: _book(p, "utf-8"), "rot13", "'rot13' is not a text encoding"),  # was a LookupError traceback
    (lambda p: _book(p, "utf-8"), "utf-16", "read as --encoding utf-16: is that its encoding?"),
])
def test_an_encoding_never_turns_binary_or_another_encoding_into_text(tmp_path, make, encoding, message):
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy", *TINY, "--text", str(make(tmp_path)), "--encoding", encoding, "--out", str(out),
                    "--quiet", "--no-plot"])
    if message is None:  # read by its mark: the same tokens as the UTF-8 file
        assert proc.returncode == 4, proc.stderr
        want = len(multirnn.load_corpus(_book(tmp_path, "utf-8"))[0])
        assert strict_json(out / "results.json")["options"]["tokens"]["total"] == want
    else:
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_an_encoding_can_be_named_and_dropped_letters_are_counted(tmp_path):
    text = ("the caf\xe9 na\xefve r\xe9sum\xe9 of a time traveller " * 800)
    book = _book(tmp_path, "latin-1", text)
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy", *TINY, "--text", str(book), "--encoding", "latin-1", "--out", str(out), "--quiet"])
    assert proc.returncode == 4, proc.stderr
    assert "letters outside A-Z" in proc.stdout and "became spaces" in proc.stdout


def test_eval_text_outside_the_vocabulary_is_flagged(tmp_path):
    train = _book(tmp_path, "utf-8", "abcab abcba cabba " * 600)  # a vocabulary of a, b, c and space
    other = _book(tmp_path, "utf-16", "xyz zyx " * 600 + "abc " * 10)
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy", *TINY, "--text", str(train), "--eval-text", str(other), "--out", str(out),
                    "--quiet", "--prefix", "ab"])
    assert proc.returncode == 4, proc.stderr
    assert "are not in the training vocabulary" in proc.stdout
    res = strict_json(out / "results.json")
    assert res["backends"][0]["eval_perplexity"] is not None


def test_eval_text_letters_dropped_by_preprocessing_are_noted_as_for_the_training_text(tmp_path):
    other = tmp_path / "greek.txt"
    other.write_text("καλημέρα κόσμε hello world " * 400, encoding="utf-8")
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy", *TINY, "--eval-text", str(other), "--out", str(out), "--quiet"])
    assert proc.returncode == 4, proc.stderr
    assert "Note: --eval-text: 5,200 letters outside A-Z (56.5% of all letters" in proc.stdout, proc.stdout
    assert any(n.startswith("--eval-text: 5,200 letters") for n in strict_json(out / "results.json")["options"]["data_notes"])


def test_default_prompts_that_do_not_fit_the_text_are_replaced_with_a_note(tmp_path):
    book = tmp_path / "abc.txt"
    book.write_text("abc abd bad cab dab " * 400)
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy", *TINY, "--text", str(book), "--out", str(out), "--quiet", "--no-plot"])
    assert proc.returncode == 4, proc.stderr
    note = ("the default prompts 'time traveller', 'traveller' use letters this text does not have: the continuations "
            "start from 'a' (give your own with --prefix)")
    assert note in strict_json(out / "results.json")["options"]["data_notes"] and note in proc.stdout


# --- API misuse ----------------------------------------------------------------------------------------


def test_api_misuse_is_explained(oracle):
    with pytest.raises(TypeError, match=r"config must be a TrainConfig .* Use multirnn.preset\('quick'\)"):
        multirnn.train(oracle, "quick")
    with pytest.raises(TypeError, match="backend must be a multirnn Backend"):
        multirnn.train("numpy", multirnn.preset("quick"))
    assert multirnn.preset("quick", num_epochs=np.int64(2)).num_epochs == 2
    assert type(multirnn.preset("quick", lr=np.float32(0.5)).lr) is float
    with pytest.raises(ValueError, match="at most 1,000,000"):
        multirnn.preset("quick", num_epochs=10**20)
    params = multirnn.init_params(28, 8)
    with pytest.raises(ValueError, match=r"missing \['b_q'\]"):
        oracle.params_from_numpy({k: v for k, v in params.items() if k != "b_q"})
    with pytest.raises(ValueError, match=r"W_hh: \(8, 9\) \(expected \(8, 8\)\)"):
        oracle.params_from_numpy({**params, "W_hh": np.zeros((8, 9), np.float32)})
    with pytest.raises(ValueError, match="same dtype"):
        oracle.params_from_numpy({**params, "b_h": np.zeros(8)})
    config = multirnn.preset("quick", num_hiddens=16, num_epochs=1)
    with pytest.raises(ValueError, match="num_hiddens=8, but .* config.num_hiddens is 16"):
        multirnn.train(oracle, config, params=params)
    with pytest.raises(ValueError, match="prepared for another configuration"):
        multirnn.train(oracle, config, multirnn.prepare_data(config.replace(batch_size=16)))


def test_absurd_epochs_are_refused_with_the_limit(tmp_path):
    proc = compare(["--epochs", str(10**20), "--out", str(tmp_path / "never")])
    assert proc.returncode == 2 and "at most 1,000,000" in proc.stderr


def test_weights_that_overflowed_after_a_finite_loss_do_not_turn_a_trained_row_into_a_crash(tmp_path):
    """predict refuses NaN weights; the worker called it after a run whose last update overflowed, and the
    whole trained row was recorded as crashed."""
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy,tests.fakes:WeightsOverflowLossFinite", *TINY, "--lockstep", "off",
                    "--eval-text", "war_of_the_worlds", "--no-plot", "--quiet", "--out", str(out)])
    row = next(b for b in strict_json(out / "results.json")["backends"] if b["name"] != "numpy")
    assert row["status"] == "ok", (row["status"], row.get("error"), proc.stderr)
    assert row["error"].startswith("the weights after the last update hold NaN or infinite values (")
    assert "no samples or evaluation perplexity" in row["error"] and row["samples"] == {}
    assert "the weights after the last update hold NaN" in (out / "report.md").read_text()


def test_a_row_that_crashed_mid_run_keeps_its_curve_up_to_the_crash(tmp_path):
    """Its epochs before the crash were lost (perplexity []): the plots and curves.csv left the row out."""
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy,tests.fakes:CrashesInTheThirdEpoch", *TINY, "--lockstep", "off", "--no-plot",
                    "--out", str(out)])
    assert proc.returncode == 1, proc.stderr
    row = next(b for b in strict_json(out / "results.json")["backends"] if b["name"] != "numpy")
    assert row["status"] == "crashed" and "boom in the third epoch" in row["error"]
    assert len(row["perplexity"]) == 2 and row["steps_per_epoch"] == [37, 37], row
    crashed_rows = [ln for ln in (out / "curves.csv").read_text().splitlines() if ln.startswith("tests.fakes:Crashes")]
    assert len(crashed_rows) == 2


def test_a_damaged_checkpoint_names_its_file_and_the_way_out(tmp_path):
    """A checkpoint overwritten by garbage made the re-anchoring row crash with only NumPy's "Cannot load file
    containing pickled data when allow_pickle=False", naming neither the file nor --overwrite."""
    from multirnn.lockstep import CheckpointError, load_checkpoint

    for content in (b"garbage\n", b""):
        path = tmp_path / "epoch-00011.npz"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=r"the anchor's checkpoint '.*epoch-00011.npz' cannot be read .*"
                                                  r"start the run again from scratch \(compare: --overwrite\)"):
            load_checkpoint(path)


def test_a_row_without_a_record_still_names_its_frameworks_version():
    """A crashed, hung or interrupted row's version column read "-"."""
    from multirnn.info import installed_version
    from multirnn.runner import crashed_record, interrupted_record

    assert installed_version("numpy") is not None
    assert crashed_record("numpy", "numpy", "scratch", "x")["framework_version"] == installed_version("numpy")
    assert interrupted_record("numpy", "numpy", "scratch", "Ctrl-C")["framework_version"] == installed_version("numpy")
    assert crashed_record("tests.fakes:HangingBackend", "tests.fakes:HangingBackend", "scratch", "x")[
        "framework_version"] is None


def test_anchor_checkpoints_removed_under_a_run_crash_its_row_instead_of_passing_on_its_free_run(tmp_path):
    """A second run's --overwrite deleted the first one's checkpoints mid-run: the first run's rows then had no
    re-anchored checks and were judged on their free run alone ("agrees", exit 0)."""
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy,tests.fakes:RemovesTheAnchorsCheckpoints", *TINY, "--out", str(out), "--quiet",
                    "--no-plot"])
    assert proc.returncode == 1, proc.stderr
    row = next(b for b in strict_json(out / "results.json")["backends"] if b["name"] != "numpy")
    assert row["status"] == "crashed" and "the anchor's checkpoints in" in row["error"] and "are gone" in row["error"]


def test_a_refused_run_leaves_no_lock_file_in_a_folder_it_did_not_write(tmp_path):
    """Held before its refusals, a refused run left its .lock in the user's folder."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = compare(["--backends", "numpy", *TINY, "--out", str(out), "--quiet"])
    assert proc.returncode == 2 and "is not empty (notes.txt)" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    proc = compare(["--backends", "numpy", *TINY, "--out", str(tmp_path / "none"), "--quiet", "--resume"])
    assert proc.returncode == 2 and not (tmp_path / "none").exists()


def test_a_file_system_that_cannot_lock_runs_unguarded(tmp_path, monkeypatch):
    """Any flock error read as "another run is using --out": where a file system cannot lock (ENOLCK on some
    network file systems) every run would have been refused."""
    import errno
    import fcntl

    from multirnn import files

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert files.hold_folder(tmp_path) is True and tmp_path.resolve() not in files.held_folders()  # runs, unguarded

    def held(fd, op):
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(fcntl, "flock", held)
    assert files.hold_folder(tmp_path) is False
