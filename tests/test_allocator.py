"""keep_freed_memory: the per-step page faults it exists to remove, and its opt-outs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import multirnn
from multirnn import allocator

# A training step's allocation pattern in miniature: a few multi-megabyte buffers, freed in another
# order than they were made, one outliving the step (a gradient); 40 steps' minor page faults.
PROBE = """
import json, resource, sys
import numpy as np
from multirnn.allocator import keep_freed_memory
done = keep_freed_memory() if sys.argv[1] == "on" else False
def step():
    hs = np.ones(600_000, np.float32)  # 2.4 MB: hidden states
    d = np.ones(580_000, np.float32)  # 2.3 MB: their gradients
    k = d * hs[:580_000]  # 2.3 MB: tanh' for all steps
    del hs
    return np.ones(262_144, np.float32)  # 1 MB: a weight gradient the caller keeps
keep = step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    keep = step()
print(json.dumps({"set": done, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MULTIRNN_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**environ, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only (a no-op elsewhere)")
def test_removes_the_page_faults_of_reallocated_buffers() -> None:
    off, on = probe("off"), probe("on")
    assert on["set"] is True
    # Without it most of each step's ~7 MB is fresh memory (~1,500 faults per step measured); with it, ~none.
    assert off["faults"] > 40 * 500, off
    assert on["faults"] < off["faults"] / 20, (on, off)


def test_opt_outs_leave_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTIRNN_MALLOC", "default")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("MULTIRNN_MALLOC")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")  # the user chose their own threshold
    assert multirnn.keep_freed_memory() is False
    assert probe("on", MULTIRNN_MALLOC="default")["set"] is False
