"""Training throughput of every backend and implementation, against this machine's floor for the recurrence.

    python -m benchmarks.bench_train                       # main table, cells table, scaling (about 25 min)
    python -m benchmarks.bench_train --no-scaling --no-cells   # main table only (about 8 min)
    python -m benchmarks.bench_train --quick               # a smoke run: 2 short rounds, no cells, no scaling, short ladders

Variants per framework, from the same weights and batches (d2l ed. 1 shapes: batch 32, steps 35,
hidden 512, lr 1, θ 1, float32): ``scratch/eager`` (the readable d2l translation),
``scratch/fast`` (the backend's fused or compiled step, the default of ``compare``),
``layers/eager`` and ``layers/fast`` (the framework's own recurrent layer, as ``--impl layers``
trains it). The NumPy oracle runs once (its one implementation).

**Timing.** Each variant runs in its own warm process (one warm-up epoch, compilation included,
reported as the first epoch). The parent then asks the processes in turn for a timed window of
whole epochs (ABCD, ABCD, ... ``--repeats`` rounds), so that slow drift of the machine hits every
variant alike; a variant's speed is the median of its windows, and a ratio between two variants
is the median (and min-max spread) of their per-round ratios.

**Work and limits.** FLOPs per token come from :meth:`multirnn.cells.Model.flops_per_token` (the
fast paths' real work: the first layer's input product is a row gather, its backward a
scatter-add). Two limits are measured in the same run: the big-GEMM roofline (float32 FLOP/s of a
2048^3 GEMM / FLOPs per token) and the algorithm floor of :mod:`benchmarks.floor` (the 2·T·L
serial small GEMMs at the best rate any installed library reaches for that shape, plus the rest at
big-GEMM rate), which no implementation can beat. The machine's speed drifts, so in the main table the
floor is also a "variant": warm processes time the chains of the two libraries fastest at the start,
and the big-GEMM rate, right after each fast path's window (that window's floor is the faster chain),
and the report's % of the floor is the median of those per-round ratios.
Each fast path's own-kernel floor (its library's chain and gradient GEMM) is timed the same way, right
after that floor window, so "its own kernels allow N %" is a ratio of windows seconds apart as well.
After the main table, JAX and torch build their steps up from their GEMMs (:mod:`benchmarks.ladder`),
so the verdict can count the step's work besides the GEMMs too.

Run one benchmark at a time: on 2 cores two concurrent runs ruin each other's numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import label
from benchmarks.timing import turns
from multirnn.files import check_writable
from multirnn.provenance import code_version
from multirnn.worker import peak_rss_mb  # VmHWM: this process's own peak, not its parent's

ROOT = Path(__file__).resolve().parent
FRAMEWORKS = ("torch", "mxnet", "tensorflow", "jax")
VARIANTS = ("scratch/eager", "scratch/fast", "layers/eager", "layers/fast")
CELLS_TABLE = ("gru", "gru-reset-after", "lstm")
D2L_ED1 = {"B": 32, "H": 512, "T": 35}  # the main table's shape (preset d2l-ed1): its floor and the per-round one
SCALING = {"num_hiddens": [128, 256, 512, 1024], "batch_size": [1, 8, 32, 128, 256]}
LAYER_NAMES = {
    "torch": "torch.nn.RNN/GRU/LSTM + nn.Linear", "mxnet": "gluon.rnn.RNN/GRU/LSTM + nn.Dense",
    "tensorflow": "keras.layers.SimpleRNN/GRU/LSTM + Dense", "jax": "flax.linen.RNN(SimpleCell/GRUCell/LSTMCell) + Dense",
}


# ----------------------------------------------------------------------------- child process


def _setup(spec: dict[str, Any]) -> tuple[Any, Any, int]:
    """The backend, an epoch function and the tokens per epoch of ``spec``."""
    import multirnn

    config = multirnn.preset("d2l-ed1", num_epochs=1, cell=spec.get("cell", "rnn"), **spec.get("overrides", {}))
    data = multirnn.prepare_data(config)
    model = config.model
    params = multirnn.init_params(len(data.vocab), config.num_hiddens, config.seed, config.dtype, model)
    batches = list(data.train_batches(np.random.default_rng(config.seed)))  # the same every epoch: timing, not learning
    tokens = sum(X.size for X, _ in batches)
    be = multirnn.get_backend(spec["backend"], impl=spec["impl"], mode=spec["mode"], device=spec.get("device", "cpu"),
                              model=model)
    p = be.params_from_numpy(params)
    H, dtype = config.num_hiddens, config.dtype

    def epoch() -> float:
        nonlocal p
        state, loss = None, None
        for X, Y in batches:
            state = be.init_state(X.shape[0], H, dtype) if state is None else state
            p, loss, _norm, state = be.train_step(p, X, Y, state, config.lr, config.max_grad_norm)
        return float(loss)  # float() waits for asynchronous frameworks to finish

    return be, epoch, tokens


def fastest_form(forms: list[tuple[Callable[[], Any], Callable[[Any], Any]]], seconds: float) -> tuple[float, int]:
    """Call every ``(run, sync)`` form in turn for ``seconds`` (so drift touches them alike): the
    fastest form's median seconds per call, and how many calls were made in all."""
    times = turns([lambda run=run, sync=sync: sync(run()) for run, sync in forms], seconds=seconds)
    return min(statistics.median(form) for form in times), sum(map(len, times))


def serve_floor(spec: dict[str, Any]) -> None:
    """The floor as a variant: per ``window S`` line, time the serial chain (the library's fastest
    form) for S seconds and the big-GEMM rate, and answer with the floor in tokens/s for that window,
    so every round's % of the floor divides two measurements taken side by side.

    With ``mode: "own"`` it answers a library's own-kernel floor instead: its chain, its output
    layer's three GEMMs at their own shapes, and the other batched FLOPs at its own rate for the
    step's largest batched GEMM (the recurrent weights' gradient, capped at the big-GEMM rate), all
    timed in the window, as report.own_floor computes it from the start-of-run measurements."""
    from benchmarks import floor as fl

    # Every form, every window: a pick made once at start-up is a pick on a few noisy calls, and a
    # wrong one (seen: XLA's batch-major chain, 1.7x slower, kept by one process all run long) turned
    # a reachable target into "unreachable". fastest_seconds: 5 repeats of three back-to-back calls.
    def best(runners: list) -> float:
        return fl.fastest_seconds(runners, reps=5)

    B, H, G, T, L = (spec[k] for k in ("B", "H", "G", "T", "L"))
    chain_forms = fl.chain_runners(spec["impl"], B, H, G, T)
    own_mode = spec["mode"] == "own"
    if own_mode:
        grad_forms = fl.gradient_runners(spec["impl"], B, H, G, T)
        grad_flops = fl.gradient_gemm_flops(B, H, G, T)
        out_forms = fl.output_runners(spec["impl"], B, H, spec["V"], T)
        out_flops = fl.output_gemm_flops(B, H, spec["V"], T)
        best(grad_forms), best(out_forms)  # compile them before "ready"
    best(chain_forms)
    print(json.dumps({"ready": True, "framework_version": spec["impl"], "first_epoch_seconds": 0.0,
                      "tokens_per_epoch": 0}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        t0 = time.perf_counter()
        chain, calls = fastest_form(chain_forms, float(cmd[1]))
        big = max(fl.big_gemm_flops(reps=2).values())
        reply = {"chain_seconds": chain, "big_gemm_flops": big, "chains": calls}
        batched = fl.own_batched_seconds(spec["batched_flops"], big)
        if own_mode:
            reply["gradient_gflops"] = grad_flops / best(grad_forms) / 1e9
            reply["output_seconds"] = best(out_forms)
            batched = fl.own_batched_seconds(spec["batched_flops"], big, reply["gradient_gflops"] * 1e9,
                                             reply["output_seconds"], out_flops)
        floor_tps = B * T / (L * chain + batched)
        print(json.dumps({"tokens_per_sec": floor_tps, **reply, "seconds": time.perf_counter() - t0, "finite": True}),
              flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


def serve(spec: dict[str, Any]) -> None:
    """A warm process: warm up, then time one window of whole epochs per ``window S`` line on stdin."""
    from multirnn.allocator import keep_freed_memory

    keep_freed_memory()  # as compare's workers do
    if spec["backend"] == "floor":
        serve_floor(spec)
        return
    try:
        be, epoch, tokens = _setup(spec)
    except Exception as exc:  # noqa: BLE001  (e.g. UnsupportedModelError: a row of its own, not a crash)
        print(json.dumps({"error": f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"}), flush=True)
        sys.stderr.flush()
        # No normal exit: after an exception MXNet 1.9 can hang in its engine's shutdown (seen once:
        # the parent waited its full timeout for a process that had already failed).
        os._exit(1)
    t = time.perf_counter()
    loss = epoch()
    first = time.perf_counter() - t
    print(json.dumps({"ready": True, "framework_version": be.version(), "first_epoch_seconds": first,
                      "tokens_per_epoch": tokens, "loss": loss}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        seconds, n, t = float(cmd[1]), 0, time.perf_counter()
        while True:
            loss = epoch()
            n += 1
            dt = time.perf_counter() - t
            if dt >= seconds:
                break
        print(json.dumps({"tokens_per_sec": n * tokens / dt, "epochs": n, "seconds": dt, "loss": loss,
                          "finite": bool(np.isfinite(loss))}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


# ----------------------------------------------------------------------------- parent process


class Server:
    """A variant's warm process."""

    def __init__(self, spec: dict[str, Any], timeout: float) -> None:
        self.spec, self.error, self.info = spec, None, {}
        self.windows: list[dict[str, Any]] = []
        cmd = [sys.executable, "-m", "benchmarks.bench_train", "--serve", json.dumps(spec)]
        # stderr to a file, not a pipe: nobody reads it while the variant runs, and a framework that
        # logs more than a pipe holds (64 KiB) would block on its next write.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (lives as long as the process; stop() closes it)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, cwd=ROOT.parent)
        self.info = self._read(timeout)
        if "error" in self.info:  # the variant could not start (its reason, e.g. an unsupported model)
            self.error = self.info.pop("error")
            self.stop()

    def _read(self, timeout: float) -> dict[str, Any]:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if sel.select(timeout=1.0):
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith("{"):
                    return json.loads(line)
            elif self.proc.poll() is not None:
                break
        self.error = (self._stderr_text().strip().splitlines() or ["no output"])[-1] if self.proc.poll() is not None \
            else f"no answer within {timeout:.0f} s"
        self.stop()
        return {}

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def window(self, seconds: float, timeout: float) -> None:
        if self.error:
            return
        self.proc.stdin.write(f"window {seconds}\n")
        self.proc.stdin.flush()
        reply = self._read(timeout)
        if reply:
            self.windows.append(reply)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                tail = self.proc.stdout.readline()
                if tail.startswith("{"):
                    self.info.update(json.loads(tail))
                self.proc.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
        self._stderr.close()  # the error tail, if any, was read before stopping

    def result(self) -> dict[str, Any]:
        return summarise({**self.spec, **{k: v for k, v in self.info.items() if k != "ready"}}, self.windows, self.error)


def summarise(row: dict[str, Any], windows: list[dict[str, Any]], error: str | None) -> dict[str, Any]:
    """A variant's row: its spec and start-up facts, its windows, and their median and range (or its error)."""
    rates = [w["tokens_per_sec"] for w in windows]
    out = {**row, "windows": windows}
    if error or not rates:
        return {**out, "error": error or "no timed window"}
    return {**out, "tokens_per_sec": rates, "median": statistics.median(rates), "min": min(rates), "max": max(rates)}


class BestOf:
    """The floor on several libraries' chains (``contenders``), one warm floor process each, timed one
    after another in every window: a window's floor is the fastest of them at that moment, so a
    library that measured slow at the start of the run (the machine's speed drifts) cannot leave
    the run with a lenient floor. Behaves as one :class:`Server`."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers, self.windows = servers, []
        self.spec = {**servers[0].spec, "libraries": [s.spec["impl"] for s in servers]}
        live = [s for s in servers if not s.error]
        self.error = None if live else "; ".join(f"{s.spec['impl']}: {s.error}" for s in servers)

    def window(self, seconds: float, timeout: float) -> None:
        replies = []
        for s in self.servers:
            if s.error:
                continue
            if replies:
                time.sleep(0.3)  # as between variants: the previous library's threads go idle first
            before = len(s.windows)
            s.window(seconds, timeout)
            if len(s.windows) > before:
                replies.append((s.spec["impl"], s.windows[-1]))
        if replies:
            library, best = max(replies, key=lambda r: r[1]["tokens_per_sec"])
            self.windows.append({**best, "chain_library": library,
                                 "contenders": {lib: w["tokens_per_sec"] for lib, w in replies}})

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def result(self) -> dict[str, Any]:
        failed = {s.spec["impl"]: s.error for s in self.servers if s.error}
        return summarise({**self.spec, **({"library_errors": failed} if failed else {})}, self.windows, self.error)


def _floor_paired(spec: dict[str, Any]) -> bool:
    """Whether a variant gets the floor timed beside it: the scratch fast paths and the NumPy oracle."""
    return spec["impl"] == "scratch" and (spec["mode"] == "fast" or spec["backend"] == "numpy")


def run_interleaved(specs: list[dict[str, Any]], repeats: int, window: float, timeout: float,
                    log: Any = sys.stderr, floor_spec: dict[str, Any] | None = None,
                    own: bool = True) -> list[dict[str, Any]]:
    """Warm every variant in its own process (one after another), then time them round-robin.

    With ``floor_spec``, the floor (:func:`serve_floor`) is timed too, right after the window of each
    variant it is paired with (the scratch fast paths and the NumPy oracle), for half a window: the
    machine's speed drifts within a round (this AMD VM's floor ranged 53k-81k tokens/s across one
    run's rounds), so a % of the floor divides two measurements seconds apart, not a round apart.
    Then that variant's own-kernel floor (its library's chain, gradient GEMM and output-layer GEMMs, ``mode: "own"``)
    is timed the same way, so "its own kernels allow N %" compares windows of the same seconds too
    (unless ``own`` is False: the scaling sweep pairs the floor only).
    """
    own_specs = ([{**floor_spec, "impl": s["backend"], "mode": "own"} for s in specs if _floor_paired(s)]
                 if floor_spec and own else [])
    floor_specs = [{**floor_spec, "impl": lib} for lib in floor_spec.get("contenders", [floor_spec["impl"]])] \
        if floor_spec else []

    def start(spec: dict[str, Any]) -> Server:
        print(f"  warming {label(spec)}{' ' + spec['impl'] if spec['backend'] == 'floor' else ''} ...",
              file=log, end=" ", flush=True)
        s = Server(spec, timeout)
        if s.error:  # e.g. a layer that cannot express the cell: a row that says so, not a crash
            print(f"FAILED: {s.error}", file=log, flush=True)
        else:
            print("ready" if spec["backend"] == "floor" else f"first epoch {s.info['first_epoch_seconds']:.2f} s",
                  file=log, flush=True)
        return s

    servers = [start(spec) for spec in specs]
    floor = BestOf([start(spec) for spec in floor_specs]) if floor_specs else None
    own = {o.spec["impl"]: o for o in map(start, own_specs)}
    limits = [*([floor] if floor else []), *own.values()]

    def beside(limit: Server | BestOf | None, s: Server) -> None:
        """Time ``limit`` for half a window right after ``s``'s window and tag it with ``s``."""
        if limit is None:
            return
        before = len(limit.windows)
        time.sleep(0.3)
        limit.window(window / 2, timeout)
        if len(limit.windows) > before:
            limit.windows[-1]["paired_with"] = label(s.spec)

    for r in range(repeats):
        for s in servers:
            time.sleep(0.3)  # let the previous process's thread pools go idle (OpenMP spin-waits)
            s.window(window, timeout)
            if floor and not s.error and _floor_paired(s.spec):
                beside(floor, s)
                beside(own.get(s.spec["backend"]), s)
        done = [f"{label(s.spec)} {s.windows[-1]['tokens_per_sec'] / 1e3:.1f}k" for s in servers if s.windows and not s.error]
        print(f"  round {r + 1}/{repeats}: " + ", ".join(done), file=log, flush=True)
    for s in [*servers, *limits]:
        s.stop()
    return [s.result() for s in [*servers, *limits]]


def machine_info() -> dict[str, Any]:
    """compare's machine record (ISA, its caps, NumPy's OpenBLAS as named) plus the CPU's model name and,
    on x86, its family and model numbers: virtual machines often name every Xeon "Intel(R) Xeon(R)
    Processor", and two machines of different speeds then read the same in a report."""
    from multirnn.compare import machine_info as compare_machine_info

    info = compare_machine_info()
    try:
        with open("/proc/cpuinfo") as f:
            first = {}
            for ln in f:
                if not ln.strip():
                    break  # the first processor's block is enough
                key, _, value = ln.partition(":")
                first[key.strip()] = value.strip()
    except OSError:
        return info
    info["cpu_model"] = first.get("model name")
    for key, name in (("cpu family", "cpu_family"), ("model", "cpu_model_number")):
        if first.get(key, "").isdigit():
            info[name] = int(first[key])
    return info


def _write(out: Path, payload: dict[str, Any]) -> None:
    from multirnn.files import write_json_atomic

    write_json_atomic(out / "results.json", payload)  # atomic, NaN/inf as null: nothing half-written


def floor_server_spec(f: dict[str, Any], big_flops: float, B: int, H: int, T: int) -> dict[str, Any] | None:
    """The spec of a warm process that times the tanh RNN's floor ``f`` for one shape (:func:`serve_floor`):
    the chain of each library that was among the fastest at the start (``contenders``; the window's floor
    is the fastest of them), and the batched FLOPs at the big-GEMM rate; None if no library timed the chain."""
    if "best_library" not in f:
        return None
    return {"backend": "floor", "impl": f["best_library"], "mode": "chain", "cell": "rnn", "B": B, "H": H, "T": T,
            "G": 1, "L": 1, "V": 28, "batched_flops": f["batched_seconds"] * big_flops,
            "contenders": f.get("contenders", [f["best_library"]])}


def run_ladder(library: str, rounds: int, timeout: float) -> dict[str, Any]:
    """``python -m benchmarks.ladder LIBRARY --json`` in its own process: its last JSON line, or an error."""
    from benchmarks.floor import json_child

    return json_child([sys.executable, "-m", "benchmarks.ladder", library, "--rounds", str(rounds), "--json"],
                      library, timeout)


def _names(allowed: tuple[str, ...], *also: str) -> Any:
    """An argparse type: a comma-separated list of names from ``allowed`` (``also`` accepted and kept),
    so a typo fails at once with the valid names instead of after minutes of floor timing."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in allowed and n not in also]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad)) or 'empty list'}; choose from "
                                             f"{', '.join(allowed)}")
        return names
    return parse


def main(argv: list[str] | None = None) -> int:
    from multirnn.compare import number_arg  # compare's checked numbers: positive and finite

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--backends", type=_names(FRAMEWORKS, "numpy"), default=",".join(FRAMEWORKS),
                    help=f"comma-separated frameworks, of {', '.join(FRAMEWORKS)} (the NumPy oracle is always timed once)")
    ap.add_argument("--variants", type=_names(VARIANTS), default=",".join(VARIANTS),
                    help=f"comma-separated variants, of {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--repeats", type=number_arg(int, "a positive integer"), default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--window", type=number_arg(float, "a positive number of seconds"), default=2.0,
                    help="seconds of whole epochs per timed window (default 2)")
    ap.add_argument("--no-cells", action="store_true", help="skip the GRU/LSTM table")
    ap.add_argument("--no-scaling", action="store_true", help="skip the hidden/batch scaling sweep")
    ap.add_argument("--no-ladders", action="store_true", help="skip the ladders (benchmarks.ladder) after the main table")
    ap.add_argument("--ladder-rounds", type=number_arg(int, "a positive integer"), default=60,
                    help="turns per ladder (default 60)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 1 s, no cells table, no scaling, 5-round ladders")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results/<timestamp>)")
    ap.add_argument("--timeout", type=number_arg(float, "a positive number of seconds"), default=900, help="seconds a process may take per answer")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = ap.parse_args(argv)
    if args.serve:
        serve(json.loads(args.serve))
        return 0

    from benchmarks import floor as floor_mod
    from benchmarks import ladder as ladder_mod
    from benchmarks import report
    from multirnn import blas
    from multirnn.cells import Model

    blas.name_openblas_core()  # as compare does: the timed processes' NumPy on kernels this CPU can run
    if args.quick:
        args.repeats, args.window, args.no_cells, args.no_scaling, args.ladder_rounds = 2, 1.0, True, True, 5
    backends = [b for b in args.backends if b != "numpy"]
    variants = args.variants
    out = Path(args.out) if args.out else ROOT / "results" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:  # before minutes of measuring, one line as compare's (a file in the way, a read-only file system)
        out.mkdir(parents=True, exist_ok=True)
        check_writable(out)
    except OSError as exc:
        ap.exit(2, f"{ap.prog}: error: cannot write to output folder {str(out)!r}: {exc.strerror or exc}\n")
    log = sys.stderr
    payload: dict[str, Any] = {
        "schema_version": 2, "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "code_version": code_version(),  # which code was timed (a checkout's commit, or the package's hash)
        "command": "python -m benchmarks.bench_train " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(), "repeats": args.repeats, "window_seconds": args.window, "layers": LAYER_NAMES,
    }

    print("measuring the big-GEMM rate and the serial-GEMM floor ...", file=log, flush=True)
    big = json.loads(subprocess.run([sys.executable, "-m", "benchmarks.floor", "--library", "big-gemm"],
                                    capture_output=True, text=True, cwd=ROOT.parent, check=True).stdout.strip().splitlines()[-1])
    big_flops = max(big.values())
    payload["big_gemm"] = {"flops": big_flops, "all": big}
    print(f"  big GEMM {big_flops / 1e9:.1f} GFLOP/s", file=log, flush=True)

    def floor_for(cell: str, B: int = D2L_ED1["B"], H: int = D2L_ED1["H"], T: int = D2L_ED1["T"]) -> dict[str, Any]:
        f = floor_mod.floor(B, H, T, 28, Model(cell), big_flops)
        print(f"  floor [{cell}, B={B}, H={H}]: {f.get('floor_tokens_per_sec', 0) / 1e3:.1f}k tokens/s "
              f"(best chain: {f.get('best_library')})", file=log, flush=True)
        return f

    payload["floors"] = {"rnn": floor_for("rnn")}
    _write(out, payload)

    def specs_for(cell: str, variant_list: list[str]) -> list[dict[str, Any]]:
        specs = [{"backend": "numpy", "impl": "scratch", "mode": "eager", "cell": cell, "device": args.device}]
        for b in backends:
            for v in variant_list:
                impl, mode = v.split("/")
                specs.append({"backend": b, "impl": impl, "mode": mode, "cell": cell, "device": args.device})
        return specs

    print(f"main table: tanh RNN, {args.repeats} interleaved rounds of {args.window:g} s", file=log, flush=True)
    f = payload["floors"]["rnn"]
    # The floor is timed again beside the variants, right after each fast path's window: the machine's
    # speed drifts (the torch chain measured 199 and 276 GFLOP/s an hour apart on one machine, the
    # floor 53k-81k tokens/s between rounds on another), so a % of the floor must divide two
    # measurements taken together.
    floor_spec = floor_server_spec(f, big_flops, **D2L_ED1)
    payload["main"] = run_interleaved(specs_for("rnn", variants), args.repeats, args.window, args.timeout, log,
                                      floor_spec)
    _write(out, payload)

    # Where a fast path misses 80 % though its GEMMs alone would allow it, the step's other work
    # decides: each framework with a ladder builds its step up from its GEMMs in its own process.
    lads = [b for b in backends if b in ladder_mod.LIBRARIES] if "scratch/fast" in variants and args.device == "cpu" else []
    if lads and not args.no_ladders:
        payload["ladders"] = {}
        for b in lads:
            print(f"ladder: {b} ({args.ladder_rounds} rounds)", file=log, flush=True)
            payload["ladders"][b] = run_ladder(b, args.ladder_rounds, args.timeout)
            _write(out, payload)

    if not args.no_cells:
        payload["cells"] = {}
        for cell in CELLS_TABLE:
            payload["floors"][cell] = floor_for(cell)
            print(f"cells table: {cell}", file=log, flush=True)
            payload["cells"][cell] = run_interleaved(specs_for(cell, ["scratch/fast", "layers/fast"]),
                                                     *report.cells_rounds(args.repeats, args.window), args.timeout, log)
            _write(out, payload)

    if not args.no_scaling:
        payload["scaling"] = []
        for key, values in SCALING.items():
            for value in values:
                shape = {"batch_size": 32, "num_hiddens": 512, key: value}
                tokens = max(10000, 4 * shape["batch_size"] * 35 + 36)  # at least 4 minibatches per epoch
                f = floor_for("rnn", shape["batch_size"], shape["num_hiddens"])
                specs = [{"backend": b, "impl": "scratch", "mode": "fast", "cell": "rnn", "device": args.device,
                          "overrides": {key: value, "max_tokens": tokens}} for b in backends]
                print(f"scaling: {key}={value}", file=log, flush=True)
                # The shape's floor is timed beside each fast path too (as in the main table): measured
                # once at the shape's start, drift alone put a fast path at 108 % of it in one run.
                paired_floor = floor_server_spec(f, big_flops, B=shape["batch_size"], H=shape["num_hiddens"], T=D2L_ED1["T"])
                res = run_interleaved(specs, *report.scaling_rounds(args.window), args.timeout, log, paired_floor, own=False)
                payload["scaling"].append({"varied": key, "value": value, "floor": f, "results": res})
                _write(out, payload)

    report.write(payload, out)
    print(report.limits_text(payload) + "\n\n" + report.main_table(payload))  # the headline on stdout
    print(f"\nwrote {out}/report.md", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
