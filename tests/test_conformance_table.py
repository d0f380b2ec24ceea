"""``python -m multirnn.conformance``: the table says what each layer stores and draws, and the CLI
fails like the project's other CLIs (one line on stderr, documented exit statuses)."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from multirnn import conformance
from tests.conftest import require_backend, require_module
from tests.fakes import not_installed

ROOT = Path(__file__).resolve().parents[1]
CELLS = ("gru", "gru-reset-after", "lstm", "rnn")


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "multirnn.conformance", *args], check=False, capture_output=True,
                          text=True, timeout=900, cwd=ROOT, env=env)


@functools.cache
def _measured(framework: str, tmp: str) -> tuple[list[dict[str, Any]], str, int]:
    out = Path(tmp) / f"{framework}.json"
    proc = run_cli("--frameworks", framework, "--json", str(out))
    assert out.exists(), proc.stderr
    return json.loads(out.read_text())["rows"], proc.stdout, proc.returncode


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``measured("torch")``: the CLI's rows, its table and exit status for one framework (run once)."""
    tmp = str(tmp_path_factory.mktemp("conformance"))

    def get(framework: str) -> tuple[list[dict[str, Any]], str, int]:
        require_backend(framework)  # skipped where missing, a failure under MULTIRNN_REQUIRE_BACKENDS=1
        if framework == "jax":
            require_module("flax", "pip install 'multirnn[jax]'")  # jax's layers are flax's
        return _measured(framework, tmp)

    return get


def _row(rows: list[dict[str, Any]], cell: str) -> dict[str, Any]:
    return next(r for r in rows if r.get("asked") == cell)


def _cells(line: str) -> list[str]:
    """A Markdown table line's cells: split at unescaped pipes only, as GFM does."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


# --- 1. orthogonality is judged on the kernel as the framework stores it --------------------------------


def _orthonormal_rows(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(cols, rows)))
    return q.T  # (rows, cols), rows orthonormal


def test_a_keras_like_kernel_with_orthonormal_rows_is_orthogonal_though_no_gate_block_is() -> None:
    H = 8
    K = _orthonormal_rows(H, 3 * H)  # Keras' Orthogonal() on the (H, 3H) recurrent_kernel
    blocks = dict(zip(("W_hz", "W_hr", "W_hh"), np.split(K, 3, axis=1)))
    assert not any(np.allclose(b.T @ b, np.eye(H), atol=1e-5) for b in blocks.values())
    layout = {"rk": conformance._layout_entry({"shape": [H, 3 * H], "holds": "[W_hz | W_hr | W_hh]"}, 7, H)}
    assert conformance._describe_init(blocks, layout)["recurrent weights"] == \
        "orthogonal (rows of the (H, 3H) kernel orthonormal)"
    # Stored transposed (torch's, Gluon's (3H, H)), the same matrix has orthonormal columns.
    layout_t = {"w": conformance._layout_entry({"shape": ["3H", "H"], "holds": "[W_hz | W_hr | W_hh]^T"}, 7, H)}
    assert conformance._describe_init(blocks, layout_t)["recurrent weights"] == \
        "orthogonal (columns of the (3H, H) kernel orthonormal)"


def test_separately_stored_orthogonal_blocks_are_each_orthogonal_and_their_concatenation_is_not_claimed() -> None:
    H = 8
    blocks = {n: _orthonormal_rows(H, H, seed=i) for i, n in enumerate(("W_hz", "W_hr", "W_hn"))}
    flax_like = {n: conformance._layout_entry({"shape": [H, H], "holds": n}, 7, H) for n in blocks}
    assert conformance._describe_init(blocks, flax_like)["recurrent weights"] == "orthogonal (each (H, H) kernel)"
    # One stored (H, 3H) kernel of three orthogonal blocks has rows of norm √3: not orthogonal.
    fused = {"rk": conformance._layout_entry({"shape": [H, 3 * H], "holds": "[W_hz | W_hr | W_hn]"}, 7, H)}
    assert not conformance._describe_init(blocks, fused)["recurrent weights"].startswith("orthogonal")


def test_a_truncated_normal_is_told_from_a_normal_and_a_uniform() -> None:
    """flax's lecun_normal is a normal cut at ±2σ (then rescaled); the table called it "normal"."""
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 0.2, (28, 64))
    cut = rng.normal(0, 1, (200_000,))
    cut = cut[np.abs(cut) < 2][: 28 * 64].reshape(28, 64) * 0.2
    uniform = rng.uniform(-0.07, 0.07, (28, 64))
    words = {name: conformance._describe_init({"W_xh": w})["input weights"]
             for name, w in (("normal", normal), ("cut", cut), ("uniform", uniform))}
    assert words["normal"].startswith("normal, std "), words
    assert words["cut"].startswith("truncated normal, std ") and "within ±0.4" in words["cut"], words
    assert words["uniform"].startswith("uniform ±0.0"), words


def test_a_uniform_bound_is_read_from_pooled_draws_without_the_largest_draws_shortfall() -> None:
    """One draw of torch's rnn holds 64 biases of U(±0.125): their max/std called ~4.6 % of such draws
    a truncated normal, and their largest value, 0.125 x 64/65 on average, was quoted as the bound
    ("±0.123"). The table pools INIT_DRAWS seeds (at 512 values the bare largest rounds to 0.125 too,
    so this checks the pooling; the (n+1)/n estimate is checked below)."""
    quoted = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        draws = [{"W_xh": np.full((2, 2), 0.1), "b_h": rng.uniform(-0.125, 0.125, 64)}
                 for _ in range(conformance.INIT_DRAWS)]
        text = conformance._describe_init(draws[0], None, draws[1:])["biases"]
        assert text.startswith("uniform ±"), (seed, text)
        quoted.append(float(text.split("±")[1]))
    assert abs(np.mean(quoted) - 0.125) < 0.0005, np.mean(quoted)  # pooling; the estimate: the test below


def test_a_uniform_bound_is_the_largest_draw_scaled_by_n_plus_1_over_n() -> None:
    """9 evenly spread values within ±0.1: the bare largest, 0.1, would be quoted as "±0.1"."""
    assert conformance._describe_init({"b_h": np.linspace(-0.1, 0.1, 9)})["biases"] == "uniform ±0.111"


def test_identical_draws_are_pooled_once_and_the_table_says_how_many_there_were() -> None:
    """A backend whose default_params ignores its seed: its copies would count the same values 8 times."""
    rng = np.random.default_rng(0)
    one = {"W_xh": rng.uniform(-0.1, 0.1, (4, 4)), "b_h": rng.uniform(-0.1, 0.1, 4)}
    other = {"W_xh": rng.uniform(-0.1, 0.1, (4, 4)), "b_h": rng.uniform(-0.1, 0.1, 4)}
    assert conformance.distinct_draws([one, dict(one), one, other]) == [one, other]
    row = {"framework": "mine", "asked": "rnn", "version": "1", "deviations": {"rnn": 0.0}, "computes": ["rnn"],
           "layout": {}, "init_shape": {"V": 28, "H": 64}, "init_draws": 1, "init": {"biases": "uniform ±0.1"}}
    assert "(from 1 distinct draw of 8 seeds)" in conformance.markdown([row])


def test_a_nonconstant_bias_beside_zero_ones_is_described_not_averaged() -> None:
    """A uniform b_h beside a zero b_hn read "zeros except b_h: -0.00127", its mean as if a constant."""
    draws = [{"W_xh": np.full((2, 2), 0.1), "b_h": np.random.default_rng(s).uniform(-0.1, 0.1, 64),
              "b_hn": np.zeros(64)} for s in range(8)]
    text = conformance._describe_init(draws[0], None, draws[1:])["biases"]
    assert text.startswith("zeros except b_h: uniform ±0.1"), text
    keras_like = [{"b_i": np.zeros(4), "b_f": np.ones(4)} for _ in range(2)]
    assert conformance._describe_init(keras_like[0], None, keras_like[1:])["biases"] == "zeros except b_f: 1"


def test_keras_recurrent_kernels_are_reported_orthogonal_as_keras_draws_them(measured: Any) -> None:
    rows, _, _ = measured("tensorflow")
    for cell, gates in (("gru", 3), ("gru-reset-after", 3), ("lstm", 4)):
        assert _row(rows, cell)["init"]["recurrent weights"] == \
            f"orthogonal (rows of the (H, {gates}H) kernel orthonormal)", cell
    assert _row(rows, "rnn")["init"]["recurrent weights"] == "orthogonal (the (H, H) kernel)"


def test_flax_recurrent_kernels_are_orthogonal_one_per_gate(measured: Any) -> None:
    rows, _, _ = measured("jax")
    for cell in ("gru-reset-after", "lstm"):
        assert _row(rows, cell)["init"]["recurrent weights"] == "orthogonal (each (H, H) kernel)", cell


@pytest.mark.parametrize("framework, text", [("torch", "uniform ±0.125"), ("mxnet", "uniform ±0.07")])
def test_uniform_recurrent_weights_are_not_called_orthogonal(measured: Any, framework: str, text: str) -> None:
    rows, _, _ = measured(framework)
    for cell in ("gru-reset-after", "lstm", "rnn"):
        assert _row(rows, cell)["init"]["recurrent weights"] == text, cell


# --- 2. the shape the initialisers are drawn at is in the table ----------------------------------------


def test_the_table_names_the_shape_the_initialisers_are_drawn_at(measured: Any) -> None:
    rows, table, _ = measured("torch")
    header = _cells(table.splitlines()[0])
    assert header[-1].strip() == f"default initialisers ({conformance.INIT_DRAWS} draws at V = {conformance.V_INIT}, H = {conformance.H_INIT})"
    assert _row(rows, "lstm")["init_shape"] == {"V": conformance.V_INIT, "H": conformance.H_INIT}
    # torch's U(-1/√H, 1/√H) at H = 64: the quoted scale is the drawn shape's
    assert _row(rows, "lstm")["init"]["input weights"] == f"uniform ±{1 / np.sqrt(conformance.H_INIT):.3g}"


# --- 3. and 5. the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["bogus", "torch,pytroch", ","])
def test_an_unknown_or_empty_framework_list_is_one_line_and_exit_2(spec: str, capsys: pytest.CaptureFixture) -> None:
    assert conformance.main(["--frameworks", spec]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("multirnn.conformance: error: "), err
    assert all(name in err for name in ("numpy", "torch", "mxnet", "tensorflow", "jax")), err


def test_an_unknown_framework_exits_2_from_the_command_line() -> None:
    proc = run_cli("--frameworks", "bogus")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("multirnn.conformance: error: unknown framework 'bogus' in --frameworks; choose "
                                   "from numpy, torch, mxnet, tensorflow, jax (comma-separated)")


def test_a_framework_that_is_not_installed_is_a_row_and_exit_3_when_named(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(not_installed("mxnet"))  # mxnet "not installed"
    proc = run_cli("--frameworks", "mxnet",
                   env_extra={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 3, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[2].startswith("| mxnet | - | **not available**: Backend 'mxnet' ")
    assert "pip install 'multirnn[mxnet]'" in lines[2]


def _fake_child(missing: str) -> Any:
    def run(framework: str) -> list[dict[str, Any]]:
        if framework == missing:
            return [{"framework": framework, "unavailable": f"Backend {framework!r} needs {framework}"}]
        return [{"framework": framework, "asked": "rnn", "version": "1", "deviations": {"rnn": 0.0},
                 "computes": ["rnn"], "layout": {}, "init": {}}]
    return run


def test_a_missing_framework_fails_only_when_named_or_when_nothing_else_was_measured(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(conformance, "_run_child", _fake_child("mxnet"))
    assert conformance.main([]) == 0  # the default list: the others were measured
    assert "| mxnet | - | **not available**: Backend 'mxnet' needs mxnet | | |" in capsys.readouterr().out
    assert conformance.main(["--frameworks", "torch,mxnet"]) == 3
    assert conformance.main(["--frameworks", "torch"]) == 0
    monkeypatch.setattr(conformance, "FRAMEWORKS", ("mxnet",))
    assert conformance.main([]) == 3


def test_a_crash_or_a_layer_matching_no_variant_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conformance, "_run_child", lambda fw: [{"framework": fw, "error": "Segmentation fault"}])
    assert conformance.main(["--frameworks", "torch"]) == 1
    monkeypatch.setattr(conformance, "_run_child", lambda fw: [
        {"framework": fw, "asked": "gru", "deviations": {"gru": 0.1}, "computes": [], "layout": {}, "init": {}}])
    assert conformance.main(["--frameworks", "torch"]) == 1


def test_help_describes_the_tool_the_frameworks_option_and_the_exit_statuses(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        conformance.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Measure what each framework's own GRU, LSTM and tanh-RNN layer computes" in text
    assert "--frameworks LIST comma-separated frameworks to measure" in text
    assert "default: torch,mxnet,tensorflow,jax" in text
    for status in ("exit status: 0", "; 1 a framework's run crashed", "; 2 bad usage", "; 3 a framework named"):
        assert status in text, status


def test_an_unwritable_json_path_is_refused_before_measuring(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """It measured every framework, printed the table, then raised FileNotFoundError with a traceback."""
    assert conformance.main(["--frameworks", "torch", "--json", str(tmp_path / "missing" / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multirnn.conformance: error: --json ") and "cannot write there" in err, err
    (tmp_path / "afile").write_text("x")  # a file where the folder should be; a folder where the file should be
    assert conformance.main(["--frameworks", "torch", "--json", str(tmp_path / "afile" / "x.json")]) == 2
    assert "cannot write there" in capsys.readouterr().err
    assert conformance.main(["--frameworks", "torch", "--json", str(tmp_path)]) == 2
    assert "is a folder: name the file to write" in capsys.readouterr().err
    assert conformance.main(["--frameworks", "torch", "--json", ""]) == 2
    assert "--json '': name the file to write" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".write-test")]  # the probe is removed


# --- 4. reasons are quoted whole -------------------------------------------------------------------------


def test_numpys_reason_is_quoted_whole_and_exits_3() -> None:
    proc = run_cli("--frameworks", "numpy")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip().splitlines()[2] == ("| numpy | - | **not available**: numpy has no 'layers' implementation "
                                                   "(it has: scratch); it is the oracle, written from scratch | | |")


def test_an_unsupported_cell_quotes_the_reason_without_the_class_name(measured: Any) -> None:
    _, table, _ = measured("torch")
    line = next(ln for ln in table.splitlines() if ln.startswith("| torch | gru |"))
    assert "**unsupported**: torch.nn.GRU applies the reset gate after the recurrent matmul" in line
    assert "TorchLayersBackend" not in line


# --- 6. shapes are symbolic everywhere -------------------------------------------------------------------


@pytest.mark.parametrize("framework", conformance.FRAMEWORKS)
def test_every_parameter_shape_is_in_the_letters_v_and_h(measured: Any, framework: str) -> None:
    rows, _, status = measured(framework)
    assert status == 0
    for r in rows:
        for name, entry in r.get("layout", {}).items():
            shape = entry["shape"]
            if len(shape) == 2 and shape[0] == "2" and name.endswith("/bias"):  # Keras' reset-after GRU: 2 bias rows
                shape = shape[1:]
            assert shape and all(re.fullmatch(r"V|\d*H", d) for d in shape), (framework, name, entry["shape"])


def test_keras_and_flax_shapes_read_like_torchs(measured: Any) -> None:
    _, tf_table, _ = measured("tensorflow")
    assert "`gru/gru_cell/kernel` (V, 3H): [W_xz \\| W_xr \\| W_xh]" in tf_table
    assert "`gru/gru_cell/recurrent_kernel` (H, 3H)" in tf_table
    _, jax_table, _ = measured("jax")
    assert "`params/rnn0/cell/i/kernel` (V, H): W_xh" in jax_table
    _, torch_table, _ = measured("torch")
    assert "`rnn.weight_hh_l0` (4H, H): [W_hi \\| W_hf \\| W_hc \\| W_ho]^T" in torch_table


# --- 7. every slice held at zero says so; cells stay cells ------------------------------------------------


@pytest.mark.parametrize("framework", conformance.FRAMEWORKS)
def test_every_entry_with_a_slice_held_at_zero_says_so(measured: Any, framework: str) -> None:
    _, table, _ = measured(framework)
    rows = [_cells(ln) for ln in table.strip().splitlines()[2:]]
    assert all(len(cells) == 5 for cells in rows), table
    entries = [e for cells in rows for e in cells[3].split("<br>")]
    zero = [e for e in entries if re.search(r"(?:: |\[|\\\| )0(?: |\]|$)", e)]
    if framework in ("torch", "mxnet", "tensorflow"):  # their layers' second biases d2l lacks
        assert zero, table
    for e in zero:
        assert "held at 0" in e, e


def test_torchs_reset_after_hidden_bias_says_its_zero_rows_are_held(measured: Any) -> None:
    _, table, _ = measured("torch")
    assert ("`rnn.bias_hh_l0` (3H): [0 \\| 0 \\| b_hn] (the 0 rows are held at 0: their gradient is zeroed "
            "before clipping and SGD)") in table


@pytest.mark.parametrize("framework", conformance.FRAMEWORKS)
def test_every_table_line_has_five_cells(measured: Any, framework: str) -> None:
    _, table, _ = measured(framework)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(CELLS)
    assert all(len(_cells(ln)) == 5 for ln in lines), [ln for ln in lines if len(_cells(ln)) != 5]


def test_a_nan_deviation_is_strict_json_from_the_child_and_a_readable_cell(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    row = {"framework": "torch", "asked": "rnn", "version": "x", "deviations": {"rnn": float("nan")},
           "computes": [], "layout": {}, "init": {}}
    monkeypatch.setattr(conformance, "measure_framework", lambda framework: [row])
    assert conformance.main(["--child", "torch"]) == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the child's JSON")

    parsed = json.loads(capsys.readouterr().out, parse_constant=refuse)  # NaN/Infinity would raise
    assert parsed[0]["deviations"] == {"rnn": None}
    assert "**none of the variants** (rnn NaN)" in conformance.markdown(parsed)


def test_a_stopped_conformance_run_keeps_what_it_measured_and_leaves_no_child(tmp_path):
    """Ctrl-C was a bare KeyboardInterrupt traceback that lost the frameworks already measured; SIGTERM left the
    framework's child running, reparented to init."""
    import signal
    import time

    for name in ("torch", "jax", "tensorflow"):
        require_backend(name)
    out = tmp_path / "c.json"
    mark = f"MULTIRNN_TEST_MARK={tmp_path.name}"  # inherited by the child: finds it among other tests' processes
    proc = subprocess.Popen([sys.executable, "-m", "multirnn.conformance", "--frameworks", "torch,jax,tensorflow",
                             "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "MULTIRNN_TEST_MARK": tmp_path.name})
    time.sleep(4)  # torch's child is measuring (the three take ~20 s here)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    assert "stopped by SIGTERM; the frameworks measured before it are above" in stderr
    rows = json.loads(out.read_text())
    assert rows["stopped"] == "SIGTERM"
    assert [r["framework"] for r in rows["rows"]][-1] == "tensorflow"  # the rest are rows that say why
    assert "stopped by SIGTERM before it was measured" in stdout
    def marked() -> list[str]:
        found = []
        for env in Path("/proc").glob("[0-9]*/environ"):
            try:
                if mark.encode() in env.read_bytes().split(b"\0"):
                    found.append(env.parent.name)
            except OSError:  # ended meanwhile, or not ours to read
                continue
        return found

    deadline = time.monotonic() + 10
    while marked() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked() == [], "the framework's child outlived the stopped run"
