"""The torch.nn.RNN built-in-layer baseline (benchmarks/builtin_torch.py) computes the NumPy oracle's maths.

The checks every baseline shares are in test_builtin_layers.py; these are specific to this one."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import random_problem, require_backend_module

require_backend_module("torch")
import torch  # noqa: E402  (after the guard)

from benchmarks import builtin_torch  # noqa: E402  (after the skip: it imports torch)

SHAPES = {"vocab_size": 11, "num_hiddens": 16, "batch_size": 4, "num_steps": 8}


def _problem(seed: int = 0):
    return random_problem(seed, dtype="float32", **SHAPES)


def test_second_bias_stays_frozen_at_zero():
    params, *_ = _problem()
    trainer = builtin_torch.make_trainer(params, 0.7, 0.5)
    state = trainer.init_state(SHAPES["batch_size"])
    for seed in (1, 2):
        X, Y = _problem(seed)[1:3]
        _, state = trainer.train_step(X, Y, state)
    bias_hh = trainer.rnn.bias_hh_l0
    assert not bias_hh.requires_grad and bias_hh.grad is None
    np.testing.assert_array_equal(bias_hh.detach().cpu().numpy(), np.zeros(SHAPES["num_hiddens"], np.float32))


def test_gpu_request_without_gpu_raises():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the error path cannot be exercised")
    params, *_ = _problem()
    with pytest.raises(builtin_torch.GPUUnavailableError):
        builtin_torch.make_trainer(params, 1.0, 1.0, device="gpu")
