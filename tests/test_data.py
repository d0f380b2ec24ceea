"""The d2l data pipelines: preprocessing facts, the vocabulary, iterators, and input errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import multirnn
from multirnn import data as mdata


def test_time_machine_matches_d2l_edition_1():
    corpus, vocab = multirnn.load_time_machine(max_tokens=-1)
    assert len(vocab) == 28
    assert len(corpus) == 170580
    assert vocab.idx_to_token[:5] == ["<unk>", " ", "e", "t", "a"]
    assert corpus.dtype == np.int64 and corpus.min() >= 1  # no unknown characters in the book itself
    assert "".join(vocab.to_tokens(corpus[:13])) == "the time mach"


def test_max_tokens_truncates_but_keeps_vocab():
    corpus, vocab = multirnn.load_time_machine(max_tokens=10000)
    assert len(corpus) == 10000 and len(vocab) == 28


def test_word_tokens():
    corpus, vocab = multirnn.load_time_machine(token="word")
    assert vocab.idx_to_token[:4] == ["<unk>", "the", "i", "and"]
    assert len(corpus) == 32775  # d2l ed. 1, section 8.2: 32,775 word tokens


def test_edition_2_pipeline_is_distinct():
    w = multirnn.load_ed2_windows(num_steps=32)
    assert w.num_chars == 173428  # whole text, no per-line strip
    assert w.vocab.idx_to_token[:3] == [" ", "<unk>", "a"] and len(w.vocab) == 28
    assert w.X.shape == w.Y.shape == (15000, 32)
    np.testing.assert_array_equal(w.X[1:, :], w.Y[:-1, :])  # overlapping windows: offset by one
    np.testing.assert_array_equal(w.X[:, 1:], w.Y[:, :-1])  # labels shifted by one


def test_ed2_batches_shuffle_training_and_keep_validation_in_order():
    w = multirnn.load_ed2_windows(num_steps=8, num_train=100, num_val=30)
    train = list(w.train_batches(32, np.random.default_rng(0)))
    assert [len(X) for X, _ in train] == [32, 32, 32, 4]  # the last minibatch is partial, as in d2l
    seen = np.concatenate([X for X, _ in train])
    assert sorted(map(tuple, seen)) == sorted(map(tuple, w.X[:100]))
    assert not np.array_equal(seen, w.X[:100])
    val = np.concatenate([X for X, _ in w.val_batches(32)])
    np.testing.assert_array_equal(val, w.X[100:130])


def test_vocab_behaviour():
    tokens = [["b", "a", "a"], ["c", "a", "b"]]
    v = multirnn.Vocab(tokens, reserved_tokens=["<pad>"])
    assert v.idx_to_token == ["<unk>", "<pad>", "a", "b", "c"]
    assert v["a"] == 2 and v["zzz"] == v.unk == 0
    assert v[["c", "a", "?"]] == [4, 2, 0]
    assert v.to_tokens([3, 4]) == ["b", "c"] and v.to_tokens(2) == "a"
    assert multirnn.Vocab(tokens, min_freq=2).idx_to_token == ["<unk>", "a", "b"]
    # ties keep first-appearance order, as d2l's stable sort does
    assert multirnn.Vocab(["x", "y", "y", "x"]).idx_to_token == ["<unk>", "x", "y"]


def test_any_text_file_loads_the_same_way(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Hello, World!\n\n  hello again 42\n", encoding="utf-8")
    corpus, vocab = multirnn.load_corpus(path)
    assert "".join(vocab.to_tokens(corpus)) == "hello worldhello again"  # d2l drops line breaks


@pytest.mark.parametrize(
    "content, match",
    [(b"", "no letters"), (b"1234 \n !!", "no letters")],
)
def test_empty_or_letterless_text_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        multirnn.load_corpus(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Cannot read text file"):
        multirnn.load_corpus(tmp_path / "nope.txt")


def test_checksum_mismatch_is_detected(tmp_path, monkeypatch):
    fake = tmp_path / "timemachine.txt"
    fake.write_text("the time machine, tampered with", encoding="utf-8")
    monkeypatch.setattr(mdata, "bundled_text_path", lambda name: fake)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        mdata.load_time_machine()


def test_bundled_texts_verify():
    for name, digest in mdata.BUNDLED_TEXTS.items():
        assert mdata.read_lines(mdata.bundled_text_path(name), digest)


@pytest.mark.parametrize("make", [multirnn.seq_data_iter_sequential, multirnn.seq_data_iter_random])
def test_iterators_are_driven_only_by_the_seed(make):
    corpus = np.arange(1000)
    a = list(make(corpus, 4, 7, np.random.default_rng(3)))
    b = list(make(corpus, 4, 7, np.random.default_rng(3)))
    c = list(make(corpus, 4, 7, np.random.default_rng(4)))
    assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    for X, Y in a:
        assert X.shape == Y.shape == (4, 7)
        np.testing.assert_array_equal(Y, X + 1)  # corpus is arange: labels are the next token


def test_sequential_partitioning_continues_rows():
    corpus = np.arange(500)
    batches = list(multirnn.seq_data_iter_sequential(corpus, 3, 5, np.random.default_rng(0)))
    for (X0, _), (X1, _) in zip(batches, batches[1:]):
        np.testing.assert_array_equal(X1[:, 0], X0[:, -1] + 1)


def test_random_sampling_windows_do_not_overlap():
    corpus = np.arange(500)
    windows = np.concatenate([X for X, _ in multirnn.seq_data_iter_random(corpus, 4, 5, np.random.default_rng(0))])
    starts = np.sort(windows[:, 0])
    assert len(set(starts)) == len(starts) and np.all(np.diff(starts) % 5 == 0)


@pytest.mark.parametrize("make", [multirnn.seq_data_iter_sequential, multirnn.seq_data_iter_random])
def test_too_short_corpus_or_bad_sizes_are_clear_errors(make):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="too few for one minibatch"):
        next(make(np.arange(100), 10, 10, rng))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(make(np.arange(100), 0, 10, rng))
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        next(make(np.arange(100), 2, -1, rng))


def test_eval_text_is_cleaned_like_the_training_text_of_its_edition(tmp_path):
    """Ed. 2 cleans the whole text (a line break is a space), ed. 1 each line (line breaks vanish)."""
    path = tmp_path / "eval.txt"
    path.write_text("Ab,\ncd\n" * 20, encoding="utf-8")
    w = multirnn.load_ed2_windows(num_steps=4, num_train=10, num_val=0)
    ed2 = mdata.encode_eval_text(path, w.vocab, "d2l-ed2", 2, 4)
    assert "".join(w.vocab.to_tokens(ed2[:6])) == "ab cd "
    _, vocab = multirnn.load_time_machine(max_tokens=10)
    ed1 = mdata.encode_eval_text(path, vocab, "d2l-ed1", 2, 4)
    assert "".join(vocab.to_tokens(ed1[:6])) == "abcdab"


def test_bundled_texts_resolve_by_name_and_bad_paths_say_what_is_wrong(tmp_path):
    for name in mdata.BUNDLED_TEXTS:
        assert mdata.resolve_text(name) == mdata.bundled_text_path(name)
    # a bundled text is read in its own encoding whatever --encoding says (it applies to the user's files)
    assert "Martians" in mdata.read_text(mdata.resolve_text("war_of_the_worlds"), encoding="utf-16")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"--text '/dev/null' is not a regular file \(a character device\)"):
        mdata.resolve_text("/dev/null", "--text")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        mdata.resolve_text(empty, "--text")
    with pytest.raises(ValueError, match="is a directory"):
        mdata.resolve_text(tmp_path, "--text")
    with pytest.raises(ValueError, match=r"no such file; did you mean the bundled text 'war_of_the_worlds' "
                                         r"\(--eval-text war_of_the_worlds\)"):
        mdata.resolve_text(str(tmp_path / "war_of_the_worlds.txt"), "--eval-text")
    with pytest.raises(ValueError, match="no such file$"):
        mdata.resolve_text(str(tmp_path / "my_book.txt"), "--text")


def test_too_short_texts_give_counts_and_what_preprocessing_dropped(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Привет мир, hello " * 10, encoding="utf-8")
    _, vocab = multirnn.load_time_machine(max_tokens=10)
    with pytest.raises(mdata.TextTooShortError, match=r"has 59 tokens .* at least 1,121 are needed\. .*"
                                                      "letters outside A-Z"):
        mdata.encode_eval_text(path, vocab, "d2l-ed1", 32, 35, label="--eval-text 'short.txt'")
    assert "letters outside A-Z" in mdata.with_dropped_note("The corpus has 70 tokens.", path)
    assert mdata.with_dropped_note("The corpus has 70 tokens.", None) == "The corpus has 70 tokens."
    # the library's own entry point says it too, under both protocols (not only the command line)
    for preset in ("quick", "d2l-ed2"):
        with pytest.raises(mdata.TextTooShortError, match="letters outside A-Z"):
            multirnn.prepare_data(multirnn.preset(preset), path)


def test_an_evaluation_text_needs_one_minibatch_read_in_order_not_a_random_offset():
    """An eval text is read from its first token, so batch x steps + 1 tokens are enough; the worker and
    compare's check once asked for num_steps more (the random-sampling rule), refusing texts in between."""
    from multirnn import get_backend, harness

    B, T, H = 4, 5, 8
    assert mdata.min_in_order_tokens(B, T) == B * T + 1 == mdata.min_batchable_tokens(B, T) - T
    be = get_backend("numpy")
    rng = np.random.default_rng(0)
    params = be.params_from_numpy(multirnn.init_params(28, H, seed=0))
    ids = rng.integers(0, 28, B * T + 1)
    ppl = harness.evaluate_text_perplexity(be, params, ids, H, T, B)
    assert np.isfinite(ppl) and 1 < ppl < 28 * 1.01  # near-zero weights: close to uniform over 28 tokens
    with pytest.raises(mdata.TextTooShortError, match=f"at least {B * T + 1} are needed"):
        harness.evaluate_text_perplexity(be, params, ids[:-1], H, T, B)


def test_under_d2l_ed2_an_evaluation_text_is_scored_as_ed2_scores_its_validation_windows():
    """Ed. 2 cuts a text into windows one token apart and scores each from a zero state; its eval text
    was read the ed. 1 way (in order, state carried), which also asked for batch x steps + 1 tokens
    (32,769 at the preset's batch 1024) where one window is enough."""
    from multirnn import get_backend, harness

    B, T, H = 4, 5, 8
    be = get_backend("numpy")
    params = be.params_from_numpy(multirnn.init_params(28, H, seed=1))
    ids = np.random.default_rng(0).integers(0, 28, 23)
    X, Y = mdata.text_windows(ids, T)
    assert X.shape == Y.shape == (23 - T, T) and not X.flags.writeable  # views, not copies
    assert all((X[i] == ids[i:i + T]).all() and (Y[i] == ids[i + 1:i + T + 1]).all() for i in range(len(X)))
    # by hand: every window from a zero state, the mean over all their tokens
    losses = [be.evaluate_loss(params, X[i:i + 1], Y[i:i + 1], be.init_state(1, H))[0] for i in range(len(X))]
    want = float(np.exp(np.mean(losses)))
    got = harness.evaluate_text_perplexity(be, params, ids, H, T, B, protocol="d2l-ed2")  # 18 windows: 4+4+4+4+2
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(harness.evaluate_text_perplexity(be, params, ids, H, T, B), rel=1e-7)
    assert np.isfinite(harness.evaluate_text_perplexity(be, params, ids[:T + 1], H, T, 1024, protocol="d2l-ed2"))
    with pytest.raises(mdata.TextTooShortError, match=r"has 5 tokens, too few for one window of num_steps=5 "
                                                      r"\(d2l ed. 2\): at least 6 are needed"):
        harness.evaluate_text_perplexity(be, params, ids[:T], H, T, B, protocol="d2l-ed2")


def test_prepare_data_takes_a_bundled_text_by_name_as_the_command_line_does():
    by_name = multirnn.prepare_data(multirnn.preset("quick"), "war_of_the_worlds")
    by_path = multirnn.prepare_data(multirnn.preset("quick"), mdata.bundled_text_path("war_of_the_worlds"))
    assert (by_name.corpus == by_path.corpus).all() and by_name.vocab.idx_to_token == by_path.vocab.idx_to_token


def test_preset_refuses_ed1_only_fields_under_d2l_ed2_as_the_command_line_does():
    for field, value in (("max_tokens", 100), ("sampling", "random")):
        with pytest.raises(ValueError, match=f"{field} does not apply to the d2l-ed2 protocol"):
            multirnn.preset("d2l-ed2", **{field: value})
    assert multirnn.preset("d2l-ed2", max_tokens=None).protocol == "d2l-ed2"  # None: not given
    assert multirnn.preset("d2l-ed1", max_tokens=100).max_tokens == 100


def test_reports_name_a_bundled_text_by_its_title_and_a_file_by_its_name(tmp_path):
    assert mdata.text_label(None) == "The Time Machine (bundled)"
    assert mdata.text_label(str(mdata.bundled_text_path("war_of_the_worlds"))) == "The War of the Worlds (bundled)"
    assert mdata.text_label(tmp_path / "war_of_the_worlds.txt") == "war_of_the_worlds.txt"  # a user's own copy


def test_text_with_colour_codes_or_overstrikes_is_text_and_random_bytes_are_not():
    """The control-character test for binary input: ANSI escapes and nroff's backspaces are text."""
    import random

    words = "the time traveller for so it will be convenient to speak of him ".split() * 200
    assert mdata.decode_text("".join(f"\x1b[3{i % 8}m{w}\x1b[0m " for i, w in enumerate(words)).encode(), "ansi")
    assert mdata.decode_text("".join(c + "\b" + c for c in " ".join(words)).encode(), "nroff")
    rng = random.Random(0)
    noise = bytes(rng.randint(1, 255) for _ in range(20000))  # no NUL: only the controls tell
    with pytest.raises(ValueError, match="looks binary"):
        mdata.decode_text(noise, "noise", "latin-1")


def test_a_decoding_error_names_the_byte_s_offset_in_the_file_byte_order_mark_included():
    with pytest.raises(ValueError, match=r"byte 0xff at offset 6\)"):
        mdata.decode_text(b"\xef\xbb\xbfabc\xff", "bom")
    with pytest.raises(ValueError, match=r"byte 0xff at offset 3\)"):
        mdata.decode_text(b"abc\xff", "plain")


def test_a_pseudo_file_that_says_0_bytes_but_holds_text_is_read(tmp_path):
    """/proc's files stat as 0 bytes: "is empty (0 bytes)" refused /proc/cpuinfo, which holds text."""
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    assert mdata.resolve_text("/proc/cpuinfo", "--text") == Path("/proc/cpuinfo")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        mdata.resolve_text(str(empty), "--text")


@pytest.mark.parametrize("sep", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_ed1_splits_lines_where_d2ls_readlines_does(sep, tmp_path):
    """str.splitlines also split at these, and each line's strip glued the words around them together."""
    from multirnn.data import clean_ed1, read_lines

    text = f"one two{sep}three\nFour\r\nfive\rsix\n"
    assert clean_ed1(text) == "one two threefourfivesix"
    f = tmp_path / "t.txt"
    f.write_bytes(text.encode("utf-8"))
    with open(f, encoding="utf-8") as fh:  # d2l ed. 1's f.readlines(), then the same cleaning per line
        d2l = [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in fh]
    assert read_lines(f, encoding="utf-8") == d2l == ["one two three", "four", "five", "six"]
