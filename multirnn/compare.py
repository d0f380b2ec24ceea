"""``python -m multirnn.compare``: train every backend side by side and judge whether they agree.

Each backend trains in its own spawned process, one after the other (so timings are clean), from
the same initial weights on the same batches. Results are written as each backend finishes, and
the verdict compares every per-step loss with the NumPy oracle.

Exit status: 0 all agree, 1 a disagreement (or a backend crashed), 2 bad usage, 3 no backend ran.
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
from pathlib import Path
from typing import Any, NoReturn

from . import agreement, report
from .backends import canonical_name, known_backends
from .config import PRESETS, TrainConfig, preset
from .data import encode
from .harness import prepare_data
from .worker import WorkerTask, run, write_json_atomic

EXIT_AGREE, EXIT_DISAGREE, EXIT_USAGE, EXIT_NO_BACKEND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXAMPLES = """\
examples:
  python -m multirnn.compare                                   # every installed backend, quick preset
  python -m multirnn.compare --backends numpy,torch --epochs 5 --out runs/try
  python -m multirnn.compare --preset d2l-ed1 --sampling random  # the book's 500 epochs
  python -m multirnn.compare --text my_book.txt --eval-text war_of_the_worlds

exit status: 0 all agree, 1 a disagreement or crash, 2 bad usage, 3 no backend could run.
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
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return list(dict.fromkeys(resolved)), True


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


def _float64_envelope(task: WorkerTask, out_dir: Path, progress: Progress) -> list[float] | None:
    """Train the oracle again in float64 from the same (rounded) weights and batches: its distance
    to the float32 oracle is how far float32 rounding alone moves the curve."""
    from dataclasses import replace

    f64 = replace(task, config={**task.config, "dtype": "float64"}, init_dtype=task.config["dtype"], eval_text=None,
                  label="numpy (float64 envelope)",
                  out_path=str(out_dir / "backends" / "numpy-float64-envelope.json"))
    raw = run_worker(f64, progress)
    return raw.get("step_loss") if raw["status"] == "ok" else None


def _row(raw: dict[str, Any]) -> dict[str, Any]:
    """A worker's raw result in the results.json schema (names stable, every number kept)."""
    ppl = raw.get("perplexity") or []
    return {
        "name": raw["name"],
        "status": raw["status"],
        "framework_version": raw.get("framework_version"),
        "error": raw.get("error"),
        "perplexity": ppl,
        "val_perplexity": raw.get("val_perplexity") or [],
        "final_perplexity": ppl[-1] if ppl else None,
        "best_perplexity": min(ppl) if ppl else None,
        "median_last_perplexity": agreement.robust_final(ppl) if ppl else None,  # last 10 % of epochs
        "tokens_per_sec": raw.get("tokens_per_sec_median"),
        "tokens_per_sec_per_epoch": raw.get("tokens_per_sec") or [],
        "epoch_seconds": raw.get("epoch_seconds") or [],
        "first_epoch_seconds": raw.get("first_epoch_seconds"),
        "peak_rss_mb": raw.get("peak_rss_mb"),
        "step_loss": raw.get("step_loss") or [],
        "step_grad_norm": raw.get("step_grad_norm") or [],
        "steps_per_epoch": raw.get("steps_per_epoch") or [],
        "shapes": raw.get("shapes"),
        "shapes_agree": None,
        "max_deviation": None,
        "first_deviation_step": None,
        "first_deviation_epoch": None,
        "deviation_per_step": [],
        "agrees": None,
        "samples": raw.get("samples") or {},
        "eval_perplexity": raw.get("eval_perplexity"),
        "exit_code": raw.get("exit_code"),
    }


def judge(rows: list[dict[str, Any]], config: TrainConfig, init: str, expected: dict[str, list[int]],
          envelope_losses: list[float] | None = None) -> dict[str, Any]:
    """Fill each row's agreement fields and return the verdict (pure: no I/O).

    ``envelope_losses``: the NumPy oracle's per-step losses in float64, for float32 runs: how far
    float32 rounding alone moves the oracle's curve widens the band (see :mod:`multirnn.agreement`).
    """
    ran = [r for r in rows if r["status"] in ("ok", "diverged") and r["step_loss"]]
    failed = [r["name"] for r in rows if r["status"] == "crashed"]
    for r in rows:
        if r["shapes"]:
            problems = agreement.shape_mismatches(r["shapes"], expected)
            r["shapes_agree"] = not problems
            if problems:
                r["error"] = "; ".join(filter(None, [r["error"], "shape mismatch: " + ", ".join(problems)]))
    verdict: dict[str, Any] = {"init": init, "tolerance": None, "reference": None, "reference_label": None}
    if not ran:
        verdict.update(status="no-backend", summary="no backend could run (see the problems below)")
        return verdict
    if init == "shared":
        tol = agreement.STEP_RTOL[config.dtype]
        names = [r["name"] for r in ran]
        ref_name = "numpy" if "numpy" in names else None
        ref = agreement.reference_curve({r["name"]: r["step_loss"] for r in ran}, ref_name)
        verdict.update(tolerance=tol, reference=ref_name,
                       reference_label="the NumPy oracle" if ref_name else "the per-step median of the backends")
        envelope = None
        if config.dtype == "float32" and ref_name == "numpy" and envelope_losses:
            envelope = agreement.relative_deviation(ref, envelope_losses)
            verdict.update(envelope_factor=agreement.ENVELOPE_FACTOR, envelope_per_step=envelope.tolist(),
                           band_per_step=agreement.band(len(ref), tol, envelope).tolist())
            step = agreement.decorrelation_step(envelope)
            if step is not None:
                epoch = agreement.epoch_of_step(step, next(r for r in ran if r["name"] == "numpy")["steps_per_epoch"])
                verdict.update(decorrelated_step=step, decorrelated_epoch=epoch, note=(
                    f"float32 rounding alone moved the oracle's curve by more than {agreement.DECORRELATED:.0%} "
                    f"from epoch {epoch} on: from there the float32 curves no longer follow each other step by "
                    "step and the band is that wide; use --dtype float64 for a strict check"))
        elif config.dtype == "float32":
            verdict["note"] = ("fixed float32 band (no float64 oracle run to measure the rounding envelope; "
                               "include numpy in --backends for long runs)")
        for r in ran:
            d = agreement.compare_curve(r["step_loss"], ref, tol, r["steps_per_epoch"], envelope)
            r.update(max_deviation=d.max_deviation, first_deviation_step=d.first_step,
                     first_deviation_epoch=d.first_epoch, deviation_per_step=d.per_step,
                     agrees=d.agrees and r["shapes_agree"] is not False)
    else:
        finals = {r["name"]: agreement.robust_final(r["perplexity"]) for r in ran if r["perplexity"]}
        verdict.update(tolerance=agreement.INDEPENDENT_RTOL, reference_label="the median final perplexity")
        for r in ran:
            dist, ok = agreement.compare_finals(finals).get(r["name"], (None, False))
            r.update(max_deviation=dist, agrees=ok and r["shapes_agree"] is not False and r["status"] == "ok")
    disagree = [r["name"] for r in ran if not r["agrees"]]
    unavailable = [r["name"] for r in rows if r["status"] == "unavailable"]
    parts = []
    if disagree:
        parts.append(f"{', '.join(disagree)} disagree{'s' if len(disagree) == 1 else ''} with {verdict['reference_label']}")
    else:
        what = "per-step losses" if init == "shared" else "final perplexities"
        within = f"{verdict['tolerance']:g}"
        if "band_per_step" in verdict:
            within = (f"max({within}, {agreement.ENVELOPE_FACTOR:g} x the float32 rounding envelope, "
                      f"which reached {max(verdict['envelope_per_step']):.1e})")
        parts.append(f"{len(ran)} backend{'s' if len(ran) > 1 else ''} ({', '.join(r['name'] for r in ran)}) "
                     f"agree{'' if len(ran) > 1 else 's'}: "
                     f"shapes and {what} within {within} of {verdict['reference_label']}")
    if failed:
        parts.append(f"crashed: {', '.join(failed)}")
    if unavailable:
        parts.append(f"unavailable: {', '.join(unavailable)}")
    if verdict.get("note"):
        parts.append(verdict["note"])
    verdict.update(status="disagree" if disagree or failed else "agree", summary="; ".join(parts),
                   disagreeing=disagree, crashed=failed, unavailable=unavailable)
    return verdict


def _machine() -> dict[str, Any]:
    import numpy as np

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "numpy": np.__version__, "processor": platform.processor() or platform.machine()}


def assemble(rows: list[dict[str, Any]], config: TrainConfig, options: dict[str, Any],
             expected: dict[str, list[int]], interrupted: bool = False,
             envelope_losses: list[float] | None = None) -> dict[str, Any]:
    verdict = judge(rows, config, options["init"], expected, envelope_losses)
    if interrupted:
        verdict["summary"] = "INTERRUPTED (partial results): " + verdict["summary"]
        verdict["status"] = "interrupted"
    return {
        "schema_version": report.SCHEMA_VERSION,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "multirnn.compare", *options["argv"]]),
        "config": config.to_dict(),
        "options": {k: v for k, v in options.items() if k != "argv"},
        "machine": _machine(),
        "verdict": verdict,
        "backends": rows,
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
    options = {"backends": names, "init": args.init, "mode": args.mode, "device": args.device, "text": text,
               "eval_text": eval_text, "argv": argv}
    progress = Progress(enabled=not args.quiet)
    progress.message(f"multirnn.compare: {', '.join(names)} | preset {args.preset} ({config.protocol}, "
                     f"{config.num_epochs} epochs, {config.dtype}, mode {args.mode}) -> {out_dir}")
    rows: list[dict[str, Any]] = []
    interrupted, name, envelope = False, names[0], None
    try:
        for i, name in enumerate(names):
            init_seed = config.seed if args.init == "shared" else config.seed * 100 + i + 1
            task = WorkerTask(name=name, config=config.to_dict(), out_path=str(out_dir / "backends" / f"{name}.json"),
                              device=args.device, mode=args.mode, init=args.init, init_seed=init_seed,
                              text=text, eval_text=eval_text)
            raw = run_worker(task, progress)
            if raw["status"] == "unavailable" and not named:
                progress.message(f"{name:<10} skipped: {raw['error']}")
            rows.append(_row(raw))
            if name == "numpy" and raw["status"] == "ok" and config.dtype == "float32" and args.init == "shared":
                envelope = _float64_envelope(task, out_dir, progress)
            # Everything finished so far is on disk even if a later backend takes the process down.
            write_json_atomic(out_dir / "results.json", assemble(rows, config, options, expected, False, envelope))
    except KeyboardInterrupt:
        interrupted = True
        progress.message("\ninterrupted: writing the partial report")
        if not any(r["name"] == name for r in rows):
            rows.append(_row({"name": name, "status": "crashed", "error": "interrupted by the user (Ctrl-C)"}))
    results = assemble(rows, config, options, expected, interrupted, envelope)
    notes = report.write_all(results, out_dir, make_plots=not args.no_plot)
    print(report.terminal_report(results))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"\nReport: {out_dir / 'report.md'}  (results.json, curves.csv"
          f"{'' if args.no_plot or notes else ', perplexity.png, deviation.png'})")
    if interrupted:
        return EXIT_INTERRUPTED
    status = results["verdict"]["status"]
    if status == "no-backend":
        return EXIT_NO_BACKEND
    return EXIT_AGREE if status == "agree" else EXIT_DISAGREE


if __name__ == "__main__":
    sys.exit(main())
