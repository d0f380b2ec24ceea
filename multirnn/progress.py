"""Live progress of a run: a line per backend from the moment its worker starts, and an overall bar.

On a terminal this is a ``rich`` live display (bars, tokens/s, ETA across every backend; the overall
bar only when there are several jobs: one job's own bar says the same), laid out by rich for the
terminal's width at every refresh; when stderr is not a terminal (CI logs, ``| tee``) it prints
plain time-stamped lines instead, on each change of stage and at most every ``LINE_SECONDS`` per
backend, with no cursor codes; disabled (``--quiet``) it prints nothing. :meth:`RunProgress.message`
prints a line of its own above the live display (or plain): the sweep's line per finished cell.
The sweep uses the same class with one job, its cells.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any, TextIO

# Non-terminal output: one line per backend at most this often (plus one per stage change).
LINE_SECONDS = 10.0
# Live display: the bar's width, from the narrowest (a status too long for the terminal is cut only
# then) to the widest (what a wide terminal has left beyond it stays blank).
BAR_WIDTHS = (10, 40)
# Live display: a longer job name is cut to this many characters, with an ellipsis.
NAME_WIDTH = 14


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _stage(status: str) -> str:
    """What a plain line is printed for on a change of: the status's first word, its numbers aside ('3/8
    done' and '4/8 done' are the same stage, 'epoch 3/30' and 're-anchored checks' are not)."""
    return re.sub(r"[0-9.,/]+", "#", status.split(" ")[0])


def _live_display(console: Any) -> Any:
    """The terminal's display: a ``rich`` Progress whose every width is measured by rich at each refresh
    (a resized terminal included). The names' column is as wide as the longest name; the status may be
    cut (with an ellipsis), never the elapsed time and ETA; the bar takes what the other columns leave,
    from ``BAR_WIDTHS[0]`` (a status is cut only at that) to ``BAR_WIDTHS[1]``."""
    from rich.measure import Measurement
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Column
    from rich.text import Text

    class StatusColumn(ProgressColumn):
        def __init__(self) -> None:
            # a column rich may narrow (left to narrow every column, it cut the times to '0…'); the text
            # itself stays on its line
            super().__init__(table_column=Column(overflow="ellipsis"))

        def render(self, task: Any) -> Any:
            return Text(task.fields.get("status", ""), no_wrap=True, overflow="ellipsis")

    bar = BarColumn(bar_width=BAR_WIDTHS[0])

    class Bars(Progress):
        def make_tasks_table(self, tasks: Any) -> Any:
            bar.bar_width = BAR_WIDTHS[0]
            table = super().make_tasks_table(tasks)
            if getattr(self, "live", None) is None:  # Progress.__init__ renders once before it has a console
                return table
            spare = self.console.width - Measurement.get(self.console, self.console.options, table).maximum
            if spare > 0:
                bar.bar_width = BAR_WIDTHS[0] + min(spare, BAR_WIDTHS[1] - BAR_WIDTHS[0])
                table = super().make_tasks_table(tasks)
            return table

    return Bars(TextColumn("{task.description}", table_column=Column(no_wrap=True)), bar,
                TextColumn("{task.percentage:>3.0f}%"), StatusColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=console, refresh_per_second=4)


class RunProgress:
    """Progress of several jobs (backends, cells), each measured in work units.

    Args:
        jobs: ``{name: units}``: how much work each job is (e.g. its epochs plus its re-anchored
            checks in epoch equivalents); the overall bar and ETA add them up. None at all: no live
            display, only the messages.
        enabled: False prints nothing at all.
        stream: where to write (stderr by default); a terminal gets the live display.
        unit: what the per-job counter counts, for the plain-line output.
    """

    def __init__(self, jobs: dict[str, float], enabled: bool = True, stream: TextIO | None = None,
                 unit: str = "epoch") -> None:
        self.jobs, self.enabled, self.unit = dict(jobs), enabled, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done: dict[str, float] = {name: 0.0 for name in jobs}
        self.status: dict[str, str] = {name: "waiting" for name in jobs}
        self.t0 = time.monotonic()
        self._last_line: dict[str, float] = {}
        self._last_stage: dict[str, str] = {}
        self._live: Any = None
        self._overall: Any = None  # the overall bar's task: several jobs only
        self._tasks: dict[str, Any] = {}
        self._lock = threading.RLock()  # rows that run side by side report from their pool threads
        if self.tty and jobs:
            from rich.console import Console

            self._live = _live_display(Console(file=self.stream))
            if len(jobs) > 1:  # one job's own bar is the overall one: a second would say the same
                self._overall = self._live.add_task("[bold]overall", total=max(sum(jobs.values()), 1e-9), status="")
            for name, units in jobs.items():
                short = name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…"  # cut, and seen to be cut
                self._tasks[name] = self._live.add_task(short, total=max(units, 1e-9), status="waiting",
                                                        start=False)
            self._live.start()

    # --- what happened --------------------------------------------------------------------------
    def message(self, text: str, always: bool = False) -> None:
        """A line of its own, above the live display (or plain); ``always``: also when progress is off
        (--quiet silences progress, not what the run is or notes about it)."""
        if not self.enabled:
            if always:
                print(text, file=self.stream, flush=True)
            return
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, highlight=False, markup=False)
            else:
                print(text, file=self.stream, flush=True)

    def start(self, name: str, status: str = "starting") -> None:
        with self._lock:
            if self._live is not None:
                self._live.start_task(self._tasks[name])
            self.update(name, 0.0, status, stage=True)

    def update(self, name: str, done: float, status: str, stage: bool = False) -> None:
        """``done`` units of job ``name`` are finished; ``status`` says what it is doing."""
        with self._lock:
            self._update(name, done, status, stage)

    def _update(self, name: str, done: float, status: str, stage: bool) -> None:
        self.done[name], self.status[name] = min(done, self.jobs[name]), status
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(self._tasks[name], completed=self.done[name], status=status)
            if self._overall is not None:  # its own columns show the share and the ETA
                self._live.update(self._overall, completed=sum(self.done.values()))
            return
        now = time.monotonic()
        key = _stage(status)
        if stage or self._last_stage.get(name) != key or now - self._last_line.get(name, 0.0) >= LINE_SECONDS:
            self._last_line[name], self._last_stage[name] = now, key
            print(f"[{_fmt_seconds(now - self.t0):>7}] {name:<12} {status}  ({self._overall_text()})",
                  file=self.stream, flush=True)

    def finish(self, name: str, status: str) -> None:
        self.update(name, self.jobs[name], status, stage=True)

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None

    # --- helpers --------------------------------------------------------------------------------
    def fraction(self) -> float:
        total = sum(self.jobs.values())
        return sum(self.done.values()) / total if total else 1.0

    def eta_seconds(self) -> float | None:
        frac, elapsed = self.fraction(), time.monotonic() - self.t0
        return None if frac <= 0.01 else elapsed * (1 - frac) / frac

    def _overall_text(self) -> str:
        eta = self.eta_seconds()
        share = f"{self.fraction():.0%}" if len(self.jobs) == 1 else f"overall {self.fraction():.0%}"
        return share + (f", ETA {_fmt_seconds(eta)}" if eta is not None and self.fraction() < 1 else "")

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def backend_status(msg: dict[str, Any], num_epochs: int) -> tuple[float | None, str]:
    """Translate a worker message into (units done, status text); None units: unchanged."""
    kind = msg.get("kind")
    if kind == "stage":
        extra = f" {msg['done']}/{msg['total']}" if "total" in msg else ""
        return None, f"{msg['text']}{extra}"
    if kind == "start":
        return 0.0, "training, epoch 1" + (" (compiling)" if msg.get("compiles") else "")
    if kind == "step":
        return None, f"training, epoch {msg['epoch']}/{num_epochs} (step {msg['step']})"
    if kind == "epoch":
        ppl = msg.get("perplexity")
        ppl_text = f"perplexity {ppl:.3f}" if isinstance(ppl, (int, float)) else "perplexity inf"
        return float(msg["epoch"]), (f"epoch {msg['epoch']}/{num_epochs}  {ppl_text}  "
                                     f"{msg.get('tokens_per_sec') or 0:,.0f} tokens/s")
    if kind == "lockstep":
        return None, f"re-anchored checks {msg['done']}/{msg['total']} (epoch {msg['epoch']})"
    return None, ""
