"""The training harness on the NumPy backend: learning, state rules, divergence, configs."""

from __future__ import annotations

import numpy as np
import pytest

import multirnn
from multirnn.backends.numpy_backend import NumpyBackend

SMALL = multirnn.preset("quick", num_hiddens=32, num_epochs=8, max_tokens=3000, batch_size=8, num_steps=16)


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_perplexity_falls(oracle, sampling):
    result = multirnn.train(oracle, SMALL.replace(sampling=sampling))
    ppl = result.history.perplexity
    assert len(ppl) == 8 and ppl[-1] < 0.85 * ppl[0], ppl
    h = result.history
    assert len(h.step_loss) == sum(h.steps_per_epoch) == len(h.step_grad_norm)
    assert h.first_epoch_seconds == h.epoch_seconds[0] > 0 and all(t > 0 for t in h.tokens_per_sec)


def test_same_seed_same_run_other_seed_other_run(oracle):
    a = multirnn.train(oracle, SMALL.replace(num_epochs=2)).history.step_loss
    b = multirnn.train(oracle, SMALL.replace(num_epochs=2)).history.step_loss
    c = multirnn.train(oracle, SMALL.replace(num_epochs=2, seed=1)).history.step_loss
    assert a == b and a != c


class RecordingBackend(NumpyBackend):
    """The oracle, recording which states it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[np.ndarray] = []

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        self.states.append(state[0].copy())
        return super().train_step(params, X, Y, state, lr, max_grad_norm)


def test_sequential_carries_state_and_random_resets_it():
    seq = RecordingBackend()
    multirnn.train(seq, SMALL.replace(num_epochs=2))
    per_epoch = len(seq.states) // 2
    assert not seq.states[0].any() and not seq.states[per_epoch].any()  # zero at each epoch start
    assert all(s.any() for i, s in enumerate(seq.states) if i % per_epoch)  # carried otherwise
    rnd = RecordingBackend()
    multirnn.train(rnd, SMALL.replace(num_epochs=1, sampling="random"))
    assert not any(s.any() for s in rnd.states)


class NaNBackend(NumpyBackend):
    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.calls, self.bad_step = 0, bad_step

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        self.calls += 1
        params, loss, norm, state = super().train_step(params, X, Y, state, lr, max_grad_norm)
        return params, (np.nan if self.calls == self.bad_step else loss), norm, state


def test_nan_loss_stops_with_epoch_and_step_and_keeps_history():
    config = SMALL.replace(num_epochs=3)
    steps = multirnn.train(NumpyBackend(), config.replace(num_epochs=1)).history.steps_per_epoch[0]
    with pytest.raises(multirnn.TrainingDivergedError, match=r"epoch 2, step 3 ") as info:
        multirnn.train(NaNBackend(bad_step=steps + 3), config)
    err = info.value
    assert (err.epoch, err.step) == (2, 3)
    assert len(err.history.perplexity) == 1 and len(err.history.step_loss) == steps + 2
    assert all(np.isfinite(err.history.step_loss))
    assert "Try a smaller lr" in str(err)
    with pytest.raises(multirnn.TrainingDivergedError, match="no update has happened yet") as info:
        multirnn.train(NaNBackend(bad_step=1), config)  # a NaN before any update: not the lr's doing
    assert "smaller lr" not in str(info.value)
    assert "with backend 'numpy'. " in str(info.value)
    layers = NaNBackend(bad_step=1)
    layers.impl = "layers"  # a layers row is named as one (it read "backend 'torch'" for torch/layers)
    with pytest.raises(multirnn.TrainingDivergedError, match=r"with backend 'numpy' \(impl 'layers'\)\. "):
        multirnn.train(layers, config)


def test_ed2_protocol_reports_validation_perplexity(oracle):
    config = multirnn.preset("d2l-ed2", num_epochs=2, num_train=300, num_val=100, batch_size=64, num_steps=8)
    h = multirnn.train(oracle, config).history
    assert len(h.val_perplexity) == 2 and all(1 < v < 40 for v in h.val_perplexity)
    assert h.steps_per_epoch == [5, 5]


def test_presets_match_the_book():
    ed1, ed2 = multirnn.PRESETS["d2l-ed1"], multirnn.PRESETS["d2l-ed2"]
    assert (ed1.batch_size, ed1.num_steps, ed1.num_hiddens, ed1.lr, ed1.max_grad_norm, ed1.max_tokens,
            ed1.num_epochs) == (32, 35, 512, 1.0, 1.0, 10000, 500)
    assert (ed2.protocol, ed2.batch_size, ed2.num_steps, ed2.num_hiddens, ed2.lr, ed2.max_grad_norm,
            ed2.num_epochs, ed2.num_train, ed2.num_val) == ("d2l-ed2", 1024, 32, 32, 1.0, 1.0, 100, 10000, 5000)
    quick = multirnn.PRESETS["quick"]
    assert quick.replace(num_epochs=500) == ed1


@pytest.mark.parametrize(
    "change, match",
    [({"batch_size": 0}, "batch_size"), ({"num_steps": -1}, "num_steps"), ({"lr": 0.0}, "lr"),
     ({"lr": float("nan")}, "lr"), ({"max_grad_norm": -1.0}, "max_grad_norm"), ({"sampling": "shuffle"}, "sampling"),
     ({"dtype": "int8"}, "dtype"), ({"protocol": "d2l-ed3"}, "protocol"), ({"num_epochs": 1.5}, "num_epochs"),
     ({"dtype": [1, 2]}, "Unsupported dtype"),
     ({"lr": 1e300}, r"lr=1e\+300 is infinite in float32 \(its largest number is 3.403e\+38\)")],
)
def test_bad_config_is_a_clear_error(change, match):
    with pytest.raises(ValueError, match=match):
        multirnn.TrainConfig(**change)


def test_an_lr_is_refused_only_where_its_dtype_cannot_hold_it():
    assert multirnn.TrainConfig(lr=1e300, dtype="float64").lr == 1e300
    assert multirnn.TrainConfig(max_grad_norm=1e300).max_grad_norm == 1e300  # a huge θ: no clipping, allowed


def test_a_numpy_dtype_is_stored_by_name():
    """np.float32 was kept as a class: the config then failed to serialise and compared unequal."""
    import json

    config = multirnn.preset("quick", dtype=np.float32)
    assert config.dtype == "float32" and config == multirnn.preset("quick")
    assert json.loads(json.dumps(config.to_dict()))["dtype"] == "float32"
    assert multirnn.TrainConfig(dtype=np.dtype("float64")).dtype == "float64"


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="Known presets"):
        multirnn.preset("d2l-ed9")


def test_batch_larger_than_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="too few for one minibatch"):
        multirnn.prepare_data(SMALL.replace(max_tokens=100))


def test_predict_after_training(oracle):
    result = multirnn.train(oracle, SMALL)
    text = multirnn.predict(oracle, result.params, result.vocab, "time traveller", 10)
    assert text.startswith("time traveller") and len(text) == len("time traveller") + 10
    with pytest.raises(ValueError, match="prefix"):
        multirnn.predict(oracle, result.params, result.vocab, "", 10)
    broken = {**oracle.params_to_numpy(result.params)}
    broken["W_hh"] = broken["W_hh"].copy()
    broken["W_hh"][0, 0] = np.nan  # was a greedy '<unk><unk>...' continuation, as if the model said it
    with pytest.raises(ValueError, match=r"params hold NaN or infinite values \(W_hh"):
        multirnn.predict(oracle, broken, result.vocab, "time traveller", 10)


def test_evaluate_perplexity_takes_numpy_params_and_refuses_ones_that_do_not_fit():
    """It checked nothing: a dict of NumPy arrays (what predict takes) or a wrong num_hiddens failed
    inside each framework in its own words (torch: as_tensor's dtype; MXNet: a dump of the array)."""
    import multirnn
    from multirnn import evaluate_perplexity, get_backend

    be = get_backend("numpy")
    params = multirnn.init_params(28, 16, seed=0)
    X = np.random.default_rng(0).integers(0, 28, (4, 5))
    as_numpy = evaluate_perplexity(be, params, iter([(X, X)]), 16)
    assert as_numpy == evaluate_perplexity(be, be.params_from_numpy(params), iter([(X, X)]), 16)
    with pytest.raises(ValueError, match="params have hidden size 16 and dtype float32, but num_hiddens=17"):
        evaluate_perplexity(be, params, iter([(X, X)]), 17)
    with pytest.raises(ValueError, match="dtype='float64' were given"):
        evaluate_perplexity(be, params, iter([(X, X)]), 16, "float64")
    with pytest.raises(ValueError, match="Unsupported dtype 'float16'"):  # not "the params are float32"
        evaluate_perplexity(be, params, iter([(X, X)]), 16, "float16")
    with pytest.raises(TypeError, match="params must be numpy's own params"):
        evaluate_perplexity(be, [1, 2], iter([(X, X)]), 16)


@pytest.mark.parametrize("name, impl", [("torch", "scratch"), ("tensorflow", "scratch"), ("mxnet", "layers")])
def test_training_goes_on_from_a_train_result_s_own_params(name, impl):
    """train(be, config, params=result.params): torch's tensors failed in NumPy's asarray (requires_grad),
    TensorFlow's in a dtype check, MXNet's layer params as an unknown type."""
    from tests.conftest import require_backend

    require_backend(name)
    config = multirnn.preset("quick", num_hiddens=16, num_epochs=1, max_tokens=2000, batch_size=8, num_steps=10)
    be = multirnn.get_backend(name, impl=impl, mode="fast", model=config.model)
    first = multirnn.train(be, config)
    before = be.params_to_numpy(first.params)
    again = multirnn.train(be, config, params=first.params)
    from_numpy = multirnn.train(be, config, params=before)
    assert again.history.step_loss == from_numpy.history.step_loss  # the same as from the NumPy copy
    after = be.params_to_numpy(first.params)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # the caller's params are left as they were
    with pytest.raises(TypeError, match=f"params must be {name}'s own params"):
        multirnn.train(be, config, params=[1, 2])
