"""What the terminal table and the plots show a reader: report.py on the results of one tiny real run
(the oracle and a copy of it), edited per test to the case at hand."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from multirnn import report
from tests.test_compare import TINY, compare, load

COPY = "tests.zoo:OracleCopy"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("report") / "run"
    proc = compare(["--backends", f"numpy,{COPY}", *TINY, "--lockstep", "1", "--eval-text", "war_of_the_worlds",
                    "--no-plot", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return load(out)


@pytest.fixture
def results(base: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(base)


def _judgement(results: dict[str, Any]) -> dict[str, Any]:
    return next(b for b in results["backends"] if b["name"] == COPY)["judgement"]


class _KeepFigures:
    """A pyplot stand-in that keeps the figures the report closes, to look at what was drawn."""

    def __init__(self) -> None:
        matplotlib = pytest.importorskip("matplotlib", reason="matplotlib draws the plots")
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.figs = plt, []

    def subplots(self, *args: Any, **kwargs: Any) -> Any:
        return self.plt.subplots(*args, **kwargs)

    def close(self, fig: Any) -> None:
        self.figs.append(fig)


def _draw(plot: Any, results: dict[str, Any], tmp_path: Path) -> list[Any]:
    keep = _KeepFigures()
    plot(results, tmp_path / "plot.png", keep)
    fig = keep.figs[0]
    fig.canvas.draw()
    keep.plt.close(fig)
    return fig.axes


def _red_circles(ax: Any) -> list[tuple[float, float]]:
    return [tuple(p) for c in ax.collections if len(c.get_edgecolor()) and tuple(c.get_edgecolor()[0]) == (1, 0, 0, 1)
            for p in c.get_offsets()]


def _labels(ax: Any) -> list[str]:
    return ax.get_legend_handles_labels()[1]


# --- 5: the terminal table's re-anchored column ----------------------------------------------------


def test_the_reanchored_column_shows_the_worst_quantity_and_is_defined(results):
    j = _judgement(results)
    j.update(status="disagrees", max_loss_deviation=2e-4, max_norm_deviation=7.3e-3,
             first_crossing={"epoch": 2, "step": 40})
    text = report.terminal_report(results)
    row = next(ln for ln in text.splitlines() if ln.startswith(COPY))
    assert "7.3e-03 (norm)" in row and "2.0e-04" not in row
    legend = [ln for ln in text.splitlines() if ln.startswith("re-anchored dev:")]
    assert len(legend) == 1 and "relative deviation" in legend[0] and "band 0.001" in legend[0], text
    j.update(max_loss_deviation=3e-6, max_norm_deviation=1e-6)
    assert "3.0e-06 (loss)" in report.terminal_report(results)
    j.update(max_probe_ratio=4.0)  # a probe outside its band, the stretches inside theirs
    assert "4.0x band (probe)" in report.terminal_report(results)
    j.update(max_probe_ratio=1061875849.4)  # a float64 band of 4e-16: ten digits said nothing more
    assert "1.1e+09x band (probe)" in report.terminal_report(results)


# --- 6: red circles only on the panel whose quantity left its band -----------------------------------


def test_outside_band_circles_mark_only_the_quantity_outside(results, tmp_path):
    _judgement(results)["checkpoints"] = [
        {"epoch": 1, "loss_deviation": 2e-4, "norm_deviation": 7.3e-3, "probe_ratio": 0.1, "outside": True},
        {"epoch": 2, "loss_deviation": 1e-6, "norm_deviation": 1e-6, "probe_ratio": 3.0, "outside": True},
        {"epoch": 3, "loss_deviation": 1e-6, "norm_deviation": 1e-6, "probe_ratio": 0.1, "outside": False},
    ]
    ax_loss, ax_probe, _ = _draw(report.deviation_plot, results, tmp_path)
    assert _red_circles(ax_loss) == [pytest.approx((1, 7.3e-3))]  # the norm, not the in-band loss
    assert _red_circles(ax_probe) == [pytest.approx((2, 3.0))]


# --- 12: only the reference finished -----------------------------------------------------------------


def test_perplexity_plot_says_only_the_reference_finished(results, tmp_path):
    row = next(b for b in results["backends"] if b["name"] == COPY)
    row.update(status="crashed", perplexity=[], eval_perplexity=None)
    _, ax_diff = _draw(report.perplexity_plot, results, tmp_path)
    texts = [t.get_text() for t in ax_diff.texts]
    assert any("only the reference" in t for t in texts) and not any("no reference" in t for t in texts), texts


# --- 13: floors, checkpoint ticks, evaluation perplexity --------------------------------------------


def test_exact_zeros_drawn_at_the_floor_are_labelled(results, tmp_path):
    # the copy matches the oracle exactly: every deviation is 0
    ax_loss, ax_probe, ax_free = _draw(report.deviation_plot, results, tmp_path)
    for ax in (ax_loss, ax_probe, ax_free):
        assert "0 drawn at 1e-10" in _labels(ax), _labels(ax)
    _, ax_diff = _draw(report.perplexity_plot, results, tmp_path)
    assert "0 drawn at 1e-09" in _labels(ax_diff), _labels(ax_diff)


def test_an_empty_free_running_panel_says_why(results, tmp_path):
    for b in results["backends"]:
        b["free_run_deviation"] = []  # --init framework / independent: no curve to compare
    results["verdict"]["init"] = "framework"
    *_, ax_free = _draw(report.deviation_plot, results, tmp_path)
    assert not ax_free.lines and any("--init framework" in t.get_text() for t in ax_free.texts), ax_free.texts


def test_too_little_to_judge_still_plots_what_was_measured(results, tmp_path):
    """A reference that diverged before one whole stretch: rows are not-judged, but their probes and their
    one free-running step were measured and are drawn (a one-point line drew nothing)."""
    row = next(b for b in results["backends"] if b["name"] == COPY)
    row["judgement"]["status"] = "not-judged"
    for c in row["judgement"]["checkpoints"]:
        c.update(loss_deviation=None, norm_deviation=None)
    row["free_run_deviation"] = [7.2e-8]
    results["verdict"]["reference_diverged"] = {"how": "diverged", "epoch": 1, "step": 2, "whole_stretch": False}
    report.plot(results, tmp_path)
    assert (tmp_path / "deviation.png").is_file()
    ax_loss, _, ax_free = _draw(report.deviation_plot, results, tmp_path)
    assert any("no stretch judged: the reference diverged" in t.get_text() for t in ax_loss.texts)
    # one step: the row's own marker (a line draws nothing)
    assert [line.get_marker() for line in ax_free.lines] == [report._STYLES[1][0]] and list(ax_free.get_xticks()) == [0]


def test_checkpoint_panels_have_ticks_at_the_checkpoint_epochs(results, tmp_path):
    cps = _judgement(results)["checkpoints"]
    for c, epoch in zip(cps, (1, 7, 13)):
        c.update(epoch=epoch, loss_deviation=1e-6, norm_deviation=2e-6, probe_ratio=0.1)
    ax_loss, ax_probe, _ = _draw(report.deviation_plot, results, tmp_path)
    for ax in (ax_loss, ax_probe):
        assert list(ax.get_xticks()) == [1, 7, 13]


def test_evaluation_perplexity_is_plotted_when_measured(results, tmp_path):
    ax, _ = _draw(report.perplexity_plot, results, tmp_path)
    evals = [label for label in _labels(ax) if "eval" in label]
    assert evals == ["numpy (eval text)", f"{COPY} (eval text)"], _labels(ax)
    assert "war_of_the_worlds.txt" in ax.get_title(loc="left")
    for b in results["backends"]:
        b["eval_perplexity"] = None
    ax, _ = _draw(report.perplexity_plot, results, tmp_path)
    assert not [label for label in _labels(ax) if "eval" in label] and "war_of" not in ax.get_title(loc="left")


def test_a_framework_openblas_named_by_its_backend_is_said_in_the_report(results, tmp_path):
    """Which kernels a row's own OpenBLAS copy ran is part of its figures: the report says where multirnn chose."""
    row = results["backends"][-1]
    row["openblas"] = {"detected": "Prescott", "core": "Haswell"}
    expected = f"row {row['name']} ran its framework's own OpenBLAS copy on its Haswell kernels (that copy picked Prescott"
    assert any(expected in n for n in report.notes(results))
    assert expected in report.markdown_report(results, tmp_path)
    del row["openblas"]
    assert not any("own OpenBLAS" in n for n in report.notes(results))


def test_repeating_continuations_are_called_barely_trained_only_far_from_fitting_the_text(results):
    """A text of one letter: 'aaaa' at perplexity 1.04 is what a trained model writes, not an early one."""
    for b in results["backends"]:
        b["samples"] = {"a": "a" * 20}
        b["final_perplexity"] = 1.04
    assert report.barely_trained(results) is None
    results["backends"][0]["final_perplexity"] = 15.0
    assert report.barely_trained(results).startswith("the model is barely trained")


def test_a_one_epoch_run_is_plotted_on_whole_epochs_and_a_readable_range(results, tmp_path):
    """One epoch: ticks 0.945 ... 1.050, an axis zoomed until a 1.5e-7 difference filled it, an offset label."""
    for b in results["backends"]:
        b["perplexity"] = [19.845629 * (1 + (1.5e-7 if b["name"] != "numpy" else 0))]
        b.pop("val_perplexity", None)
    results["config"]["num_epochs"] = 1
    ax, ax_diff = _draw(report.perplexity_plot, results, tmp_path)[:2]
    assert list(ax_diff.get_xticks()) == [1]
    lo, hi = ax.get_ylim()
    assert hi / lo >= 1.2
    assert not ax.yaxis.get_major_formatter().get_offset()
    cfg = results["config"]
    assert f"hidden {cfg['num_hiddens']}, batch {cfg['batch_size']} x {cfg['num_steps']} steps" in ax.get_title(loc="left")


def test_the_plot_says_which_run_it_shows(results, tmp_path):
    """A saved perplexity.png named neither the preset, the epochs, the sampling nor the text."""
    results["options"].update(preset="quick", text=None, tokens={"used": 10000, "total": 170580, "eval": None})
    results["config"].update(num_epochs=60, sampling="random")
    title = _draw(report.perplexity_plot, results, tmp_path)[0].get_title(loc="left")
    assert "preset quick, 60 epochs\non The Time Machine (bundled), 10,000 tokens" in title, title
    assert "random sampling" in title, title


def test_the_plot_names_a_two_bias_model_and_the_initialisers(results, tmp_path):
    results["config"].update(cell="lstm", second_bias="trained")
    results["options"]["init"] = "framework"
    ax, ax_diff = _draw(report.perplexity_plot, results, tmp_path)[:2]
    assert "lstm (two biases)" in ax.get_title(loc="left") and "init framework" in ax.get_title(loc="left")
    assert "a gap, not a deviation" in ax_diff.get_title(loc="left")


def test_the_second_bias_note_tells_close_numbers_apart():
    """17.91613 against 17.91631 read "17.916 against 17.916 (0.00% apart; at most 0.00%)"."""
    assert report._distinct(17.91613, 17.91631) == ("17.9161", "17.9163")
    assert report._distinct(8.5851, 8.2643) == ("8.585", "8.264")
    assert report._percent(1.0e-5) == "0.001%" and report._percent(0.0389) == "3.89%"


def test_the_machine_line_says_which_host_it_describes(results, tmp_path):
    """A sweep group's rows that ran on several Ray nodes (sweep_report.group_machine)."""
    assert "hosts" not in report.markdown_report(results, tmp_path).split("Machine:")[1].splitlines()[0]
    results["machine"].update(hosts=["n1", "n2"], described_host="n1")
    line = "Machine:" + report.markdown_report(results, tmp_path).split("Machine:")[1].splitlines()[0]
    assert line.endswith("(the rows ran on 2 hosts, n1, n2; this line is n1's)"), line
    results["machine"]["described_host"] = None
    assert "this line is the sweep driver's" in report.markdown_report(results, tmp_path)


def test_the_perplexity_plot_names_a_disagreeing_or_diverged_row(results, tmp_path):
    """A disagreeing row's lower curve read as better training, a diverged one's end as a run that stopped."""
    copy = next(b for b in results["backends"] if b["name"] == COPY)
    copy["judgement"].update(status="disagrees")
    ax, ax_diff = _draw(report.perplexity_plot, results, tmp_path)
    assert f"{COPY} (train): DISAGREES" in _labels(ax) and f"{COPY}: DISAGREES" in _labels(ax_diff)
    copy["status"] = "diverged"
    ax, _ = _draw(report.perplexity_plot, results, tmp_path)
    assert f"{COPY} (train): DISAGREES, diverged (X: its last epoch)" in _labels(ax)
    assert any(line.get_marker() == "X" for line in ax.get_lines())


def test_after_the_reference_blew_up_nothing_is_compared(results, tmp_path):
    """The relative differences went on to 1e20 after the oracle's blow-up, and the free-run column's 0.0e+00
    (one step compared) read as identical curves."""
    results["verdict"]["reference_diverged"] = {"epoch": 2, "step": 1, "name": "numpy", "how": "blew up"}
    _, ax_diff = _draw(report.perplexity_plot, results, tmp_path)
    drawn = [line for line in ax_diff.get_lines() if line.get_label() == COPY]
    assert drawn and max(drawn[0].get_xdata()) == 1  # epoch 1 only: epoch 2 is where it blew up
    assert any("blew up in epoch 2: not compared from there" in label for label in _labels(ax_diff))
    results["verdict"]["reference_diverged"]["epoch"] = 1
    _, ax_diff = _draw(report.perplexity_plot, results, tmp_path)
    assert not ax_diff.get_lines() and "blew up in epoch 1" in ax_diff.texts[0].get_text()
    row = next(ln for ln in report.terminal_report(results).splitlines() if ln.startswith(COPY))
    assert re.search(r"e[-+]\d\d \(to step \d+\)", row), row


def test_no_title_runs_off_the_figure(results, tmp_path):
    """A wide legend (a long row name tagged DISAGREES, diverged) narrowed the panels, and their centred titles
    began left of the figure ('elative difference from ...')."""
    copy = next(b for b in results["backends"] if b["name"] == COPY)
    copy["judgement"].update(status="disagrees")
    copy["status"] = "diverged"
    results["options"]["text"] = "/data/" + "W" * 150 + ".txt"  # the widest letter, in a name the title wraps
    for plot in (report.perplexity_plot, report.deviation_plot):
        keep = _KeepFigures()
        plot(results, tmp_path / "plot.png", keep)
        fig = keep.figs[0]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        titles = [t for ax in fig.axes for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
        assert titles
        for t in titles:
            assert t.get_window_extent(renderer).x0 >= 0, (plot.__name__, t.get_text())
            assert t.get_window_extent(renderer).x1 <= fig.bbox.width, (plot.__name__, t.get_text())
        keep.plt.close(fig)


def test_no_backend_is_drawn_in_the_red_of_bands_and_disagreements():
    """tensorflow's curves were tab:red, the colour of the band lines and the outside-the-band circles."""
    from matplotlib.colors import to_rgb

    red = to_rgb("red")
    for i, name in enumerate(["numpy", "torch", "mxnet", "tensorflow", "jax", "torch/layers", "fake", *"abcdefgh"]):
        r, g, b = to_rgb(report.row_color(name, i))
        assert not (r > 0.7 and g < 0.3 and b < 0.3), (name, report.row_color(name, i))
    assert to_rgb(report.row_color("tensorflow/layers", 3)) != red


def test_a_rows_note_reaches_the_report_not_only_the_start_up_lines(results, tmp_path):
    """The note naming MXNet's known float64 layer bug ('expect this row to disagree') was printed once at
    start-up; report.md and results.json said only 'mxnet/layers disagrees'."""
    note = "mxnet/layers: Gluon's rnn.RNN in float64 with 3 or more layers computes wrong gradients (apache/mxnet#18203)"
    results["options"]["row_notes"] = [note]
    assert note in report.notes(results)
    report.write_all(results, tmp_path, make_plots=False)
    assert note in (tmp_path / "report.md").read_text()
    assert note in report.terminal_report(results)


def test_a_note_led_by_a_rows_name_keeps_its_case():
    """"numpy has no 'layers' row" reached report.md as "Numpy has ..."."""
    assert report._sentence("numpy has no 'layers' row", {"numpy", "torch"}) == "numpy has no 'layers' row."
    assert report._sentence("mxnet/layers: a known bug", set()) == "mxnet/layers: a known bug."
    assert report._sentence("torch/layers runs oneDNN", {"torch"}) == "torch/layers runs oneDNN."
    assert report._sentence("the reference run clipped", {"numpy"}) == "The reference run clipped."


def test_plots_of_an_earlier_session_are_not_kept_or_embedded(results, tmp_path):
    """compare --resume --no-plot kept the interrupted session's perplexity.png (three rows of four), and
    report.md embedded it."""
    for name in ("perplexity.png", "deviation.png"):
        (tmp_path / name).write_bytes(b"an earlier session's plot")
    report.write_all(results, tmp_path, make_plots=False)
    assert not (tmp_path / "perplexity.png").exists() and not (tmp_path / "deviation.png").exists()
    assert ".png" not in (tmp_path / "report.md").read_text()


def test_a_diverged_rows_final_perplexity_names_its_epoch(results):
    """A diverged row's last finite epoch (1) sat in the column of the others' last epoch (2) unmarked."""
    row = next(b for b in results["backends"] if b["name"] == COPY)
    n = results["config"]["num_epochs"]
    assert n >= 2
    row.update(status="diverged", perplexity=row["perplexity"][:1], final_perplexity=row["perplexity"][0])
    cell = report.final_cell(row, results)
    assert cell.endswith("(epoch 1)"), cell
    assert "(epoch" not in report.final_cell(next(b for b in results["backends"] if b["name"] == "numpy"), results)
