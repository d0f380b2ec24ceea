"""``python -m multirnn.compare``: train every backend side by side and judge whether they agree.

Each backend trains in its own spawned process, one after the other (so timings are clean), from
the same initial weights on the same batches. Results are written as each backend finishes. The
NumPy oracle runs first and saves checkpoints; every other backend then restarts from them and
trains short re-anchored stretches plus probe steps, which the verdict (:mod:`multirnn.verdict`)
holds to fixed bands.

Exit status: 0 all agree, 1 a disagreement (or a backend crashed), 2 bad usage, 3 no backend ran,
4 nothing to compare (no reference), 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import math
import multiprocessing as mp
import os
import platform
import queue as _queue
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from . import agreement, lockstep, report, verdict
from .backends import canonical_name, is_builtin, known_backends, load_backend_class
from .config import PRESETS, TrainConfig, preset
from .data import encode
from .harness import prepare_data
from .worker import WorkerTask, run, write_json_atomic

EXIT_AGREE, EXIT_DISAGREE, EXIT_USAGE, EXIT_NO_BACKEND, EXIT_NOT_JUDGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

EXAMPLES = """\
examples:
  python -m multirnn.compare                                   # every installed backend, quick preset
  python -m multirnn.compare --backends numpy,torch --epochs 5 --out runs/try
  python -m multirnn.compare --preset d2l-ed1 --sampling random  # the book's 500 epochs
  python -m multirnn.compare --text my_book.txt --eval-text war_of_the_worlds

  python -m multirnn.compare --backends numpy,mypkg.mymodule:MyBackend   # check your own translation

exit status: 0 all agree, 1 a disagreement or crash, 2 bad usage, 3 no backend could run,
4 nothing to compare (one backend and no oracle), 130 interrupted.
"""


class UsageError(Exception):
    """Bad command-line input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line instead of usage + error
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m multirnn.compare",
        description="Train the d2l character RNN in every framework from the same weights on the same "
        "batches, check that shapes and loss curves agree with the NumPy oracle, and compare speed.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backends", help=f"comma-separated backends (default: all of {','.join(known_backends())}; "
                   "missing ones are reported as unavailable)")
    p.add_argument("--preset", default="quick", help=f"hyper-parameter preset: {', '.join(PRESETS)} (default: quick, "
                   f"the d2l ed. 1 settings for {PRESETS['quick'].num_epochs} epochs)")
    p.add_argument("--epochs", type=_positive_int, help="number of epochs (overrides the preset)")
    p.add_argument("--hidden", type=_positive_int, help="hidden units, num_hiddens")
    p.add_argument("--batch-size", type=_positive_int, help="minibatch size")
    p.add_argument("--num-steps", type=_positive_int, help="time steps per minibatch")
    p.add_argument("--lr", type=_positive_float, help="SGD learning rate")
    p.add_argument("--clip", type=_positive_float, help="gradient clipping threshold θ (max_grad_norm)")
    p.add_argument("--max-tokens", type=int, help="use the first N tokens of the text (d2l-ed1; <=0: all)")
    p.add_argument("--sampling", choices=["sequential", "random"], help="d2l-ed1 minibatch sampling")
    p.add_argument("--dtype", choices=["float32", "float64"], help="floating-point type (default float32)")
    p.add_argument("--seed", type=int, help="seed of the initial weights and of the batches (default 0)")
    p.add_argument("--init", choices=["shared", "independent"], default="shared",
                   help="shared: every backend starts from the same weights (curves must match step by step); "
                   "independent: each draws its own (final perplexities are compared)")
    p.add_argument("--mode", choices=["fast", "eager"], default="fast",
                   help="fast: each backend's fused/compiled step (default); eager: the d2l-style translation")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where to train (gpu: error if none)")
    p.add_argument("--lockstep", default="auto", type=_lockstep_arg, metavar="auto|off|N",
                   help="re-anchored checks: every backend restarts from the oracle's checkpoints every N epochs "
                   "and trains one epoch plus probe steps (auto: spaced to cost about a quarter of the run; "
                   "off: judge the free-running curves only)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the reference run's checkpoints (checkpoints/ in the output folder)")
    p.add_argument("--text", help="train on this text file instead of the bundled Time Machine")
    p.add_argument("--eval-text", help="after training, report perplexity on this text file "
                   "(or 'war_of_the_worlds' for the bundled one)")
    p.add_argument("--out", help="output folder (default: a new timestamped folder under runs/)")
    p.add_argument("--no-plot", action="store_true", help="do not draw perplexity.png and deviation.png")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = dict(num_epochs=args.epochs, num_hiddens=args.hidden, batch_size=args.batch_size,
                     num_steps=args.num_steps, lr=args.lr, max_grad_norm=args.clip, max_tokens=args.max_tokens,
                     sampling=args.sampling, dtype=args.dtype, seed=args.seed)
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; known presets: {', '.join(PRESETS)}")
    try:
        return preset(args.preset, **overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _backends_from_args(spec: str | None) -> tuple[list[str], bool]:
    """The backends to run, and whether the user named them (then missing ones are failures)."""
    if spec is None:
        return known_backends(), False
    names = [s for s in (part.strip() for part in spec.split(",")) if s]
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


def _gpu_visible() -> bool:
    """Framework-neutral hint that some GPU exists (each backend still checks for itself)."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi") or glob.glob("/dev/kfd"))


def _resolve_text(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    if path == "war_of_the_worlds":
        from .data import bundled_text_path

        return str(bundled_text_path("war_of_the_worlds"))
    if not Path(path).is_file():
        raise UsageError(f"{flag} {path!r}: no such file")
    return str(Path(path).resolve())


def _prepare_out_dir(out: str | None) -> Path:
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path("runs") / stamp
        n = 1
        while out_dir.exists():
            n += 1
            out_dir = Path("runs") / f"{stamp}-{n}"
    else:
        out_dir = Path(out)
    try:
        (out_dir / "backends").mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {str(out_dir)!r}: {exc.strerror or exc}") from None
    return out_dir


class Progress:
    """One status line per backend: a bar on a terminal, occasional lines otherwise (CI logs)."""

    def __init__(self, enabled: bool, stream: Any = sys.stderr) -> None:
        self.enabled, self.stream = enabled, stream
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.total, self.last_line_epoch = 1, 0

    def start(self, name: str, total: int) -> None:
        self.name, self.total, self.last_line_epoch = name, total, 0
        self.t0 = time.perf_counter()

    def epoch(self, epoch: int, perplexity: float, tokens_per_sec: float) -> None:
        if not self.enabled:
            return
        frac = epoch / self.total
        bar = "#" * int(frac * 24) + "." * (24 - int(frac * 24))
        text = (f"{self.name:<10} [{bar}] epoch {epoch:>4}/{self.total}  perplexity {perplexity:8.3f}  "
                f"{tokens_per_sec:>9,.0f} tokens/s  {time.perf_counter() - self.t0:6.1f}s")
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif epoch == self.total or epoch - self.last_line_epoch >= max(1, self.total // 5):
            self.last_line_epoch = epoch
            print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            if self.tty:
                self.stream.write("\r\033[K")
            print(text, file=self.stream, flush=True)

    def finish(self, status: str) -> None:
        if self.enabled:
            if self.tty:
                self.stream.write("\n")
            self.message(f"{self.name:<10} {status} ({time.perf_counter() - self.t0:.1f}s)")


def run_worker(task: WorkerTask, progress: Progress) -> dict[str, Any]:
    """Run one backend in a spawned process; a crash without a result file becomes a 'crashed' row."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=run, args=(task, q), name=f"multirnn-{task.name}", daemon=True)
    progress.start(task.label or task.name, task.config["num_epochs"])
    proc.start()
    try:
        while proc.is_alive() or not q.empty():
            try:
                msg = q.get(timeout=0.2)
            except _queue.Empty:
                continue
            if msg["kind"] == "epoch":
                progress.epoch(msg["epoch"], msg["perplexity"], msg["tokens_per_sec"])
        proc.join()
    except KeyboardInterrupt:
        proc.terminate()
        proc.join(5)
        raise
    path = Path(task.out_path)
    if path.exists():
        result = json.loads(path.read_text())
    else:
        code = proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        result = {"name": task.name, "status": "crashed", "framework_version": None,
                  "error": f"worker process died without a result ({how}); a native crash, abort or out of memory"}
        write_json_atomic(path, result)
    result["exit_code"] = proc.exitcode
    progress.finish(result["status"])
    return result


def _row(raw: dict[str, Any]) -> dict[str, Any]:
    """A worker's raw result in the results.json schema (names stable, every number kept).

    JSON has no infinity: a perplexity that overflowed (a finite loss above ~709) is stored as null
    and read back here as +inf.
    """
    ppl = [math.inf if p is None else p for p in raw.get("perplexity") or []]
    finite = [p for p in ppl if math.isfinite(p)]
    return {
        "name": raw["name"],
        "status": raw["status"],
        "framework_version": raw.get("framework_version"),
        "error": raw.get("error"),
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
        "samples": raw.get("samples") or {},
        "eval_perplexity": raw.get("eval_perplexity"),
        "exit_code": raw.get("exit_code"),
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


def _machine() -> dict[str, Any]:
    import numpy as np

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    isa = "avx512" if " avx512f" in flags else "avx2" if " avx2" in flags else (platform.machine() or "unknown")
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "numpy": np.__version__, "processor": platform.processor() or platform.machine(), "isa": isa}


def assemble(rows: list[dict[str, Any]], config: TrainConfig, options: dict[str, Any],
             expected: dict[str, list[int]], interrupted: bool = False) -> dict[str, Any]:
    v = judge(rows, config, options["init"], expected, options.get("lockstep") != "off")
    out_verdict = v.to_dict()
    out_verdict["backends"] = [{k: val for k, val in b.items() if k != "free_run_deviation"} for b in out_verdict["backends"]]
    if interrupted:
        out_verdict["summary"] = "INTERRUPTED (partial results): " + out_verdict["summary"]
        out_verdict["status"] = "interrupted"
    by_name = {b.name: b for b in v.backends}
    return {
        "schema_version": report.SCHEMA_VERSION,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "multirnn.compare", *options["argv"]]),
        "config": config.to_dict(),
        "options": {k: v for k, v in options.items() if k != "argv"},
        "machine": _machine(),
        "verdict": out_verdict,
        "backends": [_with_verdict(r, by_name.get(r["name"])) for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        config = _config_from_args(args)
        names, named = _backends_from_args(args.backends)
        text = _resolve_text(args.text, "--text")
        eval_text = _resolve_text(args.eval_text, "--eval-text")
        try:  # validate the data before anything is written: too short, empty, unreadable
            data = prepare_data(config, text)
            if eval_text is not None and len(encode(eval_text, data.vocab)) < config.batch_size * config.num_steps + 1:
                raise ValueError(f"--eval-text {eval_text!r} is too short for one minibatch")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.device == "gpu" and not _gpu_visible():
            raise UsageError("--device gpu was requested, but no GPU is visible on this machine; use --device cpu")
        out_dir = _prepare_out_dir(args.out)
    except UsageError as exc:
        print(f"multirnn.compare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    first_batch = min(config.batch_size, config.num_train) if config.protocol == "d2l-ed2" else config.batch_size
    expected = agreement.expected_shapes(first_batch, config.num_steps, len(data.vocab), config.num_hiddens)
    steps_per_epoch = sum(1 for _ in data.train_batches(__import__("numpy").random.default_rng(config.seed)))
    every = {"off": 0, "auto": lockstep.auto_every(steps_per_epoch)}.get(args.lockstep, args.lockstep)
    lock_epochs = tuple(lockstep.checkpoint_epochs(config.num_epochs, int(every)))
    options = {"backends": names, "init": args.init, "mode": args.mode, "device": args.device, "text": text,
               "eval_text": eval_text, "lockstep": args.lockstep, "lockstep_every": every,
               "lockstep_epochs": list(lock_epochs), "argv": argv}
    progress = Progress(enabled=not args.quiet)
    progress.message(f"multirnn.compare: {', '.join(names)} | preset {args.preset} ({config.protocol}, "
                     f"{config.num_epochs} epochs, {config.dtype}, mode {args.mode}) -> {out_dir}")
    ckpt_root = out_dir / "checkpoints"
    rows: list[dict[str, Any]] = []
    interrupted, name = False, names[0]
    anchor: str | None = None  # the checkpoints every later backend restarts from
    try:
        for i, name in enumerate(names):
            init_seed = config.seed if args.init == "shared" else config.seed * 100 + i + 1
            # The oracle anchors everyone; without it, the first backend that runs to the end does.
            own = ckpt_root / _safe(name) if lock_epochs and anchor is None else None
            if own is not None and name != verdict.ORACLE and verdict.ORACLE in names:
                own = None
            task = WorkerTask(name=name, config=config.to_dict(), out_path=str(out_dir / "backends" / f"{_safe(name)}.json"),
                              device=args.device, mode=args.mode, init=args.init, init_seed=init_seed,
                              text=text, eval_text=eval_text, lockstep_epochs=lock_epochs,
                              checkpoint_dir=str(own) if own else None, anchor_dir=anchor)
            raw = run_worker(task, progress)
            if raw["status"] == "unavailable" and not named:
                progress.message(f"{name:<10} skipped: {raw['error']}")
            rows.append(_row(raw))
            if own is not None and raw["status"] == "ok" and lockstep.list_checkpoints(own):
                anchor = str(own)
            # Everything finished so far is on disk even if a later backend takes the process down.
            write_json_atomic(out_dir / "results.json", assemble(rows, config, options, expected, False))
    except KeyboardInterrupt:
        interrupted = True
        progress.message("\ninterrupted: writing the partial report")
        if not any(r["name"] == name for r in rows):
            rows.append(_row({"name": name, "status": "crashed", "error": "interrupted by the user (Ctrl-C)"}))
    if not args.keep_checkpoints:
        shutil.rmtree(ckpt_root, ignore_errors=True)
    results = assemble(rows, config, options, expected, interrupted)
    notes = report.write_all(results, out_dir, make_plots=not args.no_plot)
    print(report.terminal_report(results))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"\nReport: {out_dir / 'report.md'}  (results.json, curves.csv"
          f"{'' if args.no_plot or notes else ', perplexity.png, deviation.png'})")
    if interrupted:
        return EXIT_INTERRUPTED
    status = results["verdict"]["status"]
    return {"agree": EXIT_AGREE, "no-backend": EXIT_NO_BACKEND, "not-judged": EXIT_NOT_JUDGED}.get(status, EXIT_DISAGREE)


def _safe(name: str) -> str:
    """A backend name usable as a file name (third-party specs contain ':' and '.')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


if __name__ == "__main__":
    sys.exit(main())
