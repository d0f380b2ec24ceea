"""``python -m multirnn.conformance``: what each framework's own GRU and LSTM layer really computes, measured.

For every installed framework and every recurrent cell, the framework's layer (the ``layers``
implementation, d2l's weights mapped onto it) is run forward on random weights, biases, inputs and
states, and its logits and final state are compared in float64 with every NumPy oracle variant of
that cell family: d2l's GRU (reset gate before the recurrent matmul) and the cuDNN/torch one
(after it), d2l's LSTM. The variant it matches to 1e-9 is the formula it computes; the others
are off by O(0.1). Beside it: the gate order and bias layout (from the backend's parameter
layout, i.e. the layer's own parameter names, symbolic shapes and which d2l parameters they hold)
and the default initialisers, measured from a draw of the layer's own initialisers at V = 28,
H = 64 (uniform or normal and its scale, each stored recurrent kernel orthogonal or not, biases
zero or not).

Each framework runs in its own process (frameworks never share one). The table goes to stdout as
Markdown; ``--json FILE`` keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cells import Model
from .testing import random_model_problem

FRAMEWORKS = ("torch", "mxnet", "tensorflow", "jax")
# What each layer implementation is asked to compute, and the oracle variants it is compared with.
FAMILIES = {"gru": ("gru", "gru-reset-after"), "lstm": ("lstm",), "rnn": ("rnn",)}
MATCH = 1e-9
# The forward check's problem; V and H differ and no multiple of H equals V, so a numeric shape
# maps back to one symbol.
V_FORWARD, H_FORWARD, B_FORWARD, T_FORWARD = 7, 5, 3, 4
# The initialisers' draw: the Time Machine's 28 characters, a hidden width of 64. The scales quoted
# depend on it (torch ±1/√H, Keras' Glorot ±√(6/(fan_in + fan_out)), flax's std 1/√fan_in).
V_INIT, H_INIT = 28, 64
# Seeds pooled for a distribution's shape and scale: one draw holds only H = 64 values of a
# single bias, whose max/std calls 4 % of U(±a) draws a truncated normal; 8 hold 512.
INIT_DRAWS = 8
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_MEASURED = 0, 1, 2, 3

EPILOG = f"""\
examples:
  python -m multirnn.conformance                        # every framework: {', '.join(FRAMEWORKS)}
  python -m multirnn.conformance --frameworks torch,tf  # aliases work (tf, pytorch, mx, flax)
  python -m multirnn.conformance --json runs/conformance.json

exit status: 0 every framework was measured (a cell a layer cannot compute is a finding, not a
failure); 1 a framework's run crashed or a layer matched none of the oracle variants; 2 bad usage
(e.g. an unknown framework name); 3 a framework named in --frameworks could not be measured (not
installed, or, like numpy, no layers of its own), or, without --frameworks, none could. Either way a
known framework that cannot be measured is a row saying why.
"""

_D2L_NAME = re.compile(r"\b[Wb]_\w+")  # W_xr, b_hn, W_hh_l1 ("^T" and "]" end a name)
_ZERO_SLICE = re.compile(r"(?:^|[\[|,])\s*0(?=\s*(?:$|[\]|,(]))")  # a "0" slot: a slice held at zero
_UNSUPPORTED_PREFIX = re.compile(r"^\w+ cannot compute [\w-]+: ")  # Backend.__init__'s wording


def _variant_params(params: dict[str, np.ndarray], variant: str) -> dict[str, np.ndarray]:
    """The same weights for another GRU variant: d2l's GRU names the candidate gate h and has no b_hn."""
    if variant == "gru":
        out = {k.replace("W_xn", "W_xh").replace("W_hn", "W_hh"): v for k, v in params.items() if k != "b_hn"}
        if "b_n" in params:
            out["b_h"] = params["b_n"]
            out.pop("b_n", None)
        return out
    if variant == "gru-reset-after":
        out = {k.replace("W_xh", "W_xn").replace("W_hh", "W_hn"): v for k, v in params.items()}
        if "b_h" in params:
            out["b_n"] = params["b_h"]
            out.pop("b_h", None)
        out.setdefault("b_hn", np.zeros_like(out["b_n"]))
        return {k: out[k] for k in Model("gru-reset-after").param_names()}
    return dict(params)


def _symbolic(dim: int | str, V: int, H: int) -> str:
    """One dimension of the forward problem's shapes in the letters V and H (3H, not 15)."""
    if isinstance(dim, str):
        return dim
    if dim == V:
        return "V"
    if dim % H == 0:
        return "H" if dim == H else f"{dim // H}H"
    return str(dim)


def _layout_entry(entry: dict[str, Any], V: int, H: int) -> dict[str, Any]:
    """A backend's layout entry, normalised: symbolic shape, the d2l names it holds, and the remark
    (a backend may append it to ``holds`` in parentheses, as Gluon's does, or give it as ``note``)."""
    holds = str(entry.get("holds", ""))
    note = entry.get("note")
    tail = re.fullmatch(r"(.*?) \(([^()]+)\)", holds)
    if tail and note is None:
        holds, note = tail.group(1), tail.group(2)
    return {"shape": [_symbolic(d, V, H) for d in entry.get("shape") or []], "holds": holds,
            "trained": entry.get("trained", True), "note": note,
            "zero_slices": bool(_ZERO_SLICE.search(holds)), "names": _D2L_NAME.findall(holds)}


def _recurrent_kernels(layout: dict[str, dict[str, Any]], arrays: dict[str, np.ndarray]) -> list[tuple[np.ndarray, str]]:
    """Each recurrent kernel as the framework stores it, rebuilt from d2l's blocks, with its symbolic
    shape: Keras' ``(H, 3H)`` recurrent_kernel, torch's ``(3H, H)`` weight_hh, flax's ``(H, H)`` per gate.
    Without a layout, every d2l block is its own kernel."""
    recurrent = sorted(k for k in arrays if k.startswith("W_h") and k != "W_hq")
    kernels, covered = [], set()
    for entry in layout.values():
        names = entry["names"]
        if not names or not all(n in recurrent for n in names):
            continue
        K = np.concatenate([arrays[n] for n in names], axis=1)  # d2l's (H, H) blocks side by side: (H, GH)
        transposed = entry["holds"].endswith("^T")
        G = f"{len(names)}H" if len(names) > 1 else "H"
        kernels.append((K.T, f"({G}, H)") if transposed else (K, f"(H, {G})"))
        covered.update(names)
    kernels += [(arrays[n], "(H, H)") for n in recurrent if n not in covered]
    return kernels


def _orthogonality(kernels: list[tuple[np.ndarray, str]]) -> str | None:
    """Says "orthogonal (...)" when every stored recurrent kernel has orthonormal rows or columns."""
    if not kernels:
        return None
    found = set()
    for K, shape in kernels:
        K = K.astype(np.float64)
        rows = np.allclose(K @ K.T, np.eye(K.shape[0]), atol=1e-5)
        cols = np.allclose(K.T @ K, np.eye(K.shape[1]), atol=1e-5)
        if not (rows or cols):
            return None
        found.add((shape, "square" if rows and cols else "rows" if rows else "columns"))
    which = "the" if len(kernels) == 1 else "each"
    parts = [f"{which} {shape} kernel" if kind == "square" else f"{kind} of {which} {shape} kernel orthonormal"
             for shape, kind in sorted(found)]
    return f"orthogonal ({'; '.join(parts)})"


def _distribution(flat: np.ndarray) -> str:
    """The shape and scale of a pool of drawn values, in words."""
    std, peak = float(flat.std()), float(np.abs(flat).max())
    if peak == 0:
        return "zeros"
    if peak / max(std, 1e-30) < 1.9:
        # a uniform's max/std is √3 ≈ 1.73; a normal's is far larger. The largest of n draws falls short
        # of the bound by bound/(n+1) on average: (n+1)/n x peak estimates it without that bias (one
        # draw of torch's 64 biases quoted ±0.123 for U(±0.125))
        return f"uniform ±{peak * (flat.size + 1) / flat.size:.3g}"
    if std == 0:
        return f"constant {float(flat[0]):.3g}"
    if peak / std < 2.6:  # a normal cut at ±2σ (flax's lecun_normal): ≈ 2.3; an uncut one's draw reaches 3+
        return f"truncated normal, std {std:.3g}, within ±{peak:.3g}"
    return f"normal, std {std:.3g}"


def distinct_draws(draws: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The draws that differ from every earlier one: a backend whose ``default_params`` ignores its seed
    gives the same arrays each time, and pooling copies would count the same values several times."""
    seen: set[bytes] = set()
    out = []
    for d in draws:
        key = b"".join(k.encode() + np.ascontiguousarray(v).tobytes() for k, v in sorted(d.items()))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _describe_init(arrays: dict[str, np.ndarray], layout: dict[str, dict[str, Any]] | None = None,
                   more: Sequence[dict[str, np.ndarray]] = ()) -> dict[str, str]:
    """Input weights, recurrent weights and biases of a draw of the default initialisers, in words.
    ``more``: further draws (other seeds, each different: :func:`distinct_draws`), pooled with ``arrays``
    for each group's distribution and scale. Orthogonality is judged on each recurrent kernel of
    ``arrays`` as the layout says the framework stores it (``_layout_entry`` entries): Keras'
    ``Orthogonal`` makes the rows of its whole ``(H, 3H)`` kernel orthonormal, and none of its
    ``(H, H)`` gate blocks is then orthogonal."""
    draws = [arrays, *more]
    groups: dict[str, list[str]] = {"input weights": [], "recurrent weights": [], "biases": []}
    for k in arrays:
        if k not in ("W_hq", "b_q"):
            groups["input weights" if k.startswith("W_x") else "recurrent weights" if k.startswith("W_h")
                   else "biases"].append(k)
    out = {}
    for name, keys in groups.items():
        if not keys:
            continue
        if name == "biases":
            nonzero = [k for k in keys if any(np.any(d[k] != 0) for d in draws)]
            if nonzero and len(nonzero) < len(keys):  # some biases start at zero: say which are not
                values = {k: np.concatenate([d[k].ravel() for d in draws]) for k in nonzero}
                if all(np.all(v == v[0]) for v in values.values()):  # Keras' forget-gate bias 1
                    out[name] = f"zeros except {', '.join(nonzero)}: {', '.join(f'{float(values[k][0]):g}' for k in nonzero)}"
                else:
                    flat = np.concatenate(list(values.values())).astype(np.float64)
                    out[name] = f"zeros except {', '.join(nonzero)}: {_distribution(flat)}"
                continue
        text = _distribution(np.concatenate([d[k].ravel() for d in draws for k in keys]).astype(np.float64))
        if name == "recurrent weights":
            text = _orthogonality(_recurrent_kernels(layout or {}, arrays)) or text
        out[name] = text
    return out


def measure_framework(framework: str) -> list[dict[str, Any]]:
    """Every cell's layer of one framework (run in this process); one row saying why when the
    framework cannot be measured at all (not installed, or no layers implementation)."""
    import multirnn
    from multirnn.backends import canonical_name, probe
    from multirnn.errors import BackendUnavailableError, UnsupportedModelError

    from .backends.numpy_backend import NumpyBackend

    framework = canonical_name(framework)
    reason = probe(framework, "layers")
    if reason is not None:
        return [{"framework": framework, "unavailable": reason}]
    rows = []
    V, H, B, T = V_FORWARD, H_FORWARD, B_FORWARD, T_FORWARD
    for variants in FAMILIES.values():
        for cell in variants:
            model = Model(cell)
            row: dict[str, Any] = {"framework": framework, "asked": cell}
            try:
                be = multirnn.get_backend(framework, impl="layers", mode="eager", model=model)
            except UnsupportedModelError as exc:
                rows.append({**row, "unsupported": str(exc)})
                continue
            except BackendUnavailableError as exc:
                rows.append({**row, "unavailable": str(exc)})
                continue
            # Before any params are built: TF and flax give numeric shapes once they have seen some.
            layout = {k: _layout_entry(v, V, H) for k, v in (be.param_layout() or {}).items()}
            params, X, _, state = random_model_problem(model, seed=5, vocab_size=V, num_hiddens=H, batch_size=B,
                                                       num_steps=T, dtype="float64", scale=0.5)
            if "b_hn" in params:  # d2l's GRU has no b_hn: at 0 the variants differ only in where the reset acts
                params["b_hn"] = np.zeros_like(params["b_hn"])
            logits, final = be.forward(be.params_from_numpy(params), X, tuple(s.copy() for s in state))
            got = np.concatenate([be.as_numpy(logits).ravel(), *(be.as_numpy(s).ravel() for s in final)])
            devs = {}
            for variant in variants:
                oracle = NumpyBackend(model=Model(variant))
                p = _variant_params(params, variant)
                want_logits, want_final = oracle.forward(p, X, tuple(s.copy() for s in state))
                want = np.concatenate([want_logits.ravel(), *(s.ravel() for s in want_final)])
                devs[variant] = float(np.max(np.abs(got - want)))
            matches = [v for v, d in devs.items() if d <= MATCH]
            own = be.default_params(V_INIT, H_INIT, 0, "float64")
            draws = distinct_draws([own, *(be.default_params(V_INIT, H_INIT, seed, "float64")
                                           for seed in range(1, INIT_DRAWS))]) if own is not None else []
            rows.append({**row, "version": be.version(), "deviations": devs, "computes": matches, "layout": layout,
                         "init_shape": {"V": V_INIT, "H": H_INIT}, "init_draws": len(draws),
                         "init": _describe_init(draws[0], layout, draws[1:]) if draws else {}})
    return rows


CHILD_TIMEOUT = 900.0  # seconds for one framework's measurements (imports included)


def _run_child(framework: str) -> list[dict[str, Any]]:
    """One framework measured in a child process of its own session: on Ctrl-C or SIGTERM (raised here as
    :class:`multirnn.runner.Stopped`) it is ended with its process group, never left running orphaned."""
    from .runner import terminate

    proc = subprocess.Popen([sys.executable, "-m", "multirnn.conformance", "--child", framework],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        terminate(proc)
        proc.communicate()
        return [{"framework": framework, "error": f"timed out after {CHILD_TIMEOUT:g} s"}]
    except BaseException:  # Ctrl-C, a signal: the child goes with this process
        terminate(proc)
        raise
    lines = [ln for ln in stdout.splitlines() if ln.startswith("[")]
    if proc.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return [{"framework": framework, "error": tail}]
    return json.loads(lines[-1])


def _cell(text: str) -> str:
    """Text for a Markdown table cell: an unescaped | would end the cell (GFM)."""
    return text.replace("|", "\\|")


def _held_remark(entry: dict[str, Any]) -> str:
    """The entry's remark, saying "held at 0" whenever it holds a slice held at zero (an
    untrained entry, or a "0" slot), whatever words the backend's own note uses."""
    note = entry.get("note") or ""
    untrained = not entry.get("trained", True)
    if not (untrained or entry.get("zero_slices")) or "held at 0" in note:
        return note
    whole = untrained or not entry.get("names")
    held = "held at 0" if whole else "the 0 slices are held at 0"
    return f"{held}; {note}" if note else held


def _layout_text(layout: dict[str, dict[str, Any]]) -> str:
    """The recurrent layer's parameters (the output layer's W_hq, b_q are the same everywhere)."""
    out = []
    for k, v in layout.items():
        if v.get("names") and all(n in ("W_hq", "b_q") for n in v["names"]):
            continue
        remark = _held_remark(v)
        out.append(_cell(f"`{k}` ({', '.join(v['shape'])}): {v['holds']}" + (f" ({remark})" if remark else "")))
    return "<br>".join(out)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: one row per framework and cell asked for."""
    out = [("| framework | layer asked for | computes (float64, max deviation from each oracle variant) | "
            "parameters (the layer's own names, shapes: what they hold) | "
            f"default initialisers ({INIT_DRAWS} draws at V = {V_INIT}, H = {H_INIT}) |"),
           "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['framework']} | - | could not run: {_cell(r['error'])} | | |")
            continue
        if "unsupported" in r or "unavailable" in r:
            # unsupported: the layer cannot compute this cell; unavailable: the framework is not installed
            kind = "unsupported" if "unsupported" in r else "not available"
            why = _UNSUPPORTED_PREFIX.sub("", r.get("unsupported") or r.get("unavailable") or "")
            out.append(f"| {r['framework']} | {r.get('asked', '-')} | **{kind}**: {_cell(why)} | | |")
            continue
        devs = ", ".join(f"{v} {d:.0e}" if d is not None else f"{v} NaN" for v, d in r["deviations"].items())
        computes = " and ".join(f"**{c}**" for c in r["computes"]) or "**none of the variants**"
        init = "; ".join(f"{k}: {v}" for k, v in r["init"].items())
        if init and r.get("init_draws", INIT_DRAWS) < INIT_DRAWS:  # a backend whose default_params ignores its seed
            n = r["init_draws"]
            init += f" (from {n} distinct draw{'s' if n != 1 else ''} of {INIT_DRAWS} seeds)"
        out.append(f"| {r['framework']} {r.get('version', '')} | {r['asked']} | {computes} ({devs}) | "
                   f"{_layout_text(r['layout'])} | {_cell(init)} |")
    return "\n".join(out)


def exit_status(rows: list[dict[str, Any]], named: bool) -> int:
    """See EPILOG. ``named``: the user listed the frameworks, so one that cannot be measured fails
    the run (as compare's named backends do); the default list only needs one measured."""
    if any("error" in r or ("computes" in r and not r["computes"]) for r in rows):
        return EXIT_FAILED
    measured = {r["framework"] for r in rows if "computes" in r}
    if not measured or (named and any(r["framework"] not in measured for r in rows)):
        return EXIT_NOT_MEASURED
    return EXIT_OK


def _frameworks(text: str) -> list[str]:
    """``--frameworks``, resolved to backend ids (aliases too), in order, once each."""
    from .backends import canonical_name, is_builtin, known_backends, load_backend_class
    from .compare import UsageError, comma_list

    names: list[str] = []
    for name in comma_list(text, "--frameworks", known_backends()):
        try:
            key = canonical_name(name)
        except ValueError:
            raise UsageError(f"unknown framework {name!r} in --frameworks; choose from "
                             f"{', '.join(known_backends())} (comma-separated)") from None
        if not is_builtin(key):  # package.module:Class: imported now, so a bad spec is a usage error (as in compare)
            try:
                load_backend_class(key)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if key not in names:
            names.append(key)
    if not names:
        raise UsageError(f"--frameworks is empty; choose from {', '.join(known_backends())}")
    return names


def build_parser() -> argparse.ArgumentParser:
    from .backends import known_backends
    from .compare import ArgParser

    ap = ArgParser(prog="python -m multirnn.conformance", epilog=EPILOG,
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   description="Measure what each framework's own GRU, LSTM and tanh-RNN layer computes (the "
                   "oracle variant it matches in float64), its parameters and its default initialisers; "
                   "prints a Markdown table.")
    from . import __version__

    ap.add_argument("--version", action="version", version=f"multirnn {__version__}")  # as compare's and the sweep's
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--frameworks", metavar="LIST",
                    help=f"comma-separated frameworks to measure, each in its own process (default: "
                    f"{','.join(FRAMEWORKS)}; known: {', '.join(known_backends())}; aliases such as tf work; "
                    "package.module:Class measures your own layers backend)")
    ap.add_argument("--json", metavar="FILE", help="also write the measurements to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .compare import UsageError

    try:
        args = build_parser().parse_args(argv)
        if args.child:
            from .files import finite_or_none

            # Strict JSON (a NaN deviation becomes null); str() for anything else JSON has no type for.
            print(json.dumps(finite_or_none(measure_framework(args.child)), allow_nan=False, default=str))
            return EXIT_OK
        frameworks = _frameworks(",".join(FRAMEWORKS) if args.frameworks is None else args.frameworks)
        if args.json == "":  # measured everything, then wrote nothing
            raise UsageError("--json '': name the file to write")
        if args.json:  # checked before minutes of measuring, not after them
            from .files import check_writable

            folder = Path(args.json).resolve().parent
            if Path(args.json).is_dir():
                raise UsageError(f"--json {args.json!r} is a folder: name the file to write")
            try:  # a probe file: os.access says yes to root on a read-only file system
                check_writable(folder)
            except OSError as exc:
                raise UsageError(f"--json {args.json!r}: cannot write there ({str(folder)!r}: "
                                 f"{exc.strerror or exc})") from None
    except UsageError as exc:
        print(f"multirnn.conformance: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .runner import Stopped, defer_signals, raise_on_signals, signal_name

    raise_on_signals()
    rows: list[dict[str, Any]] = []
    stopped = None
    for i, fw in enumerate(frameworks):
        try:
            rows += _run_child(fw)
        except (KeyboardInterrupt, Stopped) as exc:
            defer_signals()  # a second Ctrl-C must not cut the table of what was measured short
            stopped = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            # the frameworks measured so far are kept; the rest are rows that say why they are missing
            rows += [{"framework": f, "error": f"stopped by {signal_name(stopped)} before it was measured"}
                     for f in frameworks[i:]]
            break
    late = defer_signals()
    print(markdown(rows))
    if args.json:
        from .files import write_json_atomic

        write_json_atomic(args.json, {"rows": rows, **({"stopped": signal_name(stopped)} if stopped else {})})
    if stopped:
        print(f"multirnn.conformance: stopped by {signal_name(stopped)}; the frameworks measured before it are above",
              file=sys.stderr)
        return 128 + int(stopped)
    if late:
        return 128 + int(late[0])
    return exit_status(rows, named=args.frameworks is not None)


if __name__ == "__main__":
    from .runner import exit_with

    exit_with(main)
