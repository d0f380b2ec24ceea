"""Text loading, vocabularies and minibatch iterators, exactly as d2l builds them.

NumPy and the standard library only: every backend receives the same NumPy integer
batches from here, so the data can never be the reason two frameworks disagree.

Two pipelines exist and they are *not* interchangeable:

* d2l edition 1 (``load_corpus`` / ``load_time_machine``, ch. 8.2-8.5): each line is cleaned
  and stripped on its own, the vocabulary is sorted by descending frequency (``<unk>`` = 0),
  and minibatches come from sequential partitioning or random sampling of one long corpus.
* d2l edition 2 (``load_ed2_windows``, ch. 9.2-9.5): the whole text is cleaned at once (no
  per-line strip), the vocabulary is sorted alphabetically, and the data are all overlapping
  windows of ``num_steps + 1`` characters, split into training and validation windows.
"""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "BUNDLED_TEXTS",
    "Vocab",
    "bundled_text_path",
    "load_corpus",
    "load_ed2_windows",
    "load_time_machine",
    "read_lines",
    "seq_data_iter_random",
    "seq_data_iter_sequential",
    "iter_windows",
    "tokenize",
]

# SHA-256 of the texts shipped inside the package (the Time Machine file is d2l's own,
# sha1 090b5e7e70c295757f55df93cb0a180b9691891a).
BUNDLED_TEXTS: dict[str, str] = {
    "timemachine": "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
    "war_of_the_worlds": "0afd3f149dc6e2db50afe04dcaaae09df4bf0d87e831002f5ba8d51e1138bf59",
}

_NON_LETTERS = re.compile("[^A-Za-z]+")


def bundled_text_path(name: str) -> Path:
    """Path of a text shipped with the package (``"timemachine"`` or ``"war_of_the_worlds"``)."""
    if name not in BUNDLED_TEXTS:
        raise ValueError(f"Unknown bundled text {name!r}. Bundled texts: {sorted(BUNDLED_TEXTS)}.")
    return Path(str(resources.files("multirnn") / "texts" / f"{name}.txt"))


def _read_text(path: str | Path, expected_sha256: str | None = None) -> str:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"Cannot read text file {str(path)!r}: {exc.strerror or exc}.") from exc
    if expected_sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected_sha256:
            raise ValueError(
                f"Checksum mismatch for {str(path)!r}: sha256 {digest}, expected {expected_sha256}. "
                "The bundled file is damaged; reinstall multirnn."
            )
    # utf-8-sig drops a byte-order mark; undecodable bytes become non-letters and so spaces.
    text = raw.decode("utf-8-sig", errors="replace")
    if not _NON_LETTERS.sub("", text):
        raise ValueError(f"Text file {str(path)!r} contains no letters (empty or not text).")
    return text


def read_lines(path: str | Path, expected_sha256: str | None = None) -> list[str]:
    """Read a text file the d2l ed. 1 way: per line, non-letter runs -> one space, strip, lower."""
    text = _read_text(path, expected_sha256)
    return [_NON_LETTERS.sub(" ", line).strip().lower() for line in text.splitlines()]


def tokenize(lines: Sequence[str], token: str = "char") -> list[list[str]]:
    """Split each line into ``"char"`` or ``"word"`` tokens."""
    if token == "char":
        return [list(line) for line in lines]
    if token == "word":
        return [line.split() for line in lines]
    raise ValueError(f"Unknown token type {token!r}; expected 'char' or 'word'.")


class Vocab:
    """Token <-> index mapping (d2l ed. 1): ``<unk>`` = 0, reserved tokens, then by frequency.

    Ties in frequency keep first-appearance order, as d2l's stable sort of a ``Counter`` does.
    With ``order="alphabetical"`` the d2l ed. 2 vocabulary is built instead: ``<unk>``, the
    reserved tokens and every frequent token, sorted together as strings.
    """

    def __init__(
        self,
        tokens: Iterable[str] | Iterable[list[str]] = (),
        min_freq: int = 0,
        reserved_tokens: Sequence[str] = (),
        order: str = "frequency",
    ) -> None:
        flat = [t for item in tokens for t in (item if isinstance(item, list) else [item])]
        counter = collections.Counter(flat)
        self.token_freqs: list[tuple[str, int]] = sorted(
            counter.items(), key=lambda kv: kv[1], reverse=True
        )
        frequent = [tok for tok, freq in self.token_freqs if freq >= min_freq]
        if order == "frequency":
            self.idx_to_token = ["<unk>", *reserved_tokens]
            for tok in frequent:
                if tok not in self.idx_to_token:
                    self.idx_to_token.append(tok)
        elif order == "alphabetical":
            self.idx_to_token = sorted({"<unk>", *reserved_tokens, *frequent})
        else:
            raise ValueError(f"Unknown vocabulary order {order!r}; expected 'frequency' or 'alphabetical'.")
        self.token_to_idx = {tok: idx for idx, tok in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    @property
    def unk(self) -> int:
        return self.token_to_idx["<unk>"]

    def __getitem__(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, (list, tuple)):
            return [self[t] for t in tokens]  # type: ignore[misc]
        return self.token_to_idx.get(tokens, self.unk)

    def to_tokens(self, indices: int | Sequence[int] | np.ndarray) -> str | list[str]:
        if isinstance(indices, (list, tuple, np.ndarray)):
            return [self.idx_to_token[int(i)] for i in indices]
        return self.idx_to_token[int(indices)]

    def to_dict(self) -> dict[str, object]:
        return {"idx_to_token": list(self.idx_to_token)}

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, first={self.idx_to_token[:6]})"


def load_corpus(
    path: str | Path,
    max_tokens: int = -1,
    token: str = "char",
    expected_sha256: str | None = None,
) -> tuple[np.ndarray, Vocab]:
    """Load any text file with d2l ed. 1 preprocessing (``load_corpus_time_machine``).

    Args:
        path: a UTF-8 text file.
        max_tokens: keep only the first ``max_tokens`` tokens; ``-1`` (or any value <= 0) keeps all.
        token: ``"char"`` or ``"word"``.
        expected_sha256: when given, the file's checksum must match.

    Returns:
        ``(corpus, vocab)``: an int64 array of token ids (line breaks are dropped, as in d2l)
        and the vocabulary built from the whole text.

    Raises:
        ValueError: unreadable, empty or letter-free file, or a checksum mismatch.
    """
    tokens = tokenize(read_lines(path, expected_sha256), token)
    vocab = Vocab(tokens)
    corpus = np.array([vocab[t] for line in tokens for t in line], dtype=np.int64)
    if max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


def load_time_machine(max_tokens: int = -1, token: str = "char") -> tuple[np.ndarray, Vocab]:
    """The bundled *Time Machine* as d2l ed. 1 loads it (28 characters, 170,580 tokens)."""
    name = "timemachine"
    return load_corpus(bundled_text_path(name), max_tokens, token, BUNDLED_TEXTS[name])


def encode(text_path: str | Path, vocab: Vocab, max_tokens: int = -1) -> np.ndarray:
    """Token ids of another text under an existing vocabulary (unknown characters -> ``<unk>``)."""
    tokens = tokenize(read_lines(text_path), "char")
    ids = np.array([vocab[t] for line in tokens for t in line], dtype=np.int64)
    return ids[:max_tokens] if max_tokens > 0 else ids


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_batchable(num_tokens: int, batch_size: int, num_steps: int) -> None:
    """Raise ValueError unless every random offset leaves at least one full minibatch."""
    _check_positive(batch_size=batch_size, num_steps=num_steps)
    needed = batch_size * num_steps + num_steps + 1
    if num_tokens < needed:
        raise ValueError(
            f"The corpus has {num_tokens} tokens, too few for one minibatch of batch_size={batch_size} "
            f"x num_steps={num_steps}: at least {needed} are needed. Use a longer text, more "
            "tokens (max_tokens) or a smaller batch_size/num_steps."
        )


def seq_data_iter_random(
    corpus: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """d2l random sampling: random offset, shuffled non-overlapping windows, labels shifted by one.

    Yields ``(X, Y)``, each ``(batch_size, num_steps)`` int64. Driven only by ``rng``.
    """
    check_batchable(len(corpus), batch_size, num_steps)
    corpus = corpus[int(rng.integers(0, num_steps)) :]  # offset in [0, num_steps - 1]
    num_subseqs = (len(corpus) - 1) // num_steps
    starts = rng.permutation(np.arange(0, num_subseqs * num_steps, num_steps))
    num_batches = num_subseqs // batch_size
    window = np.arange(num_steps)
    for i in range(0, batch_size * num_batches, batch_size):
        idx = starts[i : i + batch_size, None] + window  # (batch_size, num_steps)
        yield corpus[idx], corpus[idx + 1]


def seq_data_iter_sequential(
    corpus: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """d2l sequential partitioning: batch ``i+1`` row ``r`` continues batch ``i`` row ``r``.

    Yields ``(X, Y)``, each ``(batch_size, num_steps)`` int64. Driven only by ``rng``.
    """
    check_batchable(len(corpus), batch_size, num_steps)
    offset = int(rng.integers(0, num_steps + 1))  # offset in [0, num_steps], as d2l's randint
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = corpus[offset : offset + num_tokens].reshape(batch_size, -1)
    Ys = corpus[offset + 1 : offset + 1 + num_tokens].reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i : i + num_steps], Ys[:, i : i + num_steps]


@dataclass(frozen=True)
class Ed2Windows:
    """The d2l ed. 2 data set: overlapping windows, split into training and validation."""

    X: np.ndarray  # (num_windows, num_steps) int64
    Y: np.ndarray  # (num_windows, num_steps), X shifted by one
    vocab: Vocab
    num_train: int
    num_val: int
    num_chars: int  # characters after preprocessing

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shuffled training windows; the last minibatch may be smaller, as in d2l's DataLoader."""
        yield from iter_windows(self.X[: self.num_train], self.Y[: self.num_train], batch_size, rng)

    def val_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        sl = slice(self.num_train, self.num_train + self.num_val)
        yield from iter_windows(self.X[sl], self.Y[sl], batch_size, None)


def iter_windows(
    X: np.ndarray, Y: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Minibatches of whole windows, shuffled by ``rng`` (in order when ``rng`` is None)."""
    _check_positive(batch_size=batch_size)
    order = rng.permutation(len(X)) if rng is not None else np.arange(len(X))
    for i in range(0, len(X), batch_size):
        idx = order[i : i + batch_size]
        yield X[idx], Y[idx]


def load_ed2_windows(
    num_steps: int,
    num_train: int = 10000,
    num_val: int = 5000,
    path: str | Path | None = None,
) -> Ed2Windows:
    """The d2l ed. 2 ``TimeMachine`` data module (a different pipeline from edition 1).

    The whole text is cleaned at once (``[^A-Za-z]+`` -> space, lowercase, *no* strip: 173,428
    characters for the Time Machine), the vocabulary is alphabetical (space, ``<unk>``, ``a``...),
    and every offset starts a window of ``num_steps + 1`` characters.
    """
    _check_positive(num_steps=num_steps, num_train=num_train)
    if num_val < 0:
        raise ValueError(f"num_val must be >= 0, got {num_val!r}.")
    if path is None:
        text = _read_text(bundled_text_path("timemachine"), BUNDLED_TEXTS["timemachine"])
    else:
        text = _read_text(path)
    chars = list(_NON_LETTERS.sub(" ", text).lower())
    vocab = Vocab(chars, order="alphabetical")
    corpus = np.array(vocab[chars], dtype=np.int64)
    num_windows = len(corpus) - num_steps
    if num_windows < num_train + num_val:
        raise ValueError(
            f"The text gives {max(num_windows, 0)} windows of {num_steps + 1} characters, fewer than "
            f"num_train + num_val = {num_train + num_val}. Use a longer text or fewer windows."
        )
    idx = np.arange(num_train + num_val)[:, None] + np.arange(num_steps + 1)
    windows = corpus[idx]  # (num_train + num_val, num_steps + 1)
    return Ed2Windows(windows[:, :-1], windows[:, 1:], vocab, num_train, num_val, len(corpus))
