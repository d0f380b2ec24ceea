"""Result files: written atomically, with the permissions the user's umask gives, strict JSON."""

from __future__ import annotations

import json
import math
import os
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


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Strict JSON (NaN and infinities stored as null), written atomically."""
    write_text_atomic(path, json.dumps(finite_or_none(payload), indent=1, sort_keys=True, allow_nan=False))


# What compare and the sweep write inside their own folders (results, logs, task files, checkpoints,
# reports, plots, atomic writes' temporaries): --overwrite removes these and nothing else.
WRITTEN_SUFFIXES = (".json", ".jsonl", ".log", ".npz", ".npy", ".md", ".csv", ".png", ".tmp")


def clear_written(folder: Path) -> None:
    """Remove the files multirnn writes (:data:`WRITTEN_SUFFIXES`) under ``folder``, then the folders that
    this left empty; a user's own files, and the folders holding them, stay."""
    if not folder.is_dir():
        return
    emptied: list[Path] = []
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
        if path.is_file() and not path.is_symlink() and path.suffix in WRITTEN_SUFFIXES:
            path.unlink(missing_ok=True)
            emptied.append(path.parent)
    for d in sorted({*emptied, folder}, key=lambda p: len(p.parts), reverse=True):
        while d != folder.parent and d.is_relative_to(folder):
            try:
                d.rmdir()  # only if empty
            except OSError:
                break
            d = d.parent
