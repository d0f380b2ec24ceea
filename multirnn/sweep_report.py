"""The sweep's aggregate: sweep.json (schema 1), report.md, cells.csv and two plots.

Verdicts are compare's: each (configuration, seed) group's rows go through ``compare.result_row`` and
``compare.assemble`` (hence :func:`multirnn.verdict.judge`) exactly as a ``compare`` run's would.
Everything that depends on where and when cells ran -- tokens/s, seconds, memory, nodes, attempts,
dates -- lives under the keys in ``NON_IDENTITY``; the rest of sweep.json (:func:`identity`) is the
same whether the cells ran locally, on Ray, or across a resume.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

from . import compare, report
from .files import write_json_atomic, write_text_atomic
from .load import busy_note
from .sweep_engine import first_line, is_final
from .sweep_spec import Cell, Configuration, Group, seeds_text
from .sweep_stats import EQUIVALENCE_TEXT, mean_interval, tost_paired

SCHEMA_VERSION = 1
NON_IDENTITY = ("run", "speed", "timings")
ORACLE = "numpy"
PARTIAL_RULE = ("The sweep is unfinished: each configuration's statistics, equivalence tests, speeds and plots use "
                "only the seeds for which every cell of that configuration (each row, each repeat) finished, so that "
                "its rows are compared on the same seeds; the other finished cells are in cells/ and cells.csv, "
                "not in these figures")


def identity(sweep: dict[str, Any]) -> dict[str, Any]:
    """The part of sweep.json that does not depend on where or when the cells ran."""
    return {k: v for k, v in sweep.items() if k not in NON_IDENTITY}


def clean_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """A worker record as compare's verdict sees it, minus what names places (log tails, tracebacks)."""
    out = {k: v for k, v in raw.items() if k != "traceback"}
    out["error"] = first_line(raw.get("error"))
    if isinstance(out.get("lockstep"), dict):
        out["lockstep"] = {**out["lockstep"], "source": None}
    return out


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _group_results(group: Group, cells: list[Cell], records: dict[str, Any], retries: int,
                   run: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """compare's results for one (configuration, seed). ``run``: the sweep session's record; where it
    measured other processes' load (local executor), the group's report carries that figure and, on a
    busy machine, compare's note beside its tokens/s column, as the sweep's own report does."""
    used = [records[c.id] for c in cells if c.repeat == 0 and is_final(records.get(c.id), retries)]
    if not used:
        return None
    p = group.plan
    results = compare.assemble([compare.result_row(clean_raw(r["result"])) for r in used], p.config, p.options,
                               p.expected)
    results["machine"] = group_machine([r.get("run") or {} for r in used], results["machine"])
    if run and "other_load_cores" in run:
        opts = results["options"] = dict(results["options"])  # p.options is the plan's: left as it was
        opts["other_load_cores"] = run["other_load_cores"]
        if busy := run_busy_note(run):
            opts["run_notes"] = [*opts.get("run_notes", []), f"in this sweep session, {busy}"]
    return results


def run_busy_note(run: dict[str, Any]) -> str | None:
    """The busy-machine note of a sweep session (sweep.json's ``run``; the console and report.md say it)."""
    return busy_note(run.get("other_load_cores"), run.get("usable_cores") or 0)


def group_machine(runs: list[dict[str, Any]], driver: dict[str, Any]) -> dict[str, Any]:
    """The machine a group's rows ran on: a Ray node's where they ran on one (``driver``, the sweep's own
    machine, otherwise), with ``hosts`` naming every host where they ran on several."""
    hosts = sorted({r["host"] for r in runs if r.get("host")})
    first = next((r for r in runs if r.get("machine")), None)
    machine = dict(first["machine"]) if first else dict(driver)
    if len(hosts) > 1:
        machine["hosts"] = hosts
        machine["described_host"] = first.get("host") if first else None
    return machine


def aggregate(spec: dict[str, Any], configurations: list[Configuration], groups: list[Group], cells: list[Cell],
              records: dict[str, Any], retries: int, margin: float, run: dict[str, Any]) -> dict[str, Any]:
    """sweep.json from the cell records (final ones only; the others are 'pending')."""
    by_group: dict[str, list[Cell]] = {}
    for c in cells:
        by_group.setdefault(c.group.key, []).append(c)
    final = {c.id: records[c.id] for c in cells if is_final(records.get(c.id), retries)}

    cell_rows, timings = [], {}
    for c in cells:
        rec = final.get(c.id)
        r = compare.result_row(clean_raw(rec["result"])) if rec else {}
        cell_rows.append({
            "id": c.id, "configuration": c.group.configuration.index, "seed": c.group.seed, "repeat": c.repeat,
            "row": c.label, "backend": c.backend, "impl": c.impl, "anchor": c.anchor,
            "status": rec["status"] if rec else "pending", "error": r.get("error"),
            "framework_version": r.get("framework_version"),
            "final_perplexity": _finite(r.get("final_perplexity")),
            "median_last_perplexity": _finite(r.get("median_last_perplexity")),
            # --init framework: the d2l model trained from this row's own initial weights (its pair)
            "paired_median_last_perplexity": _finite(((r.get("paired_oracle_runs") or [{}])[0] or {})
                                                     .get("median_last_perplexity")),
            "paired": r.get("paired_oracle_runs") is not None,  # the pair was run (it may have diverged)
            "best_perplexity": _finite(r.get("best_perplexity")), "eval_perplexity": _finite(r.get("eval_perplexity")),
        })
        if rec:
            timings[c.id] = {"tokens_per_sec": r.get("tokens_per_sec"), "first_epoch_seconds": r.get("first_epoch_seconds"),
                             "train_seconds": r.get("train_seconds"), "peak_rss_mb": r.get("peak_rss_mb"),
                             "attempts": rec.get("attempts"), **{k: rec["run"].get(k) for k in
                                                                  ("executor", "node", "host", "threads", "concurrency",
                                                                   "contended", "wall_seconds", "finished")}}

    group_rows, complete_seeds = [], set()
    for g in groups:
        res = _group_results(g, by_group[g.key], final, retries)
        complete = all(c.id in final for c in by_group[g.key])
        if complete:
            complete_seeds.add((g.configuration.index, g.seed))
        v = res["verdict"] if res else None
        group_rows.append({"configuration": g.configuration.index, "seed": g.seed, "key": g.key, "complete": complete,
                           "status": (v["status"] if complete else "incomplete") if v else "pending",
                           "summary": v["summary"] if v else None, "verdict": v,
                           "rows": [{"name": b["name"], "status": b["status"], "agrees": b["agrees"],
                                     "judgement": (b.get("judgement") or {}).get("status")} for b in res["backends"]]
                           if res else []})

    conf_rows = []
    for conf in configurations:
        first = next(g for g in groups if g.configuration is conf)
        conf_rows.append({"index": conf.index, "key": conf.key, "label": conf.label, "values": dict(conf.values),
                          "init": first.plan.args.init, "config": {k: v for k, v in first.plan.config.to_dict().items()
                                                                   if k != "seed"},
                          "rows": first.plan.labels})
    sweep = {"schema_version": SCHEMA_VERSION, "spec": spec, "configurations": conf_rows, "groups": group_rows,
             "cells": cell_rows}
    # Like for like: a configuration's rows are compared over the same seeds, those where every cell
    # finished (all of them once the sweep is complete, which leaves its output as it was).
    counted = [c for c in cell_rows if (c["configuration"], c["seed"]) in complete_seeds]
    partial = _partial(conf_rows, group_rows, cell_rows)
    if partial:  # only in a partial aggregate: a complete sweep's sweep.json keeps its keys
        sweep["partial"] = partial
    sweep["statistics"] = _statistics(conf_rows, counted)
    sweep["equivalence"] = _equivalence(conf_rows, counted, margin)
    sweep["speed"] = _speed(conf_rows, counted, timings)
    sweep["timings"] = timings
    sweep["run"] = run
    return sweep


def _partial(confs: list[dict[str, Any]], groups: list[dict[str, Any]],
             cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The configurations whose statistics leave seeds out (some cell of those seeds is not final), or
    None when every seed of every configuration is complete."""
    out = []
    for conf in confs:
        mine = [g for g in groups if g["configuration"] == conf["index"]]
        if all(g["complete"] for g in mine):
            continue
        left_out = {g["seed"] for g in mine if not g["complete"]}
        out.append({"configuration": conf["index"], "seeds": [g["seed"] for g in mine],
                    "complete_seeds": [g["seed"] for g in mine if g["complete"]],
                    "finished_not_aggregated": sum(1 for c in cells if c["configuration"] == conf["index"]
                                                   and c["seed"] in left_out and c["status"] != "pending")})
    if not out:
        return None
    return {"rule": PARTIAL_RULE, "configurations": out}


def partial_text(entry: dict[str, Any]) -> str:
    """One configuration's entry of sweep.json's ``partial``, for people: "partial: seeds 0, 1 of 0-4
    complete for this configuration; 3 other finished cells not aggregated"."""
    done, n = entry["complete_seeds"], entry["finished_not_aggregated"]
    which = ("no seed" if not done else f"seed{'s' if len(done) > 1 else ''} {', '.join(map(str, done))}")
    return (f"partial: {which} of {seeds_text(entry['seeds'])} complete for this configuration; "
            f"{n} other finished cell{'' if n == 1 else 's'} not aggregated")


def no_runs_text(sweep: dict[str, Any], configuration: int) -> str:
    """A row with no run in the aggregate: a partial one aggregates complete seeds only, so a row may have
    finished in seeds that are not (yet) complete."""
    partial = {p["configuration"] for p in (sweep.get("partial") or {}).get("configurations", [])}
    return ("none aggregated (no seed of this configuration is complete)" if configuration in partial
            else "none recorded (stopped first)")


def _by(cells: list[dict[str, Any]], conf: int, row: str, repeat0: bool = True) -> list[dict[str, Any]]:
    return [c for c in cells if c["configuration"] == conf and c["row"] == row and (c["repeat"] == 0 or not repeat0)]


def _statistics(confs: list[dict[str, Any]], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration and row, across seeds: geometric mean and 95 % Student-t interval (of the log) of the
    final and the median-last perplexity (runs that finished; diverged ones are counted, not averaged)."""
    out = []
    for conf in confs:
        for row in conf["rows"]:
            runs = _by(cells, conf["index"], row)
            ok = [c for c in runs if c["status"] == "ok"]
            out.append({"configuration": conf["index"], "row": row, "seeds": len(runs),
                        "statuses": dict(sorted(Counter(c["status"] for c in runs).items())),
                        # geometric: a mean of the seeds' cross-entropies, and an interval that stays at or above 1
                        # (eval_perplexity: n 0 without --eval-text)
                        **{k: mean_interval([c[k] for c in ok], log=True, least=1.0)
                           for k in ("final_perplexity", "median_last_perplexity", "eval_perplexity")}})
    return out


def _equivalence(confs: list[dict[str, Any]], cells: list[dict[str, Any]], margin: float) -> dict[str, Any] | None:
    """--init independent/framework: paired TOST of each row against the oracle (see EQUIVALENCE_TEXT)."""
    chosen = [c for c in confs if c["init"] in ("independent", "framework") and ORACLE in c["rows"]]
    if not chosen:
        return None
    rows = []
    for conf in chosen:
        oracle = {c["seed"]: c["median_last_perplexity"] for c in _by(cells, conf["index"], ORACLE) if c["status"] == "ok"}
        for row in conf["rows"]:
            if row == ORACLE:
                continue
            diffs, left_out = [], Counter()
            for c in _by(cells, conf["index"], row):
                if c["status"] != "ok" or c["median_last_perplexity"] is None:
                    left_out["the row's run did not finish"] += 1
                    continue
                # framework init: the pair is the oracle trained from the same weights; else (independent
                # init, or a row that starts from d2l's weights) the oracle's own run of the seed. A pair that
                # diverged is left out: the oracle's own run starts elsewhere (its initialisers alone moved
                # the mean difference from -0.6 % to -53 %).
                partner = c["paired_median_last_perplexity"] if c["paired"] else oracle.get(c["seed"])
                if not partner:
                    left_out["the d2l model from the same weights diverged" if c["paired"]
                             else "the oracle's run of the seed did not finish"] += 1
                    continue
                diffs.append((c["median_last_perplexity"] - partner) / partner)
            rows.append({"configuration": conf["index"], "row": row, **tost_paired(diffs, margin),
                         "left_out": dict(sorted(left_out.items()))})
    return {"test": EQUIVALENCE_TEXT.format(margin=margin), "margin": margin, "quantity": "median_last_perplexity",
            "rows": rows}


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _speed(confs: list[dict[str, Any]], cells: list[dict[str, Any]], timings: dict[str, Any]) -> dict[str, Any]:
    """Median and range of tokens/s over seeds and repeats, as a ratio to the fastest row of the
    same configuration (1.0 = fastest)."""
    rows = []
    for conf in confs:
        mine = []
        for row in conf["rows"]:
            t = [timings[c["id"]] for c in _by(cells, conf["index"], row, repeat0=False)
                 if c["id"] in timings and c["status"] == "ok" and timings[c["id"]].get("tokens_per_sec")]
            rates = [x["tokens_per_sec"] for x in t]
            firsts = [x["first_epoch_seconds"] for x in t if x.get("first_epoch_seconds") is not None]
            mine.append({"configuration": conf["index"], "row": row, "n": len(rates),
                         "median": _median(rates) if rates else None, "min": min(rates) if rates else None,
                         "max": max(rates) if rates else None,
                         "first_epoch_seconds_median": _median(firsts) if firsts else None,
                         "contended": any(x.get("contended") for x in t)})
        fastest = max((r["median"] for r in mine if r["median"]), default=None)
        for r in mine:
            r["ratio_to_fastest"] = r["median"] / fastest if fastest and r["median"] else None
        rows += mine
    return {"contended": any(r["contended"] for r in rows), "rows": rows}


# --- files ------------------------------------------------------------------------------------------


def _f(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _ci(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    return report.format_ppl(s["mean"]) + (f" [{report.format_ppl(s['ci95'][0])}, {report.format_ppl(s['ci95'][1])}]" if s.get("ci95")
                                     else " (1 seed)")


def cells_csv(sweep: dict[str, Any]) -> str:
    labels = {c["index"]: c["label"] for c in sweep["configurations"]}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    timing_cols = ["tokens_per_sec", "first_epoch_seconds", "train_seconds", "peak_rss_mb", "wall_seconds", "attempts",
                   "executor", "node", "contended"]
    cols = ["id", "configuration", "seed", "repeat", "row", "backend", "impl", "status", "final_perplexity",
            "median_last_perplexity", "best_perplexity", "eval_perplexity", "error"]
    w.writerow(cols + timing_cols)
    for c in sweep["cells"]:
        t = sweep["timings"].get(c["id"], {})
        w.writerow([labels[c["configuration"]] if k == "configuration" else c.get(k) for k in cols]
                   + [t.get(k) for k in timing_cols])
    return buf.getvalue()


def markdown(sweep: dict[str, Any], plots: list[str]) -> str:
    run, confs = sweep["run"], {c["index"]: c for c in sweep["configurations"]}
    statuses = Counter(c["status"] for c in sweep["cells"])
    contended = sweep["speed"]["contended"]
    lines = ["# multirnn sweep", "",
             f"Command: `{run.get('command', '?')}`  ", f"Written: {run.get('created')}  ",
             f"Executor: {run.get('executor', {}).get('executor')} ({_executor_text(run)})"
             + _cells_ran_text(sweep) + "  ",
             f"Cells: {len(sweep['cells'])} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))})"
             + (f"; STOPPED by {run['stopped']}: partial results" if run.get("stopped") else "") + "  ",
             f"Machine: {run.get('machine', {}).get('platform')}, {run.get('machine', {}).get('cpu_count')} CPUs", ""]
    partial = sweep.get("partial")
    if partial:
        lines += ["## Partial aggregate", "", f"{partial['rule']}.", ""]
        lines += [f"- {confs[p['configuration']]['label']}: {partial_text(p)}" for p in partial["configurations"]]
        lines.append("")
    lines += ["## Verdicts per configuration and seed", "",
              "The verdict of `python -m multirnn.compare` on the same rows (same code: `compare.assemble`).", ""]
    lines.append(report.markdown_table(
        [[confs[g["configuration"]]["label"], str(g["seed"]), g["status"], (g["summary"] or "-").replace("|", "/")]
         for g in sweep["groups"]], ["configuration", "seed", "verdict", "summary"]))
    lines += ["", "## Perplexity across seeds", "",
              ("Geometric mean over seeds and its 95 % interval (Student's t distribution, n - 1 degrees of freedom, "
               "of the log perplexity: the seeds' mean cross-entropy, an interval that stays positive), of the "
               "final epoch's perplexity and of the median over the last 10 % of epochs (at least 10); runs that did "
               "not finish are counted in `runs`, not averaged."), ""]
    # --eval-text's perplexity (the final model's, on the other text) where any configuration has one
    evaluated = any((s.get("eval_perplexity") or {}).get("n") for s in sweep["statistics"])
    lines.append(report.markdown_table(
        [[confs[s["configuration"]]["label"], s["row"],
          ", ".join(f"{n} {k}" for k, n in s["statuses"].items()) or no_runs_text(sweep, s["configuration"]),
          _ci(s["final_perplexity"]), _ci(s["median_last_perplexity"])]
         + ([_ci(s.get("eval_perplexity") or {"mean": None})] if evaluated else []) for s in sweep["statistics"]],
        ["configuration", "row", "runs", "final ppl, geo. mean [95 % CI]", "median last, geo. mean [95 % CI]"]
        + (["eval text ppl, geo. mean [95 % CI]"] if evaluated else [])))
    eq = sweep.get("equivalence")
    if eq:
        lines += ["", "## Equivalence (independent / framework initialisation)", "", f"Test: {eq['test']}.", ""]
        lines.append(report.markdown_table(
            [[confs[r["configuration"]]["label"], r["row"], str(r["n"]), _f(r["mean"], "+.2%"),
              f"[{r['ci90'][0]:+.2%}, {r['ci90'][1]:+.2%}]" if r["ci90"] else "-", _f(r["p_value"], ".3g"),
              {True: "equivalent", False: "NOT equivalent", None: "not shown"}[r["equivalent"]],
              "; ".join(f"{n}: {why}" for why, n in (r.get("left_out") or {}).items()) or "-"] for r in eq["rows"]],
            ["configuration", "row", "seeds", "mean rel. diff", "90 % CI", "TOST p", "result", "runs left out"]))
    lines += ["", "## Speed", "",
              "Tokens/s of each run (median over its epochs after the first), then the median and range over seeds "
              "and repeats; ratio: to the fastest row of the same configuration (1.00 = fastest)."
              + (" **Contended timings**: cells shared the machine (several at once), so these are not clean "
                 "single-run speeds; rerun with `--jobs 1` for those." if contended else "")
              + (f" **Busy machine**: {busy}." if (busy := run_busy_note(sweep["run"])) else ""), ""]
    lines.append(report.markdown_table(
        [[confs[r["configuration"]]["label"], r["row"], str(r["n"]), _f(r["median"], ",.0f"),
          f"{r['min']:,.0f}-{r['max']:,.0f}" if r["n"] else "-", _f(r["ratio_to_fastest"], ".2f"),
          _f(r["first_epoch_seconds_median"], ".2f"), "yes" if r["contended"] else "no"] for r in sweep["speed"]["rows"]],
        ["configuration", "row", "runs", "median tokens/s", "range", "ratio", "1st epoch s", "contended"]))
    if plots:
        lines += [""] + [f"![{p}]({p})" for p in plots]
    problems = [c for c in sweep["cells"] if c["status"] not in ("ok", "pending")]
    if problems:
        lines += ["", "## Problems", ""]
        for c in problems:
            t = sweep["timings"].get(c["id"], {})
            lines.append(f"- `{c['id']}` ({c['row']}, {confs[c['configuration']]['label']}, seed {c['seed']}): "
                         f"{c['status']} after {t.get('attempts', '?')} attempt(s): {c['error']}")
    lines += ["", ("Files: `sweep.json` (schema 1), `cells.csv`, `cells/<id>.json` (every run's full record), "
                   "`groups/<configuration>-s<seed>/` (compare's report of each configuration and seed"
                   + (", complete ones only" if partial else "") + "), `journal.jsonl`."), ""]
    return "\n".join(lines)


def _cells_ran_text(sweep: dict[str, Any]) -> str:
    """How the cells really ran, where that differs from this start's executor (a resume with other
    --jobs/--threads, or cells run on Ray and then locally)."""
    e = sweep["run"].get("executor", {})
    ways = Counter((t.get("executor"), t.get("threads"), t.get("concurrency")) for t in sweep.get("timings", {}).values()
                   if t.get("executor"))
    now = (e.get("executor"), e.get("threads"), e.get("jobs") if e.get("executor") == "local" else None)
    if not ways or all(w[:2] == now[:2] and (now[2] is None or w[2] == now[2]) for w in ways):
        return ""
    parts = [f"{n} on {ex}, {th} thread(s)" + (f", {c} at a time" if c else "") for (ex, th, c), n in sorted(
        ways.items(), key=lambda kv: -kv[1])]
    return f"; the cells ran: {'; '.join(parts)}"


def _executor_text(run: dict[str, Any]) -> str:
    e = run.get("executor", {})
    if e.get("executor") == "ray":
        nodes = e.get("nodes") or []
        return f"Ray at {e.get('address')}, {len(nodes)} node(s), {e.get('threads')} thread(s) per cell"
    return f"{e.get('jobs')} job(s) at a time, {e.get('threads')} thread(s) each"


def write_all(sweep: dict[str, Any], out: Path, records: dict[str, Any], cells: list[Cell], groups: list[Group],
              retries: int, make_plots: bool = True) -> tuple[list[str], list[str]]:
    """sweep.json, cells.csv, report.md, plots, and compare's report of every group; returns the plots
    drawn (file names) and notes."""
    from . import sweep_plots

    notes, plots = [], []
    if make_plots:
        plots, notes = sweep_plots.plot_all(sweep, records, out)
    for stale in ("perplexity_bands.png", "speed_heatmap.png"):  # an earlier start's, no longer of these results
        if stale not in plots:
            (out / stale).unlink(missing_ok=True)
    complete = {(g["configuration"], g["seed"]) for g in sweep["groups"] if g["complete"]}
    for g in groups:  # compare's own files for each (configuration, seed): the drill-down
        if (g.configuration.index, g.seed) not in complete:
            continue  # compare's verdict over some of the rows would read as the whole comparison's
        res = _group_results(g, [c for c in cells if c.group is g], records, retries, sweep.get("run"))
        if res is not None:
            folder = out / "groups" / g.folder
            folder.mkdir(parents=True, exist_ok=True)
            report.write_all(res, folder, make_plots=False)
    write_json_atomic(out / "sweep.json", sweep)
    write_text_atomic(out / "cells.csv", cells_csv(sweep))
    write_text_atomic(out / "report.md", markdown(sweep, plots))
    return plots, notes
