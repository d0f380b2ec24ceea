"""Backend registry: known backends are imported lazily, only when asked for.

``import multirnn`` imports no framework; ``get_backend("jax")`` imports jax, and nothing else.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

from ..errors import BackendUnavailableError
from .base import Backend

# id -> (module:class, the framework modules it needs, the pip extra that installs them)
_REGISTRY: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "numpy": ("multirnn.backends.numpy_backend:NumpyBackend", ("numpy",), None),
    "torch": ("multirnn.backends.torch_backend:TorchBackend", ("torch",), "torch"),
    "mxnet": ("multirnn.backends.mxnet_backend:MXNetBackend", ("mxnet",), "mxnet"),
    "tensorflow": ("multirnn.backends.tensorflow_backend:TensorFlowBackend", ("tensorflow",), "tensorflow"),
    "jax": ("multirnn.backends.jax_backend:JaxBackend", ("jax",), "jax"),  # flax: only the benchmark baseline
}
_ALIASES = {"np": "numpy", "pytorch": "torch", "mx": "mxnet", "tf": "tensorflow", "flax": "jax"}

__all__ = ["Backend", "available_backends", "canonical_name", "get_backend", "install_hint", "known_backends", "probe"]


def known_backends() -> list[str]:
    """Every backend multirnn knows, installed or not, the NumPy oracle first."""
    return list(_REGISTRY)


def canonical_name(name: str) -> str:
    """Resolve an alias (``tf``, ``pytorch``...) to a backend id; ValueError if unknown."""
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in _REGISTRY:
        raise ValueError(f"Unknown backend {name!r}. Known backends: {known_backends()}.")
    return key


def install_hint(name: str) -> str:
    extra = _REGISTRY[canonical_name(name)][2]
    return "pip install multirnn" if extra is None else f"pip install 'multirnn[{extra}]'"


def _importable(module: str) -> bool:
    """Cheap check that ``module`` could be imported (find_spec, no import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def _load_class(key: str) -> type[Backend]:
    target, frameworks, _ = _REGISTRY[key]
    missing = [m for m in frameworks if not _importable(m)]
    if missing:
        raise BackendUnavailableError(
            f"Backend {key!r} needs {', '.join(missing)}, which is not installed. Install it with: {install_hint(key)}"
        )
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # mxnet 1.9 under a new numpy raises AttributeError, not ImportError
        raise BackendUnavailableError(
            f"Backend {key!r} is installed but cannot be imported ({type(exc).__name__}: {exc}). "
            f"Reinstall it with: {install_hint(key)}"
        ) from exc
    return getattr(module, class_name)


def get_backend(name: str, **options: Any) -> Backend:
    """Create a backend by id or alias.

    Args:
        name: ``numpy``, ``torch``, ``mxnet``, ``tensorflow`` or ``jax`` (aliases: np, pytorch,
            mx, tf, flax).
        **options: passed to the backend's constructor, e.g. ``device="gpu"``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
        BackendUnavailableError: known, but its framework is not installed or fails to import.
        GPUUnavailableError: ``device="gpu"`` and the framework sees no GPU.
    """
    return _load_class(canonical_name(name))(**options)


@functools.lru_cache(maxsize=None)
def probe(name: str) -> str | None:
    """``None`` if the backend imports here, else a one-line reason (cached)."""
    try:
        _load_class(canonical_name(name))
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def available_backends() -> list[str]:
    """Backends whose framework imports here (this imports each installed framework)."""
    return [name for name in known_backends() if probe(name) is None]
