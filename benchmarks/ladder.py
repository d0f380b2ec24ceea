"""What a fast path's own kernels allow once the step's work besides its GEMMs is counted.

The own-kernel floor (:mod:`benchmarks.floor`) counts a framework's GEMMs only. A training step also
has work no implementation can skip: the loops' elementwise ops (tanh forward, tanh' backward), the
stacking of the states backprop needs, the input gather, the loss and its gradient, dW_xh's
scatter-add, the biases' gradients, clipping and SGD. This module times a framework's step built up
rung by rung, all rungs in turns with the framework's parts of the floor in one process:

* **L0**: the step's GEMMs alone, as the backend issues them (the two loops of serial products,
  dW_hh, the output layer's three GEMMs), on stand-in operands so nothing can be folded or skipped;
* **L1**: + the loops' elementwise work (and, in XLA, stacking the states);
* **L1x**: + the rest of the step's work (the input gather, the loss and its gradient, dW_xh's
  scatter-add, the biases' gradients, clipping, SGD), each piece as the backend computes it and in
  the order a step needs them, but without the transposes or copies that join them;
* **L2/L3**: the backend's own loss and gradients, and its whole step;
* **L3-** (JAX): L3 traced with free reshapes where it transposes between the feature-major loops
  and the batched GEMMs (wrong numbers, the same pieces otherwise): what those transposes cost in
  the step, and the most that rearranging its data could win.

Every rung keeps the real step's order: each piece waits for the one before (in XLA through
``optimization_barrier``, which costs nothing; XLA's runtime would otherwise run independent pieces
at the same time, as no real step can).

``bound = own-kernel floor + (L1x - L0)``: the framework's GEMMs at their fastest forms plus the
step's other work as its backend computes it. No step that computes those pieces with these kernels
can be faster. A kernel that fused the elementwise work into the GEMMs could (neither XLA on the CPU
nor torch's public ops do; torch's private oneDNN op with a tanh post-op ran the chains 2-12 % faster
on an AMD EPYC, benchmarks/PROFILES.md finding 9), and so could a cheaper form of a non-GEMM piece.

    python -m benchmarks.ladder jax            # the ladder, as a table
    python -m benchmarks.ladder torch --json   # one JSON line (bench_train runs this)

Shapes: d2l ed. 1 (batch 32, 35 steps, hidden 512, vocab 28, float32). Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.probes import alternate

LIBRARIES = ("jax", "torch")  # the fast paths with a ladder
Rungs = tuple[dict[str, Callable[[], Any]], Callable[[Any], Any]]


def jax_rungs(B: int, H: int, T: int, V: int) -> Rungs:
    """JAX's rungs: L0-L1x as XLA programs, L2 the backend's loss and gradients, L3 its step."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from multirnn.backends import jax_backend as jb

    rng = np.random.default_rng(0)

    def f32(*shape: int, scale: float = 0.1) -> Any:
        return jnp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))

    P = {"W_xh": f32(V, H, scale=0.01), "W_hh": f32(H, H, scale=0.01), "b_h": f32(H, scale=0.0),
         "W_hq": f32(H, V, scale=0.01), "b_q": f32(V, scale=0.0)}
    X, Y = (jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32) for _ in range(2))
    h0 = f32(B, H)  # not zeros: no product runs on exact zeros
    lr, theta = np.float32(1), np.float32(1)
    # Stand-ins, feature-major as the backend's loops run: inputs, d_hs, d_logits, stacked states.
    stand_in = (f32(T, H, B, scale=0.5), f32(T, H, B), f32(T * B, V), f32(T * B, H))

    def tie(*xs: Any) -> Any:
        # A dependency without work: what uses the results waits for all of xs. The stand-ins would
        # otherwise free the pieces of each other, and XLA's runtime runs independent pieces at the
        # same time, which no real step can (each waits for the one before).
        return lax.optimization_barrier(xs)

    def output_layer(P: Any, go: Any, hb: Any) -> tuple:
        return go @ P["W_hq"].T, lax.optimization_barrier(go.T @ hb).T  # jb._project's backward forms

    def gemms(P: Any, xw: Any, g: Any, go: Any, hb: Any) -> Any:
        W_hh, W_T = P["W_hh"], P["W_hh"].T
        h_last = lax.scan(lambda c, _: (W_T @ c, None), h0.T, None, length=T)[0]
        h_last, hb = tie(h_last, hb)  # the output layer waits for the forward loop
        logits = hb @ P["W_hq"]
        logits, go = tie(logits, go)  # dL/dlogits waits for the logits
        d_h, dW_hq = output_layer(P, go, hb)
        d_h, g = tie(d_h, g)  # the backward loop waits for dL/dh
        d_first = lax.scan(lambda c, _: (W_hh @ c, None), g[-1], None, length=T - 1)[0]
        d_first, hb = tie(d_first, hb)  # dW_hh waits for the backward loop
        return h_last, d_first, hb.T @ hb, logits, d_h, dW_hq

    def loops(P: Any, xw: Any, g: Any, go: Any, hb: Any, loss: Callable | None = None) -> Any:
        W_hh, W_T = P["W_hh"], P["W_hh"].T

        def forward(h: Any, x_t: Any) -> Any:
            h = jnp.tanh(x_t + W_T @ h)
            return h, h

        hs = lax.scan(forward, h0.T, xw)[1]
        hs, hb = tie(hs, hb)
        logits = hb @ P["W_hq"]
        if loss is not None:  # L1x: the real loss gradient feeds the output layer's backward
            loss_value, go = loss(logits)
        logits, go = tie(logits, go)
        d_h, dW_hq = output_layer(P, go, hb)
        d_h, g = tie(d_h, g)
        k = 1 - hs * hs

        def backward(d: Any, xs: Any) -> Any:
            d = (xs[0] + W_hh @ d) * xs[1]
            return d, d

        ds = lax.scan(backward, g[-1] * k[-1], (g[:-1], k[:-1]), reverse=True)[1]
        ds, hb = tie(ds, hb)
        out = (hs, ds, hb.T @ hb, logits, d_h, dW_hq)
        return out if loss is None else (*out, loss_value, go, hb)  # go: dL/dlogits; hb: after the loop

    def everything(P: Any, xw: Any, g: Any, go: Any, hb: Any) -> Any:
        x_in = P["W_xh"][X.T] + P["b_h"]
        x_in, xw = tie(x_in, xw)  # the forward loop waits for the gather

        def loss(logits: Any) -> Any:
            return jax.value_and_grad(lambda z: jb._cross_entropy(z, Y.T.reshape(-1)))(logits + P["b_q"])

        hs, ds, dW_hh, _logits, d_h, dW_hq, loss_value, d_logits, d_pre = loops(P, xw, g, go, hb, loss)
        # d_pre: the stand-in states tied after the backward loop, standing in for dL/d(pre-activation)
        grads = {"W_xh": jax.ops.segment_sum(d_pre, X.T.reshape(-1), num_segments=V), "W_hh": dW_hh,
                 "b_h": d_pre.sum(0), "W_hq": dW_hq, "b_q": d_logits.sum(0)}
        grads, norm = jb._clip(grads, theta)
        return hs, ds, d_h, x_in, loss_value, {k: P[k] - lr * grads[k] for k in P}, norm

    l0, l1, l1x = jax.jit(gemms), jax.jit(loops), jax.jit(everything)
    l2 = jax.jit(lambda P, X, Y: jax.value_and_grad(jb._fast_loss, has_aux=True)(P, X, Y, h0))
    l3 = _training(jb._fast_train_step, P, X, Y, h0, lr, theta)

    return ({"L0 the step's GEMMs as one XLA program": lambda: l0(P, *stand_in),
             "L1 + the loops' elementwise work, stacking": lambda: l1(P, *stand_in),
             "L1x + the rest, no layout changes": lambda: l1x(P, *stand_in),
             "L2 the backend's loss and gradients": lambda: l2(P, X, Y),
             "L3 the backend's step": l3,
             "L3- L3 with free reshapes for its transposes": _step_without_transposes(P, X, Y, h0, lr, theta)},
            jax.block_until_ready)


def _step_without_transposes(P: Any, X: Any, Y: Any, h0: Any, lr: Any, theta: Any) -> Callable[[], Any]:
    """The backend's tanh-RNN step traced with its layout changes (``jax_backend._fm``, the
    ``(T, B, H) <-> (T, H, B)`` transposes around the feature-major loops) replaced by reshapes to
    the same shapes, which cost nothing: wrong numbers, every other piece as the step computes it.
    How much the transposes cost inside the step, which L2 - L1x can only bound from above."""
    from unittest import mock

    import jax

    from multirnn.backends import jax_backend as jb

    def real_loss() -> float:  # the backend's first-step loss, from a fresh copy of P
        return float(_training(jb._fast_train_step, P, X, Y, h0, lr, theta)())

    # A new function object, so that neither jit's trace cache can hand this one the real trace.
    step = jax.jit(lambda *a: jb._fast_train_step.__wrapped__(*a), donate_argnums=(0, 3))
    run, before = _training(step, P, X, Y, h0, lr, theta), real_loss()
    with mock.patch.object(jb, "_fm", lambda a: a.reshape(a.shape[0], a.shape[2], a.shape[1])):
        loss = float(run())  # traced here, patched
    # The reshapes must have taken effect (the loss changes), and only in this trace.
    if loss == before:
        raise RuntimeError("the step without its transposes computed the real loss: the patch did not take")
    if real_loss() != before:
        raise RuntimeError("the backend's step changed after tracing the one without its transposes")
    return run


def _training(step: Callable[..., Any], P: Any, X: Any, Y: Any, h0: Any, lr: Any, theta: Any) -> Callable[[], Any]:
    """Calls of a donating train step (``jax_backend._fast_train_step``'s signature) that train a
    copy of ``P`` on (X, Y) from ``h0``, each returning its loss."""
    state = {"p": {k: v + 0 for k, v in P.items()}}  # the step donates its params: it trains a copy

    def run() -> Any:
        state["p"], loss, _, _ = step(state["p"], X, Y, h0 + 0, lr, theta)  # h0 is donated too
        return loss

    return run


def torch_rungs(B: int, H: int, T: int, V: int) -> Rungs:
    """torch's rungs: L0-L1x as the backend issues its kernels (batch-major addmm_ loops), L3 its step."""
    import torch

    import multirnn
    from benchmarks.profile_step import orthogonal
    from multirnn.backends import get_backend
    from multirnn.backends.torch_backend import _clip_scale, _cross_entropy_and_grad

    be = get_backend("torch", mode="fast")
    params = be.params_from_numpy(multirnn.init_params(V, H, seed=0))
    rng = np.random.default_rng(0)
    X, Y, state = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T)), be.init_state(B, H)
    tokens, labels = torch.from_numpy(X.T.copy()), torch.from_numpy(Y.T.reshape(-1, 1).copy())
    W = torch.from_numpy(orthogonal(H))
    W_T, W_q = W.T.contiguous(), params["W_hq"].clone()
    g = torch.Generator().manual_seed(0)
    hs, d = torch.randn(T + 1, B, H, generator=g) * 0.1, torch.randn(T, B, H, generator=g) * 0.1  # never zeros
    k = torch.rand(T + 1, B, H, generator=g)  # stand-in states for tanh' (hs changes as the loops run)
    hb, go = torch.randn(T * B, H, generator=g) * 0.1, torch.randn(T * B, V, generator=g) * 0.1
    h, r, kk = hs.unbind(0), d.unbind(0), k.unbind(0)
    tanh_backward = torch.ops.aten.tanh_backward.grad_input
    last = torch.empty(B, H)

    def gemms(elementwise: bool) -> list:
        # Without the elementwise ops the products are written, not added (torch.mm(..., out=)): the
        # same GEMMs, but the states cannot grow from call to call (W is orthogonal).
        for t in range(T):
            if elementwise:
                h[t + 1].addmm_(h[t], W).tanh_()
            else:
                torch.mm(h[t], W, out=h[t + 1])
        for t in range(T - 2, -1, -1):
            if elementwise:
                tanh_backward(r[t].addmm_(r[t + 1], W_T), kk[t + 1], grad_input=r[t])
            else:
                torch.mm(r[t + 1], W_T, out=r[t])
        return [torch.mm(hs[:-1].reshape(T * B, H).T, d.view(T * B, H)), torch.mm(hb, W_q), torch.mm(go, W_q.T),
                torch.mm(go.T, hb).T]

    def everything() -> None:
        dW_hh, logits, _d_h, dW_hq = gemms(True)
        torch.index_select(params["W_xh"] + params["b_h"], 0, tokens.reshape(-1), out=hs[1:].view(T * B, -1))
        _loss, d_logits = _cross_entropy_and_grad(logits, labels)
        # the backward loop's first step, written aside: in place, r[T-1] would shrink call after call
        # into subnormals, which slow every product after it
        tanh_backward(r[T - 1], kk[T], grad_input=last)
        dW_xh = torch.zeros_like(params["W_xh"]).index_add_(0, tokens.reshape(-1), hb)
        grads = [dW_xh, dW_hh, dW_xh.sum(0), dW_hq, d_logits.sum(0)]
        _norm, scale = _clip_scale(grads, 1.0)
        # a tiny step: the stand-in weights stay as they are
        torch._foreach_addcmul_([params[n] for n in ("W_xh", "W_hh", "b_h", "W_hq", "b_q")], grads,
                                [scale * -1e-9] * len(grads))

    def step() -> None:
        nonlocal params
        params, *_ = be.train_step(params, X, Y, state, 1.0, 1.0)

    def run(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with torch.no_grad():
                return fn()
        return call

    return ({"L0 the step's GEMMs as the backend issues them": run(lambda: gemms(False)),
             "L1 + the loops' tanh_ and tanh_backward": run(lambda: gemms(True)),
             "L1x + the rest, no joining copies": run(everything),
             "L3 the backend's step": step}, lambda x: x)


RUNGS: dict[str, Callable[[int, int, int, int], Rungs]] = {"jax": jax_rungs, "torch": torch_rungs}


def measure(library: str, rounds: int = 100, B: int = 32, H: int = 512, T: int = 35, V: int = 28,
            big_n: int = 2048) -> dict[str, Any]:
    """``library``'s rungs timed in turns with its parts of the floor (its fastest chain form, dW_hh
    GEMM and output GEMMs, as :mod:`benchmarks.floor` times them); ms are medians.

    Returns the rungs' and parts' ms, ``floor_ms`` (its chain + the batched FLOPs at the big-GEMM
    rate, the mean of the rate before and after the turns: bench_train's floor with this library's
    chain, so this or stricter), ``own_ms`` (its own-kernel floor), ``extra_ms`` (L1x - L0) and
    ``bound_ms`` (own + extra), with ``bound_share`` = floor / bound (of the floor built on this
    library's chain, not bench_train's, which takes the fastest library's) and ``work_factor`` =
    own / bound, the factor by which the step's other work lowers what the own GEMM kernels allow
    (what bench_train's verdict uses). ``big_n``: the big GEMM's size (small only in tests)."""
    from benchmarks import floor as fl
    from multirnn.allocator import keep_freed_memory
    from multirnn.cells import RNN

    keep_freed_memory()  # as the training processes it is compared with
    rungs, sync = RUNGS[library](B, H, T, V)

    # Every form of each floor part takes its turns too, and each part counts its fastest form's
    # median: picking the form beforehand, from a few calls, once picked XLA's slower chain form.
    forms = {"chain": fl.chain_runners(library, B, H, 1, T), "dW_hh GEMM": fl.gradient_runners(library, B, H, 1, T),
             "output GEMMs": fl.output_runners(library, B, H, V, T)}
    parts = {f"floor part: {library}'s {k}, form {i + 1}": (lambda run=run, done=done: done(run()))
             for k, runners in forms.items() for i, (run, done) in enumerate(runners)}
    # The big-GEMM rate before and after the turns, averaged: timed in turns with the rest, its 90 ms
    # of both cores at full load disturbed the calls after it (a rung's median doubled in one try).
    before = max(fl.big_gemm_flops(n=big_n).values())
    ms = alternate({**parts, **rungs}, rounds, sync)
    after = max(fl.big_gemm_flops(n=big_n).values())
    big = (before + after) / 2
    t_chain, t_grad, t_out = (min(ms[f"floor part: {library}'s {k}, form {i + 1}"] for i in range(len(forms[k])))
                              for k in forms)
    batched = fl.batched_flops(B, H, T, V, RNN)
    floor_ms = t_chain + batched / big * 1e3
    # As report.own_floor: the output GEMMs at their time, the other batched FLOPs (for the tanh RNN
    # exactly the gradient GEMM's) at the gradient GEMM's rate, capped at the big-GEMM rate.
    own_ms = t_chain + 1e3 * fl.own_batched_seconds(batched, big, fl.gradient_gemm_flops(B, H, 1, T) / (t_grad / 1e3),
                                                     t_out / 1e3, fl.output_gemm_flops(B, H, V, T))
    names = list(rungs)
    extra = max(ms[names[2]] - ms[names[0]], 0.0)
    bound = bound_ms(own_ms, ms[names[0]], extra)
    return {"library": library, "rounds": rounds, "shape": {"B": B, "H": H, "T": T, "V": V}, "ms": ms,
            "parts_ms": {"chain": t_chain, "dW_hh GEMM": t_grad, "output GEMMs": t_out},
            "rungs": names, "big_gemm_flops": [before, after], "floor_ms": floor_ms, "own_ms": own_ms,
            "extra_ms": extra, "bound_ms": bound, "bound_share": floor_ms / bound, "work_factor": own_ms / bound}


def bound_ms(own_ms: float, l0_ms: float, extra_ms: float) -> float:
    """The least a step computing the ladder's pieces can take: its GEMMs at the faster of the own-kernel
    floor and the GEMMs as the backend issues them (L0; XLA's, fused into one program, beat the floor's
    separately timed parts: 9.37 against 10.44 ms), plus the other work. The own-kernel floor alone
    overstated JAX's least step (14.10 ms where L1x, those very pieces, measured 13.03)."""
    return min(own_ms, l0_ms) + extra_ms


def text(r: dict[str, Any]) -> str:
    """The ladder as lines of text."""
    lib, before, after = r["library"], *r["big_gemm_flops"]
    lines = [(f"floor {r['floor_ms']:.2f} ms per step, built on {lib}'s chain ({lib}'s fastest chain form + the batched FLOPs at the big-GEMM "
              f"rate, {before / 1e9:.0f} GFLOP/s before the turns and {after / 1e9:.0f} after; bench_train's floor takes "
              f"the fastest library's chain, so it is this or stricter); {lib}'s own-kernel floor {r['own_ms']:.2f} ms")]
    for name in r["rungs"]:
        t = r["ms"][name]
        lines.append(f"{name:<48} {t:8.2f} ms = {r['floor_ms'] / t:4.0%} of the floor, "
                     f"{r['own_ms'] / t:4.0%} of the own-kernel floor")
    lines.append(f"bound: the faster of the own-kernel floor and L0, + the non-GEMM work L1x adds to L0 ({r['extra_ms']:.2f} ms) = "
                 f"{r['bound_ms']:.2f} ms = {r['bound_share']:.0%} of the floor built on {lib}'s chain; the work "
                 f"lowers what {lib}'s GEMMs allow by x{r['work_factor']:.3f} (the factor bench_train's verdict uses)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from multirnn.compare import number_arg

    ap = argparse.ArgumentParser(prog="python -m benchmarks.ladder", description=__doc__.split("\n\n")[0])
    ap.add_argument("library", choices=LIBRARIES)
    ap.add_argument("--rounds", type=number_arg(int, "a positive integer"), default=100,
                    help="turns of every rung and floor part (default 100)")
    ap.add_argument("--json", action="store_true", help="print one JSON line last (for bench_train)")
    args = ap.parse_args(argv)
    r = measure(args.library, args.rounds)
    print(text(r))
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
