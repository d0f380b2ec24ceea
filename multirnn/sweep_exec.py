"""Where the sweep's cells run: a local pool of worker processes, or Ray tasks.

Both executors run a cell the same way: :func:`multirnn.runner.run_worker` starts the ordinary
worker process (``python -m multirnn.worker``), so a framework that segfaults, aborts or hangs
takes down one worker process and becomes a ``crashed`` record, never the pool thread or the Ray
worker. Both take a :class:`CellJob` and hand back ``(job, outcome, error)`` from :meth:`poll`.

On Ray nothing is assumed shared between nodes: the prepared data and the anchor's checkpoints
travel as bytes through Ray's object store (put once, passed to every task that needs them), a
task unpacks them into a node-local temporary folder, and its result -- plus, for an anchor, its
checkpoint folder as a tar archive -- travels back to the driver, which writes every file.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import io
import logging
import os
import queue
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import blas
from .lockstep import list_checkpoints
from .progress import backend_status
from .runner import TERMINATE_GRACE, run_worker
from .worker import WorkerTask

RAY_HINT = "pip install 'multirnn[ray]'"
# Seconds a TCP connection to --address may take: Ray itself retries an unreachable cluster for
# minutes, printing only its own log lines.
CONNECT_TIMEOUT = 5.0


def usable_cores() -> int:
    """CPUs this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps every framework's CPU thread pools at ``threads``.

    OpenBLAS/MKL/OpenMP (NumPy, torch's intra-op pool, MXNet's operators), TensorFlow's intra- and
    inter-op pools and MXNet's engine workers honour a count; XLA (JAX) has no count to set, only
    Eigen multi-threading on or off, so it is switched off for one thread and left alone otherwise.
    """
    n = str(max(1, int(threads)))
    env = {k: n for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                          "TF_NUM_INTEROP_THREADS", "MXNET_CPU_WORKER_NTHREADS")}
    if int(n) == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:  # keep the user's flags (ISA caps among them)
            env["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


@dataclass
class CellJob:
    """One attempt at one cell, with the driver's files (a Ray task gets their bytes instead)."""

    cell_id: str
    task: WorkerTask
    data_path: str
    eval_path: str | None
    anchor_id: str | None
    anchor_dir: str | None  # the anchor's checkpoint folder (or folder.tar); None: no re-anchored checks
    checkpoint_dir: str | None  # an anchor writes its checkpoints here (local) / its tar beside it (Ray)
    attempt: int
    num_epochs: int
    # Local pool only: called with each of the worker's progress messages, in the pool's thread.
    listener: Callable[[dict[str, Any]], None] | None = None


def pack_dir(directory: str | Path) -> bytes:
    """The checkpoint files of a folder as an uncompressed tar archive (npz is incompressible)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in list_checkpoints(directory):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack(data: bytes, directory: str | Path) -> None:
    """Extract an archive made by :func:`pack_dir` (plain files only)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        try:
            tar.extractall(directory, filter="data")
        except TypeError:  # Python before 3.10.12 / 3.11.4: no filters (the archive is our own)
            tar.extractall(directory)


def anchor_folder(path: str | None) -> str | None:
    """A checkpoint folder for a local worker: the folder itself, or its tar (from Ray) extracted."""
    if path is None:
        return None
    folder, tar = Path(path), Path(path + ".tar")
    if not list_checkpoints(folder) and tar.is_file():
        partial = Path(path + ".partial")  # extracted aside, then renamed: never half a folder
        shutil.rmtree(partial, ignore_errors=True)
        unpack(tar.read_bytes(), partial)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    return str(folder) if list_checkpoints(folder) else None


def anchor_bytes(path: str | None) -> bytes | None:
    """The same checkpoints as bytes for a Ray task: the tar, or the folder packed."""
    if path is None:
        return None
    tar = Path(path + ".tar")
    if tar.is_file():
        return tar.read_bytes()
    return pack_dir(path) if list_checkpoints(path) else None


class _Cancelled(Exception):
    pass


class LocalExecutor:
    """``jobs`` worker processes at a time, each driven by a pool thread (a thread only waits on
    its worker's pipe: the work happens in the worker process). ``threads=None`` leaves the
    frameworks' thread pools as they are (one worker at a time has every core)."""

    name = "local"
    running_word = "running"

    def __init__(self, jobs: int, threads: int | None, stall_timeout: float) -> None:
        self.slots, self.threads, self.stall_timeout = jobs, threads, stall_timeout
        self.env = thread_env(threads) if threads else None
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._unpacking = threading.Lock()  # dependents of one anchor may start together
        self._futures: dict[cf.Future, CellJob] = {}
        self.fraction: dict[str, float] = {}  # cell id -> share done, from the worker's messages
        # Daemon threads: a driver that is stopped must not wait for them (its workers die with it).
        self._threads = [threading.Thread(target=self._loop, name=f"multirnn-sweep-{i}", daemon=True)
                         for i in range(jobs)]
        for t in self._threads:
            t.start()

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "jobs": self.slots, "threads": self.threads, "host": socket.gethostname()}

    def concurrency(self, node: str | None) -> int:
        return self.slots

    def node_cpus(self, node: str | None) -> int:
        return usable_cores()

    def submit(self, job: CellJob) -> None:
        fut: cf.Future = cf.Future()
        self._futures[fut] = job
        self.fraction[job.cell_id] = 0.0
        self._queue.put((job, fut))

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def poll(self, timeout: float) -> list[tuple[CellJob, dict[str, Any] | None, BaseException | None]]:
        if not self._futures:
            time.sleep(min(timeout, 0.05))
            return []
        done, _ = cf.wait(list(self._futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in done:
            job = self._futures.pop(fut)
            self.fraction.pop(job.cell_id, None)
            exc = fut.exception()
            out.append((job, None if exc else fut.result(), exc))
        return out

    def cancel(self) -> None:
        """End the workers in flight (each at its next message; any left die with this process)."""
        self._cancel.set()
        cf.wait(list(self._futures), timeout=TERMINATE_GRACE + 2.0)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put((None, None))

    def _loop(self) -> None:
        while True:
            job, fut = self._queue.get()
            if job is None:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._run(job))
            except BaseException as exc:  # noqa: BLE001  (handed to the driver, which records it)
                fut.set_exception(exc)

    def _run(self, job: CellJob) -> dict[str, Any]:
        if self._cancel.is_set():
            raise _Cancelled("stopped before it started")
        with self._unpacking:
            anchor = anchor_folder(job.anchor_dir)
        task = dataclasses.replace(job.task, anchor_dir=anchor, checkpoint_dir=job.checkpoint_dir)
        if job.checkpoint_dir:  # an earlier, interrupted attempt may have left some
            shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
            Path(job.checkpoint_dir + ".tar").unlink(missing_ok=True)

        def on_message(msg: dict[str, Any]) -> None:
            if self._cancel.is_set():
                raise _Cancelled("stopped")  # run_worker ends the worker and re-raises
            if job.listener is not None:
                job.listener(msg)
            done, _ = backend_status(msg, job.num_epochs)
            if msg.get("kind") == "lockstep" and msg.get("total"):
                self.fraction[job.cell_id] = 0.8 + 0.2 * msg["done"] / msg["total"]
            elif done is not None:
                self.fraction[job.cell_id] = 0.8 * done / max(job.num_epochs, 1)

        start = time.perf_counter()
        raw = run_worker(task, on_message, self.stall_timeout, self.env)
        return {"raw": raw, "node": "local", "host": socket.gethostname(), "wall_seconds": time.perf_counter() - start}


def close_executor(executor: Any, late: list[int], say: Callable[[str], None], poll: float = 0.2) -> bool:
    """Close ``executor`` in a helper thread, so a signal still reaches this one; ``late`` is the list
    :func:`multirnn.runner.defer_signals` fills. One signal waits for the close (the aggregate is written
    after it); a second abandons a close that hangs -- Ray's shutdown can, and with the signals deferred
    only SIGKILL ended it, losing the aggregate. Returns False if the close was abandoned: the caller
    must then leave with ``os._exit``, as an exit hook would wait for the same shutdown again."""
    failed: list[BaseException] = []

    def close() -> None:
        try:
            executor.close()
        except BaseException as exc:  # noqa: BLE001  (said below: the aggregate is still written)
            failed.append(exc)

    closer = threading.Thread(target=close, name="multirnn-executor-close", daemon=True)
    closer.start()
    hinted = False
    while closer.is_alive():
        closer.join(poll)
        if len(late) >= 2:
            say("second signal: no longer waiting for the executor to close; writing the aggregate")
            return False
        if late and not hinted and closer.is_alive():
            say("waiting for the executor to close, then the aggregate is written (a second signal stops waiting)")
            hinted = True
    if failed:
        say(f"the executor did not close cleanly ({type(failed[0]).__name__}: {failed[0]}); every cell had ended")
    return True


# --- Ray ---------------------------------------------------------------------------------------------


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port that ``ray.init(address)`` connects to: ``host:port``, ``[v6]:port``, or
    either after ``ray://`` (the Ray Client server). None for what only Ray resolves (``auto``, ``local``)."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)/?", address.strip())
    return (m.group(1), int(m.group(2))) if m else None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast when nothing listens at --address (before importing ray, which would retry for minutes).

    Raises:
        ConnectionError: the host:port does not accept a TCP connection within ``timeout`` seconds.
    """
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    if not 0 < port < 65536:
        raise ConnectionError(f"{port} is not a port number")
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc) or type(exc).__name__
        raise ConnectionError(f"cannot connect to {host}:{port} ({reason}); is a Ray cluster's head running "
                              "there (ray start --head)?") from None


def ray_cell(payload: dict[str, Any], data: bytes, eval_data: bytes | None, anchor: bytes | None) -> tuple[dict[str, Any], bytes | None]:
    """The Ray task: one cell in a worker process on whichever node Ray chose.

    Args:
        payload: ``task`` (WorkerTask fields), ``saves_checkpoints``, ``stall_timeout``, ``env``.
        data: the prepared data file's bytes (object store).
        eval_data: the evaluation text's token ids (.npy bytes), if any.
        anchor: the anchor's checkpoints as a tar archive (object store), if any.

    Returns:
        The outcome (worker record, node id, host, wall time) and, for an anchor that trained, its
        checkpoints as a tar archive (a second object-store return, handed to the dependents).
    """
    import ray  # on the Ray worker

    # Decided on this node, for this node's CPU: the driver's environment does not reach a cluster
    # started by `ray start`, and another node's OpenBLAS may pick another core.
    blas.name_openblas_core()
    _remove_orphaned_cell_folders()
    tmp = Path(tempfile.mkdtemp(prefix=f"{CELL_FOLDER_PREFIX}{os.getpid()}-"))
    try:
        (tmp / "data.npz").write_bytes(data)
        eval_path = None
        if eval_data is not None:
            eval_path = tmp / "eval.npy"
            eval_path.write_bytes(eval_data)
        anchor_dir = None
        if anchor:
            anchor_dir = tmp / "anchor"
            unpack(anchor, anchor_dir)
        ckpt_dir = tmp / "checkpoints" if payload["saves_checkpoints"] else None
        fields = dict(payload["task"])
        fields.update(out_path=str(tmp / "result.json"), data_path=str(tmp / "data.npz"),
                      eval_path=str(eval_path) if eval_path else None, anchor_dir=str(anchor_dir) if anchor_dir else None,
                      checkpoint_dir=str(ckpt_dir) if ckpt_dir else None)
        start = time.perf_counter()
        raw = run_worker(WorkerTask(**fields), None, payload["stall_timeout"], payload["env"])
        packed = pack_dir(ckpt_dir) if ckpt_dir and list_checkpoints(ckpt_dir) else None
        from .compare import machine_info  # NumPy and the standard library only

        # the node's own platform, CPU and ISA: the group reports name the machine their rows ran on
        outcome = {"raw": raw, "node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                   "wall_seconds": time.perf_counter() - start, "machine": machine_info()}
        return outcome, packed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CELL_FOLDER_PREFIX = "multirnn-cell-"


def _remove_orphaned_cell_folders() -> None:
    """Remove the cell folders of Ray workers that are gone: a task Ray cancels (the driver stopped) or
    kills never reaches its ``finally``. Each folder is named after the process that made it."""
    for folder in Path(tempfile.gettempdir()).glob(f"{CELL_FOLDER_PREFIX}*-*"):
        pid = folder.name[len(CELL_FOLDER_PREFIX):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to clean
        return True
    return True


class RayExecutor:
    """Each cell a Ray task declaring ``threads`` CPUs; Ray decides where and when it runs."""

    name = "ray"
    running_word = "in flight"  # submitted to Ray: running, or queued by Ray's scheduler

    def __init__(self, address: str | None, threads: int, stall_timeout: float, jobs: int | None) -> None:
        import ray

        self.ray, self.threads, self.stall_timeout, self.address = ray, threads, stall_timeout, address
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:  # a local cluster for this run only ("local": never attach to a stray one by accident)
            ray.init(address="local", num_cpus=(jobs or max(1, usable_cores() // threads)) * threads,
                     include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        self._remote = ray.remote(ray_cell).options(num_cpus=threads, num_returns=2, max_retries=0,
                                                    scheduling_strategy="SPREAD")
        self.env = thread_env(threads)
        self._nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        biggest = max((int(n.get("Resources", {}).get("CPU", 0)) for n in self._nodes.values()), default=0)
        if biggest < threads:  # Ray would queue every task forever
            ray.shutdown()
            raise RuntimeError(f"no node of the cluster has {threads} CPUs for a cell (the largest has {biggest}); "
                               "lower --threads")
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # Keep Ray's queue fed (twice what fits) without handing it the whole sweep: a stopped
        # driver then has only these in flight.
        self.slots = max(1, cpus // threads) * 2
        self._refs: dict[Any, tuple[CellJob, Any]] = {}
        self._puts: dict[str, Any] = {}  # file -> object ref (data, eval ids, anchors): put once
        self.fraction: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        nodes = [{"node": k, "host": n.get("NodeManagerHostname"), "cpus": n.get("Resources", {}).get("CPU")}
                 for k, n in self._nodes.items()]
        return {"executor": "ray", "address": self.address or "local", "threads": self.threads, "nodes": nodes}

    def concurrency(self, node: str | None) -> int:
        """How many cells could share that node at once."""
        return max(1, self.node_cpus(node) // self.threads)

    def node_cpus(self, node: str | None) -> int:
        """The CPUs Ray counts on that node."""
        n = self._nodes.get(node or "")
        return max(1, int((n or {}).get("Resources", {}).get("CPU", 1)))

    @property
    def in_flight(self) -> int:
        return len(self._refs)

    def _put(self, key: str, make: Any) -> Any:
        if key not in self._puts:
            value = make()
            self._puts[key] = None if value is None else self.ray.put(value)
        return self._puts[key]

    def remember_anchor(self, anchor_path: str, ref: Any) -> None:
        self._puts["anchor:" + anchor_path] = ref

    def submit(self, job: CellJob) -> None:
        payload = {"task": dataclasses.asdict(job.task), "saves_checkpoints": bool(job.checkpoint_dir),
                   "stall_timeout": self.stall_timeout, "env": self.env}
        data = self._put(job.data_path, lambda: Path(job.data_path).read_bytes())
        ev = self._put(job.eval_path, lambda: Path(job.eval_path).read_bytes()) if job.eval_path else None
        anchor = self._put("anchor:" + job.anchor_dir, lambda: anchor_bytes(job.anchor_dir)) if job.anchor_dir else None
        result_ref, ckpt_ref = self._remote.remote(payload, data, ev, anchor)
        self._refs[result_ref] = (job, ckpt_ref)

    def poll(self, timeout: float) -> list[tuple[CellJob, dict[str, Any] | None, BaseException | None]]:
        if not self._refs:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        out = []
        for ref in ready:
            job, ckpt_ref = self._refs.pop(ref)
            try:
                outcome = dict(self.ray.get(ref))
            except self.ray.exceptions.RayError as exc:
                out.append((job, None, exc))
                continue
            if job.checkpoint_dir:
                try:
                    packed = self.ray.get(ckpt_ref)
                except self.ray.exceptions.RayError:  # lost with its node: dependents run without anchor
                    packed = None
                outcome["checkpoints"] = packed
                if packed:
                    self.remember_anchor(job.checkpoint_dir, ckpt_ref)  # dependents get the object, no re-put
            out.append((job, outcome, None))
        return out

    def cancel(self) -> None:
        for ref in list(self._refs):
            with contextlib.suppress(Exception):  # already finished, or gone with its node
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a local instance ends with this process anyway
            self.ray.shutdown()
