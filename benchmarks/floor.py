"""This machine's floor for the recurrence: serial small GEMMs at the best kernel's rate, the rest at big-GEMM rate.

A training step of a recurrent model cannot be one big GEMM: per layer, the forward recurrence is
``T`` dependent products ``(B, H) @ (H, G·H)`` and the backward one ``T`` dependent products
``(B, G·H) @ (G·H, H)`` (``G`` gates), each waiting for the previous one. Everything else (input
projections of deeper layers, the output layer, every weight gradient) can be batched over the
``T`` steps. So the fastest any implementation can train, on this machine, is::

    floor time per minibatch = t(2·T·L serial small GEMMs, best kernel measured here)
                             + (FLOPs per minibatch - serial FLOPs) / big-GEMM rate

and ``floor tokens/s = B·T / floor time``. The serial chain is timed in every library that is
installed (NumPy's BLAS, torch, MXNet, TensorFlow, XLA through JAX), each in its own process and
both batch-major and feature-major (the products transposed, see :func:`chain_runners`), and the
best one defines the floor: a framework whose own kernels are slower for this shape cannot
reach it, and the benchmark report shows by how much. FLOPs per token: :meth:`multirnn.cells.Model.flops_per_token`.

    python -m benchmarks.floor --library torch --batch 32 --hidden 512 --gates 1 --steps 35

prints one JSON line for that library: ``seconds`` and ``gflops``, its serial chain (2·T products);
``gradient_gflops``, its rate for the recurrent weights' gradient GEMM; ``output_seconds`` and
``output_gflops``, its output layer's three GEMMs (the floor itself is :func:`floor`, which
bench_train computes from every library's line).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
LIBRARIES = ("numpy", "torch", "mxnet", "tensorflow", "jax")
# The chains bench_train times again beside the fast paths: the fastest at the start of a run is not
# always the fastest later (on the AMD VM a slow start once ranked torch's chain above XLA's, which was
# faster in every other run), so the floor is the faster of the two best, window by window.
CONTENDERS = 2


def _median(fn: Callable[[], Any], sync: Callable[[Any], Any], reps: int, number: int = 3) -> float:
    from benchmarks.profile_step import median_seconds

    return median_seconds(fn, sync, reps, number)


def _operands(B: int, H: int, G: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h0 and the two weights of an alternating chain h <- (h @ W_f) @ W_b, scaled so that values
    neither explode nor decay into denormals (which would slow the chain for no training reason)."""
    rng = np.random.default_rng(0)
    q1, _ = np.linalg.qr(rng.standard_normal((G * H, G * H)))
    W_f = (q1[:H, :] * np.sqrt(G)).astype(np.float32)  # (H, G·H)
    W_b = (q1[:, :H] / np.sqrt(G)).astype(np.float32)  # (G·H, H)
    h0 = (rng.standard_normal((B, H)) * 0.1).astype(np.float32)
    return h0, W_f, W_b


def chain_runners(library: str, B: int, H: int, G: int, T: int) -> list[tuple[Callable[[], Any], Callable[[Any], Any]]]:
    """``library``'s ways to run 2·T dependent GEMMs (T of (B, H) @ (H, G·H) alternating with T of
    (B, G·H) @ (G·H, H)), each as ``(run, sync)``; compiled ones are traced on their first call.

    Each library runs the chain batch-major, as written, and feature-major: the same products
    transposed, ``W_f^T @ h^T`` with the state held as ``(H, B)``. They are the same FLOPs and the
    same sums, but libraries run the two orientations at different speeds (on an AMD EPYC, XLA ran
    the tanh RNN's chain 1.5-1.7x faster feature-major, while OpenBLAS ran it slower), so the floor
    takes the faster."""
    h0, W_f, W_b = _operands(B, H, G)
    # Feature-major operands: the state transposed, the weights as contiguous transposed copies.
    h0_t, W_f_t, W_b_t = (np.ascontiguousarray(a.T) for a in (h0, W_f, W_b))
    if library == "numpy":
        def run() -> np.ndarray:
            h = h0
            for _ in range(T):
                h = (h @ W_f) @ W_b
            return h

        def run_fm() -> np.ndarray:
            h = h0_t
            for _ in range(T):
                h = W_b_t @ (W_f_t @ h)
            return h
        return [(run, lambda a: a), (run_fm, lambda a: a)]
    if library == "torch":
        import torch

        h, f, b, h_t, f_t, b_t = (torch.from_numpy(a) for a in (h0, W_f, W_b, h0_t, W_f_t, W_b_t))

        def run_t() -> Any:
            x = h
            for _ in range(T):
                x = torch.mm(torch.mm(x, f), b)
            return x

        def run_t_fm() -> Any:
            x = h_t
            for _ in range(T):
                x = torch.mm(b_t, torch.mm(f_t, x))
            return x
        return [(run_t, lambda a: a), (run_t_fm, lambda a: a)]
    if library == "mxnet":
        if "bool" not in vars(np):
            np.bool = bool  # type: ignore[attr-defined]  # mxnet 1.9 reads it; numpy >= 1.24 removed it
        import mxnet as mx

        h, f, b = (mx.nd.array(a, dtype="float32") for a in (h0, W_f, W_b))
        fT, bT = f.T.copy(), b.T.copy()

        def run_dot() -> Any:  # legacy dot: MXNet's bundled BLAS
            x = h
            for _ in range(T):
                x = mx.nd.dot(mx.nd.dot(x, f), b)
            return x

        h_t, f_t, b_t = (mx.nd.array(a, dtype="float32") for a in (h0_t, W_f_t, W_b_t))

        def run_dot_fm() -> Any:
            x = h_t
            for _ in range(T):
                x = mx.nd.dot(b_t, mx.nd.dot(f_t, x))
            return x

        def run_fc() -> Any:  # FullyConnected: oneDNN, what the backend's output layer uses
            x = h
            for _ in range(T):
                x = mx.nd.FullyConnected(mx.nd.FullyConnected(x, fT, no_bias=True, num_hidden=G * H), bT,
                                         no_bias=True, num_hidden=H)
            return x
        # The fused RNN operator (oneDNN's RNN primitive), which MXNet's fast path and Gluon's layers run:
        # two forward calls are 2·T dependent (B, H) @ (H, G·H) products, the chain's FLOPs, timed
        # with the cell's elementwise work included (so never faster than the GEMMs alone). The
        # inputs are one zero column: the input product is negligible.
        mode = {1: "rnn_tanh", 3: "gru", 4: "lstm"}[G]
        flat = mx.nd.array(np.concatenate([np.zeros(G * H, np.float32), W_f.T.ravel(), np.zeros(2 * G * H, np.float32)]))
        data = mx.nd.zeros((T, h0.shape[0], 1))
        states = [mx.nd.array(h0[None])] + ([mx.nd.zeros((1, *h0.shape))] if mode == "lstm" else [])

        def run_rnn() -> Any:
            s = states
            for _ in range(2):
                s = mx.nd.RNN(data, flat, *s, state_size=H, num_layers=1, mode=mode, state_outputs=True)[1:]
            return s[0]
        return [(fn, lambda a: a.wait_to_read()) for fn in (run_dot, run_dot_fm, run_fc, run_rnn)]
    if library == "tensorflow":
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        h, f, b, h_t, f_t, b_t = (tf.constant(a) for a in (h0, W_f, W_b, h0_t, W_f_t, W_b_t))

        @tf.function(autograph=False)
        def run_tf(x: Any) -> Any:
            for _ in range(T):  # unrolled, as the backend's recurrence is
                x = tf.matmul(tf.matmul(x, f), b)
            return x

        @tf.function(autograph=False)
        def run_tf_fm(x: Any) -> Any:
            for _ in range(T):
                x = tf.matmul(b_t, tf.matmul(f_t, x))
            return x
        return [(lambda: run_tf(h), lambda a: a.numpy()), (lambda: run_tf_fm(h_t), lambda a: a.numpy())]
    if library == "jax":
        import jax
        import jax.numpy as jnp
        from jax import lax

        h, f, b, h_t, f_t, b_t = (jnp.asarray(a) for a in (h0, W_f, W_b, h0_t, W_f_t, W_b_t))

        @jax.jit
        def run_scan(x: Any) -> Any:  # lax.scan, as the fast path runs its recurrence
            x, _ = lax.scan(lambda c, _: ((c @ f) @ b, None), x, None, length=T)
            return x

        @jax.jit
        def run_scan_fm(x: Any) -> Any:
            x, _ = lax.scan(lambda c, _: (b_t @ (f_t @ c), None), x, None, length=T)
            return x

        @jax.jit
        def run_unrolled(x: Any) -> Any:
            for _ in range(T):
                x = (x @ f) @ b
            return x
        return [(lambda fn=fn, x=x: fn(x), lambda a: a.block_until_ready())
                for fn, x in ((run_scan, h), (run_unrolled, h), (run_scan_fm, h_t))]
    raise ValueError(f"unknown library {library!r}")


def gradient_runners(library: str, B: int, H: int, G: int, T: int) -> list[tuple[Callable[[], Any], Callable[[Any], Any]]]:
    """``library``'s ways to run the largest batched GEMM of a step, the recurrent weights' gradient
    ``H_prev^T @ d_pre`` ((H, T·B) @ (T·B, G·H)), as ``(run, sync)``: with the left operand as a
    transposed view (as the fast paths have it) and as a contiguous copy (and, for MXNet, through
    oneDNN's FullyConnected too; for NumPy and torch also feature-major). The best of them bounds what
    the framework's own kernels give the batched part of a step; the copies themselves are not timed,
    so the bound is generous."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T * B, H)).astype(np.float32)
    y = rng.standard_normal((T * B, G * H)).astype(np.float32)
    xt, yt = np.ascontiguousarray(x.T), np.ascontiguousarray(y.T)
    # NumPy and torch also with both operands feature-major, (H, T·B) and (G·H, T·B), the layout a
    # feature-major fast path holds them in: xt @ yt^T.
    if library == "numpy":
        return [(lambda: x.T @ y, lambda a: a), (lambda: xt @ y, lambda a: a), (lambda: xt @ yt.T, lambda a: a)]
    if library == "torch":
        import torch

        tx, txt, ty, tyt = (torch.from_numpy(a) for a in (x, xt, y, yt))
        return [(lambda: torch.mm(tx.T, ty), lambda a: a), (lambda: torch.mm(txt, ty), lambda a: a),
                (lambda: torch.mm(txt, tyt.T), lambda a: a)]
    if library == "mxnet":
        import mxnet as mx  # numpy's bool alias already restored by chain_runners

        mx_x, mx_xt, mx_y, mx_yt = (mx.nd.array(a) for a in (x, xt, y, np.ascontiguousarray(y.T)))
        def wait(a: Any) -> Any:
            return a.wait_to_read()
        return [(lambda: mx.nd.dot(mx_x, mx_y, transpose_a=True), wait), (lambda: mx.nd.dot(mx_xt, mx_y), wait),
                (lambda: mx.nd.FullyConnected(mx_xt, mx_yt, no_bias=True, num_hidden=G * H), wait)]
    if library == "tensorflow":
        import tensorflow as tf

        tf_x, tf_xt, tf_y = (tf.constant(a) for a in (x, xt, y))
        fn_t = tf.function(lambda a, b: tf.matmul(a, b, transpose_a=True), autograph=False)
        fn = tf.function(tf.matmul, autograph=False)
        return [(lambda: fn_t(tf_x, tf_y), lambda a: a.numpy()), (lambda: fn(tf_xt, tf_y), lambda a: a.numpy())]
    if library == "jax":
        import jax
        import jax.numpy as jnp

        jx, jxt, jy = (jnp.asarray(a) for a in (x, xt, y))
        fn_t, fn = jax.jit(lambda a, b: a.T @ b), jax.jit(jnp.matmul)
        return [(lambda: fn_t(jx, jy), lambda a: a.block_until_ready()),
                (lambda: fn(jxt, jy), lambda a: a.block_until_ready())]
    raise ValueError(f"unknown library {library!r}")


def output_runners(library: str, B: int, H: int, V: int, T: int) -> list[tuple[Callable[[], Any], Callable[[Any], Any]]]:
    """``library``'s ways to run the output layer's three GEMMs of a step, as ``(run, sync)``: the
    logits ``h @ W_hq`` ((T·B, H) @ (H, V)), their input gradient ``g @ W_hqᵀ`` ((T·B, V) @ (V, H))
    and the weight gradient ``hᵀ g`` ((H, T·B) @ (T·B, V)). With V = 28 these are thin GEMMs that
    run far below a big GEMM's rate, so counting their FLOPs at the gradient GEMM's rate would
    overstate what the framework's own kernels allow. Each GEMM has several forms (transposes as
    views, as ready contiguous copies whose copying is not timed, or the product taken the other way
    round); every combination of forms is one runner, so the fastest runner is the sum of the best
    form of each GEMM whichever combination a fast path uses (a generous bound). Compiled libraries
    run a combination's three products in one call."""
    import itertools

    rng = np.random.default_rng(2)
    h = rng.standard_normal((T * B, H)).astype(np.float32)
    g = (rng.standard_normal((T * B, V)) * 0.1).astype(np.float32)
    W = (rng.standard_normal((H, V)) * 0.01).astype(np.float32)
    hT, gT, WT = (np.ascontiguousarray(a.T) for a in (h, g, W))
    if library in ("numpy", "torch", "mxnet"):  # eager: each form is a function of no arguments
        # NumPy and torch also feature-major (states and logits as (H, T·B) and (V, T·B)), as a
        # feature-major fast path would run them: the last form of each GEMM.
        if library == "numpy":
            logits = [lambda: h @ W, lambda: WT @ hT]
            d_h = [lambda: g @ W.T, lambda: g @ WT, lambda: W @ gT]
            d_W = [lambda: h.T @ g, lambda: hT @ g, lambda: (gT @ h).T, lambda: hT @ gT.T]
            sync: Callable[[Any], Any] = lambda outs: outs
        elif library == "torch":
            import torch

            th, tg, tW, thT, tgT, tWT = (torch.from_numpy(a) for a in (h, g, W, hT, gT, WT))
            logits = [lambda: torch.mm(th, tW), lambda: torch.mm(tWT, thT)]
            d_h = [lambda: torch.mm(tg, tW.T), lambda: torch.mm(tg, tWT), lambda: torch.mm(tW, tgT)]
            d_W = [lambda: torch.mm(th.T, tg), lambda: torch.mm(thT, tg), lambda: torch.mm(tg.T, th).T,
                   lambda: torch.mm(thT, tgT.T)]
            sync = lambda outs: outs
        else:
            if "bool" not in vars(np):
                np.bool = bool  # type: ignore[attr-defined]  # mxnet 1.9 reads it; numpy >= 1.24 removed it
            import mxnet as mx

            mh, mg, mW, mhT, mgT, mWT = (mx.nd.array(a) for a in (h, g, W, hT, gT, WT))

            def fc(x: Any, w: Any, n: int) -> Any:  # oneDNN: x @ w.T
                return mx.nd.FullyConnected(x, w, no_bias=True, num_hidden=n)
            logits = [lambda: mx.nd.dot(mh, mW), lambda: fc(mh, mWT, V)]
            d_h = [lambda: mx.nd.dot(mg, mW, transpose_b=True), lambda: fc(mg, mW, H)]
            d_W = [lambda: mx.nd.dot(mh, mg, transpose_a=True), lambda: fc(mhT, mgT, V), lambda: fc(mgT, mhT, H).T]
            sync = lambda outs: [o.wait_to_read() for o in outs]
        return [(lambda fs=fs: tuple(f() for f in fs), sync) for fs in itertools.product(logits, d_h, d_W)]
    if library == "tensorflow":
        import tensorflow as tf

        args = tuple(tf.constant(a) for a in (h, g, W, hT, gT, WT))
        d_h_forms = [lambda g, W, WT: tf.matmul(g, W, transpose_b=True), lambda g, W, WT: tf.matmul(g, WT)]
        d_W_forms = [lambda h, g, hT, gT: tf.matmul(h, g, transpose_a=True), lambda h, g, hT, gT: tf.matmul(hT, g),
                     lambda h, g, hT, gT: tf.transpose(tf.matmul(gT, h))]

        def bundle(dh: Callable, dw: Callable) -> Any:
            return tf.function(lambda h, g, W, hT, gT, WT: (tf.matmul(h, W), dh(g, W, WT), dw(h, g, hT, gT)),
                               autograph=False)
        fns = [bundle(dh, dw) for dh, dw in itertools.product(d_h_forms, d_W_forms)]
        return [(lambda fn=fn: fn(*args), lambda a: [x.numpy() for x in a]) for fn in fns]
    if library == "jax":
        import jax
        import jax.numpy as jnp
        from jax import lax

        args = tuple(jnp.asarray(a) for a in (h, g, W, hT, gT, WT))
        d_h_forms = [lambda g, W, WT: g @ W.T, lambda g, W, WT: g @ WT]
        # The last is the backend's own form for the weight gradient (see _project in jax_backend).
        d_W_forms = [lambda h, g, hT, gT: h.T @ g, lambda h, g, hT, gT: hT @ g,
                     lambda h, g, hT, gT: lax.optimization_barrier(g.T @ h).T]

        def jbundle(dh: Callable, dw: Callable) -> Any:
            return jax.jit(lambda h, g, W, hT, gT, WT: (h @ W, dh(g, W, WT), dw(h, g, hT, gT)))
        fns = [jbundle(dh, dw) for dh, dw in itertools.product(d_h_forms, d_W_forms)]
        return [(lambda fn=fn: fn(*args), lambda a: [x.block_until_ready() for x in a]) for fn in fns]
    raise ValueError(f"unknown library {library!r}")


def output_gemm_flops(B: int, H: int, V: int, T: int) -> float:
    """FLOPs of the output layer's three GEMMs in one step (the 6·H·V per token of the model's count)."""
    return 3 * 2.0 * T * B * H * V


def own_batched_seconds(batched_flops: float, big_flops: float, gradient_flops: float | None = None,
                        output_seconds: float | None = None, output_flops: float = 0.0) -> float:
    """Seconds a library's own kernels need for a step's batched FLOPs: the output layer's GEMMs at
    their measured time (when measured), the rest at the library's rate for the recurrent weights'
    gradient GEMM, capped at the big-GEMM rate (the floor's; at that rate when not measured)."""
    rate = min(big_flops, gradient_flops) if gradient_flops else big_flops
    if output_seconds is None:
        return batched_flops / rate
    return output_seconds + max(batched_flops - output_flops, 0.0) / rate


def gradient_gemm_flops(B: int, H: int, G: int, T: int) -> float:
    """FLOPs of the recurrent weights' gradient, one ``(H, T·B) @ (T·B, G·H)`` product (T of the chain's 2·T GEMMs)."""
    return 2.0 * T * B * H * G * H


def fastest_seconds(runners: list[tuple[Callable[[], Any], Callable[[Any], Any]]], reps: int = 15) -> float:
    """The median seconds of the fastest of ``runners`` (each ``(run, sync)``)."""
    return min(_median(run, sync, reps) for run, sync in runners)


def chain_seconds(library: str, B: int, H: int, G: int, T: int, reps: int = 15) -> float:
    """Seconds of 2·T dependent GEMMs: the fastest of ``library``'s ways (:func:`chain_runners`)."""
    return fastest_seconds(chain_runners(library, B, H, G, T), reps)


def big_gemm_flops(library: str = "best", n: int = 2048, reps: int = 8) -> dict[str, float]:
    """Sustained float32 FLOP/s of an n x n x n GEMM (NumPy and, when installed, torch)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = {"numpy": 2 * n**3 / _median(lambda: a @ a, lambda x: x, reps, 1)}
    try:
        import torch

        t = torch.from_numpy(a)
        out["torch"] = 2 * n**3 / _median(lambda: t @ t, lambda x: x, reps, 1)
    except ImportError:
        pass
    return out


def json_child(cmd: list[str], library: str, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` (a ``python -m benchmarks...`` measurement) from the repository root in its own
    process and return its last JSON line, or ``{"library", "error"}`` when it failed, timed out or
    printed no readable line."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT.parent, check=False)
    except subprocess.TimeoutExpired:
        return {"library": library, "error": f"timed out after {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"library": library, "error": f"exit {proc.returncode}: {tail}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        return {"library": library, "error": f"unreadable result line: {exc}"}


def measure(library: str, B: int, H: int, G: int, T: int, V: int = 28, timeout: float = 300) -> dict[str, Any]:
    """One library's chain time, gradient GEMM rate and output-layer GEMM time, in a fresh process
    (libraries never share one)."""
    return json_child([sys.executable, "-m", "benchmarks.floor", "--library", library, "--batch", str(B),
                       "--hidden", str(H), "--gates", str(G), "--steps", str(T), "--vocab", str(V)], library, timeout)


def serial_flops(B: int, H: int, T: int, model: Any) -> float:
    """FLOPs of a step's serial chains: per layer, 2·T dependent (B, H) x (H, G·H) products."""
    return model.num_layers * 2 * T * 2.0 * B * H * len(model.cell.gates) * H


def batched_flops(B: int, H: int, T: int, V: int, model: Any) -> float:
    """FLOPs of a step that can be batched over the T steps: all of them but the serial chains."""
    return max(model.flops_per_token(V, H) * B * T - serial_flops(B, H, T, model), 0.0)


def floor(B: int, H: int, T: int, V: int, model: Any, big_flops: float, libraries: tuple[str, ...] = LIBRARIES) -> dict[str, Any]:
    """The algorithm floor for one shape and model: every library's serial chain, the best, and the
    floor in tokens/s (serial chain at the best rate + the batched FLOPs at big-GEMM rate)."""
    G, L = len(model.cell.gates), model.num_layers
    chains = [measure(lib, B, H, G, T, V) for lib in libraries]
    ok = [c for c in chains if "error" not in c]
    if not ok:
        return {"chains": chains, "error": "no library could time the chain"}
    ranked = sorted(ok, key=lambda c: c["seconds"])
    best = ranked[0]
    t_serial = L * best["seconds"]
    t_batched = batched_flops(B, H, T, V, model) / big_flops
    return {"chains": chains, "best_library": best["library"],
            "contenders": [c["library"] for c in ranked[:CONTENDERS]], "serial_seconds": t_serial,
            "serial_gflops": serial_flops(B, H, T, model) / t_serial / 1e9, "batched_seconds": t_batched,
            "floor_tokens_per_sec": B * T / (t_serial + t_batched), "flops_per_token": model.flops_per_token(V, H),
            "output_flops": output_gemm_flops(B, H, V, T),
            "roofline_tokens_per_sec": big_flops / model.flops_per_token(V, H)}


def main(argv: list[str] | None = None) -> int:
    from multirnn.compare import number_arg  # compare's checked numbers

    ap = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", choices=[*LIBRARIES, "big-gemm"], required=True,
                    help="whose kernels to time; big-gemm: the 2048^3 GEMM rate of NumPy and torch")
    size = number_arg(int, "a positive integer")
    ap.add_argument("--batch", type=size, default=32)
    ap.add_argument("--hidden", type=size, default=512)
    ap.add_argument("--gates", type=int, choices=(1, 3, 4), default=1, help="1 tanh RNN, 3 GRU, 4 LSTM")
    ap.add_argument("--steps", type=size, default=35)
    ap.add_argument("--vocab", type=size, default=28)
    args = ap.parse_args(argv)
    from multirnn.allocator import keep_freed_memory

    keep_freed_memory()  # the same process setting as the training steps the floor is compared with
    if args.library == "big-gemm":
        print(json.dumps(big_gemm_flops()))
        return 0
    B, H, G, T = args.batch, args.hidden, args.gates, args.steps
    s = chain_seconds(args.library, B, H, G, T)
    gemm_flops = gradient_gemm_flops(B, H, G, T)
    g = fastest_seconds(gradient_runners(args.library, B, H, G, T))
    o = fastest_seconds(output_runners(args.library, B, H, args.vocab, T))
    print(json.dumps({"library": args.library, "seconds": s, "gflops": 2 * gemm_flops / s / 1e9,
                      "gradient_gflops": gemm_flops / g / 1e9, "output_seconds": o,
                      "output_gflops": output_gemm_flops(B, H, args.vocab, T) / o / 1e9}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
