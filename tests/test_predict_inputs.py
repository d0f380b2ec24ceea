"""predict() checks its inputs: the README's clear TypeError/ValueError, never a KeyError or a framework's error.

It takes the backend's own params or a dict of NumPy arrays (converted by ``params_from_numpy``), and a
prefix is held to ``compare --prefix``'s rule: preprocessed as the text is, then every character in the
vocabulary.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import multirnn
from multirnn.data import Vocab
from multirnn.harness import clean_prefix
from multirnn.params import param_shapes
from tests.conftest import SELECTED, require_backend

BACKENDS = [(name, impl) for name in SELECTED for impl in ("scratch", "layers") if (name, impl) != ("numpy", "layers")]


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return multirnn.prepare_data(multirnn.preset("quick", num_epochs=1)).vocab


def _params(vocab: Vocab, dtype: str = "float32") -> dict[str, np.ndarray]:
    # Weights N(0, 1): the greedy text changes along the way, so a wrong conversion would show.
    rng = np.random.default_rng(3)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in param_shapes(len(vocab), 16).items()}


def _backend(name: str, impl: str) -> multirnn.Backend:
    require_backend(name)
    return multirnn.get_backend(name, impl=impl)


@pytest.mark.parametrize("name, impl", BACKENDS, ids=[f"{n}-{i}" for n, i in BACKENDS])
def test_numpy_params_give_the_text_of_the_backends_own(name: str, impl: str, vocab: Vocab) -> None:
    be, params = _backend(name, impl), _params(vocab)
    want = multirnn.predict(be, be.params_from_numpy(params), vocab, "time traveller", 20)
    assert multirnn.predict(be, params, vocab, "time traveller", 20) == want
    assert len(set(want[len("time traveller"):])) >= 2, want  # not a fixed point: the comparison means something


@pytest.mark.parametrize("name, impl", BACKENDS, ids=[f"{n}-{i}" for n, i in BACKENDS])
def test_another_backends_params_that_this_one_reads_give_the_same_text(name: str, impl: str, vocab: Vocab) -> None:
    """torch's params handed to the NumPy oracle's predict (which can read torch tensors) reached its forward as
    they were: "'torch.dtype' object has no attribute 'name'" (jax: "Cannot interpret 'torch.float32'"); train
    converted the same params."""
    theirs = _backend(name, impl)
    params = _params(vocab)
    want = multirnn.predict(theirs, params, vocab, "time traveller", 20)
    for other in ("numpy", "torch", "jax"):
        if other not in SELECTED or other == name:
            continue
        mine = _backend(other, "scratch")
        try:
            got = multirnn.predict(mine, theirs.params_from_numpy(params), vocab, "time traveller", 20)
        except (TypeError, ValueError):  # params it cannot read, refused in words (the tests below say which)
            continue
        assert got == want, other


@pytest.mark.parametrize("name, impl", BACKENDS, ids=[f"{n}-{i}" for n, i in BACKENDS])
@pytest.mark.parametrize("change, words", [
    (lambda p: {k: v for k, v in p.items() if k != "b_q"}, "missing ['b_q']"),
    (lambda p: {**p, "W_extra": p["b_q"]}, "unexpected ['W_extra']"),
    (lambda p: {**p, "W_hh": p["W_hh"][:5]}, "W_hh: (5, 16) (expected (16, 16))"),
    (lambda p: {**p, "b_h": p["b_h"].astype(np.float64)}, "same dtype"),
], ids=["missing", "unexpected", "misshapen", "mixed-dtypes"])
def test_wrong_numpy_params_are_a_value_error_naming_the_entry(name: str, impl: str, change: Any, words: str,
                                                              vocab: Vocab) -> None:
    be = _backend(name, impl)
    with pytest.raises(ValueError) as info:
        multirnn.predict(be, change(_params(vocab)), vocab, "time", 5)
    assert words in str(info.value)


@pytest.mark.parametrize("name", [n for n, i in BACKENDS if i == "scratch"])
def test_the_backends_own_params_with_a_wrong_entry_are_named(name: str, vocab: Vocab) -> None:
    """A scratch backend's own params are d2l's dict of framework arrays: a wrong entry is named too."""
    be = _backend(name, "scratch")
    own = be.params_from_numpy(_params(vocab))
    with pytest.raises(ValueError, match=r"missing \['b_q'\]"):
        multirnn.predict(be, {k: v for k, v in own.items() if k != "b_q"}, vocab, "time", 5)
    with pytest.raises(ValueError, match=r"W_hh: \(5, 16\) \(expected \(16, 16\)\)"):
        multirnn.predict(be, {**own, "W_hh": own["W_hh"][:5]}, vocab, "time", 5)


@pytest.mark.parametrize("bad", [None, [1, 2], "params"], ids=["None", "list", "str"])
def test_params_that_are_not_params_are_a_type_error_naming_the_keys(oracle: multirnn.Backend, bad: Any,
                                                                     vocab: Vocab) -> None:
    with pytest.raises(TypeError, match=r"dict of NumPy arrays with the keys \['W_xh', 'W_hh', 'b_h', 'W_hq', 'b_q'\]"):
        multirnn.predict(oracle, bad, vocab, "time", 5)


def test_params_of_another_vocabulary_are_a_value_error(oracle: multirnn.Backend, vocab: Vocab) -> None:
    small = Vocab.from_tokens(["<unk>", " ", "a", "b"])
    with pytest.raises(ValueError, match=f"vocab_size={len(vocab)}, but the vocabulary has 4 tokens"):
        multirnn.predict(oracle, _params(vocab), small, "ab", 5)


def test_a_prefix_is_preprocessed_as_compare_does(oracle: multirnn.Backend, vocab: Vocab) -> None:
    """Lowercase, non-letter runs -> one space: 'Zebra 42!' is 'zebra ', not '<unk>ebra <unk><unk><unk>'."""
    params = _params(vocab)
    text = multirnn.predict(oracle, params, vocab, "Zebra 42!", 10)
    assert "<unk>" not in text and text == multirnn.predict(oracle, params, vocab, "zebra ", 10)
    assert text.startswith("zebra ") and len(text) == len("zebra ") + 10
    # the CLI's own examples (tests/test_cli.py): what compare keys its samples by
    assert clean_prefix("The Martians,", vocab) == "the martians "
    assert clean_prefix("time traveller", vocab) == "time traveller"  # the default prefixes are left as they are


def test_a_prefix_outside_the_vocabulary_names_the_characters(oracle: multirnn.Backend, vocab: Vocab) -> None:
    no_z = Vocab.from_tokens([t for t in vocab.idx_to_token if t not in ("z", "q")])
    params = _params(no_z)
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['q', 'z'\]"):
        multirnn.predict(oracle, params, no_z, "Quiz 1", 5)
    assert multirnn.predict(oracle, params, no_z, "time", 3).startswith("time")


@pytest.mark.parametrize("prefix", ["", "...", " 42 "])
def test_a_prefix_without_letters_is_a_value_error(oracle: multirnn.Backend, vocab: Vocab, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix must contain at least one letter"):
        multirnn.predict(oracle, _params(vocab), vocab, prefix, 5)


@pytest.mark.parametrize("args, error, words", [
    ({"prefix": 42}, TypeError, "prefix must be a str"),
    ({"num_preds": "30"}, TypeError, "num_preds must be an int"),
    ({"num_preds": 2.5}, TypeError, "num_preds must be an int"),
    ({"num_preds": -1}, ValueError, "num_preds must be >= 0"),
    ({"vocab": ["a", "b"]}, TypeError, "vocab must be a multirnn Vocab"),
], ids=["prefix-int", "num_preds-str", "num_preds-float", "num_preds-negative", "vocab-list"])
def test_other_wrong_arguments_say_what_was_expected(oracle: multirnn.Backend, vocab: Vocab, args: dict,
                                                     error: type, words: str) -> None:
    call = {"prefix": "time", "num_preds": 5, "vocab": vocab, **args}
    with pytest.raises(error, match=words):
        multirnn.predict(oracle, _params(vocab), call["vocab"], call["prefix"], call["num_preds"])


def test_a_state_dtype_other_than_the_params_is_refused(oracle: multirnn.Backend, vocab: Vocab) -> None:
    """MXNet raised its own error for float32 params and dtype='float64'; the others computed in mixed dtypes."""
    params = _params(vocab)  # float32
    with pytest.raises(ValueError, match=r"dtype 'float64': the state must have the params' dtype, float32"):
        multirnn.predict(oracle, params, vocab, "time", 5, dtype="float64")
    assert multirnn.predict(oracle, params, vocab, "time", 5, dtype="float32") == \
        multirnn.predict(oracle, params, vocab, "time", 5)


def test_default_prompts_that_do_not_fit_a_users_text_are_dropped_not_refused(tmp_path):
    """--text without 'r' and 'v': 'time traveller' cannot be a prompt, and the user never asked for it."""
    text = tmp_path / "no_r_no_v.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. ".replace("r", "d").replace("v", "b") * 300)
    proc = subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", "numpy", "--text", str(text),
                           "--epochs", "1", "--hidden", "8", "--out", str(tmp_path / "run"), "--quiet", "--no-plot"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 4, proc.stderr  # numpy alone: nothing to compare, but it ran
    samples = json.loads((tmp_path / "run" / "results.json").read_text())["backends"][0]["samples"]
    assert samples and all(set(p) <= set("thequickbownfoxjumpsdlazyg ") for p in samples)
    bad = subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", "numpy", "--text", str(text),
                          "--prefix", "Very", "--epochs", "1", "--out", str(tmp_path / "bad"), "--quiet"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert bad.returncode == 2 and "['r', 'v']" in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("name, impl", BACKENDS, ids=["/".join(p) for p in BACKENDS])
def test_another_model_s_own_params_are_refused_not_partly_used(name: str, impl: str) -> None:
    """A 2-layer LSTM's TrainResult.params given to a 1-layer LSTM backend: train and predict read this model's
    names only, and so trained and predicted silently with layer 1 dropped (Gluon's layer: a shape error)."""
    require_backend(name)
    from multirnn.cells import Model

    config = multirnn.preset("quick", num_epochs=1, num_hiddens=8, cell="lstm", num_layers=2, max_tokens=2000,
                             batch_size=8, num_steps=10)
    deep = multirnn.train(multirnn.get_backend(name, impl=impl, mode="fast", model=config.model), config)
    one = multirnn.get_backend(name, impl=impl, mode="fast", model=Model("lstm", 1))
    with pytest.raises((ValueError, TypeError), match="another model|unexpected"):
        multirnn.train(one, config.replace(num_layers=1), params=deep.params)
    with pytest.raises((ValueError, TypeError), match="another model|unexpected"):
        multirnn.predict(one, deep.params, deep.vocab, "time", 3)
    # the same model's own params still train on and predict
    again = multirnn.train(deep.backend, config, params=deep.params)
    assert len(multirnn.predict(deep.backend, again.params, deep.vocab, "time", 3)) == len("time") + 3
