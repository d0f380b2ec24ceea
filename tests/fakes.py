"""Backends that misbehave on purpose (not translation bugs: those are in zoo.py), loaded as
``--backends tests.fakes:ClassName`` the way any third-party backend is."""

from __future__ import annotations

import time

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
