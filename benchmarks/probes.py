"""Small probes behind the claims in benchmarks/PROFILES.md (each alternates its variants in one process).

    python -m benchmarks.probes transpose       # torch: the backward chain against W_hh.T (a view) vs a copy; dW_hq's orientation
    python -m benchmarks.probes torch-compile   # torch: a functional d2l ed. 1 step, eager vs torch.compile
    python -m benchmarks.probes jax-transpose   # XLA: the backward chain with W.T hoisted, in the body, passed in, or contracted
    python -m benchmarks.probes jax-output      # XLA: the output layer's weight gradient, autodiff's h^T g vs (g^T h)^T
    python -m benchmarks.probes jax-loop        # XLA: the recurrence against its GEMMs alone, and the cost of a loop iteration
    python -m benchmarks.probes jax-ops         # XLA: the fast step's time per HLO op, from JAX's profiler trace
    python -m benchmarks.probes tf-transpose    # TensorFlow: h @ W^T with W^T passed in, a bare tf.transpose, or a Snapshot of it
    python -m benchmarks.probes page-faults     # every backend's fast step with and without keep_freed_memory
    python -m benchmarks.probes torch-fm        # torch: the fast step feature-major (and its loops, contiguous or strided) against batch-major
    python -m benchmarks.probes torch-tanh      # torch: tanh_ against sigmoid_, mul_ and NumPy's tanh on one step's (32, 512)
    python -m benchmarks.probes torch-loops     # torch: the fast step against its serial loops, with and without their elementwise ops
    python -m benchmarks.probes torch-forward   # torch: the forward chain through addmm_, MKL packed GEMM, oneDNN, TorchScript
    python -m benchmarks.probes torch-lstm      # torch: the LSTM fast path's loops and their GEMMs (MKL, oneDNN) against nn.LSTM
    python -m benchmarks.probes jax-split       # XLA: the forward loop on the whole batch against two independent halves per step
    python -m benchmarks.probes step BACKEND    # one fast path: ms per step and page faults (for trying env settings)
    python -m benchmarks.probes ab BACKEND DIR [ROUNDS [CELL]]  # BACKEND's fast step from another checkout DIR (A) against this one (B)

Shapes: batch 32, 35 steps, hidden 512, vocab 28, float32. Run nothing else meanwhile.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from benchmarks.timing import turns

T, B, H, V = 35, 32, 512, 28


def alternate(variants: dict[str, Callable[[], Any]], rounds: int = 30, sync: Callable[[Any], Any] = lambda x: x) -> dict[str, float]:
    """Median ms per call of each variant, the variants taking turns (so drift hits them alike);
    printed, and returned by name."""
    for f in variants.values():
        sync(f())
    timed = turns([lambda f=f: sync(f()) for f in variants.values()], rounds=rounds)
    times = dict(zip(variants, timed))
    print(f"median (and min) of {rounds} calls each, the variants taking turns:")
    for name, ts in times.items():
        print(f"{name:<44} {statistics.median(ts) * 1e3:8.3f} ms (min {min(ts) * 1e3:.3f})")
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def transpose() -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    W = torch.randn(H, H, generator=g) / H**0.5
    template, k = torch.randn(T, B, H, generator=g) * 0.5, torch.rand(T, B, H, generator=g)
    d = template.clone()
    rows, ks = d.unbind(0), k.unbind(0)

    def chain(W_T: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            d.copy_(template)  # the same well-scaled inputs every call
            for t in range(T - 2, -1, -1):
                rows[t].addmm_(rows[t + 1], W_T).mul_(ks[t])
        return run

    alternate({"backward chain, W_hh.T view": chain(W.T), "backward chain, W_hh.T.contiguous()": chain(W.T.contiguous())})
    hidden, d_logits = torch.randn(T * B, H, generator=g), torch.randn(T * B, V, generator=g)
    alternate({"dW_hq = hidden^T d_logits": lambda: torch.mm(hidden.T, d_logits),
               "dW_hq = (d_logits^T hidden)^T": lambda: torch.mm(d_logits.T, hidden).T}, rounds=200)


def torch_compile() -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    params = [torch.randn(V, H, generator=g) * 0.01, torch.randn(H, H, generator=g) * 0.01, torch.zeros(H),
              torch.randn(H, V, generator=g) * 0.01, torch.zeros(V)]
    tokens, y = torch.randint(0, V, (T, B), generator=g), torch.randint(0, V, (T * B, 1), generator=g)
    h0 = torch.zeros(B, H)

    def step(W_xh, W_hh, b_h, W_hq, b_q, tokens, y, h0):
        """The fast path's algebra, written functionally (no in-place writes) so that inductor can trace it."""
        xs = (W_xh[tokens.reshape(-1)] + b_h).view(T, B, H)
        h, hs = h0, []
        for t in range(T):
            h = torch.tanh(torch.addmm(xs[t], h, W_hh))
            hs.append(h)
        hidden = torch.stack(hs).view(T * B, H)
        logp = torch.log_softmax(torch.addmm(b_q, hidden, W_hq), 1)
        loss = -logp.gather(1, y).mean()
        d_logits = logp.exp().scatter_add(1, y, torch.full_like(y, -1, dtype=logp.dtype)) / (T * B)
        d_h = (d_logits @ W_hq.T).view(T, B, H)
        W_T, d, ds = W_hh.T.contiguous(), None, [None] * T
        for t in range(T - 1, -1, -1):
            d = (d_h[t] if d is None else d_h[t] + d @ W_T) * (1 - hs[t] * hs[t])
            ds[t] = d
        d_pre = torch.stack(ds).view(T * B, H)
        prev = torch.cat([h0[None], torch.stack(hs[:-1])]).view(T * B, H)
        grads = [torch.zeros_like(W_xh).index_add(0, tokens.reshape(-1), d_pre), prev.T @ d_pre, d_pre.sum(0),
                 hidden.T @ d_logits, d_logits.sum(0)]
        norm = torch.sqrt(sum((x * x).sum() for x in grads))
        scale = torch.where(norm > 1.0, 1.0 / norm, 1.0)
        return loss, norm, [p - scale * gr for p, gr in zip((W_xh, W_hh, b_h, W_hq, b_q), grads)]

    args = (*params, tokens, y, h0)
    with torch.no_grad():
        compiled = torch.compile(step)
        t = time.perf_counter()
        compiled(*args)
        print(f"torch.compile: first call (compilation) {time.perf_counter() - t:.1f} s")
        alternate({"functional step, eager": lambda: step(*args), "functional step, torch.compile": lambda: compiled(*args)}, 20)


def jax_transpose() -> None:
    import jax
    from jax import lax

    rng = np.random.default_rng(0)
    W = jax.numpy.asarray(rng.standard_normal((H, H)).astype(np.float32) / H**0.5)
    W_T = jax.numpy.asarray(np.ascontiguousarray(np.asarray(W).T))
    h0 = jax.numpy.asarray(rng.standard_normal((B, H)).astype(np.float32))
    k = jax.numpy.asarray(rng.random((T, B, H)).astype(np.float32))
    def hoisted_fn(h: Any, W: Any, k: Any) -> Any:
        W_T = W.T  # outside the scan body, as the backend writes it
        return lax.scan(lambda c, kk: ((c @ W_T) * kk, None), h, k)[0]

    hoisted = jax.jit(hoisted_fn)
    in_body = jax.jit(lambda h, W, k: lax.scan(lambda c, kk: ((c @ W.T) * kk, None), h, k)[0])
    given = jax.jit(lambda h, W_T, k: lax.scan(lambda c, kk: ((c @ W_T) * kk, None), h, k)[0])
    contracted = jax.jit(lambda h, W, k: lax.scan(
        lambda c, kk: (lax.dot_general(c, W, (((1,), (1,)), ((), ()))) * kk, None), h, k)[0])
    alternate({"scan, W.T hoisted in the jitted function": lambda: hoisted(h0, W, k),
               "scan, W.T written in the scan body": lambda: in_body(h0, W, k),
               "scan, W^T passed in as an array": lambda: given(h0, W_T, k),
               "scan, dot_general contracting W's axis 1": lambda: contracted(h0, W, k)},
              sync=lambda a: a.block_until_ready())


def jax_output() -> None:
    import jax
    from jax import lax

    from multirnn.backends.jax_backend import _project

    rng = np.random.default_rng(0)
    hs = jax.numpy.asarray(rng.standard_normal((T * B, H)).astype(np.float32))
    W = jax.numpy.asarray(rng.standard_normal((H, V)).astype(np.float32) * 0.01)
    g = jax.numpy.asarray(rng.standard_normal((T * B, V)).astype(np.float32))
    autodiff = jax.jit(lambda h, W, g: jax.vjp(lambda W: h @ W, W)[1](g)[0])  # h^T g, as autodiff forms it
    backend = jax.jit(lambda h, W, g: jax.vjp(lambda W: _project(h, W), W)[1](g)[0])  # the backend's custom VJP
    bare = jax.jit(lambda h, g: (g.T @ h).T)  # XLA rewrites this into h^T g
    barrier = jax.jit(lambda h, g: lax.optimization_barrier(g.T @ h).T)
    alternate({"dW_hq by autodiff (h^T g)": lambda: autodiff(hs, W, g),
               "dW_hq by the backend's _project": lambda: backend(hs, W, g),
               "dW_hq as a bare (g^T h)^T": lambda: bare(hs, g),
               "dW_hq as barrier(g^T h)^T": lambda: barrier(hs, g)},
              rounds=200, sync=lambda a: a.block_until_ready())


def jax_loop() -> None:
    """How much of XLA's recurrence is not its GEMMs: the backend's recurrence (forward scan, backward
    scan and dW_hh, through its custom VJP) against the same scans with only their products, and a
    scan of 2·T iterations whose body is one tiny add (the runtime's cost per loop iteration)."""
    import jax
    from jax import lax

    from benchmarks.profile_step import orthogonal
    from multirnn.backends.jax_backend import _recurrence

    rng = np.random.default_rng(0)
    W = jax.numpy.asarray(orthogonal(H))  # a chain of products neither explodes nor decays
    xw = jax.numpy.asarray((rng.standard_normal((T, B, H)) * 0.5).astype(np.float32))
    h0 = jax.numpy.asarray((rng.standard_normal((B, H)) * 0.1).astype(np.float32))
    g = jax.numpy.asarray((rng.standard_normal((T, B, H)) * 0.1).astype(np.float32))

    backend = jax.jit(lambda xw, W, h0, g: jax.vjp(_recurrence, xw, W, h0)[1](g))

    def gemms_fn(xw: Any, W: Any, h0: Any, g: Any) -> Any:
        # Feature-major, as the backend's loops run (PROFILES finding 12); dW_hh's GEMM on (T·B, H)
        # operands that need no transpose here (the backend transposes its hidden states first).
        W_T = W.T
        _, hs = lax.scan(lambda c, _: (W_T @ c, c), h0.T, None, length=T)
        _, ds = lax.scan(lambda c, _: (W @ c, c), g[-1].T, None, length=T - 1)
        return hs, ds, xw.reshape(T * B, H).T @ g.reshape(T * B, H)

    gemms = jax.jit(gemms_fn)
    tiny = jax.jit(lambda h0: lax.scan(lambda c, _: (c + 1.0, None), h0, None, length=2 * T)[0])
    alternate({"the backend's recurrence, forward + VJP": lambda: backend(xw, W, h0, g),
               "the same scans and dW_hh, GEMMs only (no dL/dh0)": lambda: gemms(xw, W, h0, g),
               f"a scan of {2 * T} tiny adds": lambda: tiny(h0)},
              rounds=100, sync=lambda a: jax.block_until_ready(a))


def tf_transpose() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    W = tf.constant(np.linalg.qr(rng.standard_normal((H, H)))[0].astype(np.float32))  # orthogonal: no blow-up
    W_T = tf.constant(np.ascontiguousarray(W.numpy().T))
    h0 = tf.constant((rng.standard_normal((B, H)) * 0.1).astype(np.float32))

    def chain(transposed: Callable[[Any], Any]) -> Any:
        @tf.function(autograph=False)
        def run(h: Any, W: Any) -> Any:
            W_t = transposed(W)
            for _ in range(T):
                h = tf.matmul(h, W_t)
            return h
        return run

    plain = chain(lambda W: W)
    bare = chain(tf.transpose)  # what the backend had: grappler turns it into MatMul(transpose_b=True)
    from multirnn.backends.tensorflow_backend import _transposed

    snap = chain(_transposed)  # the backend's: a Snapshot of tf.transpose(W)
    alternate({"35 x h @ W^T, W^T passed in": lambda: plain(h0, W_T),
               "35 x h @ tf.transpose(W) (folded into MatMul)": lambda: bare(h0, W),
               "35 x h @ Snapshot(tf.transpose(W))": lambda: snap(h0, W)}, sync=lambda a: a.numpy())


def torch_loops() -> None:
    """How torch's fast step splits: the whole step against its two serial loops as the backend runs
    them (addmm_ + tanh_ forward, addmm_ + mul_ backward) and the same loops with only their products;
    what the loops do not explain is the step's batched part (gather, output layer, loss, weight
    gradients, clipping, SGD). Each loop first restores its inputs, a copy timed on its own."""
    import torch

    import multirnn
    from benchmarks.profile_step import orthogonal
    from multirnn.backends import get_backend

    be = get_backend("torch", mode="fast")
    params = be.params_from_numpy(multirnn.init_params(V, H, seed=0))
    rng = np.random.default_rng(0)
    X, Y, state = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T)), be.init_state(B, H)
    W = torch.from_numpy(orthogonal(H))
    W_T = W.T.contiguous()
    g = torch.Generator().manual_seed(0)
    xw, d0 = torch.randn(T, B, H, generator=g) * 0.5, torch.randn(T, B, H, generator=g) * 0.1
    k = torch.rand(T, B, H, generator=g)
    hs, d = torch.zeros(T + 1, B, H), torch.empty(T, B, H)
    h, r, kk = hs.unbind(0), d.unbind(0), k.unbind(0)

    def step() -> None:
        nonlocal params
        params, *_ = be.train_step(params, X, Y, state, 1.0, 1.0)

    def forward(tanh: bool) -> Callable[[], None]:
        def run() -> None:
            hs[1:].copy_(xw)
            for t in range(T):
                out = h[t + 1].addmm_(h[t], W)
                if tanh:
                    out.tanh_()
        return run

    def backward(mul: bool) -> Callable[[], None]:
        def run() -> None:
            d.copy_(d0)
            for t in range(T - 2, -1, -1):
                out = r[t].addmm_(r[t + 1], W_T)
                if mul:
                    out.mul_(kk[t])
        return run

    with torch.no_grad():
        alternate({"the fast step": step, "forward loop, addmm_ + tanh_": forward(True),
                   "forward loop, addmm_ only": forward(False), "backward loop, addmm_ + mul_": backward(True),
                   "backward loop, addmm_ only": backward(False),
                   "the two input copies alone": lambda: (hs[1:].copy_(xw), d.copy_(d0))}, rounds=40)


def torch_fm() -> None:
    """torch's fast step with the recurrence feature-major, ``(H, B)`` per step (``W_hh^T h``
    forward, ``W_hh d`` backward), against the backend's batch-major step; the loops of both
    orientations with every step's block contiguous and strided; and the transposing copies a
    feature-major step needs to join its loops to the batch-major gather, output layer and
    weight gradients. The ladder's bound counts the faster chain without those copies."""
    import torch

    import multirnn
    from multirnn.backends import get_backend
    from multirnn.backends.torch_backend import _cross_entropy_and_grad

    be = get_backend("torch", mode="fast")
    params = be.params_from_numpy(multirnn.init_params(V, H, seed=0))
    rng = np.random.default_rng(0)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    h0 = torch.from_numpy((rng.standard_normal((B, H)) * 0.5).astype(np.float32))
    tokens, labels = be._tokens(X), be._labels(Y)[:, None]
    N = T * B

    def fm_step() -> tuple:  # hs (T + 1, H, B): each step's state a contiguous (H, B) block
        W_xh, W_hh, b_h, W_hq, b_q = (params[k] for k in ("W_xh", "W_hh", "b_h", "W_hq", "b_q"))
        hs = torch.empty((T + 1, H, B))
        hs[0] = h0.T
        hs[1:] = (W_xh + b_h).index_select(0, tokens.reshape(-1)).view(T, B, H).transpose(1, 2)  # join 1
        h = hs.unbind(0)
        W_hh_T = W_hh.T.contiguous()
        for t in range(T):
            h[t + 1].addmm_(W_hh_T, h[t]).tanh_()
        hidden = hs[1:].transpose(1, 2).reshape(N, H)  # join 2
        loss, d_logits = _cross_entropy_and_grad(torch.addmm(b_q, hidden, W_hq), labels)
        d_h = torch.mm(d_logits, W_hq.T).view(T, B, H).transpose(1, 2).contiguous()  # join 3
        d = d_h.unbind(0)
        tanh_backward = torch.ops.aten.tanh_backward.grad_input
        tanh_backward(d[T - 1], h[T], grad_input=d[T - 1])
        for t in range(T - 2, -1, -1):
            tanh_backward(d[t].addmm_(W_hh, d[t + 1]), h[t + 1], grad_input=d[t])
        d_pre = d_h.transpose(1, 2).reshape(N, H)  # join 4
        d_W_xh = torch.zeros_like(W_xh).index_add_(0, tokens.reshape(-1), d_pre)
        prev = torch.cat([h0, hidden[:N - B]])  # join 5
        grads = {"W_xh": d_W_xh, "W_hh": torch.mm(prev.T, d_pre), "b_h": d_W_xh.sum(dim=0),
                 "W_hq": torch.mm(d_logits.T, hidden).T, "b_q": d_logits.sum(dim=0)}
        return loss, grads, (h[T].T.clone(),)

    def bm_step() -> tuple:
        return be._fast_loss_and_grads(params, X, Y, (h0,))

    with torch.no_grad():
        (l0, g0, s0), (l1, g1, s1) = bm_step(), fm_step()
        worst = max(float((g0[k] - g1[k]).abs().max() / g0[k].abs().max()) for k in g0)
        print(f"feature-major against the backend: loss {float(l1 - l0):+.1e}, gradients {worst:.1e} "
              f"of each one's largest entry, state {float((s1[0] - s0[0]).abs().max()):.1e}")
        W = params["W_hh"].clone()
        W_T = W.T.contiguous()
        g = torch.Generator().manual_seed(0)
        bm, fm = torch.randn(T + 1, B, H, generator=g) * 0.1, torch.randn(T + 1, H, B, generator=g) * 0.1
        strided = torch.randn(H, (T + 1) * B, generator=g) * 0.1  # (H, B) blocks with a leading dimension of (T+1)B
        b, f, s = bm.unbind(0), fm.unbind(0), strided.view(H, T + 1, B).unbind(1)
        tanh_backward = torch.ops.aten.tanh_backward.grad_input

        def loops(h: tuple, fwd: Callable, bwd: Callable) -> Callable[[], None]:
            def run() -> None:  # T products + tanh_ forward, T - 1 products + tanh' backward, on the same blocks
                for t in range(T):
                    fwd(h[t + 1], h[t]).tanh_()
                for t in range(T - 2, -1, -1):
                    tanh_backward(bwd(h[t], h[t + 1]), h[t + 1], grad_input=h[t])
            return run

        def reset(run: Callable[[], None], a: torch.Tensor, start: torch.Tensor) -> Callable[[], None]:
            return lambda: (a.copy_(start), run())  # the same values every call; the copy is timed alike

        src, dst = torch.randn(T, B, H, generator=g), torch.empty(T, H, B)
        alternate({
            "the backend's loss and gradients (batch-major)": bm_step,
            "the same, feature-major with 5 joins": fm_step,
            "loops batch-major (+ a copy resetting them)": reset(loops(b, lambda o, i: o.addmm_(i, W), lambda o, i: o.addmm_(i, W_T)), bm, bm.clone()),
            "loops feature-major, contiguous blocks (+ copy)": reset(loops(f, lambda o, i: o.addmm_(W_T, i), lambda o, i: o.addmm_(W, i)), fm, fm.clone()),
            "loops feature-major, strided blocks (+ copy)": reset(loops(s, lambda o, i: o.addmm_(W_T, i), lambda o, i: o.addmm_(W, i)), strided, strided.clone()),
            "one join: (T, B, H) -> (T, H, B) copy": lambda: dst.copy_(src.transpose(1, 2)),
            "one plain (T, B, H) copy": lambda: src.clone(),
        }, rounds=100)
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")


def torch_tanh() -> None:
    import torch

    x = torch.randn(B, H)
    a = x.numpy().copy()
    alternate({"torch tanh_ (32, 512)": lambda: x.tanh_(), "torch sigmoid_ (32, 512)": lambda: x.sigmoid_(),
               "torch mul_ (32, 512)": lambda: x.mul_(1.0), "numpy tanh, in place (32, 512)": lambda: np.tanh(a, out=a)},
              rounds=2000)
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")


def torch_forward() -> None:
    import warnings

    import torch

    g = torch.Generator().manual_seed(0)
    W = torch.randn(H, H, generator=g) / H**0.5
    W_T = W.T.contiguous()  # nn.Linear's (out, in) layout of h @ W
    template, xs = torch.randn(T + 1, B, H, generator=g) * 0.5, torch.randn(T, B, H, generator=g) * 0.5
    hs = template.clone()
    h, x = hs.unbind(0), xs.unbind(0)

    def addmm() -> None:  # the fast path: the input term is already in h[t + 1]
        hs.copy_(template)
        hs[1:].copy_(xs)  # (the fast path gathers them there)
        for t in range(T):
            h[t + 1].addmm_(h[t], W).tanh_()

    def loops(hs: torch.Tensor, xs: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        h, x = hs.unbind(0), xs.unbind(0)
        for t in range(35):
            torch.addmm(x[t], h[t], W, out=h[t + 1]).tanh_()
        return hs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        scripted = torch.jit.script(loops)
    variants = {"addmm_ + tanh_ (the fast path)": addmm,
                "the same loop, TorchScript": lambda: (hs.copy_(template), scripted(hs, xs, W))}

    def mkl_packed() -> None:  # what inductor's CPU freezing uses for float32 linear layers
        hs.copy_(template)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(W_T, B)
        for t in range(T):
            torch.add(torch.ops.mkl._mkl_linear(h[t], packed, W_T, None, B), x[t], out=h[t + 1]).tanh_()

    def onednn() -> None:  # oneDNN linear with the input term as a fused binary post-op
        hs.copy_(template)
        packed = torch.ops.mkldnn._reorder_linear_weight(W_T, B)
        for t in range(T):
            torch.tanh(torch.ops.mkldnn._linear_pointwise.binary(h[t], x[t], packed, None, "add"), out=h[t + 1])

    for name, fn in (("MKL packed GEMM (packed per step) + add + tanh", mkl_packed),
                     ("oneDNN linear + add post-op (packed per step) + tanh", onednn)):
        try:
            fn()
            variants[name] = fn
        except (RuntimeError, AttributeError) as exc:  # an op this torch build lacks
            print(f"{name}: unavailable ({type(exc).__name__})")
    alternate(variants)


def torch_lstm() -> None:
    """Why torch's LSTM fast path trails ``nn.LSTM``: its loops, their products alone through MKL (what
    ``addmm_`` runs), the same products through oneDNN's linear (a private op; oneDNN is what
    ``nn.LSTM`` runs on the CPU, through its fused LSTM primitive), and the layer itself."""
    import torch

    from multirnn.backends.torch_backend import _lstm_backward, _lstm_forward, _Packed

    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(H, 4 * H, generator=g) / H**0.5 * 0.5  # (H, 4H): h @ W forward, d @ W^T backward
    W_T = W.T.contiguous()
    P = _Packed(None, W, None, None)
    xp0, dH0 = torch.randn(T, B, 4 * H, generator=g) * 0.5, torch.randn(T, B, H, generator=g) * 0.1
    xp, dH, zeros = xp0.clone(), dH0.clone(), torch.zeros(B, H)
    hs, ds = torch.randn(T, B, H, generator=g), torch.randn(T, B, 4 * H, generator=g) * 0.1

    def loops() -> None:
        xp.copy_(xp0)
        dH.copy_(dH0)
        out, _, cache = _lstm_forward(xp, P, (zeros, zeros))
        _lstm_backward(out, cache, dH, P)

    def products(fwd: Callable[[torch.Tensor], Any], bwd: Callable[[torch.Tensor], Any]) -> Callable[[], Any]:
        def run() -> Any:  # T forward and T - 1 backward products, and dW_h's one GEMM over all steps
            for t in range(T):
                fwd(hs[t])
            for t in range(T - 1):
                bwd(ds[t])
            return torch.mm(hs.reshape(T * B, H).T, ds.view(T * B, 4 * H))
        return run

    variants = {"the fast path's loops (forward + backward)": loops,
                "their GEMMs alone, MKL (torch.mm)": products(lambda h: torch.mm(h, W), lambda d: torch.mm(d, W_T))}
    try:  # oneDNN's linear wants nn.Linear's (out, in) weights, reordered once
        fw, bw = (torch.ops.mkldnn._reorder_linear_weight(w, B) for w in (W_T, W))
        variants["their GEMMs alone, oneDNN linear"] = products(
            lambda h: torch.ops.mkldnn._linear_pointwise(h, fw, None, "none", [], ""),
            lambda d: torch.ops.mkldnn._linear_pointwise(d, bw, None, "none", [], ""))
    except (RuntimeError, AttributeError) as exc:  # a build without oneDNN
        print(f"oneDNN linear: unavailable ({type(exc).__name__})")
    lstm = torch.nn.LSTM(V, H)
    x = torch.nn.functional.one_hot(torch.randint(0, V, (T, B), generator=g), V).float()

    def layer() -> None:
        with torch.enable_grad():
            lstm(x)[0].backward(dH0)

    variants["nn.LSTM, forward + backward"] = layer
    alternate(variants)


def jax_split() -> None:
    """Whether XLA runs independent products of one loop iteration at the same time: the feature-major
    forward loop on the whole batch, against two independent halves of it per iteration (the same
    products, split by batch columns), feature-major and batch-major."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from benchmarks.profile_step import orthogonal

    rng = np.random.default_rng(0)
    W = jnp.asarray(orthogonal(H))
    xw = jnp.asarray((rng.standard_normal((T, H, B)) * 0.5).astype(np.float32))
    h0 = jnp.asarray((rng.standard_normal((H, B)) * 0.1).astype(np.float32))

    def loop(xs: tuple, hs: tuple, product: Callable[[Any], Any]) -> tuple:
        def step(t: Any, c: tuple) -> tuple:
            k = len(xs)
            new = tuple(jnp.tanh(product(h) + buf[t]) for buf, h in zip(c[:k], c[k:]))
            return tuple(buf.at[t].set(h) for buf, h in zip(c[:k], new)) + new
        return lax.fori_loop(0, T, step, xs + hs)[: len(xs)]

    def fm(xs: tuple, hs: tuple, W: Any) -> tuple:
        W_T = W.T  # formed before the loop: XLA does not hoist it out of the body (finding 6)
        return loop(xs, hs, lambda h: W_T @ h)

    def halved(a: Any) -> tuple:
        return a[..., : B // 2], a[..., B // 2:]

    whole = jax.jit(lambda xw, W, h0: fm((xw,), (h0,), W))
    halves = jax.jit(lambda xw, W, h0: fm(halved(xw), halved(h0), W))
    halves_bm = jax.jit(lambda xw, W, h0: loop(tuple(jnp.swapaxes(x, 1, 2) for x in halved(xw)),
                                               tuple(h.T for h in halved(h0)), lambda h: h @ W))
    a, b = whole(xw, W, h0)[0], halves(xw, W, h0)
    print(f"largest difference, whole against halves: {float(jnp.abs(a - jnp.concatenate(b, axis=2)).max())}")
    alternate({"the whole batch, feature-major": lambda: whole(xw, W, h0),
               "two halves per iteration, feature-major": lambda: halves(xw, W, h0),
               "two halves per iteration, batch-major": lambda: halves_bm(xw, W, h0)},
              rounds=60, sync=lambda a: jax.block_until_ready(a))


def _faults_child(backend: str) -> None:
    """One backend's fast epochs in this process: minor page faults and ms per training step."""
    import resource

    from benchmarks.bench_train import _setup
    from multirnn.allocator import keep_freed_memory

    kept = keep_freed_memory()
    _be, epoch, tokens = _setup({"backend": backend, "impl": "scratch", "mode": "fast"})
    epoch()
    epoch()
    steps, times = tokens // (B * T), []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        t = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (5 * steps)
    print(f"{backend:<11} {'keep_freed_memory' if kept else 'malloc as is':<18} {faults:7.0f} faults/step "
          f"{statistics.median(times) / steps * 1e3:7.2f} ms/step")


def ab(backend: str, other: str, rounds: int = 12, cell: str = "rnn") -> None:
    """An in-process A/B of one fast step: the backend module of checkout ``other`` (A, e.g. ``git
    worktree add /tmp/base HEAD~1``) against this one (B), whole epochs alternating, from the same
    weights and batches, for the d2l ed. 1 shapes with ``cell``; prints the per-round ratio's median
    and spread, and both first-epoch losses."""
    import importlib.util
    from pathlib import Path

    import multirnn
    from multirnn.allocator import keep_freed_memory
    from multirnn.backends import _REGISTRY

    keep_freed_memory()
    module_path, cls_name = _REGISTRY[backend][0]["scratch"].split(":")
    file = Path(other) / (module_path.replace(".", "/") + ".py")
    spec = importlib.util.spec_from_file_location(module_path.replace("_backend", "_backend_a"), file)
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # dataclasses look their module up while the file executes
    spec.loader.exec_module(old)
    new = importlib.import_module(module_path)
    config = multirnn.preset("d2l-ed1", num_epochs=1, cell=cell)
    data = multirnn.prepare_data(config)
    params = multirnn.init_params(len(data.vocab), config.num_hiddens, config.seed, config.dtype, config.model)
    batches = list(data.train_batches(np.random.default_rng(config.seed)))

    def epoch_of(module: Any) -> Callable[[], float]:
        be = getattr(module, cls_name)(mode="fast", model=config.model)
        p, state = be.params_from_numpy(params), None

        def epoch() -> float:
            nonlocal p, state
            state = None
            for X, Y in batches:
                state = be.init_state(X.shape[0], config.num_hiddens, config.dtype) if state is None else state
                p, loss, _norm, state = be.train_step(p, X, Y, state, config.lr, config.max_grad_norm)
            return float(loss)
        return epoch

    a, b = epoch_of(old), epoch_of(new)
    print(f"first-epoch loss: A {a()!r}, B {b()!r}")
    ta, tb = [], []
    for _ in range(rounds):
        for fn, times in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) / len(batches) * 1e3)
    rs = [x / y for x, y in zip(ta, tb)]
    print(f"A {statistics.median(ta):.2f} ms/step, B {statistics.median(tb):.2f} ms/step; A/B {statistics.median(rs):.3f} "
          f"[{min(rs):.3f}-{max(rs):.3f}] over {rounds} alternating epochs")


def jax_ops(steps: int = 40) -> None:
    """The JAX fast step's time per HLO op: ``steps`` steps under ``jax.profiler.trace`` with the host
    tracer at level 3 (XLA's CPU runtime then records every thunk it runs), summed per op over all
    threads. Tracing slows small ops (TransposePlan records every block it copies), so read the
    ranking and the op count, not absolute times; `probes ab` measures a change."""
    import collections
    import glob
    import tempfile

    import jax

    from multirnn.backends import jax_backend as jb

    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2  # the trace's protobuf schema
    except ImportError:
        sys.exit("jax-ops reads the trace with TensorFlow's xplane_pb2: pip install tensorflow-cpu")
    rng = np.random.default_rng(0)

    def f32(*shape: int) -> Any:
        return jax.numpy.asarray((rng.standard_normal(shape) * 0.01).astype(np.float32))

    P = {"W_xh": f32(V, H), "W_hh": f32(H, H), "b_h": f32(H), "W_hq": f32(H, V), "b_q": f32(V)}
    X, Y = (jax.numpy.asarray(rng.integers(0, V, (B, T)), jax.numpy.int32) for _ in range(2))
    h, lr, theta = f32(B, H), np.float32(1), np.float32(1)
    for _ in range(20):  # compile and warm up
        P, _, _, h = jb._fast_train_step(P, X, Y, h, lr, theta)
    jax.block_until_ready(P)
    options = jax.profiler.ProfileOptions()
    options.host_tracer_level, options.python_tracer_level = 3, 0
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, profiler_options=options):
            for _ in range(steps):
                P, _, _, h = jb._fast_train_step(P, X, Y, h, lr, theta)
            jax.block_until_ready(P)
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{log_dir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    skip = ("end:", "Threadpool", "Transpose", "ThunkExecutor", "$", "Wait", "Pjit", "PjRt", "Python", "Parse")
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            for e in line.events:
                name = names.get(e.metadata_id, "?")
                # XLA's CPU runtime wraps a parallel op as call.N around its body's clone: count the body
                if name.startswith(skip) or name.startswith("call.") or name == "?":
                    continue
                total[name] += e.duration_ps
                count[name] += 1
    print(f"JAX fast step, d2l ed. 1 shapes: ms per step by HLO op over {steps} traced steps (tracing inflates them)")
    for name, ps in total.most_common(30):
        print(f"  {ps / 1e9 / steps:7.3f} ms  x{count[name] / steps:5.1f}  {name}")
    print(f"  {sum(total.values()) / 1e9 / steps:7.3f} ms in all, {len(total)} distinct ops")


def page_faults() -> None:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for backend in ("numpy", "torch", "mxnet", "tensorflow", "jax"):
        for malloc in ("default", "keep"):
            subprocess.run([sys.executable, "-m", "benchmarks.probes", "step", backend], check=False,
                           env={**env, "MULTIRNN_MALLOC": malloc})


PROBES = {"transpose": transpose, "torch-compile": torch_compile, "jax-transpose": jax_transpose, "jax-output": jax_output, "jax-loop": jax_loop, "jax-ops": jax_ops,
          "tf-transpose": tf_transpose, "page-faults": page_faults, "torch-forward": torch_forward, "torch-tanh": torch_tanh,
          "torch-loops": torch_loops, "torch-fm": torch_fm, "torch-lstm": torch_lstm, "jax-split": jax_split}

def _usage(problem: str | None = None) -> NoReturn:
    """The probes and their arguments after a mistake (or no probe at all): exit 2, as a usage error."""
    if problem:
        print(f"python -m benchmarks.probes: {problem}", file=sys.stderr)
    print(__doc__.split("\n\n")[1])
    sys.exit(2)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print("usage: python -m benchmarks.probes PROBE [ARGS]\n\n" + __doc__.strip())
        sys.exit(0)
    from multirnn.backends import _REGISTRY

    FAST = tuple(_REGISTRY)  # the built-in backends (ab loads their modules by the registry's paths)
    if len(sys.argv) >= 2 and sys.argv[1] in ("step", "ab"):
        if len(sys.argv) < 3 or sys.argv[2] not in FAST:
            _usage(f"{sys.argv[1]} needs a backend, one of {', '.join(FAST)}")
        if sys.argv[1] == "step" and len(sys.argv) == 3:
            _faults_child(sys.argv[2])
            sys.exit(0)
        if sys.argv[1] == "ab" and len(sys.argv) in (4, 5, 6):
            from pathlib import Path

            from multirnn.cells import CELLS

            if not (Path(sys.argv[3]) / "multirnn" / "backends").is_dir():
                _usage(f"{sys.argv[3]!r} is not a multirnn checkout (no multirnn/backends in it)")
            if len(sys.argv) >= 5 and not (sys.argv[4].isdigit() and int(sys.argv[4]) > 0):
                _usage(f"rounds must be a positive whole number, got {sys.argv[4]!r}")
            if len(sys.argv) == 6 and sys.argv[5] not in CELLS:
                _usage(f"unknown cell {sys.argv[5]!r}; cells: {', '.join(CELLS)}")
            ab(sys.argv[2], sys.argv[3], *(int(n) for n in sys.argv[4:5]), *sys.argv[5:6])
            sys.exit(0)
        _usage(f"wrong arguments for {sys.argv[1]}")
    if len(sys.argv) != 2 or sys.argv[1] not in PROBES:
        _usage(f"unknown probe {sys.argv[1]!r}" if len(sys.argv) >= 2 else None)
    PROBES[sys.argv[1]]()
