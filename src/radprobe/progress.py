"""Rich progress bars on stderr, so ``--json`` output on stdout stays machine-readable; where stderr
is not a terminal (a log, CI), a plain line per task every ``PLAIN_EVERY_S`` seconds instead. Tables
printed to a log are laid out wide rather than cut at 80 columns."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr_console = Console(stderr=True)
PLAIN_EVERY_S = 10.0
# Width of tables written to a file or pipe, where Rich would otherwise assume 80 columns and cut them.
LOG_WIDTH = 200


def output_console() -> Console:
    """The stdout console: the terminal's width in a terminal, ``LOG_WIDTH`` in a log or pipe."""
    return Console() if sys.stdout.isatty() else Console(width=LOG_WIDTH)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``412.3 img/s``."""

    def __init__(self, unit: str = "img") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


class PlainProgress:
    """What :class:`rich.progress.Progress` offers its callers here, as plain lines on stderr: a
    task's count and rate at most every ``every_s`` seconds, and once when it completes."""

    def __init__(self, unit: str, every_s: float = PLAIN_EVERY_S) -> None:
        self.unit, self.every_s = unit, every_s
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_: Any) -> int:
        now = time.monotonic()
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": completed,
                                       "start": now, "shown": now, "done": False}  # fmt: skip
        return len(self.tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, completed=self.tasks[task]["completed"] + advance)

    def update(self, task: int, **fields: Any) -> None:
        t = self.tasks[task]
        t.update({k: v for k, v in fields.items() if k in ("description", "total", "completed")})
        t["completed"] += fields.get("advance", 0)
        finished = t["total"] is not None and t["completed"] >= t["total"]
        now = time.monotonic()
        if (not t["done"]) if finished else now - t["shown"] >= self.every_s:
            t["shown"], t["done"] = now, finished
            rate = t["completed"] / max(now - t["start"], 1e-9)
            total = "" if t["total"] is None else f"/{t['total']:g}"
            sys.stderr.write(f"{t['description']}: {t['completed']:g}{total} ({rate:,.1f} {self.unit}/s)\n")
            sys.stderr.flush()


def make_progress(enabled: bool = True, unit: str = "img") -> Progress | PlainProgress:
    """A progress bar with count, rate and ETA on a terminal; plain periodic lines when stderr is not
    a terminal; silent when disabled."""
    if enabled and not sys.stderr.isatty():
        return PlainProgress(unit)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not enabled,
        transient=False,
    )
