"""Initial weights, drawn once in NumPy so that every backend starts from the same point.

Every function takes the :class:`~multirnn.cells.Model` (default: d2l's one-layer tanh RNN), whose
declaration gives the parameter names and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .cells import RNN, Model

PARAM_NAMES: tuple[str, ...] = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
DTYPES: tuple[str, ...] = ("float32", "float64")

Params = dict[str, np.ndarray]


def check_dtype(dtype: str | np.dtype) -> str:
    """Return the dtype's name if it is one multirnn supports, else raise ValueError."""
    try:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except (TypeError, ValueError):  # not a dtype at all (np.dtype's own message names its internals)
        name = None
    if name not in DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}; expected one of {list(DTYPES)}.")
    return name


def check_model(model: Any) -> Model:
    """Return ``model`` if it is a :class:`~multirnn.cells.Model`, else raise TypeError (a cell name
    such as ``"lstm"`` would otherwise fail far away, as ``'str' object has no attribute ...``)."""
    if isinstance(model, Model):
        return model
    hint = f" (for a cell name: Model({model!r}))" if isinstance(model, str) else ""
    raise TypeError(f"model must be a multirnn.Model, e.g. Model('lstm', num_layers=2) or TrainConfig.model; "
                    f"got {type(model).__name__} {model!r:.60}{hint}.")


def param_shapes(vocab_size: int, num_hiddens: int, model: Model = RNN) -> dict[str, tuple[int, ...]]:
    """The model's parameter shapes, by d2l name, in canonical order (the tanh RNN's five by default)."""
    return check_model(model).param_shapes(vocab_size, num_hiddens)


def validate_params(params: Any, model: Model = RNN) -> tuple[int, int, str]:
    """Check that ``params`` is the model's parameter dict: its names, consistent shapes, one dtype.

    Accepts NumPy arrays (or anything ``np.shape`` understands, e.g. framework arrays, whose dtype
    is read from ``.dtype``).

    Returns:
        ``(vocab_size, num_hiddens, dtype)``.

    Backends call it first thing in ``params_from_numpy``: its messages (``missing ['b_q']``,
    ``unexpected ['W_extra']``, the wrong shapes) are what the conformance suite expects.

    Raises:
        TypeError: not a mapping, or ``model`` not a Model.
        ValueError: missing or unexpected names, wrong shapes or dtypes (all of them named).
    """
    names = check_model(model).param_names()
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays with the keys {list(names)}, got {type(params).__name__}.")
    missing = [k for k in names if k not in params]
    extra = [k for k in params if k not in names]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        raise ValueError(f"params ({model.name}): {'; '.join(parts)}; expected exactly {list(names)}.")
    shapes = {k: tuple(np.shape(params[k])) for k in names}
    if len(shapes["W_hq"]) != 2:
        raise ValueError(f"params['W_hq'] must be 2-D (num_hiddens, vocab_size), got shape {shapes['W_hq']}.")
    H, V = shapes["W_hq"]
    want = model.param_shapes(V, H)
    wrong = [f"{k}: {shapes[k]} (expected {want[k]})" for k in names if shapes[k] != want[k]]
    if wrong:
        raise ValueError(f"params shapes do not fit vocab_size={V}, num_hiddens={H} (from W_hq): {', '.join(wrong)}.")
    dtypes = {k: np.dtype(getattr(params[k], "dtype", np.asarray(params[k]).dtype)).name for k in names}
    bad = {k: d for k, d in dtypes.items() if d not in DTYPES}
    if bad:
        raise ValueError(f"params must be float32 or float64 arrays; got {bad}.")
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"params must all have the same dtype; got {dtypes}.")
    return V, H, dtypes["W_hq"]


def init_params(vocab_size: int, num_hiddens: int, seed: int = 0, dtype: str = "float32", model: Model = RNN) -> Params:
    """d2l's ``get_params`` (for every cell): weights N(0, 0.01^2), biases zero.

    The weights are drawn in float64 from ``numpy.random.default_rng(seed)`` and then cast, so
    float32 and float64 runs with the same seed start from the same (rounded) weights.

    Args:
        vocab_size: V, the number of tokens (inputs and outputs are one-hot over it).
        num_hiddens: H, the hidden state's width.
        seed: the only source of randomness.
        dtype: ``"float32"`` or ``"float64"``.

        model: the cell and layers (default: the tanh RNN, one layer).

    Returns:
        The model's parameters, e.g. ``{"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V),
        "b_q": (V,)}`` for the tanh RNN; weights are drawn in the canonical order of
        :meth:`~multirnn.cells.Model.param_shapes`.
    """
    for name, value in (("vocab_size", vocab_size), ("num_hiddens", num_hiddens)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    dtype = check_dtype(dtype)
    check_model(model)
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, shape in model.param_shapes(vocab_size, num_hiddens).items():
        if name.startswith("W"):
            params[name] = (rng.standard_normal(shape) * 0.01).astype(dtype)
        else:
            params[name] = np.zeros(shape, dtype=dtype)
    return params
