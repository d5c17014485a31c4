"""Where an import's lines are checked and sealed: in the importing process, or spread
over worker processes (`--workers N`), each with the service's own configuration.

Both run the API's code for each record (`RecordService.validate_create`, then
`RecordService.seal_new`). A worker builds its own RecordService from the settings in
its environment, as the CLI does: it reaches Vault and PostgreSQL (the service's role)
itself, so no key crosses a process boundary; what comes back is the stored form.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

from vault_service.errors import InvalidBody
from vault_service.records.service import RecordService, SealedNew

# (record id, referent, the line's `record` as JSON bytes)
Item = tuple[uuid.UUID, uuid.UUID, bytes]
# The stored form, or the stable code of a refusal (the record fails the API's checks).
Outcome = SealedNew | str


class LineSealer(Protocol):
    async def seal(self, structure_id: uuid.UUID, items: Sequence[Item]) -> list[Outcome]: ...

    def close(self) -> None: ...


# Records sealed between two turns of the event loop. Sealing never waits (the keys are
# cached), so without a turn the previous batch's statement, a few megabytes, would not
# leave the socket buffer nor its answer be read until the whole batch is sealed: the
# database would wait for the sealing and the sealing for the database.
_SLICE = 16


async def seal_items(
    records: RecordService, structure_id: uuid.UUID, items: Sequence[Item]
) -> list[Outcome]:
    out: list[Outcome] = []
    for k, (record_id, referent, body) in enumerate(items, start=1):
        if k % _SLICE == 0:
            await asyncio.sleep(0)
        try:
            values = records.validate_create(body)
            out.append(await records.seal_new(structure_id, referent, values, record_id))
        except InvalidBody:
            out.append(InvalidBody.code)
    return out


class InProcess:
    def __init__(self, records: RecordService) -> None:
        self._records = records

    async def seal(self, structure_id: uuid.UUID, items: Sequence[Item]) -> list[Outcome]:
        return await seal_items(self._records, structure_id, items)

    def close(self) -> None:
        pass


class WorkerPool:
    """`workers` processes, each sealing a share of every batch."""

    def __init__(self, workers: int, start: Callable[[], Awaitable[RecordService]]) -> None:
        # spawn: a fork would copy the parent's event loop, pools and Vault client.
        # `start` builds a worker's record service from its own settings: a module-level
        # function of the composition root (a spawned process imports it by name).
        self._workers = workers
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(start,),
        )

    async def seal(self, structure_id: uuid.UUID, items: Sequence[Item]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        share = -(-len(items) // self._workers)
        parts = [list(items[i : i + share]) for i in range(0, len(items), share)]
        done = await asyncio.gather(
            *(loop.run_in_executor(self._pool, _seal, structure_id, p) for p in parts)
        )
        return [outcome for part in done for outcome in part]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- inside a worker -----------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _start(start: Callable[[], Awaitable[RecordService]]) -> None:
    loop = asyncio.new_event_loop()
    _worker["loop"] = loop
    _worker["records"] = loop.run_until_complete(start())


def _seal(structure_id: uuid.UUID, items: list[Item]) -> list[Outcome]:
    loop: asyncio.AbstractEventLoop = _worker["loop"]
    return loop.run_until_complete(seal_items(_worker["records"], structure_id, items))
