"""One backend's training run in its own process: ``python -m multirnn.worker TASK.json PROGRESS_FD``.

A separate process per backend keeps framework thread pools from interfering, lets each
framework set its environment before import, and turns a native crash (segfault, abort, out of
memory) into one failed row: the parent sees the exit code, the other backends still run.

The worker reads its :class:`WorkerTask` from a JSON file and the prepared data from the file
the parent wrote (so a text is tokenised once per run, not once per backend), reports progress
as JSON lines on the file descriptor it is given, and writes its result JSON atomically: once
after the free run, again when the re-anchored checks are done. It dies with its parent
(Linux ``PR_SET_PDEATHSIG``, and a watchdog thread elsewhere): no worker outlives a killed run.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .allocator import keep_freed_memory
from .files import finite_or_none, write_json_atomic, write_text_atomic  # noqa: F401  (re-exported)

SAMPLE_PREFIXES = ("time traveller", "traveller")
NUM_PREDS = 50
# d2l ed. 2's chapter (9.5) continues 'it has' for 20 characters; ed. 1's (8.5) the two above for 50
ED2_SAMPLE_PREFIXES = ("it has",)
ED2_NUM_PREDS = 20
# Mid-epoch progress messages at most this often (they also tell the parent the worker is alive).
HEARTBEAT_SECONDS = 1.0


@dataclass
class WorkerTask:
    """Everything a worker needs; plain data, saved as JSON for the worker process."""

    name: str  # the row's label: the backend, or backend/impl for the framework's own layers
    config: dict[str, Any]
    out_path: str
    data_path: str  # the prepared data (multirnn.harness.TrainingData.save)
    backend: str | None = None  # registry id or package.module:Class (default: name)
    impl: str = "scratch"
    device: str = "cpu"
    mode: str = "fast"
    init: str = "shared"  # shared | independent (d2l's init, own seed) | framework (the layer's own initialisers)
    init_seed: int = 0
    extra_seeds: tuple[int, ...] = ()  # statistical verdicts: train again from these seeds, keep the final perplexities
    eval_path: str | None = None  # token ids of the evaluation text (.npy), under the training vocabulary
    label: str | None = None  # how progress names this run (default: the backend's name)
    prefixes: tuple[str, ...] = SAMPLE_PREFIXES
    num_preds: int = NUM_PREDS
    # Re-anchored checks (multirnn.lockstep): at the start of these epochs the run saves checkpoints
    # into checkpoint_dir (when set); afterwards it trains a stretch from each checkpoint found in
    # anchor_dir (when set) and runs the probe steps from anchor_dir or its own checkpoints.
    lockstep_epochs: tuple[int, ...] = ()
    checkpoint_dir: str | None = None
    anchor_dir: str | None = None
    # Set when the anchor still trains beside this row: a JSON file the parent writes once it has ended,
    # {"anchor": its checkpoint folder, or null}; the re-anchored checks wait for it (the free run does not).
    anchor_wait: str | None = None
    parent_pid: int | None = None
    sys_path: list[str] = field(default_factory=list)  # the parent's import path (third-party backends)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> WorkerTask:
        d = json.loads(Path(path).read_text())
        d["prefixes"] = tuple(d.get("prefixes") or ())
        d["lockstep_epochs"] = tuple(d.get("lockstep_epochs") or ())
        d["extra_seeds"] = tuple(d.get("extra_seeds") or ())
        return cls(**d)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    On Linux /proc/self/status's VmHWM: ru_maxrss keeps the high-water mark of the process before its
    exec, i.e. of the forked copy of the parent, so every worker showed at least compare's own memory
    (229 MB for a NumPy row once the parent had imported torch for a third-party backend; 45 MB without).
    Elsewhere ru_maxrss (in KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            kib = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)
        if kib is not None:
            return kib / 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class Channel:
    """JSON lines to the parent over a pipe; a closed pipe (parent gone) ends the worker."""

    def __init__(self, fd: int | None, name: str) -> None:
        self.fd, self.name = fd, name

    def __call__(self, kind: str, **info: Any) -> None:
        if self.fd is None:
            return
        line = json.dumps(finite_or_none({"kind": kind, "name": self.name, **info})) + "\n"
        try:
            os.write(self.fd, line.encode())
        except (BrokenPipeError, OSError):
            os._exit(3)  # nobody is listening any more: the run was stopped


def die_with_parent(parent_pid: int | None) -> None:
    """End this process when its parent ends, however the parent ends (SIGKILL included)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if parent_pid is None:
        return
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(3)

    def watch() -> None:  # for systems without PR_SET_PDEATHSIG
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="multirnn-parent-watch", daemon=True).start()


def _shapes_on_first_batch(backend: Any, params: Any, data: Any, config: Any) -> dict[str, list[int]]:
    """Run every primitive once on the first minibatch and record what comes out."""
    X, Y = next(data.train_batches(np.random.default_rng(config.seed)))
    state = backend.init_state(X.shape[0], config.num_hiddens, config.dtype)
    logits, _ = backend.forward(params, X, state)
    _, grads, new_state = backend.loss_and_grads(params, X, Y, state)
    shapes = {
        "one_hot": list(backend.as_numpy(backend.one_hot(X, len(data.vocab), config.dtype)).shape),
        "logits": list(backend.as_numpy(logits).shape),
    }
    shapes.update({f"state_{n}": list(backend.as_numpy(s).shape) for n, s in zip(config.model.state_names(), new_state)})
    shapes.update({f"grad_{k}": list(v.shape) for k, v in backend.params_to_numpy(grads).items()})
    return shapes


def _lockstep(backend: Any, config: Any, data: Any, task: WorkerTask, progress: Channel) -> dict[str, Any]:
    """Stretches from the anchor's checkpoints and probe steps (see :mod:`multirnn.lockstep`)."""
    from . import lockstep
    from .backends.numpy_backend import NumpyBackend

    start = time.perf_counter()
    source = task.anchor_dir or task.checkpoint_dir
    paths = lockstep.list_checkpoints(source) if source else []
    if task.anchor_dir and not paths:
        # an anchor is named only when it left checkpoints: gone now, they were removed under this run (a second
        # run's --overwrite did it before folders were held), and the row must not pass on its free run alone
        raise lockstep.CheckpointError(f"the anchor's checkpoints in {task.anchor_dir!r} are gone (the folder is "
                                       "missing or empty): removed while this run used them? Start the run again")
    oracle = NumpyBackend(model=config.model)
    stretches, probes = [], []
    progress("stage", text="re-anchored checks", done=0, total=len(paths))
    for i, path in enumerate(paths, 1):
        ckpt = lockstep.load_checkpoint(path)
        if task.anchor_dir:
            stretches.append(lockstep.run_stretch(backend, config, data, ckpt))
        probes += lockstep.run_probes(backend, oracle, config, data, ckpt)
        progress("lockstep", done=i, total=len(paths), epoch=ckpt.epoch)
    # anchor: the row the others restart from (its own stretches are its free run, see verdict.py)
    return {"stretches": lockstep.as_records(stretches), "probes": lockstep.as_records(probes),
            "seconds": time.perf_counter() - start, "source": source, "anchor": not task.anchor_dir}


def _wait_for_anchor(status_path: str, progress: Channel) -> str | None:
    """Block until the parent has written the anchor's status; its checkpoint folder, or None if it left none.

    Heartbeats keep the parent's stall timer quiet meanwhile (the anchor may train for minutes)."""
    status = Path(status_path)
    if not status.exists():
        progress("stage", text="waiting for the oracle's checkpoints")
        beat = time.monotonic()
        while not status.exists():
            time.sleep(0.1)
            if time.monotonic() - beat >= HEARTBEAT_SECONDS:
                beat = time.monotonic()
                progress("heartbeat")
    return json.loads(status.read_text()).get("anchor")


def initial_params(backend: Any, config: Any, vocab_size: int, init: str, seed: int) -> dict[str, np.ndarray]:
    """The run's initial weights: d2l's (N(0, 0.01^2), biases 0) for ``shared`` and ``independent``,
    the framework layer's own initialisers for ``framework`` (d2l's where the backend has none)."""
    from .params import init_params

    if init == "framework":
        own = backend.default_params(vocab_size, config.num_hiddens, seed, config.dtype)
        if own is not None:
            return own
    return init_params(vocab_size, config.num_hiddens, seed, config.dtype, config.model)


def describe_layout(backend: Any) -> dict[str, Any] | None:
    """The framework's own parameter names and shapes beside the d2l names they map to (layers rows)."""
    layout = backend.param_layout()
    return None if layout is None else {k: list(v) if isinstance(v, tuple) else v for k, v in layout.items()}


def _final_of(backend: Any, config: Any, data: Any, params: dict[str, np.ndarray]) -> dict[str, Any]:
    """Train ``backend`` from ``params`` with ``config``: its final perplexities, or the divergence."""
    from . import agreement, harness
    from .errors import TrainingDivergedError

    try:
        h = harness.train(backend, config, data, params=params).history
    except TrainingDivergedError as exc:
        return {"seed": config.seed, "error": str(exc)}
    return {"seed": config.seed, "final_perplexity": h.perplexity[-1],
            "median_last_perplexity": agreement.robust_final(h.perplexity)}


def _seed_runs(backend: Any, config: Any, data: Any, task: WorkerTask, progress: Channel) -> list[dict[str, Any]]:
    """The same training from other seeds (initial weights and batches), final perplexities only."""
    runs = []
    for i, seed in enumerate(task.extra_seeds, 1):
        progress("stage", text=f"seed {seed} ({i}/{len(task.extra_seeds)})")
        seeded = config.replace(seed=seed)
        runs.append(_final_of(backend, seeded, data, initial_params(backend, seeded, len(data.vocab), task.init, seed)))
    return runs


def _paired_oracle_runs(backend: Any, config: Any, data: Any, task: WorkerTask,
                        progress: Channel) -> list[dict[str, Any]] | None:
    """--init framework: the NumPy oracle trained from the very weights the framework's layer drew,
    on the same batches, for the main run and every extra seed (in that order). Pairing each of the
    row's runs with the d2l model from the same start leaves only the implementation (and float32
    chaos) between them: the statistical verdict compares these pairs, while the distance from d2l's
    own N(0, 0.01^2) start is the initialisers' effect, reported beside it. None when the backend
    has no initialisers of its own (its runs already start from d2l's, like the oracle's)."""
    from .backends.numpy_backend import NumpyBackend

    V = len(data.vocab)
    first = backend.default_params(V, config.num_hiddens, task.init_seed, config.dtype)  # the main run's start
    if first is None:
        return None
    oracle = NumpyBackend(model=config.model)
    runs = []
    for i, seed in enumerate([config.seed, *task.extra_seeds]):
        progress("stage", text=f"the d2l model from the same weights, seed {seed} ({i + 1}/{len(task.extra_seeds) + 1})")
        seeded = config.replace(seed=seed)
        runs.append(_final_of(oracle, seeded, data, first if i == 0 else initial_params(backend, seeded, V, "framework", seed)))
    return runs


def run(task: WorkerTask, progress: Channel) -> None:
    """Train ``task.name`` and write its result JSON (also on a Python-level crash)."""
    from . import harness, lockstep, verdict
    from .backends import get_backend
    from .backends.numpy_backend import NumpyBackend
    from .config import TrainConfig
    from .errors import BackendUnavailableError, GPUUnavailableError, TrainingDivergedError, UnsupportedModelError

    result: dict[str, Any] = {"name": task.name, "backend": task.backend or task.name, "impl": task.impl,
                              "status": "crashed", "framework_version": None, "error": None}
    measured = False  # the framework loaded: its memory figure means something
    try:
        config = TrainConfig(**task.config)
        progress("stage", text="importing the framework")
        try:
            backend = get_backend(task.backend or task.name, impl=task.impl, device=task.device, mode=task.mode,
                                  model=config.model)
        except UnsupportedModelError as exc:
            result.update(status="unsupported", error=str(exc))
            return
        except (BackendUnavailableError, GPUUnavailableError) as exc:
            from .info import installed_version  # jax without flax: jax's version, read without importing it

            result.update(status="unavailable", error=str(exc), framework_version=installed_version(result["backend"]))
            return
        result["framework_version"] = backend.version()
        measured = True
        if named := backend.openblas_named():
            result["openblas"] = named
        result["impl"] = getattr(backend, "impl", task.impl)
        data = harness.TrainingData.load(task.data_path)
        numpy_params = initial_params(backend, config, len(data.vocab), task.init, task.init_seed)
        progress("stage", text="checking shapes")
        result["shapes"] = _shapes_on_first_batch(backend, backend.params_from_numpy(numpy_params), data, config)
        result["param_layout"] = describe_layout(backend)  # after params exist: real shapes, not symbolic ones
        # a built-in framework's fast path compiles during its first steps (the oracle, eager rows and a custom
        # backend do not, as far as anyone here knows): the progress line says why they take long
        compiles = (getattr(backend, "mode", None) == "fast" and type(backend).__module__.startswith("multirnn.backends.")
                    and getattr(backend, "framework", "numpy") != "numpy")
        progress("start", num_epochs=config.num_epochs, compiles=compiles)
        last_beat = [time.monotonic()]

        def on_epoch(epoch: int, history: harness.History) -> None:
            last_beat[0] = time.monotonic()
            progress("epoch", epoch=epoch, perplexity=history.perplexity[-1], tokens_per_sec=history.tokens_per_sec[-1],
                     seconds=history.epoch_seconds[-1])

        def on_step(epoch: int, step: int) -> None:
            now = time.monotonic()
            if now - last_beat[0] >= HEARTBEAT_SECONDS:
                last_beat[0] = now
                progress("step", epoch=epoch, step=step)

        save_to = task.checkpoint_dir
        oracle = NumpyBackend(model=config.model)

        def save(ckpt: harness.Checkpoint) -> None:
            refs = lockstep.probe_references(oracle, config, data, ckpt)
            # The verdict says when the bands cannot see broken state rules; once every rule has moved a
            # step past the band at some checkpoint that is settled, so the rest are not measured (at the
            # book run's shapes each measurement costs ~0.3 s of the anchor's time).
            seen = result.setdefault("state_effects", [])
            if not lockstep.state_rules_settled(seen, verdict.state_band(config.dtype)):
                try:
                    effects = lockstep.state_effects(oracle, config, data, ckpt)
                except Exception as exc:  # informational only: it must not cost the row its checkpoints
                    effects = None
                    result.setdefault("state_effects_error", f"{type(exc).__name__}: {exc}")
                if effects is not None:
                    seen.append({"epoch": ckpt.epoch, **effects})
            if config.dtype == "float32" and task.name == verdict.ORACLE:
                # the oracle's own steps in float64: which steps rounding alone decides (verdict.ROUNDING_FACTOR)
                try:
                    result.setdefault("rounding_stretches", []).append(
                        asdict(lockstep.rounding_stretch(oracle, config, data, ckpt)))
                except Exception as exc:  # noqa: BLE001  (without it every step is judged, as before: strict, never lax)
                    result.setdefault("rounding_stretches_error", f"{type(exc).__name__}: {exc}")
            lockstep.save_checkpoint(save_to, dataclasses.replace(ckpt, probe_refs=refs))

        try:
            trained = harness.train(
                backend, config, data, params=numpy_params, callback=on_epoch, on_step=on_step,
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
        if params is not None and (bad := harness.non_finite_params(backend, params)):
            # the last update overflowed after a finite loss: the row trained, its weights say nothing more
            # (the verdict holds it against the reference's weights: a difference where those stayed finite)
            result["non_finite_params"] = bad
            result["error"] = (f"the weights after the last update hold NaN or infinite values ({', '.join(bad)}): "
                               "no samples" + (" or evaluation perplexity" if task.eval_path else ""))
        elif params is not None:
            result["samples"] = {p: harness.predict(backend, params, data.vocab, p, task.num_preds) for p in task.prefixes}
            if task.eval_path:
                ids = np.load(task.eval_path)
                result["eval_perplexity"] = harness.evaluate_text_perplexity(
                    backend, params, ids, config.num_hiddens, config.num_steps, config.batch_size, config.dtype,
                    config.protocol)
        if task.extra_seeds:
            result["seed_runs"] = _seed_runs(backend, config, data, task, progress)
        if task.init == "framework" and task.name != "numpy":
            result["paired_oracle_runs"] = _paired_oracle_runs(backend, config, data, task, progress)
        if task.lockstep_epochs and task.name != "numpy":
            write_json_atomic(task.out_path, {**result, "peak_rss_mb": peak_rss_mb(), "lockstep": "pending"})
            if task.anchor_wait:
                task = dataclasses.replace(task, anchor_dir=_wait_for_anchor(task.anchor_wait, progress))
            result["lockstep"] = _lockstep(backend, config, data, task, progress)
    except Exception as exc:  # a Python-level crash: record it, the row says "crashed"
        result.update(status="crashed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        partial = getattr(exc, "partial_history", None)
        if partial is not None and partial.perplexity and not result.get("perplexity"):
            result.update(partial.to_dict())  # the curve up to the crash: the plots and curves.csv show it
    finally:  # a row that never got its framework measured nothing (missing, refused, or failing to import)
        result["peak_rss_mb"] = peak_rss_mb() if measured else None
        write_json_atomic(task.out_path, result)
        progress("done", status=result["status"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python -m multirnn.worker TASK.json [PROGRESS_FD]", file=sys.stderr)
        return 2
    task = WorkerTask.load(argv[0])
    die_with_parent(task.parent_pid)
    keep_freed_memory()  # before any framework allocates: no page faults from per-step buffers
    # Ctrl-C goes to the parent, which decides; it stops us with SIGTERM when it must.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for entry in reversed(task.sys_path):  # the parent's import path: third-party backends resolve the same
        if entry not in sys.path:
            sys.path.insert(0, entry)
    run(task, Channel(int(argv[1]) if len(argv) > 1 else None, task.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
