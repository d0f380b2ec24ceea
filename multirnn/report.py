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

SCHEMA_VERSION = 2
COLUMNS = ("backend", "version", "status", "final ppl", "median last", "best ppl", "tokens/s",
           "1st epoch s", "peak MB", "checkpoints", "re-anchored dev", "free-run dev", "verdict")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verdict_cell(b: dict[str, Any]) -> str:
    j = b.get("judgement") or {}
    status = j.get("status")
    if status == "disagrees":
        c = j.get("first_crossing")
        if c:
            return f"DISAGREES (epoch {c['epoch']}" + (f", step {c['step']})" if c.get("step") else ", probe)")
        return "DISAGREES"
    return {"agrees": "agrees", "reference": "reference", "not-judged": "not judged"}.get(status, "-")


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for b in results["backends"]:
        j = b.get("judgement") or {}
        dev = j.get("max_loss_deviation")
        rows.append([
            b["name"], b.get("framework_version") or "-", b["status"],
            _fmt(b.get("final_perplexity"), ".3f"), _fmt(b.get("median_last_perplexity"), ".3f"),
            _fmt(b.get("best_perplexity"), ".3f"), _fmt(b.get("tokens_per_sec"), ",.0f"),
            _fmt(b.get("first_epoch_seconds"), ".2f"), _fmt(b.get("peak_rss_mb"), ".0f"),
            str(j["checkpoints_checked"]) if j.get("checkpoints_checked") else "-",
            _fmt(dev, ".1e"), _fmt(j.get("free_run_max_deviation"), ".1e"), verdict_cell(b),
        ])
    return rows


def bands_text(results: dict[str, Any]) -> str:
    """The bands that were applied, in one sentence."""
    v = results["verdict"]
    if v.get("reference") is None:
        return "No reference, so no band was applied."
    opts = results.get("options", {})
    if opts.get("lockstep") == "off":
        return (f"Re-anchored checks were off: free-running per-step losses were held to {v['step_rtol']:g} "
                f"(relative) of {v['reference_label']}.")
    every = opts.get("lockstep_every")
    return (f"Bands applied ({results['config']['dtype']}): re-anchored per-step loss {v['step_rtol']:g} and gradient "
            f"norm {v['norm_rtol']:g} (relative to {v['reference_label']}); probe updates {v['probe_rtol']:g} of the "
            f"update's size + {v['rounding']:.1e} of the parameter's size (rounding). Checkpoints every {every} "
            f"epoch{'s' if every != 1 else ''} ({len(opts.get('lockstep_epochs') or [])} in all).")


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
    parts = [text_table(table_rows(results)), "", f"Verdict: {v['summary']}", bands_text(results)]
    parts += [f"Note: {n}" for n in v.get("notes") or []]
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
        bands_text(results),
        *[f"\n{n[0].upper()}{n[1:]}." for n in v.get("notes") or []],
        "",
        "median last: median perplexity over the last 10 % of the epochs (at least 10); tokens/s: median over "
        "the epochs after the first; checkpoints: re-anchored checkpoints checked; re-anchored dev: worst relative "
        "per-step loss deviation over those stretches; free-run dev: worst relative deviation of the free-running "
        "loss curve (informational: over long float32 runs it measures chaos, not correctness).",
    ]
    crossings = [(b["name"], (b.get("judgement") or {}).get("reason")) for b in results["backends"]
                 if (b.get("judgement") or {}).get("status") == "disagrees"]
    if crossings:
        parts += ["", "## Disagreements", ""] + [f"- **{n}**: {r}" for n, r in crossings]
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

    if any((b.get("judgement") or {}).get("checkpoints") or b.get("free_run_deviation") for b in ran):
        deviation_plot(results, out_dir / "deviation.png", plt)
    return []


def deviation_plot(results: dict[str, Any], path: Path, plt: Any) -> None:
    """Re-anchored deviations per checkpoint against their bands (crossings marked), probe steps
    as a multiple of their band, and the free-running curves' deviation for context."""
    v, dtype = results["verdict"], results["config"]["dtype"]
    floor = 1e-10 if dtype == "float32" else 1e-17  # an exact match cannot be drawn on a log axis
    rows = [b for b in results["backends"] if (b.get("judgement") or {}).get("status") in ("agrees", "disagrees")]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=False)
    ax_loss, ax_probe, ax_free = axes
    markers = "osD^vP*X"
    for i, b in enumerate(rows):
        cps = b["judgement"].get("checkpoints") or []
        if not cps:
            continue
        epochs = [c["epoch"] for c in cps]
        m = markers[i % len(markers)]
        ax_loss.plot(epochs, [max(c["loss_deviation"], floor) for c in cps], marker=m, linewidth=0.8, markersize=4,
                     label=f"{b['name']} loss")
        ax_loss.plot(epochs, [max(c["norm_deviation"], floor) for c in cps], marker=m, linewidth=0.8, markersize=4,
                     linestyle="--", fillstyle="none", label=f"{b['name']} grad norm")
        ax_probe.plot(epochs, [max(c["probe_ratio"], floor) for c in cps], marker=m, linewidth=0.8, markersize=4,
                      label=b["name"])
        bad = [c for c in cps if c["outside"]]
        if bad:
            ax_loss.scatter([c["epoch"] for c in bad], [max(c["loss_deviation"], c["norm_deviation"], floor) for c in bad],
                            s=90, facecolors="none", edgecolors="red", linewidths=1.5, zorder=5)
            ax_probe.scatter([c["epoch"] for c in bad], [max(c["probe_ratio"], floor) for c in bad], s=90,
                             facecolors="none", edgecolors="red", linewidths=1.5, zorder=5)
    ax_loss.axhline(v["step_rtol"], color="red", linestyle=":", label=f"loss band {v['step_rtol']:g}")
    ax_loss.axhline(v["norm_rtol"], color="darkred", linestyle="-.", label=f"grad norm band {v['norm_rtol']:g}")
    ax_loss.set(yscale="log", xlabel="checkpoint (epoch)", ylabel="worst |x - ref| / ref in stretch",
                title=f"Re-anchored stretches vs {v.get('reference_label')} (red circles: outside the band)")
    ax_probe.axhline(1.0, color="red", linestyle=":", label="band")
    ax_probe.set(yscale="log", xlabel="checkpoint (epoch)", ylabel="deviation / band",
                 title="Probe steps (clipping on and off, half lr): worst update error as a multiple of its band")
    for b in [b for b in results["backends"] if b.get("free_run_deviation")]:
        if (b.get("judgement") or {}).get("status") == "reference":
            continue
        ax_free.plot([max(d, floor) for d in b["free_run_deviation"]], linewidth=0.7, label=b["name"])
    ax_free.set(yscale="log", xlabel="training step", ylabel="|loss - ref| / ref",
                title="Free-running curves (context only: chaos, not correctness, widens them)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(results: dict[str, Any], out_dir: Path, make_plots: bool = True) -> list[str]:
    """Write every report file into ``out_dir``; returns notes about anything left out."""
    notes = plot(results, out_dir) if make_plots else []
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "curves.csv", curves_csv(results))
    write_text_atomic(out_dir / "report.md", markdown_report(results, out_dir))
    return notes
