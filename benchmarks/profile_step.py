"""Where a training step's time goes, per backend, at the d2l ed. 1 shapes.

    python -m benchmarks.profile_step                       # torch, mxnet, tensorflow, jax
    python -m benchmarks.profile_step --backends torch,mxnet --reps 9

For each backend this prints one table (milliseconds per training step of ``batch x steps``
tokens) with three kinds of rows:

* ``step``: the whole ``train_step`` as ``benchmarks.bench_train`` runs it (an epoch's
  minibatches back to back, one synchronisation at the end), for the fast path and, where the
  brief asks for them, the eager step (torch) and the built-in layer (mxnet).
* ``profile``: the framework's own breakdown of that step: ``torch.profiler`` self-CPU time per
  operator, ``mxnet.profiler`` aggregate operator time, and for TensorFlow and JAX (whose
  compiled steps are one call) the time of compiled sub-computations (forward, forward +
  backward, whole step) plus the op count / HLO cost analysis of the compiled graph.
* ``floor``: the irreducible GEMMs alone, run the way the framework runs them: the sequential
  chain (``T`` forward ``h @ W_hh`` plus ``T`` backward ``d @ W_hh^T``, ``B x H x H`` each) and
  the big batched products (``dW_hh`` ``H x TB x H`` and the three output-layer products). The
  chain cannot be parallelised across time steps, so a step can never be faster than the chain.
  ``overhead`` rows are the step time minus the sum of measured kernel (operator) times.

Every measurement runs in its own process (one framework per process: no competing thread
pools), excludes a warm-up, and reports the median of ``--reps`` repetitions. Run nothing else
on the machine meanwhile: on 2 cores a second process ruins the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
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

ROOT = Path(__file__).resolve().parent
BACKENDS = ("torch", "mxnet", "tensorflow", "jax")
GEMM_OPS = ("mm", "addmm", "matmul", "dot", "linear", "bmm", "fullyconnected", "batch_dot", "rnn")


# ----------------------------------------------------------------------------- shared pieces


@dataclasses.dataclass
class Workload:
    """The d2l ed. 1 training data and initial params, the same as ``bench_train.run_one`` uses."""

    config: Any
    params: dict[str, np.ndarray]
    batches: list[tuple[np.ndarray, np.ndarray]]
    B: int
    T: int
    H: int
    V: int

    @property
    def tokens_per_step(self) -> int:
        return self.B * self.T


@dataclasses.dataclass
class Row:
    """One line of a backend's table: a time per training step and what it measures."""

    kind: str  # "step", "profile", "floor" or "overhead"
    label: str
    ms: float
    note: str = ""


def load_workload() -> Workload:
    """d2l ed. 1 shapes (batch 32, 35 steps, 512 hiddens, float32) on the project's corpus."""
    import multirnn

    config = multirnn.preset("d2l-ed1", num_epochs=1)
    data = multirnn.prepare_data(config)
    params = multirnn.init_params(len(data.vocab), config.num_hiddens, config.seed, config.dtype)
    batches = list(data.train_batches(np.random.default_rng(config.seed)))
    # Only full minibatches: a ragged last one would be a different shape (and compilation).
    batches = [(X, Y) for X, Y in batches if X.shape == (config.batch_size, config.num_steps)]
    return Workload(config, params, batches, config.batch_size, config.num_steps, config.num_hiddens,
                    len(data.vocab))


def median_seconds(fn: Callable[[], Any], sync: Callable[[Any], Any], reps: int, number: int = 1,
                   warmup: int = 2) -> float:
    """Median over ``reps`` of the time of ``number`` back-to-back calls of ``fn``, divided by ``number``.

    Only the last call's result is synchronised (``sync``), as a training loop would: asynchronous
    frameworks may overlap their Python dispatch with the previous call's kernels.
    """
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(number):
            out = fn()
        sync(out)
        times.append((time.perf_counter() - t) / number)
    return statistics.median(times)


def orthogonal(n: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal float32 matrix: a chain of products with it neither explodes nor
    decays into denormals (which would slow the floor down for reasons no training step has)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q.astype(np.float32)


def floor_operands(w: Workload) -> dict[str, np.ndarray]:
    """Inputs of the floor GEMMs, NumPy float32, shaped as in a training step."""
    rng = np.random.default_rng(1)
    N = w.T * w.B

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    return {"W": orthogonal(w.H), "h0": r(w.B, w.H), "A": r(N, w.H), "D": r(N, w.H),
            "W_hq": r(w.H, w.V), "b_q": r(w.V), "G": r(N, w.V)}


def gemm_flops(w: Workload) -> dict[str, float]:
    """FLOPs of each floor row, to express its time as GFLOP/s (GEMM efficiency)."""
    N = w.T * w.B
    return {"chain": 2 * w.T * 2.0 * w.B * w.H * w.H, "dW_hh": 2.0 * w.H * N * w.H, "output": 3 * 2.0 * N * w.H * w.V}


def floor_rows(w: Workload, times: dict[str, float]) -> list[Row]:
    """Rows for the chain / dW_hh / output-layer floors given their seconds per step."""
    flops = gemm_flops(w)
    labels = {"chain": f"GEMM chain {w.T} fwd h@W_hh + {w.T} bwd d@W_hh^T ({w.B}x{w.H}x{w.H})",
              "dW_hh": f"dW_hh = H_prev^T d_pre ({w.H}x{w.T * w.B}x{w.H})",
              "output": f"output layer: fwd + 2 bwd GEMMs ({w.T * w.B}x{w.H}x{w.V})"}
    rows = [Row("floor", labels[k], 1e3 * s, f"{flops[k] / s / 1e9:.0f} GFLOP/s") for k, s in times.items()]
    total = sum(times.values())
    rows.append(Row("floor", "sum of floor GEMMs", 1e3 * total,
                    f"{w.tokens_per_step / total / 1e3:.1f}k tokens/s at best"))
    return rows


def step_row(w: Workload, label: str, seconds: float, note: str = "") -> Row:
    return Row("step", label, 1e3 * seconds, f"{w.tokens_per_step / seconds / 1e3:.1f}k tokens/s" + (f"; {note}" if note else ""))


def _epoch_fn(w: Workload, step: Callable[[Any, np.ndarray, np.ndarray], tuple[Any, Any]], init: Any) -> Callable[[], Any]:
    """One pass over the minibatches with the state carried on, as bench_train times an epoch."""

    def epoch() -> Any:
        state, loss = init(), None
        for X, Y in w.batches:
            loss, state = step(state, X, Y)
        return loss

    return epoch


def backend_epoch(w: Workload, backend: str, mode: str, impl: str = "scratch") -> tuple[Any, Callable[[], Any]]:
    """(backend object, epoch function) for ``multirnn.get_backend(backend, impl=impl, mode=mode)``."""
    import multirnn

    be = multirnn.get_backend(backend, impl=impl, mode=mode)
    holder = {"p": be.params_from_numpy(w.params)}
    lr, theta = w.config.lr, w.config.max_grad_norm

    def step(state: Any, X: np.ndarray, Y: np.ndarray) -> tuple[Any, Any]:
        holder["p"], loss, _norm, state = be.train_step(holder["p"], X, Y, state, lr, theta)
        return loss, state

    return be, _epoch_fn(w, step, lambda: be.init_state(w.B, w.H, w.config.dtype))


def builtin_epoch(w: Workload, backend: str) -> Callable[[], Any]:
    """Epoch function of the framework's own RNN layer (``--impl layers``, fast mode)."""
    return backend_epoch(w, backend, "fast", impl="layers")[1]


def time_epoch(w: Workload, epoch: Callable[[], Any], reps: int) -> float:
    """Seconds per training step (median epoch time / minibatches); ``float(loss)`` synchronises."""
    return median_seconds(epoch, float, reps) / len(w.batches)


# ----------------------------------------------------------------------------- torch


def profile_torch(w: Workload, reps: int) -> tuple[list[Row], str]:
    """Fast and eager steps, torch.profiler self-CPU time per operator, floors, thread count."""
    from multirnn.backends.torch_backend import torch

    rows: list[Row] = []
    text = []
    steps = len(w.batches)
    for mode in ("fast", "eager"):
        _be, epoch = backend_epoch(w, "torch", mode)
        t_step = time_epoch(w, epoch, reps)
        rows.append(step_row(w, f"{mode} train_step", t_step, f"{torch.get_num_threads()} threads"))
        # The profiler adds a few µs per operator, so its totals are compared with the profiled
        # wall time; the unattributed rest is Python and the autograd engine's own bookkeeping.
        epoch()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for _ in range(2):
                float(epoch())
            wall = (time.perf_counter() - t) / (2 * steps)
        events = prof.key_averages()
        # Top-level aten ops only: self time of every event sums to the time spent in operators.
        self_us = {e.key: e.self_cpu_time_total / (2 * steps) for e in events}
        gemm = sum(v for k, v in self_us.items() if k.removeprefix("aten::").rstrip("_") in GEMM_OPS)
        ops = sum(self_us.values())
        rows.append(Row("profile", f"{mode}: profiled step wall time", wall * 1e3, "profiler on"))
        rows.append(Row("profile", f"{mode}: GEMM operators (mm/addmm/...) self time", gemm / 1e3,
                        f"{100 * gemm / 1e6 / wall:.0f}% of profiled step"))
        rows.append(Row("profile", f"{mode}: all other operators self time", (ops - gemm) / 1e3,
                        f"{100 * (ops - gemm) / 1e6 / wall:.0f}%"))
        rows.append(Row("overhead", f"{mode}: not in any operator (Python, autograd engine)", wall * 1e3 - ops / 1e3,
                        f"{100 * (wall - ops / 1e6) / wall:.0f}%"))
        text.append(f"torch.profiler, {mode} step, top operators by self CPU time ({2 * steps} steps):\n"
                    + events.table(sort_by="self_cpu_time_total", row_limit=12))

    # Floors: the same calls the fast path makes (addmm_ into preallocated rows, W^T copied once).
    x = {k: torch.from_numpy(v) for k, v in floor_operands(w).items()}
    W, W_T = x["W"], x["W"].T.contiguous()  # as the fast path: MKL is slower with a .T view here
    hs = torch.empty((w.T + 1, w.B, w.H))
    hs[0] = x["h0"]

    def chain() -> torch.Tensor:
        for t in range(w.T):
            torch.mm(hs[t], W, out=hs[t + 1])
        for t in range(w.T, 0, -1):
            torch.mm(hs[t], W_T, out=hs[t - 1])
        return hs

    def dW() -> torch.Tensor:
        return torch.mm(x["A"].T, x["D"])

    def output() -> torch.Tensor:
        logits = torch.addmm(x["b_q"], x["A"], x["W_hq"])
        torch.mm(x["G"], x["W_hq"].T)
        torch.mm(x["A"].T, x["G"])
        return logits

    none = lambda _: None  # torch on CPU is synchronous
    times = {"chain": median_seconds(chain, none, reps, 5), "dW_hh": median_seconds(dW, none, reps, 20),
             "output": median_seconds(output, none, reps, 20)}
    rows += floor_rows(w, times)
    # Single-GEMM efficiency: the chain is 70 small GEMMs; 2 threads split a 32-row product.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t1 = median_seconds(chain, none, reps, 5)
    rows.append(Row("floor", "GEMM chain with torch.set_num_threads(1)", t1 * 1e3,
                    f"{gemm_flops(w)['chain'] / t1 / 1e9:.0f} GFLOP/s"))
    _be, epoch = backend_epoch(w, "torch", "fast")
    t_fast1 = time_epoch(w, epoch, reps)
    rows.append(step_row(w, "fast train_step with torch.set_num_threads(1)", t_fast1))
    torch.set_num_threads(threads)
    return rows, "\n".join(text)


# ----------------------------------------------------------------------------- mxnet


def _mx_profile(epoch: Callable[[], Any], steps: int, mx: Any) -> tuple[dict[str, float], float]:
    """MXNet profiler aggregate stats: operator name -> ms per step, and the profiled wall time."""
    epoch()
    mx.nd.waitall()
    with tempfile.TemporaryDirectory() as tmp:
        mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=os.path.join(tmp, "p.json"))
        mx.profiler.dumps(reset=True)  # drop anything recorded before
        mx.profiler.set_state("run")
        t = time.perf_counter()
        for _ in range(2):
            float(epoch())
        mx.nd.waitall()
        wall = (time.perf_counter() - t) / (2 * steps)
        mx.profiler.set_state("stop")
        stats = json.loads(mx.profiler.dumps(reset=True, format="json"))
    ops: dict[str, float] = {}
    for domain, table in stats.get("Time", {}).items():
        if "operator" not in domain.lower():
            continue
        for name, s in table.items():
            ops[name] = ops.get(name, 0.0) + s["Total"] / (2 * steps)  # ms
    return ops, wall


def profile_mxnet(w: Workload, reps: int) -> tuple[list[Row], str]:
    """Fast path and the Gluon RNN layer, MXNet profiler operator times, floors (engine and oneDNN)."""
    from multirnn.backends.mxnet_backend import mx

    rows: list[Row] = []
    text = []
    steps = len(w.batches)
    variants = {"fast": backend_epoch(w, "mxnet", "fast")[1], "builtin": builtin_epoch(w, "mxnet")}
    for name, epoch in variants.items():
        rows.append(step_row(w, f"{name} train_step", time_epoch(w, epoch, reps)))
    for name, epoch in variants.items():
        ops, wall = _mx_profile(epoch, steps, mx)
        total = sum(ops.values())
        rows.append(Row("profile", f"{name}: profiled step wall time", wall * 1e3, "profiler on"))
        top = sorted(ops.items(), key=lambda kv: -kv[1])
        for op, ms in top[:8]:
            rows.append(Row("profile", f"{name}: {op}", ms, f"{100 * ms / 1e3 / wall:.0f}%"))
        rest = sum(ms for _, ms in top[8:])
        rows.append(Row("profile", f"{name}: {len(top) - 8} other operators", rest, f"{100 * rest / 1e3 / wall:.0f}%"))
        rows.append(Row("overhead", f"{name}: not in any operator (Python, engine, CachedOp)", wall * 1e3 - total,
                        f"{100 * (wall * 1e3 - total) / (wall * 1e3):.0f}%"))
        text.append(f"mxnet.profiler, {name} step: {len(ops)} operator kinds, "
                    f"{total:.2f} ms of operator time per step")

    # Floors. (1) The chain as MXNet's engine runs imperative legacy dot (OpenBLAS, the library
    # behind F.dot in the fast path's output layer); (2) the fused RNN operator alone, forward and
    # backward (oneDNN's RNN primitive: what both the fast path and the Gluon layer call).
    x = {k: mx.nd.array(v) for k, v in floor_operands(w).items()}
    W = x["W"]

    def chain() -> Any:
        h = x["h0"]
        for _ in range(w.T):
            h = mx.nd.dot(h, W)
        for _ in range(w.T):
            h = mx.nd.dot(h, W, transpose_b=True)
        return h

    wait = lambda a: a.wait_to_read()
    times = {"chain": median_seconds(chain, wait, reps, 3),
             "dW_hh": median_seconds(lambda: mx.nd.dot(x["A"], x["D"], transpose_a=True), wait, reps, 20)}

    def output() -> Any:
        logits = mx.nd.broadcast_add(mx.nd.dot(x["A"], x["W_hq"]), x["b_q"].reshape((1, -1)))
        mx.nd.dot(x["G"], x["W_hq"], transpose_b=True)
        return mx.nd.dot(x["A"], x["G"], transpose_a=True), logits

    times["output"] = median_seconds(output, lambda o: o[0].wait_to_read(), reps, 20)
    rows += floor_rows(w, times)

    # The fused RNN operator alone, inputs already one-hot (T, B, V), weights already packed.
    H, V, B, T = w.H, w.V, w.B, w.T
    flat = mx.nd.array(np.concatenate([w.params["W_xh"].T.ravel(), w.params["W_hh"].T.ravel(),
                                       w.params["b_h"], np.zeros(H, np.float32)]))
    inputs = mx.nd.one_hot(mx.nd.array(w.batches[0][0].T), V)
    h0 = mx.nd.zeros((1, B, H))
    flat.attach_grad()
    head = mx.nd.ones((T, B, H)) * 1e-3

    def rnn_fwd() -> Any:
        return mx.nd.RNN(inputs, flat, h0, mode="rnn_tanh", state_size=H, num_layers=1)

    def rnn_fwd_bwd() -> Any:
        with mx.autograd.record():
            out = mx.nd.RNN(inputs, flat, h0, mode="rnn_tanh", state_size=H, num_layers=1)
        out.backward(head)
        return flat.grad

    t_f = median_seconds(rnn_fwd, wait, reps, 10)
    t_fb = median_seconds(rnn_fwd_bwd, wait, reps, 10)
    rows.append(Row("floor", "fused RNN op (oneDNN) forward alone", t_f * 1e3,
                    f"{gemm_flops(w)['chain'] / 2 / t_f / 1e9:.0f} GFLOP/s on the chain's half"))
    rows.append(Row("floor", "fused RNN op (oneDNN) forward + backward alone", t_fb * 1e3,
                    "includes its dW_hh, dW_xh"))
    text.append(f"MXNet features: {[f.name for f in mx.runtime.Features().values() if f.enabled]}")
    return rows, "\n".join(text)


# ----------------------------------------------------------------------------- tensorflow


def profile_tensorflow(w: Workload, reps: int) -> tuple[list[Row], str]:
    """Compiled sub-graphs (forward, loss+grads, whole step), graph op counts, floors."""
    from multirnn.backends import tensorflow_backend as tfb

    tf = tfb.tf
    rows: list[Row] = []
    be, epoch = backend_epoch(w, "tensorflow", "fast")
    rows.append(step_row(w, "fast train_step", time_epoch(w, epoch, reps),
                         f"intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, "
                         f"inter-op {tf.config.threading.get_inter_op_parallelism_threads()} (0 = auto)"))
    params = be.params_from_numpy(w.params)
    X, Y = w.batches[0]
    Xt, y = tfb._tokens(X), tfb._labels(Y)
    h0 = tf.zeros((w.B, w.H))
    values = be._values(params)
    fwd = be._function("forward", params, Xt)
    lag = be._function("loss_and_grads", params, Xt)
    stp = be._function("train_step", params, Xt)
    lr, theta = tf.constant(w.config.lr, tf.float32), tf.constant(w.config.max_grad_norm, tf.float32)
    calls = {"forward (logits, h_T)": lambda: fwd(*values, Xt, h0)[0],
             "forward + backward (loss_and_grads)": lambda: lag(*values, Xt, y, h0)[0],
             "whole step (+ clip + SGD)": lambda: stp(*values, Xt, y, h0, lr, theta)[0]}
    sync = lambda t: t.numpy()
    text = []
    for label, fn in calls.items():
        s = median_seconds(fn, sync, reps, 8)
        rows.append(Row("profile", f"tf.function {label}", s * 1e3))
    graphs = {"forward": fwd.get_concrete_function(*values, Xt, h0).graph,
              "train_step": stp.get_concrete_function(*values, Xt, y, h0, lr, theta).graph}
    for name, g in graphs.items():
        kinds: dict[str, int] = {}
        for op in g.get_operations():
            kinds[op.type] = kinds.get(op.type, 0) + 1
        top = sorted(kinds.items(), key=lambda kv: -kv[1])[:10]
        text.append(f"TF graph {name}: {sum(kinds.values())} ops; most frequent: {top}")

    # Floors: the chain as a tf.function of an unrolled loop (what the fast path's graph holds),
    # then the batched GEMMs as one tf.function each.
    x = {k: tf.constant(v) for k, v in floor_operands(w).items()}
    T = w.T

    @tf.function(autograph=False)
    def chain(h: Any, W: Any) -> Any:
        W_T = tfb._transposed(W)  # as the backend forms it (a bare tf.transpose runs 2.2-2.8x slower)
        for _ in range(T):
            h = tf.matmul(h, W)
        for _ in range(T):
            h = tf.matmul(h, W_T)
        return h

    @tf.function(autograph=False)
    def dW(A: Any, D: Any) -> Any:
        return tf.matmul(A, D, transpose_a=True)

    @tf.function(autograph=False)
    def output(A: Any, W_hq: Any, b_q: Any, G: Any) -> Any:
        return tf.matmul(A, W_hq) + b_q, tf.matmul(G, W_hq, transpose_b=True), tf.matmul(A, G, transpose_a=True)

    times = {"chain": median_seconds(lambda: chain(x["h0"], x["W"]), sync, reps, 5),
             "dW_hh": median_seconds(lambda: dW(x["A"], x["D"]), sync, reps, 20),
             "output": median_seconds(lambda: output(x["A"], x["W_hq"], x["b_q"], x["G"])[2], sync, reps, 20)}
    rows += floor_rows(w, times)

    @tf.function(autograph=False)
    def one(h: Any, W: Any) -> Any:
        return tf.matmul(h, W)

    t1 = median_seconds(lambda: one(x["h0"], x["W"]), sync, reps, 50)
    rows.append(Row("floor", "one 32x512x512 matmul per tf.function call", t1 * 1e3,
                    "dispatch + 1 GEMM; x70 = " + f"{70 * t1 * 1e3:.2f} ms"))
    return rows, "\n".join(text)


# ----------------------------------------------------------------------------- jax


def profile_jax(w: Workload, reps: int) -> tuple[list[Row], str]:
    """Jitted sub-computations (forward, value_and_grad, whole step), HLO cost analysis, floors."""
    from multirnn.backends import jax_backend as jb

    jax, jnp, lax = jb.jax, jb.jnp, jb.lax
    rows: list[Row] = []
    text = []
    _, epoch = backend_epoch(w, "jax", "fast")
    rows.append(step_row(w, "fast train_step", time_epoch(w, epoch, reps)))
    f32 = jnp.float32
    params = {k: jnp.asarray(v, f32) for k, v in w.params.items()}
    X, Y = (jnp.asarray(a, jnp.int32) for a in w.batches[0])
    h0 = jnp.zeros((w.B, w.H), f32)
    lr, theta = np.float32(w.config.lr), np.float32(w.config.max_grad_norm)
    grad_fn = jax.jit(jax.value_and_grad(jb._fast_loss, has_aux=True))
    # Not donating here (the same inputs are reused every call): XLA copies instead of updating in
    # place, so "whole step" is a little pessimistic compared with the backend's donated step.
    step_fn = jax.jit(jb._fast_train_step.__wrapped__)
    calls = {"forward (logits, h_T)": (jb._fast_forward, (params, X, h0), lambda o: o[0]),
             "forward + backward (value_and_grad)": (grad_fn, (params, X, Y, h0), lambda o: o[0][0]),
             "whole step (+ clip + SGD), no donation": (step_fn, (params, X, Y, h0, lr, theta), lambda o: o[1])}
    for label, (fn, args, pick) in calls.items():
        s = median_seconds(lambda fn=fn, args=args, pick=pick: pick(fn(*args)), lambda a: a.block_until_ready(), reps, 8)
        rows.append(Row("profile", f"jit {label}", s * 1e3))
        cost = fn.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        text.append(f"XLA cost analysis, {label}: {cost.get('flops', float('nan')) / 1e9:.3f} GFLOP, "
                    f"{cost.get('bytes accessed', float('nan')) / 1e6:.1f} MB accessed")

    x = {k: jnp.asarray(v) for k, v in floor_operands(w).items()}
    T = w.T

    @jax.jit
    def chain(h: Any, W: Any) -> Any:
        # lax.scan, as the fast path runs its recurrence (a while loop around one dot). W.T is
        # hoisted out of the loop as the backend does: written inside the scan body it measured
        # 2.4x slower here (the transposed dot is redone every iteration).
        W_T = W.T
        h, _ = lax.scan(lambda c, _: (c @ W, None), h, None, length=T)
        h, _ = lax.scan(lambda c, _: (c @ W_T, None), h, None, length=T)
        return h

    @jax.jit
    def chain_unrolled(h: Any, W: Any) -> Any:
        W_T = W.T
        for _ in range(T):
            h = h @ W
        for _ in range(T):
            h = h @ W_T
        return h

    dW = jax.jit(lambda A, D: A.T @ D)
    output = jax.jit(lambda A, W_hq, b_q, G: (A @ W_hq + b_q, G @ W_hq.T, A.T @ G))
    ready = lambda a: a.block_until_ready()
    times = {"chain": median_seconds(lambda: chain(x["h0"], x["W"]), ready, reps, 5),
             "dW_hh": median_seconds(lambda: dW(x["A"], x["D"]), ready, reps, 20),
             "output": median_seconds(lambda: output(x["A"], x["W_hq"], x["b_q"], x["G"])[2], ready, reps, 20)}
    rows += floor_rows(w, times)
    t_u = median_seconds(lambda: chain_unrolled(x["h0"], x["W"]), ready, reps, 5)
    rows.append(Row("floor", "GEMM chain, Python-unrolled inside jit (no while loop)", t_u * 1e3,
                    f"{gemm_flops(w)['chain'] / t_u / 1e9:.0f} GFLOP/s"))
    return rows, "\n".join(text)


# ----------------------------------------------------------------------------- driver

PROFILERS: dict[str, Callable[[Workload, int], tuple[list[Row], str]]] = {
    "torch": profile_torch, "mxnet": profile_mxnet, "tensorflow": profile_tensorflow, "jax": profile_jax}


def format_table(backend: str, w: Workload, rows: list[Row]) -> str:
    """A Markdown table: kind, what, ms per step, % of the fast step, note."""
    fast = next((r.ms for r in rows if r.kind == "step"), float("nan"))
    lines = [(f"### {backend} (batch {w.B}, steps {w.T}, hidden {w.H}, vocab {w.V}, "
              f"{w.tokens_per_step} tokens/step)"), "",
             "| kind | what | ms/step | % of fast step | note |", "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.kind} | {r.label} | {r.ms:.2f} | {100 * r.ms / fast:.0f}% | {r.note} |")
    return "\n".join(lines)


def run_child(backend: str, reps: int) -> None:
    """Profile one backend in this process and print its table and profiler excerpts."""
    from multirnn.allocator import keep_freed_memory

    keep_freed_memory()  # as compare's workers and bench_train do
    w = load_workload()
    rows, text = PROFILERS[backend](w, reps)
    print(format_table(backend, w, rows))
    if text:
        print("\n```text\n" + text.rstrip() + "\n```")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--reps", type=int, default=7, help="repetitions per measurement; the median is shown")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_child(args.child, args.reps)
        return 0
    from multirnn import blas

    blas.name_openblas_core()  # as bench_train does: the children's OpenBLAS copies on kernels this CPU runs
    status = 0
    for backend in (b.strip() for b in args.backends.split(",") if b.strip()):
        if backend not in PROFILERS:
            ap.error(f"unknown backend {backend!r}; choose from {list(PROFILERS)}")
        print(f"profiling {backend} ...", file=sys.stderr, flush=True)
        # One process per framework: thread pools and allocators of another framework must not
        # compete with the one being measured.
        proc = subprocess.run([sys.executable, "-m", "benchmarks.profile_step", "--child", backend,
                               "--reps", str(args.reps)], cwd=ROOT.parent, text=True, capture_output=True, check=False)
        print(proc.stdout, flush=True)
        if proc.returncode != 0:
            status = 1
            print(f"{backend} FAILED:\n{proc.stderr[-3000:]}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
