"""``python -m multirnn``: what this installation can run, and how to install the rest."""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
import sys

from . import __version__
from .backends import _REGISTRY, TORCH_CPU_WHEEL, install_hint, known_backends, probe

# The distribution whose version is shown for each built-in backend (the first one installed).
_DISTRIBUTIONS = {"numpy": ("numpy",), "torch": ("torch",), "mxnet": ("mxnet",),
                  "tensorflow": ("tensorflow-cpu", "tensorflow"), "jax": ("jax",)}


def may_be_installed(backend: str) -> bool:
    """Whether ``backend``'s framework may run here: a built-in backend's is installed (its metadata, read
    without importing it); a third-party backend's cannot be told without running it. compare and the
    sweep plan a row whose framework is missing as no work, and never retrain the oracle's checkpoints for
    it on a resume: nobody could use them."""
    return backend not in _REGISTRY or backend == "numpy" or installed_version(backend) is not None


def installed_version(name: str) -> str | None:
    for dist in _DISTRIBUTIONS.get(name, ()):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def backend_rows() -> list[dict[str, str | bool | None]]:
    """One row per known backend: installed version, whether it imports here, how to install it, why not."""
    rows = []
    for name in known_backends():
        reason = probe(name)  # imports the framework: the only honest "can it run" check
        # the layers implementation may need more than the framework (flax for jax): said where it does
        layers = probe(name, "layers") if reason is None and "layers" in _REGISTRY.get(name, ({},))[0] else None
        rows.append({"backend": name, "version": installed_version(name) if name in _REGISTRY else "(entry point)",
                     "runs": reason is None, "install": install_hint(name), "problem": reason,
                     "layers_problem": layers})
    return rows


def backend_table() -> str:
    rows = backend_rows()
    lines = [f"{'backend':<12} {'installed':<14} {'runs here':<10} install with", "-" * 78]
    for r in rows:
        # torch's CPU-wheel step goes under the table, so that every row stays one short line.
        install = r["install"]
        if r["backend"] == "torch":
            install = "pip install 'multirnn[torch]' (after the CPU wheel, below)"
        lines.append(f"{r['backend']:<12} {r['version'] or '-':<14} {'yes' if r['runs'] else 'NO':<10} {install}")
    lines += ["", f"torch: {TORCH_CPU_WHEEL} first, or pip pulls a multi-GB CUDA build"]
    problems = [f"  {r['backend']}: {r['problem']}" for r in rows if r["problem"]]
    problems += [f"  {r['backend']} --impl layers: {r['layers_problem']}" for r in rows if r.get("layers_problem")]
    if problems:
        lines += ["", "Why not:"] + problems
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """List the backends; ``--help`` says so, anything else is refused (exit 2) rather than ignored."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m multirnn",
        description="Which backends this installation has, their versions, whether each runs here and how to "
        "install the rest. The comparison itself: python -m multirnn.compare; a matrix of them: python -m "
        "multirnn.sweep.")
    parser.add_argument("--version", action="version", version=f"multirnn {__version__}")  # as compare's and sweep's
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("compare", "sweep", "conformance"):  # argparse would answer --help with this page
        parser.error(f"{argv[0]!r} is a module of its own: python -m multirnn.{argv[0]} {shlex.join(argv[1:])}".rstrip())
    parser.parse_args(argv)
    print(f"multirnn {__version__} (Python {platform.python_version()}, {sys.platform})\n")
    print(backend_table())
    print("\nRun the comparison: python -m multirnn.compare   (--help for every option)")
    return 0


if __name__ == "__main__":
    from .runner import exit_with

    exit_with(main)
