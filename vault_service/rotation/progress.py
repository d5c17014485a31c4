"""Progress of a rotation on stderr: a rich bar on a terminal, plain lines otherwise
(a log file or a pipe reads better without carriage returns)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn


class RotationProgress:
    def __init__(self, label: str, total: int, *, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._label = label
        self._total = total
        self._done = 0
        self._bar: Progress | None = None
        if self._stream.isatty():
            from rich.console import Console

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
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
            print(f"{self._label}: {self._done}/{self._total}", file=self._stream, flush=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
