"""The sweep's bookkeeping: the output folder, cell records, the journal, and the run loop.

Every finished attempt is written at once, atomically, to ``out/cells/<id>.json`` (before its
line in ``journal.jsonl``), so a driver killed at any moment loses only the cells in flight, and a
rerun into the same folder skips every cell whose record is final. The loop hands ready cells to
an executor (local or Ray) -- an anchor's dependents are ready once the anchor is final -- and
retries a crashed cell until it has had ``1 + retries`` attempts. ``spec.json``, written when a
sweep first starts in a folder, records what defines it, so a later start can refuse to mix another
sweep's cells into it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import signal
from collections import deque
from pathlib import Path
from typing import Any

from .files import clear_written, hold_folder, write_bytes_atomic, write_json_atomic
from .info import may_be_installed
from .lockstep import list_checkpoints
from .progress import RunProgress
from .report import format_ppl
from .runner import Stopped, crashed_record, defer_signals, refused_record, signal_name
from .sweep_exec import CellJob
from .sweep_spec import Cell, Group

CELL_SCHEMA_VERSION = 1
# Worker statuses that end a cell; "crashed" ends it only once its retries are used up.
FINAL_STATUSES = ("ok", "diverged", "unavailable", "unsupported")
STATUS_WIDTH = max(len(s) for s in (*FINAL_STATUSES, "crashed", "interrupted"))  # a cell line's status column
# What defines the sweep in a folder (its settings and cells), written when it first starts there.
SPEC_FILE = "spec.json"
# The files and folders a sweep writes into its folder (the only ones --overwrite clears).
SWEEP_FILES = (SPEC_FILE, "sweep.json", "report.md", "cells.csv", "journal.jsonl", "perplexity_bands.png",
               "speed_heatmap.png")
SWEEP_DIRS = ("cells", "groups", "checkpoints", ".work")
# The live display's one job: every cell this session runs (its bar is the whole sweep's).
PROGRESS_JOB = "cells"


def first_line(error: str | None) -> str | None:
    """An error without the worker log's tail (which names temporary paths and process ids)."""
    if not error:
        return error
    return error.split("; its last output:")[0].split("\n")[0]


SPEC_KEYS = ("settings", "cells", "command")  # what every spec.json a sweep writes holds


def _json_with(path: Path, keys: tuple[str, ...]) -> bool:
    """``path`` is a JSON object with every one of ``keys`` (unreadable or other JSON: False)."""
    try:
        found = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and all(k in found for k in keys)


class Store:
    """The sweep's output folder: cell records, journal, prepared data and anchor checkpoints."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.cells = out / "cells"
        self.work = out / ".work"
        self.journal_path = out / "journal.jsonl"

    def create(self) -> None:
        for d in (self.cells, self.work / "data", self.work / "runs", self.work / "checkpoints"):
            d.mkdir(parents=True, exist_ok=True)

    def is_sweep(self) -> bool:
        """A sweep wrote here: its cells/, or a spec.json / sweep.json of a sweep's own shape (a file of
        that name from anything else does not make the folder a sweep, nor --overwrite delete it)."""
        return self.cells.is_dir() or _json_with(self.out / SPEC_FILE, SPEC_KEYS) or _json_with(
            self.out / "sweep.json", ("spec", "cells"))

    def clear(self) -> None:
        """Remove everything a sweep wrote here (--overwrite); anything else in the folder stays."""
        for name in SWEEP_FILES:
            (self.out / name).unlink(missing_ok=True)
        shutil.rmtree(self.out / ".work", ignore_errors=True)  # the sweep's scratch: nobody else's
        for name in SWEEP_DIRS:  # only what a sweep writes in them: a user's own files stay
            clear_written(self.out / name)

    def definition(self) -> dict[str, Any] | None:
        """spec.json: the settings and cell ids of the sweep that first started here (None: absent,
        as in a folder from before it was written).

        Raises:
            OSError, ValueError: it exists but cannot be read.
        """
        path = self.out / SPEC_FILE
        if not path.is_file():
            return None
        found = json.loads(path.read_text())
        if not isinstance(found, dict) or not all(k in found for k in SPEC_KEYS):
            raise ValueError(f"{SPEC_FILE} is not a sweep's record (no {', '.join(SPEC_KEYS)})")
        return found

    def define(self, definition: dict[str, Any]) -> None:
        """Record what defines this sweep, once: a resume keeps the first start's record."""
        if not (self.out / SPEC_FILE).is_file():
            write_json_atomic(self.out / SPEC_FILE, definition)

    def recorded(self) -> set[str]:
        """Ids of the cells that have a record here."""
        return {p.stem for p in self.cells.glob("*.json")} if self.cells.is_dir() else set()

    def lock(self) -> bool:
        """Hold ``out/.lock`` for this process's lifetime; False if another sweep (or a compare run) holds
        it: two drivers must never share a folder (:func:`multirnn.files.hold_folder`)."""
        self.out.mkdir(parents=True, exist_ok=True)
        return hold_folder(self.out)

    def record(self, cell_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.cells / f"{cell_id}.json").read_text())
        except (OSError, ValueError):  # absent, or unreadable: run it again
            return None

    def save(self, cell_id: str, record: dict[str, Any]) -> None:
        write_json_atomic(self.cells / f"{cell_id}.json", record)

    def log(self, event: str, **fields: Any) -> None:
        """One line per event, appended in a single write (a killed driver leaves whole lines)."""
        line = json.dumps({"time": _dt.datetime.now().isoformat(timespec="milliseconds"), "event": event, **fields})
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def journal(self) -> list[dict[str, Any]]:
        try:
            lines = self.journal_path.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def data_path(self, group: Group) -> str:
        path = self.work / "data" / f"{group.key}.npz"
        if not path.is_file():
            group.plan.data.save(path)
        return str(path)

    def eval_path(self, group: Group) -> str | None:
        if group.plan.eval_ids is None:
            return None
        import numpy as np

        path = self.work / "data" / f"{group.key}-eval.npy"
        if not path.is_file():
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, group.plan.eval_ids)
            os.replace(tmp, path)
        return str(path)

    def checkpoints(self, cell_id: str) -> str:
        return str(self.work / "checkpoints" / cell_id)

    def has_checkpoints(self, cell_id: str) -> bool:
        path = self.checkpoints(cell_id)
        return bool(list_checkpoints(path)) or Path(path + ".tar").is_file()


def estimate_wall(order: list[Cell], seconds: dict[str, float], slots: int | None, threads: int = 1,
                  cores: int | None = None) -> float:
    """Wall seconds to run ``order`` if every cell took ``seconds[id]``, scheduled as :class:`Engine`
    does: ``slots`` cells at a time (None: no limit), a freed slot going to the first cell in order
    whose anchor (when it is in ``order``) has ended. With ``cores``, cells running together whose
    ``threads`` exceed them share them: each goes that much slower (--jobs 8 on 2 cores was estimated
    4x faster than --jobs 2 for the same work). An estimate for --dry-run: no retries, no overhead."""
    todo, unfinished = list(order), {c.id for c in order}
    running: dict[str, float] = {}  # cell id -> seconds of work left, at full speed
    now = 0.0
    while todo or running:
        while todo and (slots is None or len(running) < slots):
            cell = next((c for c in todo if c.anchor not in unfinished), None)
            if cell is None:
                break
            todo.remove(cell)
            running[cell.id] = seconds[cell.id]
        if not running:  # only a cell waiting for an anchor outside ``order``: cannot happen with Engine.plan
            break
        # a cell uses at most every core; several together share them (one 4-thread cell on 2 cores: no slower)
        slow = max(1.0, len(running) * min(threads, cores) / cores) if cores else 1.0
        ended, left = min(running.items(), key=lambda kv: kv[1])
        now += left * slow
        for k in running:
            running[k] -= left
        del running[ended]
        unfinished.discard(ended)
    return now


def is_final(record: dict[str, Any] | None, retries: int) -> bool:
    if record is None:
        return False
    return record.get("status") in FINAL_STATUSES or (record.get("status") == "crashed"
                                                       and record.get("attempts", 1) >= 1 + retries)


class Engine:
    """Runs the cells that are not final yet; records every attempt as it ends."""

    def __init__(self, cells: list[Cell], store: Store, executor: Any, retries: int, progress: RunProgress | None,
                 units: dict[str, float]) -> None:
        self.cells = {c.id: c for c in cells}
        self.store, self.executor, self.retries, self.progress, self.units = store, executor, retries, progress, units
        self.records: dict[str, dict[str, Any] | None] = {c.id: store.record(c.id) for c in cells}
        self.todo: deque[Cell] = deque()
        self.running: set[str] = set()
        self.finished: list[str] = []
        self.failed = 0
        self.total = 0  # cells this session runs (set by run)
        self.stopped: str | None = None
        self.stop_signal = 0

    # --- what to run -----------------------------------------------------------------------------
    def plan(self, order: list[Cell]) -> list[Cell]:
        """Cells to run now: those without a final record, those whose framework was unavailable (installed
        since, perhaps: compare's --resume runs such rows again too), plus any anchor whose checkpoints are
        gone while a dependent still needs them (as compare re-runs one on --resume)."""
        pending = [c for c in order if not is_final(self.records[c.id], self.retries)
                   or ((self.records[c.id] or {}).get("status") == "unavailable" and may_be_installed(c.backend))]
        need = {c.anchor for c in pending if c.anchor}
        rerun = [self.cells[a] for a in need if is_final(self.records[a], self.retries)
                 and self.records[a].get("status") in ("ok", "diverged") and not self.store.has_checkpoints(a)]
        position = {c.id: i for i, c in enumerate(order)}
        rerun.sort(key=lambda c: position[c.id])
        self.todo = deque(rerun + pending)
        return rerun + pending

    def _ready(self, cell: Cell) -> bool:
        if cell.anchor is None:
            return True
        # the anchor's checkpoints are needed: wait while it runs or waits (a retry included)
        return cell.anchor not in self.running and all(c.id != cell.anchor for c in self.todo)

    def _job(self, cell: Cell, attempt: int) -> CellJob:
        group = cell.group
        anchor_dir = None
        if cell.anchor and (self.records.get(cell.anchor) or {}).get("status") in ("ok", "diverged") \
                and self.store.has_checkpoints(cell.anchor):
            anchor_dir = self.store.checkpoints(cell.anchor)
        ckpt = self.store.checkpoints(cell.id) if cell.saves_checkpoints else None
        out_path = str(self.store.work / "runs" / f"{cell.id}.json")
        data, ev = self.store.data_path(group), self.store.eval_path(group)
        return CellJob(cell.id, cell.task(out_path, data, ev, ckpt, anchor_dir), data, ev, cell.anchor, anchor_dir, ckpt,
                       attempt, group.plan.config.num_epochs)

    def _attempt(self, cell: Cell) -> int:
        rec = self.records.get(cell.id)
        return rec.get("attempts", 0) + 1 if rec and rec.get("status") == "crashed" else 1

    def _fill(self) -> None:
        while self.executor.in_flight < self.executor.slots:
            cell = next((c for c in self.todo if self._ready(c)), None)
            if cell is None:
                return
            self.todo.remove(cell)
            attempt = self._attempt(cell)
            self.store.log("start", cell=cell.id, attempt=attempt, executor=self.executor.name)
            self.running.add(cell.id)
            job = self._job(cell, attempt)
            if refused := refused_record(job.task):  # a layer that cannot compute the model: no worker
                self._finish(job, {"raw": refused}, None)
                continue
            self.executor.submit(job)

    # --- results ---------------------------------------------------------------------------------
    def _record(self, cell: Cell, job: CellJob, outcome: dict[str, Any] | None, error: BaseException | None) -> dict[str, Any]:
        if outcome is None:
            raw = crashed_record(cell.label, cell.backend, cell.impl, f"{type(error).__name__}: {first_line(str(error))}")
            outcome = {"raw": raw}
        raw = outcome["raw"]
        previous = self.records.get(cell.id) if job.attempt > 1 else None
        errors = list((previous or {}).get("errors") or [])
        if raw.get("status") == "crashed":
            errors.append(first_line(raw.get("error")))
        node = outcome.get("node")
        concurrency = self.executor.concurrency(node)
        # contended: other cells at once, or more threads than the node has cores (--threads 4 on 2 cores)
        contended = concurrency > 1 or (self.executor.threads or 1) * concurrency > self.executor.node_cpus(node)
        return {
            "schema_version": CELL_SCHEMA_VERSION, "id": cell.id, "label": cell.label, "backend": cell.backend,
            "impl": cell.impl, "configuration": cell.group.configuration.label, "seed": cell.group.seed,
            "repeat": cell.repeat, "spec": cell.spec, "status": raw.get("status"), "attempts": job.attempt,
            "errors": errors, "result": raw,
            "run": {"executor": self.executor.name, "node": node, "host": outcome.get("host"),
                    "machine": outcome.get("machine"),  # a Ray node's; None: the driver's machine
                    "threads": self.executor.threads, "concurrency": concurrency, "contended": contended,
                    "wall_seconds": outcome.get("wall_seconds"),
                    "finished": _dt.datetime.now().isoformat(timespec="seconds")},
        }

    def _finish(self, job: CellJob, outcome: dict[str, Any] | None, error: BaseException | None) -> None:
        cell = self.cells[job.cell_id]
        self.running.discard(cell.id)
        if outcome and outcome.get("checkpoints"):  # an anchor on Ray: keep its checkpoints for --resume
            write_bytes_atomic(job.checkpoint_dir + ".tar", outcome["checkpoints"])
        record = self._record(cell, job, outcome, error)
        self.records[cell.id] = record
        self.store.save(cell.id, record)  # the record first: a kill after it never reruns the cell
        self.store.log("end", cell=cell.id, attempt=job.attempt, status=record["status"], node=record["run"]["node"])
        Path(job.task.out_path).unlink(missing_ok=True)
        status = record["status"]
        retry = status == "crashed" and job.attempt < 1 + self.retries
        if retry:
            self.todo.appendleft(cell)
        else:
            self.finished.append(cell.id)
            self.failed += status == "crashed"
        self.progress.message(self.cell_line(cell, record, retry))

    def cell_line(self, cell: Cell, record: dict[str, Any], retry: bool = False) -> str:
        """The line a finished attempt prints (above the live bar, or in a log): how many of this session's
        cells are done, its status, row, configuration (of several) and seed, its final perplexity (where it trained to
        the end), wall time, node (on Ray) and why it did not end ok; the columns line up across cells."""
        status, raw, run = record["status"], record["result"], record["run"]
        widths = [max(len(c.label) for c in self.cells.values()),
                  max(len(self._where(c)) for c in self.cells.values())]
        parts = [f"[{len(self.finished):>{len(str(self.total))}}/{self.total}] {status:<{STATUS_WIDTH}}",
                 f"{cell.label:<{widths[0]}}", f"{self._where(cell):<{widths[1]}}"]
        ppl = (raw.get("perplexity") or [None])[-1]
        if status == "ok" and isinstance(ppl, (int, float)) and math.isfinite(ppl):
            parts.append(f"final ppl {format_ppl(ppl)}")
        if run.get("wall_seconds"):
            parts.append(f"{run['wall_seconds']:.1f} s")
        if (node := run.get("node")) and node != "local":
            parts.append(f"on {node[:8]}")
        if status != "ok" and (why := first_line(raw.get("error"))):
            parts.append(f"({why})")
        return "  ".join(parts) + ("; retrying" if retry else "")

    def _where(self, cell: Cell) -> str:
        """Configuration (when the sweep has several: one is named by every setting given), seed, repeat."""
        g = cell.group
        several = len({c.group.configuration.index for c in self.cells.values()}) > 1
        return (f"{g.configuration.label} " if several else "") + f"seed {g.seed}" + (
            f" repeat {cell.repeat}" if cell.repeat else "")

    def _show(self) -> None:
        frac = getattr(self.executor, "fraction", {})
        done = sum(self.units[c] for c in self.finished) + sum(self.units[c] * frac.get(c, 0.0) for c in self.running)
        self.progress.update(PROGRESS_JOB, done, self._status())

    def _status(self) -> str:
        running = f", {len(self.running)} {self.executor.running_word}" if self.running else ""
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{len(self.finished)}/{self.total} done{running}{failed}"

    def run(self) -> None:
        """Run until every planned cell is final, or a signal stops it (``self.stopped`` then says which).
        Nothing planned: nothing to show either (no bar of 0 cells)."""
        self.total = len(self.todo)
        if not self.total:
            return
        self.progress.start(PROGRESS_JOB, f"0/{self.total} done")
        try:
            while self.todo or self.running:
                self._fill()
                if not self.running and self.todo:  # nothing ready and nothing running: cannot happen
                    raise RuntimeError("sweep scheduling is stuck: " + ", ".join(c.id for c in self.todo))
                for job, outcome, error in self.executor.poll(0.5):
                    self._finish(job, outcome, error)
                self._show()
            self.progress.finish(PROGRESS_JOB, self._status())  # the bar full: its units summed in another order
        except (KeyboardInterrupt, Stopped) as exc:
            defer_signals()  # a second Ctrl-C while the cells in flight end must not cut the partial aggregate short
            signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            self.stopped = signal_name(signum)
            self.stop_signal = int(signum)
            self.progress.message(f"\nstopped by {self.stopped}: ending the cells in flight "
                                  f"({len(self.running)}) and writing the partial aggregate")
            self.executor.cancel()
            for cell_id in sorted(self.running):
                self.store.log("lost", cell=cell_id, reason=self.stopped)

    def cleanup(self, keep_checkpoints: bool) -> None:
        """A finished sweep keeps no work files (an unfinished one keeps them for --resume)."""
        src = self.store.work / "checkpoints"
        # Only what this session's anchors wrote: a resume of a finished sweep has none, and must neither
        # leave an empty checkpoints/ nor drop the ones an earlier --keep-checkpoints kept there.
        written = [p for p in src.iterdir() if p.is_file() or any(p.iterdir())] if src.is_dir() else []
        if keep_checkpoints and written:
            dest = self.store.out / "checkpoints"
            dest.mkdir(exist_ok=True)
            for path in written:
                target = dest / path.name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
                shutil.move(str(path), target)
        shutil.rmtree(self.store.work, ignore_errors=True)
