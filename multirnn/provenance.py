"""Which multirnn code produced a result: its version and a digest of the package's own files.

The version string alone does not change between releases (or in a developer's checkout), so a
resumed compare run or a sweep cell found again could mix results of old and new code. The digest
covers every file the package ships (its modules and its bundled texts), so a changed line makes
another code version, and a cached result from the old one is never taken for the new one's.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from . import __version__

_PACKAGE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``"<version>+<12 hex digits>"``: the version and a sha256 of the package's files (paths and
    bytes, in sorted order; compiled caches left out), computed once per process."""
    h = hashlib.sha256()
    for path in sorted(p for p in _PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and p.suffix not in (".pyc", ".pyo")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"
