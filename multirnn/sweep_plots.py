"""The sweep's plots: perplexity bands across seeds per row, and a speed heat map."""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import report

MAX_PANELS = 12
MISSING = "no finished run"


def _partial(sweep: dict[str, Any]) -> set[int]:
    """The configurations whose figures leave seeds out (sweep.json's ``partial``)."""
    return {p["configuration"] for p in (sweep.get("partial") or {}).get("configurations", [])}


def plot_all(sweep: dict[str, Any], records: dict[str, Any], out: Path) -> tuple[list[str], list[str]]:
    """Draw perplexity_bands.png and speed_heatmap.png; returns (files written, notes)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ["matplotlib is not installed (pip install 'multirnn[report]'): no plots written"]
    files, notes = [], []
    if perplexity_bands(sweep, records, out / "perplexity_bands.png", plt, notes):
        files.append("perplexity_bands.png")
    if speed_heatmap(sweep, out / "speed_heatmap.png", plt):
        files.append("speed_heatmap.png")
    return files, notes


def _curves(sweep: dict[str, Any], records: dict[str, Any], conf: int, row: str) -> np.ndarray | None:
    """Per-epoch perplexity of every finished seed of a row (repeat 0), seeds x epochs; in a partial
    sweep, of the seeds where every row finished (as the statistics: the rows' bands cover the same seeds)."""
    complete = {(g["configuration"], g["seed"]) for g in sweep["groups"] if g["complete"]}
    curves = []
    for c in sweep["cells"]:
        if c["configuration"] == conf and c["row"] == row and c["repeat"] == 0 and c["status"] == "ok" \
                and (conf, c["seed"]) in complete:
            ppl = (records.get(c["id"]) or {}).get("result", {}).get("perplexity") or []
            curves.append([p if isinstance(p, (int, float)) and math.isfinite(p) else np.nan for p in ppl])
    if not curves:
        return None
    n = min(len(c) for c in curves)
    return np.array([c[:n] for c in curves], dtype=float) if n else None


def _disagreeing(sweep: dict[str, Any], conf: int, row: str) -> tuple[int, int]:
    """In how many of the configuration's judged seeds the row disagreed, of how many."""
    judged = [r for g in sweep["groups"] if g["configuration"] == conf for r in g.get("rows") or []
              if r.get("name") == row and r.get("judgement") in ("agrees", "disagrees")]
    return sum(r["judgement"] == "disagrees" for r in judged), len(judged)


def _unfinished(sweep: dict[str, Any], conf: int, row: str) -> str:
    """Why a row has no curve: its cells' statuses ('2 diverged'), not only that none finished."""
    statuses = Counter(c["status"] for c in sweep["cells"]
                       if c["configuration"] == conf and c["row"] == row and c["repeat"] == 0)
    return ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "not run"


def _perplexity_axis(ax: Any) -> None:
    """Log scale with plain-number ticks when perplexity spans a factor of 3 or more, linear otherwise."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo >= 3:
        ax.set_yscale("log")
        report._log_ticks(ax)
    report._integer_epochs(ax)


def perplexity_bands(sweep: dict[str, Any], records: dict[str, Any], path: Path, plt: Any, notes: list[str]) -> bool:
    """One panel per configuration: each row's mean perplexity per epoch over the seeds, with the
    band from the lowest to the highest seed."""
    confs = sweep["configurations"]
    if len(confs) > MAX_PANELS:
        notes.append(f"perplexity_bands.png shows the first {MAX_PANELS} of {len(confs)} configurations")
        confs = confs[:MAX_PANELS]
    cols = min(3, len(confs))
    rows = math.ceil(len(confs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols + 1.5, 3.6 * rows), squeeze=False)
    drawn = False
    labels_all: list[str] = []
    partial = _partial(sweep)
    for k, conf in enumerate(confs):
        ax = axes[k // cols][k % cols]
        missing = []
        for i, row in enumerate(conf["rows"]):
            curves = _curves(sweep, records, conf["index"], row)
            if curves is None:
                missing.append(row)
                continue
            drawn = True
            epochs = np.arange(1, curves.shape[1] + 1)
            color = report.row_color(row, i)  # its framework's colour, as in compare's plots
            bad, judged = _disagreeing(sweep, conf["index"], row)  # a wrong row's curve can look like better training
            with np.errstate(divide="ignore", invalid="ignore"):  # the table's geometric mean (sweep_report)
                line = np.exp(np.nanmean(np.log(curves), axis=0))
            ax.plot(epochs, line, color=color, linewidth=1.4,
                    linestyle=("-", "--", ":", "-.")[i % 4],
                    label=f"{row} (n={curves.shape[0]})" + (f": DISAGREES in {bad}/{judged} seeds" if bad else ""))
            if curves.shape[0] > 1:
                ax.fill_between(epochs, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=color, alpha=0.18,
                                linewidth=0)
            if row not in labels_all:
                labels_all.append(row)
        _perplexity_axis(ax)
        if len(missing) == len(conf["rows"]):  # an empty axis would read as a plotting failure
            why = "\n".join(f"{row}: {_unfinished(sweep, conf['index'], row)}" for row in missing)
            ax.text(0.5, 0.5, f"{MISSING}\n{why}", transform=ax.transAxes, ha="center", va="center", color="0.3",
                    fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        elif missing:  # named in the legend rather than silently absent
            for row in missing:
                ax.plot([], [], linestyle="none", label=f"{row}: {MISSING} ({_unfinished(sweep, conf['index'], row)})")
        ax.set_title(textwrap.fill(conf["label"] + (" (partial: some seeds unfinished)" if conf["index"] in partial
                                                    else ""), 60, break_on_hyphens=False), fontsize=9)  # long labels wrap, not cut
        ax.set_xlabel("epoch")
        ax.set_ylabel("perplexity")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for k in range(len(confs), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(("Partial sweep. " if partial else "")
                 + "Perplexity per epoch: geometric mean over seeds (line), lowest to highest seed (band)", fontsize=10)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def speed_heatmap(sweep: dict[str, Any], path: Path, plt: Any) -> bool:
    """Configurations (down) x rows (backend/impl, across): median tokens/s as a ratio to the fastest row of the
    configuration (colour), with the tokens/s written in each cell and, where seeds or repeats gave
    several timings, their min-max range (a ratio of 0.9 means little when the runs spread by 30 %)."""
    confs = sweep["configurations"]
    rows: list[str] = []
    for conf in confs:
        rows += [r for r in conf["rows"] if r not in rows]
    ratio = np.full((len(rows), len(confs)), np.nan)
    rate = np.full((len(rows), len(confs)), np.nan)
    spread: dict[tuple[int, int], str] = {}
    for s in sweep["speed"]["rows"]:
        if s["ratio_to_fastest"] is not None:
            i, j = rows.index(s["row"]), next(k for k, c in enumerate(confs) if c["index"] == s["configuration"])
            ratio[i, j], rate[i, j] = s["ratio_to_fastest"], s["median"]
            if s.get("n", 0) > 1 and s.get("min") is not None and s.get("max") is not None:
                spread[i, j] = f"\n[{s['min'] / 1000:.1f}-{s['max'] / 1000:.1f}]"
    if np.all(np.isnan(ratio)):
        return False
    # Configurations down, rows across: a configuration's label is long and reads level on the y axis;
    # across, 12 of them made a 20-inch strip under a band of slanted labels.
    partial = _partial(sweep)
    labels = [textwrap.fill(c["label"], 34, break_on_hyphens=False) + (" (partial)" if c["index"] in partial else "")
              for c in confs]
    lines = max(label.count("\n") + 1 for label in labels)
    cell_h = max(0.5, 0.17 * lines) if spread else max(0.42, 0.17 * lines)
    fig, ax = plt.subplots(figsize=(1.25 * len(rows) + 4.8, max(3.2, cell_h * len(confs) + 1.6)))
    im = ax.imshow(np.ma.masked_invalid(ratio.T), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(confs)):
            if not np.isnan(ratio[i, j]):
                ax.text(i, j, f"{rate[i, j] / 1000:.1f}k{spread.get((i, j), '')}\n{ratio[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if ratio[i, j] < 0.6 else "black")
            elif rows[i] in confs[j]["rows"]:  # a blank square would read as zero or as a drawing fault
                ax.text(i, j, MISSING, ha="center", va="center", fontsize=6, color="0.4")
    ax.set_yticks(range(len(confs)), labels, fontsize=8)
    ax.set_xticks(range(len(rows)), rows, rotation=20 if max(map(len, rows)) > 10 else 0, ha="right"
                  if max(map(len, rows)) > 10 else "center", fontsize=8)
    contended = "\ncontended timings: several cells ran at once" if sweep["speed"]["contended"] else ""
    ax.set_title(("Partial sweep. " if partial else "")
                 + ("Median tokens/s (k), [min-max] over seeds and repeats,\nand the ratio to each configuration's "
                    "fastest row" if spread else "Median tokens/s (k) and the ratio\nto each configuration's fastest row")
                 + contended, fontsize=9)
    fig.colorbar(im, ax=ax, label="ratio to fastest")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
