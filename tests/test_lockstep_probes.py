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


def _step(scale: dict[str, float], lr: float = 1.0) -> tuple[dict, dict]:
    """Parameters of ones and gradients that move each by ``scale`` of its size at half of ``lr``."""
    params = {k: np.ones((4, 4)) for k in scale}
    return params, {k: np.full((4, 4), s / (lr * lockstep.PROBE_LR_FACTOR)) for k, s in scale.items()}


def test_probe_lr_is_half_the_lr_where_every_update_is_resolved():
    params, grads = _step({"W_hh": 0.1, "b_q": 0.5})
    assert lockstep.probe_lr(TrainConfig(lr=1.0), params, grads, norm=1.0) == 0.5
    # ... but never 1, where lr^2 = lr: at --lr 2 half the lr was exactly 1
    params, grads = _step({"W_hh": 0.1, "b_q": 0.5}, lr=2.0)
    assert lockstep.probe_lr(TrainConfig(lr=2.0), params, grads, norm=1.0) == 2.0


def test_probe_lr_is_raised_until_the_smallest_update_is_resolved():
    params, grads = _step({"W_hh": 1e-5, "b_q": 0.5})  # W_hh moves by 1e-5 of its size
    lr = lockstep.probe_lr(TrainConfig(lr=1.0), params, grads, norm=1.0)
    assert lr == pytest.approx(0.5 * lockstep.PROBE_RESOLUTION["float32"] / 1e-5, rel=1e-3)
    # a zero update (the parameter's gradient is 0 on this minibatch) asks for nothing
    params, grads = _step({"W_hh": 0.0, "b_q": 0.5})
    assert lockstep.probe_lr(TrainConfig(lr=1.0), params, grads, norm=1.0) == 0.5


def test_an_update_below_what_float64_resolves_is_still_measured():
    """Measured as after - before, an update under half an ulp of its parameter was 0 and asked for no raise
    (float32 at --lr 1e-9, float64 at 1e-20): the need now comes from the gradient itself."""
    params, grads = _step({"W_hh": 1e-14, "b_q": 1e-10})
    norm = float(np.sqrt(sum(np.sum(g * g) for g in grads.values())))
    lr = lockstep.probe_lr(TrainConfig(lr=1.0, dtype="float64"), params, grads, norm=norm)
    assert lr == pytest.approx(0.5 * lockstep.PROBE_RESOLUTION["float64"] / 1e-14, rel=1e-9)


def test_probe_lr_is_capped_and_never_near_one():
    params, grads = _step({"W_hh": 1e-19, "b_q": 1e-19})  # a raise of 2.5e16 asked for
    assert lockstep.probe_lr(TrainConfig(lr=1.0), params, grads, norm=1e-18) == 0.5 * lockstep.PROBE_LR_MAX_RAISE
    params, grads = _step({"W_hh": 1e-19, "b_q": 0.5})
    # updates stay far from overflow: the raised step's largest update is about lr * norm
    assert lockstep.probe_lr(TrainConfig(lr=1.0), params, grads, norm=1e6) * 1e6 <= lockstep.PROBE_MAX_UPDATE * 1.0001
    # at lr 1, lr^2 = lr: a raise that lands near 1 goes on to 2x
    need = 1.1 / 0.5  # a raise of 2.2x would land on 1.1
    params, grads = _step({"W_hh": lockstep.PROBE_RESOLUTION["float32"] / need, "b_q": 0.5})
    lr = lockstep.probe_lr(TrainConfig(lr=1.0), params, grads, norm=1.0)
    assert not 0.75 < lr < 1.5 and lr == pytest.approx(2.2, rel=1e-3)
