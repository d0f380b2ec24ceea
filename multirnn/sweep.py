"""``python -m multirnn.sweep``: the comparison matrix -- compare's runs over every combination of
options and seeds, locally or on a Ray cluster, resumable, with statistics across seeds.

Every ``compare`` option may be a comma list (``--dtype float32,float64 --hidden 128,512``) or come
from ``--spec sweep.toml``; their cross product are the configurations, ``--seeds 0-4`` multiplies
them, and within each (configuration, seed) the rows are compare's own (``--backends``,
``--impl``). Each row is a *cell*: one training run in one worker process, its record written to
``out/cells/<id>.json`` the moment it ends. The NumPy oracle of a (configuration, seed) runs once
and anchors every other row of it. See ``multirnn.sweep_spec`` (cells), ``sweep_engine`` (the
loop and its files), ``sweep_exec`` (local pool, Ray tasks) and ``sweep_report`` (the aggregate).

The folder's ``spec.json`` records what defines the sweep (its settings and cells) when it starts
there; starting again in that folder (``--resume``, or a rerun) with other settings is refused.

Exit status: 0 every group agrees, 1 a disagreement or a crashed cell, 2 bad usage (nothing
written), 3 no backend could run, 128 + N stopped by signal N (a partial aggregate is written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import re
import shlex
import signal
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, blas, compare, lockstep, report, verdict
from .backends import _REGISTRY, refusal
from .files import LOCK_FILE, check_writable, folder_holder
from .info import installed_version
from .load import OtherLoad
from .progress import RunProgress
from .provenance import code_version
from .runner import DEFAULT_STALL_TIMEOUT, Stopped, defer_signals, raise_on_signals, signal_name
from .sweep_engine import PROGRESS_JOB, SPEC_FILE, Engine, Store, estimate_wall, first_line, is_final
from .sweep_exec import RAY_HINT, LocalExecutor, check_reachable, close_executor, usable_cores
from .sweep_spec import (
    PASS_THROUGH,
    ROW_OPTIONS,
    SpecError,
    SpecFile,
    compare_actions,
    expand,
    ignored_by_presets,
    parse_seeds,
    read_toml,
    refuse_ed1_options,
    refuse_unused_init_seeds,
    run_order,
    seeds_text,
    split_values,
    swept_dests,
)
from .sweep_stats import DEFAULT_MARGIN

EXIT_OK, EXIT_DISAGREE, EXIT_USAGE, EXIT_NO_BACKEND, EXIT_NOT_JUDGED = 0, 1, 2, 3, 4

EXAMPLES = """\
examples:
  python -m multirnn.sweep --backends numpy,torch,jax --dtype float32,float64 --seeds 0-4 --epochs 20
  python -m multirnn.sweep --spec sweep.toml --out runs/matrix          # the same keys, in a TOML file
  python -m multirnn.sweep --spec sweep.toml --out runs/matrix --resume # continue after a stop or a crash
  python -m multirnn.sweep --spec sweep.toml --dry-run                  # the cells and an estimated cost
  python -m multirnn.sweep --spec sweep.toml --executor ray --address auto   # on a running Ray cluster

exit status: 0 every configuration and seed agrees, 1 a disagreement or a crashed cell, 2 bad usage,
3 no backend could run, 4 nothing disagreed but some group had nothing to compare (as compare's exit 4),
128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; a partial aggregate is written).
"""

# Nominal speeds for --dry-run's estimate: tokens/s of each backend on the quick preset (hidden 512,
# rnn, float32, fast mode) on this project's 2-core machine (README), and seconds to start a worker
# and import the framework. Anything else: the NumPy figures.
NOMINAL_TOKENS_PER_SEC = {"numpy": 30_000, "torch": 74_000, "mxnet": 50_000, "tensorflow": 47_000, "jax": 61_000}
NOMINAL_STARTUP_SECONDS = {"numpy": 1.0, "torch": 4.0, "mxnet": 3.0, "tensorflow": 7.0, "jax": 5.0}
GATES = {"rnn": 1, "gru": 3, "gru-reset-after": 3, "lstm": 4}
ESTIMATE_TEXT = ("estimate: per cell, a worker start-up ({startup}) plus tokens x epochs (x seeds of --init framework, "
                 "+ the re-anchored checks) at a nominal tokens/s per backend (README's quick-preset speeds on a "
                 "2-core machine), scaled by hidden/512 x gates x layers, and an --eval-text read at half that cost "
                 "per token (d2l ed. 2: once per window a token is in); wall time: those cell times scheduled as "
                 "the sweep runs them ({slots}; in each configuration and seed, the row the others restart from, the "
                 "NumPy oracle, first and the others once it has ended). Real speeds vary by 2x or more")


def build_parser() -> argparse.ArgumentParser:
    p = compare.ArgParser(
        prog="python -m multirnn.sweep", argument_default=argparse.SUPPRESS, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run multirnn.compare over every combination of the given values (each compare option may "
        "be a comma list) and seeds, locally or on Ray; resumable; verdicts, statistics across seeds and speed.")
    p.add_argument("--version", action="version", version=f"multirnn {__version__}")
    s = p.add_argument_group("the sweep")
    s.add_argument("--spec", metavar="FILE", help="a TOML file with the same keys as these options "
                   "(e.g. dtype = [\"float32\", \"float64\"], seeds = \"0-4\"); options given here win")
    s.add_argument("--seeds", metavar="LIST", help="seeds: numbers and ranges, e.g. 0-4,7 (default 0)")
    s.add_argument("--repeats", type=compare.number_arg(int, "a positive integer", 100), metavar="N",
                   help="runs of every row per configuration and seed (default 1); repeats only add timings")
    s.add_argument("--equivalence-margin", type=_margin, metavar="M",
                   help=f"--init independent/framework: TOST margin, relative (default {DEFAULT_MARGIN:g})")
    c = p.add_argument_group("compare's options (a comma list gives one configuration per value; "
                             "--backends and --impl are the rows of each, as in compare)")
    for a in compare_actions():
        kwargs: dict[str, Any] = {"dest": a.dest, "help": a.help, "metavar": "V[,V...]"}
        if a.dest in PASS_THROUGH:
            kwargs.update(action="append", metavar=a.metavar)
        c.add_argument(*[o for o in a.option_strings if o.startswith("--")], **kwargs)
    e = p.add_argument_group("where it runs")
    e.add_argument("--executor", choices=["local", "ray"], help="local (default): worker processes on this machine; "
                   f"ray: every cell a Ray task ({RAY_HINT})")
    e.add_argument("--address", metavar="ADDR", help="--executor ray: auto (the running cluster), host:port or "
                   "ray://host:port; default: a local Ray instance started for this sweep")
    e.add_argument("--jobs", type=compare.number_arg(int, "a positive integer", 1024), metavar="N",
                   help="cells at a time (default: usable cores / --threads)")
    e.add_argument("--threads", type=compare.number_arg(int, "a positive integer", 1024), metavar="N",
                   help="CPU threads of every framework in a cell, and the CPUs a Ray task declares "
                   "(default: usable cores / --jobs, at least 1)")
    e.add_argument("--retries", type=compare.number_arg(int, "a non-negative integer", 100, allow_zero=True),
                   metavar="N", help="run a crashed cell again up to N times (default 1)")
    e.add_argument("--stall-timeout", type=compare.number_arg(float, "a positive number of seconds"), metavar="SECONDS",
                   help=f"end a worker silent for this long (default {DEFAULT_STALL_TIMEOUT:.0f})")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", type=compare.folder_arg, help="output folder (default: runs/sweep-<timestamp>); rerunning into "
                   "the same folder keeps every finished cell (of the same sweep)")
    o.add_argument("--resume", action="store_true", help="continue the sweep in --out (it must exist, "
                   "started with the same settings)")
    o.add_argument("--overwrite", action="store_true", help="replace the sweep in --out: clear the files a sweep "
                   "writes there (and only those)")
    o.add_argument("--dry-run", action="store_true", help="print the cells and an estimated cost, run nothing")
    o.add_argument("--keep-checkpoints", action="store_true", help="keep the oracle runs' checkpoints (checkpoints/)")
    o.add_argument("--no-plot", action="store_true", help="no perplexity_bands.png, speed_heatmap.png")
    o.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


@dataclass
class Options:
    """The sweep's settings after the command line and --spec are merged and checked."""

    dims: dict[str, list[str]]
    fixed: list[str]
    seeds: list[int]
    repeats: int
    margin: float
    executor: str
    address: str | None
    jobs: int
    threads: int
    retries: int
    stall_timeout: float
    out: str | None
    resume: bool
    overwrite: bool
    dry_run: bool
    keep_checkpoints: bool
    plots: bool
    quiet: bool
    notes: list[str]
    # dest -> the --spec file its value came from (not overridden on the command line): errors name it
    sources: dict[str, SpecFile] = field(default_factory=dict)


def _toml_argv(values: dict[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for dest, value in values.items():
        a = actions[dest]
        opt = next(o for o in a.option_strings if o.startswith("--"))
        if a.nargs == 0:
            if value is True:
                argv.append(opt)
            elif value is not False:
                raise SpecError("expected true or false")
        elif dest in PASS_THROUGH:
            for v in value if isinstance(value, list) else [value]:
                argv += [opt, str(v)]
        else:
            argv += [opt, ",".join(str(v) for v in value) if isinstance(value, list) else str(value)]
    return argv


# The option a message of argparse or compare opens with: "argument --epochs: ...", "--text 'x': ...".
_NAMED = re.compile(r"(?:argument )?--([a-z0-9][a-z0-9-]*)(?:/-\w+)?(?::\s*|\s+)")


def _reason(message: str, value: Any) -> str:
    """A message about an option's value without the option, and without the value when the file's
    own text shows it whole: "argument --epochs: expected a positive integer, got '0'" -> "expected a
    positive integer" (a list's bad element stays named)."""
    m = _NAMED.match(message)
    reason = message[m.end():] if m else message
    for whole in (repr(str(value)), repr(value)):  # as argparse and compare echo it, as parse_seeds does a list
        reason = reason.removeprefix(f"{whole}: ")
    if not isinstance(value, list):
        reason = reason.removesuffix(f", got {str(value)!r}")
    return reason


def _check_spec_file(spec: SpecFile, parser: argparse.ArgumentParser) -> None:
    """Every key of a --spec file on its own, before it is merged with the command line, so that a bad
    value is named where it was written (sweep.toml: epochs = 0: ...), not as if typed as --epochs 0.

    Raises:
        SpecError: the first bad value.
    """
    swept, compare_parser = set(swept_dests()), compare.build_parser()
    for dest, value in spec.values.items():
        try:
            parser.parse_args(_toml_argv({dest: value}, parser))  # the sweep's own types and choices
            if dest == "seeds":
                parse_seeds(value)
            if dest in swept:  # compare's types and choices, value by value as each configuration gets them
                for v in split_values(dest, value):
                    compare_parser.parse_args([f"--{dest.replace('_', '-')}", v])
            elif dest == "backends":
                compare._backends_from_args(",".join(split_values(dest, value)))
            elif dest == "impl":
                compare._impls_from_args(",".join(split_values(dest, value)))
        except (SpecError, compare.UsageError) as exc:
            raise spec.error(dest, _reason(str(exc), value)) from None


def _blame(opts: Options, exc: SpecError) -> SpecError:
    """A later error about an option whose value came from the --spec file, named there."""
    m = _NAMED.match(str(exc))
    dest = m.group(1).replace("-", "_") if m else None
    if dest not in opts.sources:
        return exc
    return opts.sources[dest].error(dest, _reason(str(exc), opts.sources[dest].values[dest]))


def expand_options(opts: Options) -> tuple[list[Any], list[Any], list[Any]]:
    """The configurations, groups and cells of the sweep (:func:`multirnn.sweep_spec.expand`).

    Raises:
        SpecError: an invalid value, named in the --spec file when it came from there.
    """
    try:
        return expand(opts.dims, opts.fixed, opts.seeds, opts.repeats)
    except SpecError as exc:
        raise _blame(opts, exc) from None


def parse_options(argv: list[str]) -> Options:
    """Command line (and --spec) -> Options.

    Raises:
        SpecError, compare.UsageError: anything invalid (one line for the user).
    """
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    sources: dict[str, SpecFile] = {}
    if "spec" in given:
        spec = read_toml(given["spec"], parser)
        _check_spec_file(spec, parser)
        from_file = vars(parser.parse_args(_toml_argv(spec.values, parser)))
        sources = {d: spec for d in spec.values if d not in given}
        given = {**from_file, **given}
    # a --spec list's items are the values as written (a path with a comma is one value); the command line's
    # comma lists and a file's scalars are split on commas
    dims = {d: split_values(d, sources[d].values[d] if d in sources and isinstance(sources[d].values[d], list)
                            else given[d]) for d in swept_dests() if d in given}
    fixed: list[str] = []
    for d in ROW_OPTIONS:
        if d in given:
            fixed += [f"--{d}", given[d]]
    for prefix in given.get("prefix") or []:
        fixed += ["--prefix", prefix]
    cores, notes = usable_cores(), []
    executor = given.get("executor", "local")
    jobs, threads = given.get("jobs"), given.get("threads")
    threads = threads or max(1, cores // (jobs or cores))
    jobs = jobs or max(1, cores // threads)
    refuse_ed1_options(dims)  # as compare does, when no configuration would use them
    if (ignored := ignored_by_presets(dims)) is not None:
        notes.append(ignored)
    if (ignored := refuse_unused_init_seeds(dims)) is not None:
        notes.append(ignored)
    if executor == "local" and jobs * threads > cores:
        notes.append(f"{jobs} jobs x {threads} threads exceed the {cores} usable cores: timings will be contended")
    if given.get("keep_checkpoints") and dims.get("lockstep") and all(v == "off" for v in dims["lockstep"]):
        raise SpecError("--keep-checkpoints keeps the checkpoints of the re-anchored checks: with --lockstep off "
                        "none are written")
    if "address" in given and executor != "ray":
        raise SpecError("--address needs --executor ray")
    if given.get("resume") and given.get("overwrite"):
        raise SpecError("--resume and --overwrite exclude each other: continue the sweep in --out, or replace it")
    if "address" in given and not given.get("dry_run"):
        try:  # before importing ray: an unreachable address would have ray.init retry for minutes
            check_reachable(given["address"])
        except ConnectionError as exc:
            if "address" in sources:
                raise sources["address"].error("address", str(exc)) from None
            raise SpecError(f"--address {given['address']}: {exc}") from None
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise SpecError(f"--executor ray needs the ray package, which cannot be imported ({exc}): {RAY_HINT}") from None
    return Options(dims=dims, fixed=fixed, seeds=parse_seeds(given.get("seeds", "0")), repeats=given.get("repeats", 1),
                   margin=given.get("equivalence_margin", DEFAULT_MARGIN), executor=executor,
                   address=given.get("address"), jobs=jobs, threads=threads, retries=given.get("retries", 1),
                   stall_timeout=given.get("stall_timeout", DEFAULT_STALL_TIMEOUT), out=given.get("out"),
                   resume=given.get("resume", False), overwrite=given.get("overwrite", False),
                   dry_run=given.get("dry_run", False), keep_checkpoints=given.get("keep_checkpoints", False),
                   plots=not given.get("no_plot", False), quiet=given.get("quiet", False), notes=notes,
                   sources=sources)


def estimate_seconds(cell: Any) -> float:
    """A cell's nominal cost in seconds (see ESTIMATE_TEXT)."""
    plan = cell.group.plan
    c = plan.config
    rate = NOMINAL_TOKENS_PER_SEC.get(cell.backend, NOMINAL_TOKENS_PER_SEC["numpy"])
    scale = max(c.num_hiddens / 512, 1 / 16) * GATES.get(c.cell, 1) * c.num_layers
    per_epoch = plan.steps_per_epoch * c.batch_size * c.num_steps * scale / rate
    epochs = c.num_epochs * (1 + len(plan.seeds))
    if cell.anchor:  # re-anchored checks: a (capped) stretch and two probe steps per checkpoint
        epochs += len(plan.lock_epochs) * lockstep.checkpoint_cost(plan.steps_per_epoch)
    seconds = NOMINAL_STARTUP_SECONDS.get(cell.backend, 2.0) + per_epoch * epochs
    if plan.eval_ids is not None:  # --eval-text: a forward pass at about half a training step's cost per token
        n = len(plan.eval_ids)
        # ed. 2 scores every window one token apart: each token is read num_steps times
        tokens = (n - c.num_steps) * c.num_steps if c.protocol == "d2l-ed2" else n
        seconds += tokens * scale / rate / 2  # the main run only: extra seeds are not scored on it
    return seconds


def _prepare_out(opts: Options) -> Path:
    if opts.out is None:
        if opts.resume:
            raise SpecError("--resume needs --out: the folder of the sweep to continue")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in range(1, 10_000):
            out = Path("runs") / (f"sweep-{stamp}" if n == 1 else f"sweep-{stamp}-{n}")
            if not out.exists():
                return out
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {opts.out!r} exists and is not a folder")
    is_sweep = Store(out).is_sweep()
    if opts.resume and not out.exists():
        raise SpecError(f"--resume: {opts.out!r} does not exist: no sweep to continue")
    if opts.resume and not is_sweep:
        compare_run = " but a compare run (continue it with python -m multirnn.compare --resume)" \
            if (out / "results.json").is_file() else ""
        raise SpecError(f"--resume: {opts.out!r} holds no sweep (no {SPEC_FILE} or cells/){compare_run}")
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not is_sweep:
        raise SpecError(f"--out {opts.out!r} is not empty and not a sweep folder; choose another folder")
    return out


def _check_writable(out: Path) -> None:
    """``out`` can be created and written (a file in the way, a read-only or pseudo file system)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        check_writable(out)
    except OSError as exc:
        raise SpecError(f"cannot write to output folder {str(out)!r}: {exc.strerror or exc}") from None


def _settings(opts: Options) -> dict[str, Any]:
    """What defines the sweep's cells and report (sweep.json's ``spec``). Where and how the cells run
    (--executor, --jobs, --threads, --retries, ...) is not part of it, as it is not of a cell's id."""
    return {"dimensions": opts.dims, "rows": opts.fixed, "seeds": opts.seeds, "repeats": opts.repeats,
            "equivalence_margin": opts.margin}


def _settings_text(settings: dict[str, Any]) -> dict[str, str]:
    """Each setting as the option that gives it and its value ("--epochs": "10")."""
    text = {f"--{d.replace('_', '-')}": ",".join(v) for d, v in settings.get("dimensions", {}).items()}
    rows = settings.get("rows", [])
    for opt, value in zip(rows[::2], rows[1::2]):  # --prefix may repeat
        text[opt] = f"{text[opt]} {shlex.quote(value)}" if opt in text else shlex.quote(value)
    text["--seeds"] = seeds_text(settings.get("seeds", []))
    text["--repeats"] = str(settings.get("repeats"))
    text["--equivalence-margin"] = f"{settings.get('equivalence_margin')}"
    return text


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ, e.g. ["--epochs 10 (now 11)"]."""
    a, b = _settings_text(before), _settings_text(now)
    return [f"{opt} {a.get(opt, 'not given')} (now {b.get(opt, 'not given')})"
            for opt in dict.fromkeys([*a, *b]) if a.get(opt) != b.get(opt)]


def _earlier(out: Path) -> dict[str, Any] | None:
    """What defines the sweep already in ``out``: spec.json, or the spec of the sweep.json of a sweep
    from before spec.json existed (None if neither is there)."""
    try:
        found = Store(out).definition()
        if found is None and (out / "sweep.json").is_file():
            old = json.loads((out / "sweep.json").read_text())
            found = {"settings": old.get("spec", {}), "command": old.get("run", {}).get("command")}
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read the sweep in {str(out)!r}: {exc}") from None
    return found


def _check_same_sweep(out: Path, opts: Options, settings: dict[str, Any], cell_ids: list[str]) -> None:
    """Refuse to continue the sweep in ``out`` with other settings: its cells/ and report would then
    mix two sweeps. Only reads the folder.

    Raises:
        SpecError: naming what differs (the settings, else the cells the same options now make).
    """
    store = Store(out)
    if opts.overwrite or not store.is_sweep():
        return
    earlier = _earlier(out)
    files_changed = False  # the same options, other code or files: repeating the command cannot help
    if earlier and "cells" in earlier:
        # The cell ids decide: options spelled differently (a default given explicitly) that make the
        # same cells are the same sweep; the settings only word what differs when the cells do.
        if set(earlier["cells"]) == set(cell_ids):  # only what the aggregate alone reads can still differ
            before, now = earlier["settings"].get("equivalence_margin"), settings["equivalence_margin"]
            differs = [] if before == now else [f"--equivalence-margin {before} (now {now})"]
        else:
            code = earlier.get("code_version") or f"{earlier.get('multirnn_version', '?')}, not recorded"
            differs = _differences(earlier["settings"], settings)
            if not differs:
                files_changed = True
                other_files = ("the same options now make other cells (a --text or --eval-text file, or a "
                               "third-party backend's source file, changed)")
                differs = [f"multirnn's code {code} (now {code_version()})" if code != code_version() else other_files]
    else:  # a sweep from before spec.json: only its settings (and its cells/ below) can tell
        differs = _differences(earlier["settings"], settings) if earlier else []
    stray = store.recorded() - set(cell_ids)
    if not differs and stray:  # a folder without a record of its settings: its cells tell
        differs = [f"cells/ holds {len(stray)} cell(s) that are not in this sweep"]
    if not differs:
        return
    what = "; ".join(differs[:4]) + (f"; and {len(differs) - 4} more" if len(differs) > 4 else "")
    command = (earlier or {}).get("command")
    again = f"repeat its command ({compare.without_run_control(command)})" if command else "repeat its settings"
    if files_changed:  # its cells' results came from what is no longer there
        raise SpecError(f"--out {opts.out!r} holds a sweep of other code or files: {'; '.join(differs)}; its cells "
                        "cannot be reused: use --overwrite to start it again, or another --out")
    if opts.resume:
        raise SpecError(f"--resume: the sweep in {opts.out!r} used other settings: {what}; {again} with --resume, "
                        "or use --overwrite or another --out")
    raise SpecError(f"--out {opts.out!r} holds a sweep with other settings: {what}; use --overwrite to replace it, "
                    "or another --out")


def _dry_run(opts: Options, configurations: list[Any], groups: list[Any], cells: list[Any]) -> str:
    order = run_order(cells)
    # The cells the real run would run (Engine.plan: unfinished ones, and an anchor whose checkpoints
    # a pending row still needs), read from --out without writing to it.
    if opts.out and not opts.overwrite:
        to_run = Engine(cells, Store(Path(opts.out)), None, opts.retries, None, {}).plan(order)
    else:
        to_run = order
    # A layer that cannot compute the model is refused without a worker (as the real run does): no cost.
    refused = {c.id for c in cells if refusal(c.backend, c.impl, c.group.plan.config.model)}
    # A framework not installed here ends its local cells at once, unavailable (Ray's nodes may have it)
    missing = {c.id for c in cells if opts.executor == "local" and c.backend in _REGISTRY
               and c.backend != verdict.ORACLE and installed_version(c.backend) is None} - refused
    to_run = [c for c in to_run if c.id not in refused | missing]
    pending = {c.id for c in to_run}
    header = ["id", "configuration", "seed", "row", "repeat", "after", "est. s", "state"]
    est = {c.id: 0.0 if c.id in refused | missing else estimate_seconds(c) for c in cells}
    rows = []
    for c in cells:
        state = ("unsupported" if c.id in refused else "not installed" if c.id in missing
                 else "to run" if c.id in pending else "done")
        rows.append([c.id, c.group.configuration.label, str(c.group.seed), c.label, str(c.repeat), c.anchor or "-",
                     f"{est[c.id]:.1f}", state])
    total = sum(est[c] for c in pending)
    startup = ", ".join(f"{k} {v:g} s" for k, v in NOMINAL_STARTUP_SECONDS.items())
    if opts.executor == "local":
        slots = f"{opts.jobs} at a time"
        cores = max(usable_cores(), 1)
        wall = (f", about {estimate_wall(to_run, est, opts.jobs, opts.threads, cores):,.0f} s wall with "
                f"{opts.jobs} job(s) at a time"
                + (f" ({opts.jobs} x {opts.threads} thread(s) on {cores} cores: cells running together share them)"
                   if opts.jobs > 1 and opts.jobs * min(opts.threads, cores) > cores else ""))
    else:  # how many cells the cluster runs at once is known only once connected: the dependency chains bound it
        slots = "as many at a time as the Ray cluster takes"
        wall = (f", at least {estimate_wall(to_run, est, None):,.0f} s wall (every oracle and then its slowest row; "
                "more when the Ray cluster runs fewer cells at once)")
    lines = [report.text_table(rows, header), "",
             (f"{len(configurations)} configuration(s) x {len(opts.seeds)} seed(s) = {len(groups)} group(s), "
              f"{len(cells)} cell(s), {len(pending)} to run"
              + (f", {len(refused)} unsupported (a layer that cannot compute the model; refused without a worker)"
                 if refused else "")
              + (f", {len(missing)} not installed here (their framework: each ends at once, unavailable)"
                 if missing else "")),
             f"Estimated cost: {total:,.0f} s of cell time{wall}",
             f"({ESTIMATE_TEXT.format(startup=startup, slots=slots)})"]
    return "\n".join(lines)


def _executor(opts: Options) -> Any:
    if opts.executor == "ray":
        from .sweep_exec import RayExecutor

        try:
            return RayExecutor(opts.address, opts.threads, opts.stall_timeout, opts.jobs)
        except Exception as exc:  # noqa: BLE001  (cannot reach the cluster, or cannot start one)
            raise SpecError(f"--executor ray: cannot use Ray at {opts.address or 'a new local instance'}: "
                            f"{first_line_of(exc)}") from None
    return LocalExecutor(opts.jobs, opts.threads, opts.stall_timeout)


def first_line_of(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _summary(sweep: dict[str, Any]) -> str:
    from .sweep_report import no_runs_text, partial_text

    confs = {c["index"]: c["label"] for c in sweep["configurations"]}
    partial = {p["configuration"]: p for p in (sweep.get("partial") or {}).get("configurations", [])}
    lines = []
    width = max((len(s["row"]) for s in sweep["statistics"]), default=0) + 1  # rows line up, however long a name
    for conf in sweep["configurations"]:
        groups = [g for g in sweep["groups"] if g["configuration"] == conf["index"]]
        counts: dict[str, int] = {}
        for g in groups:
            counts[g["status"]] = counts.get(g["status"], 0) + 1
        # per verdict, how many of the configuration's seeds (a group is one seed's compare run)
        # the reference's blow-up, which each seed's verdict names, said here too: the perplexities below are then
        # those of runs that blew up ("agree 2/2 seeds" stood above 1.8e12 alone)
        blown = Counter(((g.get("verdict") or {}).get("reference_diverged") or {}).get("how") for g in groups)
        blown.pop(None, None)
        lines.append(f"{confs[conf['index']]}: " + ", ".join(f"{k} {n}/{len(groups)}" for k, n in counts.items())
                     + f" seed{'s' if len(groups) != 1 else ''}"
                     + "".join(f"; the reference {how} in {n}/{len(groups)}" for how, n in sorted(blown.items()))
                     + (f" ({partial_text(partial[conf['index']])})" if conf["index"] in partial else ""))
        for s in sweep["statistics"]:
            if s["configuration"] == conf["index"]:
                m = s["median_last_perplexity"]
                sp = next((r for r in sweep["speed"]["rows"] if r["configuration"] == conf["index"]
                           and r["row"] == s["row"]), {})
                ci = (f" (95% CI [{report.format_ppl(m['ci95'][0])}, {report.format_ppl(m['ci95'][1])}], n={m.get('n', '?')})"
                      if m.get("ci95") else "")
                ratio = sp.get("ratio_to_fastest")
                statuses = ", ".join(f"{k} {n}" for k, n in sorted((s.get("statuses") or {}).items()))
                # why a row has no run: its first error, as compare's Problems section prints it (an install hint
                # for an unavailable framework reached only report.md under --quiet)
                why = next((c.get("error") for c in sweep.get("cells", []) if c["configuration"] == conf["index"]
                            and c["row"] == s["row"] and c["status"] != "ok" and c.get("error")), None)
                lines.append(f"  {s['row']:<{width}} median-last ppl {report.format_ppl(m['mean'])}{ci}" if m["mean"] is not None
                             else f"  {s['row']:<{width}} " + (f"no finished run ({statuses})" if statuses
                                                                   else no_runs_text(sweep, conf["index"]))
                             + (f": {first_line(why)}" if why else ""))
                if (ev := s.get("eval_perplexity") or {}).get("mean") is not None:
                    lines[-1] += f"  eval-text ppl {report.format_ppl(ev['mean'])}"
                if ratio is not None:
                    lines[-1] += f"  speed {sp['median']:,.0f} tokens/s ({ratio:.2f} of the fastest)"
    return "\n".join(lines)


def _shut_down_ray() -> None:
    """End a Ray instance this process started or joined, if its start was interrupted half way."""
    ray = sys.modules.get("ray")
    if ray is not None:
        with contextlib.suppress(Exception):
            if ray.is_initialized():
                ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    made: Path | None = None  # the --out folder this call created, removed again if it is refused
    opts: Options | None = None
    raise_on_signals()  # SIGTERM/SIGHUP as Stopped from here on: starting Ray takes seconds
    try:
        opts = parse_options(argv)
        configurations, groups, cells = expand_options(opts)
        out = _prepare_out(opts)  # reads --out only: the dry run refuses what the real run would
        settings = _settings(opts)
        _check_same_sweep(out, opts, settings, [c.id for c in cells])
        if opts.dry_run:
            print(_dry_run(opts, configurations, groups, cells))
            for note in opts.notes:
                print(f"note: {note}")
            return EXIT_OK
        # the outermost folder this call will create (mkdir makes the missing parents too)
        made = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
        _check_writable(out)  # before a cluster is reached or a lock taken: a one-line error, as compare's
        blas.name_openblas_core()  # before any worker loads NumPy (local ones, and a local Ray cluster's, inherit it)
        executor = _executor(opts)
    except (SpecError, compare.UsageError, KeyboardInterrupt, Stopped) as exc:
        if made is not None:  # nothing written: no empty folders left behind (a Ray address that did not answer)
            for folder in [out, *out.parents]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
                if folder == made:
                    break
        if isinstance(exc, (KeyboardInterrupt, Stopped)):  # Ctrl-C while a local Ray instance started: a traceback
            signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            ray_loaded = opts is not None and opts.executor == "ray" and "ray" in sys.modules
            _shut_down_ray()
            print(f"multirnn.sweep: stopped ({signal_name(signum)}) before any cell ran: nothing was written",
                  file=sys.stderr)
            if ray_loaded:  # a Ray client interrupted half way through its start crashed the interpreter's
                sys.stdout.flush()  # teardown (exit 139, not 130, 2 of 8 tries): nothing is left to tear down
                sys.stderr.flush()
                os._exit(128 + signum)
            return 128 + signum
        print(f"multirnn.sweep: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    store = Store(out)
    if not store.lock():
        executor.close()
        print(f"multirnn.sweep: error: another sweep is running in {str(out)!r} (pid "
              f"{folder_holder(out)}); wait for it or stop it first", file=sys.stderr)
        return EXIT_USAGE
    if opts.overwrite:  # only now, holding the lock: never under a running sweep
        store.clear()
    store.create()
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "multirnn.sweep", *argv])
    store.define({"multirnn_version": __version__, "code_version": code_version(), "created": _dt.datetime.now().isoformat(timespec="seconds"),
                  "command": command, "settings": settings, "cells": [c.id for c in cells]})
    units = {c.id: estimate_seconds(c) for c in cells}
    order = run_order(cells)
    engine = Engine(cells, store, executor, opts.retries, None, units)
    todo = engine.plan(order)
    # one bar, the cells this session runs (none: no bar, rather than one of 0 cells)
    progress = RunProgress({PROGRESS_JOB: max(sum(units[c.id] for c in todo), 1e-9)} if todo else {},
                           enabled=not opts.quiet, unit="cell")
    engine.progress = progress
    kept = len(cells) - len(todo)
    desc = executor.describe()
    progress.message(f"multirnn.sweep {__version__}: {len(configurations)} configuration(s) x {len(opts.seeds)} seed(s), "
                     f"{len(cells)} cells ({kept} already done) on {desc['executor']} -> {out}")
    if not todo:
        every = "its one cell was" if len(cells) == 1 else f"all {len(cells)} cells were"
        progress.message(f"{every} already done: nothing to run; the report is written again from their records")
    for note in opts.notes:
        progress.message(f"note: {note}")
    store.log("session", argv=argv, executor=desc, cells=len(cells), to_run=len(todo))
    raise_on_signals()
    other_load = OtherLoad()  # on this machine: what other processes take of the cores the local cells use
    failure: BaseException | None = None
    try:
        engine.run()
    except BaseException as exc:  # noqa: BLE001  (raised again once the executor is closed, or given up on)
        failure = exc
    finally:
        progress.close()
        # From here a signal is acted on once the aggregate is written. Deferred before the executor closes:
        # Ray's shutdown takes seconds, and a Ctrl-C then was a bare traceback with no aggregate at all,
        # every cell finished.
        late = defer_signals()
        closed = close_executor(executor, late, lambda line: print(f"multirnn.sweep: {line}", file=sys.stderr))

    def leave(code: int) -> int:
        if not closed:  # a daemon thread still waits on the executor, and so would Ray's exit hook
            with contextlib.suppress(Exception):  # a reader gone away must not keep this process alive
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        return code

    try:
        if failure is not None:
            raise failure
        code = _aggregate(opts, out, settings, configurations, groups, cells, engine, store, command, desc,
                          other_load, late)
    except BaseException:
        if closed:
            raise
        traceback.print_exc()  # and no exit hook: it would wait for the executor's close again, unstoppable
        code = 1  # as an uncaught exception would
    return leave(code)


def _aggregate(opts: Options, out: Path, settings: dict[str, Any], configurations: list[Any], groups: list[Any],
               cells: list[Any], engine: Engine, store: Store, command: str, desc: dict[str, Any],
               other_load: OtherLoad, late: list[int]) -> int:
    """Write the aggregate (sweep.json, cells.csv, report.md, plots) from every record, print the summary
    and notes; returns the exit status."""
    from . import sweep_report

    run = {"created": _dt.datetime.now().isoformat(timespec="seconds"), "multirnn_version": __version__,
           "code_version": code_version(), "command": command, "executor": desc, "stopped": engine.stopped, "machine": compare.machine_info()}
    if opts.executor == "local":  # None: not measurable here (no /proc/stat), or the session was too short
        run["other_load_cores"] = None if (busy := other_load.cores()) is None else round(busy, 2)
        run["usable_cores"] = usable_cores()  # what the load was measured over (taskset, cgroups)
    records = engine.records
    sweep = sweep_report.aggregate(settings, configurations, groups, cells, records, opts.retries, opts.margin, run)
    plots, notes = sweep_report.write_all(sweep, out, records, cells, groups, opts.retries, make_plots=opts.plots)
    complete = all(is_final(engine.records.get(c.id), opts.retries) for c in cells)
    if complete and not engine.stopped:
        engine.cleanup(opts.keep_checkpoints)
    store.log("aggregate", complete=complete, stopped=engine.stopped)
    print(_summary(sweep))
    if busy := sweep_report.run_busy_note(run):
        notes = [*notes, busy]  # beside the speeds just printed, as report.md says it
    crashed_records = [r for c in cells if (r := records.get(c.id)) and r.get("status") == "crashed"]
    if crashed_records and not engine.stopped:  # a rerun keeps them as they are: say how to run them again
        attempts = max(r.get("attempts", 1) for r in crashed_records)
        notes = [*notes, (f"{report.plural(len(crashed_records), 'cell')} crashed in each of its attempts (--retries "
                          "+ 1 of them at most, counted over every session in this folder); a rerun keeps them as "
                          f"they are, and the same command with --retries {attempts} runs each once more")]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    also = ["sweep.json", "cells.csv", *plots, "cells/", *(["groups/"] if (out / "groups").is_dir() else [])]
    print(f"\nReport: {out / 'report.md'}  ({', '.join(also)})")
    if engine.stopped:
        again = compare.without_run_control(command)
        again += "" if opts.out else f" --out {shlex.quote(str(out))}"
        print(f"Continue it (finished cells are kept): {again} --resume")
        return 128 + engine.stop_signal
    if late:
        print(f"multirnn.sweep: stopped by {signal_name(late[0])} while the aggregate was written: every cell had ended and the "
              "aggregate is complete", file=sys.stderr)
        return 128 + int(late[0])
    statuses = {g["status"] for g in sweep["groups"]}
    if statuses == {"no-backend"}:
        return EXIT_NO_BACKEND
    crashed = any(c["status"] == "crashed" for c in sweep["cells"])
    if crashed or not statuses <= {"agree", "not-judged"}:
        return EXIT_DISAGREE
    return EXIT_NOT_JUDGED if "not-judged" in statuses else EXIT_OK


if __name__ == "__main__":
    from .runner import exit_with

    exit_with(main)
