"""multirnn: the d2l character-level RNN, once per framework, proven equal and timed side by side.

``import multirnn`` imports NumPy only; a framework is imported when its backend is asked for.
"""

from __future__ import annotations

from .allocator import keep_freed_memory
from .backends import available_backends, get_backend, known_backends, probe
from .backends.base import Backend
from .config import PRESETS, TrainConfig, preset
from .data import Vocab, bundled_text_path, load_corpus, load_ed2_windows, load_time_machine, seq_data_iter_random, seq_data_iter_sequential
from .cells import CELLS, Cell, Model
from .errors import BackendUnavailableError, GPUUnavailableError, TrainingDivergedError, UnsupportedModelError
from .harness import History, TrainingData, TrainResult, evaluate_perplexity, predict, prepare_data, train
from .params import PARAM_NAMES, init_params

__version__ = "0.2.0"

__all__ = [
    "CELLS",
    "Cell",
    "Model",
    "UnsupportedModelError",
    "PARAM_NAMES",
    "PRESETS",
    "Backend",
    "BackendUnavailableError",
    "GPUUnavailableError",
    "History",
    "TrainConfig",
    "TrainResult",
    "TrainingData",
    "TrainingDivergedError",
    "Vocab",
    "available_backends",
    "bundled_text_path",
    "evaluate_perplexity",
    "get_backend",
    "init_params",
    "keep_freed_memory",
    "known_backends",
    "load_corpus",
    "load_ed2_windows",
    "load_time_machine",
    "predict",
    "prepare_data",
    "preset",
    "probe",
    "seq_data_iter_random",
    "seq_data_iter_sequential",
    "train",
]
