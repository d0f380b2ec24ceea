"""``python -m multirnn.compare``: train every backend side by side and judge whether they agree.

Each backend trains in its own worker process, one after the other (so timings are clean), from
the same initial weights on the same batches; the text is read and tokenised once, here. Results
are written as each backend finishes. The NumPy oracle runs first and saves checkpoints; every
other backend then restarts from them and trains short re-anchored stretches plus probe steps,
which the verdict (:mod:`multirnn.verdict`) holds to fixed bands.

Exit status: 0 all agree, 1 a disagreement or a crash, 2 bad usage, 3 no backend could run, 4
nothing to compare (no reference), 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import glob
import json
import math
import os
import platform
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__, agreement, blas, lockstep, report, verdict
from .backends import (
    BACKEND_ALIASES,
    canonical_name,
    is_builtin,
    known_backends,
    load_backend_class,
    refusal,
    source_digest,
)
from .backends.layer_limits import row_issues
from .cells import CELLS
from .config import ED1_ONLY, LIMITS, PRESETS, TrainConfig, preset
from .data import (
    BUNDLED_TEXTS,
    bundled_name,
    bundled_text_path,
    check_encoding,
    encode_eval_text,
    file_sha256,
    read_text,
    resolve_text,
    text_label,
    text_notes,
)
from .files import (
    LOCK_FILE,
    check_writable,
    clear_written,
    folder_holder,
    held_folders,
    hold_folder,
    release_folder,
    write_json_atomic,
)
from .harness import TrainingData, clean_prefix, prepare_data
from .load import BUSY_CORES, OtherLoad, busy_note
from .progress import RunProgress, backend_status
from .provenance import code_version
from .runner import (
    DEFAULT_STALL_TIMEOUT,
    Stopped,
    crashed_record,
    defer_signals,
    interrupted_record,
    raise_on_signals,
    refused_record,
    run_worker,
    signal_name,
)
from .sweep_exec import CellJob, LocalExecutor, usable_cores
from .worker import ED2_NUM_PREDS, ED2_SAMPLE_PREFIXES, NUM_PREDS, SAMPLE_PREFIXES, WorkerTask

EXIT_AGREE, EXIT_DISAGREE, EXIT_USAGE, EXIT_NO_BACKEND, EXIT_NOT_JUDGED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 143, SIGHUP 129
# Share of <unk> tokens in --eval-text above which the evaluation perplexity is flagged.
UNK_WARNING = 0.05
# A run that trains at least this many tokens in all (rows x epochs x tokens per epoch; the book run
# is 22.4 M, the default 2.7 M) and runs one row at a time on several cores is told about --jobs.
JOBS_HINT_TOKENS = 10_000_000
# Environment variables that cap the instruction set of BLAS/oneDNN/XLA kernels (recorded per run).
ISA_CAP_VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY",
                     "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "XLA_FLAGS")
# The files and folders a run writes into --out (the only ones --overwrite clears).
RUN_FILES = ("results.json", "report.md", "curves.csv", "perplexity.png", "deviation.png")
RUN_DIRS = ("backends", "checkpoints", ".work")

EXAMPLES = """\
examples:
  python -m multirnn.compare                                   # every installed backend, quick preset
  python -m multirnn.compare --backends numpy,torch --epochs 5 --out runs/try
  python -m multirnn.compare --preset d2l-ed1 --sampling random  # the book's 500 epochs
  python -m multirnn.compare --preset d2l-ed1 --jobs 2         # two rows at a time (2 cores: 1.4x sooner)
  python -m multirnn.compare --text my_book.txt --eval-text war_of_the_worlds --prefix "my book"
  python -m multirnn.compare --backends numpy,mypkg.mymodule:MyBackend   # check your own translation
  python -m multirnn.compare --list-backends                   # what is installed, and how to add the rest

exit status: 0 all agree, 1 a disagreement or crash, 2 bad usage, 3 no backend could run,
4 nothing to compare (the oracle alone, fewer than 3 backends without it, or an oracle that diverged before
one whole re-anchored stretch), 128+N stopped by signal N (130 Ctrl-C,
143 SIGTERM, 129 SIGHUP; a partial report is written).
"""


class UsageError(Exception):
    """Bad command-line input: reported as one line on stderr, exit status 2."""


class ArgParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # '--ep 1' must not quietly mean --epochs
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one clear line instead of usage + error
        raise UsageError(message)

    # Options that name a set of things: given twice, the user meant both lists, and argparse keeps the last
    # ("--backends numpy,torch --backends jax" ran jax alone, with nothing to compare it with: exit 4). Other
    # options keep the usual rule that a later one wins (an alias's default overridden on the command line).
    LISTS = ("--backends", "--impl", "--frameworks")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        given: dict[str, list[str]] = {}
        words = list(sys.argv[1:] if args is None else args)
        for i, word in enumerate(words):
            if word == "--":
                break
            name, _, inline = word.partition("=")
            if name in self.LISTS and name in self._option_string_actions:
                given.setdefault(name, []).append(inline if "=" in word else (words[i + 1] if i + 1 < len(words) else ""))
        twice = {k: v for k, v in given.items() if len(v) > 1}
        if twice:
            name, values = next(iter(twice.items()))
            self.error(f"{name} was given {len(values)} times ({', then '.join(map(repr, values))}): give it once, "
                       "as one comma list")
        return super().parse_known_args(args, namespace)


def number_arg(kind: type, what: str, limit: float | None = None, allow_zero: bool = False) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if limit is not None and value > limit:
            raise argparse.ArgumentTypeError(f"{text} is beyond what this tool can run (at most {limit:,})")
        return value

    return parse


def folder_arg(text: str) -> str:
    """An output folder's name: an empty one (an unset shell variable, ``--out "$OUT"``) meant the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?): name a folder, or leave --out out "
                                         "for a new one")
    return text


def _lockstep_arg(text: str) -> str | int:
    if text in ("auto", "off"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, off or a positive number of epochs, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected auto, off or a positive number of epochs, got {text!r}")
    return value


DEFAULT_INIT_SEEDS = 3  # --init framework: seeds per row for the paired TOST


def _defaults(field: str, fmt: str = "{}", protocol: str | None = None) -> str:
    """The value of a config field in every preset (of ``protocol``, when given), for --help."""
    return "default: " + ", ".join(f"{name} {fmt.format(getattr(c, field))}" for name, c in PRESETS.items()
                                   if protocol is None or c.protocol == protocol)


# Presets whose pipeline ignores the ed. 1 options (--sampling, --max-tokens), for --help and the refusal.
_ED2_PRESETS = ", ".join(name for name, c in PRESETS.items() if c.protocol == "d2l-ed2")


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="python -m multirnn.compare",
        description="Train the d2l character RNN in every framework from the same weights on the same "
        "batches, check that shapes, losses, gradients and clipping agree with the NumPy oracle, and "
        "compare speed.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"multirnn {__version__}")
    p.add_argument("--list-backends", action="store_true",
                   help="list every backend: installed version, whether it runs here, how to install it; then exit")
    g = p.add_argument_group("what to compare")
    g.add_argument("--backends", help=f"comma-separated backends (default: all of {','.join(known_backends())}; "
                   "missing ones are reported as unavailable; also "
                   f"{', '.join(f'{a} for {n}' for a, n in BACKEND_ALIASES.items())}); "
                   "package.module:Class loads your own Backend")
    g.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help=f"hyper-parameters (default: quick = d2l ed. 1 for {PRESETS['quick'].num_epochs} epochs; "
                   "d2l-ed1: the book's 500 epochs; d2l-ed2: batch 1024, hidden 32, train/validation split)")
    g.add_argument("--impl", default="scratch", metavar="scratch|layers|all",
                   help="scratch (default): d2l's model written from scratch; layers: the framework's own recurrent "
                   "and dense layers (d2l's concise chapter); all: both; a comma list works too. The NumPy oracle "
                   "is always the reference")
    g.add_argument("--cell", choices=list(CELLS), default=None,
                   help="rnn (default): the tanh RNN; gru: d2l's GRU (reset gate before the recurrent matmul); "
                   "gru-reset-after: cuDNN's/torch's GRU; lstm")
    g.add_argument("--num-layers", type=number_arg(int, "an integer from 1 to 16", 16), metavar="N",
                   help="stacked recurrent layers, d2l's deep RNN (default 1)")
    g.add_argument("--second-bias", choices=["frozen", "trained"], default=None,
                   help="frozen (default): the second, hidden-side bias of torch/Gluon layers is held at zero, "
                   "so the model is d2l's; trained: every gate gets a trained second bias, as the book's concise "
                   "torch/Gluon code has: the model of every row (scratch ones and the oracle too) becomes that "
                   "two-bias model, and layers without such a bias (Keras, flax) are unsupported")
    g.add_argument("--mode", choices=["fast", "eager"], default="fast",
                   help="fast: each backend's fused/compiled step (default); eager: the d2l-style translation")
    g.add_argument("--init", choices=["shared", "independent", "framework"], default="shared",
                   help="shared (default): every backend starts from the same weights; independent: each draws "
                   "its own (final perplexities are compared; re-anchored checks still run); framework: every "
                   "layer keeps its framework's own initialisers (a statistical verdict over --init-seeds seeds)")
    g.add_argument("--init-seeds", type=number_arg(int, "a positive integer", 100), metavar="K",
                   help=f"--init framework only: seeds per row for the statistical verdict (default {DEFAULT_INIT_SEEDS})")
    g.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where to train (default cpu; gpu: error if none)")
    h = p.add_argument_group("hyper-parameters (override the preset)")
    h.add_argument("--epochs", type=number_arg(int, "a positive integer", LIMITS["num_epochs"]), metavar="N",
                   help=f"number of epochs ({_defaults('num_epochs')})")
    h.add_argument("--hidden", type=number_arg(int, "a positive integer", LIMITS["num_hiddens"]), metavar="H",
                   help=f"hidden units, num_hiddens ({_defaults('num_hiddens')})")
    h.add_argument("--batch-size", type=number_arg(int, "a positive integer", LIMITS["batch_size"]), metavar="B",
                   help=f"minibatch size ({_defaults('batch_size')})")
    h.add_argument("--num-steps", type=number_arg(int, "a positive integer", LIMITS["num_steps"]), metavar="T",
                   help=f"time steps per minibatch ({_defaults('num_steps')})")
    h.add_argument("--lr", type=number_arg(float, "a positive number"), help=f"SGD learning rate ({_defaults('lr', '{:g}')})")
    h.add_argument("--clip", type=number_arg(float, "a positive number"), metavar="THETA",
                   help=f"gradient clipping threshold θ, max_grad_norm ({_defaults('max_grad_norm', '{:g}')})")
    h.add_argument("--max-tokens", type=int, metavar="N",
                   help="train on the first N tokens of the text; <= 0: all "
                   f"({_defaults('max_tokens', '{:,}', 'd2l-ed1')}; "
                   f"refused with {_ED2_PRESETS}, which trains on its own windows)")
    h.add_argument("--sampling", choices=["sequential", "random"],
                   help="minibatch sampling (default sequential: state carried; random: reset per minibatch); "
                   f"refused with {_ED2_PRESETS}, which always shuffles fixed windows")
    h.add_argument("--dtype", choices=["float32", "float64"], help="floating-point type (default float32)")
    h.add_argument("--seed", type=number_arg(int, "a non-negative integer", allow_zero=True),
                   help="seed of the initial weights and of the batches (default 0)")
    v = p.add_argument_group("the verdict")
    v.add_argument("--lockstep", default="auto", type=_lockstep_arg, metavar="auto|off|N",
                   help="re-anchored checks: every backend restarts from the oracle's checkpoints every N epochs "
                   f"and trains one epoch (at most {lockstep.MAX_STRETCH_STEPS} steps of it) plus probe steps "
                   "(default auto: spaced to cost about a quarter of the run; off: judge the free-running curves only)")
    v.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the reference run's checkpoints (checkpoints/ in the output folder)")
    d = p.add_argument_group("text")
    d.add_argument("--text", metavar="FILE|NAME", help="train on this text file (UTF-8, or UTF-16/32 with a "
                   f"byte-order mark; else give --encoding) or bundled text ({', '.join(BUNDLED_TEXTS)}; default "
                   "timemachine, d2l's Time Machine)")
    d.add_argument("--eval-text", metavar="FILE|NAME", help="after training, report perplexity on this text file "
                   f"or bundled text ({', '.join(BUNDLED_TEXTS)}), cleaned as the preset cleans the training text and "
                   "scored as it scores held-out text (ed. 1: read in order; ed. 2: every window from a zero state)")
    d.add_argument("--encoding", help="encoding of --text and --eval-text when they are neither UTF-8 nor marked "
                   "by a byte-order mark (e.g. cp1252, latin-1)")
    d.add_argument("--prefix", action="append", metavar="TEXT",
                   help="prompt for the greedy continuations, preprocessed like the text (lowercase, non-letters -> "
                   f"space); repeat for several (default, as each edition's chapter: "
                   f"{', '.join(repr(x) for x in SAMPLE_PREFIXES)}, {NUM_PREDS} characters; d2l-ed2: "
                   f"{', '.join(repr(x) for x in ED2_SAMPLE_PREFIXES)}, {ED2_NUM_PREDS})")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", type=folder_arg,
                   help="output folder (default: a new timestamped folder under runs/)")
    o.add_argument("--overwrite", action="store_true",
                   help="reuse an existing --out folder: clear the files a run writes there (and only those)")
    o.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: backends that finished are kept, the rest run")
    o.add_argument("--stall-timeout", type=number_arg(float, "a positive number of seconds"), default=DEFAULT_STALL_TIMEOUT,
                   metavar="SECONDS", help=f"end a worker that reports no progress for this long (default {DEFAULT_STALL_TIMEOUT:.0f})")
    o.add_argument("--jobs", type=number_arg(int, "a positive integer", 64), default=1, metavar="N",
                   help="rows trained at a time (default 1), each with usable cores / N threads; the oracle "
                   "trains beside them and their re-anchored checks wait for its checkpoints. Shortens long runs "
                   "on several cores; tokens/s are then measured under that sharing (benchmarks/ measures speed)")
    o.add_argument("--no-plot", action="store_true", help="do not draw perplexity.png and deviation.png")
    o.add_argument("--quiet", action="store_true", help="no progress display and no run header on stderr (notes still print; the report's Config line names the run)")
    return p


# The option that sets each recorded setting, for messages (fields the preset alone sets keep their names).
_OPTION_OF = {"num_epochs": "--epochs", "num_hiddens": "--hidden", "batch_size": "--batch-size",
              "num_steps": "--num-steps", "lr": "--lr", "max_grad_norm": "--clip", "max_tokens": "--max-tokens",
              "sampling": "--sampling", "dtype": "--dtype", "seed": "--seed", "cell": "--cell",
              "num_layers": "--num-layers", "second_bias": "--second-bias", "init": "--init",
              "init_seeds": "--init-seeds (seeds)", "mode": "--mode", "device": "--device", "text": "--text",
              "eval_text": "--eval-text", "lockstep_epochs": "--lockstep (checkpoint epochs)", "prefixes": "--prefix",
              "protocol": "--preset (protocol)"}


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = dict(num_epochs=args.epochs, num_hiddens=args.hidden, batch_size=args.batch_size,
                     num_steps=args.num_steps, lr=args.lr, max_grad_norm=args.clip, max_tokens=args.max_tokens,
                     sampling=args.sampling, dtype=args.dtype, seed=args.seed, cell=args.cell,
                     num_layers=args.num_layers, second_bias=args.second_bias)
    try:
        return preset(args.preset, **overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _refuse_ed1_options(args: argparse.Namespace) -> None:
    """--sampling and --max-tokens given with an ed. 2 preset: refused, since ed. 2 would ignore them.

    Only compare's own command line is checked (main): the sweep plans with the same code and may
    cross presets with these values, which then mean nothing for the ed. 2 configurations."""
    if PRESETS[args.preset].protocol != "d2l-ed2":
        return
    given = [f"--{f.replace('_', '-')}" for f in ED1_ONLY if getattr(args, f) is not None]
    if given:
        c = PRESETS[args.preset]
        raise UsageError(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --preset "
                         f"{args.preset}, which always trains on shuffled fixed windows ({c.num_train:,} training, "
                         f"{c.num_val:,} validation); drop {'it' if len(given) == 1 else 'them'}, or use --preset "
                         "d2l-ed1 or quick")


def _refuse_conflicts(args: argparse.Namespace) -> None:
    """Options that contradict each other or would do nothing: refused rather than silently ignored."""
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite starts it again: choose one")
    if args.init_seeds is not None and args.init != "framework":
        raise UsageError(f"--init-seeds applies to --init framework only (--init {args.init} trains one seed per row)")
    if args.keep_checkpoints and args.lockstep == "off":
        raise UsageError("--keep-checkpoints keeps the checkpoints of the re-anchored checks: with --lockstep off "
                         "none are written")
    if args.init == "framework" and "layers" not in _impls_from_args(args.impl):
        raise UsageError("--init framework keeps each framework layer's own initialisers: it needs --impl layers "
                         "or all (scratch rows start from d2l's N(0, 0.01^2) whatever --init says)")


def _backends_from_args(spec: str | None) -> tuple[list[str], bool]:
    """The backends to run, and whether the user named them (a missing one is then not announced as skipped
    at the start: its row says unavailable, as every missing one's does)."""
    if spec is None:
        return known_backends(), False
    names = comma_list(spec, "--backends", known_backends())
    if not names:
        raise UsageError("--backends is empty; name at least one of " + ", ".join(known_backends()))
    try:
        resolved = [canonical_name(n) for n in names]
        for n in resolved:  # third-party backends: import them now, so a bad spec is a usage error
            if not is_builtin(n):
                load_backend_class(n)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    resolved = list(dict.fromkeys(resolved))
    # The oracle runs first: it is the reference, and its checkpoints anchor every other backend.
    return sorted(resolved, key=lambda n: n != verdict.ORACLE), True


IMPL_CHOICES = ("scratch", "layers")


def comma_list(spec: str, flag: str, choices: Sequence[str] = ()) -> list[str]:
    """The items of a comma list; an empty one between commas ('numpy,', '32,,64') is refused, as a
    value left out by mistake (the message names ``choices``). An empty list is []."""
    parts = [p.strip() for p in spec.split(",")]
    if parts == [""]:
        return []
    if "" in parts:
        raise UsageError(f"{flag} {spec!r} has an empty item (a doubled, leading or trailing comma)"
                         + (f"; choose from {', '.join(choices)}" if choices else ""))
    return parts


def _impls_from_args(spec: str) -> list[str]:
    parts = comma_list(spec, "--impl", ("scratch", "layers", "all"))
    out: list[str] = []
    for p in parts:
        if p == "all":
            out += list(IMPL_CHOICES)
        elif p in IMPL_CHOICES:
            out.append(p)
        else:
            raise UsageError(f"--impl {p!r}: expected scratch, layers, all or a comma list of them")
    if not out:
        raise UsageError("--impl is empty; expected scratch, layers or all")
    return list(dict.fromkeys(out))


def row_label(name: str, impl: str) -> str:
    """A row's name: the backend for d2l's scratch model, backend/impl otherwise (torch/layers)."""
    return name if impl == "scratch" else f"{name}/{impl}"


def _rows_to_run(names: list[str], impls: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(backend, impl) pairs in run order, and notes on pairs that do not exist. The oracle always
    runs (it is the reference), whatever --impl says."""
    rows, notes = [], []
    for name in names:
        if name == verdict.ORACLE:
            rows.append((name, "scratch"))
            if "layers" in impls:
                notes.append("numpy has no 'layers' row: it is the oracle, written from scratch, and the reference of every row")
            continue
        if not is_builtin(name):  # a third-party class is one implementation
            rows.append((name, "scratch"))
            if impls != ["scratch"]:
                notes.append(f"{name} is one class, one row, whatever --impl says (--impl {','.join(impls)} chooses "
                             "among the built-in backends' implementations)")
            continue
        for impl in impls:
            rows.append((name, impl))
    return rows, notes


def _gpu_visible() -> bool:
    """Framework-neutral hint that some GPU exists (each backend still checks for itself)."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi") or glob.glob("/dev/kfd"))


def _resolve_text(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    try:
        resolved = resolve_text(path, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # --text timemachine is the default text: recorded as no --text, so reports and --resume see one run
    return None if flag == "--text" and resolved == bundled_text_path("timemachine") else str(resolved)


def _existing_run_files(out_dir: Path) -> list[str]:
    """What makes ``out_dir`` not empty: anything but the lock file, and a run's scratch (``.work``, an empty
    ``backends``) when no results.json says a run got as far as its first result (a run stopped at its start
    left only those, and the same command was then refused)."""
    if not out_dir.is_dir():
        return []
    started_only = not (out_dir / "results.json").exists()
    return sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE and not (
        started_only and (p.name == ".work" or (p.name == "backends" and p.is_dir() and not any(p.iterdir())))))


def _claim_out_dir(out_dir: Path) -> None:
    """Hold ``out_dir`` for this run (:func:`multirnn.files.hold_folder`), before anything in it is read for a
    resume or cleared for an overwrite: a second run into the same folder is refused, never run beside."""
    try:
        held = hold_folder(out_dir)
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {str(out_dir)!r}: {exc.strerror or exc}") from None
    if not held:
        raise UsageError(f"another run is using --out {str(out_dir)!r} (pid {folder_holder(out_dir)}); wait for it "
                         "or stop it first, or use another folder")


def _holds_sweep(out_dir: Path) -> bool:
    from .sweep_engine import Store  # the sweep imports compare: not at module level

    return Store(out_dir).is_sweep()


def _prepare_out_dir(out: str | None, overwrite: bool, resume: bool) -> Path:
    """The output folder: a new timestamped one by default; an existing non-empty one only with
    --overwrite (its run files cleared) or --resume."""
    if out is None:
        if resume:
            raise UsageError("--resume needs --out: the folder of the run to continue")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        Path("runs").mkdir(exist_ok=True)
        for n in range(1, 10_000):  # mkdir without exist_ok: two runs started in the same second never share one
            out_dir = Path("runs") / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                out_dir.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise UsageError(f"cannot write to output folder {str(out_dir)!r}: {exc.strerror or exc}") from None
        _claim_out_dir(out_dir)
    else:
        out_dir = Path(out)
        # refusals that need nothing written first (a sweep's folder: not even the lock file it shares)
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--out {out!r} exists and is not a folder")
        if _existing_run_files(out_dir) and _holds_sweep(out_dir):  # --overwrite would mix a compare run into it
            raise UsageError(f"--out {out!r} holds a sweep (python -m multirnn.sweep); compare does not write into "
                             "it: choose another folder")
        if resume and not (out_dir / "results.json").is_file():
            raise UsageError(f"--resume: {out!r} holds no results.json of an earlier run")
        try:  # made and held before anything in it is read or cleared: two runs into one new folder race here
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot write to output folder {str(out_dir)!r}: {exc.strerror or exc}") from None
        _claim_out_dir(out_dir)
        present = _existing_run_files(out_dir)
        if present and not overwrite and not resume:
            raise UsageError(f"--out {out!r} is not empty ({', '.join(present[:4])}{', ...' if len(present) > 4 else ''}); "
                             "use --overwrite to replace its results, --resume to continue it, or another folder")
        if present and overwrite:
            folders = [name for name in RUN_FILES if (out_dir / name).is_dir()]
            if folders:  # a folder of a run file's name is the user's: refused before anything is removed
                raise UsageError(f"--overwrite: {str(out_dir / folders[0])!r} is a folder, not the {folders[0]} of a "
                                 "run; move it or use another --out")
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
            for name in RUN_DIRS:  # only what a run writes in them: a user's own files stay
                clear_written(out_dir / name)
        if not resume:  # the run's scratch, nobody else's: stale checkpoints must never reach a new run
            shutil.rmtree(out_dir / ".work", ignore_errors=True)
    try:
        (out_dir / "backends").mkdir(parents=True, exist_ok=True)
        (out_dir / ".work").mkdir(exist_ok=True)
        check_writable(out_dir / ".work")
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {str(out_dir)!r}: {exc.strerror or exc}") from None
    return out_dir


def result_row(raw: dict[str, Any]) -> dict[str, Any]:
    """A worker's raw result in the results.json schema (names stable, every number kept).

    JSON has no infinity: a perplexity that overflowed (a finite loss above ~709) is stored as null
    and read back here as +inf.
    """
    ppl = [math.inf if p is None else p for p in raw.get("perplexity") or []]
    finite = [p for p in ppl if math.isfinite(p)]
    return {
        "name": raw["name"],
        "backend": raw.get("backend") or raw["name"],
        "impl": raw.get("impl") or "scratch",
        "status": raw["status"],
        "framework_version": raw.get("framework_version"),
        "openblas": raw.get("openblas"),  # the framework's own OpenBLAS kernels, where its backend named them
        "non_finite_params": raw.get("non_finite_params"),  # the trained weights that overflowed in the last update
        "error": raw.get("error"),
        "traceback": raw.get("traceback"),  # a Python-level crash in the worker: where it was raised
        "perplexity": ppl,
        "val_perplexity": raw.get("val_perplexity") or [],
        "final_perplexity": ppl[-1] if ppl else None,
        "best_perplexity": min(finite) if finite else None,
        "median_last_perplexity": agreement.robust_final(ppl) if ppl else None,  # last 10 % of epochs
        "tokens_per_sec": raw.get("tokens_per_sec_median"),
        "tokens_per_sec_per_epoch": raw.get("tokens_per_sec") or [],
        "epoch_seconds": raw.get("epoch_seconds") or [],
        "first_epoch_seconds": raw.get("first_epoch_seconds"),
        "train_seconds": raw.get("train_seconds"),
        "peak_rss_mb": raw.get("peak_rss_mb"),
        "step_loss": raw.get("step_loss") or [],
        "step_grad_norm": raw.get("step_grad_norm") or [],
        "steps_per_epoch": raw.get("steps_per_epoch") or [],
        "shapes": raw.get("shapes"),
        "lockstep": raw.get("lockstep"),
        "state_effects": raw.get("state_effects"),
        "rounding_stretches": raw.get("rounding_stretches"),
        "rounding_stretches_error": raw.get("rounding_stretches_error"),
        "samples": raw.get("samples") or {},
        "eval_perplexity": raw.get("eval_perplexity"),
        "seed_runs": raw.get("seed_runs") or [],
        "paired_oracle_runs": raw.get("paired_oracle_runs"),
        "param_layout": raw.get("param_layout"),
        "diverged_epoch": raw.get("diverged_epoch"),
        "diverged_step": raw.get("diverged_step"),
        "exit_code": raw.get("exit_code"),
        "rows_at_a_time": raw.get("rows_at_a_time"),  # the sharing its tokens/s were measured under (--jobs)
    }


def judge(rows: list[dict[str, Any]], config: TrainConfig, init: str, expected: dict[str, list[int]],
          lockstep_on: bool = True) -> verdict.Verdict:
    """The verdict over these rows (pure: see :func:`multirnn.verdict.judge`)."""
    return verdict.judge(rows, dtype=config.dtype, init=init, max_grad_norm=config.max_grad_norm,
                         expected_shapes=expected, lockstep=lockstep_on)


def _with_verdict(row: dict[str, Any], v: verdict.BackendVerdict | None) -> dict[str, Any]:
    """The results.json row: the worker's numbers plus the verdict's judgement of them (a new dict)."""
    if v is None:
        return {**row, "agrees": None, "judgement": None}
    judgement = {k: val for k, val in asdict(v).items() if k != "free_run_deviation"}
    return {**row, "agrees": v.agrees, "judgement": judgement, "free_run_deviation": list(v.free_run_deviation)}


def machine_info() -> dict[str, Any]:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    isa = "avx512" if " avx512f" in flags else "avx2" if " avx2" in flags else (platform.machine() or "unknown")
    # Kernel-family caps set in the environment change float32 results and speed: record them.
    caps = blas.user_environ(ISA_CAP_VARIABLES)
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "numpy": np.__version__, "processor": platform.processor() or platform.machine(), "isa": isa,
            "isa_caps": caps}
    if openblas := blas.chosen_core():  # the workers' NumPy ran other kernels than OpenBLAS would have picked
        info["openblas"] = openblas
    return info


def assemble(rows: list[dict[str, Any]], config: TrainConfig, options: dict[str, Any],
             expected: dict[str, list[int]], stopped: str | None = None) -> dict[str, Any]:
    v = judge(rows, config, options["init"], expected, options.get("lockstep") != "off")
    out_verdict = v.to_dict()
    out_verdict["backends"] = [{k: val for k, val in b.items() if k != "free_run_deviation"} for b in out_verdict["backends"]]
    if stopped:
        out_verdict["summary"] = f"INTERRUPTED ({stopped}; partial results): " + out_verdict["summary"]
        out_verdict["status"] = "interrupted"
    by_name = {b.name: b for b in v.backends}
    results = {
        "schema_version": report.SCHEMA_VERSION,
        "multirnn_version": __version__,
        "code_version": code_version(),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "multirnn.compare", *options["argv"]]),
        "config": config.record(),
        "options": {k: val for k, val in options.items() if k != "argv"},
        "machine": machine_info(),
        "verdict": out_verdict,
        "backends": [_with_verdict(r, by_name.get(r["name"])) for r in rows],
    }
    # Every note the reports print, as printed (some are derived from the rows: a JSON reader needs no renderer).
    results["notes"] = report.notes(results)
    return results


def _safe(name: str) -> str:
    """A backend name usable as a file name (third-party specs contain ':' and '.')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


RUN_CONTROL = ("--resume", "--overwrite")


def without_run_control(command: str) -> str:
    """An earlier run's command without --resume or --overwrite: a message asks to add --resume to it, and
    pasting one with --overwrite as it stood would clear the folder (compare's and the sweep's messages)."""
    try:
        return shlex.join(a for a in shlex.split(command) if a not in RUN_CONTROL)
    except ValueError:
        return command


def _resumable(out_dir: Path, config: TrainConfig, options: dict[str, Any],
               labels: Sequence[str], notes: list[str]) -> dict[str, dict[str, Any]]:
    """Rows of the earlier run in ``out_dir`` that need not run again (same configuration, code and texts
    only; rows of a third-party backend whose source changed run again, said in ``notes``).

    ``labels``: this run's rows. Rows may be added, and interrupted ones left out; leaving out a row the
    earlier run finished is refused (its results.json would lose it while its files stayed). Only reads.
    """
    try:
        earlier = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: cannot read {str(out_dir / 'results.json')!r}: {exc}") from None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("options", {}), dict) \
            or not isinstance(earlier.get("backends", []), list):
        raise UsageError(f"--resume: {str(out_dir / 'results.json')!r} is not the results.json of a compare run; "
                         "start a new run (--overwrite or another --out)")
    if earlier.get("code_version") != code_version():
        # Rows of other code would be judged beside this code's as one run (a fixed bug kept, or a new one hidden).
        then = earlier.get("code_version") or f"{earlier.get('multirnn_version', '?')}, from before code versions were recorded"
        raise UsageError(f"--resume: the earlier run in this folder was made by other multirnn code ({then}; now "
                         f"{code_version()}), so its rows cannot be kept beside new ones; start a new run (--overwrite "
                         "or another --out)")
    for flag, key in (("--text", "text"), ("--eval-text", "eval_text")):
        then = earlier.get("options", {}).get(f"{key}_sha256")
        if options[key] is not None and options[key] == earlier.get("options", {}).get(key) \
                and then != options[f"{key}_sha256"]:
            raise UsageError(f"--resume: {flag} {options[key]!r} changed since the earlier run (its contents differ), so "
                             "its rows cannot be kept beside new ones; start a new run (--overwrite or another --out)")
    same = {k: options[k] for k in ("init", "init_seeds", "mode", "device", "text", "eval_text", "lockstep_epochs",
                                    "prefixes")}
    before = {k: earlier.get("options", {}).get(k) for k in same}
    then, now = {**(earlier.get("config") or {}), **before}, {**config.record(), **json.loads(json.dumps(same))}
    def short(v: Any) -> str:  # a long list (the checkpoint epochs) by its ends and length
        return f"[{v[0]}, {v[1]}, ..., {v[-1]}] ({len(v)})" if isinstance(v, list) and len(v) > 6 else str(v)

    differs = [f"{_OPTION_OF.get(k, k)} {short(then.get(k, 'not set'))} (now {short(now.get(k, 'not set'))})"
               for k in dict.fromkeys([*then, *now]) if then.get(k) != now.get(k)]
    if differs:
        what = "; ".join(differs[:4]) + (f"; and {len(differs) - 4} more" if len(differs) > 4 else "")
        raise UsageError(f"--resume: the earlier run in this folder used other settings ({what}); repeat its "
                         f"command ({without_run_control(earlier.get('command', '?'))}) with --resume, or start a new run")
    # an interrupted row may be dropped; a finished one (a crash too: evidence) may not
    left_out = [row["name"] for row in earlier.get("backends", [])
                if row["name"] not in labels and row.get("status") != "interrupted"]
    if left_out:
        raise UsageError(f"--resume: the earlier run in this folder also has {', '.join(left_out)}, which this "
                         f"command leaves out; name every row of it (its command: "
                         f"{without_run_control(earlier.get('command', '?'))}), or start a new run")
    keep = {}
    sources, changed = earlier.get("options", {}).get("backend_sources") or {}, []
    for row in earlier.get("backends", []):
        path = out_dir / "backends" / f"{_safe(row['name'])}.json"
        if row.get("status") in ("ok", "diverged") and path.is_file():
            backend = row.get("backend") or row["name"]
            if sources.get(backend) != options["backend_sources"].get(backend):
                changed.append(row["name"])  # a third-party backend's file changed: its rows train again
                continue
            keep[row["name"]] = json.loads(path.read_text())
    if changed:
        notes.append(f"the source of {', '.join(changed)} changed since the earlier run: "
                     f"{'it trains' if len(changed) == 1 else 'they train'} again")
    # This run's --jobs says nothing of how the kept rows were timed: each keeps its own sharing.
    sharing = {row["name"]: row.get("rows_at_a_time") or (earlier.get("options") or {}).get("jobs") or 1
               for row in earlier.get("backends", []) if row["name"] in keep}
    for name, raw in keep.items():
        raw["rows_at_a_time"] = sharing[name]
    if shared := sorted(n for n, k in sharing.items() if k > 1):
        notes.append(f"{', '.join(shared)} {'was' if len(shared) == 1 else 'were'} kept from an earlier run that ran "
                     f"up to {max(sharing[n] for n in shared)} rows at a time: {'its' if len(shared) == 1 else 'their'} "
                     "tokens/s and peak memory were measured under that sharing")
    # This session measures only its own load: the kept rows' tokens/s were timed under the earlier one's.
    then_busy = (earlier.get("options") or {}).get("other_load_cores")
    if keep and isinstance(then_busy, (int, float)) and then_busy >= BUSY_CORES:
        kept = sorted(keep)
        notes.append(f"{', '.join(kept)} {'was' if len(kept) == 1 else 'were'} kept from an earlier session during "
                     f"which other processes kept {then_busy:.1f} cores busy (on average): "
                     f"{'its' if len(kept) == 1 else 'their'} tokens/s are below what this machine does")
    return keep


def _list_backends() -> int:
    from .info import backend_table

    print(backend_table())
    return 0


def _work_units(config: TrainConfig, lock_epochs: tuple[int, ...], steps_per_epoch: int, name: str,
                extra_seeds: int = 0) -> tuple[float, float]:
    """Progress units of one row: its epochs (every seed's), and its re-anchored checks in epoch equivalents."""
    per_ckpt = lockstep.checkpoint_cost(steps_per_epoch)
    return float(config.num_epochs), (0.0 if name == verdict.ORACLE else len(lock_epochs) * per_ckpt) + \
        extra_seeds * config.num_epochs


@dataclass
class Plan:
    """Everything a comparison run is, validated, before anything is written (the sweep builds one
    per configuration with the same code)."""

    args: argparse.Namespace
    config: TrainConfig
    names: list[str]  # backends, the oracle first
    named: bool  # the user listed them (a missing one's row says unavailable, without a "skipped" line)
    pairs: list[tuple[str, str]]  # (backend, impl) rows in run order
    pair_notes: list[str]
    data: TrainingData
    eval_ids: np.ndarray | None
    prefixes: tuple[str, ...]
    expected: dict[str, list[int]]
    steps_per_epoch: int
    lock_epochs: tuple[int, ...]
    seeds: tuple[int, ...]  # extra seeds of each row (--init framework)
    options: dict[str, Any]  # recorded in results.json

    @property
    def labels(self) -> list[str]:
        return [row_label(n, i) for n, i in self.pairs]

    @property
    def num_preds(self) -> int:
        """Characters each greedy continuation adds: as many as the edition's chapter predicts."""
        return ED2_NUM_PREDS if self.config.protocol == "d2l-ed2" else NUM_PREDS

    def task(self, backend: str, impl: str, out_path: str, data_path: str, eval_path: str | None, index: int = 0,
             checkpoint_dir: str | None = None, anchor_dir: str | None = None,
             anchor_wait: str | None = None) -> WorkerTask:
        """The worker task of one row."""
        a, c = self.args, self.config
        init_seed = c.seed if a.init in ("shared", "framework") else c.seed * 100 + index + 1
        return WorkerTask(name=row_label(backend, impl), backend=backend, impl=impl, config=c.to_dict(),
                          out_path=out_path, data_path=data_path, device=a.device, mode=a.mode, init=a.init,
                          init_seed=init_seed, extra_seeds=self.seeds, eval_path=eval_path, prefixes=self.prefixes,
                          num_preds=self.num_preds,
                          lockstep_epochs=self.lock_epochs, checkpoint_dir=checkpoint_dir, anchor_dir=anchor_dir,
                          anchor_wait=anchor_wait)


def make_plan(args: argparse.Namespace, argv: list[str]) -> Plan:
    """Validate the command line and prepare the data (read and tokenised once, here).

    Raises:
        UsageError: anything wrong with the options or the texts (one line for the user).
    """
    _refuse_conflicts(args)  # here, not in main: the sweep plans every configuration through this function
    config = _config_from_args(args)
    names, named = _backends_from_args(args.backends)
    impls = _impls_from_args(args.impl)
    pairs, pair_notes = _rows_to_run(names, impls)
    asked = {n.strip().lower() for n in (args.backends or "").split(",")}
    if "flax" in asked and "layers" not in impls:  # an alias of jax: flax's own layers are the layers row
        pair_notes.append("--backends flax names the jax backend: its row is d2l's scratch model in JAX; flax's own "
                          "layers (nn.RNN(nn.SimpleCell) + nn.Dense) run with --impl layers (or all)")
    # the rows a bias gradient sums over in one step (d2l ed. 2's minibatch holds at most its training windows)
    batch = min(config.batch_size, config.num_train) if config.protocol == "d2l-ed2" else config.batch_size
    pair_notes += [f"{row_label(n, i)}: {issue}" for n, i in pairs
                   for issue in row_issues(n, i, args.mode, config.model, config.dtype, batch * config.num_steps)]
    text = _resolve_text(args.text, "--text")
    eval_text = _resolve_text(args.eval_text, "--eval-text")
    if args.encoding is not None:  # refused before any text is read, whether or not a text needs it
        try:
            check_encoding(args.encoding)
        except ValueError as exc:
            raise UsageError(f"--encoding: {exc}") from None
    # checked against the text's vocabulary below
    prefixes = tuple(args.prefix) if args.prefix else ED2_SAMPLE_PREFIXES if config.protocol == "d2l-ed2" else SAMPLE_PREFIXES
    prompt_note = None
    try:  # validate the data before anything is written: too short, empty, unreadable, undecodable
        data = prepare_data(config, text, args.encoding)  # a too-short text's message says what preprocessing dropped
        eval_ids = None
        if eval_text is not None:  # cleaned like the training text; refused here if shorter than the worker needs
            eval_ids = encode_eval_text(eval_text, data.vocab, config.protocol, config.batch_size, config.num_steps,
                                        args.encoding, label=f"--eval-text {args.eval_text!r}")
        if args.prefix:  # the user's prompts, preprocessed as the text is; each must fit its vocabulary
            try:
                prefixes = tuple(clean_prefix(p, data.vocab) for p in prefixes)
            except ValueError as exc:
                raise UsageError(f"--prefix: {exc}") from None
        else:  # the default prompts on the user's --text: keep those that fit, else the vocabulary's first letter
            fits = [p for p in prefixes if all(c in data.vocab.token_to_idx for c in p)]
            first_letter = next(t for t in data.vocab.idx_to_token if t.isalpha() and len(t) == 1)
            if len(fits) < len(prefixes):
                dropped = [p for p in prefixes if p not in fits]
                prompt_note = (f"the default prompts {', '.join(map(repr, dropped))} use letters this text does not have: "
                               + ("left out" if fits else f"the continuations start from {first_letter!r}")
                               + " (give your own with --prefix)")
            prefixes = tuple(fits) or (first_letter,)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.device == "gpu" and not _gpu_visible():
        raise UsageError("--device gpu was requested, but no GPU is visible on this machine; use --device cpu")

    first_batch = min(config.batch_size, config.num_train) if config.protocol == "d2l-ed2" else config.batch_size
    expected = agreement.expected_shapes(first_batch, config.num_steps, len(data.vocab), config.num_hiddens, config.model)
    steps_per_epoch = sum(1 for _ in data.train_batches(np.random.default_rng(config.seed)))
    every = {"off": 0, "auto": lockstep.auto_every(steps_per_epoch, config.num_epochs)}.get(args.lockstep, args.lockstep)
    lock_epochs = tuple(lockstep.checkpoint_epochs(config.num_epochs, int(every)))
    if every and every >= config.num_epochs:
        # A run no longer than the spacing is checked at its first and last epochs only: record that
        # spacing, so the report does not say "every 6 epochs" of a 2-epoch run (the epochs are unchanged).
        every = max(1, config.num_epochs - 1)
    data_notes = list(data.notes) + ([prompt_note] if prompt_note else [])
    if args.encoding is not None and all(t is None or bundled_name(Path(t)) for t in (text, eval_text)):
        data_notes.append(f"--encoding {args.encoding} is not used: the bundled texts' encodings are known")
    if config.protocol == "d2l-ed2" and config.batch_size > config.num_train:  # as d2l's DataLoader does
        data_notes.append(f"--batch-size {config.batch_size:,} is more than the {config.num_train:,} training windows: "
                          "every minibatch holds all of them, one step per epoch")
    if eval_ids is not None:
        # what preprocessing dropped, said for the evaluation text as prepare_data says it for --text
        data_notes += [f"--eval-text: {n}" for n in text_notes(read_text(eval_text, args.encoding))]
        unk = float(np.mean(eval_ids == data.vocab.unk)) if len(eval_ids) else 0.0
        if unk > UNK_WARNING:
            data_notes.append(f"{unk:.1%} of the evaluation text's characters are not in the training vocabulary "
                              "(<unk>): its perplexity says little")
    num_seeds = args.init_seeds or DEFAULT_INIT_SEEDS
    seeds = tuple(range(config.seed + 1, config.seed + num_seeds)) if args.init == "framework" else ()
    try:  # what a resume or a sweep compares: a file changed in place is another run
        digests = {"text_sha256": file_sha256(text), "eval_text_sha256": file_sha256(eval_text),
                   "backend_sources": {n: d for n in names if (d := source_digest(n))}}
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename!r}: {exc.strerror or exc}") from None
    options = {"preset": args.preset, "backends": names, "impls": impls, "init": args.init, "init_seeds": [config.seed, *seeds],
               "model": config.model.name, "mode": args.mode, "device": args.device, "text": text,
               "eval_text": eval_text, **digests, "encoding": args.encoding, "lockstep": args.lockstep, "lockstep_every": every,
               "lockstep_epochs": list(lock_epochs), "prefixes": list(prefixes),
               "tokens": {"used": data.used_tokens, "total": data.total_tokens,
                          "eval": None if eval_ids is None else int(len(eval_ids))},
               "data_notes": data_notes, "row_notes": pair_notes, "argv": argv}
    return Plan(args, config, names, named, pairs, pair_notes, data, eval_ids, prefixes, expected, steps_per_epoch,
                lock_epochs, seeds, options)


def main(argv: list[str] | None = None) -> int:
    """``python -m multirnn.compare``: the exit status (see the module's help). The output folder is held
    for the run (:func:`_claim_out_dir`) and let go when it ends."""
    before, code = held_folders(), None
    try:
        code = _main(argv)
        return code
    finally:  # a refused run also removes the lock file it made: it leaves the folder as it found it
        for folder in held_folders() - before:
            release_folder(folder, forget=code == EXIT_USAGE)


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.list_backends:
            return _list_backends()
        _refuse_ed1_options(args)
        plan = make_plan(args, argv)
        kept, resume_notes = {}, []
        if args.resume and args.out is not None and (Path(args.out) / "results.json").is_file():
            # checked before _prepare_out_dir writes anything: a refused resume leaves the folder as it was;
            # held first: a run still writing there is refused, not read half-way
            _claim_out_dir(Path(args.out))
            kept = _resumable(Path(args.out), plan.config, plan.options, plan.labels, resume_notes)
        out_dir = _prepare_out_dir(args.out, args.overwrite, args.resume)
    except UsageError as exc:
        print(f"multirnn.compare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    blas.name_openblas_core()  # before any worker starts: its NumPy loads OpenBLAS with the name
    config, data, eval_ids, options, expected = plan.config, plan.data, plan.eval_ids, plan.options, plan.expected
    names, named, pairs, lock_epochs, seeds = plan.names, plan.named, plan.pairs, plan.lock_epochs, plan.seeds
    text, data_notes, pair_notes = options["text"], options["data_notes"], plan.pair_notes

    work = out_dir / ".work"
    data_path = work / "data.npz"
    data.save(data_path)
    eval_path = None
    if eval_ids is not None:
        eval_path = work / "eval.npy"
        np.save(eval_path, eval_ids)
    ckpt_root = out_dir / "checkpoints" if args.keep_checkpoints else work / "checkpoints"

    labels = [row_label(n, i) for n, i in pairs]
    from .info import may_be_installed  # the distribution's metadata: no framework imported

    # a row whose framework is not installed here ends at once: planned as (almost) no work, so the ETA does
    # not wait for it; every row's units are (epochs, checks), as _listener unpacks them
    units = {row_label(n, i): (1e-3, 0.0) if not may_be_installed(n)
             else _work_units(config, lock_epochs, plan.steps_per_epoch, n, len(seeds)) for n, i in pairs}
    cores, jobs = usable_cores(), min(args.jobs, len(pairs))
    threads = max(1, cores // jobs) if jobs > 1 else None  # one row at a time keeps the frameworks' defaults
    run_notes = _jobs_notes(jobs, threads, cores, bool(lock_epochs), verdict.ORACLE in names, args.jobs)
    options.update(jobs=jobs, threads=threads, run_notes=run_notes + resume_notes)  # the report says them too
    progress = RunProgress({n: a + b for n, (a, b) in units.items()}, enabled=not args.quiet)
    other_load = OtherLoad()  # what other processes take of the cores while the rows train
    used = (f"the first {data.used_tokens:,} of {data.total_tokens:,} tokens" if config.protocol == "d2l-ed1"
            and data.total_tokens and data.used_tokens < data.total_tokens else f"{data.used_tokens:,} tokens")
    progress.message(f"multirnn.compare {__version__}: {', '.join(labels)} | {config.model.name} | preset {args.preset} "
                     f"({config.protocol}, {report.plural(config.num_epochs, 'epoch')}, {config.batching}, {config.dtype}, "
                     f"mode {args.mode}, init {args.init}, "
                     f"{used} of {text_label(text)}) -> {out_dir}")
    for note in data_notes + pair_notes + options["run_notes"]:
        progress.message(f"note: {note}", always=True)
    tokens_per_epoch = plan.steps_per_epoch * config.batch_size * config.num_steps
    if hint := jobs_hint(jobs, cores, len(pairs), config.num_epochs * tokens_per_epoch):
        progress.message(f"hint: {hint}")

    rows: dict[int, dict[str, Any]] = {}  # by row index: the report keeps the command's order
    started: set[int] = set()  # rows whose worker has started (a stop marks those without a record interrupted)
    stopped: str | None = None
    exit_stopped = EXIT_INTERRUPTED
    anchor: str | None = None  # the checkpoints every later backend restarts from

    def record(i: int, raw: dict[str, Any]) -> None:
        raw.setdefault("rows_at_a_time", jobs)  # kept rows bring their own
        if raw["status"] == "unavailable" and not named:
            progress.message(f"{labels[i]:<10} skipped: {raw['error']}")
        rows[i] = result_row(raw)
        # Everything finished so far is on disk even if a later backend takes the process down.
        write_json_atomic(out_dir / "results.json", assemble([rows[k] for k in sorted(rows)], config, options, expected))

    def run_rows(indices: list[int], slots: int, threads: int | None, anchor_row: int | None = None) -> None:
        """Train these rows, ``slots`` workers at a time (kept rows of a resumed run are recorded as they are).

        ``anchor_row`` saves the checkpoints the others restart from; the rows run beside it wait for them
        (its status file) before their re-anchored checks, and the later rows get them directly."""
        nonlocal anchor
        own = ckpt_root / _safe(labels[anchor_row]) if anchor_row is not None else None
        # A kept anchor trains again for its checkpoints only when a row still to run restarts from them
        # (resuming a finished run retrained the oracle every time; a row whose framework is still not
        # installed is run again but never restarts from them, as the sweep's resume decides too).
        restarts = anchor_row is not None and any(
            labels[k] not in kept and refusal(*pairs[k], config.model) is None and may_be_installed(pairs[k][0])
            for k in range(len(pairs)) if k != anchor_row)
        status = work / "anchor.json"
        status.unlink(missing_ok=True)  # an interrupted run's: the anchor may train again
        pool = LocalExecutor(slots, threads, args.stall_timeout)
        try:
            for i in indices:
                name, (backend_name, impl) = labels[i], pairs[i]
                if name in kept and not (i == anchor_row and restarts and not lockstep.list_checkpoints(own)):
                    progress.finish(name, f"{kept[name]['status']} (kept from the earlier run)")
                    record(i, kept[name])
                    if i == anchor_row:
                        anchor = str(own)
                    continue
                ckpt = str(own) if i == anchor_row else None
                wait = str(status) if anchor_row is not None and i != anchor_row and anchor is None else None
                task = plan.task(backend_name, impl, str(out_dir / "backends" / f"{_safe(name)}.json"), str(data_path),
                                 str(eval_path) if eval_path else None, i, checkpoint_dir=ckpt, anchor_dir=anchor,
                                 anchor_wait=wait)
                if refused := refused_record(task):
                    progress.finish(name, "unsupported")
                    record(i, refused)
                    continue
                pool.submit(CellJob(cell_id=str(i), task=task, data_path=str(data_path),
                                    eval_path=str(eval_path) if eval_path else None, anchor_id=None, anchor_dir=anchor,
                                    checkpoint_dir=ckpt, attempt=1, num_epochs=config.num_epochs,
                                    listener=_listener(name, progress, config, units[name], lambda i=i: started.add(i))))
            while pool.in_flight:
                for job, outcome, exc in pool.poll(0.5):
                    i = int(job.cell_id)
                    raw = outcome["raw"] if outcome else crashed_record(labels[i], *pairs[i], f"{type(exc).__name__}: {exc}")
                    progress.finish(labels[i], _finished_text(raw))
                    record(i, raw)
                    if i == anchor_row:  # tell the rows waiting for it (they check nothing re-anchored without it)
                        if raw["status"] in ("ok", "diverged") and lockstep.list_checkpoints(own):
                            anchor = str(own)
                        write_json_atomic(status, {"anchor": anchor})
        except BaseException:
            pool.cancel()  # end the workers in flight
            raise
        finally:
            pool.close()

    raise_on_signals()
    try:
        i = 0
        if jobs > 1 and lock_epochs and labels[0] == verdict.ORACLE:
            # The oracle trains beside the other rows, which wait for its checkpoints only before their
            # re-anchored checks: no core idles while it runs.
            run_rows(list(range(len(pairs))), jobs, threads, anchor_row=0)
        else:
            # A row that may become the anchor (the oracle; without it, the first backend that trains to the
            # end) runs alone, with every core: the rows after it restart from its checkpoints.
            while (i < len(pairs) and lock_epochs and anchor is None
                   and (labels[i] == verdict.ORACLE or verdict.ORACLE not in names)):
                run_rows([i], 1, None, anchor_row=i)
                i += 1
            # The other rows depend on nothing but the anchor: --jobs of them at a time.
            run_rows(list(range(i, len(pairs))), jobs, threads)
        if config.second_bias == "trained" and verdict.ORACLE in names:
            # Context, not a row: d2l's single-bias model from the same weights and batches, to say how far
            # the book's two-bias concise code drifts from it (same run, same machine).
            name = "numpy (one bias)"
            task = dataclasses.replace(plan.task(verdict.ORACLE, "scratch", str(out_dir / "backends" / "numpy_one_bias.json"),
                                                 str(data_path), None), name=name, backend=verdict.ORACLE,
                                       config=config.replace(second_bias="frozen").to_dict(), lockstep_epochs=())
            progress.message(f"{name}: training d2l's single-bias model from the same weights, for context")
            options["one_bias_context"] = result_row(run_worker(task, None, args.stall_timeout))
    except (KeyboardInterrupt, Stopped) as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        stopped = signal_name(signum)
        exit_stopped = 128 + int(signum)
        progress.message(f"\nstopped by {stopped}: ending the workers and writing the partial report", always=True)
        for i in range(len(pairs)):  # every row without a record: the report lists all the command asked for
            if i not in rows:
                raw = interrupted_record(labels[i], *pairs[i], stopped)
                if i not in started:
                    raw["error"] = f"stopped ({stopped}) before it started"
                rows[i] = result_row(raw)
    finally:
        progress.close()
    late = defer_signals()  # acted on once the report is written
    if not stopped:  # an interrupted run keeps its data and checkpoints for --resume
        shutil.rmtree(work, ignore_errors=True)
    busy = other_load.cores()
    options["other_load_cores"] = None if busy is None else round(busy, 2)
    if (note := busy_note(busy, cores)) is not None:
        options["run_notes"] = [*options["run_notes"], note]
    results = assemble([rows[k] for k in sorted(rows)], config, options, expected, stopped)
    notes = report.write_all(results, out_dir, make_plots=not args.no_plot)
    # Fit the table to a terminal; piped output (CI logs, files) keeps every column.
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(report.terminal_report(results, width))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    written = [n for n in ("results.json", "curves.csv", "perplexity.png", "deviation.png") if (out_dir / n).is_file()]
    print(f"\nReport: {out_dir / 'report.md'}  ({', '.join(written)})")  # what this run wrote: no plot of no curve
    if stopped:
        again = shlex.join(["python", "-m", "multirnn.compare", *(a for a in argv if a not in RUN_CONTROL),
                            *([] if args.out else ["--out", str(out_dir)]), "--resume"])
        print(f"Continue it (finished rows are kept): {again}")
        return exit_stopped
    if late:
        print(f"multirnn.compare: stopped by {signal_name(late[0])} while the report was written: every row had finished and the "
              "report is complete", file=sys.stderr)
        return 128 + int(late[0])
    status = results["verdict"]["status"]
    return {"agree": EXIT_AGREE, "no-backend": EXIT_NO_BACKEND, "not-judged": EXIT_NOT_JUDGED}.get(status, EXIT_DISAGREE)


def _listener(name: str, progress: RunProgress, config: TrainConfig, units: tuple[float, float],
              on_start: Callable[[], None]) -> Callable[[dict[str, Any]], None]:
    """A row's worker messages turned into progress (called from the pool thread that drives it);
    ``on_start`` runs at its first message."""
    epochs_units, lock_units = units
    begun = [False]

    def on_message(msg: dict[str, Any]) -> None:
        if not begun[0]:  # the row's clock starts with its worker, not while it waits for a slot
            begun[0] = True
            on_start()
            progress.start(name, "starting the worker")
        done, text = backend_status(msg, config.num_epochs)
        if msg.get("kind") == "lockstep" and msg.get("total"):
            done = epochs_units + lock_units * msg["done"] / msg["total"]
        if done is None:
            done = progress.done[name]
        if text:
            last_epoch = msg.get("kind") == "epoch" and msg.get("epoch") == config.num_epochs
            progress.update(name, done, text, stage=msg.get("kind") == "stage" or last_epoch)

    return on_message


def _finished_text(raw: dict[str, Any]) -> str:
    lock = raw.get("lockstep")
    seconds = (raw.get("train_seconds") or 0) + (lock.get("seconds", 0) if isinstance(lock, dict) else 0)
    return f"{raw['status']}" + (f" ({seconds:.3g} s training and checks)" if seconds else "")


def jobs_hint(jobs: int, cores: int, rows: int, tokens_per_row: int) -> str | None:
    """A line for a long run that leaves cores idle: what --jobs would do (None when it would not help)."""
    if jobs > 1 or cores < 2 or rows < 2 or rows * tokens_per_row < JOBS_HINT_TOKENS:
        return None
    n = min(cores, rows)
    return (f"a long run on {cores} cores: --jobs {n} would train {n} rows at a time "
            "(the same checks; tokens/s then measured under that sharing)")


def _jobs_notes(jobs: int, threads: int | None, cores: int, anchored: bool, oracle: bool,
                asked: int | None = None) -> list[str]:
    """What --jobs changes in the figures (nothing in the checks); ``asked``: the --jobs given, when
    there were fewer rows than that."""
    if jobs <= 1:
        return []
    plural = "s" if threads != 1 else ""
    first = ""
    if anchored:
        first = ("; the oracle beside them, their re-anchored checks waiting for its checkpoints" if oracle
                 else "; the first row to train to the end, whose checkpoints the others restart from, alone first")
    given = f"--jobs {jobs}" if not asked or asked == jobs else f"--jobs {asked}, capped at the {jobs} rows"
    notes = [(f"rows ran up to {jobs} at a time with {threads} thread{plural} each ({given}{first}): tokens/s "
              "and peak memory were measured under that sharing, not each framework's best speed (for speed: "
              "--jobs 1, or benchmarks/)")]
    if jobs * (threads or 1) > cores:
        notes.append(f"{jobs} rows at a time exceed the {report.plural(cores, 'usable core')}: they competed for them")
    return notes


if __name__ == "__main__":
    from .runner import exit_with

    exit_with(main)
