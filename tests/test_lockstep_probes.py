"""The probe steps' lr (lockstep.probe_lr): raised where float32 cannot resolve an update, and no further."""

from __future__ import annotations

import numpy as np
import pytest

from multirnn import lockstep, verdict
from multirnn.config import TrainConfig


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_resolved_update_leaves_the_rounding_allowance_at_most_a_tenth_of_the_band(dtype):
    # the verdict allows |diff| <= prtol |update| + rounding |param|; at update >= PROBE_RESOLUTION |param|
    # the second term is at most a tenth of the first
    assert verdict.ROUNDING[dtype] / lockstep.PROBE_RESOLUTION[dtype] <= verdict.PROBE_RTOL[dtype] / 10


def _step(scale: dict[str, float]) -> tuple[dict, dict]:
    # float64 arrays, so that the update is exactly the one asked for (the run's dtype is the config's)
    before = {k: np.ones((4, 4)) for k in scale}
    return before, {k: before[k] - s for k, s in scale.items()}


def test_probe_lr_is_half_the_lr_where_every_update_is_resolved():
    before, after = _step({"W_hh": 0.1, "b_q": 0.5})
    assert lockstep.probe_lr(TrainConfig(lr=1.0), before, after, norm=1.0) == 0.5
    # ... but never 1, where lr^2 = lr: at --lr 2 half the lr was exactly 1
    assert lockstep.probe_lr(TrainConfig(lr=2.0), before, after, norm=1.0) == 2.0


def test_probe_lr_is_raised_until_the_smallest_update_is_resolved():
    before, after = _step({"W_hh": 1e-5, "b_q": 0.5})  # W_hh moves by 1e-5 of its size
    lr = lockstep.probe_lr(TrainConfig(lr=1.0), before, after, norm=1.0)
    assert lr == pytest.approx(0.5 * lockstep.PROBE_RESOLUTION["float32"] / 1e-5, rel=1e-3)
    # a zero update (the parameter's gradient is 0 on this minibatch) asks for nothing
    before, after = _step({"W_hh": 0.0, "b_q": 0.5})
    assert lockstep.probe_lr(TrainConfig(lr=1.0), before, after, norm=1.0) == 0.5


def test_probe_lr_is_capped_and_never_near_one(monkeypatch):
    monkeypatch.setattr(lockstep, "PROBE_LR_MAX_RAISE", 1e8)  # float64 cannot ask for the real cap's raise
    before, after = _step({"W_hh": 1e-12, "b_q": 0.5})  # a raise of 2.5e9 asked for
    assert lockstep.probe_lr(TrainConfig(lr=1.0), before, after, norm=1.0) == 0.5 * lockstep.PROBE_LR_MAX_RAISE
    # updates stay far from overflow: the raised step's largest update is about lr * norm
    assert lockstep.probe_lr(TrainConfig(lr=1.0), before, after, norm=1e6) * 1e6 <= lockstep.PROBE_MAX_UPDATE * 1.0001
    # at lr 1, lr^2 = lr: a raise that lands near 1 goes on to 2x
    need = 1.1 / 0.5  # a raise of 2.2x would land on 1.1
    before, after = _step({"W_hh": lockstep.PROBE_RESOLUTION["float32"] / need, "b_q": 0.5})
    lr = lockstep.probe_lr(TrainConfig(lr=1.0), before, after, norm=1.0)
    assert not 0.75 < lr < 1.5 and lr == pytest.approx(2.2, rel=1e-3)
