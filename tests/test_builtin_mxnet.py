"""The Gluon built-in-layer baseline (benchmarks/builtin_mxnet.py) computes the NumPy oracle's maths.

The checks every baseline shares are in test_builtin_layers.py; these are specific to this one."""

from __future__ import annotations

import numpy as np

from tests.conftest import random_problem, require_backend_module

require_backend_module("mxnet")  # imports mxnet through the backend, which restores numpy.bool first

from benchmarks import builtin_mxnet  # noqa: E402  (after the skip: it imports mxnet)

SHAPES = {"vocab_size": 11, "num_hiddens": 16, "batch_size": 4, "num_steps": 8}


def _problem(seed: int = 0):
    return random_problem(seed, dtype="float32", **SHAPES)


def test_second_bias_stays_frozen_at_zero():
    params, *_ = _problem()
    trainer = builtin_mxnet.make_trainer(params, 0.7, 0.5)
    state = trainer.init_state(SHAPES["batch_size"])
    for seed in (1, 2):
        X, Y = _problem(seed)[1:3]
        _, state = trainer.train_step(X, Y, state)
    h2h_bias = trainer._net.rnn.l0_h2h_bias
    assert h2h_bias.grad_req == "null"
    np.testing.assert_array_equal(h2h_bias.data().asnumpy(), np.zeros(SHAPES["num_hiddens"], np.float32))
