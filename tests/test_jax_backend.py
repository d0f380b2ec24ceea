"""JAX-specific checks beyond the shared conformance suite: the compiled steps (the tuned tanh RNN
and the generic recurrence of every other model) on edge shapes, buffer donation, no float64 in
float32 programs under x64, copies on the way in, the log level, the scratch backend without
flax; and flax's layers: where d2l's weights live in the flax params, the LSTM carry order,
flax's initialisers, the unsupported models."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest

import multirnn
from multirnn import PARAM_NAMES, Model, UnsupportedModelError
from multirnn.testing import oracle_for, random_model_problem
from tests.conftest import _load, random_problem, require_backend, require_backend_module, require_module

require_backend_module("jax")

import jax  # only once the backend is known to be there


def _copy(state: tuple) -> tuple:
    return tuple(np.array(s, copy=True) for s in state)


@pytest.fixture
def fast() -> multirnn.Backend:
    return _load("jax", "fast")


@pytest.mark.parametrize("batch_size,num_steps,num_hiddens", [(1, 1, 1), (2, 1, 5), (1, 3, 4), (3, 7, 9)])
def test_fast_train_step_matches_oracle_on_edge_shapes(fast, oracle, batch_size, num_steps, num_hiddens):
    # The compiled backward peels off the last time step; T=1 leaves an empty scan.
    params, X, Y, h0 = random_problem(2, 6, num_hiddens, batch_size, num_steps, "float64")
    p_want, l_want, n_want, s_want = oracle.train_step(oracle.params_from_numpy(params), X, Y, (h0.copy(),), 0.5, 1.0)
    p_got, l_got, n_got, s_got = fast.train_step(fast.params_from_numpy(params), X, Y, (h0.copy(),), 0.5, 1.0)
    np.testing.assert_allclose(float(l_got), float(l_want), rtol=1e-10)
    np.testing.assert_allclose(float(n_got), float(n_want), rtol=1e-9)
    np.testing.assert_allclose(fast.as_numpy(s_got[0]), s_want[0], rtol=1e-10, atol=1e-12)
    got = fast.params_to_numpy(p_got)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[k], p_want[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2, 5])
def test_recurrence_vjp_matches_autodiff_for_every_input(T):
    """The tuned recurrence's hand-written (feature-major) VJP against autodiff of a plain scan, for
    xw, W_hh and h0: the fast step drops dL/dh0 (the state is detached), so no training test sees it."""
    import jax.numpy as jnp
    from jax import lax

    from multirnn.backends.jax_backend import _recurrence

    def plain(xw, W, h0):
        return lax.scan(lambda h, x: (jnp.tanh(x + h @ W),) * 2, h0, xw)[1]

    rng = np.random.default_rng(3)
    B, H = 3, 4
    xw, g = (rng.standard_normal((T, B, H)) * 0.5 for _ in range(2))
    W, h0 = rng.standard_normal((H, H)) * 0.5, rng.standard_normal((B, H)) * 0.5
    with jax.experimental.enable_x64():
        args = tuple(jnp.asarray(a, dtype=jnp.float64) for a in (xw, W, h0))
        got, want = (jax.vjp(f, *args)[1](jnp.asarray(g)) for f in (_recurrence, plain))
        np.testing.assert_allclose(np.asarray(_recurrence(*args)), np.asarray(plain(*args)), rtol=1e-12)
        for name, a, b in zip(("xw", "W_hh", "h0"), got, want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12, err_msg=name)


def test_fast_step_compiles_without_float64_for_float32(fast):
    # Under x64 a stray Python float or default dtype would silently widen float32 work.
    from multirnn.backends import jax_backend as jb

    params, X, Y, _ = random_problem(dtype="float32")
    p = fast.params_from_numpy(params)
    h = fast.init_state(3, 7, "float32")[0]
    one = np.float32(1)
    hlo = jb._fast_train_step.lower(p, X.astype(np.int32), Y.astype(np.int32), h, one, one).as_text()
    assert "f64" not in hlo


def test_donation_is_used_and_dict_stays_valid(fast):
    params, X, Y, _ = random_problem(dtype="float64")
    p = fast.params_from_numpy(params)
    old = dict(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Some donated buffers were not usable" must not appear
        out, *_ = fast.train_step(p, X, Y, fast.init_state(3, 7, "float64"), 0.1, 1.0)
    assert out is p and all(old[k].is_deleted() for k in PARAM_NAMES)  # updated in place
    assert all(np.isfinite(v).all() for v in fast.params_to_numpy(p).values())


def test_params_from_numpy_copies():
    be = _load("jax")
    params, *_ = random_problem()
    p = be.params_from_numpy(params)
    params["W_hh"][:] = 0.0  # the caller's arrays are theirs to mutate
    assert be.params_to_numpy(p)["W_hh"].any()


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_user_log_level_is_respected():
    _load("jax")
    code = "import os, multirnn.backends.jax_backend; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    assert _run_python(code, TF_CPP_MIN_LOG_LEVEL="0").stdout.strip() == "0"
    assert _run_python(code).stdout.strip() == "2"


# --- every model from scratch: the generic compiled recurrence ------------------------------------

GENERIC = [Model("lstm", 2), Model("gru"), Model("gru-reset-after", 1, True), Model("rnn", 2)]


def _scratch(mode: str, model: Model) -> multirnn.Backend:
    require_backend("jax")
    return multirnn.get_backend("jax", mode=mode, model=model)


@pytest.mark.parametrize("model", GENERIC, ids=lambda m: m.name.replace(" ", ""))
@pytest.mark.parametrize("batch_size,num_steps,num_hiddens", [(1, 1, 1), (2, 3, 5)])
def test_generic_fast_step_matches_oracle_on_edge_shapes(model, batch_size, num_steps, num_hiddens):
    # T=1: the backward scan has a single step; H=1: every gate slice is one column.
    fast, oracle = _scratch("fast", model), oracle_for(model)
    params, X, Y, state = random_model_problem(model, 2, 6, num_hiddens, batch_size, num_steps, "float64")
    p_want, l_want, n_want, s_want = oracle.train_step(oracle.params_from_numpy(params), X, Y, _copy(state), 0.5, 1.0)
    p_got, l_got, n_got, s_got = fast.train_step(fast.params_from_numpy(params), X, Y, _copy(state), 0.5, 1.0)
    np.testing.assert_allclose(float(l_got), float(l_want), rtol=1e-10)
    np.testing.assert_allclose(float(n_got), float(n_want), rtol=1e-9)
    for got, want in zip(s_got, s_want):
        np.testing.assert_allclose(fast.as_numpy(got), want, rtol=1e-10, atol=1e-12)
    got = fast.params_to_numpy(p_got)
    for k in model.param_names():
        np.testing.assert_allclose(got[k], p_want[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("model", GENERIC[:2], ids=lambda m: m.name.replace(" ", ""))
def test_generic_fast_step_compiles_without_float64_for_float32(model):
    from multirnn.backends import jax_backend as jb

    fast = _scratch("fast", model)
    params, X, Y, _ = random_model_problem(model, dtype="float32")
    one = np.float32(1)
    hlo = jb._model_train_step.lower(model, fast.params_from_numpy(params), X.astype(np.int32), Y.astype(np.int32),
                                     fast.init_state(3, 7, "float32"), one, one).as_text()
    assert "f64" not in hlo


def test_generic_donation_is_used_and_dict_stays_valid():
    model = Model("lstm", 2)
    fast = _scratch("fast", model)
    params, X, Y, _ = random_model_problem(model)
    p = fast.params_from_numpy(params)
    old, state = dict(p), fast.init_state(3, 7, "float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Some donated buffers were not usable" must not appear
        out, _, _, new_state = fast.train_step(p, X, Y, state, 0.1, 1.0)
    assert out is p and all(old[k].is_deleted() for k in model.param_names())
    assert all(s.is_deleted() for s in state) and len(new_state) == 4


def test_scratch_backend_works_without_flax():
    # flax is imported only by the layers implementation; blocking it must leave scratch intact.
    _load("jax")
    code = ("import sys; sys.modules['flax'] = None\n"
            "import numpy as np, multirnn\n"
            "from multirnn.testing import random_model_problem\n"
            "m = multirnn.Model('lstm')\n"
            "be = multirnn.get_backend('jax', mode='fast', model=m)\n"
            "p, X, Y, s = random_model_problem(m)\n"
            "_, loss, _, _ = be.train_step(be.params_from_numpy(p), X, Y, s, 0.1, 1.0)\n"
            "print(np.isfinite(float(loss)))\n"
            "try:\n"
            "    multirnn.get_backend('jax', impl='layers')\n"
            "except multirnn.BackendUnavailableError as exc:\n"
            "    print(exc)\n")
    out = _run_python(code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "True" and "pip install 'multirnn[jax]'" in lines[1], out.stdout


# --- flax's own layers ----------------------------------------------------------------------------

LAYER_MODELS = [Model("rnn"), Model("rnn", 2), Model("gru-reset-after"), Model("lstm"), Model("lstm", 2)]


def _layers(mode: str = "eager", model: Model | None = None) -> multirnn.Backend:
    require_backend("jax")
    require_module("flax", "pip install 'multirnn[jax]'")
    return multirnn.get_backend("jax", impl="layers", mode=mode, model=model or Model())


def _leaf(tree: Any, path: str) -> Any:
    for key in path.split("/"):
        tree = tree[key]
    return tree


@pytest.mark.parametrize("model", LAYER_MODELS, ids=lambda m: m.name.replace(" ", ""))
def test_layers_weights_live_in_the_flax_params(model):
    be = _layers("fast", model)
    params, *_ = random_model_problem(model, vocab_size=11, num_hiddens=7)
    variables = be.params_from_numpy(params)
    layout = be.param_layout()
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    flax_paths = {"/".join(k.key for k in path) for path, _ in flat}
    # Every flax parameter holds exactly one d2l parameter: nothing frozen, nothing unmapped.
    assert flax_paths == set(layout) and len(flat) == len(model.param_names())
    assert sorted(v["holds"] for v in layout.values()) == sorted(model.param_names())
    for path, entry in layout.items():
        leaf = _leaf(variables, path)
        assert list(leaf.shape) == entry["shape"], path  # shapes in numbers once params were seen
        np.testing.assert_array_equal(np.asarray(leaf), params[entry["holds"]], err_msg=path)  # no transposes
    back = be.params_to_numpy(variables)
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_layers_gate_mapping_by_name():
    # d2l's LSTM candidate C~ is flax's 'g' gate, and its biases sit on the recurrent Dense;
    # the reset-after GRU's b_hn is 'hn''s bias, the gate biases are on the input Dense.
    lstm = {v["holds"]: k for k, v in _layers("eager", Model("lstm", 2)).param_layout().items()}
    assert lstm["W_xc"] == "params/rnn0/cell/ig/kernel" and lstm["b_c"] == "params/rnn0/cell/hg/bias"
    assert lstm["W_ho_l1"] == "params/rnn1/cell/ho/kernel" and lstm["W_hq"] == "params/dense/kernel"
    gru = {v["holds"]: k for k, v in _layers("eager", Model("gru-reset-after")).param_layout().items()}
    assert gru["b_hn"] == "params/rnn0/cell/hn/bias" and gru["b_n"] == "params/rnn0/cell/in/bias"
    assert gru["W_hz"] == "params/rnn0/cell/hz/kernel"
    rnn = _layers("eager").param_layout()
    assert rnn["params/rnn0/cell/i/kernel"]["shape"] == ["V", "H"]  # before any params: letters


def test_layers_lstm_state_order_and_cells():
    # flax's LSTM carry is (c, h); the backend's state is d2l's (H, C). Fast mode runs
    # OptimizedLSTMCell (same params, concatenated kernels), eager mode LSTMCell.
    import flax.linen as nn

    model = Model("lstm")
    eager, fast = _layers("eager", model), _layers("fast", model)
    params, X, _, state = random_model_problem(model)
    _, want = oracle_for(model).forward(params, X, _copy(state))
    for be, cell in ((eager, nn.LSTMCell), (fast, nn.OptimizedLSTMCell)):
        _, got = be.forward(be.params_from_numpy(params), X, _copy(state))
        np.testing.assert_allclose(be.as_numpy(got[0]), want[0], rtol=1e-12)  # H
        np.testing.assert_allclose(be.as_numpy(got[1]), want[1], rtol=1e-12)  # C
        assert be._model(11, 7, "float64").cell_type is cell


def test_layers_b_hn_is_trained():
    # flax's GRUCell has b_hn (hn's bias): for the reset-after model it is a d2l parameter, so it
    # gets a gradient and an update like every other one (no frozen bias here).
    model = Model("gru-reset-after")
    be = _layers("fast", model)
    params, X, Y, state = random_model_problem(model)
    before = params["b_hn"].copy()
    p, *_ = be.train_step(be.params_from_numpy(params), X, Y, _copy(state), 0.5, 1e6)
    assert not np.array_equal(be.params_to_numpy(p)["b_hn"], before)


@pytest.mark.parametrize("model", [Model("lstm", 2), Model("gru-reset-after")], ids=lambda m: m.name.replace(" ", ""))
def test_layers_default_params_are_flax_initialisers(model):
    be = _layers("fast", model)
    V, H = 30, 16
    p = be.default_params(V, H, seed=3, dtype="float64")
    assert set(p) == set(model.param_names()) and all(v.dtype == np.float64 for v in p.values())
    for name, v in p.items():
        if name.startswith("b"):
            assert not v.any(), f"{name}: flax biases start at zero"
        elif name.startswith("W_h") and name != "W_hq":  # recurrent kernels: orthogonal
            np.testing.assert_allclose(v @ v.T, np.eye(H), atol=1e-12, err_msg=name)
        else:  # lecun_normal: a normal truncated at 2 std, std 1/sqrt(fan_in) after the truncation
            fan_in = v.shape[0]
            bound = 2 / 0.87962566103423978 / np.sqrt(fan_in)
            assert np.abs(v).max() <= bound, name
            assert 0.7 < v.std() * np.sqrt(fan_in) < 1.3, name
    again = be.default_params(V, H, seed=3, dtype="float64")
    assert all(np.array_equal(again[k], p[k]) for k in p)
    other = be.default_params(V, H, seed=4, dtype="float64")
    assert not np.array_equal(other["W_hq"], p["W_hq"])
    assert all(v.dtype == np.float32 for v in be.default_params(V, H, seed=3, dtype="float32").values())
    eager = _layers("eager", model).default_params(V, H, seed=3, dtype="float64")  # same draws, either cell
    assert all(np.array_equal(eager[k], p[k]) for k in p)


def test_layers_fast_step_compiles_without_float64_for_float32():
    model = Model("lstm", 2)
    be = _layers("fast", model)
    params, X, Y, _ = random_model_problem(model, dtype="float32")
    variables = be.params_from_numpy(params)
    fm = be._model_of(variables)
    one = np.float32(1)
    carries = fm.carries(be.init_state(3, 7, "float32"))
    hlo = fm.train_step.lower(variables, X.astype(np.int32), Y.astype(np.int32), carries, one, one).as_text()
    assert "f64" not in hlo


def test_layers_donation_is_used_and_dict_stays_valid():
    model = Model("lstm", 2)
    be = _layers("fast", model)
    params, X, Y, _ = random_model_problem(model)
    p = be.params_from_numpy(params)
    old = jax.tree_util.tree_leaves(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, *_ = be.train_step(p, X, Y, be.init_state(3, 7, "float64"), 0.1, 1.0)
    assert out is p and all(a.is_deleted() for a in old)
    assert all(np.isfinite(v).all() for v in be.params_to_numpy(p).values())


def test_layers_unsupported_reasons():
    require_backend("jax")
    with pytest.raises(UnsupportedModelError, match="reset gate after"):
        multirnn.get_backend("jax", impl="layers", model=Model("gru"))
    for cell in ("rnn", "lstm", "gru-reset-after"):
        with pytest.raises(UnsupportedModelError, match="bias"):
            multirnn.get_backend("jax", impl="layers", model=Model(cell, 1, True))


def test_layers_without_flax_is_a_clear_error(monkeypatch):
    _load("jax")
    monkeypatch.setitem(sys.modules, "flax", None)  # import flax now raises ImportError
    with pytest.raises(multirnn.BackendUnavailableError, match=r"pip install 'multirnn\[jax\]'"):
        multirnn.get_backend("jax", impl="layers")


def _scalar_reductions_per_kernel(hlo: str) -> dict[str, int]:
    """Compiled HLO text -> the computations (fusion kernels) holding more than one reduce to a scalar."""
    import re

    counts = {}
    for m in re.finditer(r"^(%\S+) \(.*?\) -> .*?\{\n(.*?)^\}", hlo, re.M | re.S):
        n = len(re.findall(r"= [a-z0-9]+\[\] reduce\(", m.group(2)))
        if n > 1:
            counts[m.group(1)] = n
    return counts


@pytest.mark.parametrize("model", [Model("lstm", 2), Model("gru-reset-after", 2), Model("rnn", 2)],
                         ids=lambda m: m.name.replace(" ", ""))
def test_layers_fast_step_keeps_norm_reductions_apart(model):
    # Each gradient's sum of squares must be its own kernel. When XLA:CPU fused them (up to six,
    # with the sum and sqrt), LLVM took ~33 s over that one kernel for the 2-layer LSTM layers at
    # H=32 in float32 (six (32, 32) reductions: ~55 s, one: 0.4 s), paid again per batch shape.
    # The kernel structure is the same at this small size, where it compiles in ~1 s either way.
    be = _layers("fast", model)
    params, X, Y, _ = random_model_problem(model, dtype="float32")
    variables = be.params_from_numpy(params)
    fm = be._model_of(variables)
    one = np.float32(1)
    carries = fm.carries(be.init_state(X.shape[0], 7, "float32"))
    hlo = fm.train_step.lower(variables, X.astype(np.int32), Y.astype(np.int32), carries, one, one).compile().as_text()
    assert _scalar_reductions_per_kernel(hlo) == {}
    assert _scalar_reductions_per_kernel("%f (a: f32[2]) -> f32[] {\n  %r = f32[] reduce(%a, %z)\n"
                                         "  %s = f32[] reduce(%a, %z)\n}\n") == {"%f": 2}  # the parser sees them


def test_layers_fast_step_is_compiled_once_across_steps(caplog):
    # Steps of one shape reuse one executable: a carried or fresh state, a new lr or clipping bound
    # (traced scalars) must not retrace or recompile the step, nor anything else per step.
    import logging

    model = Model("lstm", 2)
    be = _layers("fast", model)
    params, X, Y, state = random_model_problem(model, dtype="float32")
    p = be.params_from_numpy(params)
    s = be.init_state(X.shape[0], 7, "float32")
    p, _, _, s = be.train_step(p, X, Y, s, 0.5, 1.0)  # may compile (the model is shared per process)
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.DEBUG), jax.log_compiles(True):
        for step in range(4):
            if step == 2:
                s = be.init_state(X.shape[0], 7, "float32")  # d2l's fresh state per minibatch
            Xs, Ys = (rng.integers(0, 11, X.shape) for _ in range(2))
            p, loss, norm, s = be.train_step(p, Xs, Ys, s, 0.5 / (step + 1), 1.0 + step)
        float(loss), float(norm)
    with jax.log_compiles(True):
        jax.jit(lambda a: a + 1)(np.zeros(step + 3))  # the log is captured: a fresh compile shows up
    logged = [r.getMessage().split(" with ")[0] for r in caplog.records]
    assert any(m.startswith("Compiling jit(<lambda>)") for m in logged), logged
    assert [m for m in logged if "train_step" in m or ("Compiling" in m and "lambda" not in m)] == []
