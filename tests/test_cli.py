"""What a user sees: progress lines, discoverability (--version, --list-backends, --help), every
result on screen, custom prompts, and the notes that keep a short run from looking broken."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import multirnn
from multirnn import progress as prog
from tests.fakes import not_installed

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "3", "--hidden", "16", "--max-tokens", "3000", "--batch-size", "8", "--num-steps", "10"]
COPY = "tests.zoo:OracleCopy"
MISSING_TENSORFLOW = not_installed("tensorflow")


def compare(args, env_extra=None, timeout=300):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "multirnn.compare", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_progress_lines_without_a_terminal_are_plain_and_time_stamped(tmp_path):
    proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--out", str(tmp_path / "run"), "--no-plot"])
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "\r" not in err and "\x1b[" not in err  # no cursor codes in a log
    lines = [ln for ln in err.splitlines() if ln.startswith("[")]
    assert all(re.match(r"^\[\s*\d+:\d\d\] \S+", ln) for ln in lines), lines
    for stage in ("starting the worker", "importing the framework", "epoch 3/3", "re-anchored checks"):
        assert any(stage in ln for ln in lines), (stage, lines)
    assert any("overall 100%" in ln for ln in lines)
    assert "the first 3,000 of 170,580 tokens" in err  # what was actually used


def test_quiet_prints_no_progress(tmp_path):
    proc = compare(["--backends", "numpy", *TINY, "--out", str(tmp_path / "run"), "--quiet", "--no-plot"])
    assert proc.returncode == 4 and proc.stderr == ""
    assert "Config: d2l-ed1, rnn, 3 epochs" in proc.stdout  # the model is named where --quiet leaves it


def test_quiet_still_prints_the_notes_and_the_config_names_the_model(tmp_path):
    proc = compare(["--backends", "numpy", "--impl", "layers", "--cell", "lstm", "--num-layers", "2", *TINY,
                    "--out", str(tmp_path / "run"), "--quiet", "--no-plot"])
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.splitlines() == ["note: numpy has no 'layers' row: it is the oracle, written from scratch, "
                                        "and the reference of every row"]
    assert "Config: d2l-ed1, lstm x2, 3 epochs" in proc.stdout


def test_live_display_on_a_terminal_uses_rich():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    with prog.RunProgress({"numpy": 3, "torch": 4}, stream=stream) as p:
        p.start("numpy")
        p.update("numpy", 3, "epoch 3/3")
        p.finish("numpy", "ok")
        assert p.fraction() == pytest.approx(3 / 7)
    assert "numpy" in stream.getvalue() and "overall" in stream.getvalue()


def test_a_narrow_terminal_cuts_the_status_not_the_times(monkeypatch):
    """At 80 columns rich shrank every column and the elapsed time and ETA read '0…'."""
    import io
    import re

    from multirnn import progress as prog

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("COLUMNS", "80")
    stream = Tty()
    with prog.RunProgress({"numpy": 30, "tests.fakes:OracleCopy": 30}, stream=stream) as p:
        p.start("numpy")
        p.update("numpy", 10, "epoch 10/30  perplexity 17.325  607,925 tokens/s")
        p.start("tests.fakes:OracleCopy")
    rows = [re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", ln) for ln in re.split(r"[\r\n]", stream.getvalue())]
    row = next(r for r in reversed(rows) if r.startswith("numpy") and "epoch 10/30" in r)
    assert len(row) <= 80 and "…" in row
    assert any(r.startswith("tests.fakes:O… ") for r in rows)  # a long row name is cut, and seen to be
    assert re.search(r"\d:\d\d:\d\d ETA (\d|-):(\d\d|--):(\d\d|--)$", row.rstrip()), row


class _Tty(io.StringIO):
    def isatty(self):
        return True


def _screen_rows(stream) -> list[str]:
    return [re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", ln) for ln in re.split(r"[\r\n]", stream.getvalue())]


@pytest.mark.parametrize("columns", [80, 160])
def test_one_job_is_one_bar_that_rich_fits_to_the_terminal(monkeypatch, columns):
    """The sweep showed an 'overall' bar above its one 'sweep' bar, the two saying the same; and its status
    ('cells 8/8 done, 0 running, 0 failed') was cut at 80 columns to '0…' by widths fixed at the start."""
    monkeypatch.setenv("COLUMNS", str(columns))
    stream = _Tty()
    with prog.RunProgress({"cells": 8.0}, stream=stream) as p:
        p.start("cells", "0/8 done")
        p.message("[1/8] ok        numpy  dtype=float32 seed 0  final ppl 24.080  0.3 s")
        p.finish("cells", "8/8 done, 2 running, 1 failed")
    rows = _screen_rows(stream)
    assert not any("overall" in r for r in rows), rows
    assert "[1/8] ok        numpy  dtype=float32 seed 0  final ppl 24.080  0.3 s" in rows  # above the bar
    row = next(r for r in reversed(rows) if r.startswith("cells "))
    assert len(row) <= columns and "8/8 done, 2 running, 1 failed 0:00:00 ETA 0:00:00" in row, row
    # the rest of the line went to the bar, up to its widest
    assert prog.BAR_WIDTHS[0] < row.count("━") <= prog.BAR_WIDTHS[1] and (len(row) == columns or row.count("━") == prog.BAR_WIDTHS[1]), row


def test_several_jobs_keep_the_overall_bar_and_the_bar_gives_way_before_the_status(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    stream = _Tty()
    with prog.RunProgress({"numpy": 30, "torch (layers)": 30}, stream=stream) as p:
        p.start("numpy")
        p.update("numpy", 30, "epoch 30/30  perplexity 17.325  607,925 tokens/s")
    rows = _screen_rows(stream)
    assert any(r.startswith("overall ") for r in rows)
    row = next(r for r in reversed(rows) if r.startswith("numpy "))
    assert "epoch 30/30  perplexity 17.325  607,925 tokens/s 0:00:00 ETA" in row, row  # the status in full
    assert prog.BAR_WIDTHS[0] <= row.count("━") < prog.BAR_WIDTHS[1] and len(row) <= 100, row
    monkeypatch.setenv("COLUMNS", "80")
    stream = _Tty()
    with prog.RunProgress({"numpy": 30, "torch (layers)": 30}, stream=stream) as p:
        p.start("numpy")
        p.update("numpy", 30, "epoch 30/30  perplexity 17.325  607,925 tokens/s")
    row = next(r for r in reversed(_screen_rows(stream)) if r.startswith("numpy "))
    assert row.count("━") == prog.BAR_WIDTHS[0] and "…" in row and len(row) <= 80, row  # cut, at the narrowest bar


def test_no_jobs_no_live_display_only_the_messages():
    """A sweep with every cell already done showed a bar of 'cells 0/0 done'."""
    stream = _Tty()
    with prog.RunProgress({}, stream=stream) as p:
        p.message("all 8 cells were already done")
    assert stream.getvalue() == "all 8 cells were already done\n"


def test_plain_lines_of_one_job_count_without_a_line_per_count():
    """Without a terminal a count ('3/8 done') is the same stage as the one before: a line at the start,
    one every LINE_SECONDS and one at the end, not one per cell (the cells print their own)."""
    stream = io.StringIO()
    with prog.RunProgress({"cells": 8.0}, stream=stream) as p:
        p.start("cells", "0/8 done")
        for k in range(1, 8):
            p.update("cells", k, f"{k}/8 done, 1 running")
        p.finish("cells", "8/8 done")
    lines = stream.getvalue().splitlines()
    assert [ln.split("] ", 1)[1] for ln in lines] == ["cells        0/8 done  (0%)", "cells        8/8 done  (100%)"]


def test_version_and_help():
    out = compare(["--version"]).stdout
    assert out.strip() == f"multirnn {multirnn.__version__}"
    text = " ".join(compare(["--help"]).stdout.split())  # argparse wraps lines
    assert "default: d2l-ed1 500, d2l-ed2 100, quick 60" in text  # every preset's value, not "overrides the preset"
    assert "{d2l-ed1,d2l-ed2,quick}" in text
    for flag in ("--list-backends", "--prefix", "--overwrite", "--resume", "--lockstep", "--encoding"):
        assert flag in text


def test_list_backends_says_when_only_the_layers_lack_a_library(tmp_path):
    """jax without flax runs the scratch model but not --impl layers: the table said "runs here: yes" only."""
    from tests.conftest import require_backend

    require_backend("jax")
    import os

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(not_installed("flax"))
    proc = compare(["--list-backends"], {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr
    assert "yes" in next(ln for ln in proc.stdout.splitlines() if ln.startswith("jax"))
    assert "jax --impl layers: The jax 'layers' implementation needs flax" in proc.stdout, proc.stdout
    assert "--impl layers" not in proc.stdout.replace("jax --impl layers", ""), proc.stdout  # the others have it all


def test_list_backends_names_the_missing_one_and_its_extra(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(MISSING_TENSORFLOW)
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = compare(["--list-backends"], env)
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("tensorflow"))
    assert "NO" in row and "pip install 'multirnn[tensorflow]'" in row
    assert re.search(r"tensorflow: .*cannot be imported|tensorflow: .*not installed", proc.stdout), proc.stdout
    numpy_row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("numpy"))
    assert "yes" in numpy_row
    info = subprocess.run([sys.executable, "-m", "multirnn"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, **env})
    assert info.returncode == 0 and "tensorflow" in info.stdout and multirnn.__version__ in info.stdout


def test_python_m_multirnn_has_help_and_refuses_unknown_options():
    """It printed the backend list, exit 0, for --help and for a mistyped option alike."""
    from multirnn import info

    with pytest.raises(SystemExit) as done:
        info.main(["--help"])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as refused:
        info.main(["--bogus"])
    assert refused.value.code == 2


def test_python_m_multirnn_compare_points_to_the_module(capsys):
    """``python -m multirnn compare --help`` printed this page's help, exit 0, as if compare had no options."""
    from multirnn import info

    with pytest.raises(SystemExit) as done:
        info.main(["compare", "--help"])
    assert done.value.code == 2
    assert "python -m multirnn.compare --help" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the command to paste, quoted as a shell needs it
        info.main(["compare", "--prefix", "time machine", "--out", "my runs/x"])
    assert "python -m multirnn.compare --prefix 'time machine' --out 'my runs/x'" in capsys.readouterr().err


def test_prefixes_and_every_result_on_screen(tmp_path):
    out = tmp_path / "run"
    proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--eval-text", "war_of_the_worlds", "--prefix", "The Martians,",
                    "--prefix", "time", "--out", str(out), "--quiet", "--no-plot"])
    assert proc.returncode == 0, proc.stderr
    assert "'the martians '" in proc.stdout and "'time'" in proc.stdout  # preprocessed like the text
    header = next(ln for ln in proc.stdout.splitlines() if ln.startswith("backend"))
    assert "eval ppl" in header and "median last" not in header  # 3 epochs: a median of the last 10 is the whole run
    res = json.loads((out / "results.json").read_text())
    assert set(res["backends"][0]["samples"]) == {"the martians ", "time"}
    assert f"{res['backends'][0]['eval_perplexity']:.3f}" in proc.stdout
    assert "the model is barely trained after 3 epochs" in proc.stdout
    # results.json keeps every printed note, the ones derived from the rows too
    printed = [ln[len("Note: "):] for ln in proc.stdout.splitlines() if ln.startswith("Note: ")]
    assert printed and res["notes"] == printed
    assert any(n.startswith("the model is barely trained") for n in res["notes"])
    assert "the first 3,000 of its 170,580 tokens" in proc.stdout


def test_validation_perplexity_and_median_window_in_the_table(tmp_path):
    proc = compare(["--backends", f"numpy,{COPY}", "--preset", "d2l-ed2", "--epochs", "12", "--hidden", "8",
                    "--batch-size", "512", "--out", str(tmp_path / "run"), "--quiet", "--no-plot"], timeout=600)
    assert proc.returncode == 0, proc.stderr
    header = next(ln for ln in proc.stdout.splitlines() if ln.startswith("backend"))
    assert "val ppl" in header and "median last 10" in header


def test_a_prefix_outside_the_vocabulary_is_a_usage_error(tmp_path):
    proc = compare(["--prefix", "...", "--out", str(tmp_path / "never")])
    assert proc.returncode == 2 and "at least one letter" in proc.stderr
    proc = compare(["--prefix", "Привет", "--out", str(tmp_path / "never")])  # letters, but none of A-Z
    assert proc.returncode == 2 and "--prefix: prefix must contain at least one letter A-Z" in proc.stderr, proc.stderr


def test_a_reader_that_goes_away_ends_the_listing_quietly():
    """``python -m multirnn | head -1`` printed a BrokenPipeError traceback (5 times in 5)."""
    proc = subprocess.Popen([sys.executable, "-m", "multirnn"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_a_comparison_piped_into_head_still_writes_its_results(tmp_path):
    """``compare ... 2>&1 | head -1``: the next progress line to the closed pipe ended the run, exit 141, with
    no results.json, no report and nothing --resume could continue."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "multirnn.compare", "--backends", f"numpy,{COPY}", *TINY,
                             "--no-plot", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0  # the verdict's own status
    assert json.loads((out / "results.json").read_text())["verdict"]["status"] == "agree"
    assert (out / "report.md").is_file()


def test_only_a_row_that_compiles_says_so_in_its_progress_line():
    """Every row read "training, epoch 1 (compiling)", the NumPy oracle's and an eager custom backend's too."""
    from multirnn.progress import backend_status

    assert backend_status({"kind": "start", "num_epochs": 3, "compiles": True}, 3)[1] == "training, epoch 1 (compiling)"
    assert backend_status({"kind": "start", "num_epochs": 3, "compiles": False}, 3)[1] == "training, epoch 1"
    assert backend_status({"kind": "start", "num_epochs": 3}, 3)[1] == "training, epoch 1"  # an older worker's message
