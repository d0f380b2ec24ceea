"""Benchmark report: results.json -> report.md, throughput.png, scaling.png (reads JSON only).

    python -m benchmarks.report benchmarks/results/latest   (or python benchmarks/report.py DIR)
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path
from typing import Any

try:
    from benchmarks.floor import own_batched_seconds
except ImportError:  # run as a script (python benchmarks/report.py DIR): benchmarks/ is on sys.path
    from floor import own_batched_seconds  # type: ignore[no-redef]
from multirnn.cells import CELLS
from multirnn.report import openblas_note, row_color

ORDER = ["numpy", "torch", "mxnet", "tensorflow", "jax"]
_RUN_ORDER = {k: i for i, k in enumerate([*CELLS, *ORDER])}  # how a run lists cells, then libraries
VARIANTS = ["scratch/eager", "scratch/fast", "layers/eager", "layers/fast"]
# One colour per variant, none red: the floor line is red (layers/fast's C3 bars stood against it).
VARIANT_COLORS = dict(zip(VARIANTS, ["C0", "C1", "C2", "C4"]))


def _key(r: dict[str, Any]) -> str:
    return f"{r['impl']}/{r['mode']}"


def _by(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["backend"], _key(r)): r for r in results}


def round_ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, float] | None:
    """Median and spread of a's speed over b's, round by round (interleaved rounds), or None."""
    if not a or not b or "error" in a or "error" in b:
        return None
    rs = [x / y for x, y in zip(a["tokens_per_sec"], b["tokens_per_sec"])]
    return {"median": statistics.median(rs), "min": min(rs), "max": max(rs)} if rs else None


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    r = round_ratio(a, b)
    return "-" if r is None else f"{r['median']:.2f}x [{r['min']:.2f}–{r['max']:.2f}]"


def _rate(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    if "error" in r:  # a model the layer cannot compute (d2l's GRU on a reset-after layer) is not a failure
        return "unsupported" if "UnsupportedModelError" in r["error"] else "failed"
    return f"{r['median']:,.0f}"


def _window_roofline_text(fp: dict[str, Any], f: dict[str, Any]) -> str:
    roof = window_roofline(fp, f.get("flops_per_token"))
    if roof is None:
        return ""
    rates = _window_gemm_rates(fp)
    return (f" timed in the same windows (median {statistics.median(rates) / 1e9:.1f} GFLOP/s, "
            f"{min(rates) / 1e9:.1f}–{max(rates) / 1e9:.1f}: the roofline {roof:,.0f} "
            "tokens/s, which the main table's \"% roofline\" divides by, round by round)")


def limits_text(payload: dict[str, Any]) -> str:
    lines = [(f"Big-GEMM rate: **{payload['big_gemm']['flops'] / 1e9:.1f} GFLOP/s** float32 (2048³, best of "
              f"{', '.join(f'{k} {v / 1e9:.1f}' for k, v in payload['big_gemm']['all'].items())})."), "",
             "| cell | FLOPs per token | roofline tokens/s | serial chain (best library, GFLOP/s) | algorithm floor tokens/s |",
             "|---|---:|---:|---|---:|"]
    for cell, f in payload.get("floors", {}).items():
        if "error" in f:
            lines.append(f"| {cell} | - | - | {f['error']} | - |")
            continue
        chains = ", ".join(f"{c['library']} {c['gflops']:.0f}" for c in f["chains"] if "error" not in c)
        lines.append(f"| {cell} | {f['flops_per_token'] / 1e6:.3f} M | {f['roofline_tokens_per_sec']:,.0f} | "
                     f"**{f['best_library']}** {f['serial_gflops']:.0f} ({chains}) | **{f['floor_tokens_per_sec']:,.0f}** |")
    grads = [f"{cell}: " + ", ".join(f"{c['library']} {c['gradient_gflops']:.0f}" for c in f["chains"]
                                     if c.get("gradient_gflops"))
             for cell, f in payload.get("floors", {}).items() if any(c.get("gradient_gflops") for c in f.get("chains", []))]
    if grads:
        lines += ["", ("Each library's own rate for the step's largest batched GEMM, the recurrent weights' gradient "
                       "(H x T·B x G·H; GFLOP/s, best of a transposed and a contiguous operand), measured at the start "
                       "of the run and used for its own-kernel floor where the run did not time that floor again "
                       "beside the fast path: " + "; ".join(grads) + ".")]
    outs = [f"{cell}: " + ", ".join(f"{c['library']} {c['output_seconds'] * 1e3:.2f} ms ({c['output_gflops']:.0f} GFLOP/s)"
                                     for c in f["chains"] if c.get("output_seconds"))
            for cell, f in payload.get("floors", {}).items() if any(c.get("output_seconds") for c in f.get("chains", []))]
    if outs:
        lines += ["", ("Each library's time for the output layer's three GEMMs of a step (logits, their input "
                       "gradient and the weight gradient: T·B x H x V, V = 28, thin GEMMs far below big-GEMM rate; best "
                       "of views and contiguous copies), counted as such in its own-kernel floor: " + "; ".join(outs) + ".")]
    fp = round_floor(payload)
    if fp:
        paired = any(w.get("paired_with") for w in fp.get("windows", []))
        where = ("right after each fast path's window (and the oracle's) in every round" if paired
                 else "in each of the main table's rounds")
        lines += ["", (f"The rnn floor timed again {where}: median **{fp['median']:,.0f}** tokens/s, "
                       f"{fp['min']:,.0f}–{fp['max']:,.0f} over {len(fp['tokens_per_sec'])} windows; {floor_chains(fp)}, "
                       "with the big-GEMM rate" + _window_roofline_text(fp, payload["floors"]["rnn"]) + ".")]
    owns = [r for r in payload.get("main", []) if r.get("backend") == "floor" and r.get("mode") == "own" and "error" not in r]
    if owns:
        def median_of(r: dict[str, Any], key: str) -> float:
            return statistics.median(w[key] for w in r["windows"] if key in w)

        each = "; ".join(f"{r['impl']} median {r['median']:,.0f} tokens/s (chain {median_of(r, 'chain_seconds') * 1e3:.2f} ms, "
                         f"gradient GEMM {median_of(r, 'gradient_gflops'):.0f} GFLOP/s"
                         + (f", output GEMMs {median_of(r, 'output_seconds') * 1e3:.2f} ms"
                            if any('output_seconds' in w for w in r['windows']) else "") + ")" for r in owns)
        with_output = any("output_seconds" in w for r in owns for w in r["windows"])
        lines += ["", ("Each fast path's own-kernel floor (its library's chain, recurrent-weight gradient GEMM"
                       + (" and output-layer GEMMs" if with_output else "") + ", in "
                       "its own warm process) was timed right after that floor window, so the verdict's \"own GEMM "
                       f"kernels allow\" and \"% own-kernel floor\" divide windows seconds apart: {each}.")]
    return "\n".join(lines)


def floor_chains(fp: dict[str, Any]) -> str:
    """Which chains the floor timed beside the windows took: one library's (older runs), or the fastest of
    the contenders in each window, with how often each one was."""
    libraries = fp.get("libraries", [fp["impl"]])
    if len(libraries) < 2:
        return f"{libraries[0]}'s chain, in its own warm process"
    won = collections.Counter(w.get("chain_library") for w in fp.get("windows", []))
    failed = fp.get("library_errors", {})
    return ("in each window the faster of " + " and ".join(f"{lib}'s" for lib in libraries) + " chains ("
            + ", ".join(f"{lib}'s in {won.get(lib, 0)}" for lib in libraries if lib not in failed)
            + f" of {len(fp.get('windows', []))} windows"
            + "".join(f"; {lib} failed: {err}" for lib, err in failed.items()) + "), each library in its own warm process")


def legend(payload: dict[str, Any]) -> str:
    """The main table's legend, saying what this run measured (older runs did less)."""
    main = payload.get("main", [])
    floor_rows = [r for r in main if r.get("backend") == "floor"]
    paired_floor = any(w.get("paired_with") for r in floor_rows if r.get("mode") != "own" for w in r.get("windows", []))
    own_windows = any(r.get("mode") == "own" for r in floor_rows)
    chains = payload.get("floors", {}).get("rnn", {}).get("chains", [])
    output = any(c.get("output_seconds") for c in chains)
    gradient = any(c.get("gradient_gflops") for c in chains)
    where = ("right after its window" if paired_floor else "in that round" if floor_rows else "once, at the start of the run")
    parts = ["its serial chain"]
    if output:
        parts.append("its output layer's three thin GEMMs at their measured time")
    parts.append("its rate for the recurrent weights' gradient for the other batched FLOPs" if gradient
                 else "the batched FLOPs at the big-GEMM rate")
    own_when = "timed right after the floor beside the fast path" if own_windows else "measured at the start of the run"
    text = (f"% floor: of the algorithm floor (the serial chain at the best library's rate), as the median [min–max] "
            f"of each round's ratio to the floor timed {where}; % own-kernel floor: of the same floor with the "
            f"framework's own library's GEMMs ({', '.join(parts[:-1])} and {parts[-1]}; {own_when}), so 100 % minus "
            "it is the time the fast path loses outside its GEMMs (dispatch, elementwise work, loss, clipping). 80 % "
            "of floor: the performance target; 'unreachable' when the framework's own GEMMs alone, at the rates "
            "measured in this run, already take more than 1/0.8 of the floor's time, or, where the run has the "
            "framework's ladder, its GEMMs together with the step's other work as its backend computes it; "
            "'not met (N %)' otherwise.")
    if paired_floor or own_windows:
        text += (" A round's ratio above 100 % (a fast path faster than a bound timed seconds later) is this "
                 "machine's drift between the two windows; the verdict uses the medians.")
    return text


def round_floor(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The floor as timed in the main table's rounds (bench_train's floor server), if it was."""
    return next((r for r in payload.get("main", []) if r.get("backend") == "floor" and r.get("mode") != "own"
                 and "error" not in r), None)


def round_own_floor(payload: dict[str, Any], library: str) -> dict[str, Any] | None:
    """``library``'s own-kernel floor as timed beside its fast path in the main table's rounds, if it was."""
    return next((r for r in payload.get("main", []) if r.get("backend") == "floor" and r.get("mode") == "own"
                 and r.get("impl") == library and "error" not in r), None)


def label(spec: dict[str, Any]) -> str:
    """A variant's name in logs and in the floor windows paired with it: ``"torch scratch/fast"``."""
    return f"{spec['backend']} {_key(spec)}" + (f" [{spec['cell']}]" if spec.get("cell", "rnn") != "rnn" else "")


def paired(limit_point: dict[str, Any] | None, point: dict[str, Any] | None) -> dict[str, Any] | None:
    """``limit_point`` (the floor, or a library's own-kernel floor) with only the windows bench_train
    timed right after ``point``'s, one per round (``paired_with``), or None if it did not pair them."""
    if not limit_point or not point:
        return None
    rates = [w["tokens_per_sec"] for w in limit_point.get("windows", []) if w.get("paired_with") == label(point)]
    # One pair per round, or the rounds would not line up (a limit window that got no answer).
    aligned = rates and len(rates) == len(point.get("tokens_per_sec", []))
    return {**limit_point, "tokens_per_sec": rates} if aligned else None


def floor_beside(floor_point: dict[str, Any] | None, point: dict[str, Any] | None) -> dict[str, Any] | None:
    """The floor as timed right after ``point``'s window in each round, when bench_train paired them,
    else the floor's one window per round (older results)."""
    return paired(floor_point, point) or floor_point


def roofline_beside(floor_point: dict[str, Any] | None, point: dict[str, Any] | None,
                    flops_per_token: float) -> dict[str, Any] | None:
    """The big-GEMM roofline as timed in the floor windows beside ``point``'s (each floor window times the
    2048³ rate too), in tokens/s, or None where the run did not pair them. The start-of-run rate is one
    measurement; on a machine that drifts it put the roofline below the floor timed in the rounds."""
    beside = paired(floor_point, point)
    if not beside or not flops_per_token:
        return None
    rates = [w["big_gemm_flops"] / flops_per_token for w in floor_point.get("windows", [])
             if w.get("paired_with") == label(point) and w.get("big_gemm_flops")]
    return {**beside, "tokens_per_sec": rates} if len(rates) == len(beside["tokens_per_sec"]) else None


def _window_gemm_rates(floor_point: dict[str, Any] | None) -> list[float]:
    """The 2048³ rates (FLOP/s) the floor's windows timed, in the run's order."""
    return [w["big_gemm_flops"] for w in (floor_point or {}).get("windows", []) if w.get("big_gemm_flops")]


def window_roofline(floor_point: dict[str, Any] | None, flops_per_token: float | None) -> float | None:
    """The median roofline (tokens/s) over every floor window of the run's rounds, or None."""
    rates = _window_gemm_rates(floor_point)
    return statistics.median(rates) / flops_per_token if rates and flops_per_token else None


def pct_of(point: dict[str, Any] | None, limit: float | None) -> str:
    if not point or "error" in point or not limit:
        return "-"
    return f"{100 * point['median'] / limit:.0f}%"


def own_floor(f: dict[str, Any], library: str) -> float | None:
    """The floor with ``library``'s own GEMM kernels instead of the best ones: its serial chain at its
    own measured rate, its output layer's three GEMMs at their measured time (thin GEMMs, V columns
    or a V-long inner dimension), and the other batched FLOPs at its own rate for the step's largest
    batched GEMM (the recurrent weights' gradient, capped at the big-GEMM rate). Older results lack
    the output time (all batched FLOPs at the gradient rate) or also that rate (the big-GEMM rate).
    How far the fast path is from it is time lost outside the GEMMs."""
    chain = next((c for c in f.get("chains", []) if c.get("library") == library and c.get("seconds")), None)
    if chain is None or not f.get("floor_tokens_per_sec"):
        return None
    tokens = f["floor_tokens_per_sec"] * (f["serial_seconds"] + f["batched_seconds"])  # per minibatch
    batched = f["batched_seconds"]
    if chain.get("gradient_gflops") and f.get("flops_per_token"):
        big_flops = f["roofline_tokens_per_sec"] * f["flops_per_token"]
        measured = chain.get("output_seconds") is not None and f.get("output_flops")
        batched = own_batched_seconds(batched * big_flops, big_flops, chain["gradient_gflops"] * 1e9,
                                      chain["output_seconds"] if measured else None, f.get("output_flops", 0.0))
    return tokens / (chain["seconds"] + batched)


TARGET = 0.8  # the performance issue's bar: every fast path at >= 80 % of the algorithm floor


def allowed_share(f: dict[str, Any], library: str, floor_point: dict[str, Any] | None = None,
                  own_point: dict[str, Any] | None = None, point: dict[str, Any] | None = None) -> float | None:
    """The share of the floor ``library``'s own GEMM kernels allow: the median of the per-round
    ratios of its own-kernel floor to the floor, both timed beside ``point`` (bench_train pairs
    them), else its start-of-run own floor over the start-of-run floor (older results)."""
    r = round_ratio(paired(own_point, point), paired(floor_point, point))
    if r:
        return r["median"]
    own = own_floor(f, library)
    return own / f["floor_tokens_per_sec"] if own is not None and f.get("floor_tokens_per_sec") else None


def target_verdict(fast: dict[str, Any] | None, f: dict[str, Any], library: str,
                   floor_point: dict[str, Any] | None = None, own_point: dict[str, Any] | None = None,
                   ladder: dict[str, Any] | None = None) -> str:
    """Whether ``library``'s fast path meets the 80 % bar (judged on the per-round ratio to the floor
    timed beside it, when it was), and if not, whether its own GEMM kernels already rule it
    out: its GEMMs alone at its own measured rates (:func:`own_floor`, a lower bound on its step,
    timed beside it too when ``own_point`` is given) leave it below 80 % of the floor. With its
    ``ladder`` (:mod:`benchmarks.ladder`), the step's work besides the GEMMs, as the backend computes
    it with the same kernels, counts too: the share the GEMMs allow times the ladder's ``work_factor``."""
    if not fast or "error" in fast or not f.get("floor_tokens_per_sec"):
        return "-"
    pct = round_ratio(fast, floor_beside(floor_point, fast))
    share = pct["median"] if pct else fast["median"] / f["floor_tokens_per_sec"]
    if share >= TARGET:
        return "met"
    allowed = allowed_share(f, library, floor_point, own_point, fast)
    # No ceiling is claimed when the fast path already reached the share of the floor its kernels are
    # said to allow: that floor used the wrong kernel (MXNet's fused RNN operator once beat its
    # dot/FullyConnected chain), or the machine's drift blurs the two (shares, so drift cancels).
    if allowed is not None and allowed < TARGET and share < allowed:
        # Results from before the gradient-GEMM rate was measured judged the chain kernel alone.
        measured = own_point is not None or any(c.get("library") == library and c.get("gradient_gflops")
                                                for c in f.get("chains", []))
        what = "own GEMM kernels allow" if measured else "own chain kernel allows"
        return f"unreachable: {what} {100 * allowed:.0f}%"
    with_work = with_work_share(allowed, ladder)
    if with_work is not None and with_work < TARGET and share < with_work:
        return f"unreachable: own kernels with the step's other work allow {_below_target(with_work)}%"
    return f"not met ({_below_target(share)}%)"


def _below_target(share: float) -> str:
    """A share below the 80 % target with one decimal, never rounded up to "80.0"."""
    text = f"{100 * share:.1f}"
    return f"{100 * TARGET - 0.1:.1f}" if share < TARGET and float(text) >= 100 * TARGET else text


def with_work_share(allowed: float | None, ladder: dict[str, Any] | None) -> float | None:
    """The share of the floor a library's kernels allow once its step's non-GEMM work is counted:
    what its GEMMs allow (timed beside the fast path) times its ladder's own / (own + that work),
    a ratio of times taken in turns in one process. None without both."""
    if allowed is None or not ladder or "error" in ladder or not ladder.get("work_factor"):
        return None
    return allowed * work_factor(ladder)


def work_factor(ladder: dict[str, Any]) -> float:
    """own / bound, the bound by :func:`benchmarks.ladder.bound_ms` (recomputed from the ladder's times, so a
    run recorded before that rule is judged by it too)."""
    from benchmarks.ladder import bound_ms

    if "ms" in ladder and ladder.get("rungs"):
        return ladder["own_ms"] / bound_ms(ladder["own_ms"], ladder["ms"][ladder["rungs"][0]], ladder["extra_ms"])
    return ladder["work_factor"]


def ladders_text(payload: dict[str, Any]) -> str:
    """The ladders of bench_train's run (:mod:`benchmarks.ladder`): per library, its step built up from
    its GEMMs alone, and what the step's other work leaves of the share its GEMMs allow."""
    ladders = payload.get("ladders") or {}
    if not ladders:
        return ""
    f, fp = payload["floors"]["rnn"], round_floor(payload)
    pts = _by(payload.get("main", []))
    intro = ("Each fast path's step built up in one process (`python -m benchmarks.ladder LIBRARY`; ms per step, "
             "medians of calls taken in turns): L0 its GEMMs alone, as the backend issues them; L1 + the loops' "
             "elementwise work; L1x + the rest of the step's work (gather, loss, dW_xh, biases, clipping, SGD), "
             "each piece as the backend computes it, in the step's order, without the copies or layout changes "
             "joining them; then the backend's own step, and (JAX) that step with free reshapes for its transposes "
             "(wrong numbers: what the transposes cost in it). The step's other work (L1x - L0) added to the faster of "
             "the library's own-kernel floor and L0 is the least a step computing those pieces with these kernels can "
             "take; 'allow with the work' is the share its GEMMs allow (beside the windows) times own / that least. "
             "The shares are medians: single rounds of the windows vary by the spread each shows.")
    head = ("| library | own-kernel floor ms | L0 | L1 | L1x | backend's step | its step, transposes free "
            "| other work ms | GEMMs allow | allow with the work | step here / in the windows |")
    lines = [intro, "", head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lib, r in ladders.items():
        if "error" in r:
            lines.append(f"| {lib} | failed: {r['error']} |" + " - |" * 9)
            continue
        t = [r["ms"][n] for n in r["rungs"]]
        # By name: JAX's ladder times its step once more after it, with free reshapes for its transposes.
        step = next((r["ms"][n] for n in r["rungs"] if n.split()[0] == "L3"), t[-1])
        free = next((f"{r['ms'][n]:.2f}" for n in r["rungs"] if n.split()[0] == "L3-"), "-")
        fast = pts.get((lib, "scratch/fast"))
        allowed = allowed_share(f, lib, fp, round_own_floor(payload, lib), fast) if fast and "error" not in fast else None
        with_work = with_work_share(allowed, r)
        # The machine drifts: the backend's step in the ladder against the fast path's in the windows.
        shape = r.get("shape", {})
        per_step = shape.get("B", 0) * shape.get("T", 0)
        drift = (f"{step / (1e3 * per_step / fast['median']):.2f}x" if per_step and fast and "error" not in fast
                 and fast.get("median") else "-")
        lines.append(f"| {lib} | {r['own_ms']:.2f} | {t[0]:.2f} | {t[1]:.2f} | {t[2]:.2f} | {step:.2f} | {free} | "
                     f"{r['extra_ms']:.2f} | {'-' if allowed is None else f'{100 * allowed:.0f}%'} | "
                     f"{'-' if with_work is None else f'{100 * with_work:.0f}%'} | {drift} |")
    note = ("The work factor divides times taken in the ladder's own turns: it assumes that drift between the "
            "windows and the ladder slows the GEMMs and the other work alike. The last column shows how far the "
            "machine drifted (the backend's step in the ladder over its step in the windows).")
    lines += ["", note]
    return "\n".join(lines)


def main_table(payload: dict[str, Any]) -> str:
    pts = _by(payload.get("main", []))
    f = payload["floors"]["rnn"]
    fp = round_floor(payload)

    def pct_floor(point: dict[str, Any] | None) -> str:
        pct = round_ratio(point, floor_beside(fp, point))
        if pct is None:
            return pct_of(point, f["floor_tokens_per_sec"])
        return f"{100 * pct['median']:.0f}% [{100 * pct['min']:.0f}–{100 * pct['max']:.0f}]"

    def pct_roof(point: dict[str, Any] | None) -> str:
        """% of the big-GEMM roofline as timed beside the point in each round, else the start's."""
        pct = round_ratio(point, roofline_beside(fp, point, f["flops_per_token"]))
        if pct is None:
            return pct_of(point, f["roofline_tokens_per_sec"])
        return f"{100 * pct['median']:.0f}% [{100 * pct['min']:.0f}–{100 * pct['max']:.0f}]"

    def pct_own(point: dict[str, Any] | None, library: str) -> str:
        """% of the library's own-kernel floor: timed beside the point when it was, else the start's."""
        pct = round_ratio(point, paired(round_own_floor(payload, library), point))
        if pct is None:
            return pct_of(point, own_floor(f, library))
        return f"{100 * pct['median']:.0f}% [{100 * pct['min']:.0f}–{100 * pct['max']:.0f}]"

    def allows(point: dict[str, Any] | None, library: str) -> str:
        """The share of the floor the library's own GEMM kernels allow (the ceiling the verdict judges by)."""
        if not point or "error" in point:
            return "-"
        share = allowed_share(f, library, fp, round_own_floor(payload, library), point)
        return f"{100 * share:.0f}%" if share is not None else "-"

    head = ("| backend | scratch/eager | scratch/fast | layers/eager | layers/fast | fast: % floor | fast: % roofline "
            "| fast: % own-kernel floor | own GEMM kernels allow | 80 % of floor | fast / eager | fast / layers-fast "
            "| layers-fast / layers-eager | 1st epoch (fast) s |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|"]
    numpy = pts.get(("numpy", "scratch/eager"))
    if numpy:
        lines.append(f"| numpy (oracle) | {_rate(numpy)} | - | - | - | {pct_floor(numpy)} | "
                     f"{pct_roof(numpy)} | "
                     f"{pct_own(numpy, 'numpy')} | {allows(numpy, 'numpy')} | - | - | - | - | "
                     f"{numpy.get('first_epoch_seconds', 0):.2f} |")
    for b in ORDER[1:]:
        if not any(k[0] == b for k in pts):
            continue
        fast = pts.get((b, "scratch/fast"))
        lines.append(
            f"| {b} | {_rate(pts.get((b, 'scratch/eager')))} | **{_rate(fast)}** | {_rate(pts.get((b, 'layers/eager')))} | "
            f"{_rate(pts.get((b, 'layers/fast')))} | {pct_floor(fast)} | {pct_roof(fast)} | "
            f"{pct_own(fast, b)} | {allows(fast, b)} | {target_verdict(fast, f, b, fp, round_own_floor(payload, b), (payload.get('ladders') or {}).get(b))} | "
            f"{_ratio(fast, pts.get((b, 'scratch/eager')))} | {_ratio(fast, pts.get((b, 'layers/fast')))} | "
            f"{_ratio(pts.get((b, 'layers/fast')), pts.get((b, 'layers/eager')))} | "
            f"{fast.get('first_epoch_seconds', 0):.2f} |" if fast else f"| {b} |" + " - |" * 13)
    return "\n".join(lines)


def cells_table(payload: dict[str, Any]) -> str:
    if not payload.get("cells"):
        return ""
    lines = ["| cell | backend | scratch/fast | % floor | % roofline | layers/fast | fast / layers-fast |",
             "|---|---|---:|---:|---:|---:|---|"]
    for cell, results in payload["cells"].items():
        f = payload["floors"].get(cell, {})
        pts = _by(results)
        for b in ORDER:
            fast = pts.get((b, "scratch/fast") if b != "numpy" else (b, "scratch/eager"))
            if not fast:
                continue
            layers = pts.get((b, "layers/fast"))
            lines.append(f"| {cell} | {b} | {_rate(fast)} | {pct_of(fast, f.get('floor_tokens_per_sec'))} | "
                         f"{pct_of(fast, f.get('roofline_tokens_per_sec'))} | "
                         f"{_rate(layers) if layers else 'n/a'} | {_ratio(fast, layers) if layers else '-'} |")
    return "\n".join(lines)


def scaling_paired(payload: dict[str, Any]) -> bool:
    """Whether the run timed each scaling shape's floor beside the fast paths' windows (newer runs)."""
    return any(r.get("backend") == "floor" for p in payload.get("scaling", []) for r in p["results"])


def scaling_floor_beside(point: dict[str, Any]) -> dict[str, Any] | None:
    """A scaling shape's floor as timed beside the fast paths' windows (newer runs), if it was and did not fail."""
    return next((r for r in point["results"] if r["backend"] == "floor" and "error" not in r), None)


def scaling_table(payload: dict[str, Any]) -> str:
    if not payload.get("scaling"):
        return ""
    head = "floor tokens/s (at the shape's start / median beside the windows)" if scaling_paired(payload) else "floor tokens/s"
    lines = [f"| varied | value | {head} | " + " | ".join(ORDER[1:]) + " |", "|---|---:|---:|" + "---:|" * 4]
    for point in payload["scaling"]:
        pts = {r["backend"]: r for r in point["results"]}
        fl = point["floor"].get("floor_tokens_per_sec")
        beside = scaling_floor_beside(point)
        fl_text = f"{fl:,.0f}" if fl else ""
        if fl and beside:
            fl_text += f" / {beside['median']:,.0f}"
        cells = []
        for b in ORDER[1:]:
            r = pts.get(b)
            if not r or "error" in r:
                cells.append("-")
                continue
            # The median of the ratios to the floor timed right after each window, when the run paired
            # them; else the floor measured once at the shape's start (older results).
            pct = round_ratio(r, paired(pts.get("floor"), r))
            share = pct["median"] if pct else (r["median"] / fl if fl else None)
            cells.append(f"{r['median']:,.0f} ({100 * share:.0f}%)" if share is not None else _rate(r))
        lines.append(f"| {point['varied']} | {point['value']} | {fl_text} | " + " | ".join(cells) + " |" if fl else "")
    return "\n".join(ln for ln in lines if ln)


def plot(payload: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return []
    made = []
    pts = _by(payload.get("main", []))
    backends = [b for b in ORDER[1:] if any(k[0] == b for k in pts)]
    if backends:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        variants = [v for v in VARIANTS if any((b, v) in pts for b in backends)]  # only those that ran
        width = 0.8 / len(variants)
        for j, v in enumerate(variants):
            xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(backends))]
            ys = [pts[(b, v)]["median"] / 1e3 if (b, v) in pts and "error" not in pts[(b, v)] else 0 for b in backends]
            lo = [y - pts[(b, v)]["min"] / 1e3 if (b, v) in pts and "error" not in pts[(b, v)] else 0 for b, y in zip(backends, ys)]
            hi = [pts[(b, v)]["max"] / 1e3 - y if (b, v) in pts and "error" not in pts[(b, v)] else 0 for b, y in zip(backends, ys)]
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=v, color=VARIANT_COLORS[v])
        f = payload["floors"]["rnn"]
        fp = round_floor(payload)
        floor_tps = fp["median"] if fp else f["floor_tokens_per_sec"]
        ax.axhline(floor_tps / 1e3, color="red", linestyle="--", label=f"algorithm floor ({floor_tps / 1e3:.0f}k)")
        # beside the windows, as the floor; the start-of-run rate for a run that did not time it there
        roof = window_roofline(fp, f["flops_per_token"]) or f["roofline_tokens_per_sec"]
        ax.axhline(roof / 1e3, color="gray", linestyle=":", label=f"big-GEMM roofline ({roof / 1e3:.0f}k)")
        ax.set_xticks(range(len(backends)), backends)
        m = payload["machine"]
        isa = m.get("isa", "?") + (" with ISA caps (see report.md)" if m.get("isa_caps") else "")
        ax.set(ylabel="thousand tokens/s", title=f"Training throughput, tanh RNN, d2l ed. 1 shapes, float32, {isa}\n"
               f"median of {payload['repeats']} interleaved windows; whiskers: min-max")
        ax.title.set_fontsize(9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=100)
        plt.close(fig)
        made.append("throughput.png")
    if payload.get("scaling"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
        for ax, key, xlabel in zip(axes, ("num_hiddens", "batch_size"), ("hidden units H (batch 32)", "batch size B (H = 512)")):
            points = [p for p in payload["scaling"] if p["varied"] == key]
            if not points:  # a run stopped (or still running) before this half of the sweep
                ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
                ax.set(xticks=[], yticks=[], xlabel=xlabel)
                continue
            xs = [p["value"] for p in points]
            # The floor as timed beside the windows (its median) when the run paired it, else the shape's start.
            floors = [(scaling_floor_beside(p) or {}).get("median", p["floor"].get("floor_tokens_per_sec", float("nan")))
                      for p in points]
            ax.plot(xs, floors, "k--", marker="_", markersize=12, label="floor")  # the marker shows a lone point
            for i, b in enumerate(ORDER[1:]):
                ys = [next((r["median"] for r in p["results"] if r["backend"] == b and "error" not in r), float("nan"))
                      for p in points]
                ax.plot(xs, ys, marker="osD^"[i], fillstyle="none", label=b, color=row_color(b, i))
            ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="tokens/s (fast path)")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels (2x10^2, ...) overlap ours
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_title("dispatch-bound (small H) to GEMM-bound (large H)", fontsize=9)
        axes[1].set_title("per-step overhead amortised over the batch", fontsize=9)
        next(ax for ax in axes[::-1] if ax.get_lines() or ax is axes[0]).legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=100)
        plt.close(fig)
        made.append("scaling.png")
    return made


def in_run_order(obj: Any) -> Any:
    """``obj`` with every mapping keyed only by cells or libraries in the run's order (:data:`CELLS`,
    :data:`ORDER`): results.json is written with sorted keys, so a report rendered again from it would
    otherwise list them alphabetically, unlike the one the run wrote."""
    if isinstance(obj, list):
        return [in_run_order(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    items = [(k, in_run_order(v)) for k, v in obj.items()]
    if items and all(k in _RUN_ORDER for k, _ in items):
        items.sort(key=lambda kv: _RUN_ORDER[kv[0]])
    return dict(items)


def _family(m: dict[str, Any]) -> str:
    """The CPU's family and model numbers, ' (family 6, model 167)', where the run recorded them (runs
    before 2026-12-07, evening, did not: nothing)."""
    if m.get("cpu_family") is None or m.get("cpu_model_number") is None:
        return ""
    return f" (family {m['cpu_family']}, model {m['cpu_model_number']})"


def write(payload: dict[str, Any], out: Path) -> None:
    payload = in_run_order(payload)
    m = payload["machine"]
    caps = ", capped: " + ", ".join(f"{k}={v}" for k, v in m["isa_caps"].items()) if m.get("isa_caps") else ""
    parts = ["# Benchmark report", "", f"Command: `{payload['command']}`  ",
             (f"Machine: {m.get('cpu_model', m['processor'])}{_family(m)}, {m['cpu_count']} CPUs, ISA {m.get('isa', '?')}{caps}; "
              f"Python {m['python']}{openblas_note(m)}  "), f"Created: {payload['created']}", "", "## Limits of this machine", "",
             limits_text(payload), "", "## Main table: tanh RNN (tokens/s, median of interleaved windows)", "",
             main_table(payload), "",
             f"Ratios: median [min–max] of per-round ratios over {payload['repeats']} interleaved rounds of "
             f"{payload['window_seconds']:g} s each; every variant in its own warm process. Layers: "
             + "; ".join(f"{k}: {v}" for k, v in payload.get("layers", {}).items()) + ". "
             + legend(payload)]
    if payload.get("ladders"):
        parts += ["", "## What the step's other work leaves (ladders)", "", ladders_text(payload)]
    if payload.get("cells"):
        n, w = cells_rounds(payload["repeats"], payload["window_seconds"])
        parts += ["", "## GRU and LSTM (fast paths and the frameworks' own layers)", "", cells_table(payload), "",
                  (f"{n} interleaved rounds of {w:g} s: fewer than the main table's, so small gaps may be the "
                   "machine's drift.")]
    if payload.get("scaling"):
        how = "timed beside each window" if scaling_paired(payload) else "measured once at the shape's start: drift can put a fast path above 100 %"
        n, w = scaling_rounds(payload["window_seconds"])
        parts += ["", f"## Scaling (fast paths; % of the floor for that shape, {how})", "", scaling_table(payload), "",
                  (f"Medians of {n} interleaved rounds of {w:g} s per shape, without spreads: a rough map of where "
                   "frameworks overtake each other, not a ranking.")]
    made = plot(payload, out)
    parts += [""] + [f"![{name}]({name})" for name in made]
    (out / "report.md").write_text("\n".join(parts) + "\n")


def cells_rounds(repeats: int, window: float) -> tuple[int, float]:
    """The GRU/LSTM table's rounds and window (bench_train runs it so, the report says so)."""
    return max(3, repeats // 2), window


def scaling_rounds(window: float) -> tuple[int, float]:
    """Each scaling shape's rounds and window."""
    return 3, max(1.0, window / 2)


def main(argv: list[str] | None = None) -> int:
    """Rewrite a results folder's report; a folder without a readable results.json is one line and exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Write report.md, throughput.png and scaling.png from a benchmark folder's results.json "
        "(reads JSON only, runs nothing).")
    parser.add_argument("folder", nargs="?", type=Path, default=Path(__file__).parent / "results" / "latest",
                        help="the folder of a benchmark run (default: benchmarks/results/latest)")
    folder = parser.parse_args(argv).folder
    try:
        payload = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as exc:
        parser.exit(2, f"{parser.prog}: error: cannot read {str(folder / 'results.json')!r}: "
                       f"{getattr(exc, 'strerror', None) or exc}\n")
    # (no "main" yet: a run stopped after its floors, which renders what it has)
    # what bench_train writes before its first measurement (a hand-made file may lack any of it)
    missing = [k for k in ("big_gemm", "floors", "machine", "command", "created", "repeats", "window_seconds")
               if not isinstance(payload, dict) or k not in payload]
    if missing:  # a compare or sweep run's results.json ended in a KeyError traceback
        parser.exit(2, f"{parser.prog}: error: {str(folder / 'results.json')!r} is not a benchmark run's (no "
                       f"{', '.join(repr(k) for k in missing)}; python -m benchmarks.bench_train writes one)\n")
    write(payload, folder)
    print(f"wrote {folder / 'report.md'}")
    return 0


if __name__ == "__main__":
    # run as a file (python benchmarks/report.py DIR), the ladder verdict's `import benchmarks.ladder` needs
    # the repository root on the path, as `python -m benchmarks.report` has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
