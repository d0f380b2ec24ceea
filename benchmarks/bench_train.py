"""Training throughput of every backend: d2l-style eager, fast path, and the framework's own RNN layer.

    python -m benchmarks.bench_train                      # d2l ed. 1 shapes, every variant, + scaling
    python -m benchmarks.bench_train --no-scaling --backends torch,jax
    python -m benchmarks.bench_train --quick              # a smoke run: 2 timed epochs, no scaling

Each measurement runs in its own process (so thread pools, JIT caches and allocators start cold
and never overlap), trains one warm-up epoch (compilation included, reported as first-epoch time),
then times several epochs and reports the median and spread of tokens/s. This machine's float32
GEMM throughput is measured at run time and every result is also given as a % of the roofline it
implies: tokens/s <= GEMM FLOP/s / FLOP per token, FLOP per token = 3 x (2H^2 + 4HV) (forward
H x H recurrence, input and output products; backward twice the forward).

Run one benchmark at a time: on 2 cores two concurrent runs ruin each other's numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
VARIANTS = ("eager", "fast", "builtin")
BUILTIN_LAYER = {
    "torch": "torch.nn.RNN (tanh) + nn.Linear; carries a second bias b_hh, set to 0",
    "mxnet": "gluon.rnn.RNN(activation='tanh') + Dense; carries a second bias h2h_bias, set to 0",
    "tensorflow": "keras.layers.SimpleRNN(tanh) + Dense",
    "jax": "flax.linen.RNN(SimpleCell) + Dense",
}
SCALING = {"num_hiddens": [128, 256, 512, 1024], "num_steps": [35, 70, 140, 280], "batch_size": [32, 64, 128, 256, 512]}


def flops_per_token(num_hiddens: int, vocab_size: int) -> float:
    """Forward 2H^2 (recurrence) + 2VH (input) + 2HV (output); backward twice that."""
    H, V = num_hiddens, vocab_size
    return 3.0 * (2 * H * H + 4 * H * V)


# ----------------------------------------------------------------------------- child process


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_gemm(n: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """Sustained float32 GEMM FLOP/s: best of NumPy and (if installed) torch, median of repeats."""
    def median_seconds(matmul: Any) -> float:
        matmul()  # warm-up: thread pool start, page faults
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            matmul()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    results = {"numpy": 2 * n**3 / median_seconds(lambda: a @ b)}
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        results["torch"] = 2 * n**3 / median_seconds(lambda: ta @ tb)
    except ImportError:
        pass
    best = max(results, key=results.get)
    return {"flops": results[best], "library": best, "all": results, "n": n}


def _builtin_trainer(backend: str, params: dict[str, np.ndarray], lr: float, max_grad_norm: float,
                     device: str) -> Any:
    import importlib

    module = importlib.import_module(f"benchmarks.builtin_{backend}")
    return module.make_trainer(params, lr, max_grad_norm, device=device)


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (backend, variant, config) in this process."""
    import multirnn

    config = multirnn.preset("d2l-ed1", num_epochs=1, **spec.get("overrides", {}))
    data = multirnn.prepare_data(config)
    params = multirnn.init_params(len(data.vocab), config.num_hiddens, config.seed, config.dtype)
    rng = np.random.default_rng(config.seed)
    batches = list(data.train_batches(rng))  # the same batches every epoch: timing, not learning
    tokens = sum(X.size for X, _ in batches)
    H = config.num_hiddens

    if spec["variant"] == "builtin":
        trainer = _builtin_trainer(spec["backend"], params, config.lr, config.max_grad_norm, spec["device"])
        version = trainer.framework_version

        def epoch() -> float:
            state, losses = None, []
            for X, _Y in batches:
                state = trainer.init_state(X.shape[0]) if state is None else state
                loss, state = trainer.train_step(X, _Y, state)
                losses.append(loss)
            return float(losses[-1])
    else:
        be = multirnn.get_backend(spec["backend"], mode=spec["variant"], device=spec["device"])
        version = be.version()
        p = be.params_from_numpy(params)

        def epoch() -> float:
            nonlocal p
            state, losses = None, []
            for X, Y in batches:
                state = be.init_state(X.shape[0], H, config.dtype) if state is None else state
                p, loss, _norm, state = be.train_step(p, X, Y, state, config.lr, config.max_grad_norm)
                losses.append(loss)
            return float(losses[-1])  # float() waits for asynchronous frameworks to finish

    t = time.perf_counter()
    epoch()
    first = time.perf_counter() - t
    rates, spent = [], 0.0
    while len(rates) < spec["min_reps"] or (spent < spec["min_seconds"] and len(rates) < spec["max_reps"]):
        t = time.perf_counter()
        loss = epoch()
        dt = time.perf_counter() - t
        spent += dt
        rates.append(tokens / dt)
    if not np.isfinite(loss):
        raise FloatingPointError(f"loss became {loss}")
    return {
        **spec,
        "framework_version": version,
        "tokens_per_epoch": tokens,
        "first_epoch_seconds": first,
        "tokens_per_sec": rates,
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "peak_rss_mb": _peak_rss_mb(),
        "config": {k: getattr(config, k) for k in ("batch_size", "num_steps", "num_hiddens", "dtype", "lr", "max_grad_norm")},
        "vocab_size": len(data.vocab),
        "threads": _thread_settings(spec["backend"]),
    }


def _thread_settings(backend: str) -> dict[str, Any]:
    info: dict[str, Any] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if backend == "torch":
        import torch

        info["torch.get_num_threads"] = torch.get_num_threads()
    elif backend == "tensorflow":
        import tensorflow as tf

        info["tf.intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        info["tf.inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    return {k: v for k, v in info.items() if v is not None}


# ---------------------------------------------------------------------------- parent process


def spawn(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter; a failure becomes an error record, not an abort."""
    cmd = [sys.executable, "-m", "benchmarks.bench_train", "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT.parent)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**spec, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def machine_info() -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        info["cpu_model"] = model
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--backends", default="numpy,torch,mxnet,tensorflow,jax")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--min-reps", type=int, default=5, help="timed epochs at least (default 5)")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each measurement at least this long")
    ap.add_argument("--no-scaling", action="store_true", help="skip the hidden/steps/batch scaling sweep")
    ap.add_argument("--scaling-backends", default=None, help="backends for the sweep (default: all, fast path)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 timed epochs, no scaling")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results/<timestamp>)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                    help="where to train (recorded with every result; CPU results stay the reference)")
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(run_one(json.loads(args.child))), flush=True)
        return 0

    from benchmarks import report

    if args.quick:
        args.min_reps, args.min_seconds, args.no_scaling = 2, 0.0, True
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    out = Path(args.out) if args.out else ROOT / "results" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    base = {"min_reps": args.min_reps, "min_seconds": args.min_seconds, "max_reps": 50, "device": args.device}

    print("measuring float32 GEMM throughput ...", file=sys.stderr, flush=True)
    gemm = json.loads(subprocess.run([sys.executable, "-c", "import json, benchmarks.bench_train as b; "
                                      "print(json.dumps(b.measure_gemm()))"], capture_output=True, text=True,
                                     cwd=ROOT.parent, check=True).stdout)
    print(f"  {gemm['flops'] / 1e9:.1f} GFLOP/s ({gemm['library']})", file=sys.stderr)

    specs = []
    for b in backends:
        for v in variants:
            if b == "numpy" and (v != "eager" or args.device != "cpu"):
                continue  # the oracle has one implementation and no built-in layer
            specs.append({**base, "backend": b, "variant": v, "overrides": {}, "sweep": None})
    if not args.no_scaling:
        sweep_backends = [b.strip() for b in (args.scaling_backends or ",".join(x for x in backends if x != "numpy")).split(",")]
        for b in sweep_backends:
            for key, values in SCALING.items():
                for value in values:
                    shape = {"batch_size": 32, "num_steps": 35, key: value}
                    # enough text for at least 4 minibatches per epoch at the largest shapes
                    tokens = max(10000, 4 * shape["batch_size"] * shape["num_steps"] + shape["num_steps"] + 1)
                    specs.append({**base, "min_reps": 3, "min_seconds": 1.0, "backend": b, "variant": "fast",
                                  "overrides": {key: value, "max_tokens": tokens}, "sweep": key})

    results = []
    for i, spec in enumerate(specs, 1):
        label = f"{spec['backend']}/{spec['variant']}" + (f" {spec['sweep']}={spec['overrides'][spec['sweep']]}" if spec["sweep"] else "")
        print(f"[{i}/{len(specs)}] {label} ...", file=sys.stderr, end=" ", flush=True)
        r = spawn(spec, args.timeout)
        if "error" in r:
            print(f"FAILED: {r['error']}", file=sys.stderr)
        else:
            r["flops_per_token"] = flops_per_token(r["config"]["num_hiddens"], r["vocab_size"])
            r["roofline_tokens_per_sec"] = gemm["flops"] / r["flops_per_token"]
            r["pct_roofline"] = 100 * r["median"] / r["roofline_tokens_per_sec"]
            print(f"{r['median']:,.0f} tokens/s ({r['pct_roofline']:.0f}% of roofline), first epoch {r['first_epoch_seconds']:.2f}s",
                  file=sys.stderr)
        results.append(r)
        payload = {"schema_version": 1, "created": _dt.datetime.now().isoformat(timespec="seconds"),
                   "command": "python -m benchmarks.bench_train " + " ".join(sys.argv[1:] if argv is None else argv),
                   "machine": machine_info(), "gemm": gemm, "builtin_layers": BUILTIN_LAYER, "results": results}
        (out / "results.json").write_text(json.dumps(payload, indent=1))  # after each point: nothing lost
    report.write(payload, out)
    print(f"\nwrote {out}/report.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
