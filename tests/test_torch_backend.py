"""PyTorch-specific checks beyond the shared conformance suite.

The shared suite checks forward, gradients and training steps of every model, both implementations
and both modes; here fast mode's own ``clip_gradients`` and ``sgd_step`` are checked against the
oracle too, along with the torch-only rules (no aliasing of caller data, global settings untouched,
the log level) and what the layers implementation adds: d2l's weights inside torch's own parameter
objects, the frozen second bias, torch's initialisers and the parameter layout.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import multirnn
from multirnn import PARAM_NAMES
from multirnn.cells import Model
from multirnn.testing import FWD_RTOL, assert_grads_close, oracle_for, random_model_problem
from tests.conftest import random_problem, require_backend_module

require_backend_module("torch")
import torch  # noqa: E402  (after the guard)

MODES = ["eager", "fast"]
DTYPES = ["float64", "float32"]
IMPL_MODES = [(i, m) for i in ("scratch", "layers") for m in MODES]


@pytest.fixture(params=IMPL_MODES, ids=[f"{i}-{m}" for i, m in IMPL_MODES])
def torch_backend(request: pytest.FixtureRequest) -> multirnn.Backend:
    impl, mode = request.param
    return multirnn.get_backend("torch", impl=impl, mode=mode)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [10.0, 1e-3, 0.0])
def test_clip_and_sgd_match_oracle_in_both_modes(torch_backend, oracle, dtype, scale):
    be = torch_backend
    params, *_ = random_problem(seed=4, dtype=dtype)
    g = {k: (v * scale).astype(dtype) for k, v in random_problem(seed=5, dtype=dtype)[0].items()}
    want_clipped, want_norm = oracle.clip_gradients({k: v.copy() for k, v in g.items()}, 1.0)
    clipped, norm = be.clip_gradients(be.params_from_numpy(g), 1.0)
    np.testing.assert_allclose(float(norm), float(want_norm), rtol=FWD_RTOL[dtype])
    want = oracle.sgd_step(oracle.params_from_numpy(params), want_clipped, 0.5)
    got = be.params_to_numpy(be.sgd_step(be.params_from_numpy(params), clipped, 0.5))
    for k in PARAM_NAMES:
        assert got[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(got[k], want[k], rtol=FWD_RTOL[dtype], atol=FWD_RTOL[dtype])


def test_modes_share_params(oracle):
    """Params made by one mode train in the other (eager needs autograd leaves, fast does not)."""
    params, X, Y, _ = random_problem(seed=2)
    eager, fast = multirnn.get_backend("torch", mode="eager"), multirnn.get_backend("torch", mode="fast")
    _, want, _ = oracle.loss_and_grads(params, X, Y, oracle.init_state(3, 7, "float64"))
    for be, other in ((eager, fast), (fast, eager)):
        _, grads, _ = be.loss_and_grads(other.params_from_numpy(params), X, Y, be.init_state(3, 7, "float64"))
        assert_grads_close(be.params_to_numpy(grads), want, 1e-9)


def test_caller_data_is_never_aliased(torch_backend):
    """sgd_step updates the backend's copies; returned states and grads stay as they were handed out."""
    be = torch_backend
    params, X, Y, _ = random_problem(seed=6)
    original = {k: v.copy() for k, v in params.items()}
    p = be.params_from_numpy(params)
    _, grads1, state1 = be.loss_and_grads(p, X, Y, be.init_state(3, 7, "float64"))
    g1, s1 = be.params_to_numpy(grads1), be.as_numpy(state1[0]).copy()
    p, _, _, state2 = be.train_step(p, X, Y, state1, 0.5, 1.0)
    be.train_step(p, X, Y, state2, 0.5, 1.0)
    g1_after = be.params_to_numpy(grads1)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(params[k], original[k])
        np.testing.assert_array_equal(g1_after[k], g1[k])
    np.testing.assert_array_equal(be.as_numpy(state1[0]), s1)


def test_results_need_no_grad_and_torch_defaults_are_untouched(torch_backend):
    be = torch_backend
    params, X, Y, _ = random_problem(seed=8, dtype="float32")
    p, loss, norm, state = be.train_step(be.params_from_numpy(params), X, Y, be.init_state(3, 7, "float32"), 0.1, 1.0)
    assert not loss.requires_grad and not norm.requires_grad and not state[0].requires_grad
    assert loss.dtype == norm.dtype == torch.float32
    assert torch.get_default_dtype() == torch.float32


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_user_log_level_is_respected():
    code = "import os, multirnn; multirnn.get_backend('torch'); print(os.environ['TORCH_CPP_LOG_LEVEL'])"
    assert _run(code, TORCH_CPP_LOG_LEVEL="INFO").stdout.strip() == "INFO"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CPP_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == "ERROR"


# --- scratch: every model -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [Model("lstm", 2), Model("gru", 1, True)], ids=lambda m: m.name)
def test_modes_share_params_of_every_model(model):
    """Fast mode's hand-written BPTT and eager autograd give the same gradients from each other's params."""
    params, X, Y, state = random_model_problem(model, seed=2, num_steps=6)
    _, want, _ = oracle_for(model).loss_and_grads(params, X, Y, state)
    eager = multirnn.get_backend("torch", mode="eager", model=model)
    fast = multirnn.get_backend("torch", mode="fast", model=model)
    for be, other in ((eager, fast), (fast, eager)):
        _, grads, _ = be.loss_and_grads(other.params_from_numpy(params), X, Y, state)
        assert_grads_close(be.params_to_numpy(grads), want, 1e-9)


def test_scratch_computes_every_model_and_keeps_the_tuned_rnn_path():
    assert multirnn.get_backend("torch", mode="fast")._tuned
    for model in (Model("rnn", 2), Model("rnn", 1, True), Model("gru")):
        assert not multirnn.get_backend("torch", mode="fast", model=model)._tuned
        assert multirnn.get_backend("torch").unsupported(model) is None


# --- layers: torch.nn.RNN / GRU / LSTM ------------------------------------------------------------------

LAYER_MODELS = [Model("rnn", 2), Model("lstm", 2), Model("gru-reset-after"), Model("lstm", 1, True),
                Model("gru-reset-after", 2, True)]
TORCH_ORDER = {"rnn": "h", "gru-reset-after": "rzn", "lstm": "ifco"}  # d2l's letters in torch's stacking order


def _layers(model: Model, mode: str = "eager") -> multirnn.Backend:
    return multirnn.get_backend("torch", impl="layers", mode=mode, model=model)


@pytest.mark.parametrize("model", LAYER_MODELS, ids=lambda m: m.name)
def test_d2l_weights_live_in_the_layers_own_parameters(model):
    """Each d2l array is a (transposed) row block of torch's parameter, in torch's gate order, and
    a change made to torch's parameter object comes back out under the right d2l name."""
    be = _layers(model)
    params, *_ = random_model_problem(model, seed=1)
    p = be.params_from_numpy(params)
    rnn, linear = p.net.rnn, p.net.linear
    assert isinstance(rnn, {"rnn": torch.nn.RNN, "gru-reset-after": torch.nn.GRU, "lstm": torch.nn.LSTM}[model.cell.name])
    assert rnn.num_layers == model.num_layers and (model.cell.name != "rnn" or rnn.nonlinearity == "tanh")
    H = 7
    for k in range(model.num_layers):
        s = "" if k == 0 else f"_l{k}"
        for j, g in enumerate(TORCH_ORDER[model.cell.name]):
            rows = slice(j * H, (j + 1) * H)
            np.testing.assert_array_equal(getattr(rnn, f"weight_ih_l{k}")[rows].detach().numpy(), params[f"W_x{g}{s}"].T)
            np.testing.assert_array_equal(getattr(rnn, f"weight_hh_l{k}")[rows].detach().numpy(), params[f"W_h{g}{s}"].T)
            np.testing.assert_array_equal(getattr(rnn, f"bias_ih_l{k}")[rows].detach().numpy(), params[f"b_{g}{s}"])
            b_hh = getattr(rnn, f"bias_hh_l{k}")[rows].detach().numpy()
            hidden = params.get(f"b_h{g}{s}")
            np.testing.assert_array_equal(b_hh, np.zeros(H) if hidden is None else hidden)
    np.testing.assert_array_equal(linear.weight.detach().numpy(), params["W_hq"].T)
    np.testing.assert_array_equal(linear.bias.detach().numpy(), params["b_q"])
    order = TORCH_ORDER[model.cell.name]
    j, gate = len(order) - 1, order[-1]  # the last row block: o (LSTM), n (GRU), h (RNN)
    with torch.no_grad():
        rnn.weight_ih_l0[j * H + 2, 3] = 42.0
    back = be.params_to_numpy(p)
    assert back[f"W_x{gate}"][3, 2] == 42.0
    assert sum(int((v == 42.0).sum()) for v in back.values()) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", [Model("rnn"), Model("lstm", 2), Model("gru-reset-after", 2)], ids=lambda m: m.name)
def test_frozen_second_bias_stays_zero_and_gets_no_update(model, mode):
    be = _layers(model, mode)
    params, X, Y, _ = random_model_problem(model, seed=3)
    p = be.params_from_numpy(params)
    state = be.init_state(3, 7, "float64")
    _, grads, _ = be.loss_and_grads(p, X, Y, state)
    for _ in range(3):
        p, _, _, state = be.train_step(p, X, Y, state, 0.5, 0.1)  # θ small: every step clips
    H = 7
    for k in range(model.num_layers):
        b_hh = getattr(p.net.rnn, f"bias_hh_l{k}")
        if model.cell.name == "gru-reset-after":  # trained: b_hn; held at 0: b_hr, b_hz
            assert b_hh.requires_grad
            np.testing.assert_array_equal(b_hh[: 2 * H].detach().numpy(), np.zeros(2 * H))
            np.testing.assert_array_equal(grads[f"rnn.bias_hh_l{k}"][: 2 * H].numpy(), np.zeros(2 * H))
            assert np.abs(b_hh[2 * H:].detach().numpy() - params["b_hn" + ("" if k == 0 else f"_l{k}")]).max() > 0
        else:
            assert not b_hh.requires_grad and b_hh.grad is None and f"rnn.bias_hh_l{k}" not in grads
            np.testing.assert_array_equal(b_hh.detach().numpy(), np.zeros(b_hh.shape))


@pytest.mark.parametrize("model", LAYER_MODELS, ids=lambda m: m.name)
def test_default_params_are_torchs_initialisers(model):
    be = _layers(model)
    V, H = 30, 64
    before = torch.random.get_rng_state()
    p32 = be.default_params(V, H, seed=5, dtype="float32")
    assert torch.equal(torch.random.get_rng_state(), before), "torch's global RNG was touched"
    assert list(p32) == list(model.param_names())
    bound = 1 / np.sqrt(H)  # nn.RNN/GRU/LSTM: U(-1/√H, 1/√H); nn.Linear(H, V): U(-1/√H, 1/√H)
    everything = np.concatenate([v.ravel() for v in p32.values()])
    assert np.abs(everything).max() <= bound
    assert abs(everything.std() - bound / np.sqrt(3)) < 0.02 * bound  # uniform's std
    assert abs(everything.mean()) < 0.02 * bound
    np.testing.assert_array_equal(be.default_params(V, H, seed=5, dtype="float32")["W_hq"], p32["W_hq"])
    assert not np.array_equal(be.default_params(V, H, seed=6, dtype="float32")["W_hq"], p32["W_hq"])
    p64 = be.default_params(V, H, seed=5, dtype="float64")
    assert all(p64[k].dtype == np.float64 and np.array_equal(p64[k], p32[k]) for k in p32)


@pytest.mark.parametrize("model", LAYER_MODELS, ids=lambda m: m.name)
def test_param_layout_names_real_parameters(model):
    be = _layers(model)
    layout = be.param_layout()
    V, H = 11, 7
    net = be.params_from_numpy(random_model_problem(model, vocab_size=V, num_hiddens=H)[0]).net
    named = dict(net.named_parameters())
    assert set(layout) == set(named)
    for name, entry in layout.items():
        shape = tuple(int(d[:-1] or 1) * {"H": H, "V": V}[d[-1]] for d in entry["shape"])  # "4H" -> 28
        assert shape == tuple(named[name].shape), name
        assert entry["trained"] == named[name].requires_grad, name
    held = " ".join(e["holds"] for e in layout.values())
    for k in model.param_names():  # every d2l parameter held exactly once
        assert len([w for w in held.replace("[", " ").replace("]", " ").replace("^T", "").split() if w == k]) == 1, k


def test_layers_say_why_they_cannot_be_d2ls_gru():
    with pytest.raises(multirnn.UnsupportedModelError, match="reset gate after"):
        _layers(Model("gru"))
