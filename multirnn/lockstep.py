"""Re-anchored (lockstep) measurements: every backend restarts from one reference run's checkpoints.

Free-running float32 curves of *correct* implementations drift apart (training at lr = 1 is
chaotic: one-ulp differences grow to ~1e-2 within 100 epochs), so they cannot carry a tight
verdict over a long run. Here each backend restarts, at checkpoints spread over the whole run,
from the anchor run's own parameters (bit-identical, same dtype) and data-generator state, and
trains a short stretch: that epoch plus the first step of the next (so the epoch boundary's state
reset is exercised), or only the epoch's first ``MAX_STRETCH_STEPS`` steps where it is longer.
Chaos has no time to amplify, so the per-step losses and gradient norms must match the anchor's
over the stretch within a fixed band, at epoch 3 as at epoch 500.

Two probe steps per checkpoint exercise what the run itself may never do: a step with the
clipping threshold set *below* the current gradient norm (clipping active, through the backend's
real ``train_step``, fused clip included) and one with it *above* (clipping must then change
nothing), both at half the learning rate (so a gradient scaled by lr twice shows even at lr = 1).
Their reference is the NumPy oracle, run beside the backend in the same process.

This module measures; :mod:`multirnn.verdict` judges the recorded numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import agreement
from .backends.base import Backend
from .config import TrainConfig
from .harness import Checkpoint, TrainingData, run_epoch

# Cost budget of the default density: the lockstep work is kept near this share of the run.
DEFAULT_BUDGET = 0.25
# Probe steps: clipping threshold as a multiple of the oracle's gradient norm, and the lr factor.
PROBE_CLIP_FACTORS = {"clip": 0.5, "no-clip": 2.0}
PROBE_LR_FACTOR = 0.5
# A second pair of probe steps runs at an lr raised until every parameter's update is at least this share
# of the parameter's size (the half-lr pair stays: what only a small step shows, an update rounding to 0):
# every implementation rounds the updated parameter to the dtype, which the verdict allows for (2 eps
# |param|), and at a small lr that allowance swamped the update (at --lr 1e-5 it was 340x W_hh's update,
# so a backend that never updated W_hh agreed). At this share it is at most a tenth of the probe band
# (1e-3 float32, 1e-9 float64; tests/test_lockstep_probes.py holds the two files to each other).
PROBE_RESOLUTION: dict[str, float] = {"float32": 2.5e-3, "float64": 5e-6}
# ... but by no more than this factor, and not past updates of this size (far from overflow in float32).
# One step's update is linear in lr, so the factor can be large: at 1e8 the probes of --lr 1e-12 moved
# W_hh by 1e-8 of its size, below what float32 resolves, and a backend that never updated it agreed.
PROBE_LR_MAX_RAISE, PROBE_MAX_UPDATE = 1e15, 1e8
_CKPT_NAME = re.compile(r"^epoch-(\d+)\.npz$")
# The longest stretch. Rounding differences compound over a stretch too, the faster the longer the
# run has trained. Worst relative deviation of correct torch/jax rows (float32, AVX-512 kernels)
# within a stretch's first 16 / 32 / 128 steps: batch 1, 1 step, hidden 64 (399-step epochs) 6.3e-7 /
# 1.9e-6 / 6.0e-3, and both rows left the 1e-3 band at steps 232-240; hidden 8 (199 steps) 1.3e-6 /
# 1.3e-6 / 4.3e-5, 1.15e-3 by step 199; the book's shapes with 53-step epochs 1.6e-6 / 3.0e-5. With
# the 16-step cap all four frameworks agreed on those three runs with AVX-512 kernels and with every
# library capped to AVX2 (DEVELOPERS.md): worst 4.8e-6. 16 steps keep the book's stretches (9 steps,
# d2l-ed2's 5) whole, and still compound a state bug's one-step effect over the later steps.
MAX_STRETCH_STEPS = 16
# Long epochs make a capped stretch cheap, so the budget alone would checkpoint every epoch; each
# checkpoint is also the oracle's work (probe references, a file of ~3.5 MB at hidden 512) and a
# reload per row. The book run needs 85 (every 6th of 500 epochs): this bound leaves it unchanged.
MAX_AUTO_CHECKPOINTS = 100


def auto_every(steps_per_epoch: int, num_epochs: int | None = None, budget: float = DEFAULT_BUDGET) -> int:
    """Checkpoint spacing (in epochs) that keeps the lockstep work near ``budget`` of a run, and the
    checkpoints of ``num_epochs`` at most about :data:`MAX_AUTO_CHECKPOINTS`.

    """
    every = max(1, math.ceil(checkpoint_cost(steps_per_epoch) / budget))
    if num_epochs:
        every = max(every, math.ceil(num_epochs / MAX_AUTO_CHECKPOINTS))
    return every


def checkpoint_cost(steps_per_epoch: int) -> float:
    """A row's re-anchored work per checkpoint, in epochs of its free run: a stretch (see
    :func:`stretch_steps`) and two probe steps (the oracle's probe steps are computed once, by the
    run that saves the checkpoints)."""
    return (stretch_steps(steps_per_epoch, True) + 2) / max(steps_per_epoch, 1)


def stretch_steps(steps_in_epoch: int, has_next_epoch: bool) -> int:
    """Steps in a stretch from a checkpoint: the epoch, plus the next one's first step if there is
    one, capped at :data:`MAX_STRETCH_STEPS`."""
    return min(steps_in_epoch + (1 if has_next_epoch else 0), MAX_STRETCH_STEPS)


def checkpoint_epochs(num_epochs: int, every: int) -> list[int]:
    """Epochs 1, 1 + every, 1 + 2 x every, ... and always the last one (1-based)."""
    if every <= 0:
        return []
    epochs = list(range(1, num_epochs + 1, every))
    if epochs[-1] != num_epochs:
        epochs.append(num_epochs)
    return epochs


# --- checkpoints on disk -----------------------------------------------------------------------------


def save_checkpoint(directory: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``epoch-NNNNN.npz`` atomically (arrays bit-exact; the rest as JSON)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"epoch-{ckpt.epoch:05d}.npz"
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    arrays = {f"p:{k}": v for k, v in ckpt.params.items()}
    refs = None
    if ckpt.probe_refs is not None:
        refs = {"norm": ckpt.probe_refs["norm"], "eval_loss": ckpt.probe_refs.get("eval_loss"),
                "eval_rounding": ckpt.probe_refs.get("eval_rounding"), "steps": []}
        for i, step in enumerate(ckpt.probe_refs["steps"]):
            refs["steps"].append({k: v for k, v in step.items() if k != "params"})
            arrays.update({f"r:{i}:{k}": v for k, v in step["params"].items()})
    meta = json.dumps({"epoch": ckpt.epoch, "global_step": ckpt.global_step, "rng_state": ckpt.rng_state,
                       "probe_refs": refs})
    with open(tmp, "wb") as f:
        np.savez(f, __meta__=np.array(meta), **arrays)
    os.replace(tmp, path)
    return path


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (damaged, truncated, or not one of ours)."""


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint in ``path``.

    Raises:
        CheckpointError: it cannot be read; the message names the file (a row that re-anchors from it
            crashed with only NumPy's "Cannot load file containing pickled data").
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            params = {k[2:]: z[k] for k in z.files if k.startswith("p:")}
            refs = meta.get("probe_refs")
            if refs is not None:
                for i, step in enumerate(refs["steps"]):
                    prefix = f"r:{i}:"
                    step["params"] = {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}
        return Checkpoint(meta["epoch"], meta["global_step"], params, meta["rng_state"], refs)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"the anchor's checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
                              "it was damaged or removed under this run: start the run again from scratch (compare: "
                              "--overwrite)") from None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoint files in ``directory``, by epoch."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CKPT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


# --- measurements ------------------------------------------------------------------------------------


@dataclass
class Stretch:
    """A backend's steps from one checkpoint: the epoch, plus the next epoch's first step (at most
    :data:`MAX_STRETCH_STEPS` steps)."""

    epoch: int
    start_step: int  # 0-based global index of the first step (the anchor's step numbering)
    loss: list[float]
    grad_norm: list[float]


@dataclass
class Probe:
    """One probe step from a checkpoint, by the backend and by the NumPy oracle."""

    epoch: int
    kind: str  # "clip" (threshold below the norm) or "no-clip" (above it)
    lr: float
    max_grad_norm: float
    loss: float
    ref_loss: float
    grad_norm: float
    ref_grad_norm: float
    # per parameter: [|got - ref|, |ref - before|, |ref|] (L2 norms, float64), i.e. the error of
    # the update, the size of the reference update and the size of the parameter
    params: dict[str, list[float]] = field(default_factory=dict)
    # the backend's evaluate_loss from the checkpoint (its forward: what validation and --eval-text
    # perplexities and predict run), against the oracle's
    eval_loss: float | None = None
    ref_eval_loss: float | None = None  # the oracle's, from the same weights and state
    # how far the oracle's own float32 step lay from the same step in float64: {"loss", "grad_norm"
    # (relative), "params": {name: [|update - float64 update|, |float64 update|]}}, and its forward
    # loss's (relative; verdict.ROUNDING_FACTOR)
    rounding: dict[str, Any] | None = None
    eval_rounding: float | None = None


def _generator(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


def run_stretch(backend: Backend, config: TrainConfig, data: TrainingData, ckpt: Checkpoint) -> Stretch:
    """Train from ``ckpt`` through its epoch and the first step of the next one (if any), stopping
    after :data:`MAX_STRETCH_STEPS` steps."""
    rng = _generator(ckpt.rng_state)
    epoch = run_epoch(backend, config, data, backend.params_from_numpy(ckpt.params), rng, max_steps=MAX_STRETCH_STEPS)
    loss, norm = list(epoch.losses), list(epoch.norms)
    if ckpt.epoch < config.num_epochs and len(loss) < MAX_STRETCH_STEPS:
        boundary = run_epoch(backend, config, data, epoch.params, rng, max_steps=1)
        loss += boundary.losses
        norm += boundary.norms
    return Stretch(ckpt.epoch, ckpt.global_step, loss, norm)


def rounding_stretch(oracle: Backend, config: TrainConfig, data: TrainingData, ckpt: Checkpoint) -> Stretch:
    """The oracle's stretch from ``ckpt`` in float64, from the same (float32) weights and minibatches: the
    steps its float32 run takes there, nearly without rounding. Where the float32 steps lie far from these,
    rounding alone decides them, and a correct backend (another rounding of the same steps) can lie as far
    from the oracle: at --lr 50 one step from a checkpoint moved a correct torch's gradient norm 2.7 % off
    the oracle's, both being float32 roundings of the same step (see verdict.ROUNDING_FACTOR)."""
    return run_stretch(oracle, dataclasses.replace(config, dtype="float64"), data, _as64(ckpt))


def _first_batch(config: TrainConfig, data: TrainingData, ckpt: Checkpoint) -> tuple[np.ndarray, np.ndarray]:
    return next(data.train_batches(_generator(ckpt.rng_state)))


def _probe_step(be: Backend, config: TrainConfig, ckpt: Checkpoint, X: np.ndarray, Y: np.ndarray,
                theta: float, lr: float) -> tuple[dict[str, np.ndarray], float, float]:
    state = be.init_state(X.shape[0], config.num_hiddens, config.dtype)
    p, loss, norm, _ = be.train_step(be.params_from_numpy(ckpt.params), X, Y, state, lr, theta)
    return be.params_to_numpy(p), float(loss), float(norm)


def _grads64(oracle: Backend, config: TrainConfig, ckpt: Checkpoint, X: np.ndarray,
             Y: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The checkpoint's weights and the oracle's gradients there, both in float64. An update measured as
    ``after - before`` is rounded to the parameter: in float32 every update of --lr 1e-9 was 0 and asked
    for no raise (a backend that never updated W_hh agreed), and in float64 those of --lr 1e-20 were."""
    params = _as64(ckpt).params
    state = oracle.init_state(X.shape[0], config.num_hiddens, "float64")
    _, grads, _ = oracle.loss_and_grads(oracle.params_from_numpy(params), X, Y, state)
    return params, {k: np.asarray(g, dtype=np.float64) for k, g in grads.items()}


def probe_lr(config: TrainConfig, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], norm: float) -> float:
    """The probe's lr: ``lr x PROBE_LR_FACTOR``, raised where the unclipped step at that lr (``lr x grads``)
    moves some parameter by less than ``PROBE_RESOLUTION`` of its size. One step's update is linear in lr,
    so any lr tests the update rule; a larger one is what float32 can resolve."""
    lr = config.lr * PROBE_LR_FACTOR
    need = 1.0
    for k, p in params.items():
        update, size = lr * _norm(np.asarray(grads[k], dtype=np.float64)), _norm(np.asarray(p, dtype=np.float64))
        if update > 0 and math.isfinite(update):
            need = max(need, PROBE_RESOLUTION[config.dtype] * size / update)
    # the largest update of the raised step is about lr * norm (an unclipped step's whole gradient)
    cap = min(PROBE_LR_MAX_RAISE, max(1.0, PROBE_MAX_UPDATE / (lr * norm))) if lr * norm > 0 else PROBE_LR_MAX_RAISE
    raised = lr * min(need, cap)
    if 0.75 < raised < 1.5:  # at lr 1, lr^2 = lr: a gradient scaled by lr twice would pass (--lr 2 gave 1)
        raised *= 2
    return raised


def probe_references(oracle: Backend, config: TrainConfig, data: TrainingData, ckpt: Checkpoint) -> dict[str, Any] | None:
    """The NumPy oracle's probe steps from ``ckpt`` (None if its gradient norm is 0 or not finite).

    The oracle steps first with no bound at all; its gradient norm ``n`` then sets the thresholds:
    ``2 n`` (no clipping: the result must equal the unbounded step) and ``n / 2`` (clipping on). Both
    run at half the run's lr and, where that step moves some parameter by less than float32 resolves
    (:func:`probe_lr`), again at the raised lr: the half-lr pair keeps what only a small step shows (an
    update that rounds to 0), the raised pair holds every update to its band.

    Returns:
        ``{"norm": n, "steps": [{"kind", "lr", "loss", "params"}, ...]}``.
    """
    X, Y = _first_batch(config, data, ckpt)
    half = config.lr * PROBE_LR_FACTOR
    unbounded = _probe_step(oracle, config, ckpt, X, Y, math.inf, half)
    norm = unbounded[2]
    if not math.isfinite(norm) or norm == 0.0:
        return None
    lrs = [half]
    if (raised := probe_lr(config, *_grads64(oracle, config, ckpt, X, Y), norm)) != half:
        lrs.append(raised)
    # float32 runs: each step and the forward pass again in float64, from the same weights (how far
    # rounding alone moved the oracle's own: verdict.ROUNDING_FACTOR)
    exact = (dataclasses.replace(config, dtype="float64"), _as64(ckpt)) if config.dtype == "float32" else None
    steps = []
    for lr in lrs:
        for kind in PROBE_CLIP_FACTORS:
            # the unbounded half-lr step above is that lr's no-clip step (θ = 2 n does not clip either)
            params, loss, step_norm = (unbounded if kind == "no-clip" and lr == half
                                       else _probe_step(oracle, config, ckpt, X, Y, _theta(kind, norm), lr))
            step = {"kind": kind, "lr": lr, "loss": loss, "params": params}
            if exact:
                step["rounding"] = _step_rounding(oracle, *exact, X, Y, _theta(kind, norm), lr, params, loss,
                                                  step_norm)
            steps.append(step)
    eval_loss = _eval_loss(oracle, config, ckpt, X, Y)
    refs = {"norm": norm, "eval_loss": eval_loss, "steps": steps}
    if exact:
        refs["eval_rounding"] = _rel(eval_loss, _eval_loss(oracle, *exact, X, Y))
    return refs


def _as64(ckpt: Checkpoint) -> Checkpoint:
    return dataclasses.replace(ckpt, params={k: np.asarray(v, dtype=np.float64) for k, v in ckpt.params.items()})


def _rel(got: float, exact: float) -> float:
    """Relative distance, inf where either is not finite (no band can judge it)."""
    d = agreement.relative_error(float(got), float(exact))
    return d if math.isfinite(d) else math.inf


def _step_rounding(oracle: Backend, config64: TrainConfig, c64: Checkpoint, X: np.ndarray, Y: np.ndarray,
                   theta: float, lr: float, params: dict[str, np.ndarray], loss: float, norm: float) -> dict[str, Any]:
    """How far the oracle's float32 probe step (``params``, ``loss``, ``norm``) lay from the same step in
    float64 (``config64`` from the checkpoint ``c64``, both in float64): its loss, gradient norm and each
    parameter's update. Where it is large, rounding alone moves the step, and the verdict widens those
    bands (verdict.ROUNDING_FACTOR): at --lr 20 with hidden 8 the oracle's own float32 W_hh gradient lay
    3.4e-3 from float64 (it cancels to 1.9e-5 of the whole), and a correct torch's probe update 4.0e-3 off
    it failed the 1.2e-3 band."""
    p64, loss64, norm64 = _probe_step(oracle, config64, c64, X, Y, theta, lr)
    out: dict[str, Any] = {"loss": _rel(loss, loss64), "grad_norm": _rel(norm, norm64), "params": {}}
    for k, before in c64.params.items():
        update = p64[k].astype(np.float64) - before
        # [|float32 update - float64 update|, |float64 update|]: the verdict takes out the rounding of the
        # parameter itself, which its band allows for already
        out["params"][k] = [_norm(params[k].astype(np.float64) - before - update), _norm(update)]
    return out


def _eval_loss(be: Backend, config: TrainConfig, ckpt: Checkpoint, X: np.ndarray, Y: np.ndarray) -> float:
    """``be``'s evaluate_loss from the checkpoint's weights and a fresh state: its forward pass."""
    state = be.init_state(X.shape[0], config.num_hiddens, config.dtype)
    return float(be.evaluate_loss(be.params_from_numpy(ckpt.params), X, Y, state)[0])


def _theta(kind: str, norm: float) -> float:
    """A probe step's clipping threshold: the unbounded step for no-clip, else PROBE_CLIP_FACTORS of the norm."""
    return math.inf if kind == "no-clip" else norm * PROBE_CLIP_FACTORS[kind]


def state_effects(oracle: Backend, config: TrainConfig, data: TrainingData, ckpt: Checkpoint) -> dict[str, float] | None:
    """How far breaking a state rule moves one step at ``ckpt``: what the re-anchored checks can see.

    By the oracle in float64 (a property of the model here, not of rounding), on the checkpoint's
    first two minibatches, each as the larger relative change of the second one's loss and gradient
    norm (the quantities the verdict compares): ``reset``, a fresh state in place of the first
    minibatch's final one (a reset where the state should be carried, or the reverse); ``detach``
    (sequential partitioning only), backpropagation running on into the first minibatch. The mean
    loss over both joined along the steps is ``(L1 + L2) / 2``, so that gradient is
    ``2 g_joined - g_1``. A stretch's later steps compound these (measured: its largest deviation
    was 14-130x this), so an effect above the band is always seen; below it, maybe not. None when
    the epoch has fewer than two equal minibatches.
    """
    batches = data.train_batches(_generator(ckpt.rng_state))
    first, second = next(batches, None), next(batches, None)
    if first is None or second is None or first[0].shape != second[0].shape:
        return None
    (X1, Y1), (X2, Y2) = first, second
    rel = agreement.relative_error

    def grad_norm(grads: dict[str, np.ndarray]) -> float:  # the oracle's own, unclipped
        return float(oracle.clip_gradients(grads, math.inf)[1])

    params = oracle.params_from_numpy({k: v.astype(np.float64) for k, v in ckpt.params.items()})
    fresh = oracle.init_state(X1.shape[0], config.num_hiddens, "float64")
    _, g1, carried_state = oracle.loss_and_grads(params, X1, Y1, fresh)
    carried = oracle.loss_and_grads(params, X2, Y2, carried_state)
    loss, norm = float(carried[0]), grad_norm(carried[1])
    reset = oracle.loss_and_grads(params, X2, Y2, fresh)
    out = {"reset": max(rel(float(reset[0]), loss), rel(grad_norm(reset[1]), norm))}
    if not config.resets_state_every_batch:
        _, g_joined, _ = oracle.loss_and_grads(params, np.concatenate([X1, X2], axis=1),
                                               np.concatenate([Y1, Y2], axis=1), fresh)
        out["detach"] = rel(grad_norm({k: 2 * g_joined[k] - g1[k] for k in g1}), norm)  # the loss is unchanged
    return out


def state_rules_settled(records: list[dict[str, float]], band: float) -> bool:
    """Whether every rule measured by :func:`state_effects` has moved a step past ``band`` at some
    checkpoint of ``records`` (then the verdict's note cannot apply, and further checkpoints need not
    be measured)."""
    rules = {k for r in records for k in r if k != "epoch"}
    return bool(rules) and all(max(r.get(k, 0.0) for r in records) > band for k in rules)


def _norm(x: np.ndarray) -> float:
    """L2 norm of a float64 array, scaled by its largest magnitude first: ``np.linalg.norm`` squares the
    entries and overflowed to inf for finite updates above ~1e154 (a huge lr in float64)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m == 0.0 or not math.isfinite(m):
        return m
    return m * float(np.linalg.norm(x / m))


def run_probes(backend: Backend, oracle: Backend, config: TrainConfig, data: TrainingData, ckpt: Checkpoint) -> list[Probe]:
    """The backend's probe steps (clipping on and off, at half the lr and, where the oracle raised it, at the
    raised lr) on the checkpoint's first minibatch, against the oracle's (taken from the checkpoint when its
    run computed them, else computed here), and its forward pass from the checkpoint's weights."""
    refs = ckpt.probe_refs if ckpt.probe_refs is not None else probe_references(oracle, config, data, ckpt)
    if refs is None:
        return []
    X, Y = _first_batch(config, data, ckpt)
    probes = []
    for step in refs["steps"]:
        theta = refs["norm"] * PROBE_CLIP_FACTORS[step["kind"]]
        got, loss, got_norm = _probe_step(backend, config, ckpt, X, Y, theta, step["lr"])
        per_param = {}
        for k, before in ckpt.params.items():
            ref64, before64 = step["params"][k].astype(np.float64), before.astype(np.float64)
            diff = _norm(got[k].astype(np.float64) - ref64) if k in got else math.inf
            per_param[k] = [diff, _norm(ref64 - before64), _norm(ref64)]
        probes.append(Probe(ckpt.epoch, step["kind"], step["lr"], theta, loss, step["loss"], got_norm,
                            refs["norm"], per_param, rounding=step.get("rounding")))
    # The forward path is code of its own in most backends (no gradients, often a separate graph or
    # jit), and the rest of the verdict reads training losses only: a wrong one left a validation
    # perplexity 16 % off beside "agrees".
    eval_loss = _eval_loss(backend, config, ckpt, X, Y)
    for probe in probes:  # every probe starts from the same weights and state: the same forward pass
        probe.eval_loss, probe.ref_eval_loss = eval_loss, refs.get("eval_loss")
        probe.eval_rounding = refs.get("eval_rounding")
    return probes


def as_records(items: Iterable[Stretch | Probe]) -> list[dict[str, Any]]:
    return [asdict(x) for x in items]
