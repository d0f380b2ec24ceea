"""The framework-neutral training loop, d2l's ``train_ch8``, and greedy prediction.

The loop only calls the backend contract, so the same code trains every framework. Batches come
from NumPy, driven by one seeded generator: the same seed gives every backend the same batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend, Params
from .config import TrainConfig
from .data import (
    Ed2Windows,
    Vocab,
    check_batchable,
    load_corpus,
    load_ed2_windows,
    load_time_machine,
    seq_data_iter_random,
    seq_data_iter_sequential,
)
from .errors import TrainingDivergedError
from .params import init_params

Batch = tuple[np.ndarray, np.ndarray]


@dataclass
class TrainingData:
    """The data of one run: the vocabulary and the minibatches the protocol prescribes."""

    config: TrainConfig
    vocab: Vocab
    corpus: np.ndarray | None = None  # d2l-ed1
    windows: Ed2Windows | None = None  # d2l-ed2

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


def prepare_data(config: TrainConfig, text: str | Path | None = None) -> TrainingData:
    """Load the text (the bundled Time Machine by default) the way ``config.protocol`` says.

    Raises:
        ValueError: unreadable or empty text, or one too short for a single minibatch.
    """
    if config.protocol == "d2l-ed2":
        windows = load_ed2_windows(config.num_steps, config.num_train, config.num_val, text)
        return TrainingData(config, windows.vocab, windows=windows)
    if text is None:
        corpus, vocab = load_time_machine(config.max_tokens)
    else:
        corpus, vocab = load_corpus(text, config.max_tokens)
    check_batchable(len(corpus), config.batch_size, config.num_steps)
    return TrainingData(config, vocab, corpus=corpus)


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


def train(
    backend: Backend,
    config: TrainConfig,
    data: TrainingData | None = None,
    *,
    params: dict[str, np.ndarray] | None = None,
    callback: EpochCallback | None = None,
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

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingDivergedError: a loss was NaN or infinite; names the epoch and step and carries
            the history up to (not including) that step.
    """
    data = data if data is not None else prepare_data(config)
    if params is None:
        params = init_params(len(data.vocab), config.num_hiddens, config.seed, config.dtype)
    p = backend.params_from_numpy(params)
    history = History()
    # One generator drives every random choice of the data, so every backend sees the same batches.
    rng = np.random.default_rng(config.seed)
    H, dtype = config.num_hiddens, config.dtype
    for epoch in range(1, config.num_epochs + 1):
        start = time.perf_counter()
        state, losses, norms, sizes = None, [], [], []
        for X, Y in data.train_batches(rng):
            if state is None or config.resets_state_every_batch:
                state = backend.init_state(X.shape[0], H, dtype)
            p, loss, norm, state = backend.train_step(p, X, Y, state, config.lr, config.max_grad_norm)
            # Keep framework scalars: converting here would wait on the device every step.
            losses.append(loss)
            norms.append(norm)
            sizes.append(X.size)
        step_loss = [float(v) for v in losses]
        seconds = time.perf_counter() - start
        bad = next((i for i, v in enumerate(step_loss) if not math.isfinite(v)), None)
        if bad is not None:
            history.step_loss += step_loss[:bad]
            history.step_grad_norm += [float(v) for v in norms[:bad]]
            global_step = len(history.step_loss) + 1
            raise TrainingDivergedError(
                f"Training diverged: loss is {step_loss[bad]} at epoch {epoch}, step {bad + 1} of that epoch "
                f"(global step {global_step}) with backend {backend.name!r}. Try a smaller lr or max_grad_norm.",
                history,
                epoch,
                bad + 1,
            )
        history.step_loss += step_loss
        history.step_grad_norm += [float(v) for v in norms]
        history.steps_per_epoch.append(len(step_loss))
        history.perplexity.append(math.exp(np.dot(step_loss, sizes) / sum(sizes)))
        history.epoch_seconds.append(seconds)
        history.tokens_per_sec.append(sum(sizes) / seconds)
        if data.windows is not None and data.windows.num_val:
            history.val_perplexity.append(evaluate_perplexity(backend, p, data.val_batches(), H, dtype))
        if callback is not None:
            callback(epoch, history)
    return TrainResult(backend, config, history, p, data.vocab)


def evaluate_perplexity(
    backend: Backend, params: Params, batches: Iterator[Batch], num_hiddens: int, dtype: str = "float32"
) -> float:
    """exp(mean token cross-entropy) over ``batches``, each from a zero state (as d2l ed. 2)."""
    total, count = 0.0, 0
    for X, Y in batches:
        loss, _ = backend.evaluate_loss(params, X, Y, backend.init_state(X.shape[0], num_hiddens, dtype))
        total += loss * X.size
        count += X.size
    if count == 0:
        raise ValueError("No batches to evaluate: the evaluation text is too short.")
    return math.exp(total / count)


def evaluate_text_perplexity(
    backend: Backend, params: Params, ids: np.ndarray, num_hiddens: int, num_steps: int = 35,
    batch_size: int = 32, dtype: str = "float32",
) -> float:
    """Perplexity on a held-out token sequence, read in order with the state carried (ed. 1 style)."""
    check_batchable(len(ids), batch_size, num_steps)
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
    return math.exp(total / count)


def predict(
    backend: Backend, params: Params, vocab: Vocab, prefix: str, num_preds: int, dtype: str | None = None
) -> str:
    """d2l's ``predict_ch8``: warm the state up on ``prefix``, then append greedy characters."""
    if not prefix:
        raise ValueError("prefix must contain at least one character.")
    if num_preds < 0:
        raise ValueError(f"num_preds must be >= 0, got {num_preds!r}.")
    W_hh = backend.params_to_numpy(params)["W_hh"]
    state = backend.init_state(1, W_hh.shape[0], dtype or W_hh.dtype.name)
    outputs = [vocab[prefix[0]]]
    for char in prefix[1:]:  # warm-up: feed the prefix, ignore the outputs
        _, state = backend.forward(params, np.array([[outputs[-1]]]), state)
        outputs.append(vocab[char])
    for _ in range(num_preds):
        logits, state = backend.forward(params, np.array([[outputs[-1]]]), state)
        outputs.append(int(np.argmax(backend.as_numpy(logits).reshape(-1))))
    return "".join(vocab.to_tokens(outputs))
