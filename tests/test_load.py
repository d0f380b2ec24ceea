"""A run measures how much of the machine other processes took (multirnn.load): a busy machine made torch's
tokens/s 150x lower with nothing in the report to say so."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from multirnn.load import BUSY_CORES, OtherLoad, busy_note


def test_a_process_spinning_beside_the_run_counts_as_other_load():
    load = OtherLoad()
    if load.busy0 is None:
        pytest.skip("no /proc/stat here (Linux only): the run's report has no such note")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2.0)
        busy = load.cores()  # the spinner has not been waited for: it is not this process's own time yet
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy > 0.6, busy  # one core spinning (an xdist neighbour may add to it)


def test_the_runs_own_time_is_not_other_load(monkeypatch):
    """The machine's busy time is this process's (and its waited-for workers') plus the others'."""
    from multirnn import load as load_mod

    others = {"seconds": 0.0}
    monkeypatch.setattr(load_mod, "_machine_busy_seconds", lambda: load_mod._own_seconds() + others["seconds"])
    load = OtherLoad()
    end = time.monotonic() + 1.2
    while time.monotonic() < end:  # busy here: our own time
        pass
    assert load.cores() == pytest.approx(0.0, abs=0.02)
    others["seconds"] = 0.6  # other processes took 0.6 s meanwhile
    assert load.cores() == pytest.approx(0.6 / 1.2, rel=0.1)


def test_the_note_says_how_busy_and_only_when_it_matters():
    assert busy_note(None, 2) is None and busy_note(BUSY_CORES - 0.01, 2) is None
    note = busy_note(1.04, 2)
    assert note.startswith("other processes kept 1.0 of the 2 cores this run could use busy during it")
    assert "the verdict is unaffected" in note
    assert "--threads 1" in note and "--jobs" in note  # the way to time speeds that a busy machine does not ruin
