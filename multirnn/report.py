"""Reports of a comparison run: results.json, report.md, curves.csv and plots.

Reads only plain data (the per-backend result dicts written by the workers), never a framework.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .worker import write_json_atomic, write_text_atomic

SCHEMA_VERSION = 1
COLUMNS = ("backend", "version", "status", "final ppl", "median last", "best ppl", "tokens/s",
           "1st epoch s", "peak MB", "max deviation", "verdict")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for b in results["backends"]:
        verdict = {True: "agrees", False: "DISAGREES", None: "-"}[b.get("agrees")]
        if b.get("agrees") is False and b.get("first_deviation_step"):
            verdict += f" (step {b['first_deviation_step']}, epoch {b['first_deviation_epoch']})"
        rows.append([
            b["name"], b.get("framework_version") or "-", b["status"],
            _fmt(b.get("final_perplexity"), ".3f"), _fmt(b.get("median_last_perplexity"), ".3f"),
            _fmt(b.get("best_perplexity"), ".3f"), _fmt(b.get("tokens_per_sec"), ",.0f"),
            _fmt(b.get("first_epoch_seconds"), ".2f"), _fmt(b.get("peak_rss_mb"), ".0f"),
            _fmt(b.get("max_deviation"), ".2e"), verdict,
        ])
    return rows


def text_table(rows: Sequence[Sequence[str]], header: Sequence[str] = COLUMNS) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(rows: Sequence[Sequence[str]], header: Sequence[str] = COLUMNS) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def samples_text(results: dict[str, Any]) -> str:
    lines = []
    for b in results["backends"]:
        for prefix, text in (b.get("samples") or {}).items():
            lines.append(f"{b['name']:<10} {prefix!r:>17} -> {text!r}")
    return "\n".join(lines)


def errors_text(results: dict[str, Any]) -> str:
    return "\n".join(f"{b['name']}: {b['error']}" for b in results["backends"] if b.get("error"))


def terminal_report(results: dict[str, Any]) -> str:
    v = results["verdict"]
    parts = [text_table(table_rows(results)), "", f"Verdict: {v['summary']}"]
    if samples_text(results):
        parts += ["", "Greedy continuations:", samples_text(results)]
    if errors_text(results):
        parts += ["", "Problems:", errors_text(results)]
    return "\n".join(parts)


def markdown_report(results: dict[str, Any], out_dir: Path) -> str:
    c, v = results["config"], results["verdict"]
    parts = [
        "# multirnn comparison",
        "",
        f"Command: `{results['command']}`  ",
        f"Protocol: **{c['protocol']}** (perplexities of d2l-ed1 and d2l-ed2 are not comparable)  ",
        f"Config: batch_size={c['batch_size']}, num_steps={c['num_steps']}, num_hiddens={c['num_hiddens']}, "
        f"lr={c['lr']}, max_grad_norm={c['max_grad_norm']}, num_epochs={c['num_epochs']}, sampling={c['sampling']}, "
        f"dtype={c['dtype']}, seed={c['seed']}  ",
        f"Initial weights: {results['options']['init']}; mode: {results['options']['mode']}; "
        f"device: {results['options']['device']}; text: {results['options']['text'] or 'The Time Machine (bundled)'}  ",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs, "
        f"Python {results['machine']['python']}",
        "",
        "## Verdict",
        "",
        f"**{v['status']}** — {v['summary']}",
        "",
        markdown_table(table_rows(results)),
        "",
        "median last: median perplexity over the last 10 % of the epochs (at least 10); "
        "tokens/s: median over the epochs after the first; max deviation: largest relative per-step loss "
        f"deviation from the reference ({v.get('reference_label', '-')}), tolerance {v.get('tolerance')}.",
    ]
    if any(b.get("eval_perplexity") is not None for b in results["backends"]):
        parts += ["", "## Perplexity on the evaluation text", ""]
        parts += [f"- {b['name']}: {b['eval_perplexity']:.3f}" for b in results["backends"] if b.get("eval_perplexity")]
    if samples_text(results):
        parts += ["", "## Greedy continuations", "", "```", samples_text(results), "```"]
    if errors_text(results):
        parts += ["", "## Problems", "", "```", errors_text(results), "```"]
    for name, title in (("perplexity.png", "Perplexity per epoch"), ("deviation.png", "Per-step deviation")):
        if (out_dir / name).exists():
            parts += ["", f"## {title}", "", f"![{title}]({name})"]
    return "\n".join(parts) + "\n"


def curves_csv(results: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["backend", "epoch", "perplexity", "val_perplexity", "epoch_seconds", "tokens_per_sec"])
    for b in results["backends"]:
        val = b.get("val_perplexity") or []
        for i, ppl in enumerate(b.get("perplexity") or []):
            w.writerow([b["name"], i + 1, ppl, val[i] if i < len(val) else "",
                        b["epoch_seconds"][i], b["tokens_per_sec_per_epoch"][i]])
    return buf.getvalue()


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    """perplexity.png and deviation.png; returns a note per plot that could not be made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib is not installed (pip install 'multirnn[report]'): no plots written"]
    ran = [b for b in results["backends"] if b.get("perplexity")]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, b in enumerate(ran):
        epochs = range(1, len(b["perplexity"]) + 1)
        # thinner lines on top: curves that agree overlap, and every one stays visible
        ax.plot(epochs, b["perplexity"], label=f"{b['name']} (train)", linewidth=2.6 - 0.4 * i)
        if b.get("val_perplexity"):
            ax.plot(epochs, b["val_perplexity"], linestyle="--", label=f"{b['name']} (validation)")
    ax.set(yscale="log", xlabel="epoch", ylabel="perplexity", title=f"Perplexity per epoch ({results['config']['protocol']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "perplexity.png", dpi=110)
    plt.close(fig)

    devs = [b for b in ran if b.get("deviation_per_step") and b["name"] != results["verdict"].get("reference")]
    if devs or results["verdict"].get("band_per_step"):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        # an exact match cannot be drawn on a log scale: draw it at a floor below any rounding error
        floor = 1e-10 if results["config"]["dtype"] == "float32" else 1e-17
        for b in devs:
            ax.plot([max(d, floor) for d in b["deviation_per_step"]], label=b["name"], linewidth=0.8)
        tol = results["verdict"].get("tolerance")
        if results["verdict"].get("band_per_step"):
            ax.plot(results["verdict"]["band_per_step"], color="red", linestyle=":", label="tolerance band")
            ax.plot([max(d, floor) for d in results["verdict"]["envelope_per_step"]], color="gray", linewidth=0.8,
                    label="float32 rounding envelope (oracle f32 vs f64)")
        elif isinstance(tol, float):
            ax.axhline(tol, color="red", linestyle=":", label=f"tolerance {tol:g}")
        ax.set(yscale="log", xlabel="training step", ylabel="|loss - reference| / reference",
               title=f"Per-step deviation from {results['verdict'].get('reference_label', 'reference')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "deviation.png", dpi=110)
        plt.close(fig)
    return []


def write_all(results: dict[str, Any], out_dir: Path, make_plots: bool = True) -> list[str]:
    """Write every report file into ``out_dir``; returns notes about anything left out."""
    notes = plot(results, out_dir) if make_plots else []
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "curves.csv", curves_csv(results))
    write_text_atomic(out_dir / "report.md", markdown_report(results, out_dir))
    return notes
