"""Training configurations and the named presets (d2l ed. 1, d2l ed. 2, quick)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cells import CELLS, Model
from .params import check_dtype

PROTOCOLS = ("d2l-ed1", "d2l-ed2")
SECOND_BIAS = ("frozen", "trained")
# Upper bounds that reject absurd values up front (e.g. --epochs 10**20) instead of running for ever.
LIMITS = {"batch_size": 1_000_000, "num_steps": 100_000, "num_hiddens": 65_536, "num_epochs": 1_000_000,
          "num_train": 100_000_000}
SAMPLINGS = ("sequential", "random")
# Fields only the d2l-ed1 pipeline reads: d2l-ed2 always shuffles its own fixed train/validation windows.
ED1_ONLY = ("sampling", "max_tokens")


def batching_text(protocol: str, sampling: str) -> str:
    """How minibatches are drawn, for run headers: ed. 2 has no sampling mode (``sampling`` is unused)."""
    return "shuffled windows" if protocol == "d2l-ed2" else f"{sampling} sampling"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; one name per concept, as in d2l.

    ``protocol`` picks the data pipeline: ``"d2l-ed1"`` (one long corpus, sequential or random
    sampling, ``max_tokens``) or ``"d2l-ed2"`` (overlapping windows, ``num_train`` training and
    ``num_val`` validation windows, state reset every minibatch). Perplexities of the two
    protocols are not comparable with each other.
    """

    protocol: str = "d2l-ed1"
    batch_size: int = 32
    num_steps: int = 35
    num_hiddens: int = 512
    lr: float = 1.0
    max_grad_norm: float = 1.0
    num_epochs: int = 500
    sampling: str = "sequential"  # d2l-ed1 only; d2l-ed2 always shuffles windows
    max_tokens: int = 10000  # d2l-ed1 only; <= 0 keeps the whole text
    num_train: int = 10000  # d2l-ed2 only
    num_val: int = 5000  # d2l-ed2 only
    dtype: str = "float32"
    seed: int = 0
    cell: str = "rnn"  # rnn | gru | gru-reset-after | lstm (multirnn.cells.CELLS)
    num_layers: int = 1  # d2l's deep RNN: each layer's outputs are the next layer's inputs
    second_bias: str = "frozen"  # "trained": every gate has a second, hidden-side bias (torch/Gluon layers)

    def __post_init__(self) -> None:
        # NumPy scalars (np.int64(2), np.float32(0.5)) are ordinary numbers here: store them as such.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.integer):
                object.__setattr__(self, f.name, int(value))
            elif isinstance(value, np.floating):
                object.__setattr__(self, f.name, float(value))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Unknown protocol {self.protocol!r}; expected one of {list(PROTOCOLS)}.")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"Unknown sampling {self.sampling!r}; expected one of {list(SAMPLINGS)}.")
        for name in ("batch_size", "num_steps", "num_hiddens", "num_epochs", "num_train"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
            if value > LIMITS[name]:
                raise ValueError(f"{name}={value:,} is beyond what this tool can run (at most {LIMITS[name]:,}).")
        for name in ("lr", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
        if not isinstance(self.num_val, int) or self.num_val < 0:
            raise ValueError(f"num_val must be a non-negative integer, got {self.num_val!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        # np.float32 or np.dtype("float32") is stored by name: the config is compared, hashed and written as JSON
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        largest = float(np.finfo(np.dtype(self.dtype)).max)
        if self.lr > largest:  # every step's update would be infinite (a huge θ only means no clipping: allowed)
            raise ValueError(f"lr={self.lr:g} is infinite in {self.dtype} (its largest number is {largest:.4g}).")
        if self.cell not in CELLS:
            raise ValueError(f"Unknown cell {self.cell!r}; expected one of {list(CELLS)}.")
        if self.second_bias not in SECOND_BIAS:
            raise ValueError(f"second_bias must be one of {list(SECOND_BIAS)}, got {self.second_bias!r}.")
        Model(CELLS[self.cell], self.num_layers)  # validates num_layers

    @property
    def model(self) -> Model:
        """The cell, stacked ``num_layers`` deep, with or without the trained second biases."""
        return Model(CELLS[self.cell], self.num_layers, self.second_bias == "trained")

    @property
    def resets_state_every_batch(self) -> bool:
        """Random sampling and the ed. 2 protocol start each minibatch from a zero state."""
        return self.protocol == "d2l-ed2" or self.sampling == "random"

    @property
    def batching(self) -> str:
        """How minibatches are drawn, for run headers (:func:`batching_text`)."""
        return batching_text(self.protocol, self.sampling)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """:meth:`to_dict` as results record it: the fields its protocol does not use as None (an ed. 2 run
        read "sampling": "sequential" and "max_tokens": 10000, which ed. 2 ignores and compare refuses)."""
        unused = ED1_ONLY if self.protocol == "d2l-ed2" else ("num_train", "num_val")
        return {k: None if k in unused else v for k, v in self.to_dict().items()}


PRESETS: dict[str, TrainConfig] = {
    # d2l ed. 1, ch. 8.5: perplexity about 1.0 (sequential) / 1.4 (random) after 500 epochs.
    "d2l-ed1": TrainConfig(),
    # d2l ed. 2, ch. 9.5: a small hidden layer, large minibatches, train/validation split.
    "d2l-ed2": TrainConfig(
        protocol="d2l-ed2", batch_size=1024, num_steps=32, num_hiddens=32, num_epochs=100
    ),
    # The ed. 1 hyper-parameters with fewer epochs: a few minutes for all backends on 2 cores.
    "quick": TrainConfig(num_epochs=60),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named preset, optionally with some fields overridden (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Known presets: {sorted(PRESETS)}.")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"Unknown config fields {sorted(unknown)}.")
    base = PRESETS[name]
    ignored = [k for k in ED1_ONLY if k in changes and changes[k] != getattr(base, k)]
    if (changes.get("protocol") or base.protocol) == "d2l-ed2" and ignored:  # as the command line refuses them
        raise ValueError(f"{' and '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply to the d2l-ed2 "
                         "protocol (shuffled fixed windows of the whole text; num_train and num_val set how many)")
    return base.replace(**changes)
