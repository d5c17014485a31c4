"""A queue that hands what accumulated to one flush function, batch by batch.

Kept apart from what a flush writes (as Tessera keeps its queue apart from storage):
the access-log sequencer uses it for requests' entries and budgets.

There is no timer. The first item finds no flush running and starts one at once; items
that arrive while a flush is in flight wait for the next, so batches grow with load and
an idle service answers without delay. Up to `max_in_flight` flushes run at once (each
on its own connection), so one batch can be sent while another commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        error: Callable[[BaseException | None], BaseException],
        max_batch: int = 256,
        max_in_flight: int = 2,
        max_queue: int = 16_384,
    ) -> None:
        """`flush` returns one result per item, in order, or raises; `error` maps what
        it raised (or None: the batcher is closed or full) to the exception every
        caller of that batch gets."""
        if max_batch < 1 or max_in_flight < 1 or max_queue < max_batch:
            raise ValueError("need max_batch >= 1, max_in_flight >= 1, max_queue >= max_batch")
        self._flush = flush
        self._error = error
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._max_queue = max_queue
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = False
        self.batches = 0
        """Flushes completed (tests and metrics)."""

    @property
    def open(self) -> bool:
        return self._open

    def start(self) -> None:
        self._open = True

    async def stop(self) -> None:
        """Flush what is queued, then refuse new items."""
        self._open = False
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def submit(self, item: T) -> R:
        if not self._open or len(self._queue) >= self._max_queue:
            raise self._error(None)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running < self._max_in_flight:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    results = _checked(await self._flush([item for item, _ in batch]), batch)
                # Every caller of the batch gets the mapped error, whatever went wrong.
                except (Exception, asyncio.CancelledError) as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(self._error(exc))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                self.batches += 1
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running -= 1


def _checked(results: Sequence[R], batch: Sequence[object]) -> Sequence[R]:
    # A flush that answers for the wrong number of items is a bug that must fail the
    # batch, never hand one caller another's result.
    if len(results) != len(batch):
        raise RuntimeError("a flush returned the wrong number of results")
    return results
