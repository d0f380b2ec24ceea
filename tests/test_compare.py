"""``python -m multirnn.compare`` end to end: exit codes, files, schema, failures, bad input.

The command runs in a subprocess, as a user runs it. A crashing backend and a missing one are
simulated with a ``sitecustomize`` module on PYTHONPATH (inherited by the spawned workers), so the
product code carries no test hooks.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import multirnn
from multirnn import agreement
from multirnn import compare as compare_cli
from tests.conftest import require_backend
from tests.fakes import not_installed

TINY = ["--epochs", "3", "--hidden", "16", "--max-tokens", "3000", "--batch-size", "8", "--num-steps", "10", "--quiet"]

def fake_backend(name: str, class_name: str, train_step_body: str) -> str:
    """sitecustomize source that replaces backend ``name`` (and its framework) by the NumPy oracle
    with ``train_step_body`` as its train_step (arguments: self, params, X, Y, state, lr, clip)."""
    body = textwrap.indent(textwrap.dedent(train_step_body), " " * 20)
    return textwrap.dedent(
        f"""
        import importlib.abc, importlib.machinery, sys

        class _Fake(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, fullname, path=None, target=None):
                if fullname in ({name!r}, "multirnn.backends.{name}_backend"):
                    return importlib.machinery.ModuleSpec(fullname, self)
                return None

            def create_module(self, spec):
                return None

            def exec_module(self, module):
                if module.__name__ == {name!r}:
                    return
                import os, signal
                from multirnn.backends.numpy_backend import NumpyBackend

                class {class_name}(NumpyBackend):
                    name = {name!r}
                    calls = 0

                    def train_step(self, params, X, Y, state, lr, clip):
        """
    ) + body + textwrap.dedent(
        f"""
                module.{class_name} = {class_name}

        sys.meta_path.insert(0, _Fake())
        """
    )


# mxnet replaced by the oracle that segfaults at its 5th training step (a native crash).
CRASHING_MXNET = fake_backend("mxnet", "MXNetBackend", """
    type(self).calls += 1
    if type(self).calls == 5:
        os.kill(os.getpid(), signal.SIGSEGV)
    return super().train_step(params, X, Y, state, lr, clip)
""")
# jax replaced by a classic translation bug: the carried state is dropped (always zero).
STATELESS_JAX = fake_backend("jax", "JaxBackend", """
    return super().train_step(params, X, Y, (state[0] * 0,), lr, clip)
""")
# Makes tensorflow look uninstalled: no module and no metadata, as on a machine without it.
MISSING_TENSORFLOW = not_installed("tensorflow")


def compare(args: list[str], site: str | None = None, tmp_path: Path | None = None, timeout: int = 300):
    env = dict(os.environ)
    if site is not None:
        site_dir = tmp_path / "site"
        site_dir.mkdir(exist_ok=True)
        (site_dir / "sitecustomize.py").write_text(site)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site_dir), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "multirnn.compare", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


COPY = "tests.zoo:OracleCopy"  # a correct third-party backend: the oracle under another name


def test_a_run_writes_every_file_with_the_schema(tmp_path):
    out = tmp_path / "run"
    proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--out", str(out), "--eval-text", "war_of_the_worlds"])
    assert proc.returncode == 0, proc.stderr
    for name in ("results.json", "report.md", "curves.csv", "perplexity.png", "deviation.png", "backends/numpy.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()  # removed unless --keep-checkpoints
    res = load(out)
    assert res["schema_version"] == 2 and res["verdict"]["status"] == "agree"
    assert res["config"]["num_epochs"] == 3 and res["config"]["protocol"] == "d2l-ed1"
    assert res["machine"]["isa"] in ("avx512", "avx2") or res["machine"]["isa"]
    b, copy = res["backends"]
    for key in ("name", "status", "framework_version", "perplexity", "tokens_per_sec", "first_epoch_seconds",
                "peak_rss_mb", "agrees", "judgement", "samples", "lockstep"):
        assert key in b, key
    assert b["status"] == "ok" and b["agrees"] is True and len(b["perplexity"]) == 3
    assert b["judgement"]["status"] == "reference" and b["judgement"]["shapes_agree"] is True
    assert b["perplexity"][-1] < b["perplexity"][0]
    assert b["tokens_per_sec"] > 0 and b["peak_rss_mb"] > 10
    assert set(b["samples"]) == {"time traveller", "traveller"}
    assert b["samples"]["traveller"].startswith("traveller") and b["eval_perplexity"] > 1
    j = copy["judgement"]
    assert copy["name"] == COPY and j["status"] == "agrees" and j["checkpoints_checked"] == len(res["options"]["lockstep_epochs"]) >= 2
    # two probe steps at half the lr per checkpoint, two more where the raised lr differs (the first, here)
    probes = copy["lockstep"]["probes"]
    half = [p for p in probes if p["lr"] == res["config"]["lr"] * 0.5]
    assert j["max_loss_deviation"] == 0.0 and len(half) == 2 * j["checkpoints_checked"]
    assert len(probes) - len(half) in range(0, 2 * j["checkpoints_checked"] + 1, 2)
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert [int(r["epoch"]) for r in rows if r["backend"] == "numpy"] == [1, 2, 3]
    # --eval-text's perplexity (one number) on the last epoch's row
    assert [r["eval_perplexity"] for r in rows if r["backend"] == "numpy"][:2] == ["", ""]
    assert float([r for r in rows if r["backend"] == "numpy"][-1]["eval_perplexity"]) == b["eval_perplexity"]
    assert "numpy" in proc.stdout and "Verdict:" in proc.stdout and "time traveller" in proc.stdout
    assert "Bands applied (float32)" in proc.stdout
    report_md = (out / "report.md").read_text()
    assert "perplexity.png" in report_md and "Bands applied" in report_md


@pytest.mark.parametrize("backends", ["numpy", COPY, f"{COPY},tests.zoo:OracleCopy2"])
def test_nothing_to_compare_is_not_agreement(tmp_path, backends):
    out = tmp_path / "run"
    proc = compare(["--backends", backends, *TINY, "--out", str(out), "--no-plot"])
    assert proc.returncode == 4, proc.stderr
    assert load(out)["verdict"]["status"] == "not-judged"
    assert "agree" not in proc.stdout.split("Verdict:")[1].splitlines()[0].replace("not-judged", "")


def test_without_the_oracle_three_rows_judge_the_wrong_one_whatever_their_order(tmp_path):
    """The median of three needs the anchor's (first row's) own steps: without them the median of a correct
    row and a wrong one was their mean, and the correct row disagreed."""
    out = tmp_path / "run"
    proc = compare(["--backends", f"{COPY},tests.zoo:OracleCopy2,tests.zoo:OutputBiasTwice", *TINY, "--out", str(out),
                    "--no-plot"])
    assert proc.returncode == 1, proc.stderr
    res = load(out)
    assert res["verdict"]["reference"] == "median"
    status = {b["name"]: b["judgement"]["status"] for b in res["backends"]}
    assert status == {COPY: "agrees", "tests.zoo:OracleCopy2": "agrees", "tests.zoo:OutputBiasTwice": "disagrees"}


def test_a_row_that_moves_a_weight_the_oracles_step_leaves_unchanged_disagrees(tmp_path):
    """A deep LSTM's second-layer recurrent updates round to 0 in float32 early on; the probe's band for an
    update of 0 was infinite, so a row that changed those weights agreed (and its cell read 'infx band')."""
    out = tmp_path / "run"
    proc = compare(["--backends", f"numpy,{COPY},tests.fakes:MovesWhatTheOracleLeaves", "--cell", "lstm",
                    "--num-layers", "2", *TINY, "--out", str(out), "--no-plot"])
    assert proc.returncode == 1, proc.stderr
    rows = {b["name"]: b["judgement"] for b in load(out)["backends"]}
    assert rows[COPY]["status"] == "agrees"
    bad = rows["tests.fakes:MovesWhatTheOracleLeaves"]
    assert bad["status"] == "disagrees" and "(the oracle's is 0; relative to the parameter)" in bad["reason"], bad
    assert "inf" not in proc.stdout.split("Verdict:")[0]  # the table's probe cell is a finite multiple of the band


def test_torch_alone_is_not_judged(tmp_path):
    require_backend("torch")
    proc = compare(["--backends", "torch", *TINY, "--out", str(tmp_path / "run"), "--no-plot"])
    assert proc.returncode == 4, proc.stderr
    assert "nothing to compare torch with" in proc.stdout


def test_crashing_and_missing_backends_become_rows_while_others_finish(tmp_path):
    out = tmp_path / "run"
    site = CRASHING_MXNET + MISSING_TENSORFLOW
    proc = compare(["--backends", "numpy,mxnet,tensorflow", *TINY, "--out", str(out), "--no-plot"], site, tmp_path)
    assert proc.returncode == 1, proc.stderr  # a crash is not agreement
    rows = {b["name"]: b for b in load(out)["backends"]}
    assert rows["numpy"]["status"] == "ok" and rows["numpy"]["agrees"] is True
    assert rows["mxnet"]["status"] == "crashed" and "signal 11" in rows["mxnet"]["error"]
    assert rows["tensorflow"]["status"] == "unavailable" and "multirnn[tensorflow]" in rows["tensorflow"]["error"]
    assert rows["tensorflow"]["peak_rss_mb"] is None  # it never trained: no memory figure (it showed 35 MB)
    assert rows["tensorflow"]["framework_version"] is None  # not installed: no version to show
    assert "crashed: mxnet" in load(out)["verdict"]["summary"]
    assert load(out)["verdict"]["status"] == "crashed"  # nothing disagreed: named as what it is
    assert not (out / "perplexity.png").exists()


def test_a_layer_that_cannot_compute_the_model_is_refused_without_a_worker(tmp_path):
    """torch.nn.GRU is reset-after: the row is unsupported, decided in the parent (torch made
    unimportable here, so a worker would have called it unavailable), with no memory figure."""
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy,torch", "--impl", "layers", "--cell", "gru", *TINY, "--out", str(out),
                    "--no-plot"], "import sys\nsys.modules['torch'] = None\n", tmp_path)  # importable metadata, no module
    assert proc.returncode == 4, proc.stderr  # nothing left to compare the oracle with
    row = {b["name"]: b for b in load(out)["backends"]}["torch/layers"]
    assert row["status"] == "unsupported" and "--cell gru-reset-after" in row["error"], row
    from multirnn.info import installed_version

    # the installed version, read from its metadata without importing it (the table showed "-")
    assert row["peak_rss_mb"] is None and row["framework_version"] == installed_version("torch")


def test_a_translation_bug_is_caught_in_a_re_anchored_stretch(tmp_path):
    from multirnn.lockstep import MAX_STRETCH_STEPS

    out = tmp_path / "run"
    proc = compare(["--backends", "numpy,jax", *TINY, "--out", str(out), "--no-plot"], STATELESS_JAX, tmp_path)
    assert proc.returncode == 1, proc.stderr
    res = load(out)
    jax = res["backends"][1]
    assert jax["status"] == "ok" and jax["agrees"] is False
    c = jax["judgement"]["first_crossing"]
    # TINY's epochs have 37 steps: a stretch is a checkpoint epoch's first 16, named by epoch and step within it
    assert c["epoch"] in res["options"]["lockstep_epochs"] and 2 <= c["step"] <= MAX_STRETCH_STEPS
    assert "jax disagrees with the NumPy oracle" in res["verdict"]["summary"]
    assert f"DISAGREES (epoch {c['epoch']}, step {c['step']})" in proc.stdout


def test_no_backend_could_run_exits_3(tmp_path):
    out = tmp_path / "run"
    proc = compare(["--backends", "tensorflow", *TINY, "--out", str(out)], MISSING_TENSORFLOW, tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert load(out)["verdict"]["status"] == "no-backend"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backends", "pytroch"], "Unknown backend 'pytroch'"),
        (["--preset", "d2l-ed9"], "invalid choice: 'd2l-ed9'"),
        (["--epochs", "0"], "positive integer"),
        (["--hidden", "-4"], "positive integer"),
        (["--lr", "fast"], "positive number"),
        (["--lr", "-1"], "positive number"),
        (["--clip", "nan"], "positive number"),
        (["--text", "/no/such/book.txt"], "no such file"),
        (["--device", "gpu"], "no GPU is visible"),
        (["--batch-size", "4000"], "too few for one minibatch"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    if args[0] == "--device" and compare_cli._gpu_visible():
        pytest.skip("a GPU is visible here")
    out = tmp_path / "never"
    proc = compare([*args, "--out", str(out)])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()  # nothing half-written


def test_empty_and_too_short_text_files_are_usage_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("a tiny book")
    for path, message in ((empty, "no letters"), (short, "too few for one minibatch")):
        proc = compare(["--text", str(path), "--out", str(tmp_path / "x")])
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_unwritable_output_folder_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = compare(["--backends", "numpy", "--out", str(blocker / "sub")])
    assert proc.returncode == 2 and "cannot write to output folder" in proc.stderr


def test_help_explains_options_and_shows_an_example():
    proc = compare(["--help"])
    assert proc.returncode == 0
    for flag in ("--backends", "--preset", "--init", "--eval-text", "--no-plot", "--quiet", "examples:"):
        assert flag in proc.stdout


def test_custom_text_and_independent_init(tmp_path):
    book = tmp_path / "book.txt"
    book.write_bytes(multirnn.bundled_text_path("war_of_the_worlds").read_bytes()[:20000])
    out = tmp_path / "run"
    proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--text", str(book), "--encoding", "cp1252",
                    "--init", "independent", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    res = load(out)
    assert res["options"]["init"] == "independent" and res["options"]["text"] == str(book.resolve())
    assert [b["agrees"] for b in res["backends"]] == [True, True]
    # other initial weights, so other curves; yet the re-anchored checks still ran from the oracle's checkpoints
    assert res["backends"][0]["step_loss"] != res["backends"][1]["step_loss"]
    assert res["backends"][1]["judgement"]["checkpoints_checked"] >= 2


def test_framework_init_pairs_each_seed_with_the_d2l_model_from_the_same_weights(tmp_path):
    """torch's own initialisers (U(±1/√H)) train to another perplexity than d2l's N(0, 0.01²): that is
    the initialisers' effect, a note; the verdict compares each seed's run with the oracle trained
    from the very same weights, and agrees."""
    require_backend("torch")
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy,torch", "--impl", "layers", "--init", "framework", "--init-seeds", "2",
                    *TINY, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = load(out)
    row = {b["name"]: b for b in res["backends"]}["torch/layers"]
    paired = row["paired_oracle_runs"]
    assert [p["seed"] for p in paired] == [0, 1] and all(p["median_last_perplexity"] > 1 for p in paired)
    j = row["judgement"]
    assert j["status"] == "agrees" and j["equivalence"]["n"] == 2 and j["init_effect"] is not None
    # the pairs are close (same model, same start), unlike the layer and the d2l-initialised oracle
    assert all(abs(a / b - 1) < 1e-3 for a, b in zip(j["finals"], j["paired_finals"]))
    assert any("initialisers" in n for n in res["verdict"]["notes"])


def test_ctrl_c_writes_a_partial_report(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "multirnn.compare", "--backends", "numpy", "--epochs", "100000",
                             "--hidden", "64", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(8)  # long enough for the worker to be training (100,000 epochs take far longer)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    res = load(out)
    assert res["verdict"]["status"] == "interrupted"
    assert res["backends"][0]["status"] == "interrupted"  # stopped by the user: not a crash
    assert res["backends"][0]["error"] == "interrupted (Ctrl-C) before it finished"
    assert "crashed" not in res["verdict"]["summary"] and "no backend finished before the run was stopped" in res["verdict"]["summary"]
    assert (out / "report.md").exists() and "Traceback" not in err


# --- third-party backends -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [("nosuch.module:X", "no module named 'nosuch'"), ("multirnn.data:Vocab", "not a subclass of multirnn.Backend"),
     ("multirnn.data:Nope", "has no attribute 'Nope'"), ("multirnn.data:", "package.module:ClassName"),
     ("multirnn.backends.base:Backend", "does not implement")],
)
def test_bad_backend_specs_are_one_line_and_exit_2(tmp_path, spec, message):
    proc = compare(["--backends", f"numpy,{spec}", *TINY, "--out", str(tmp_path / "never")])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_a_backend_module_that_fails_to_import_is_a_usage_error(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_backend.py").write_text("raise RuntimeError('this module is broken')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", "broken_backend:B", *TINY,
                           "--out", str(tmp_path / "never")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "RuntimeError: this module is broken" in proc.stderr, proc.stderr
    (site / "exiting_backend.py").write_text("import sys\nsys.exit(3)\n")  # exit 3 meant "no backend could run"
    proc = subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", "exiting_backend:B", *TINY,
                           "--out", str(tmp_path / "never")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "importing 'exiting_backend' called sys.exit(3)" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_an_entry_point_backend_runs_by_its_name(tmp_path):
    """An installed distribution registers a backend under the ``multirnn.backends`` group."""
    site = tmp_path / "site"
    dist = site / "my_backends-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-backends\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[multirnn.backends]\nmy-oracle = tests.zoo:OracleCopy\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])])}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", "numpy,my-oracle", *TINY,
                           "--out", str(out), "--no-plot"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [b["name"] for b in load(out)["backends"]] == ["numpy", "my-oracle"]
    code = "import multirnn; print(multirnn.known_backends())"
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "my-oracle" in listed


# --- agreement building blocks ------------------------------------------------------------------------


def test_finals_use_the_last_tenth():
    ppl = [9.0] * 90 + [1.0] * 9 + [5.0]  # a spike in the final epoch does not decide
    assert agreement.robust_final(ppl) == 1.0
    assert agreement.robust_final([3.0, 2.0, 1.0]) == 2.0


def test_curves_of_different_length_disagree():
    d = agreement.compare_curve([1.0, 1.0], [1.0, 1.0, 1.0], 1e-4, [1, 1, 1])
    assert not d.agrees and d.first_step == 3


def test_a_long_run_on_idle_cores_is_told_about_jobs():
    book = 500 * 8 * 32 * 35  # tokens per row of the book run (8 minibatches an epoch)
    hint = compare_cli.jobs_hint(1, 2, 5, book)
    assert hint is not None and "--jobs 2" in hint
    assert "--jobs 3" in (compare_cli.jobs_hint(1, 8, 3, book) or "")  # no more jobs than rows
    assert compare_cli.jobs_hint(2, 2, 5, book) is None  # already side by side
    assert compare_cli.jobs_hint(1, 1, 5, book) is None  # one core: nothing to gain
    assert compare_cli.jobs_hint(1, 2, 1, 5 * book) is None  # one row: nothing to run beside it
    assert compare_cli.jobs_hint(1, 2, 5, 60 * 8 * 32 * 35) is None  # the default run is short


def test_eval_text_under_d2l_ed2_is_cleaned_the_ed2_way(tmp_path):
    """Ed. 2 cleans the whole text, so each line break is a space: 3 tokens a line here, not ed. 1's 2."""
    book = tmp_path / "eval.txt"
    book.write_text("Ab,\n" * 400)
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy", "--preset", "d2l-ed2", "--epochs", "1", "--hidden", "16", "--batch-size", "8",
                    "--num-steps", "10", "--quiet", "--no-plot", "--eval-text", str(book), "--out", str(out)])
    assert proc.returncode == 4, proc.stderr
    assert load(out)["options"]["tokens"]["eval"] == 3 * 400


def test_eval_text_under_d2l_ed2_needs_one_window_not_one_ed1_minibatch(tmp_path):
    """300 tokens: fewer than batch 64 x 10 steps + 1 (what reading it the ed. 1 way needs), more than
    one ed. 2 window of 11; every row scores it."""
    book = tmp_path / "eval.txt"
    book.write_text("Ab,\n" * 100)
    out = tmp_path / "run"
    proc = compare(["--backends", f"numpy,{COPY}", "--preset", "d2l-ed2", "--epochs", "1", "--hidden", "16",
                    "--batch-size", "64", "--num-steps", "10", "--quiet", "--no-plot", "--eval-text", str(book),
                    "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    rows = load(out)["backends"]
    evals = [r["eval_perplexity"] for r in rows]
    assert all(e is not None and 1 < e < 28 for e in evals) and evals[0] == pytest.approx(evals[1], rel=1e-4)


def test_a_d2l_ed2_run_records_and_says_what_ed2_does(tmp_path):
    """results.json read "sampling": "sequential" and "max_tokens": 10000 for ed. 2, which ignores both; the
    continuations were ed. 1's; a batch larger than the training windows ran one step per epoch unsaid."""
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy", "--preset", "d2l-ed2", "--epochs", "1", "--hidden", "8", "--batch-size",
                    "20000", "--quiet", "--no-plot", "--out", str(out)])
    assert proc.returncode == 4, proc.stderr
    r = load(out)
    assert r["config"]["sampling"] is None and r["config"]["max_tokens"] is None and r["config"]["num_train"] == 10000
    assert r["options"]["preset"] == "d2l-ed2"
    samples = r["backends"][0]["samples"]
    assert list(samples) == ["it has"] and len(samples["it has"]) == len("it has") + 20  # d2l ed. 2's chapter
    assert "--batch-size 20,000 is more than the 10,000 training windows" in proc.stdout + proc.stderr
    assert r["backends"][0]["steps_per_epoch"] == [1]


@pytest.mark.parametrize("args, messages", [
    (["--text", "/dev/null"], ["--text '/dev/null' is not a regular file (a character device)"]),
    (["--eval-text", "war_of_the_worlds.txt"], ["did you mean the bundled text 'war_of_the_worlds'",
                                                "(--eval-text war_of_the_worlds)"]),
    (["--eval-text", "SHORT"], ["has 91 tokens after preprocessing, too few to evaluate one minibatch",
                                "batch_size=32 x num_steps=35: at least 1,121 are needed"]),
    # short because its Cyrillic letters became spaces: the error says so
    (["--text", "CYRILLIC"], ["too few for one minibatch", "letters outside A-Z"]),
])
def test_text_input_errors_say_what_is_wrong(tmp_path, args, messages):
    files = {"SHORT": "a tiny evaluation text " * 4, "CYRILLIC": "Привет мир, hello " * 100}
    if args[1] in files:
        path = tmp_path / "book.txt"
        path.write_text(files[args[1]], encoding="utf-8")
        args = [args[0], str(path)]
    proc = compare([*args, "--backends", "numpy", "--out", str(tmp_path / "never")], timeout=60)
    assert proc.returncode == 2 and all(m in proc.stderr for m in messages), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "never").exists()


def test_bundled_texts_by_name_for_text_and_eval_text_and_in_help(tmp_path):
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy", *TINY, "--no-plot", "--text", "timemachine", "--eval-text", "timemachine",
                    "--out", str(out)])
    assert proc.returncode == 4, proc.stderr
    res = load(out)
    assert res["options"]["text"] is None  # the default text, recorded as the default
    assert res["options"]["eval_text"] == str(multirnn.bundled_text_path("timemachine"))
    assert res["backends"][0]["eval_perplexity"] > 1
    usage = compare(["--help"]).stdout
    assert "timemachine" in usage and "war_of_the_worlds" in usage


def test_impl_layers_with_a_third_party_backend_says_it_runs_the_class_as_given():
    """--impl layers ran a package.module:Class row without a word (results.json: impls ['layers'], the
    row's impl 'scratch')."""
    rows, notes = compare_cli._rows_to_run(["numpy", COPY, "torch"], ["layers"])
    assert rows == [("numpy", "scratch"), (COPY, "scratch"), ("torch", "layers")]
    assert any(n.startswith(f"{COPY} is one class, one row, whatever --impl says") for n in notes), notes
    assert compare_cli._rows_to_run(["numpy", COPY], ["scratch"])[1] == []


def test_resume_with_a_framework_still_missing_keeps_the_oracle(tmp_path):
    """The not-installed row runs again on --resume (it may be installed now), but while it is still missing
    nothing restarts from the oracle's checkpoints: the finished oracle was trained again every time."""
    out = tmp_path / "run"
    args = ["--backends", "numpy,torch", *TINY, "--out", str(out), "--no-plot"]
    first = compare(args, not_installed("torch"), tmp_path)
    assert first.returncode == 4, first.stderr  # only the reference ran
    oracle = out / "backends" / "numpy.json"
    mtime = oracle.stat().st_mtime_ns
    again = compare([*args, "--resume"], not_installed("torch"), tmp_path)
    assert again.returncode == 4, again.stderr
    assert oracle.stat().st_mtime_ns == mtime, again.stderr
    assert {b["name"]: b["status"] for b in load(out)["backends"]} == {"numpy": "ok", "torch": "unavailable"}
    require_backend("torch")  # installed now: torch runs, and the oracle trains again for its checkpoints
    installed = compare([*args, "--resume"])
    assert installed.returncode == 0, installed.stderr
    rows = {b["name"]: b for b in load(out)["backends"]}
    assert rows["torch"]["status"] == "ok" and rows["torch"]["judgement"]["checkpoints_checked"] >= 1, rows["torch"]
    assert oracle.stat().st_mtime_ns != mtime


def test_a_layer_row_missing_its_library_names_the_installed_framework(tmp_path):
    """jax without flax: the layers row is unavailable (flax's hint), its version column jax's, not "-"."""
    require_backend("jax")
    from multirnn.info import installed_version

    out = tmp_path / "run"
    proc = compare(["--backends", "numpy,jax", "--impl", "layers", *TINY, "--out", str(out), "--no-plot"],
                   not_installed("flax"), tmp_path)
    assert proc.returncode == 4, proc.stderr  # nothing left to compare the oracle with
    row = {b["name"]: b for b in load(out)["backends"]}["jax/layers"]
    assert row["status"] == "unavailable" and "flax" in row["error"], row
    assert row["framework_version"] == installed_version("jax") and row["peak_rss_mb"] is None, row


@pytest.mark.parametrize("extra", [
    [],  # a re-anchored step's gradient norm (the first case)
    ["--lr", "20", "--epochs", "6", "--lockstep", "1", "--seed", "2"],  # a probe from a checkpoint rounding decides
    ["--lr", "20", "--epochs", "4", "--hidden", "8", "--batch-size", "8", "--num-steps", "10"],  # W_hh's gradient cancels
])
def test_a_correct_backend_at_a_huge_lr_is_not_called_wrong(tmp_path, extra):
    """--lr 50: one step from a checkpoint put a correct torch's gradient norm 2.7 % off the oracle's (band
    0.1 %), exit 1. The oracle's own float32 step lay 0.44 % from float64 there: its band is now 50x that.
    The verdict hunter's probe cases (all four frameworks failed them) are held the same way."""
    require_backend("torch")
    out = tmp_path / "run"
    proc = compare(["--backends", "numpy,torch", "--lr", "50", "--epochs", "3", "--hidden", "16", "--max-tokens",
                    "3000", *extra, "--out", str(out), "--no-plot"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v = load(out)["verdict"]
    assert v["backends"][1]["status"] == "agrees"
    assert v["rounding_limited"] is not None or v["probe_rounding"] is not None, v
