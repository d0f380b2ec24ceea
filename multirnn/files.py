"""Result files: written atomically, with the permissions the user's umask gives, strict JSON."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(mask)
    return mask


# Read once, before any thread exists (os.umask is process-wide).
_FILE_MODE = 0o666 & ~_umask()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old version or the new one, never half of one.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 minus the umask), not the
    0600 of the temporary file it is written through.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/Infinity in strict readers: store them as null (perplexity overflow included)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def check_writable(folder: Path) -> None:
    """Write and remove a probe file in ``folder``: an OSError if it cannot be written (a file in the way, a
    read-only or pseudo file system, no permission), before any real work is started."""
    probe = folder / f".write-test-{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()


LOCK_FILE = ".lock"
_held: dict[Path, tuple[int, bool]] = {}  # folder -> (the descriptor whose flock holds it, made its lock file)


def hold_folder(folder: Path) -> bool:
    """Hold ``folder/.lock`` until :func:`release_folder` or the process's end (the kernel drops it however the
    process ends, SIGKILL included), with this process's pid in it; False if another process holds it. Two runs
    must never share an output folder: one's ``--overwrite`` deleted the other's checkpoints mid-run. ``folder``
    must exist. Where the file system cannot lock (flock's ENOLCK on some network file systems), it runs
    unguarded, as on a system without flock, rather than refuse every run."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard
        return True
    key = folder.resolve()
    path = folder / LOCK_FILE
    if key in _held:
        fd, _ = _held[key]
        try:  # still the same lock file (a folder removed and made again under this process holds a new one)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return True
        except OSError:
            pass
        release_folder(folder)
    made = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False  # another process holds it
        return True  # no locking here: unguarded
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[key] = (fd, made)
    return True


def held_folders() -> set[Path]:
    """The folders this process holds (resolved paths)."""
    return set(_held)


def release_folder(folder: Path, forget: bool = False) -> None:
    """Let go of a folder :func:`hold_folder` took (a command run in-process, as tests do, ends holding none);
    ``forget``: also remove the lock file if this process made it (a run refused before writing anything)."""
    fd, made = _held.pop(folder.resolve(), (None, False))
    if fd is not None:
        if forget and made:
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()
        os.close(fd)  # closing the descriptor drops the flock


def folder_holder(folder: Path) -> str:
    """The pid :func:`hold_folder` wrote, or "?"."""
    try:
        return (folder / LOCK_FILE).read_text().strip() or "?"
    except OSError:
        return "?"


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Strict JSON (NaN and infinities stored as null), written atomically."""
    write_text_atomic(path, json.dumps(finite_or_none(payload), indent=1, sort_keys=True, allow_nan=False))


# The files compare and the sweep write inside their own folders, by name and place: a run's reports (a
# sweep's groups/<folder>/), checkpoints (checkpoints/, or one folder down), row and cell records with their
# logs and tasks (directly in backends/ or cells/) and atomic writes' temporaries. Records and logs count only
# when their contents say they are a run's; anything elsewhere, deeper or otherwise named is the user's.
REPORT_FILES = frozenset({"results.json", "report.md", "curves.csv", "perplexity.png", "deviation.png"})
_CHECKPOINT = re.compile(r"epoch-\d{5}\.npz")
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # write_bytes_atomic's mkstemp: ".NAME.XXXXXXXX.tmp"
_CELL_TAR = re.compile(r".+-[0-9a-f]{16}\.tar")  # a sweep cell's id: its row, then 16 hex digits


def written_by_multirnn(path: Path, folder: Path) -> bool:
    """Whether multirnn wrote ``path``, a file under ``folder`` (one of its output folders: ``backends``,
    ``cells``, ``groups`` or ``checkpoints``), by the file's name, its depth there and, for records and logs,
    its contents."""
    name, depth, kind = path.name, len(path.relative_to(folder).parts), folder.name
    if _TEMPORARY.fullmatch(name):  # beside the file it stands for
        return depth == {"backends": 1, "cells": 1, "groups": 2}.get(kind, depth) and depth <= 2
    if kind in ("backends", "cells"):
        if depth != 1:
            return False
        if name.endswith(".task.json"):
            return True
        if name.endswith(".log"):
            return _is_record(path.with_suffix(".json"))
        return name.endswith(".json") and _is_record(path)
    if kind == "groups":  # a group's folder is compare's output: its results.json says so
        return depth == 2 and name in REPORT_FILES and _is_results(path.parent / "results.json")
    if kind == "checkpoints":
        return (depth <= 2 and bool(_CHECKPOINT.fullmatch(name))) or (depth == 1 and bool(_CELL_TAR.fullmatch(name))
                                                                       and _is_checkpoint_tar(path))
    return False


def _is_checkpoint_tar(path: Path) -> bool:
    """A sweep's anchor checkpoints from a Ray node, kept as one tar of ``epoch-NNNNN.npz`` files."""
    try:
        with tarfile.open(path) as tar:
            names = [Path(m.name).name for m in tar.getmembers() if m.isfile()]
    except (OSError, tarfile.TarError):
        return False
    return bool(names) and all(_CHECKPOINT.fullmatch(n) for n in names)


def _is_results(path: Path) -> bool:
    """A compare run's results.json (as a sweep's group folder holds), not a file of that name of the user's."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and {"verdict", "backends", "config"} <= found.keys()


def _is_record(path: Path) -> bool:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # a worker's row (compare's backends/) or a sweep's cell (cells/)
    return isinstance(record, dict) and ({"name", "status"} <= record.keys() or {"id", "spec", "result"} <= record.keys())


def clear_written(folder: Path) -> None:
    """Remove the files multirnn wrote under ``folder`` (:func:`written_by_multirnn`), then the folders that
    this left empty; a user's own files, and the folders holding them, stay."""
    if not folder.is_dir():
        return
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    doomed = [p for p in files if written_by_multirnn(p, folder)]  # decided before any is removed (a log reads its record)
    emptied: set[Path] = set()
    for path in doomed:
        path.unlink(missing_ok=True)
        emptied.add(path.parent)
    for d in sorted({*emptied, folder}, key=lambda p: len(p.parts), reverse=True):
        while d != folder.parent and d.is_relative_to(folder):
            try:
                d.rmdir()  # only if empty
            except OSError:
                break
            d = d.parent
