"""The framework-neutral training loop, d2l's ``train_ch8``, and greedy prediction.

The loop only calls the backend contract, so the same code trains every framework. Batches come
from NumPy, driven by one seeded generator: the same seed gives every backend the same batches.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend, Params
from .config import TrainConfig
from .data import (
    _NON_LETTERS,
    BUNDLED_TEXTS,
    Ed2Windows,
    TextTooShortError,
    Vocab,
    bundled_text_path,
    check_batchable,
    check_evaluable,
    ed1_corpus,
    ed2_windows,
    iter_windows,
    read_text,
    seq_data_iter_random,
    seq_data_iter_sequential,
    text_notes,
    text_windows,
    with_notes,
)
from .errors import TrainingDivergedError
from .params import check_dtype, init_params, validate_params

Batch = tuple[np.ndarray, np.ndarray]
# Largest mean loss whose perplexity exp(loss) is finite in float64; beyond it a run has blown up.
MAX_LOSS = math.log(np.finfo(np.float64).max)


@dataclass
class TrainingData:
    """The data of one run: the vocabulary and the minibatches the protocol prescribes."""

    config: TrainConfig
    vocab: Vocab
    corpus: np.ndarray | None = None  # d2l-ed1
    windows: Ed2Windows | None = None  # d2l-ed2
    total_tokens: int | None = None  # tokens in the whole text (d2l-ed1 uses the first max_tokens)
    notes: list[str] = field(default_factory=list)  # what preprocessing lost, when it is a large share

    @property
    def used_tokens(self) -> int:
        """Tokens the protocol trains on: the corpus (ed. 1) or the training windows' characters (ed. 2)."""
        if self.windows is not None:
            return self.windows.num_train + self.config.num_steps
        return len(self.corpus) if self.corpus is not None else 0

    def save(self, path: str | Path) -> None:
        """Write the prepared data (ids, vocabulary) so that worker processes need not tokenise again."""
        arrays: dict[str, Any] = {"vocab": np.array(self.vocab.idx_to_token), "config": np.array(json.dumps(self.config.to_dict())),
                                  "notes": np.array(json.dumps(self.notes)), "total_tokens": np.array(self.total_tokens or -1)}
        if self.windows is not None:
            w = self.windows
            arrays.update(X=w.X, Y=w.Y, ed2=np.array([w.num_train, w.num_val, w.num_chars]))
        else:
            arrays["corpus"] = self.corpus
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> TrainingData:
        with np.load(path, allow_pickle=False) as z:
            config = TrainConfig(**json.loads(str(z["config"])))
            vocab = Vocab.from_tokens([str(t) for t in z["vocab"]])
            total = int(z["total_tokens"])
            common = dict(total_tokens=None if total < 0 else total, notes=json.loads(str(z["notes"])))
            if "ed2" in z.files:
                num_train, num_val, num_chars = (int(v) for v in z["ed2"])
                windows = Ed2Windows(z["X"], z["Y"], vocab, num_train, num_val, num_chars)
                return cls(config, vocab, windows=windows, **common)
            return cls(config, vocab, corpus=z["corpus"], **common)

    def train_batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        c = self.config
        if self.windows is not None:
            return self.windows.train_batches(c.batch_size, rng)
        assert self.corpus is not None
        make = seq_data_iter_random if c.sampling == "random" else seq_data_iter_sequential
        return make(self.corpus, c.batch_size, c.num_steps, rng)

    def val_batches(self) -> Iterator[Batch]:
        if self.windows is None or self.windows.num_val == 0:
            return iter(())
        return self.windows.val_batches(self.config.batch_size)


def prepare_data(config: TrainConfig, text: str | Path | None = None, encoding: str | None = None) -> TrainingData:
    """Read and tokenise the text once (the bundled Time Machine by default), as ``config.protocol`` says.

    Args:
        config: the run's configuration.
        text: a text file: UTF-8, or UTF-16/32 with a byte-order mark, or in ``encoding``; or a bundled
            text by name (``"war_of_the_worlds"``), as the command line takes it.
        encoding: the file's encoding when it is neither of those.

    Raises:
        TypeError: ``config`` is not a TrainConfig.
        ValueError: unreadable, binary, undecodable or empty text, or one too short for a minibatch.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (e.g. multirnn.preset('quick')), got {type(config).__name__}.")
    if isinstance(text, str) and text in BUNDLED_TEXTS:
        text = bundled_text_path(text)
    raw = read_text(text, encoding)
    notes = text_notes(raw)
    try:
        if config.protocol == "d2l-ed2":
            windows = ed2_windows(raw, config.num_steps, config.num_train, config.num_val)
            return TrainingData(config, windows.vocab, windows=windows, total_tokens=windows.num_chars, notes=notes)
        corpus, vocab, total = ed1_corpus(raw, config.max_tokens)
        check_batchable(len(corpus), config.batch_size, config.num_steps)
    except TextTooShortError as exc:  # often short because preprocessing dropped most of it: say so
        raise TextTooShortError(with_notes(str(exc), notes)) from None
    return TrainingData(config, vocab, corpus=corpus, total_tokens=total, notes=notes)


@dataclass
class History:
    """What a run recorded. Per step: loss and gradient norm (before clipping); per epoch:
    perplexity, validation perplexity (ed. 2), seconds and tokens/s."""

    step_loss: list[float] = field(default_factory=list)
    step_grad_norm: list[float] = field(default_factory=list)
    steps_per_epoch: list[int] = field(default_factory=list)
    perplexity: list[float] = field(default_factory=list)
    val_perplexity: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    tokens_per_sec: list[float] = field(default_factory=list)

    @property
    def first_epoch_seconds(self) -> float | None:
        """Wall time of the first epoch, which includes compilation and warm-up."""
        return self.epoch_seconds[0] if self.epoch_seconds else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_loss": self.step_loss,
            "step_grad_norm": self.step_grad_norm,
            "steps_per_epoch": self.steps_per_epoch,
            "perplexity": self.perplexity,
            "val_perplexity": self.val_perplexity,
            "epoch_seconds": self.epoch_seconds,
            "tokens_per_sec": self.tokens_per_sec,
            "first_epoch_seconds": self.first_epoch_seconds,
        }


@dataclass
class TrainResult:
    """A finished run: its history, the final params (the backend's own arrays) and the vocab."""

    backend: Backend
    config: TrainConfig
    history: History
    params: Params
    vocab: Vocab


EpochCallback = Callable[[int, History], None]


def check_train_args(backend: Any, config: Any, data: Any = None) -> None:
    """Raise a clear TypeError/ValueError for arguments of the wrong kind (not a deep AttributeError)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a multirnn Backend (e.g. multirnn.get_backend('numpy')), "
                        f"got {type(backend).__name__} {backend!r:.60}.")
    if not isinstance(config, TrainConfig):
        hint = f" Use multirnn.preset({config!r})." if isinstance(config, str) else ""
        raise TypeError(f"config must be a TrainConfig (e.g. multirnn.preset('quick')), got "
                        f"{type(config).__name__} {config!r:.60}.{hint}")
    model = getattr(backend, "model", None)
    if model is not None and model != config.model:
        raise ValueError(f"backend {backend!r} was created for {model.name}, but the config asks for "
                         f"{config.model.name}: create it with get_backend(..., model=config.model).")
    if data is not None:
        if not isinstance(data, TrainingData):
            raise TypeError(f"data must be a TrainingData from multirnn.prepare_data(config), got {type(data).__name__}.")
        fields = ("protocol", "batch_size", "num_steps", "sampling", "max_tokens", "num_train", "num_val")
        differ = [f"{f}={getattr(data.config, f)!r} vs {getattr(config, f)!r}" for f in fields
                  if getattr(data.config, f) != getattr(config, f)]
        if differ:
            raise ValueError(f"data was prepared for another configuration ({', '.join(differ)}); "
                             "call multirnn.prepare_data(config) again.")


def safe_perplexity(mean_loss: float) -> float:
    """``exp(mean_loss)``, +inf when it overflows (a finite loss above ~709), NaN for NaN."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class Checkpoint:
    """Where epoch ``epoch`` of a run starts: its params and the data generator's state.

    The hidden state is zero at every epoch start (d2l resets it per epoch), so params and the
    generator state are all another backend needs to train the same epoch from the same point.
    """

    epoch: int  # 1-based: the epoch that starts here
    global_step: int  # steps completed before this epoch
    params: dict[str, np.ndarray]
    rng_state: dict[str, Any]
    # What the NumPy oracle's probe steps gave from here (see multirnn.lockstep), computed once by
    # the run that saves the checkpoint instead of by every backend that restarts from it.
    probe_refs: dict[str, Any] | None = None


@dataclass
class EpochSteps:
    """What one epoch (or the first ``max_steps`` of it) recorded, before any host conversion."""

    params: Params
    losses: list[float]
    norms: list[float]
    sizes: list[int]


def run_epoch(
    backend: Backend, config: TrainConfig, data: TrainingData, params: Params, rng: np.random.Generator,
    max_steps: int | None = None, on_step: Callable[[int], None] | None = None,
) -> EpochSteps:
    """One epoch of d2l's ``train_epoch_ch8``: the state rules, then ``train_step`` per minibatch.

    With sequential partitioning the state starts at zero and is carried (detached) from one
    minibatch to the next; with random sampling and in the ed. 2 protocol it is re-initialised
    for every minibatch. ``max_steps`` stops early (the generator has then advanced less);
    ``on_step(steps_done)`` is called after every step (it must be cheap).
    """
    state, losses, norms, sizes = None, [], [], []
    H, dtype = config.num_hiddens, config.dtype
    for X, Y in data.train_batches(rng):
        if max_steps is not None and len(losses) >= max_steps:
            break
        if state is None or config.resets_state_every_batch:
            state = backend.init_state(X.shape[0], H, dtype)
        params, loss, norm, state = backend.train_step(params, X, Y, state, config.lr, config.max_grad_norm)
        # Keep framework scalars: converting here would wait on the device every step.
        losses.append(loss)
        norms.append(norm)
        sizes.append(X.size)
        if on_step is not None:
            on_step(len(losses))
    return EpochSteps(params, [float(v) for v in losses], [float(v) for v in norms], sizes)


def train(
    backend: Backend,
    config: TrainConfig,
    data: TrainingData | None = None,
    *,
    params: dict[str, np.ndarray] | None = None,
    callback: EpochCallback | None = None,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint_epochs: Collection[int] = (),
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
) -> TrainResult:
    """Train the d2l RNN with ``backend``: loss and grads, clip to ``max_grad_norm``, SGD.

    State rules follow d2l: with sequential partitioning the state starts at zero each epoch and
    is carried (detached) from minibatch to minibatch; with random sampling, and in the ed. 2
    protocol, it is re-initialised for every minibatch.

    Args:
        backend: any :class:`~multirnn.backends.base.Backend`.
        config: hyper-parameters and protocol (see :data:`multirnn.config.PRESETS`).
        data: prepared data; by default the bundled Time Machine via :func:`prepare_data`.
        params: initial NumPy params; by default ``init_params(vocab, num_hiddens, seed, dtype)``.
        callback: called as ``callback(epoch, history)`` after every epoch (1-based).
        on_step: called as ``on_step(epoch, step)`` after every step (cheap: progress, liveness).
        checkpoint_epochs: 1-based epochs at whose start ``on_checkpoint`` receives a
            :class:`Checkpoint` (used to re-anchor other backends on this run).
        on_checkpoint: see ``checkpoint_epochs``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TypeError, ValueError: ``backend``, ``config``, ``data`` or ``params`` are not what is
            expected (the message names what was received).
        TrainingDivergedError: a loss was NaN, infinite or above ``MAX_LOSS`` (~709.8, where the
            perplexity overflows); names the epoch and step and carries the history up to (not
            including) that step.
    """
    check_train_args(backend, config, data)
    data = data if data is not None else prepare_data(config)
    if params is None:
        params = init_params(len(data.vocab), config.num_hiddens, config.seed, config.dtype, config.model)
    else:
        if not (isinstance(params, Mapping) and all(isinstance(v, np.ndarray) for v in params.values())):
            # the backend's own (a TrainResult's, to train on): copied, as the training loop may update or
            # donate what it is given and the caller's params must stay as they are; validated below
            try:
                own, params = params, backend.params_to_numpy(params)
            except Exception:  # noqa: BLE001  (not this backend's params: say what was expected)
                _predict_params(backend, params)  # raises the TypeError/ValueError naming it
                raise
            validate_params(params, config.model)
            check_same_model(backend, own, params)
        V, H, _ = validate_params(params, config.model)
        if (V, H) != (len(data.vocab), config.num_hiddens):
            raise ValueError(f"params are for vocab_size={V}, num_hiddens={H}, but the data has {len(data.vocab)} "
                             f"tokens and config.num_hiddens is {config.num_hiddens}.")
    p = backend.params_from_numpy(params)
    history = History()
    # One generator drives every random choice of the data, so every backend sees the same batches.
    rng = np.random.default_rng(config.seed)
    wanted = set(checkpoint_epochs) if on_checkpoint is not None else set()
    try:
        for epoch in range(1, config.num_epochs + 1):
            if epoch in wanted:
                on_checkpoint(Checkpoint(epoch, len(history.step_loss), backend.params_to_numpy(p),  # type: ignore[misc]
                                         copy.deepcopy(rng.bit_generator.state)))
            start = time.perf_counter()
            step_hook = (lambda step, e=epoch: on_step(e, step)) if on_step is not None else None
            steps = run_epoch(backend, config, data, p, rng, on_step=step_hook)
            p = steps.params
            seconds = time.perf_counter() - start
            # Diverged: a loss that is not finite, or so large that exp(loss) overflows (perplexity inf).
            bad = next((i for i, v in enumerate(steps.losses) if not (math.isfinite(v) and v <= MAX_LOSS)), None)
            if bad is not None:
                history.step_loss += steps.losses[:bad]
                history.step_grad_norm += steps.norms[:bad]
                global_step = len(history.step_loss) + 1
                raise TrainingDivergedError(
                    f"Training diverged: loss is {steps.losses[bad]:.4g} at epoch {epoch}, step {bad + 1} of that epoch "
                    f"(global step {global_step}) with backend {backend.name!r}"
                    + (f" (impl {backend.impl!r})" if getattr(backend, "impl", "scratch") != "scratch" else "") + ". "
                    + ("At the first step no update has happened yet: the params or the backend's loss are at fault, "
                       "not the lr." if global_step == 1 else "Try a smaller lr or max_grad_norm."),
                    history,
                    epoch,
                    bad + 1,
                )
            history.step_loss += steps.losses
            history.step_grad_norm += steps.norms
            history.steps_per_epoch.append(len(steps.losses))
            history.perplexity.append(safe_perplexity(float(np.dot(steps.losses, steps.sizes) / sum(steps.sizes))))
            history.epoch_seconds.append(seconds)
            history.tokens_per_sec.append(sum(steps.sizes) / seconds)
            if data.windows is not None and data.windows.num_val:
                # the training loop's own params: no check (it converts them to NumPy) every epoch
                history.val_perplexity.append(_zero_state_perplexity(backend, p, data.val_batches(), config.num_hiddens,
                                                                     config.dtype))
            if callback is not None:
                callback(epoch, history)
    except Exception as exc:
        if not isinstance(exc, TrainingDivergedError):  # the epochs finished before a crash: the worker keeps them
            exc.partial_history = history  # type: ignore[attr-defined]
        raise
    return TrainResult(backend, config, history, p, data.vocab)


def non_finite_params(backend: Backend, params: Params) -> list[str]:
    """The d2l names of ``params`` (a backend's own) holding NaN or infinite values."""
    return [k for k, v in backend.params_to_numpy(params).items() if not np.isfinite(v).all()]


def evaluate_perplexity(
    backend: Backend, params: Params, batches: Iterator[Batch], num_hiddens: int, dtype: str = "float32"
) -> float:
    """exp(mean token cross-entropy) over ``batches``, each from a zero state (as d2l ed. 2).

    ``params``: the backend's own, or a dict of NumPy arrays (as :func:`predict` takes them).

    Raises:
        TypeError: params of another kind (each framework failed in its own words).
        ValueError: params that do not fit ``num_hiddens``/``dtype``, or no batches.
    """
    return _zero_state_perplexity(backend, _checked_params(backend, params, num_hiddens, dtype), batches, num_hiddens,
                                  dtype)


def _zero_state_perplexity(backend: Backend, params: Params, batches: Iterator[Batch], num_hiddens: int,
                           dtype: str) -> float:
    """:func:`evaluate_perplexity` on params already the backend's own and checked."""
    total, count = 0.0, 0
    for X, Y in batches:
        loss, _ = backend.evaluate_loss(params, X, Y, backend.init_state(X.shape[0], num_hiddens, dtype))
        total += loss * X.size
        count += X.size
    if count == 0:
        raise ValueError("No batches to evaluate: the evaluation text is too short.")
    return safe_perplexity(total / count)


def evaluate_text_perplexity(
    backend: Backend, params: Params, ids: np.ndarray, num_hiddens: int, num_steps: int = 35,
    batch_size: int = 32, dtype: str = "float32", protocol: str = "d2l-ed1",
) -> float:
    """Perplexity on a held-out token sequence, measured as the protocol measures held-out text.

    d2l ed. 1: read in order in ``batch_size`` rows with the state carried (its sequential reading).
    d2l ed. 2: every window of ``num_steps + 1`` tokens, one token apart, each from a zero state, in
    minibatches of ``batch_size`` (the last may be smaller): how ed. 2 builds and scores its validation set.

    Raises:
        TextTooShortError: fewer tokens than one minibatch and its labels (ed. 1, ``batch_size x num_steps
            + 1``) or one window (ed. 2, ``num_steps + 1``).
    """
    check_evaluable(len(ids), batch_size, num_steps, protocol=protocol)
    params = _checked_params(backend, params, num_hiddens, dtype)
    if protocol == "d2l-ed2":
        X, Y = text_windows(ids, num_steps)
        return _zero_state_perplexity(backend, params, iter_windows(X, Y, batch_size, None), num_hiddens, dtype)
    num_tokens = ((len(ids) - 1) // batch_size) * batch_size
    Xs = ids[:num_tokens].reshape(batch_size, -1)
    Ys = ids[1 : num_tokens + 1].reshape(batch_size, -1)
    state = backend.init_state(batch_size, num_hiddens, dtype)
    total, count = 0.0, 0
    for i in range(0, (Xs.shape[1] // num_steps) * num_steps, num_steps):
        X, Y = Xs[:, i : i + num_steps], Ys[:, i : i + num_steps]
        loss, state = backend.evaluate_loss(params, X, Y, state)
        total += loss * X.size
        count += X.size
    return safe_perplexity(total / count)


def _checked_params(backend: Backend, params: Any, num_hiddens: int, dtype: str) -> Params:
    """``params`` as the backend's own (see :func:`_predict_params`), checked against the hidden size and
    dtype the caller names (a mismatch failed deep inside each framework, in its own words)."""
    dtype = check_dtype(dtype)  # float16: unsupported, not "the params are float32"
    params, _, H, got = _predict_params(backend, params)
    if H != num_hiddens or got != dtype:
        raise ValueError(f"params have hidden size {H} and dtype {got}, but num_hiddens={num_hiddens} and "
                         f"dtype={dtype!r} were given.")
    return params


def _predict_params(backend: Backend, params: Any) -> tuple[Params, int, int, str]:
    """``params`` as the backend's own, with ``(vocab_size, num_hiddens, dtype)``: a dict of NumPy arrays
    is converted (validated by validate_params), the backend's own params are checked the same way."""
    names = list(backend.model.param_names())
    if isinstance(params, Mapping) and all(isinstance(v, np.ndarray) for v in params.values()):
        V, H, dtype = validate_params(params, backend.model)  # before params_from_numpy: any subclass gets the message
        return backend.params_from_numpy(params), V, H, dtype
    try:
        arrays, failure = backend.params_to_numpy(params), None
    except Exception as exc:  # noqa: BLE001  (a framework's KeyError, AttributeError, ... says nothing useful)
        arrays, failure = None, exc
    if failure is not None:
        if isinstance(params, Mapping):  # d2l's dict of framework arrays with a wrong entry: name it
            try:
                as_numpy = {k: backend.as_numpy(v) for k, v in params.items()}
            except Exception:  # noqa: BLE001  (not arrays: the TypeError below says what is expected)
                as_numpy = None
            if as_numpy is not None:
                validate_params(as_numpy, backend.model)
        raise TypeError(f"params must be {backend.name}'s own params (TrainResult.params, "
                        f"backend.params_from_numpy(...)) or a dict of NumPy arrays with the keys {names}; got "
                        f"{type(params).__name__} ({type(failure).__name__}: {failure}).") from failure
    V, H, dtype = validate_params(arrays, backend.model)
    # Made anew from the arrays read (as train does): another backend's params that this one could read (torch
    # tensors given to the NumPy oracle) reached its forward as they were, and failed in its framework's words.
    made = backend.params_from_numpy(arrays)
    check_same_model(backend, params, arrays, made)
    return made, V, H, dtype


def _layout_of(x: Any) -> Any:
    """Names and shapes of a backend's own params, nested as they are held."""
    if isinstance(x, Mapping):
        return {str(k): _layout_of(v) for k, v in x.items()}
    shape = getattr(x, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else type(x).__name__


def check_same_model(backend: Backend, params: Any, arrays: dict[str, np.ndarray], made: Any = None) -> None:
    """Raise ValueError where the backend's own ``params`` hold more than this backend's model (``arrays``:
    what :meth:`~Backend.params_to_numpy` read of them): it reads this model's names only, so another
    model's params (a layer more, another cell's extra gates) trained or predicted silently with the rest
    dropped. Compared with the params this backend makes of ``arrays`` (``made``, when the caller has them), where
    both are dicts."""
    held = _held(params)
    if held is None:
        return  # an object of the backend's own (MXNet's packed vectors check their sizes when unpacked)
    fresh = _held(made if made is not None else backend.params_from_numpy(arrays))
    if fresh is not None and _layout_of(held) != _layout_of(fresh):
        have, want = _flat_names(_layout_of(held)), _flat_names(_layout_of(fresh))
        extra, missing = sorted(have - want), sorted(want - have)
        raise ValueError(f"params are not {backend.model.name}'s as {backend.name} holds them"
                         + (f": unexpected {extra[:6]}" if extra else "") + (f", missing {missing[:6]}" if missing else "")
                         + ("" if extra or missing else ": shapes differ") + " (params of another model?).")


def _held(params: Any) -> Mapping | None:
    """The arrays a backend's own params hold by name: the params themselves where they are a dict, a Gluon
    model's Parameters (MXNet's layers), else None."""
    if isinstance(params, Mapping):
        return params
    held = getattr(params, "parameters", None)
    return held if isinstance(held, Mapping) else None


def _flat_names(layout: Any, prefix: str = "") -> set[str]:
    if not isinstance(layout, dict):
        return {prefix}
    return {n for k, v in layout.items() for n in _flat_names(v, f"{prefix}/{k}" if prefix else k)}


def clean_prefix(prefix: Any, vocab: Vocab) -> str:
    """A prompt preprocessed as the text is (non-letter runs -> one space, lowercase), the rule of
    ``compare --prefix``; raises ValueError if it has no letter or characters outside ``vocab``."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__} {prefix!r:.60}.")
    cleaned = _NON_LETTERS.sub(" ", prefix).lower()
    if not cleaned.strip():
        raise ValueError(f"prefix must contain at least one letter A-Z (the others become spaces, as in the text), "
                         f"got {prefix!r}.")
    unknown = sorted({c for c in cleaned if c not in vocab.token_to_idx})
    if unknown:
        known = "".join(t for t in vocab.idx_to_token if len(t) == 1)
        raise ValueError(f"prefix {prefix!r} (preprocessed: {cleaned!r}) has characters outside the vocabulary: "
                         f"{unknown}; the vocabulary has {known!r}.")
    return cleaned


def predict(
    backend: Backend, params: Params, vocab: Vocab, prefix: str, num_preds: int, dtype: str | None = None
) -> str:
    """d2l's ``predict_ch8``: warm the state up on ``prefix``, then append greedy characters.

    Args:
        backend: the backend computing the model.
        params: the backend's own params (e.g. ``TrainResult.params``) or a dict of NumPy arrays by d2l name.
        vocab: the vocabulary the params were trained with.
        prefix: the prompt, preprocessed as the text is (and as ``compare --prefix`` does): lowercase,
            non-letter runs -> one space.
        num_preds: how many characters to append.
        dtype: the state's dtype; only the params' is accepted (the default).

    Returns:
        The preprocessed prefix followed by ``num_preds`` characters.

    Raises:
        TypeError, ValueError: an argument is not what is expected (the message names what was): params
            with missing, unexpected or misshapen entries or for a vocabulary of another size, a prefix
            without letters or with characters outside the vocabulary, a ``num_preds`` that is not an int
            >= 0. A vocabulary of the same size from another text cannot be told apart from the params
            (they carry no vocabulary): pass the ``vocab`` they were trained with (``TrainResult.vocab``).
    """
    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a multirnn Vocab (e.g. TrainResult.vocab), got {type(vocab).__name__}.")
    if not isinstance(num_preds, (int, np.integer)) or isinstance(num_preds, bool):
        raise TypeError(f"num_preds must be an int, got {type(num_preds).__name__} {num_preds!r:.60}.")
    if num_preds < 0:
        raise ValueError(f"num_preds must be >= 0, got {num_preds!r}.")
    prefix = clean_prefix(prefix, vocab)
    params, V, H, params_dtype = _predict_params(backend, params)
    if V != len(vocab):
        raise ValueError(f"params are for vocab_size={V}, but the vocabulary has {len(vocab)} tokens: "
                         "pass the vocab the params were trained with.")
    # NaN logits make every greedy choice token 0: '<unk>' repeated, a continuation that looks like output
    if bad := non_finite_params(backend, params):
        raise ValueError(f"params hold NaN or infinite values ({', '.join(bad)}; a diverged run's?): nothing to predict.")
    if dtype is not None and check_dtype(dtype) != params_dtype:  # MXNet raised its own error, the others mixed dtypes
        raise ValueError(f"dtype {dtype!r}: the state must have the params' dtype, {params_dtype} (leave dtype out).")
    state = backend.init_state(1, H, params_dtype)
    outputs = [vocab[prefix[0]]]
    for char in prefix[1:]:  # warm-up: feed the prefix, ignore the outputs
        _, state = backend.forward(params, np.array([[outputs[-1]]]), state)
        outputs.append(vocab[char])
    for _ in range(num_preds):
        logits, state = backend.forward(params, np.array([[outputs[-1]]]), state)
        outputs.append(int(np.argmax(backend.as_numpy(logits).reshape(-1))))
    return "".join(vocab.to_tokens(outputs))
