"""Backends that misbehave on purpose (not translation bugs: those are in zoo.py), loaded as
``--backends tests.fakes:ClassName`` the way any third-party backend is."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from multirnn.backends.numpy_backend import NumpyBackend


class HangingBackend(NumpyBackend):
    """Stops making progress at its 5th training step, as a deadlocked framework would."""

    name = "hanging"
    calls = 0

    def version(self) -> str:
        return "fake"

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        type(self).calls += 1
        if type(self).calls >= 5:
            while True:
                time.sleep(1)
        return super().train_step(params, X, Y, state, lr, max_grad_norm)


class SlowBackend(NumpyBackend):
    """The oracle, slowed down so that a test can interrupt it while it trains."""

    name = "slow"

    def version(self) -> str:
        return "fake"

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        time.sleep(0.05)
        return super().train_step(params, X, Y, state, lr, max_grad_norm)


class RendezvousBackend(NumpyBackend):
    """The oracle, whose first training step waits (up to 30 s) until another worker of the run has
    also reached its own: it proves that two rows ran side by side. In the folder named by
    ``MULTIRNN_TEST_RENDEZVOUS`` it leaves ``arrived-PID`` and ``CLASSNAME.json``: whether the
    other came, and the thread cap its worker was given."""

    name = "rendezvous"
    waited = False

    def version(self) -> str:
        return "fake"

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        if not type(self).waited:
            type(self).waited = True
            folder = Path(os.environ["MULTIRNN_TEST_RENDEZVOUS"])
            (folder / f"arrived-{os.getpid()}").touch()
            end = time.monotonic() + 30
            while len(list(folder.glob("arrived-*"))) < 2 and time.monotonic() < end:
                time.sleep(0.05)
            met = len(list(folder.glob("arrived-*"))) >= 2
            (folder / f"{type(self).__name__}.json").write_text(
                json.dumps({"met": met, "omp": os.environ.get("OMP_NUM_THREADS")}))
        return super().train_step(params, X, Y, state, lr, max_grad_norm)


class RendezvousBackend2(RendezvousBackend):
    """A second row of the same (rows need distinct names)."""


class OracleWatcher(NumpyBackend):
    """The oracle, which notes at its first training step whether the run's oracle worker is still
    running (the parent keeps its task file from its start to its end) in
    ``$MULTIRNN_TEST_RENDEZVOUS/OracleWatcher.json``."""

    name = "oracle-watcher"
    noted = False

    def version(self) -> str:
        return "fake"

    def train_step(self, params, X, Y, state, lr, max_grad_norm):
        if not type(self).noted:
            type(self).noted = True
            oracle_task = Path(sys.argv[1]).with_name("numpy.task.json")  # the worker runs as: -m multirnn.worker TASK FD
            (Path(os.environ["MULTIRNN_TEST_RENDEZVOUS"]) / "OracleWatcher.json").write_text(
                json.dumps({"oracle_running": oracle_task.exists()}))
        return super().train_step(params, X, Y, state, lr, max_grad_norm)
