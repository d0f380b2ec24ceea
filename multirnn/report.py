"""Reports of a comparison run: results.json, report.md, curves.csv and plots.

Reads only plain data (the per-backend result dicts written by the workers), never a framework.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cells import CELLS, Model
from .config import batching_text
from .files import write_json_atomic, write_text_atomic

SCHEMA_VERSION = 2
# Greedy continuations with at most this many distinct characters look broken to a new user; on a
# model trained for a few epochs they are expected, and the report says so.
BARELY_TRAINED_DISTINCT = 2


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _ppl(value: Any) -> str:
    """A perplexity: three decimals, or three digits once it is astronomically large (a run blowing up)."""
    if isinstance(value, (int, float)) and math.isfinite(value) and abs(value) >= 1e6:
        return format(value, ".3g")
    return _fmt(value, ".3f")


def verdict_cell(b: dict[str, Any]) -> str:
    j = b.get("judgement") or {}
    status = j.get("status")
    if status == "disagrees":
        c = j.get("first_crossing")
        if c:
            return f"DISAGREES (epoch {c['epoch']}" + (f", step {c['step']})" if c.get("step") else ", probe)")
        return "DISAGREES"
    return {"agrees": "agrees", "reference": "reference", "not-judged": "not judged"}.get(status, "-")


def median_last_window(results: dict[str, Any]) -> int | None:
    """How many final epochs the 'median last' column spans, or None when that is the whole run."""
    n = results["config"]["num_epochs"]
    last = max(10, n // 10)
    return last if last < n else None


def columns(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """The table's columns, each a (header, cell function); optional ones only when they say something."""
    backends = results["backends"]
    cols: list[tuple[str, Any]] = [
        ("backend", lambda b: b["name"]),
        ("version", lambda b: b.get("framework_version") or "-"),
        ("status", lambda b: b["status"]),
        ("final ppl", lambda b: _ppl(b.get("final_perplexity"))),
    ]
    window = median_last_window(results)
    if window:
        cols.append((f"median last {window}", lambda b: _ppl(b.get("median_last_perplexity"))))
    cols.append(("best ppl", lambda b: _ppl(b.get("best_perplexity"))))
    if any(b.get("val_perplexity") for b in backends):
        cols.append(("val ppl", lambda b: _ppl((b.get("val_perplexity") or [None])[-1])))
    if any(b.get("eval_perplexity") is not None for b in backends):
        cols.append(("eval ppl", lambda b: _ppl(b.get("eval_perplexity"))))
    cols += [
        ("tokens/s", lambda b: _fmt(b.get("tokens_per_sec"), ",.0f")),
        ("1st epoch s", lambda b: _fmt(b.get("first_epoch_seconds"), ".2f")),
        ("peak MB", lambda b: _fmt(b.get("peak_rss_mb"), ".0f")),
        ("checkpoints", lambda b: str((b.get("judgement") or {}).get("checkpoints_checked") or "-")),
        ("re-anchored dev", lambda b: _fmt((b.get("judgement") or {}).get("max_loss_deviation"), ".1e")),
        ("free-run dev", lambda b: _fmt((b.get("judgement") or {}).get("free_run_max_deviation"), ".1e")),
        ("verdict", verdict_cell),
    ]
    return cols


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = columns(results)
    return [h for h, _ in cols], [[f(b) for _, f in cols] for b in results["backends"]]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    return table(results)[1]


def bands_text(results: dict[str, Any]) -> str:
    """The bands that were applied, in one sentence."""
    v = results["verdict"]
    if v.get("reference") is None:
        return "No reference, so no band was applied."
    opts = results.get("options", {})
    if opts.get("lockstep") == "off":
        if v.get("init") == "independent":
            held = f"final perplexities were held to {v['independent_rtol']:.0%} of their median"
        elif v.get("init") == "framework":
            held = (f"only each run's median-last perplexity was compared, with the d2l model trained from the same "
                    f"weights, within {v['independent_rtol']:.0%}")
        else:
            held = f"free-running per-step losses were held to {v['step_rtol']:g} (relative) of {v['reference_label']}"
        return f"Re-anchored checks were off: {held}."
    every = opts.get("lockstep_every")
    planned = list(opts.get("lockstep_epochs") or [])
    count = f"{len(planned)} in all"
    div = v.get("reference_diverged")
    if div and div.get("epoch") is not None:
        reached = sum(1 for e in planned if e <= div["epoch"])
        count = f"{len(planned)} planned, {reached} before {v['reference_label']} diverged"
    return (f"Bands applied ({results['config']['dtype']}): re-anchored per-step loss {v['step_rtol']:g} and gradient "
            f"norm {v['norm_rtol']:g} (relative to {v['reference_label']}); probe updates {v['probe_rtol']:g} of the "
            f"update's size + {v['rounding']:.1e} of the parameter's size (rounding). Checkpoints every {every} "
            f"epoch{'s' if every != 1 else ''} ({count}).")


def config_text(results: dict[str, Any]) -> str:
    c, o = results["config"], results.get("options", {})
    tokens = o.get("tokens") or {}
    text = Path(o["text"]).name if o.get("text") else "The Time Machine (bundled)"
    if c["protocol"] == "d2l-ed1" and tokens.get("total") and tokens.get("used", 0) < tokens["total"]:
        used = f"the first {tokens['used']:,} of its {tokens['total']:,} tokens (--max-tokens {c['max_tokens']})"
    elif c["protocol"] == "d2l-ed2":
        used = f"{c['num_train']:,} training and {c['num_val']:,} validation windows of its {tokens.get('total') or '?':,} characters"
    else:
        used = f"all {tokens.get('used', '?'):,} tokens"
    batching = batching_text(c["protocol"], c["sampling"])
    model = Model(CELLS[c.get("cell", "rnn")], c.get("num_layers", 1), c.get("second_bias") == "trained").name
    out = (f"{c['protocol']}, {model}, {plural(c['num_epochs'], 'epoch')}, batch {c['batch_size']} x {c['num_steps']} steps, "
           f"hidden {c['num_hiddens']}, lr {c['lr']:g}, θ {c['max_grad_norm']:g}, {batching}, {c['dtype']}, "
           f"seed {c['seed']}, init {o.get('init')}, mode {o.get('mode')}; text: {text}, {used}")
    if o.get("eval_text"):
        out += f"; evaluated on {Path(o['eval_text']).name} ({tokens.get('eval') or '?':,} tokens)"
    return out


def plural(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def text_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def samples_text(results: dict[str, Any]) -> str:
    lines = []
    width = max((len(b["name"]) for b in results["backends"]), default=10)
    # in the order the prompts were given (the JSON files keep their keys sorted)
    order = {p: i for i, p in enumerate(results.get("options", {}).get("prefixes") or [])}
    for b in results["backends"]:
        for prefix, text in sorted((b.get("samples") or {}).items(), key=lambda kv: order.get(kv[0], len(order))):
            lines.append(f"{b['name']:<{width}} {prefix!r:>17} -> {text!r}")
    return "\n".join(lines)


def barely_trained(results: dict[str, Any]) -> str | None:
    """A one-line explanation when the greedy continuations repeat one or two characters."""
    for b in results["backends"]:
        for prefix, text in (b.get("samples") or {}).items():
            tail = text[len(prefix):]
            if tail and len(set(tail)) <= BARELY_TRAINED_DISTINCT:
                return (f"the model is barely trained after {plural(results['config']['num_epochs'], 'epoch')}: its greedy "
                        "continuations repeat one or two characters (spaces, 't t t'), which is expected this early "
                        "and not a bug; train longer (--epochs) for words")
    return None


def errors_text(results: dict[str, Any]) -> str:
    lines = []
    for b in results["backends"]:
        if b.get("error"):
            lines.append(f"{b['name']}: {b['error']}")
            # where a Python-level crash was raised (the whole traceback is in results.json)
            frames = [ln.strip() for ln in (b.get("traceback") or "").splitlines() if ln.strip().startswith("File ")]
            if frames:
                lines.append(f"  raised at {frames[-1]} (traceback in results.json)")
    return "\n".join(lines)


def second_bias_text(results: dict[str, Any]) -> str | None:
    """How far the trained-second-bias model (the book's concise torch/Gluon code) drifts from d2l's."""
    one = results.get("options", {}).get("one_bias_context")
    two = next((b for b in results["backends"] if b["name"] == "numpy"), None)
    if not one or not two or not one.get("perplexity") or not two.get("perplexity"):
        return None
    n = min(len(one["perplexity"]), len(two["perplexity"]))
    diffs = [abs(a - b) / b for a, b in zip(two["perplexity"][:n], one["perplexity"][:n]) if math.isfinite(a) and b]
    return ("with --second-bias trained every gate's effective bias b + b_h moves at twice the rate and the clipping "
            "norm counts the bias gradient twice, so these rows are not d2l's single-bias model: measured in this run, "
            f"the two-bias oracle ends at perplexity {two['perplexity'][n - 1]:.3f} against {one['perplexity'][n - 1]:.3f} "
            f"for the single-bias one from the same weights and batches ({diffs[-1]:.2%} apart; at most {max(diffs):.2%} "
            "over the epochs)")


def notes(results: dict[str, Any]) -> list[str]:
    options = results.get("options", {})
    out = list(options.get("data_notes") or []) + list(options.get("run_notes") or [])
    if (sb := second_bias_text(results)) is not None:
        out.append(sb)
    out += list(results["verdict"].get("notes") or [])
    if (bt := barely_trained(results)) is not None:
        out.append(bt)
    return out


# What a narrow terminal drops first: detail that report.md keeps (never the verdict or the perplexity).
NARROW_DROP_ORDER = ("version", "peak MB", "1st epoch s", "best ppl", "free-run dev", "checkpoints", "tokens/s")


def fit_table(header: Sequence[str], rows: Sequence[Sequence[str]], width: int | None
              ) -> tuple[list[str], list[list[str]], list[str]]:
    """Leave out columns (in ``NARROW_DROP_ORDER``) until the text table fits ``width``; what was left out."""
    header, rows, dropped = list(header), [list(r) for r in rows], []
    for name in NARROW_DROP_ORDER:
        if width is None or max(map(len, text_table(rows, header).splitlines())) <= width:
            break
        if name in header:
            i = header.index(name)
            del header[i]
            for r in rows:
                del r[i]
            dropped.append(name)
    return header, rows, dropped


def terminal_report(results: dict[str, Any], width: int | None = None) -> str:
    """The console summary; with ``width`` (a terminal's), the table leaves out detail to fit it."""
    v = results["verdict"]
    header, rows, dropped = fit_table(*table(results), width)
    parts = [f"Config: {config_text(results)}", "", text_table(rows, header)]
    if dropped:
        parts.append(f"(left out to fit {width} columns: {', '.join(dropped)}; report.md has them)")
    parts += ["", f"Verdict: {v['summary']}", bands_text(results)]
    parts += [f"Note: {n}" for n in notes(results)]
    if samples_text(results):
        parts += ["", "Greedy continuations:", samples_text(results)]
    if errors_text(results):
        parts += ["", "Problems:", errors_text(results)]
    return "\n".join(parts)


def markdown_report(results: dict[str, Any], out_dir: Path) -> str:
    v = results["verdict"]
    header, rows = table(results)
    window = median_last_window(results)
    parts = [
        "# multirnn comparison",
        "",
        f"Command: `{results['command']}`  ",
        f"Config: {config_text(results)}  ",
        "Perplexities of the d2l-ed1 and d2l-ed2 protocols are not comparable with each other.  ",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs "
        f"({results['machine'].get('isa', '?')}"
        + (f", capped: {', '.join(f'{k}={v}' for k, v in results['machine']['isa_caps'].items())}"
           if results["machine"].get("isa_caps") else "") + f"), Python {results['machine']['python']}, "
        f"multirnn {results.get('multirnn_version', '?')}",
        "",
        "## Verdict",
        "",
        f"**{v['status']}** — {v['summary']}",
        "",
        markdown_table(rows, header),
        "",
        bands_text(results),
        *[f"\n{n[0].upper()}{n[1:]}." for n in notes(results)],
        "",
        (f"median last {window}: median perplexity over the last {window} epochs (one spiking epoch does not "
         "decide); " if window else "")
        + "tokens/s: median over the epochs after the first; checkpoints: re-anchored checkpoints checked; "
        "re-anchored dev: worst relative per-step loss deviation over those stretches; free-run dev: worst relative "
        "deviation of the free-running loss curve (informational: over long float32 runs it measures chaos, not "
        "correctness).",
    ]
    crossings = [(b["name"], (b.get("judgement") or {}).get("reason")) for b in results["backends"]
                 if (b.get("judgement") or {}).get("status") == "disagrees"]
    if crossings:
        parts += ["", "## Disagreements", ""] + [f"- **{n}**: {r}" for n, r in crossings]
    if samples_text(results):
        parts += ["", "## Greedy continuations", "", "```", samples_text(results), "```"]
    if errors_text(results):
        parts += ["", "## Problems", "", "```", errors_text(results), "```"]
    for name, title in (("perplexity.png", "Perplexity per epoch"), ("deviation.png", "Deviations from the reference")):
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


# --- plots -----------------------------------------------------------------------------------------

_STYLES = [("o", "-"), ("s", "--"), ("D", "-."), ("^", ":"), ("v", "-"), ("P", "--"), ("*", "-."), ("X", ":")]


def _style(i: int, n_points: int) -> dict[str, Any]:
    """One backend's look in every panel: its own colour, line style and hollow marker, markers
    shrinking from one backend to the next, so that curves lying exactly on top of each other
    still show every backend (concentric markers)."""
    marker, line = _STYLES[i % len(_STYLES)]
    every = max(1, n_points // 15)
    return {"color": f"C{i % 10}", "marker": marker, "linestyle": line, "markevery": (i % every, every),
            "markersize": max(11 - 2.5 * i, 3), "fillstyle": "none", "markeredgewidth": 1.2, "linewidth": 1.3}


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _log_ticks(ax: Any) -> None:
    """Ticks at 1, 2, 5 x 10^k with plain numbers: a perplexity axis spanning 8-30 gets 10, 20.

    Over more than four decades (a run blowing up to 1e100) matplotlib's own powers of ten stay:
    plain numbers there had no tick at all."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo > 1e4:
        return
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(NullFormatter())


def perplexity_plot(results: dict[str, Any], path: Path, plt: Any) -> None:
    """Perplexity per epoch, and each backend's relative difference from the reference per epoch."""
    ran = [b for b in results["backends"] if b.get("perplexity")]
    ref_name = results["verdict"].get("reference")
    ref = next((b for b in ran if b["name"] == ref_name), None)
    fig, (ax, ax_diff) = plt.subplots(2, 1, figsize=(8, 7), gridspec_kw={"height_ratios": [3, 2]}, sharex=True)
    for i, b in enumerate(ran):
        epochs = list(range(1, len(b["perplexity"]) + 1))
        ppl = [p if math.isfinite(p) else float("nan") for p in b["perplexity"]]
        ax.plot(epochs, ppl, label=f"{b['name']} (train)", **_style(i, len(epochs)))
        if b.get("val_perplexity"):
            ax.plot(epochs[:len(b["val_perplexity"])], b["val_perplexity"], label=f"{b['name']} (validation)",
                    **{**_style(i, len(epochs)), "linestyle": ":", "alpha": 0.8})
        if ref is not None and b is not ref:
            n = min(len(ppl), len(ref["perplexity"]))
            diff = [abs(ppl[k] - ref["perplexity"][k]) / ref["perplexity"][k] if math.isfinite(ref["perplexity"][k])
                    else float("nan") for k in range(n)]
            # an exact match has no place on a log axis: draw it at the floor, named in the axis label
            floor = 1e-9 if results["config"]["dtype"] == "float32" else 1e-16
            ax_diff.plot(epochs[:n], [max(d, floor) for d in diff], label=b["name"], **_style(i, n))
    ax.set(yscale="log", ylabel="perplexity", title=f"Perplexity per epoch ({results['config']['protocol']}, "
           f"{results['config']['dtype']})")
    _log_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if ref is not None and len(ran) > 1:
        ax_diff.set(yscale="log", ylabel="|ppl - ref| / ref\n(exact: bottom line)",
                    title=f"Relative difference from {results['verdict'].get('reference_label')} (same epoch)")
        ax_diff.grid(True, which="both", alpha=0.3)
        ax_diff.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax_diff.text(0.5, 0.5, "no reference to compare with", ha="center", va="center", transform=ax_diff.transAxes)
        ax_diff.set_yticks([])
    ax_diff.set_xlabel("epoch")
    _integer_epochs(ax_diff)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def deviation_plot(results: dict[str, Any], path: Path, plt: Any) -> None:
    """Re-anchored deviations per checkpoint against their bands (crossings marked), probe steps
    as a multiple of their band, and the free-running curves' deviation for context."""
    v, dtype = results["verdict"], results["config"]["dtype"]
    floor = 1e-10 if dtype == "float32" else 1e-17  # an exact match cannot be drawn on a log axis
    index = {b["name"]: i for i, b in enumerate(results["backends"])}  # the same style as in perplexity.png
    rows = [b for b in results["backends"] if (b.get("judgement") or {}).get("status") in ("agrees", "disagrees")]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9.5))
    ax_loss, ax_probe, ax_free = axes
    for b in rows:
        i = index[b["name"]]
        cps = b["judgement"].get("checkpoints") or []
        if not cps:
            continue
        epochs = [c["epoch"] for c in cps]
        st = _style(i, len(epochs))
        st.update(markevery=1)
        # a stretch that was not judged (the reference diverged in it) has no point: NaN leaves a gap
        stretch = lambda c, k: math.nan if c[k] is None else max(c[k], floor)  # noqa: E731
        ax_loss.plot(epochs, [stretch(c, "loss_deviation") for c in cps], label=f"{b['name']} loss", **st)
        ax_loss.plot(epochs, [stretch(c, "norm_deviation") for c in cps], label=f"{b['name']} grad norm",
                     **{**st, "linestyle": ":", "alpha": 0.7})
        ax_probe.plot(epochs, [max(c["probe_ratio"], floor) for c in cps], label=b["name"], **st)
        bad = [c for c in cps if c["outside"]]
        if bad:
            ax_loss.scatter([c["epoch"] for c in bad], [max(c["loss_deviation"] or 0.0, c["norm_deviation"] or 0.0, floor) for c in bad],
                            s=140, facecolors="none", edgecolors="red", linewidths=1.8, zorder=5)
            ax_probe.scatter([c["epoch"] for c in bad], [max(c["probe_ratio"], floor) for c in bad], s=140,
                             facecolors="none", edgecolors="red", linewidths=1.8, zorder=5)
    if v["step_rtol"] == v["norm_rtol"]:
        ax_loss.axhline(v["step_rtol"], color="red", linestyle="--", linewidth=1.2, label=f"band {v['step_rtol']:g}")
    else:
        ax_loss.axhline(v["step_rtol"], color="red", linestyle="--", linewidth=1.2, label=f"loss band {v['step_rtol']:g}")
        ax_loss.axhline(v["norm_rtol"], color="darkred", linestyle="-.", linewidth=1.2,
                        label=f"grad-norm band {v['norm_rtol']:g}")
    ax_loss.set(yscale="log", xlabel="checkpoint (epoch)", ylabel="worst |x - ref| / ref",
                title=f"Re-anchored stretches vs {v.get('reference_label')} (red circles: outside the band)")
    ax_probe.axhline(1.0, color="red", linestyle="--", linewidth=1.2, label="band")
    ax_probe.set(yscale="log", xlabel="checkpoint (epoch)", ylabel="deviation / band",
                 title="Probe steps (clipping on and off, half lr): worst update error / its band")
    for ax in (ax_loss, ax_probe):
        _integer_epochs(ax)
    for i, b in enumerate(results["backends"]):
        if not b.get("free_run_deviation") or (b.get("judgement") or {}).get("status") == "reference":
            continue
        ax_free.plot([max(d, floor) for d in b["free_run_deviation"]], linewidth=0.8, label=b["name"],
                     linestyle=_STYLES[i % len(_STYLES)][1], color=f"C{i % 10}")
    ax_free.set(yscale="log", xlabel="training step", ylabel="|loss - ref| / ref",
                title="Free-running curves (context only: chaos, not correctness, widens them)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    """perplexity.png and deviation.png; returns a note per plot that could not be made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib is not installed (pip install 'multirnn[report]'): no plots written"]
    if any(b.get("perplexity") for b in results["backends"]):
        perplexity_plot(results, out_dir / "perplexity.png", plt)
    judged = [b for b in results["backends"] if (b.get("judgement") or {}).get("status") in ("agrees", "disagrees")]
    if judged:
        deviation_plot(results, out_dir / "deviation.png", plt)
    return []


def write_all(results: dict[str, Any], out_dir: Path, make_plots: bool = True) -> list[str]:
    """Write every report file into ``out_dir``; returns notes about anything left out."""
    notes_out = plot(results, out_dir) if make_plots else []
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "curves.csv", curves_csv(results))
    write_text_atomic(out_dir / "report.md", markdown_report(results, out_dir))
    return notes_out
