"""Backends that misbehave on purpose (not translation bugs: those are in zoo.py), loaded as
``--backends tests.fakes:ClassName`` the way any third-party backend is."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from multirnn.backends.numpy_backend import NumpyBackend


class SlowBackend(NumpyBackend):
    """The oracle, slowed down so that a test can interrupt it while it trains."""

    name = "slow"

    def version(self) -> str:
        return "fake"

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        time.sleep(0.05)
        return super().train_step(params, X, Y, state, lr, max_grad_norm)


class _StepHook(NumpyBackend):
    """The oracle, which runs :meth:`hook` once, at its worker's ``at``-th training step."""

    at = 1
    calls = 0

    def version(self) -> str:
        return "fake"

    def hook(self) -> None:
        raise NotImplementedError

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        type(self).calls += 1
        if type(self).calls == self.at:
            self.hook()
        return super().train_step(params, X, Y, state, lr, max_grad_norm)


class HangingBackend(_StepHook):
    """Stops making progress at its 5th training step, as a deadlocked framework would."""

    name = "hanging"
    at = 5

    def hook(self) -> None:
        while True:
            time.sleep(1)


class RendezvousBackend(_StepHook):
    """Waits at its first training step (up to 30 s) until another worker of the run has also reached
    its own: it proves that two rows ran side by side. In the folder named by
    ``MULTIRNN_TEST_RENDEZVOUS`` it leaves ``arrived-PID`` and ``CLASSNAME.json``: whether the
    other came, and the thread cap its worker was given."""

    name = "rendezvous"

    def hook(self) -> None:
        folder = Path(os.environ["MULTIRNN_TEST_RENDEZVOUS"])
        (folder / f"arrived-{os.getpid()}").touch()
        end = time.monotonic() + 30
        while len(list(folder.glob("arrived-*"))) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        met = len(list(folder.glob("arrived-*"))) >= 2
        (folder / f"{type(self).__name__}.json").write_text(
            json.dumps({"met": met, "omp": os.environ.get("OMP_NUM_THREADS")}))


class RendezvousBackend2(RendezvousBackend):
    """A second row of the same (rows need distinct names)."""


class OracleWatcher(_StepHook):
    """Notes at its first training step whether the run's oracle worker is still running (the parent
    keeps its task file from its start to its end) in ``$MULTIRNN_TEST_RENDEZVOUS/OracleWatcher.json``."""

    name = "oracle-watcher"

    def hook(self) -> None:
        oracle_task = Path(sys.argv[1]).with_name("numpy.task.json")  # the worker runs as: -m multirnn.worker TASK FD
        (Path(os.environ["MULTIRNN_TEST_RENDEZVOUS"]) / "OracleWatcher.json").write_text(
            json.dumps({"oracle_running": oracle_task.exists()}))


class RemovesTheAnchorsCheckpoints(_StepHook):
    """Removes the run's checkpoints at its first training step, as a second run's --overwrite into the same
    --out did before output folders were held: its re-anchored checks then find the anchor's folder gone."""

    name = "anchor-remover"

    def hook(self) -> None:
        out = Path(sys.argv[1]).parent.parent  # the worker runs as: -m multirnn.worker OUT/backends/NAME.task.json FD
        shutil.rmtree(out / ".work" / "checkpoints")


class WeightsOverflowLossFinite(NumpyBackend):
    """Every update leaves NaN weights, which its loss reads as zeros: its run ends "ok" with finite losses and
    non-finite weights, as a last update that overflowed after a finite loss does."""

    name = "overflowing"

    def version(self) -> str:
        return "fake"

    def loss_and_grads(self, params, X, Y, state):
        import numpy as np

        return super().loss_and_grads({k: np.nan_to_num(v, nan=0.0) for k, v in params.items()}, X, Y, state)

    def sgd_step(self, params, grads, lr):
        import numpy as np

        return {k: np.full_like(v, np.nan) for k, v in super().sgd_step(params, grads, lr).items()}


class MovesWhatTheOracleLeaves(NumpyBackend):
    """Right everywhere except that it scales by 1.05 the recurrent weights of layer 2 whenever the correct
    float32 step leaves them exactly unchanged (a deep LSTM's second layer early on: its updates round to 0)."""

    name = "moves-what-the-oracle-leaves"

    def version(self) -> str:
        return "fake"

    @classmethod
    def unsupported(cls, model):
        return None

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        import numpy as np

        before = {k: v.copy() for k, v in params.items()}
        params, loss, norm, state = super().train_step(params, X, Y, state, lr, max_grad_norm)
        for k in params:
            if k.startswith("W_h") and k.endswith("_l1") and np.array_equal(params[k], before[k]):
                params[k] = params[k] * params[k].dtype.type(1.05)
        return params, loss, norm, state


class CrashesInTheThirdEpoch(_StepHook):
    """Raises at its 80th training step: in the third epoch of tests' TINY settings (37 steps an epoch)."""

    name = "crashes-in-the-third-epoch"
    at = 80

    def hook(self) -> None:
        raise RuntimeError("boom in the third epoch")


def not_installed(*frameworks: str) -> str:
    """A ``sitecustomize.py`` that makes ``frameworks`` look uninstalled as on a machine without them: the
    modules do not import and their distributions have no metadata (``multirnn.info.installed_version``
    reads it; hiding the module alone left the code paths of a real missing framework untested)."""
    from multirnn.info import _DISTRIBUTIONS

    dists = sorted({d for f in frameworks for d in _DISTRIBUTIONS.get(f, (f,))})
    return ("import sys, importlib.metadata as _md\n"
            + "".join(f"sys.modules[{f!r}] = None\n" for f in frameworks)
            + f"_hidden, _version = {dists!r}, _md.version\n"
            "def _hiding(name):\n"
            "    if name in _hidden:\n"
            "        raise _md.PackageNotFoundError(name)\n"
            "    return _version(name)\n"
            "_md.version = _hiding\n")
