"""``python -m multirnn.conformance``: what each framework's own GRU and LSTM layer really computes, measured.

For every installed framework and every recurrent cell, the framework's layer (the ``layers``
implementation, d2l's weights mapped onto it) is run forward on random weights, biases, inputs and
states, and its logits and final state are compared in float64 with every NumPy oracle variant of
that cell family: d2l's GRU (reset gate before the recurrent matmul) and the cuDNN/torch one
(after it), d2l's LSTM. The variant it matches to 1e-9 is the formula it computes; the others
are off by O(0.1). Beside it: the gate order and bias layout (from the backend's parameter
layout, i.e. the layer's own parameter names and which d2l parameters they hold) and the default
initialisers, measured from a draw of the layer's own initialisers (uniform or normal and its
scale, recurrent blocks orthogonal or not, biases zero or not).

Each framework runs in its own process (frameworks never share one). The table goes to stdout as
Markdown; ``--json FILE`` keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from typing import Any

import numpy as np

from .cells import Model
from .testing import random_model_problem

FRAMEWORKS = ("torch", "mxnet", "tensorflow", "jax")
# What each layer implementation is asked to compute, and the oracle variants it is compared with.
FAMILIES = {"gru": ("gru", "gru-reset-after"), "lstm": ("lstm",), "rnn": ("rnn",)}
MATCH = 1e-9


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


def _describe_init(arrays: dict[str, np.ndarray], H: int) -> dict[str, str]:
    """Input weights, recurrent weights and biases of a draw of the default initialisers, in words."""
    groups: dict[str, list[np.ndarray]] = {"input weights": [], "recurrent weights": [], "biases": []}
    orthogonal = []
    for k, v in arrays.items():
        if k in ("W_hq", "b_q"):
            continue
        if k.startswith("W_x"):
            groups["input weights"].append(v)
        elif k.startswith("W_h"):
            groups["recurrent weights"].append(v)
            orthogonal.append(np.allclose(v.T @ v, np.eye(H), atol=1e-5))
        else:
            groups["biases"].append(v)
    out = {}
    for name, vs in groups.items():
        if not vs:
            continue
        flat = np.concatenate([v.ravel() for v in vs]).astype(np.float64)
        std, peak = float(flat.std()), float(np.abs(flat).max())
        if peak == 0:
            text = "zeros"
        elif peak / max(std, 1e-30) < 1.9:
            text = f"uniform ±{peak:.3g}"  # a uniform's max/std is √3 ≈ 1.73; a normal's is far larger
        else:
            text = f"normal, std {std:.3g}"
        if name == "recurrent weights" and orthogonal and all(orthogonal):
            text = f"orthogonal ({text})"
        if name == "biases":
            nonzero = sorted({k for k, v in arrays.items() if k.startswith("b_") and k != "b_q" and np.any(v != 0)})
            if nonzero and len(nonzero) < len(vs):
                text = f"zeros except {', '.join(nonzero)}: {', '.join(f'{float(arrays[k].mean()):g}' for k in nonzero)}"
        out[name] = text
    return out


def measure_framework(framework: str) -> list[dict[str, Any]]:
    """Every cell's layer of one framework (run in this process)."""
    import multirnn
    from multirnn.errors import BackendUnavailableError, UnsupportedModelError

    from .backends.numpy_backend import NumpyBackend

    rows = []
    V, H, B, T = 7, 5, 3, 4
    for family, variants in FAMILIES.items():
        asked = {"gru": ("gru", "gru-reset-after"), "lstm": ("lstm",), "rnn": ("rnn",)}[family]
        for cell in asked:
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
            layout = be.param_layout() or {}
            own = be.default_params(28, 64, 0, "float64")
            rows.append({**row, "version": be.version(), "deviations": devs, "computes": matches,
                         "layout": {k: {"shape": v.get("shape"), "holds": v.get("holds"), "trained": v.get("trained", True)}
                                    for k, v in layout.items()},
                         "init": _describe_init(own, 64) if own is not None else {}})
    return rows


def _run_child(framework: str) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "multirnn.conformance", "--child", framework], capture_output=True,
                          text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"framework": framework, "error": tail}]
    return json.loads(lines[-1])


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| framework | layer asked for | computes (float64, max deviation from each oracle variant) | "
           "parameters (the layer's own names: what they hold) | default initialisers |",
           "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['framework']} | - | could not run: {r['error']} | | |")
            continue
        if "unsupported" in r or "unavailable" in r:
            why = r.get("unsupported") or r.get("unavailable")
            out.append(f"| {r['framework']} | {r['asked']} | **not available**: {why.split(': ', 1)[-1]} | | |")
            continue
        devs = ", ".join(f"{v} {d:.0e}" for v, d in r["deviations"].items())
        computes = " and ".join(f"**{c}**" for c in r["computes"]) or "**none of the variants**"
        layout = "<br>".join(f"`{k}` {v['shape']}: {v['holds']}" + ("" if v.get("trained", True) else " (held at 0)")
                             for k, v in r["layout"].items() if not k.endswith(("W_hq", "b_q")) and "dense" not in k.lower()
                             and "linear" not in k.lower() and "output" not in k.lower())
        init = "; ".join(f"{k}: {v}" for k, v in r["init"].items())
        out.append(f"| {r['framework']} {r.get('version', '')} | {r['asked']} | {computes} ({devs}) | {layout} | {init} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m multirnn.conformance", description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument("--json", help="also write the measurements to this file")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure_framework(args.child), default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else str(x)))
        return 0
    rows = [r for fw in args.frameworks.split(",") if fw.strip() for r in _run_child(fw.strip())]
    print(markdown(rows))
    if args.json:
        from .files import write_json_atomic

        write_json_atomic(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
