"""TensorFlow-specific checks: trace caching, in-place variable updates, the clipping rule (not
tf.clip_by_global_norm) and the log filter; the shared suite covers forward and gradients."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import multirnn
from multirnn import PARAM_NAMES
from tests.conftest import random_problem, require_backend_module

require_backend_module("tensorflow")


@pytest.fixture(scope="module")
def fast() -> multirnn.Backend:
    return multirnn.get_backend("tensorflow", mode="fast")


@pytest.fixture(scope="module")
def oracle() -> multirnn.Backend:
    return multirnn.get_backend("numpy")


def test_fast_train_step_is_traced_once_per_shape(fast):
    """New params, new lr/θ values and a new state reuse the compiled step; a new shape adds one."""
    for seed, lr in ((0, 0.5), (1, 0.25), (2, 1.0)):
        params, X, Y, _ = random_problem(seed=seed)
        p = fast.params_from_numpy(params)
        fast.train_step(p, X, Y, fast.init_state(3, 7, "float64"), lr, 1.0 + seed)
    steps = {k: f for k, f in fast._compiled.items() if k[0] == "train_step"}
    assert len(steps) == 1
    assert next(iter(steps.values())).experimental_get_tracing_count() == 1

    params, X, Y, _ = random_problem(num_steps=2)
    fast.train_step(fast.params_from_numpy(params), X, Y, fast.init_state(3, 7, "float64"), 0.5, 1.0)
    assert len({k for k in fast._compiled if k[0] == "train_step"}) == 2


def test_fast_sgd_updates_the_variables_in_place(fast):
    params, X, Y, _ = random_problem()
    p = fast.params_from_numpy(params)
    before = {k: id(v) for k, v in p.items()}
    p2, *_ = fast.train_step(p, X, Y, fast.init_state(3, 7, "float64"), 0.5, 1.0)
    assert p2 is p and {k: id(v) for k, v in p2.items()} == before
    assert not np.array_equal(fast.params_to_numpy(p)["W_hh"], params["W_hh"])


def test_fast_prediction_matches_eager():
    """``predict`` feeds (1, 1) batches one by one: fast forward compiles that shape once."""
    params, *_ = random_problem(vocab_size=28, num_hiddens=16)
    vocab = multirnn.Vocab(list("abcdefghijklmnopqrstuvwxyz "))
    results = []
    for mode in ("eager", "fast"):
        be = multirnn.get_backend("tensorflow", mode=mode)
        results.append(multirnn.predict(be, be.params_from_numpy(params), vocab, "time traveller", 10))
    assert results[0] == results[1]


def test_clipping_follows_d2l_not_clip_by_global_norm():
    """Why the backend does not use tf.clip_by_global_norm: below the bound it multiplies by
    θ * (1/θ), which is not exactly 1 for θ = 49, so "untouched" gradients would change."""
    from multirnn.backends.tensorflow_backend import tf

    be = multirnn.get_backend("tensorflow")
    g = {k: np.full(v.shape, 1e-3) for k, v in random_problem()[0].items()}
    clipped, norm = be.clip_gradients(be.params_from_numpy(g), 49.0)
    assert float(norm) < 49.0
    for k, v in be.params_to_numpy(clipped).items():
        np.testing.assert_array_equal(v, g[k])
    library, _ = tf.clip_by_global_norm([tf.constant(g[k]) for k in PARAM_NAMES], 49.0)
    assert any(not np.array_equal(t.numpy(), g[k]) for t, k in zip(library, PARAM_NAMES))


def test_log_filter_keeps_errors_and_drops_info(monkeypatch):
    from multirnn.backends import tensorflow_backend as tfb

    monkeypatch.setattr(tfb, "_MIN_LOG_LEVEL", 2)
    info = "I0000 00:00:1795451034.743851    4122 port.cc:153] oneDNN custom operations are on."
    error = "E0000 00:00:1795451034.743851    4122 util.cc:131] something failed"
    old = "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] no cuda"
    assert tfb._is_log_noise(info) and tfb._is_log_noise(old) and tfb._is_log_noise(tfb._ABSL_PREINIT_NOTICE)
    assert not tfb._is_log_noise(error) and not tfb._is_log_noise("Traceback (most recent call last):")
    monkeypatch.setattr(tfb, "_MIN_LOG_LEVEL", 0)  # the user asked for everything
    assert not tfb._is_log_noise(info) and not tfb._is_log_noise(tfb._ABSL_PREINIT_NOTICE)


def test_default_log_level_hides_info_and_warnings():
    # Quietness and import isolation: tests/test_registry.py, for every backend.
    code = "import multirnn, os; multirnn.get_backend('tensorflow'); print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
