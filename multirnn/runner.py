"""Start a worker process, follow its progress, and end it when it must end (parent side).

Used by ``compare`` (one worker after another) and by the sweep. A worker is a plain subprocess
(``python -m multirnn.worker``) in its own session, so the terminal's Ctrl-C reaches only the
parent, which then stops the worker itself. Progress arrives as JSON lines on a pipe; a worker
that sends nothing for ``stall_timeout`` seconds is taken as hung and ended. Its stdout and
stderr go to a log file beside its result, whose tail is quoted when it crashes.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import write_json_atomic
from .worker import WorkerTask

# A worker silent for this long is taken as hung (no epoch, step or stage message). Generous:
# a first epoch with compilation takes seconds, and steps report at least once a second.
DEFAULT_STALL_TIMEOUT = 600.0
# After SIGTERM, how long a worker may take before SIGKILL.
TERMINATE_GRACE = 5.0


class Stopped(Exception):  # noqa: N818  (a signal, not an error)
    """The run was stopped by a signal (SIGTERM, SIGHUP; SIGINT arrives as KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Turn these signals into :class:`Stopped` in the main thread, so that ``finally`` blocks and
    partial reports run as they do for Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    for signum in signums:
        signal.signal(signum, handler)


def signal_name(signum: int) -> str:
    """How a stop is named to the user: "Ctrl-C" for SIGINT, else the signal's name (SIGTERM, SIGHUP)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def defer_signals() -> list[int]:
    """Record SIGINT, SIGTERM and SIGHUP from now on instead of acting on them; returns the list they are
    appended to. While a report is written a signal must not lose it, and the exit status must still
    say that the run was asked to stop (128 + the first one)."""
    late: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda received, frame: late.append(received))
    return late


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM to the worker's process group, SIGKILL if it is still there after a grace period."""
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def run_worker(task: WorkerTask, on_message: Callable[[dict[str, Any]], None] | None = None,
               stall_timeout: float = DEFAULT_STALL_TIMEOUT, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one backend in a worker process and return its result record.

    ``env``: variables set for the worker on top of this process's environment (e.g. thread caps
    when several workers share the cores).

    A worker that dies without writing a result (native crash, out of memory, killed) or that
    hangs becomes a ``crashed`` record that says so. KeyboardInterrupt or :class:`Stopped` while
    it runs ends the worker, then propagates.
    """
    out_path = Path(task.out_path)
    task_path = out_path.with_suffix(".task.json")
    log_path = out_path.with_suffix(".log")
    task = _with_parent(task)
    task.save(task_path)
    read_fd, write_fd = os.pipe()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "multirnn.worker", str(task_path), str(write_fd)],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    os.close(write_fd)
    hung = False
    buffer = b""
    sel = selectors.DefaultSelector()
    sel.register(read_fd, selectors.EVENT_READ)
    last = time.monotonic()
    try:
        while True:
            if sel.select(timeout=0.5):
                chunk = os.read(read_fd, 65536)
                if not chunk:  # the worker closed the pipe: it has exited
                    break
                last = time.monotonic()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip() and on_message is not None:
                        on_message(json.loads(line))
            elif proc.poll() is not None:
                break
            elif time.monotonic() - last > stall_timeout:
                hung = True
                terminate(proc)
                break
        proc.wait()
    except BaseException:
        terminate(proc)
        _tidy(task_path, log_path)  # stopped: no work file left behind, nor a log of nothing
        raise
    finally:
        sel.close()
        os.close(read_fd)
    result: dict[str, Any]
    if out_path.exists() and not hung:
        result = json.loads(out_path.read_text())
        if result.get("lockstep") == "pending":  # died during the re-anchored checks
            result.update(status="crashed", lockstep=None,
                          error=f"the worker died during the re-anchored checks ({_how(proc.returncode)})")
    else:
        code = proc.returncode
        if hung:
            error = f"hung: no progress for {stall_timeout:g} s, so the worker was ended"
        else:
            error = f"worker process died without a result ({_how(code)}); a native crash, abort or out of memory"
        tail = _tail(log_path)
        result = crashed_record(task.name, task.backend or task.name, task.impl,
                                error + (f"; its last output:\n{tail}" if tail else ""))
        write_json_atomic(out_path, result)
    result["exit_code"] = proc.returncode
    _tidy(task_path, log_path)
    return result


def _tidy(task_path: Path, log_path: Path) -> None:
    """Remove the worker's task file, and its log when the worker printed nothing."""
    task_path.unlink(missing_ok=True)
    if log_path.exists() and log_path.stat().st_size == 0:
        log_path.unlink()


def _installed(backend: str) -> str | None:
    """The framework's installed version, read without importing it, as the table shows it (a row whose worker
    left no record still names what it ran on)."""
    from .info import installed_version

    return installed_version(backend)  # None for a third-party backend


def crashed_record(name: str, backend: str, impl: str, error: str) -> dict[str, Any]:
    """The record of a row whose worker produced none (died, hung, interrupted, never ran)."""
    return {"name": name, "backend": backend, "impl": impl, "status": "crashed", "framework_version": _installed(backend),
            "error": error}


def refused_record(task: WorkerTask) -> dict[str, Any] | None:
    """The ``unsupported`` record of a built-in layer that cannot compute the task's model, decided
    without a worker (the rules are framework-neutral, :mod:`multirnn.backends.layer_limits`); None
    when the row must run (its worker refuses anything these rules do not know)."""
    from .backends import refusal
    from .config import TrainConfig

    backend = task.backend or task.name
    error = refusal(backend, task.impl, TrainConfig(**task.config).model)
    if error is None:
        return None
    return {"name": task.name, "backend": backend, "impl": task.impl, "status": "unsupported",
            "framework_version": _installed(backend), "error": error}


def interrupted_record(name: str, backend: str, impl: str, how: str) -> dict[str, Any]:
    """The record of a row that was still running when the user stopped the run (not a crash)."""
    return {"name": name, "backend": backend, "impl": impl, "status": "interrupted",
            "framework_version": _installed(backend), "error": f"interrupted ({how}) before it finished"}


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})" if -code in signal.Signals._value2member_map_ else f"killed by signal {-code}"
    return f"exit code {code}"


def _with_parent(task: WorkerTask) -> WorkerTask:
    from dataclasses import replace

    return replace(task, parent_pid=os.getpid(), sys_path=[p or os.getcwd() for p in sys.path])


class _PipeSafe:
    """A text stream that goes quiet once its reader has gone away (``| head``), so that the command
    goes on to write its results and report files: a progress line to a closed stderr had ended a
    comparison with nothing written, and nothing to resume."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def _silence(self) -> None:
        # the descriptor points at /dev/null from now on: buffered text and the interpreter's last flush go there
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def exit_with(main: Callable[[], int]) -> None:
    """``sys.exit(main())`` for a command's ``__main__``, its output quiet once the reader went away
    (``python -m multirnn | head -1`` printed a BrokenPipeError traceback, and compare piped into ``head``
    stopped without its results): the work goes on, and the command's own exit status stands."""
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    code = main()
    sys.stdout.flush()
    sys.exit(code)
