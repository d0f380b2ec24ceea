"""Backend registry: known backends are imported lazily, only when asked for.

``import multirnn`` imports no framework; ``get_backend("jax")`` imports jax, and nothing else.

Besides the built-in ids, a backend may come from outside the package: ``"package.module:Class"``
names any :class:`Backend` subclass, and installed distributions may register one under the entry
point group ``multirnn.backends`` (``name = "package.module:Class"``), then usable by that name.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any

from ..cells import Model
from ..errors import BackendUnavailableError, UnsupportedModelError
from .base import Backend
from .layer_limits import layers_unsupported

# id -> ({impl: module:class}, the framework modules it needs, the pip extra that installs them).
# "scratch" is d2l's model from scratch; "layers" the framework's own recurrent and dense layers.
_REGISTRY: dict[str, tuple[dict[str, str], tuple[str, ...], str | None]] = {
    "numpy": ({"scratch": "multirnn.backends.numpy_backend:NumpyBackend"}, ("numpy",), None),
    "torch": ({"scratch": "multirnn.backends.torch_backend:TorchBackend",
               "layers": "multirnn.backends.torch_backend:TorchLayersBackend"}, ("torch",), "torch"),
    "mxnet": ({"scratch": "multirnn.backends.mxnet_backend:MXNetBackend",
               "layers": "multirnn.backends.mxnet_backend:MXNetLayersBackend"}, ("mxnet",), "mxnet"),
    "tensorflow": ({"scratch": "multirnn.backends.tensorflow_backend:TensorFlowBackend",
                    "layers": "multirnn.backends.tensorflow_backend:TensorFlowLayersBackend"}, ("tensorflow",), "tensorflow"),
    "jax": ({"scratch": "multirnn.backends.jax_backend:JaxBackend",
             "layers": "multirnn.backends.jax_backend:JaxLayersBackend"}, ("jax",), "jax"),
}
# modules an implementation needs beyond its framework (checked without importing them, so that
# `python -m multirnn` can say so): flax's layers and optax, which flax depends on
_IMPL_MODULES: dict[tuple[str, str], tuple[str, ...]] = {("jax", "layers"): ("flax", "optax")}
BACKEND_ALIASES = {"np": "numpy", "pytorch": "torch", "mx": "mxnet", "tf": "tensorflow", "flax": "jax"}

ENTRY_POINT_GROUP = "multirnn.backends"

__all__ = ["BACKEND_ALIASES", "Backend", "BackendSpecError", "available_backends", "canonical_name", "get_backend", "impls",
           "install_hint", "is_builtin", "known_backends", "load_backend_class", "probe", "refusal"]


class BackendSpecError(ValueError):
    """A ``package.module:Class`` backend (or entry point) that cannot be used; the message says why."""


def _entry_points() -> dict[str, str]:
    """Backends registered by installed distributions: name -> ``module:Class``."""
    try:
        return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # a broken distribution's metadata must not break the registry
        return {}


def known_backends() -> list[str]:
    """Every built-in backend, installed or not (the NumPy oracle first), then registered entry points."""
    return list(_REGISTRY) + [n for n in _entry_points() if n not in _REGISTRY]


def is_builtin(name: str) -> bool:
    return name in _REGISTRY


def canonical_name(name: str) -> str:
    """Resolve an alias (``tf``, ``pytorch``...) to a backend id; ``module:Class`` specs and entry
    point names are returned as given. ValueError if unknown."""
    text = str(name).strip()
    if ":" in text:
        return text
    key = BACKEND_ALIASES.get(text.lower(), text.lower())
    if key in _REGISTRY:
        return key
    if text in _entry_points():
        return text
    raise ValueError(f"Unknown backend {name!r}. Known backends: {known_backends()}; "
                     "or name your own as package.module:ClassName.")


# Unpinned, pip resolves torch>=2.2 to a multi-GB CUDA build on Linux: the README installs the CPU wheel first.
TORCH_CPU_WHEEL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def install_hint(name: str) -> str:
    """The command that installs a backend's framework: its extra, which pip adds to an installed
    multirnn (editable checkouts included) without reinstalling it."""
    key = canonical_name(name)
    if key not in _REGISTRY:
        return f"make {key!r} importable (pip install the package that provides it)"
    extra = _REGISTRY[key][2]
    if extra is None:  # the NumPy oracle: multirnn's own dependency (multirnn itself is not on the package index)
        return "pip install numpy"
    hint = f"pip install 'multirnn[{extra}]'"
    return f"{TORCH_CPU_WHEEL} && {hint}" if extra == "torch" else hint


def load_backend_class(spec: str) -> type[Backend]:
    """Import ``package.module:Class`` (or an entry point's target) and check it is a Backend.

    Raises:
        BackendSpecError: malformed spec, missing module or class, an error while importing the
            module, or a class that is not a :class:`Backend` subclass.
    """
    target = _entry_points().get(spec, spec)
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise BackendSpecError(f"Backend spec {spec!r} is not of the form package.module:ClassName.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise BackendSpecError(f"Backend {spec!r}: no module named {exc.name!r} (is it installed, or on "
                                   "PYTHONPATH / in the current folder?).") from exc
        raise BackendSpecError(f"Backend {spec!r}: importing {module_name!r} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise BackendSpecError(f"Backend {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    except SystemExit as exc:  # a module that exits on import must not end the caller with its own status
        raise BackendSpecError(f"Backend {spec!r}: importing {module_name!r} called sys.exit({exc.code!r})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise BackendSpecError(f"Backend {spec!r}: module {module_name!r} has no attribute {class_name!r}.")
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendSpecError(f"Backend {spec!r}: {class_name} is not a subclass of multirnn.Backend.")
    if getattr(cls, "__abstractmethods__", None):
        raise BackendSpecError(f"Backend {spec!r}: {class_name} does not implement "
                               f"{', '.join(sorted(cls.__abstractmethods__))}.")
    return cls


def source_digest(name: str) -> str | None:
    """sha256 of a third-party backend's source (``package.module:Class`` or an entry point): its module's
    file and every file of the user's own code it imports, directly or through other such modules (a base
    class in another file, a helper module), so a resumed run or a sweep never keeps its results from
    before one of them changed. Files are found as an import would find them, without running them (a
    parent package's ``__init__`` runs), and named by module, not by path: a project moved or mounted
    elsewhere keeps its digest. None for a built-in backend (multirnn's own code version covers it) or a
    module without a source file. Installed packages and the standard library are not followed."""
    if canonical_name(name) in _REGISTRY:
        return None
    module_name = _entry_points().get(name, name).partition(":")[0]
    try:
        files = _own_code_files(module_name)
        if not files:
            return None
        digest = hashlib.sha256()
        for module, f in files:
            digest.update(module.encode() + b"\0" + f.read_bytes() + b"\0")
        return digest.hexdigest()
    except (Exception, SystemExit):  # noqa: BLE001  (not to be found or read: the row fails with its own message)
        return None


def _own_code_files(root: str) -> list[tuple[str, Path]]:
    """``(module name, source file)`` of the module ``root`` and of the user modules its import statements
    name, followed through them (read from the source: ``from base import MyBackend`` leaves no trace of
    ``base`` in the globals)."""
    seen: set[str] = set()
    stack, files = [root], []
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        origin = _source_of(name, own_only=name != root)
        if origin is None:
            continue
        files.append((name, origin))
        try:
            tree = ast.parse(origin.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue
        package = name if origin.name == "__init__.py" else name.rpartition(".")[0]
        stack += [n for n in _imported_names(tree, package) if n not in seen]
    return sorted(set(files))


def _source_of(name: str, own_only: bool) -> Path | None:
    """Module ``name``'s source file as an import would find it, without importing it; with ``own_only``, None
    for installed code, the standard library and multirnn (checked on the top-level package first, so no
    installed package's ``__init__`` runs) and for names that are no module (``from a import function``)."""
    try:
        top = importlib.util.find_spec(name.partition(".")[0])
        if top is None:
            return None
        where = top.origin if top.origin not in (None, "built-in", "frozen") else next(
            iter(top.submodule_search_locations or []), None)
        if own_only and (where is None or not _is_user_path(where)):
            return None
        spec = top if "." not in name else importlib.util.find_spec(name)
    except (Exception, SystemExit):  # noqa: BLE001  (a parent package failing on import, or not a package)
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin).resolve()
    return path if not own_only or _is_user_path(str(path)) else None


def _imported_names(tree: ast.AST, package: str) -> list[str]:
    """Module names a source imports (``import a.b``, ``from a import b`` as ``a`` and ``a.b``, relative ones
    resolved against ``package``); whether each was imported is for ``sys.modules`` to say."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, base] if base else parts)
            if base:
                names.append(base)
                names += [f"{base}.{a.name}" for a in node.names]
    return names


@functools.lru_cache(maxsize=1)
def library_roots() -> tuple[Path, ...]:
    """Where installed code lives: the standard library's and site-packages' folders (the base
    interpreter's too, for a venv with system packages), the user's site-packages (``pip install --user``)
    and any ``site-packages`` or ``dist-packages`` folder on ``sys.path`` (Debian's); not a backend author's."""
    paths = sysconfig.get_paths()
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    found = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    found += [base.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    found += [*_site_packages(), *(p for p in sys.path if Path(p).name in ("site-packages", "dist-packages"))]
    return tuple(sorted({Path(p).resolve() for p in found if p}))


def _site_packages() -> list[str]:
    try:
        return [*site.getsitepackages(), site.getusersitepackages()]
    except AttributeError:  # an embedded interpreter's site module may lack them
        return []


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` is in the standard library or an installed package (:func:`library_roots`)."""
    path = Path(filename).resolve()
    return any(path.is_relative_to(root) for root in library_roots())


def _installed_roots() -> tuple[Path, ...]:
    """:func:`library_roots` and multirnn itself (its code version covers it): not the user's own backend's."""
    return (*library_roots(), Path(__file__).resolve().parents[1])


def _is_user_path(origin: str) -> bool:
    """Whether ``origin`` (a file or a namespace package's folder) is the user's own code, not installed."""
    path = Path(origin).resolve()
    return path.suffix in (".py", "") and not any(path.is_relative_to(r) for r in _installed_roots())


def _importable(module: str) -> bool:
    """Cheap check that ``module`` could be imported (find_spec, no import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def impls(name: str) -> list[str]:
    """The implementations a built-in backend has (``scratch``, ``layers``)."""
    return list(_REGISTRY[canonical_name(name)][0])


def _load_class(key: str, impl: str = "scratch") -> type[Backend]:
    if key not in _REGISTRY:
        return load_backend_class(key)
    targets, frameworks, _ = _REGISTRY[key]
    if impl not in targets:
        raise UnsupportedModelError(
            f"{key} has no {impl!r} implementation (it has: {', '.join(targets)})"
            + ("; it is the oracle, written from scratch" if key == "numpy" else "")
        )
    target = targets[impl]
    missing = [m for m in frameworks if not _importable(m)]
    if missing:
        raise BackendUnavailableError(
            f"Backend {key!r} needs {', '.join(missing)}, which is not installed. Install it with: {install_hint(key)}"
        )
    if missing := [m for m in _IMPL_MODULES.get((key, impl), ()) if not _importable(m)]:
        raise BackendUnavailableError(
            f"The {key} {impl!r} implementation needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed. Install it with: {install_hint(key)}"
        )
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # mxnet 1.9 under a new numpy raises AttributeError, not ImportError
        raise BackendUnavailableError(
            f"Backend {key!r} is installed but cannot be imported ({type(exc).__name__}: {exc}). "
            f"Reinstall it with: {install_hint(key)}"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UnsupportedModelError(f"{key} has no {impl!r} implementation yet ({class_name} is missing)")
    return cls


def get_backend(name: str, impl: str = "scratch", **options: Any) -> Backend:
    """Create a backend by id or alias.

    Args:
        name: ``numpy``, ``torch``, ``mxnet``, ``tensorflow`` or ``jax`` (aliases: np, pytorch,
            mx, tf, flax), an entry point of the ``multirnn.backends`` group, or
            ``package.module:ClassName`` for any Backend subclass.
        impl: ``"scratch"`` (d2l's model written from scratch, the default) or ``"layers"`` (the
            framework's own recurrent layer); ignored for ``module:Class`` specs (the class is one).
        **options: passed to the backend's constructor: ``device``, ``mode``, ``model`` (a
            :class:`multirnn.Model`, e.g. ``Model("lstm")`` or ``TrainConfig.model``, not a cell name).

    Raises:
        ValueError: unknown name (the message lists the known ones), device or mode;
            BackendSpecError (a ValueError) for a ``module:Class`` spec that cannot be used.
        TypeError: ``model`` not a Model, or an option the constructor does not take.
        BackendUnavailableError: known, but its framework is not installed or fails to import.
        GPUUnavailableError: ``device="gpu"`` and the framework sees no GPU.
        UnsupportedModelError: no such implementation, or one that cannot compute ``model``.
    """
    return _load_class(canonical_name(name), impl)(**options)


def refusal(name: str, impl: str, model: Model) -> str | None:
    """The :class:`UnsupportedModelError` message a built-in backend's ``impl`` would raise for
    ``model``, found without importing its framework; None if it computes ``model``, or if only
    importing the class could tell (backends from outside the package)."""
    key = canonical_name(name)
    if key not in _REGISTRY or impl != "layers" or impl not in _REGISTRY[key][0]:
        return None  # the scratch backends compute every model
    reason = layers_unsupported(key, model)
    class_name = _REGISTRY[key][0][impl].split(":")[1]
    return f"{class_name} cannot compute {model.name}: {reason}" if reason else None


@functools.cache
def probe(name: str, impl: str = "scratch") -> str | None:
    """``None`` if the backend (and implementation) imports here, else a one-line reason (cached)."""
    try:
        _load_class(canonical_name(name), impl)
    except (BackendUnavailableError, BackendSpecError, UnsupportedModelError) as exc:
        return str(exc)
    return None


def available_backends() -> list[str]:
    """Backends whose framework imports here (this imports each installed framework)."""
    return [name for name in known_backends() if probe(name) is None]
