"""Reports of a comparison run: results.json, report.md, curves.csv and plots.

Reads only plain data (the per-backend result dicts written by the workers), never a framework.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cells import CELLS, Model
from .config import batching_text
from .data import text_label
from .files import write_json_atomic, write_text_atomic

SCHEMA_VERSION = 2
# Greedy continuations with at most this many distinct characters look broken to a new user; on a
# model trained for a few epochs they are expected, and the report says so.
BARELY_TRAINED_DISTINCT = 2
BARELY_TRAINED_PERPLEXITY = 3.0  # below it a model predicts its text well, whatever its continuations repeat


def openblas_note(machine: Mapping[str, Any]) -> str:
    """The Machine line's note where multirnn named NumPy's OpenBLAS kernels (``multirnn.blas``), else ''."""
    chosen = machine.get("openblas")
    if not chosen:
        return ""
    return (f"; NumPy's OpenBLAS ran its {chosen['core']} kernels (it picked {chosen['detected']} on this CPU; "
            "MULTIRNN_OPENBLAS=default leaves its choice)")


def _hosts_note(machine: Mapping[str, Any]) -> str:
    """Where a sweep group's rows ran on several hosts (Ray): which one the Machine line describes."""
    hosts = machine.get("hosts") or []
    if len(hosts) < 2:
        return ""
    which = f"{machine['described_host']}'s" if machine.get("described_host") else "the sweep driver's"
    return f" (the rows ran on {len(hosts)} hosts, {', '.join(hosts)}; this line is {which})"


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def format_ppl(value: Any) -> str:
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


def reanchored_cell(b: dict[str, Any], verdict: dict[str, Any]) -> str:
    """The worst re-anchored deviation and which quantity it is: the loss alone hid a row that failed on
    its gradient norm. Worst is taken relative to each quantity's band; a probe step shows only when it
    is outside its band (its number is a multiple of the band, not a relative deviation)."""
    j = b.get("judgement") or {}
    candidates = [(j.get("max_loss_deviation"), verdict.get("step_rtol") or 1.0, "loss"),
                  (j.get("max_norm_deviation"), verdict.get("norm_rtol") or 1.0, "norm")]
    # NaN (a blown-up stretch) ranks worst
    candidates = [(math.inf if math.isnan(dev) else dev / band, dev, what) for dev, band, what in candidates
                  if dev is not None]
    probe = j.get("max_probe_ratio")
    if probe is not None and not probe <= 1.0:
        candidates.append((math.inf if math.isnan(probe) else probe, probe, "probe"))
    if not candidates:
        return "-"
    _, dev, what = max(candidates, key=lambda c: c[0])  # ties: the first, the loss
    if what == "probe":  # a multiple of the band: 3.2x, or 1.1e+09x for a float64 band of 4e-16
        return f"{_fmt(dev, '.1f' if not dev >= 1e4 else '.1e')}x band (probe)"
    return f"{_fmt(dev, '.1e')} ({what})"


def free_run_cell(b: dict[str, Any], results: dict[str, Any]) -> str:
    """The free-running curve's worst deviation, and up to which step where the reference blew up (its 0.0e+00
    read as identical curves while the rows went on apart)."""
    j = b.get("judgement") or {}
    text = _fmt(j.get("free_run_max_deviation"), ".1e")
    if (results["verdict"].get("reference_diverged") and j.get("status") != "reference"
            and j.get("free_run_max_deviation") is not None):
        text += f" (to step {len(b.get('free_run_deviation') or ())})"
    return text


def reanchored_legend(results: dict[str, Any]) -> str | None:
    """What the 're-anchored dev' column means, or None when no row has a value in it."""
    v = results["verdict"]
    if not any((b.get("judgement") or {}).get("checkpoints_checked") for b in results["backends"]):
        return None
    bands = (f"band {v['step_rtol']:g}" if v["step_rtol"] == v["norm_rtol"]
             else f"bands {v['step_rtol']:g} (loss), {v['norm_rtol']:g} (norm)")
    return ("re-anchored dev: worst relative deviation |x - ref| / ref of the per-step loss or gradient norm (named) "
            f"from {v.get('reference_label')}, every backend restarted from the same weights at each checkpoint; "
            f"{bands}; 'Nx band (probe)': a probe step outside its band")


def median_last_window(results: dict[str, Any]) -> int | None:
    """How many final epochs the 'median last' column spans, or None when that is the whole run."""
    n = results["config"]["num_epochs"]
    last = max(10, n // 10)
    return last if last < n else None


def final_cell(b: dict[str, Any], results: dict[str, Any]) -> str:
    """The final perplexity; a row that stopped early (diverged) names the epoch it comes from, as it sits
    in one column with the other rows' last epochs."""
    text = format_ppl(b.get("final_perplexity"))
    done = len(b.get("perplexity") or [])
    if b.get("final_perplexity") is not None and b.get("status") == "diverged" and 0 < done < results["config"]["num_epochs"]:
        text += f" (epoch {done})"
    return text


def columns(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """The table's columns, each a (header, cell function); optional ones only when they say something."""
    backends = results["backends"]
    cols: list[tuple[str, Any]] = [
        ("backend", lambda b: b["name"]),
        ("version", lambda b: b.get("framework_version") or "-"),
        ("status", lambda b: b["status"]),
        ("final ppl", lambda b: final_cell(b, results)),
    ]
    window = median_last_window(results)
    if window:
        cols.append((f"median last {window}", lambda b: format_ppl(b.get("median_last_perplexity"))))
    cols.append(("best ppl", lambda b: format_ppl(b.get("best_perplexity"))))
    if any(b.get("val_perplexity") for b in backends):
        cols.append(("val ppl", lambda b: format_ppl((b.get("val_perplexity") or [None])[-1])))
    if any(b.get("eval_perplexity") is not None for b in backends):
        cols.append(("eval ppl", lambda b: format_ppl(b.get("eval_perplexity"))))
    cols += [
        ("tokens/s", lambda b: _fmt(b.get("tokens_per_sec"), ",.0f")),
        ("1st epoch s", lambda b: _fmt(b.get("first_epoch_seconds"), ".2f")),
        ("peak MB", lambda b: _fmt(b.get("peak_rss_mb"), ".0f")),
        ("checkpoints", lambda b: str((b.get("judgement") or {}).get("checkpoints_checked") or "-")),
        ("re-anchored dev", lambda b: reanchored_cell(b, results["verdict"])),
        ("free-run dev", lambda b: free_run_cell(b, results)),
        ("verdict", verdict_cell),
    ]
    return cols


def column_key(results: dict[str, Any], header: Sequence[str]) -> str:
    """What each of the table's columns (``header``) means, for report.md."""
    cfg = results["config"]
    ed2 = cfg.get("protocol") == "d2l-ed2"
    window = median_last_window(results)
    one_epoch = cfg.get("num_epochs") == 1
    eval_name = Path(str(results.get("options", {}).get("eval_text") or "the evaluation text")).name
    key = {
        "final ppl": "final ppl: training perplexity of the last epoch, exp of the mean token loss over its "
                     "minibatches while the weights still changed (of a row that diverged: its last finished "
                     "epoch's, named)",
        f"median last {window}": f"median last {window}: median training perplexity over the last {window} epochs "
                                 "(one spiking epoch does not decide)",
        "best ppl": "best ppl: the lowest training perplexity of any epoch",
        "val ppl": "val ppl: the last epoch's validation perplexity (the held-out windows, each from a zero state)",
        "eval ppl": f"eval ppl: the trained model's perplexity on {eval_name}, another text (out of domain: words "
                    "and style the model never saw), "
                    + ("every window of the training length, each from a zero state, as ed. 2 scores held-out text"
                       if ed2 else "read in order with the state carried, as ed. 1 reads its text")
                    + "; it can come out below the training perplexity, which averages an epoch of changing weights",
        "tokens/s": "tokens/s: " + ("the only epoch's, start-up and compilation included" if one_epoch else
                                    "median over the epochs after the first"),
        "1st epoch s": "1st epoch s: the first epoch's wall time, compilation and warm-up included",
        "peak MB": "peak MB: the worker process's peak resident memory",
        "checkpoints": "checkpoints: re-anchored checkpoints checked",
        "re-anchored dev": "re-anchored dev: worst relative per-step loss or gradient-norm deviation over those "
                           "stretches (which one is named; the worse for its band), or a probe step outside its "
                           "band as a multiple of it",
        "free-run dev": "free-run dev: worst relative deviation of the free-running loss curve (informational: over "
                        "long float32 runs it measures chaos, not correctness)",
    }
    return "; ".join(key[h] for h in header if h in key) + "."


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
            of = v.get("finals_center") or "their median"
            held = f"final perplexities were held to {v['independent_rtol']:.0%} of {of}"
        elif v.get("init") == "framework" and v.get("reference") != "numpy":
            held = "nothing was compared (the statistical test of --init framework needs numpy in --backends)"
        elif v.get("init") == "framework":
            held = (f"only each run's median-last perplexity was compared, with the d2l model trained from the same "
                    f"weights, within {v['independent_rtol']:.0%}")
        else:
            held = f"free-running per-step losses were held to {v['step_rtol']:g} (relative) of {v['reference_label']}"
        return f"Re-anchored checks were off: {held}."
    every = opts.get("lockstep_every")
    planned = list(opts.get("lockstep_epochs") or [])
    count = f"{len(planned)} in all"
    # a few checkpoints are named (--lockstep 100 of a 3-epoch run checks epochs 1 and 3, not "every 2 epochs")
    spacing = (f"at epoch{'s' if len(planned) != 1 else ''} {', '.join(map(str, planned))}" if 0 < len(planned) <= 6
               else f"every {every} epoch{'s' if every != 1 else ''}")
    div = v.get("reference_diverged")
    if div and div.get("epoch") is not None:
        reached = sum(1 for e in planned if e <= div["epoch"])
        how = div.get("how", "diverged")
        count = f"{len(planned)} planned, {reached} before {v['reference_label']} {how}"
    return (f"Bands applied ({results['config']['dtype']}): re-anchored per-step loss {v['step_rtol']:g} and gradient "
            f"norm {v['norm_rtol']:g} (relative to {v['reference_label']}); probe updates {v['probe_rtol']:g} of the "
            f"update's size + {v['rounding']:.1e} of the parameter's size (rounding). Checkpoints {spacing} ({count}).")


def config_text(results: dict[str, Any]) -> str:
    c, o = results["config"], results.get("options", {})
    tokens = o.get("tokens") or {}
    text = text_label(o.get("text"))
    if c["protocol"] == "d2l-ed1" and tokens.get("total") and tokens.get("used", 0) < tokens["total"]:
        used = f"the first {tokens['used']:,} of its {tokens['total']:,} tokens (--max-tokens {c['max_tokens']})"
    elif c["protocol"] == "d2l-ed2":
        used = (f"its first {c['num_train']:,} windows for training and the next {c['num_val']:,} for validation, "
                f"of its {tokens.get('total') or '?':,} characters")
    else:
        used = f"all {tokens.get('used', '?'):,} tokens"
    batching = batching_text(c["protocol"], c["sampling"])
    model = Model(CELLS[c.get("cell", "rnn")], c.get("num_layers", 1), c.get("second_bias") == "trained").name
    out = (f"{c['protocol']}, {model}, {plural(c['num_epochs'], 'epoch')}, batch {c['batch_size']} x {c['num_steps']} steps, "
           f"hidden {c['num_hiddens']}, lr {c['lr']:g}, θ {c['max_grad_norm']:g}, {batching}, {c['dtype']}, "
           f"seed {c['seed']}, init {o.get('init')}, mode {o.get('mode')}; text: {text}, {used}")
    if o.get("eval_text"):
        out += f"; evaluated on {text_label(o['eval_text'])} ({tokens.get('eval') or '?':,} tokens)"
    return out


def plural(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def text_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
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
    """A one-line explanation when the greedy continuations repeat one or two characters and the model is far
    from fitting its text (perplexity >= BARELY_TRAINED_PERPLEXITY: on a text of one letter, 'aaaa' at 1.04
    is what a trained model writes)."""
    for b in results["backends"]:
        if (b.get("final_perplexity") or math.inf) < BARELY_TRAINED_PERPLEXITY:
            continue
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
    a, b = _distinct(two["perplexity"][n - 1], one["perplexity"][n - 1])
    gates = ("every gate's effective bias b + b_h" if results["config"].get("cell") != "gru-reset-after" else
             "the update and reset gates' effective bias b + b_h (the candidate's b_hn is in the one-bias model too)")
    return (f"with --second-bias trained {gates} moves at twice the rate and the clipping "
            "norm counts the bias gradient twice, so these rows are not d2l's single-bias model: measured in this run, "
            f"the two-bias oracle ends at perplexity {a} against {b} "
            f"for the single-bias one from the same weights and batches ({_percent(diffs[-1])} apart; at most "
            f"{_percent(max(diffs))} over the epochs)")


def _percent(x: float) -> str:
    """A share as a percentage with 3 significant digits (0.00% said nothing of a 1e-5 difference)."""
    return "0%" if x == 0 else f"{100 * x:.3g}%" if 100 * x < 10 else f"{100 * x:.1f}%"


def _distinct(x: float, y: float) -> tuple[str, str]:
    """``x`` and ``y`` with 3 decimals, or as many more as tell them apart (up to 9)."""
    for digits in range(3, 10):
        a, b = f"{x:.{digits}f}", f"{y:.{digits}f}"
        if a != b:
            break
    return a, b


def _sentence(note: str, names: set[str] = frozenset()) -> str:
    """A note as a sentence of report.md; one led by a name keeps it as written: "mxnet/layers: ...",
    "--eval-text: ...", "numpy has no 'layers' row" (``names``: the run's rows and backends)."""
    first = note.split(" ", 1)[0]
    led_by_name = first.endswith(":") or first in names or first.split("/")[0] in names
    return f"{note if led_by_name else note[0].upper() + note[1:]}."


def notes(results: dict[str, Any]) -> list[str]:
    options = results.get("options", {})
    # row notes too: a layer's known framework bug ("expect this row to disagree") was said at start-up only
    out = (list(options.get("data_notes") or []) + list(options.get("row_notes") or [])
           + list(options.get("run_notes") or []))
    if (sb := second_bias_text(results)) is not None:
        out.append(sb)
    out += [f"the row {b['name']} ran its framework's own OpenBLAS copy on its {b['openblas']['core']} kernels "
            f"(that copy picked {b['openblas']['detected']} on this CPU; MULTIRNN_OPENBLAS=default leaves its choice)"
            for b in results.get("backends", []) if b.get("openblas")]
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
    if "re-anchored dev" in header and (legend := reanchored_legend(results)):
        parts.append(legend)
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
    names = {x for b in results["backends"] for x in (b["name"], b.get("backend")) if x}  # what leads a note as is
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
        f"multirnn {results.get('code_version') or results.get('multirnn_version', '?')}"
        + openblas_note(results["machine"]) + _hosts_note(results["machine"]),
        "",
        "## Verdict",
        "",
        f"**{v['status']}** — {v['summary']}",
        "",
        markdown_table(rows, header),
        "",
        bands_text(results),
        *[f"\n{_sentence(n, names)}" for n in notes(results)],
        "",
        column_key(results, header),
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
    # eval_perplexity: the final model's on --eval-text, one number, on the row of the last epoch
    w.writerow(["backend", "epoch", "perplexity", "val_perplexity", "epoch_seconds", "tokens_per_sec",
                "eval_perplexity"])
    for b in results["backends"]:
        val, ppls = b.get("val_perplexity") or [], b.get("perplexity") or []
        ev = b.get("eval_perplexity")
        for i, ppl in enumerate(ppls):
            w.writerow([b["name"], i + 1, ppl, val[i] if i < len(val) else "", b["epoch_seconds"][i],
                        b["tokens_per_sec_per_epoch"][i], ev if i == len(ppls) - 1 and ev is not None else ""])
    return buf.getvalue()


# --- plots -----------------------------------------------------------------------------------------

_STYLES = [("o", "-"), ("s", "--"), ("D", "-."), ("^", ":"), ("v", "-"), ("P", "--"), ("*", "-."), ("X", ":")]


# One colour per framework in every plot (compare's, the sweep's, the benchmarks'): torch was orange in one
# figure and blue in the next. A framework's rows (torch, torch/layers) share it and differ in marker and line.
# No framework is red: red is what the plots mark bands, disagreements and the floor with (tensorflow's red
# dotted curve read as a band line). Other backends take C5-C8.
FRAMEWORK_COLORS = {"numpy": "C0", "torch": "C1", "mxnet": "C2", "tensorflow": "C9", "jax": "C4"}


def row_color(name: str, i: int) -> str:
    """A row's colour: its framework's (``torch/layers`` is torch's), another backend's by its position."""
    return FRAMEWORK_COLORS.get(name.split("/")[0], f"C{5 + i % 4}")


def _style(i: int, n_points: int, name: str | None = None) -> dict[str, Any]:
    """One backend's look in every panel: its framework's colour, its own line style and hollow marker,
    markers shrinking from one backend to the next, so that curves lying exactly on top of each other
    still show every backend (concentric markers)."""
    marker, line = _STYLES[i % len(_STYLES)]
    every = max(1, n_points // 15)
    return {"color": row_color(name, i) if name else f"C{i % 10}", "marker": marker, "linestyle": line,
            "markevery": (i % every, every),
            "markersize": max(11 - 2.5 * i, 3), "fillstyle": "none", "markeredgewidth": 1.2, "linewidth": 1.3}


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _checkpoint_ticks(ax: Any, epochs: Sequence[int]) -> None:
    """Ticks on the checkpoint epochs themselves, so each marker reads off its checkpoint (locator ticks
    at 0, 8, 16 under checkpoints 1, 7, 13 did not); every k-th one labelled when there are many, every
    one still a minor tick."""
    ticks = sorted(set(epochs))
    if not ticks:
        _integer_epochs(ax)
        return
    ax.set_xticks(ticks[::max(1, math.ceil(len(ticks) / 12))])
    ax.set_xticks(ticks, minor=True)


def _at_floor(values: Sequence[float | None], floor: float, clamped: set[int], ax: Any) -> list[float]:
    """``values`` for a log axis: None as NaN (a gap), anything below ``floor`` (an exact 0) at it; the
    axis is remembered in ``clamped`` so that :func:`_floor_legend` can say so."""
    out = [math.nan if x is None else x for x in values]
    if any(x < floor for x in out):
        clamped.add(id(ax))
    return [x if math.isnan(x) else max(x, floor) for x in out]


def _floor_legend(ax: Any, floor: float, clamped: set[int]) -> None:
    """A legend entry (and faint line) where exact zeros were drawn: a log axis cannot show 0."""
    if id(ax) in clamped:
        ax.axhline(floor, color="grey", linestyle=":", linewidth=0.8, label=f"0 drawn at {floor:g}")


def _log_ticks(ax: Any) -> None:
    """Ticks at 1, 2, 5 x 10^k with plain numbers (8-300 gets 10, 20, 50, 100, 200), or evenly spaced ones
    where those would be fewer than four.

    Over more than four decades (a run blowing up to 1e100) matplotlib's own powers of ten stay:
    plain numbers there had no tick at all."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo > 1e4:
        return
    locator = LogLocator(base=10, subs=(1.0, 2.0, 5.0))
    if sum(lo <= t <= hi for t in locator.tick_values(lo, hi)) < 4:
        # a narrow range (10-24 got only 10 and 20; 1.01-1.4 only 1.0): evenly spaced plain numbers instead
        locator = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10])
    ax.yaxis.set_major_locator(locator)
    fmt = ScalarFormatter(useOffset=False)  # plain perplexities, never "+1.98e1" over tiny ticks
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(NullFormatter())


def _readable_range(ax: Any, least: float = 1.2) -> None:
    """A log axis spanning at least a factor ``least``: around one epoch's values matplotlib zoomed in until
    a 1.5e-7 difference filled the panel (two agreeing rows looked far apart) under an offset label."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < least:
        middle = math.sqrt(lo * hi)
        ax.set_ylim(middle / math.sqrt(least), middle * math.sqrt(least))


def _left_titles(*axes: Any) -> None:
    """Titles from each panel's left edge: centred over a panel narrowed by a wide legend (long row names,
    'DISAGREES, diverged' tags), they ran off the figure's left side."""
    for ax in axes:
        title = ax.get_title()
        if title:
            size = ax.title.get_fontsize()
            ax.set_title("")
            ax.set_title(title, loc="left", fontsize=size)


def _plot_tag(row: dict[str, Any], marked: bool = False) -> str:
    """What a legend entry says of a row beyond its name: a disagreeing curve looked like better training.
    ``marked``: the panel marks a diverged curve's last epoch with an X, and the tag says so."""
    tags = []
    if (row.get("judgement") or {}).get("status") == "disagrees":
        tags.append("DISAGREES")
    if row.get("status") in ("diverged", "crashed", "interrupted"):
        tags.append(row["status"] + (" (X: its last epoch)" if marked and row["status"] == "diverged" else ""))
    return f": {', '.join(tags)}" if tags else ""


def perplexity_plot(results: dict[str, Any], path: Path, plt: Any) -> None:
    """Perplexity per epoch, and each backend's relative difference from the reference per epoch."""
    ran = [b for b in results["backends"] if b.get("perplexity")]
    ref_name = results["verdict"].get("reference")
    ref = next((b for b in ran if b["name"] == ref_name), None)
    # an exact match has no place on a log axis: drawn at the floor, which the legend names
    floor = 1e-9 if results["config"]["dtype"] == "float32" else 1e-16
    clamped: set[int] = set()
    evaluated = False
    # after the reference blew up the curves measure chaos, not a translation: compared only before that epoch
    diverged = results["verdict"].get("reference_diverged") or {}
    blew_up, how = diverged.get("epoch"), diverged.get("how") or "diverged"
    compared_epochs = (blew_up - 1) if blew_up else None
    drawn_diff = 0
    fig, (ax, ax_diff) = plt.subplots(2, 1, figsize=(8, 7), gridspec_kw={"height_ratios": [3, 2]}, sharex=True)
    for i, b in enumerate(ran):
        epochs = list(range(1, len(b["perplexity"]) + 1))
        ppl = [p if math.isfinite(p) else float("nan") for p in b["perplexity"]]
        ax.plot(epochs, ppl, label=f"{b['name']} (train){_plot_tag(b, marked=True)}",
                **_style(i, len(epochs), b["name"]))
        if b.get("status") == "diverged" and (finite := [k for k, p in enumerate(ppl) if math.isfinite(p)]):
            # where its curve ends: the next epoch blew up (the curve alone read as a run that just stopped)
            ax.plot([epochs[finite[-1]]], [ppl[finite[-1]]], marker="X", markersize=11, linestyle="none",
                    color=_style(i, len(epochs), b["name"])["color"], markeredgecolor="black", zorder=5)
        if b.get("val_perplexity"):
            ax.plot(epochs[:len(b["val_perplexity"])], b["val_perplexity"], label=f"{b['name']} (validation)",
                    **{**_style(i, len(epochs), b["name"]), "linestyle": ":", "alpha": 0.8})
        ev = b.get("eval_perplexity")
        if isinstance(ev, (int, float)) and math.isfinite(ev):
            # one number, the final model's on --eval-text: a star just right of the last epoch (on it, it hid
            # behind the training curve's marker when the two perplexities were close), no line
            st = _style(i, len(epochs), b["name"])
            ax.plot([len(epochs) + 0.35], [ev], color=st["color"], marker="*", linestyle="none",
                    markersize=st["markersize"] + 4, fillstyle="none", markeredgewidth=1.2,
                    label=f"{b['name']} (eval text)")
            evaluated = True
        if ref is not None and b is not ref:
            n = min(len(ppl), len(ref["perplexity"]), *([compared_epochs] if compared_epochs is not None else []))
            if n <= 0:
                continue
            drawn_diff += 1
            diff = [abs(ppl[k] - ref["perplexity"][k]) / ref["perplexity"][k] if math.isfinite(ref["perplexity"][k])
                    else float("nan") for k in range(n)]
            ax_diff.plot(epochs[:n], _at_floor(diff, floor, clamped, ax_diff), label=b["name"] + _plot_tag(b),
                         **_style(i, n, b["name"]))
    cfg = results["config"]
    model = Model(CELLS[cfg.get("cell", "rnn")], cfg.get("num_layers", 1), cfg.get("second_bias") == "trained").name
    init = results.get("options", {}).get("init")
    opts = results.get("options", {})
    used = (opts.get("tokens") or {}).get("used")
    # what was trained on and for how long, so a saved image still says which run it shows
    text = text_label(opts.get("text")) + (f", {used:,} tokens" if isinstance(used, int) else "")
    preset = f"preset {opts['preset']}, " if opts.get("preset") else ""
    # the text on a line of its own, wrapped at a width that 50 of the widest letters (W) fit: a long
    # file name ran off the figure's right edge
    title = (f"Perplexity per epoch: {preset}{plural(cfg['num_epochs'], 'epoch')}\n"
             + textwrap.fill(f"on {text}", 50, break_on_hyphens=False) + "\n"
             f"({cfg['protocol']}, {cfg.get('sampling', '?')} sampling, {cfg['dtype']}; {model}, hidden {cfg['num_hiddens']}, batch "
             f"{cfg['batch_size']} x {cfg['num_steps']} steps, lr {cfg['lr']:g}"
             + (f", init {init}" if init and init != "shared" else "") + ")")
    if evaluated:  # the file named once here keeps the legend narrow
        eval_name = Path(results.get("options", {}).get("eval_text") or "--eval-text").name
        title += f"\nstars, right of the last epoch: the final model's perplexity on {eval_name}"
    ax.set(yscale="log", ylabel="perplexity")
    ax.set_title(title, fontsize=10)  # the configuration's line fits the figure's width
    _readable_range(ax)
    _log_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if ref is not None and len(ran) > 1 and drawn_diff:
        if blew_up:
            ax_diff.axvline(blew_up - 0.5, color="black", linestyle="--", linewidth=1,
                            label=f"{ref['name']} {how} in epoch {blew_up}: not compared from there")
        own_start = init in ("framework", "independent")  # other starting weights: gaps, not deviations
        ax_diff.set(yscale="log", ylabel="|ppl - ref| / ref",
                    title=f"Relative difference from {results['verdict'].get('reference_label')} (same epoch)"
                    + ({"framework": "\nlayer rows start from their framework's initialisers: a gap, not a deviation",
                        "independent": "\nevery row starts from its own weights: a gap, not a deviation"}[init]
                       if own_start else ""))
        _floor_legend(ax_diff, floor, clamped)
        ax_diff.grid(True, which="both", alpha=0.3)
        ax_diff.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        if ref is not None and blew_up and len(ran) > 1:
            why = (f"{results['verdict'].get('reference_label')} {how} in epoch {blew_up}:\nno epoch before it "
                   "to compare (after it the curves measure chaos)")
        elif ref is not None:  # the reference is the only curve: the others did not finish an epoch
            why = (f"only the reference ({results['verdict'].get('reference_label')}) finished: "
                   "nothing to compare with it")
        elif ref_name is not None:  # a per-step median is no curve of its own here
            why = f"the reference is {results['verdict'].get('reference_label')}: deviation.png compares with it"
        else:
            why = "no reference to compare with"
        ax_diff.text(0.5, 0.5, why, ha="center", va="center", transform=ax_diff.transAxes)
        ax_diff.set_yticks([])
    _left_titles(ax, ax_diff)
    ax_diff.set_xlabel("epoch")
    _integer_epochs(ax_diff)
    last = max((len(b["perplexity"]) for b in ran), default=1)
    ax_diff.set_xlim(0.5, last + (0.75 if evaluated else 0.5))
    if last < 4:  # the integer locator needs two integers in view: one epoch got ticks 0.5, 0.6, ... 1.5
        ax_diff.set_xticks(range(1, last + 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _checked(row: dict[str, Any]) -> bool:
    """Judged against the reference, or measured at checkpoints though too little to judge (a reference
    that diverged before one whole stretch): deviation.png shows what was measured."""
    j = row.get("judgement") or {}
    return j.get("status") in ("agrees", "disagrees") or (j.get("status") == "not-judged" and bool(j.get("checkpoints")))


def deviation_plot(results: dict[str, Any], path: Path, plt: Any) -> None:
    """Re-anchored deviations per checkpoint against their bands (crossings marked), probe steps
    as a multiple of their band, and the free-running curves' deviation for context."""
    v, dtype = results["verdict"], results["config"]["dtype"]
    floor = 1e-10 if dtype == "float32" else 1e-17  # an exact match cannot be drawn on a log axis
    index = {b["name"]: i for i, b in enumerate(results["backends"])}  # the same style as in perplexity.png
    rows = [b for b in results["backends"] if _checked(b)]
    # Taller panels for many rows (a legend entry each), wider for long names: 15 zoo rows overflowed the legends
    panel = max(3.0, 0.19 * (len(results["backends"]) + 3))
    longest = max((len(b["name"]) for b in results["backends"]), default=0)
    fig, axes = plt.subplots(3, 1, figsize=(8 + max(0, longest - 16) * 0.06, 3 * panel + 0.5))
    ax_loss, ax_probe, ax_free = axes
    clamped: set[int] = set()
    checkpoint_epochs: list[int] = []
    # Outside per quantity: a checkpoint's one "outside" flag circled every panel, even an in-band one.
    # None: a stretch not judged (the reference diverged in it); NaN counts as outside, as in the verdict.
    beyond = lambda x, band: x is not None and not x <= band
    circle = {"s": 140, "facecolors": "none", "edgecolors": "red", "linewidths": 1.8, "zorder": 5}
    for b in rows:
        i = index[b["name"]]
        cps = b["judgement"].get("checkpoints") or []
        if not cps:
            continue
        epochs = [c["epoch"] for c in cps]
        checkpoint_epochs += epochs
        st = _style(i, len(epochs), b["name"])
        st.update(markevery=1)
        # a stretch that was not judged (the reference diverged in it) has no point: NaN leaves a gap
        loss = _at_floor([c["loss_deviation"] for c in cps], floor, clamped, ax_loss)
        norm = _at_floor([c["norm_deviation"] for c in cps], floor, clamped, ax_loss)
        probe = _at_floor([c["probe_ratio"] for c in cps], floor, clamped, ax_probe)
        ax_loss.plot(epochs, loss, label=b["name"], **st)  # one legend entry per row: its norm is the dotted twin
        # thin, loosely dotted, small filled markers: a row's own line may be dotted too (tensorflow's is)
        ax_loss.plot(epochs, norm, label="_nolegend_", **{**st, "linestyle": (0, (1, 4)), "linewidth": 0.9,
                                                           "alpha": 0.7, "fillstyle": "full", "markersize": 3})
        ax_probe.plot(epochs, probe, label=b["name"], **st)
        marks: list[tuple[Any, int, float]] = []
        for k, c in enumerate(cps):
            flagged = [(ax, ys[k]) for ax, ys, x, band in ((ax_loss, loss, c["loss_deviation"], v["step_rtol"]),
                                                           (ax_loss, norm, c["norm_deviation"], v["norm_rtol"]),
                                                           (ax_probe, probe, c["probe_ratio"], 1.0)) if beyond(x, band)]
            if c["outside"] and not flagged:  # e.g. a stretch that stopped early: no value left its band
                flagged = [(ax_loss, max((y for y in (loss[k], norm[k]) if not math.isnan(y)), default=floor))]
            marks += [(ax, c["epoch"], y) for ax, y in flagged]
        for ax in (ax_loss, ax_probe):
            if pts := [(e, y) for a, e, y in marks if a is ax]:
                ax.scatter([e for e, _ in pts], [y for _, y in pts], **circle)
    if rows:
        ax_loss.plot([], [], color="gray", linestyle=(0, (1, 4)), linewidth=0.9, marker="o", markersize=3, alpha=0.7,
                     label="thin, loosely dotted, small dots: a row's grad norm")
    if v["step_rtol"] == v["norm_rtol"]:
        ax_loss.axhline(v["step_rtol"], color="red", linestyle="--", linewidth=1.2, label=f"band {v['step_rtol']:g}")
    else:
        ax_loss.axhline(v["step_rtol"], color="red", linestyle="--", linewidth=1.2, label=f"loss band {v['step_rtol']:g}")
        ax_loss.axhline(v["norm_rtol"], color="darkred", linestyle="-.", linewidth=1.2,
                        label=f"grad-norm band {v['norm_rtol']:g}")
    # x named: the rows' own lines are the per-step loss, their thin dotted twins the gradient norm (legend)
    ax_loss.set(yscale="log", xlabel="checkpoint (epoch)", ylabel="worst |x - ref| / ref,\nx: loss (lines), grad norm",
                title=f"Re-anchored stretches vs {v.get('reference_label')} (red circles: outside the band)")
    ax_probe.axhline(1.0, color="red", linestyle="--", linewidth=1.2, label="band")
    ax_probe.set(yscale="log", xlabel="checkpoint (epoch)", ylabel="deviation / band",
                 # the probe pair at half the lr, the pair at a raised lr where float32 needs it, the forward pass
                 title="Probe steps (clipping on and off; half lr, and raised where float32\nneeds it) and the "
                       "forward pass: worst error / its band")
    for ax in (ax_loss, ax_probe):
        _checkpoint_ticks(ax, checkpoint_epochs)
    if not any(c.get("loss_deviation") is not None for b in rows for c in b["judgement"].get("checkpoints") or []):
        div = v.get("reference_diverged")
        ax_loss.text(0.5, 0.5, "no stretch judged" + (f": the reference {div.get('how', 'diverged')} before one whole "
                                                        "stretch" if div else ""),
                     ha="center", va="center", transform=ax_loss.transAxes)
    for i, b in enumerate(results["backends"]):
        if not b.get("free_run_deviation") or (b.get("judgement") or {}).get("status") == "reference":
            continue
        ax_free.plot(_at_floor(b["free_run_deviation"], floor, clamped, ax_free), linewidth=0.8, label=b["name"],
                     linestyle=_STYLES[i % len(_STYLES)][1], color=row_color(b["name"], i),
                     # one step: a line draws nothing, so the row's own marker
                     marker=_STYLES[i % len(_STYLES)][0] if len(b["free_run_deviation"]) == 1 else None,
                     fillstyle="none")
    ax_free.set(yscale="log", xlabel="training step", ylabel="|loss - ref| / ref",
                title="Free-running curves (context only: chaos, not correctness, widens them)")
    _integer_epochs(ax_free)  # steps, not epochs: whole numbers all the same
    if ax_free.lines and max(len(line.get_xdata()) for line in ax_free.lines) == 1:
        ax_free.set(xlim=(-1, 1), xticks=[0])  # one step: the locator would tick fractions of it
    if not ax_free.lines:  # an empty panel would look like a plotting failure: say why it is empty
        init = results["verdict"].get("init") or "shared"
        why = (f"no free-running comparison with --init {init}:\nnot every row starts from the reference's weights"
               if init != "shared" else "no free-running curve to compare with the reference")
        ax_free.text(0.5, 0.5, why, ha="center", va="center", transform=ax_free.transAxes)
        ax_free.set(yscale="linear", xticks=[], yticks=[], ylabel="")
    for ax in axes:
        _floor_legend(ax, floor, clamped)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _left_titles(*axes)
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
    judged = [b for b in results["backends"] if _checked(b)]
    if judged:
        deviation_plot(results, out_dir / "deviation.png", plt)
    return []


def write_all(results: dict[str, Any], out_dir: Path, make_plots: bool = True) -> list[str]:
    """Write every report file into ``out_dir``; returns notes about anything left out."""
    # An earlier session's plots (compare --resume) show other rows, and report.md embeds whatever is there:
    # gone before this call draws its own, or none (--no-plot).
    for name in ("perplexity.png", "deviation.png"):
        (out_dir / name).unlink(missing_ok=True)
    notes_out = plot(results, out_dir) if make_plots else []
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "curves.csv", curves_csv(results))
    write_text_atomic(out_dir / "report.md", markdown_report(results, out_dir))
    return notes_out
