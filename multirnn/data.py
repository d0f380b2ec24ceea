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

import codecs
import collections
import difflib
import hashlib
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "BUNDLED_TEXTS",
    "TextTooShortError",
    "Vocab",
    "bundled_text_path",
    "clean_text",
    "load_corpus",
    "load_ed2_windows",
    "load_time_machine",
    "decode_text",
    "ed1_corpus",
    "ed2_windows",
    "encode_eval_text",
    "text_label",
    "file_sha256",
    "text_windows",
    "read_text",
    "resolve_text",
    "read_lines",
    "seq_data_iter_random",
    "seq_data_iter_sequential",
    "iter_windows",
    "tokenize",
    "with_dropped_note",
    "with_notes",
]

# SHA-256 of the texts shipped inside the package (the Time Machine file is d2l's own,
# sha1 090b5e7e70c295757f55df93cb0a180b9691891a).
BUNDLED_TEXTS: dict[str, str] = {
    "timemachine": "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
    "war_of_the_worlds": "0afd3f149dc6e2db50afe04dcaaae09df4bf0d87e831002f5ba8d51e1138bf59",
}
# Their encodings: Project Gutenberg's #36 is Windows-1252 (its quotes are bytes 0x91-0x94), kept
# byte for byte so that the checksum is the published file's.
BUNDLED_ENCODINGS: dict[str, str] = {"timemachine": "utf-8", "war_of_the_worlds": "cp1252"}

_NON_LETTERS = re.compile("[^A-Za-z]+")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")  # the line ends of Python's universal newlines


BUNDLED_TITLES = {"timemachine": "The Time Machine", "war_of_the_worlds": "The War of the Worlds"}


def text_label(path: str | Path | None) -> str:
    """How reports name a text: a bundled one by its title (``None``: the default, The Time Machine), a
    file by its name."""
    if path is None:
        return f"{BUNDLED_TITLES['timemachine']} (bundled)"
    bundled = next((n for n in BUNDLED_TEXTS if Path(path) == bundled_text_path(n)), None)
    return f"{BUNDLED_TITLES[bundled]} (bundled)" if bundled else Path(path).name


def bundled_text_path(name: str) -> Path:
    """Path of a text shipped with the package (``"timemachine"`` or ``"war_of_the_worlds"``)."""
    if name not in BUNDLED_TEXTS:
        raise ValueError(f"Unknown bundled text {name!r}. Bundled texts: {sorted(BUNDLED_TEXTS)}.")
    return Path(str(resources.files("multirnn") / "texts" / f"{name}.txt"))


_FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def _bundled_hint(path: Path, label: str) -> str:
    """For a missing file named like a bundled text ("war_of_the_worlds.txt"): that text's name."""
    stem = path.name.lower().removesuffix(".txt").replace("-", "_").replace(" ", "_")
    close = difflib.get_close_matches(stem, BUNDLED_TEXTS, n=1, cutoff=0.8)
    if not close:
        return ""
    use = f" ({label} {close[0]})" if label.startswith("--") else ""
    return f"; did you mean the bundled text {close[0]!r}{use}?"


def resolve_text(spec: str | Path, label: str = "text") -> Path:
    """The file a text argument names: a bundled text by name (``"timemachine"``,
    ``"war_of_the_worlds"``), else a path (``./timemachine`` for a file of that name).

    ``label`` opens every message, e.g. ``"--eval-text"``.

    Raises:
        ValueError: no such file (naming a bundled text the argument resembles), a directory, not a
            regular file (``/dev/null``, a pipe: a text is read more than once) or an empty file.
    """
    if isinstance(spec, str) and spec in BUNDLED_TEXTS:
        return bundled_text_path(spec)
    path, subject = Path(spec), f"{label} {str(spec)!r}"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{subject}: no such file{_bundled_hint(path, label)}") from None
    except OSError as exc:
        raise ValueError(f"{subject}: cannot read it: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{subject} is a directory; give a text file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for is_kind, k in _FILE_KINDS if is_kind(st.st_mode)), "not a file")
        raise ValueError(f"{subject} is not a regular file ({kind}); give a text file")
    if st.st_size == 0 and not _yields_bytes(path):  # /proc's files say 0 bytes and hold text
        raise ValueError(f"{subject} is empty (0 bytes): no letters A-Z to read")
    return path.resolve()


# Byte-order marks, longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
# C0 controls other than backspace (nroff overstrike), tab, line feed, vertical tab, form feed, carriage return
# and escape (ANSI colour codes); and DEL. Text has next to none of them, random bytes ~10 %.
_CONTROL_CHARACTERS = re.compile("[\x00-\x07\x0e-\x1a\x1c-\x1f\x7f]")
# Letters outside A-Z (accents, other scripts): d2l's preprocessing turns them into spaces.
_OTHER_LETTERS = re.compile(r"[^\W\d_A-Za-z]")
_ASCII_LETTERS = re.compile("[A-Za-z]")
# When more than this share of a text's letters fall outside A-Z, say so.
DROPPED_LETTERS_WARNING = 0.01


def check_encoding(encoding: str) -> str:
    """``encoding`` as Python's codec name, when it is a text encoding.

    Raises:
        ValueError: an unknown name, or a codec that is not a text encoding (rot13, base64, zlib).
    """
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"Unknown text encoding {encoding!r} (e.g. utf-8, utf-16, cp1252, latin-1).") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"{encoding!r} is not a text encoding (e.g. utf-8, utf-16, cp1252, latin-1).")
    return info.name


def decode_text(raw: bytes, name: str = "text", encoding: str | None = None) -> str:
    """Decode a text file's bytes: by its byte-order mark (UTF-8/16/32) when it has one, else in
    ``encoding`` when given, else as UTF-8; never a guess.

    Raises:
        ValueError: binary data (NUL bytes outside UTF-16/32, or many control characters), an encoding that
            is not a text encoding, or bytes that are not valid in the encoding (the message gives the
            offset and how to convert the file).
    """
    given = encoding
    if given is not None:
        info = codecs.lookup(check_encoding(given))
    # A byte-order mark says what the file is, whatever --encoding says (its help promises as much)
    bom = next(((b, e) for b, e in _BOMS if raw.startswith(b)), None)
    if bom is not None:
        encoding, body = bom[1], raw[len(bom[0]):]
    elif given is not None:
        encoding, body = info.name, raw
    else:
        encoding, body = "utf-8", raw
    wide = encoding.replace("_", "-").startswith(("utf-16", "utf-32"))
    if not wide and b"\x00" in body[:65536]:
        raise ValueError(f"{name} looks binary (it contains NUL bytes), not text. If it is UTF-16 or UTF-32 "
                         "without a byte-order mark, give --encoding utf-16 (or utf-32), or convert it to UTF-8 "
                         "(e.g. iconv -f UTF-16LE -t UTF-8).")
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = body[exc.start:exc.start + 1].hex()
        offset = exc.start + (len(bom[0]) if bom else 0)  # in the file, byte-order mark included
        raise ValueError(f"{name} is not valid {encoding.upper()} text (byte 0x{bad} at offset {offset}). "
                         "Give its encoding (--encoding cp1252, latin-1, ...) or convert it to UTF-8 "
                         "(iconv -f CP1252 -t UTF-8).") from None
    # Single-byte encodings decode any bytes: random data read as latin-1 is ~13 % control characters
    controls = len(_CONTROL_CHARACTERS.findall(text[:65536]))
    if controls > max(10, 0.005 * min(len(text), 65536)):
        raise ValueError(f"{name} looks binary ({controls:,} control characters in its first "
                         f"{min(len(text), 65536):,} characters as {encoding}), not text.")
    return text


def _yields_bytes(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return bool(f.read(1))
    except OSError:
        return False


def bundled_name(path: Path) -> str | None:
    try:
        resolved = path.resolve()
        return next((n for n in BUNDLED_TEXTS if bundled_text_path(n).resolve() == resolved), None)
    except OSError:
        return None


def _read_text(path: str | Path, expected_sha256: str | None = None, encoding: str | None = None) -> str:
    path = Path(path)
    bundled = bundled_name(path)
    if bundled is not None:  # a bundled text: its encoding and checksum are known, whatever encoding is asked
        encoding, expected_sha256 = BUNDLED_ENCODINGS[bundled], expected_sha256 or BUNDLED_TEXTS[bundled]
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory, not a text file.")
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
    if not raw:
        raise ValueError(f"Text file {str(path)!r} is empty (0 bytes): no letters A-Z to read.")
    text = decode_text(raw, f"Text file {str(path)!r}", encoding)
    if not _ASCII_LETTERS.search(text):
        hint = (f"; read as --encoding {encoding}: is that its encoding?" if encoding is not None and bundled is None
                else "")
        raise ValueError(f"Text file {str(path)!r} contains no letters A-Z (empty, or not English text{hint}).")
    return text


def text_notes(text: str) -> list[str]:
    """What d2l's preprocessing loses from ``text`` when that is a large share (else nothing)."""
    ascii_letters = len(_ASCII_LETTERS.findall(text))
    other = len(_OTHER_LETTERS.findall(text))
    share = other / max(other + ascii_letters, 1)
    if share > DROPPED_LETTERS_WARNING:
        return [f"{other:,} letters outside A-Z ({share:.1%} of all letters: accents or other scripts) became "
                "spaces: d2l's preprocessing keeps only A-Z"]
    return []


def split_lines(text: str) -> list[str]:
    """``text``'s lines as d2l's ``f.readlines()`` in text mode splits them: at ``\\n``, ``\\r`` and
    ``\\r\\n`` only. ``str.splitlines`` also splits at form feeds, ``\\x1c``-``\\x1e``, NEL and U+2028/9,
    and the strip of each line then glued the words around them together (``"two\\x0cthree"``)."""
    lines = _LINE_BREAKS.split(text)
    if lines and lines[-1] == "":  # a final line break ends the last line, it does not start another
        lines.pop()
    return lines


def clean_ed1(text: str) -> str:
    """d2l ed. 1 preprocessing of a whole text: each line's non-letter runs -> one space, the line
    stripped and lowercased, the lines joined without separator (fast; same result as per line)."""
    lines = "\n".join(split_lines(text))  # every line break d2l's readlines knows becomes one "\n"
    spaced = re.sub("[^A-Za-z\n]+", " ", lines)  # runs stop at line ends, as per-line cleaning does
    return re.sub(" ?\n ?", "", spaced).strip().lower()


def clean_ed2(text: str) -> str:
    """d2l ed. 2 preprocessing: the whole text at once, non-letter runs -> one space, lowercase (no strip)."""
    return _NON_LETTERS.sub(" ", text).lower()


def clean_text(text: str, protocol: str = "d2l-ed1") -> str:
    """``text`` preprocessed as ``protocol`` (``"d2l-ed1"`` or ``"d2l-ed2"``) preprocesses its training text."""
    if protocol == "d2l-ed1":
        return clean_ed1(text)
    if protocol == "d2l-ed2":
        return clean_ed2(text)
    raise ValueError(f"Unknown protocol {protocol!r}; expected 'd2l-ed1' or 'd2l-ed2'.")


def _char_ids(chars: str, vocab: Vocab) -> np.ndarray:
    """Token ids of a cleaned string (lowercase a-z and spaces only) through a byte lookup table."""
    table = np.full(256, vocab.unk, dtype=np.int64)
    for tok, idx in vocab.token_to_idx.items():
        if len(tok) == 1 and ord(tok) < 256:
            table[ord(tok)] = idx
    return table[np.frombuffer(chars.encode("latin-1"), dtype=np.uint8)]


def _char_vocab(chars: str, order: str = "frequency") -> Vocab:
    """d2l's Vocab of a cleaned string's characters, counted with NumPy instead of a Python Counter
    (ties keep first-appearance order, as d2l's stable sort of a Counter does)."""
    counts = np.bincount(np.frombuffer(chars.encode("latin-1"), dtype=np.uint8), minlength=256)
    present = [chr(c) for c in np.flatnonzero(counts)]
    order_seen = sorted(present, key=chars.find)  # at most 27 C-speed searches, no sort of the text
    return Vocab.from_counts([(c, int(counts[ord(c)])) for c in order_seen], order=order)


def read_lines(path: str | Path, expected_sha256: str | None = None, encoding: str | None = None) -> list[str]:
    """Read a text file the d2l ed. 1 way: per line, non-letter runs -> one space, strip, lower."""
    text = _read_text(path, expected_sha256, encoding)
    return [_NON_LETTERS.sub(" ", line).strip().lower() for line in split_lines(text)]


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

    @classmethod
    def from_counts(cls, counts: Sequence[tuple[str, int]], reserved_tokens: Sequence[str] = (),
                    order: str = "frequency") -> Vocab:
        """The vocabulary of tokens with these counts, given in first-appearance order."""
        vocab = cls((), reserved_tokens=reserved_tokens, order=order)
        vocab.token_freqs = sorted(counts, key=lambda kv: kv[1], reverse=True)
        if order == "frequency":
            for tok, _ in vocab.token_freqs:
                if tok not in vocab.token_to_idx:
                    vocab.idx_to_token.append(tok)
        else:
            vocab.idx_to_token = sorted({"<unk>", *reserved_tokens, *(t for t, _ in counts)})
        vocab.token_to_idx = {tok: idx for idx, tok in enumerate(vocab.idx_to_token)}
        return vocab

    @classmethod
    def from_tokens(cls, idx_to_token: Sequence[str]) -> Vocab:
        """A vocabulary with exactly this index order (e.g. one saved with :meth:`to_dict`)."""
        vocab = cls(())
        vocab.idx_to_token = list(idx_to_token)
        vocab.token_to_idx = {tok: idx for idx, tok in enumerate(vocab.idx_to_token)}
        return vocab

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
    encoding: str | None = None,
) -> tuple[np.ndarray, Vocab]:
    """Load any text file with d2l ed. 1 preprocessing (``load_corpus_time_machine``).

    Args:
        path: a text file: UTF-8, or UTF-16/32 with a byte-order mark, or in ``encoding``.
        max_tokens: keep only the first ``max_tokens`` tokens; ``-1`` (or any value <= 0) keeps all.
        token: ``"char"`` or ``"word"``.
        expected_sha256: when given, the file's checksum must match.
        encoding: the file's encoding, when it is neither UTF-8 nor marked by a byte-order mark.

    Returns:
        ``(corpus, vocab)``: an int64 array of token ids (line breaks are dropped, as in d2l)
        and the vocabulary built from the whole text.

    Raises:
        ValueError: unreadable, empty or letter-free file, or a checksum mismatch.
    """
    if token == "char":  # fast path, same result: tests/test_data.py checks it against d2l's way
        chars = clean_ed1(_read_text(path, expected_sha256, encoding))
        vocab = _char_vocab(chars)
        return _char_ids(chars[:max_tokens] if max_tokens > 0 else chars, vocab), vocab
    tokens = tokenize(read_lines(path, expected_sha256, encoding), token)
    vocab = Vocab(tokens)
    corpus = np.array([vocab[t] for line in tokens for t in line], dtype=np.int64)
    if max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


def load_time_machine(max_tokens: int = -1, token: str = "char") -> tuple[np.ndarray, Vocab]:
    """The bundled *Time Machine* as d2l ed. 1 loads it (28 characters, 170,580 tokens)."""
    name = "timemachine"
    return load_corpus(bundled_text_path(name), max_tokens, token, BUNDLED_TEXTS[name])


class TextTooShortError(ValueError):
    """A text (or corpus) too short for the minibatches asked of it."""


def encode(text_path: str | Path, vocab: Vocab, max_tokens: int = -1, encoding: str | None = None,
           protocol: str = "d2l-ed1") -> np.ndarray:
    """Token ids of another text under an existing vocabulary (unknown characters -> ``<unk>``),
    preprocessed as ``protocol`` preprocesses its training text."""
    chars = clean_text(_read_text(text_path, encoding=encoding), protocol)
    return _char_ids(chars[:max_tokens] if max_tokens > 0 else chars, vocab)


def encode_eval_text(text_path: str | Path, vocab: Vocab, protocol: str, batch_size: int, num_steps: int,
                     encoding: str | None = None, label: str | None = None) -> np.ndarray:
    """Token ids of an evaluation text, preprocessed like the training text of ``protocol``, checked to
    hold the minibatch that ``harness.evaluate_text_perplexity`` needs.

    Raises:
        TextTooShortError: fewer tokens than that (the message gives both counts, and what preprocessing
            dropped when that is a large share).
        ValueError: unreadable, undecodable or letter-free text.
    """
    ids = encode(text_path, vocab, encoding=encoding, protocol=protocol)
    try:
        check_evaluable(len(ids), batch_size, num_steps, label or f"Text file {str(text_path)!r}", " after preprocessing",
                        protocol)
    except TextTooShortError as exc:
        raise TextTooShortError(with_dropped_note(str(exc), text_path, encoding)) from None
    return ids


def with_dropped_note(message: str, text_path: str | Path | None, encoding: str | None = None) -> str:
    """``message`` (a :class:`TextTooShortError`'s) plus what d2l's preprocessing dropped from the text,
    when that is a large share: often why the text is short (the default text when ``text_path`` is None)."""
    try:
        notes = text_notes(read_text(text_path, encoding))
    except ValueError:  # the text read before; if it no longer does, the message stands alone
        return message
    return with_notes(message, notes)


def with_notes(message: str, notes: Sequence[str]) -> str:
    """``message`` followed by :func:`text_notes`' findings, if any."""
    return f"{message} Note: {'; '.join(notes)}." if notes else message


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def min_batchable_tokens(batch_size: int, num_steps: int) -> int:
    """The fewest tokens :func:`check_batchable` accepts."""
    _check_positive(batch_size=batch_size, num_steps=num_steps)
    return batch_size * num_steps + num_steps + 1


def min_in_order_tokens(batch_size: int, num_steps: int) -> int:
    """The fewest tokens one minibatch read in order from the first token needs (an evaluation text: no
    random offset, so ``num_steps`` fewer than :func:`min_batchable_tokens`)."""
    _check_positive(batch_size=batch_size, num_steps=num_steps)
    return batch_size * num_steps + 1


def check_evaluable(num_tokens: int, batch_size: int, num_steps: int, what: str = "The evaluation text",
                    counted: str = "", protocol: str = "d2l-ed1") -> None:
    """Raise TextTooShortError unless ``num_tokens`` are enough to evaluate: under d2l ed. 1 one minibatch
    read in order, under ed. 2 one window of ``num_steps + 1`` (``harness.evaluate_text_perplexity``);
    the message names ``what`` and how its tokens were ``counted`` (e.g. " after preprocessing")."""
    if protocol == "d2l-ed2":
        _check_positive(num_steps=num_steps)
        if num_tokens < num_steps + 1:
            raise TextTooShortError(
                f"{what} has {num_tokens:,} tokens{counted}, too few for one window of num_steps={num_steps} "
                f"(d2l ed. 2): at least {num_steps + 1:,} are needed. Use a longer evaluation text or a smaller "
                "num_steps.")
        return
    needed = min_in_order_tokens(batch_size, num_steps)
    if num_tokens < needed:
        raise TextTooShortError(
            f"{what} has {num_tokens:,} tokens{counted}, too few to evaluate one minibatch of batch_size={batch_size} "
            f"x num_steps={num_steps}: at least {needed:,} are needed. Use a longer evaluation text or a smaller "
            "batch_size/num_steps.")


def check_batchable(num_tokens: int, batch_size: int, num_steps: int) -> None:
    """Raise TextTooShortError unless every random offset leaves at least one full minibatch."""
    needed = min_batchable_tokens(batch_size, num_steps)
    if num_tokens < needed:
        raise TextTooShortError(
            f"The corpus has {num_tokens} tokens, too few for one minibatch of batch_size={batch_size} "
            f"x num_steps={num_steps}: at least {needed:,} are needed. Use a longer text, more "
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


def text_windows(ids: np.ndarray, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of ``num_steps + 1`` tokens, one token apart, as d2l ed. 2 cuts its text:
    ``(X, Y)``, each ``(len(ids) - num_steps, num_steps)``. Read-only views of ``ids``, no copies (a
    book has ~10^5 windows; :func:`iter_windows` copies one minibatch at a time)."""
    _check_positive(num_steps=num_steps)
    w = np.lib.stride_tricks.sliding_window_view(np.asarray(ids), num_steps + 1)
    return w[:, :-1], w[:, 1:]


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
    encoding: str | None = None,
) -> Ed2Windows:
    """The d2l ed. 2 ``TimeMachine`` data module (a different pipeline from edition 1).

    The whole text is cleaned at once (``[^A-Za-z]+`` -> space, lowercase, *no* strip: 173,428
    characters for the Time Machine), the vocabulary is alphabetical (space, ``<unk>``, ``a``...),
    and every offset starts a window of ``num_steps + 1`` characters.
    """
    text = _read_text(bundled_text_path("timemachine") if path is None else path, encoding=encoding)
    return ed2_windows(text, num_steps, num_train, num_val)


def ed2_windows(text: str, num_steps: int, num_train: int = 10000, num_val: int = 5000) -> Ed2Windows:
    """:func:`load_ed2_windows` of an already decoded text."""
    _check_positive(num_steps=num_steps, num_train=num_train)
    if num_val < 0:
        raise ValueError(f"num_val must be >= 0, got {num_val!r}.")
    # Only as much text as the windows need; the vocabulary still counts the whole text, as d2l's.
    chars = clean_ed2(text)
    vocab = _char_vocab(chars, order="alphabetical")
    num_windows = len(chars) - num_steps
    if num_windows < num_train + num_val:
        raise TextTooShortError(
            f"The text gives {max(num_windows, 0):,} windows of {num_steps + 1} characters, fewer than "
            f"num_train + num_val = {num_train + num_val:,}. Use a longer text (one of at least "
            f"{num_train + num_val + num_steps:,} characters after preprocessing), or fewer windows (num_train and "
            "num_val of the Python API's TrainConfig)."
        )
    corpus = _char_ids(chars[:num_train + num_val + num_steps], vocab)
    idx = np.arange(num_train + num_val)[:, None] + np.arange(num_steps + 1)
    windows = corpus[idx]  # (num_train + num_val, num_steps + 1)
    return Ed2Windows(windows[:, :-1], windows[:, 1:], vocab, num_train, num_val, len(chars))


def file_sha256(path: str | Path | None) -> str | None:
    """sha256 of a text file's bytes; None for None (the bundled default text, which multirnn's code
    version covers). A resumed run or a sweep compares it to tell a changed file from the same one."""
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_text(path: str | Path | None = None, encoding: str | None = None) -> str:
    """A text file decoded as :func:`decode_text` says (the bundled Time Machine by default, checksum verified)."""
    return _read_text(bundled_text_path("timemachine") if path is None else path, encoding=encoding)


def ed1_corpus(text: str, max_tokens: int = -1) -> tuple[np.ndarray, Vocab, int]:
    """d2l ed. 1 token ids of an already decoded text: ``(ids, vocab, number of tokens in the whole text)``."""
    chars = clean_ed1(text)
    vocab = _char_vocab(chars)
    return _char_ids(chars[:max_tokens] if max_tokens > 0 else chars, vocab), vocab, len(chars)
