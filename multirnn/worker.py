"""One backend's training run, executed in its own (spawned) process by ``multirnn.compare``.

A separate process per backend keeps framework thread pools from interfering, lets each
framework set its environment before import, and turns a native crash (segfault, abort, out of
memory) into one failed row: the parent sees the exit code, the other backends still run.
The worker reports progress through a queue and writes its result as JSON, atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import signal
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_PREFIXES = ("time traveller", "traveller")
NUM_PREDS = 50


@dataclass
class WorkerTask:
    """Everything a worker needs; plain data so that it pickles across ``spawn``."""

    name: str
    config: dict[str, Any]
    out_path: str
    device: str = "cpu"
    mode: str = "fast"
    init: str = "shared"  # or "independent"
    init_seed: int = 0
    text: str | None = None
    eval_text: str | None = None
    label: str | None = None  # how progress names this run (default: the backend's name)
    init_dtype: str | None = None  # draw the initial weights in this dtype, then cast (default: config's)
    # Re-anchored checks (multirnn.lockstep): at the start of these epochs the run saves checkpoints
    # into checkpoint_dir (when set); afterwards it trains a stretch from each checkpoint found in
    # anchor_dir (when set) and runs the probe steps from anchor_dir or its own checkpoints.
    lockstep_epochs: tuple[int, ...] = ()
    checkpoint_dir: str | None = None
    anchor_dir: str | None = None


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old version or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """Strict JSON (NaN and infinities stored as null), written atomically."""
    write_text_atomic(path, json.dumps(_finite_or_none(payload), indent=1, sort_keys=True, allow_nan=False))


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _shapes_on_first_batch(backend: Any, params: Any, data: Any, config: Any) -> dict[str, list[int]]:
    """Run every primitive once on the first minibatch and record what comes out."""
    X, Y = next(data.train_batches(np.random.default_rng(config.seed)))
    state = backend.init_state(X.shape[0], config.num_hiddens, config.dtype)
    logits, _ = backend.forward(params, X, state)
    _, grads, new_state = backend.loss_and_grads(params, X, Y, state)
    shapes = {
        "one_hot": list(backend.as_numpy(backend.one_hot(X, len(data.vocab), config.dtype)).shape),
        "logits": list(backend.as_numpy(logits).shape),
        "state": list(backend.as_numpy(new_state[0]).shape),
    }
    shapes.update({f"grad_{k}": list(v.shape) for k, v in backend.params_to_numpy(grads).items()})
    return shapes


def _lockstep(backend: Any, config: Any, data: Any, task: WorkerTask, progress: Any) -> dict[str, Any]:
    """Stretches from the anchor's checkpoints and probe steps (see :mod:`multirnn.lockstep`)."""
    import time

    from . import lockstep
    from .backends.numpy_backend import NumpyBackend

    start = time.perf_counter()
    source = task.anchor_dir or task.checkpoint_dir
    paths = lockstep.list_checkpoints(source) if source else []
    oracle = NumpyBackend()
    stretches, probes = [], []
    for i, path in enumerate(paths, 1):
        ckpt = lockstep.load_checkpoint(path)
        if task.anchor_dir:
            stretches.append(lockstep.run_stretch(backend, config, data, ckpt))
        probes += lockstep.run_probes(backend, oracle, config, data, ckpt)
        progress("lockstep", done=i, total=len(paths), epoch=ckpt.epoch)
    return {"stretches": lockstep.as_records(stretches), "probes": lockstep.as_records(probes),
            "seconds": time.perf_counter() - start, "source": source}


def run(task: WorkerTask, queue: Any) -> None:
    """Entry point of the worker process: train ``task.name`` and write its result JSON."""
    # Ctrl-C goes to the whole process group; the parent decides, and terminates us if needed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from . import harness, lockstep
    from .backends.numpy_backend import NumpyBackend
    from .config import TrainConfig
    from .data import encode
    from .errors import BackendUnavailableError, GPUUnavailableError, TrainingDivergedError
    from .params import init_params

    result: dict[str, Any] = {"name": task.name, "status": "crashed", "framework_version": None, "error": None}

    def progress(kind: str, **info: Any) -> None:
        if queue is not None:
            queue.put({"kind": kind, "name": task.name, **info})

    try:
        config = TrainConfig(**task.config)
        try:
            from .backends import get_backend

            backend = get_backend(task.name, device=task.device, mode=task.mode)
        except (BackendUnavailableError, GPUUnavailableError) as exc:
            result.update(status="unavailable", error=str(exc))
            return
        result["framework_version"] = backend.version()
        data = harness.prepare_data(config, task.text)
        numpy_params = {
            k: v.astype(config.dtype)
            for k, v in init_params(len(data.vocab), config.num_hiddens, task.init_seed, task.init_dtype or config.dtype).items()
        }
        result["shapes"] = _shapes_on_first_batch(backend, backend.params_from_numpy(numpy_params), data, config)
        progress("start", num_epochs=config.num_epochs)

        def on_epoch(epoch: int, history: harness.History) -> None:
            progress("epoch", epoch=epoch, perplexity=history.perplexity[-1], tokens_per_sec=history.tokens_per_sec[-1])

        save_to = task.checkpoint_dir
        oracle = NumpyBackend()

        def save(ckpt: harness.Checkpoint) -> None:
            refs = lockstep.probe_references(oracle, config, data, ckpt)
            lockstep.save_checkpoint(save_to, dataclasses.replace(ckpt, probe_refs=refs))

        try:
            trained = harness.train(
                backend, config, data, params=numpy_params, callback=on_epoch,
                checkpoint_epochs=task.lockstep_epochs if save_to else (), on_checkpoint=save if save_to else None,
            )
            history, params = trained.history, trained.params
            result["status"] = "ok"
        except TrainingDivergedError as exc:
            history, params = exc.history, None
            result.update(status="diverged", error=str(exc), diverged_epoch=exc.epoch, diverged_step=exc.step)
        result.update(history.to_dict())
        rates = history.tokens_per_sec[1:] or history.tokens_per_sec
        result["tokens_per_sec_median"] = float(np.median(rates)) if rates else None
        result["train_seconds"] = float(sum(history.epoch_seconds))
        if params is not None:
            result["samples"] = {p: harness.predict(backend, params, data.vocab, p, NUM_PREDS) for p in SAMPLE_PREFIXES}
            if task.eval_text:
                ids = encode(task.eval_text, data.vocab)
                result["eval_perplexity"] = harness.evaluate_text_perplexity(
                    backend, params, ids, config.num_hiddens, config.num_steps, config.batch_size, config.dtype
                )
        if task.lockstep_epochs and task.name != "numpy":
            result["lockstep"] = _lockstep(backend, config, data, task, progress)
    except Exception as exc:  # a Python-level crash: record it, the row says "crashed"
        result.update(status="crashed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    finally:
        result["peak_rss_mb"] = peak_rss_mb()
        write_json_atomic(task.out_path, result)
        progress("done", status=result["status"])


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/Infinity in strict readers: store them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj
