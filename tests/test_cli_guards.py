"""Guards on what the command line promises: options an ed. 2 run would ignore are refused (one line,
exit 2, nothing written), --help is true, install hints are ones that work, the benchmark scripts
answer --help, and the README describes the files and tests as they are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from multirnn import compare, report
from multirnn.backends import TORCH_CPU_WHEEL, install_hint
from multirnn.config import PRESETS
from multirnn.sweep_spec import expand, ignored_by_presets
from tests.fakes import not_installed

ROOT = Path(__file__).resolve().parents[1]
COPY = "tests.zoo:OracleCopy"


def run(module: str, args: list[str], env_extra: dict[str, str] | None = None, cwd: Path = ROOT,
        timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # benchmarks/ is not installed
    return subprocess.run([sys.executable, "-m", module, *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


# --- d2l-ed2 refuses the ed. 1 options it would ignore ---------------------------------------------


@pytest.mark.parametrize("given, named", [
    (["--sampling", "random"], "--sampling does not apply"),
    (["--sampling", "sequential"], "--sampling does not apply"),  # the default value, still not what ed. 2 does
    (["--max-tokens", "5000"], "--max-tokens does not apply"),
    (["--max-tokens", "0"], "--max-tokens does not apply"),
    (["--sampling", "random", "--max-tokens", "5000"], "--sampling and --max-tokens do not apply"),
])
def test_ed2_refuses_sampling_and_max_tokens_in_one_line_and_writes_nothing(tmp_path, capsys, given, named):
    out = tmp_path / "never"
    assert compare.main(["--preset", "d2l-ed2", "--backends", "numpy", *given, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and named in lines[0] and "shuffled fixed windows" in lines[0], captured.err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_ed2_refusal_is_exit_status_2_from_the_shell(tmp_path):
    proc = run("multirnn.compare", ["--preset", "d2l-ed2", "--sampling", "random", "--out", str(tmp_path / "never")],
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("multirnn.compare: error: --sampling does not apply to --preset d2l-ed2")
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []  # not even runs/


@pytest.mark.parametrize("preset", ["quick", "d2l-ed1"])
def test_ed1_presets_still_take_sampling_and_max_tokens(preset):
    args = compare.build_parser().parse_args(["--preset", preset, "--sampling", "random", "--max-tokens", "3000"])
    compare._refuse_ed1_options(args)  # no UsageError
    config = compare._config_from_args(args)
    assert (config.sampling, config.max_tokens) == ("random", 3000)


def test_a_sweep_may_cross_ed2_with_sampling():
    """The sweep plans with compare's make_plan; the refusal belongs to compare's own command line."""
    _, groups, _ = expand({"preset": ["d2l-ed1", "d2l-ed2"], "sampling": ["random"]}, ["--backends", "numpy"], [0], 1)
    assert [g.plan.config.protocol for g in groups] == ["d2l-ed1", "d2l-ed2"]


def test_a_sweep_runs_ed2_once_whatever_sampling_values_it_crosses():
    dims = {"preset": ["d2l-ed1", "d2l-ed2"], "sampling": ["sequential", "random"]}
    confs, groups, _ = expand(dims, ["--backends", "numpy"], [0], 1)
    assert [c.label for c in confs] == ["preset=d2l-ed1 sampling=sequential", "preset=d2l-ed1 sampling=random",
                                       "preset=d2l-ed2"]
    assert [c.index for c in confs] == [0, 1, 2] and len(groups) == 3
    assert "ignores --sampling" in ignored_by_presets(dims)
    # one value: still ignored by the ed. 2 configurations (said), but they are not multiplied by it
    one = ignored_by_presets({"preset": ["d2l-ed1", "d2l-ed2"], "sampling": ["random"]})
    assert one == "--preset d2l-ed2 ignores --sampling (shuffled fixed windows)"
    assert ignored_by_presets({"preset": ["quick"], "sampling": ["sequential", "random"]}) is None


def test_batching_says_what_each_protocol_does():
    assert PRESETS["d2l-ed2"].batching == "shuffled windows"
    assert PRESETS["d2l-ed1"].batching == "sequential sampling"
    assert PRESETS["quick"].replace(sampling="random").batching == "random sampling"


def test_an_ed2_run_header_names_its_windows_and_short_runs_read_right(tmp_path):
    out = tmp_path / "run"
    proc = run("multirnn.compare", ["--backends", f"numpy,{COPY}", "--preset", "d2l-ed2", "--epochs", "2",
                                    "--hidden", "8", "--batch-size", "512", "--out", str(out), "--no-plot"], timeout=600)
    assert proc.returncode == 0, proc.stderr
    header = next(ln for ln in proc.stderr.splitlines() if ln.startswith("multirnn.compare "))
    assert "(d2l-ed2, 2 epochs, shuffled windows, float32," in header and "sampling" not in header, header
    # auto spacing is 5 epochs for this shape: a 2-epoch run is checked at epochs 1 and 2, named as such
    assert "Checkpoints at epochs 1, 2 (2 in all)." in (out / "report.md").read_text()


def test_short_runs_record_the_checkpoint_spacing_they_really_have():
    argv = ["--backends", "numpy", "--epochs", "2", "--hidden", "8", "--max-tokens", "3000", "--lockstep", "6"]
    plan = compare.make_plan(compare.build_parser().parse_args(argv), argv)
    assert plan.lock_epochs == (1, 2) and plan.options["lockstep_every"] == 1
    argv[3] = "20"  # longer than the spacing: unchanged
    plan = compare.make_plan(compare.build_parser().parse_args(argv), argv)
    assert plan.lock_epochs == (1, 7, 13, 19, 20) and plan.options["lockstep_every"] == 6


def test_plurals():
    assert report.plural(1, "epoch") == "1 epoch" and report.plural(2, "epoch") == "2 epochs"
    assert "the 1 usable core:" in compare._jobs_notes(2, 1, 1, True, True)[-1]


# --- --help tells the truth ---------------------------------------------------------------------------


def test_help_lists_max_tokens_defaults_only_where_it_applies():
    text = " ".join(run("multirnn.compare", ["--help"]).stdout.split())  # argparse wraps lines
    sampling_at = text.index("--sampling {sequential,random} minibatch")  # the option's help, not the usage line
    max_tokens = text[text.index("--max-tokens N train"):sampling_at]
    assert "d2l-ed1 10,000" in max_tokens and "quick 10,000" in max_tokens
    assert "d2l-ed2 10,000" not in max_tokens and "refused with d2l-ed2" in max_tokens
    sampling = text[sampling_at:text.index("--dtype {float32,float64} floating")]
    assert "refused with d2l-ed2" in sampling


# --- install hints ----------------------------------------------------------------------------------


def test_torch_hint_installs_the_cpu_wheel_first():
    hint = install_hint("pytorch")
    assert hint.startswith("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    assert hint.endswith("pip install 'multirnn[torch]'")


def test_list_backends_rows_stay_short_and_the_cpu_wheel_is_named(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(not_installed("torch"))  # torch "not installed"
    proc = run("multirnn.compare", ["--list-backends"], {"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    torch_row = next(ln for ln in lines if ln.startswith("torch "))
    assert "NO" in torch_row and "pip install 'multirnn[torch]'" in torch_row and len(torch_row) <= 100
    assert f"torch: {TORCH_CPU_WHEEL} first" in proc.stdout
    why = next(ln for ln in lines if ln.startswith("  torch: "))
    assert TORCH_CPU_WHEEL in why and "multirnn[torch]" in why


# --- the benchmark scripts answer --help ------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_benchmark_report_help(tmp_path, flag):
    proc = run("benchmarks.report", [flag], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: python -m benchmarks.report") and "results.json" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_benchmark_report_without_results_is_one_line(tmp_path):
    proc = run("benchmarks.report", [str(tmp_path / "nowhere")], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "results.json" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_benchmark_report_of_another_runs_folder_is_one_line(tmp_path):
    """A compare run's folder ended in a KeyError traceback."""
    (tmp_path / "results.json").write_text('{"schema_version": 2, "verdict": {}, "backends": []}')
    proc = run("benchmarks.report", [str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "is not a benchmark run's (no 'big_gemm', 'floors', 'machine'," in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    # a hand-made file with the measurements but not the run's machine ended in a KeyError traceback
    latest = json.loads((ROOT / "benchmarks" / "results" / "latest" / "results.json").read_text())
    del latest["machine"]
    (tmp_path / "results.json").write_text(json.dumps(latest))
    proc = run("benchmarks.report", [str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "(no 'machine'; python -m benchmarks.bench_train writes one)" in proc.stderr
    # a benchmark stopped after its floors (no "main" yet) still renders what it has
    stopped = json.loads((ROOT / "benchmarks" / "results" / "latest" / "results.json").read_text())
    del stopped["main"]
    (tmp_path / "results.json").write_text(json.dumps(stopped))
    proc = run("benchmarks.report", [str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "report.md").is_file(), proc.stderr


def test_bench_train_refuses_an_unwritable_out_before_measuring(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run("benchmarks.bench_train", ["--quick", "--out", str(tmp_path / "afile" / "run")], cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("python -m benchmarks.bench_train: error: cannot write to output folder ")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_probes_help(flag):
    proc = run("benchmarks.probes", [flag])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: python -m benchmarks.probes") and "jax-transpose" in proc.stdout


def test_probes_unknown_is_still_a_usage_error():
    proc = run("benchmarks.probes", ["--no-such-probe"])
    assert proc.returncode == 2 and "unknown probe '--no-such-probe'" in proc.stderr


# --- the README ----------------------------------------------------------------------------------


README = (ROOT / "README.md").read_text()


def test_readme_states_no_test_count_that_goes_stale():
    assert not re.search(r"\b\d[\d,]* tests\b", README)


def test_readme_names_where_the_parameter_layout_really_is():
    assert "shapes table" not in README and "`param_layout` in `results.json`" in README


def test_readme_says_an_empty_worker_log_is_deleted():
    assert "`backends/NAME.log` (deleted when the worker printed nothing)" in README


# --- options that contradict each other or would do nothing --------------------------------------


@pytest.mark.parametrize("given, named", [
    (["--resume", "--overwrite"], "--resume continues the run in --out and --overwrite starts it again"),
    (["--keep-checkpoints", "--lockstep", "off"], "with --lockstep off none are written"),
    (["--init-seeds", "5"], "--init-seeds applies to --init framework only (--init shared"),
    (["--init", "independent", "--init-seeds", "2"], "--init-seeds applies to --init framework only"),
    (["--init", "framework"], "--init framework keeps each framework layer's own initialisers: it needs --impl"),
])
def test_contradicting_or_idle_options_are_refused(tmp_path, given, named):
    out = tmp_path / "run"
    proc = run("multirnn.compare", ["--backends", "numpy,torch", "--epochs", "1", "--out", str(out), *given])
    assert proc.returncode == 2 and named in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_python_crash_in_a_backend_says_where_it_was_raised(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "boom_backend.py").write_text(
        "from multirnn.backends.numpy_backend import NumpyBackend\n\n\n"
        "class Boom(NumpyBackend):\n    name = 'boom'\n\n"
        "    def train_step(self, *args, **kwargs):\n        raise RuntimeError('kaboom in my port')\n")
    out = tmp_path / "run"
    proc = run("multirnn.compare", ["--backends", "numpy,boom_backend:Boom", "--epochs", "1", "--out", str(out), "--quiet"],
               env_extra={"PYTHONPATH": str(site)})
    assert proc.returncode == 1, proc.stderr
    assert "boom_backend:Boom: RuntimeError: kaboom in my port" in proc.stdout
    assert re.search(r'raised at File ".*boom_backend\.py", line 8, in train_step \(traceback in results\.json\)',
                     proc.stdout), proc.stdout
    assert "raised at" in (out / "report.md").read_text()


def test_jobs_notes_name_the_jobs_asked_for_when_there_were_fewer_rows():
    note = compare._jobs_notes(4, 1, 2, True, True, asked=8)[0]
    assert "(--jobs 8, capped at the 4 rows;" in note
    assert "(--jobs 2;" in compare._jobs_notes(2, 1, 2, True, True, asked=2)[0]


def test_prompts_are_shown_in_the_order_given(tmp_path):
    proc = run("multirnn.compare", ["--backends", "numpy", "--epochs", "1", "--hidden", "8", "--prefix", "zz top",
                                    "--prefix", "abc", "--out", str(tmp_path / "run"), "--quiet", "--no-plot"])
    assert proc.returncode == 4, proc.stderr  # numpy alone: nothing to compare
    shown = [ln.split("->")[0].split(None, 1)[1].strip() for ln in proc.stdout.splitlines() if "->" in ln]
    assert shown == ["'zz top'", "'abc'"]


def test_a_narrow_terminal_gets_the_table_without_detail_and_is_told_so():
    header = ["backend", "version", "status", "final ppl", "peak MB", "verdict"]
    rows = [["torch", "2.13.0+cpu", "ok", "1.035", "261", "agrees"]]
    full = report.text_table(rows, header)
    h, r, dropped = report.fit_table(header, rows, None)  # piped output keeps every column
    assert (h, dropped) == (header, [])
    h, r, dropped = report.fit_table(header, rows, len(full.splitlines()[0]) - 1)
    assert dropped == ["version"] and "version" not in h and r == [["torch", "ok", "1.035", "261", "agrees"]]
    h, r, dropped = report.fit_table(header, rows, 10)  # never below the verdict and the perplexity
    assert h == ["backend", "status", "final ppl", "verdict"] and dropped == ["version", "peak MB"]


def test_blown_up_perplexities_print_in_three_digits():
    assert report.format_ppl(5.136594789e117) == "5.14e+117" and report.format_ppl(1.0354) == "1.035"
    assert report.format_ppl(None) == "-" and report.format_ppl(float("inf")) == "inf"


def test_the_checkpoint_count_says_how_many_came_before_the_oracle_diverged():
    v = {"reference": "numpy", "reference_label": "the NumPy oracle", "step_rtol": 1e-3, "norm_rtol": 1e-3,
         "probe_rtol": 1e-3, "rounding": 2.4e-7, "reference_diverged": None}
    results = {"verdict": v, "config": {"dtype": "float32"},
               "options": {"lockstep": "auto", "lockstep_every": 1, "lockstep_epochs": list(range(1, 13))}}
    assert report.bands_text(results).endswith("Checkpoints every 1 epoch (12 in all).")
    v["reference_diverged"] = {"epoch": 4, "step": 7}
    assert report.bands_text(results).endswith("(12 planned, 4 before the NumPy oracle diverged).")
    # --lockstep 100 of a 3-epoch run checks epochs 1 and 3: named, not "every 2 epochs"
    results["options"].update(lockstep=100, lockstep_every=2, lockstep_epochs=[1, 3])
    v["reference_diverged"] = None
    assert report.bands_text(results).endswith("Checkpoints at epochs 1, 3 (2 in all).")


def test_a_perplexity_axis_over_a_hundred_decades_keeps_its_tick_labels():
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib draws the plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for top, plain in ((30.0, True), (1e120, False)):
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [8.0, 12.0, top])
        ax.set_yscale("log")
        report._log_ticks(ax)
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        plt.close(fig)
        assert labels, top  # plain-number ticks over 120 decades drew none at all
        assert all("10^" not in t and "times" not in t for t in labels) == plain, labels


@pytest.mark.parametrize("lo, hi, least", [(10.2, 24.0, 4), (1.01, 1.4, 4), (3.0, 300.0, 5)])
def test_a_narrow_perplexity_axis_gets_enough_labelled_ticks(lo, hi, least):
    """10-24 (the d2l-ed2 preset's range) was labelled 10 and 20 only, 1.01-1.4 only 1.0."""
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib draws the plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [lo, hi])
    ax.set_yscale("log")
    report._log_ticks(ax)
    fig.canvas.draw()
    y0, y1 = ax.get_ylim()
    shown = [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if y0 <= v <= y1 and t.get_text()]
    plt.close(fig)
    assert len(shown) >= least, shown


@pytest.mark.parametrize("init, says", [("shared", "free-running per-step losses were held to 0.001"),
                                        ("independent", "final perplexities were held to 15% of the NumPy oracle's"),
                                        ("framework", "only each run's median-last perplexity was compared")])
def test_the_bands_line_without_lockstep_names_only_what_was_checked(init, says):
    v = {"reference": "numpy", "reference_label": "the NumPy oracle", "step_rtol": 1e-3, "init": init,
         "independent_rtol": 0.15, "finals_center": "the NumPy oracle's"}
    line = report.bands_text({"verdict": v, "config": {"dtype": "float32"}, "options": {"lockstep": "off"}})
    assert says in line and (init == "shared") == ("free-running" in line)


def test_the_bands_line_says_when_framework_init_compared_nothing():
    v = {"reference": "median", "reference_label": "the per-step median of the backends", "step_rtol": 1e-3,
         "init": "framework", "independent_rtol": 0.15, "backends": [{"name": "torch", "equivalence": None}]}
    line = report.bands_text({"verdict": v, "config": {"dtype": "float32"}, "options": {"lockstep": "off"}})
    assert "nothing was compared" in line and "needs numpy" in line, line


# --- sloppy input is refused, not guessed ------------------------------------------------------------


@pytest.mark.parametrize("module, args, message", [
    ("multirnn.compare", ["--ep", "1"], "unrecognized arguments: --ep 1"),  # no abbreviations
    ("multirnn.compare", ["--backends", "numpy,"], "--backends 'numpy,' has an empty item"),
    ("multirnn.compare", ["--backends", "numpy,,torch"], "has an empty item"),
    ("multirnn.compare", ["--impl", ",layers"], "--impl ',layers' has an empty item"),
    ("multirnn.sweep", ["--hidden", "32,,64", "--dry-run"], "--hidden '32,,64' has an empty item"),
    ("multirnn.sweep", ["--hid", "32", "--dry-run"], "unrecognized arguments: --hid 32"),
    ("multirnn.conformance", ["--frameworks", "torch,"], "--frameworks 'torch,' has an empty item"),
])
def test_abbreviations_and_empty_list_items_are_refused(tmp_path, module, args, message):
    proc = run(module, [*args, "--out", str(tmp_path / "never")] if module != "multirnn.conformance" else args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "never").exists()


def test_help_names_the_backend_aliases():
    from multirnn.backends import BACKEND_ALIASES, canonical_name

    text = " ".join(compare.build_parser().format_help().split())
    for alias, name in BACKEND_ALIASES.items():
        assert f"{alias} for {name}" in text and canonical_name(alias) == name


@pytest.mark.parametrize("module", ["compare", "sweep"])
def test_an_empty_out_is_refused_not_taken_for_the_current_folder(module, tmp_path, monkeypatch, capsys):
    """--out "$OUT" with OUT unset wrote a run's files into the current folder."""
    import importlib

    monkeypatch.chdir(tmp_path)
    cli = importlib.import_module(f"multirnn.{module}")
    assert cli.main(["--out", "", "--backends", "numpy"]) == 2
    assert "argument --out: is empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("encoding, message", [
    ("nosuch", "--encoding: Unknown text encoding 'nosuch'"),
    ("rot13", "--encoding: 'rot13' is not a text encoding"),
])
def test_an_encoding_that_is_not_one_is_refused_even_for_bundled_texts(tmp_path, capsys, encoding, message):
    """With the bundled text (its encoding known) --encoding nosuch or rot13 was accepted silently."""
    assert compare.main(["--backends", "numpy", "--epochs", "1", "--hidden", "16", "--max-tokens", "3000",
                         "--encoding", encoding, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_an_encoding_the_bundled_texts_do_not_need_is_said_unused():
    args = compare.build_parser().parse_args(["--backends", "numpy", "--encoding", "latin-1", "--epochs", "1"])
    plan = compare.make_plan(args, [])
    assert "--encoding latin-1 is not used: the bundled texts' encodings are known" in plan.options["data_notes"]


def test_asking_for_flax_with_the_scratch_model_says_where_flaxs_layers_are():
    """--backends flax ran the scratch JAX row and said nothing: a user asking for flax likely wanted its layers."""
    plan = compare.make_plan(compare.build_parser().parse_args(["--backends", "numpy,flax", "--epochs", "1"]), [])
    assert any(n.startswith("--backends flax names the jax backend") and "--impl layers" in n
               for n in plan.options["row_notes"])
    plan = compare.make_plan(compare.build_parser().parse_args(["--backends", "numpy,flax", "--impl", "all",
                                                                "--epochs", "1"]), [])
    assert not any(n.startswith("--backends flax") for n in plan.options["row_notes"])


@pytest.mark.parametrize("module, args, name", [
    ("multirnn.compare", ["--backends", "numpy,torch", "--backends", "jax"], "--backends"),
    ("multirnn.compare", ["--impl=scratch", "--impl", "layers"], "--impl"),
    ("multirnn.sweep", ["--backends", "numpy", "--backends", "torch", "--dry-run"], "--backends"),
])
def test_a_list_option_given_twice_is_refused_not_overridden(module, args, name, tmp_path):
    """argparse kept the last one: '--backends numpy,torch --backends jax' ran jax alone, with nothing to
    compare it with (exit 4)."""
    proc = run(module, [*args, "--out", str(tmp_path / "out")])
    assert proc.returncode == 2 and f"{name} was given 2 times" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_other_options_repeat_as_argparse_has_them():
    from multirnn import compare as compare_mod

    ns = compare_mod.build_parser().parse_args(["--prefix", "a", "--prefix", "b", "--epochs", "2", "--epochs", "3"])
    assert ns.prefix == ["a", "b"] and ns.epochs == 3  # appended; a later one wins (an alias's default overridden)
