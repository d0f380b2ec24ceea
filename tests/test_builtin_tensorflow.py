"""The Keras built-in-layer baseline (benchmarks/builtin_tensorflow.py) computes the NumPy oracle's maths.

The checks every baseline shares are in test_builtin_layers.py; these are specific to this one."""

from __future__ import annotations


from tests.conftest import random_problem, require_backend_module

require_backend_module("tensorflow")  # keras ships with tensorflow

from benchmarks import builtin_tensorflow  # noqa: E402  (after the skips: it imports tensorflow and keras)

SHAPES = {"vocab_size": 11, "num_hiddens": 16, "batch_size": 4, "num_steps": 8}


def _problem(seed: int = 0):
    return random_problem(seed, dtype="float32", **SHAPES)


def test_train_step_traces_once_per_shape():
    params, *_ = _problem()
    trainer = builtin_tensorflow.make_trainer(params, 0.5, 1.0)
    state = trainer.init_state(SHAPES["batch_size"])
    for seed in (1, 2, 3):
        X, Y = _problem(seed)[1:3]
        _, state = trainer.train_step(X, Y, state)
    assert trainer._train_step.experimental_get_tracing_count() == 1
