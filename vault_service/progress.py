"""Progress of a long run (a rotation, an import) on stderr: a rich bar with rate and
ETA on a terminal, plain lines otherwise (a log file or a pipe reads better without
carriage returns)."""

from __future__ import annotations

import asyncio
import sys
import time
from types import TracebackType
from typing import TextIO

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


class RotationProgress:
    def __init__(
        self, label: str, total: int, *, stream: TextIO | None = None, rate: bool = False
    ) -> None:
        """`rate`: plain lines end with the rate so far (a bar always shows it)."""
        self._stream = stream or sys.stderr
        self._label = label
        self._total = total
        self._done = 0
        self._started = time.monotonic()
        self._rate = rate
        self._bar: Progress | None = None
        if self._stream.isatty():
            from rich.console import Console

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> RotationProgress:
        if self._bar is not None:
            self._bar.start()
        else:
            print(f"{self._label}: 0/{self._total}", file=self._stream, flush=True)
        return self

    def advance(self, count: int) -> None:
        self._done += count
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done)
        else:
            elapsed = time.monotonic() - self._started
            rate = f" ({self._done / elapsed:,.0f}/s)" if self._rate and elapsed > 0 else ""
            print(f"{self._label}: {self._done}/{self._total}{rate}", file=self._stream, flush=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()


class Pace:
    """Sleeps between batches so that a run (a rotation, an import) stays at or under
    `rate` records a second on average (0: no pacing)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._started = time.monotonic()
        self._done = 0

    async def after(self, n: int) -> None:
        if self._rate <= 0:
            return
        self._done += n
        ahead = self._done / self._rate - (time.monotonic() - self._started)
        if ahead > 0:
            await asyncio.sleep(ahead)
