"""Live progress of a run: a line per backend from the moment its worker starts, and an overall bar.

On a terminal this is a ``rich`` live display (bars, tokens/s, ETA across every backend); when
stderr is not a terminal (CI logs, ``| tee``) it prints plain time-stamped lines instead, on each
change of stage and at most every ``LINE_SECONDS`` per backend, with no cursor codes; disabled
(``--quiet``) it prints nothing. The sweep uses the same class with cells instead of backends.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

# Non-terminal output: one line per backend at most this often (plus one per stage change).
LINE_SECONDS = 10.0
# A training status ('epoch 10/30  perplexity 17.325  607,925 tokens/s') in full on a terminal this much wider
# than the fixed columns.
STATUS_WIDTH = 48


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class RunProgress:
    """Progress of several jobs (backends, cells), each measured in work units.

    Args:
        jobs: ``{name: units}``: how much work each job is (e.g. its epochs plus its re-anchored
            checks in epoch equivalents); the overall bar and ETA add them up.
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
        self._tasks: dict[str, Any] = {}
        self._lock = threading.RLock()  # rows that run side by side report from their pool threads
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.table import Column

            console = Console(file=self.stream)
            # The status takes what the other columns leave and is cut with an ellipsis on a narrow terminal
            # (left to rich, every column shrank and the times read '0…'); the bar gives way first.
            bar = max(10, min(24, console.width - 41 - STATUS_WIDTH))
            self._live = Progress(
                TextColumn("{task.description:<14}"), BarColumn(bar_width=bar),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[status]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                refresh_per_second=4, expand=True,
            )
            self._overall = self._live.add_task("[bold]overall", total=max(sum(jobs.values()), 1e-9), status="")
            for name, units in jobs.items():
                short = name if len(name) <= 14 else name[:13] + "…"  # cut, and seen to be cut
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
            # its own columns show the share and the ETA
            self._live.update(self._overall, completed=sum(self.done.values()))
            return
        now = time.monotonic()
        key = status.split(" ")[0]
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
        return f"overall {self.fraction():.0%}" + (f", ETA {_fmt_seconds(eta)}" if eta is not None else "")

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
