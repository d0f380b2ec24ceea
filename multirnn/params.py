"""Initial weights, drawn once in NumPy so that every backend starts from the same point."""

from __future__ import annotations

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
