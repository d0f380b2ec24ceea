"""MXNet-specific checks: compiled blocks are cached per shape.

Forward, gradients and float32 steps of both modes are in the shared suite (test_backends.py);
import hygiene for every backend is in test_registry.py.
"""

from __future__ import annotations

import pytest

import multirnn
from tests.conftest import random_problem, require_backend_module

require_backend_module("mxnet")


@pytest.fixture
def fast() -> multirnn.Backend:
    return multirnn.get_backend("mxnet", mode="fast")


def test_fast_blocks_are_compiled_once_per_shape(fast):
    params, X, Y, _ = random_problem()
    p = fast.params_from_numpy(params)
    state = fast.init_state(3, 7, "float64")
    for _ in range(3):
        p, _, _, state = fast.train_step(p, X, Y, state, 0.1, 1.0)
    assert len(fast._blocks) == 2  # the loss graph and the clip+SGD graph
    fast.train_step(p, X[:, :2], Y[:, :2], state, 0.1, 1.0)  # new shape -> one new loss graph
    assert len(fast._blocks) == 3
