"""Initial weights, drawn once in NumPy so that every backend starts from the same point."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

PARAM_NAMES: tuple[str, ...] = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
DTYPES: tuple[str, ...] = ("float32", "float64")

Params = dict[str, np.ndarray]


def check_dtype(dtype: str | np.dtype) -> str:
    """Return the dtype's name if it is one multirnn supports, else raise ValueError."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}; expected one of {list(DTYPES)}.")
    return name


def param_shapes(vocab_size: int, num_hiddens: int) -> dict[str, tuple[int, ...]]:
    """The d2l RNN-from-scratch parameter shapes."""
    V, H = vocab_size, num_hiddens
    return {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}


def validate_params(params: Any) -> tuple[int, int, str]:
    """Check that ``params`` is the d2l parameter dict: the five names, consistent shapes, one dtype.

    Accepts NumPy arrays (or anything ``np.shape`` understands, e.g. framework arrays, whose dtype
    is read from ``.dtype``).

    Returns:
        ``(vocab_size, num_hiddens, dtype)``.

    Raises:
        TypeError: not a mapping.
        ValueError: missing or unexpected names, wrong shapes or dtypes (all of them named).
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays with the keys {list(PARAM_NAMES)}, got {type(params).__name__}.")
    missing = [k for k in PARAM_NAMES if k not in params]
    extra = [k for k in params if k not in PARAM_NAMES]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        raise ValueError(f"params: {'; '.join(parts)}; expected exactly {list(PARAM_NAMES)}.")
    shapes = {k: tuple(np.shape(params[k])) for k in PARAM_NAMES}
    if len(shapes["W_xh"]) != 2:
        raise ValueError(f"params['W_xh'] must be 2-D (vocab_size, num_hiddens), got shape {shapes['W_xh']}.")
    V, H = shapes["W_xh"]
    want = param_shapes(V, H)
    wrong = [f"{k}: {shapes[k]} (expected {want[k]})" for k in PARAM_NAMES if shapes[k] != want[k]]
    if wrong:
        raise ValueError(f"params shapes do not fit vocab_size={V}, num_hiddens={H} (from W_xh): {', '.join(wrong)}.")
    dtypes = {k: np.dtype(getattr(params[k], "dtype", np.asarray(params[k]).dtype)).name for k in PARAM_NAMES}
    bad = {k: d for k, d in dtypes.items() if d not in DTYPES}
    if bad:
        raise ValueError(f"params must be float32 or float64 arrays; got {bad}.")
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"params must all have the same dtype; got {dtypes}.")
    return V, H, dtypes["W_xh"]


def init_params(vocab_size: int, num_hiddens: int, seed: int = 0, dtype: str = "float32") -> Params:
    """d2l's ``get_params``: weights N(0, 0.01^2), biases zero.

    The weights are drawn in float64 from ``numpy.random.default_rng(seed)`` and then cast, so
    float32 and float64 runs with the same seed start from the same (rounded) weights.

    Args:
        vocab_size: V, the number of tokens (inputs and outputs are one-hot over it).
        num_hiddens: H, the hidden state's width.
        seed: the only source of randomness.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        ``{"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}``.
    """
    for name, value in (("vocab_size", vocab_size), ("num_hiddens", num_hiddens)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    dtype = check_dtype(dtype)
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, shape in param_shapes(vocab_size, num_hiddens).items():
        if name.startswith("W"):
            params[name] = (rng.standard_normal(shape) * 0.01).astype(dtype)
        else:
            params[name] = np.zeros(shape, dtype=dtype)
    return params
