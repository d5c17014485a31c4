"""The access log's tree writer: appends entries to the Merkle tree (integration).

The entry format is in `audit/entry.py`. Requests do not come here: their entries are
made durable in the pending queue (`access/sequencer.py`) and the integrator
(`audit/integrator.py`) feeds them to this writer in the background. Jobs that must
commit an act and its entry atomically outside the service (retention) append
directly with `append_on_connection`.

Appending: `append` waits until its entry is committed. One writer task per process
takes everything queued (up to `max_batch`) and appends it in one transaction that
locks the one tree-state row, so any number of processes on one database produce one
tree without gap or duplicate. There is no wait timer: while one batch commits, the
next accumulates (and is already sent, see `AccessLog`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import metrics

from vault_service.audit import repository as sql
from vault_service.audit.entry import (
    ENTRY_VERSION,
    LEAF_SIZE,
    AccessEvent,
    EntryBody,
    InvalidAccessEvent,
    Leaf,
    Prepared,
    body_hash,
    canonical_body,
    encode_leaf,
    parse_leaf,
    prepare,
    wall_clock_us,
)
from vault_service.audit.merkle import leaf_hash
from vault_service.audit.tiles import TILE_HEIGHT, TILE_WIDTH, TileBuilder, TileError
from vault_service.errors import AuditUnavailable, ConfigurationError

# The entry format's names stay importable from here for existing callers.
__all__ = [
    "ENTRY_VERSION",
    "LEAF_SIZE",
    "AccessEvent",
    "AccessLog",
    "EntryBody",
    "InvalidAccessEvent",
    "Leaf",
    "append_on_connection",
    "body_hash",
    "canonical_body",
    "encode_leaf",
    "parse_leaf",
]

log = structlog.get_logger(__name__)
_meter = metrics.get_meter("vault_service.audit")
_appended = _meter.create_counter("vault_service.audit.appended", description="entries appended")
_failed = _meter.create_counter(
    "vault_service.audit.append_failures", description="entries that could not be appended"
)
_batch_size = _meter.create_histogram(
    "vault_service.audit.batch_size", description="entries per append transaction"
)

Connection = asyncpg.Connection | PoolConnectionProxy


# --- the transaction that appends a batch -------------------------------------------------
def _edge_keys(size: int) -> list[tuple[int, int]]:
    """The partial tile of each level of a tree of `size` leaves: what an append
    continues and what the new root is read from."""
    keys = []
    level = 0
    while nodes := size >> (TILE_HEIGHT * level):
        if nodes % TILE_WIDTH:
            keys.append((level, nodes // TILE_WIDTH))
        level += 1
    return keys


class _DictStore:
    def __init__(self, tiles: Mapping[tuple[int, int], bytes]) -> None:
        self.tiles = tiles

    def get(self, level: int, index: int) -> bytes | None:
        return self.tiles.get((level, index))


@dataclass(slots=True)
class _Edge:
    """A tree head (size and root) with its right-edge tiles: what a batch is laid
    out on. Size and root together name the tree; the size alone does not (another
    process may have appended as many entries as a batch still in flight)."""

    size: int
    root: bytes
    tiles: dict[tuple[int, int], bytes]


async def _fetch_tiles(
    conn: Connection, keys: Sequence[tuple[int, int]], wait: float | None
) -> dict[tuple[int, int], bytes]:
    if not keys:
        return {}
    rows = await conn.fetch(
        sql.SELECT_TILES, [k[0] for k in keys], [k[1] for k in keys], timeout=wait
    )
    return {(r["level"], r["idx"]): bytes(r["hashes"]) for r in rows}


@dataclass(frozen=True, slots=True)
class _Built:
    """A batch laid out on a tree of `base` leaves: its rows, and the tree after it."""

    base: int
    indexes: list[int]
    args: tuple[object, ...]
    edge: _Edge


def _build(batch: Sequence[Prepared], base: _Edge) -> _Built:
    """Leaves, tiles and new head of `batch` appended to the tree `base`. Pure: nothing
    is locked or written."""
    size, tiles = base.size, base.tiles
    indexes = list(range(size, size + len(batch)))
    leaves = [encode_leaf(i, p.at_us, p.body_hash) for i, p in zip(indexes, batch, strict=True)]
    hashes = [leaf_hash(leaf) for leaf in leaves]
    result = TileBuilder(size, _DictStore(tiles)).append(hashes)
    tile_keys = sorted(result.tiles)
    merged = {**tiles, **result.tiles}
    keys = _edge_keys(result.size)
    if any(key not in merged for key in keys):
        raise TileError("the access-log right edge is incomplete")
    args = (
        indexes,
        leaves,
        hashes,
        [p.salt for p in batch],
        [p.body for p in batch],
        [k[0] for k in tile_keys],
        [k[1] for k in tile_keys],
        [result.tiles[k] for k in tile_keys],
        result.size,
        result.root,
        size,
        base.root,
        [p.pending_id for p in batch if p.pending_id is not None],
    )
    edge = _Edge(result.size, result.root, {key: merged[key] for key in keys})
    return _Built(size, indexes, args, edge)


async def _write(conn: Connection, built: _Built, wait: float | None) -> bool:
    """APPEND_BATCH; False if the tree no longer had the size the batch was built on
    (then nothing was written). `wait` bounds the statement, the lock wait included: a
    blocked log must refuse requests quickly (asyncpg cancels it server-side)."""
    if built.args[-1]:
        status = await conn.execute(sql.APPEND_INTEGRATED, *built.args, timeout=wait)
    else:
        status = await conn.execute(sql.APPEND_BATCH, *built.args[:-1], timeout=wait)
    return bool(status == "UPDATE 1")


async def _append_locked(
    conn: Connection,
    batch: Sequence[Prepared],
    edge: _Edge | None,
    wait: float | None,
) -> tuple[_Built, bool]:
    """Append `batch` inside the caller's open transaction, after locking the head;
    returns the batch as written and whether `edge` was still current. Nothing is
    durable until the caller commits."""
    row = await conn.fetchrow(sql.LOCK_TREE, timeout=wait)
    if row is None:
        raise TileError("the access-log tree state row is missing")
    size, root = int(row["size"]), bytes(row["root"])
    if edge is not None and edge.size == size and edge.root == root:
        base, current = edge, True
    else:
        base = _Edge(size, root, await _fetch_tiles(conn, _edge_keys(size), wait))
        current = False
    built = _build(batch, base)
    if not await _write(conn, built, wait):
        # Impossible while we hold the row lock; if it happens, the tree is not ours.
        raise TileError("the access-log tree state changed under its lock")
    return built, current


async def append_on_connection(
    conn: Connection,
    events: Iterable[AccessEvent],
    *,
    clock: Callable[[], int] = wall_clock_us,
) -> list[int]:
    """Append `events` in the transaction already open on `conn` (for jobs that must
    commit an act and its log entry atomically, like retention). No batching with
    other callers; the row lock still serialises it with every sequencer."""
    batch = [prepare(event, clock()) for event in events]
    if not batch:
        return []
    if not conn.is_in_transaction():
        raise AuditUnavailable("append_on_connection needs an open transaction")
    built, _ = await _append_locked(conn, batch, None, None)
    return built.indexes


# --- the sequencer ---------------------------------------------------------------------------
@dataclass(slots=True)
class _Waiting:
    prepared: Prepared
    future: asyncio.Future[int]


_SPLIT_MIN: Final = 16


@dataclass(slots=True)
class _Flight:
    landed: bool = False


class AccessLog:
    """Per-process front of the shared log. `append` returns the leaf index once the
    entry is committed, or raises AuditUnavailable: the caller must then return no
    data (fail closed).

    How a batch is written. A process that was the last to append knows the tree
    head, so it lays the batch out in memory and sends one statement that locks the
    head, checks the size and writes everything: one round trip, one transaction.
    It does not wait for that statement to come back before laying out the next batch
    on top of it (up to `pipeline` batches in flight, each on its own connection): the
    next statement waits in PostgreSQL for the row lock and runs the moment the first
    commits, while the callers released by the first prepare their next entries. When
    the queue is long and nothing is in flight, the first batch takes half of it so
    that the pipeline fills. If another process appended meanwhile, the size check
    fails, nothing is written, and the batch goes through the locked path (BEGIN, lock
    the head, read the size and the right edge, write, COMMIT), alone.

    `lock_timeout` bounds each statement, waiting for the tree lock included (a
    blocked log must refuse requests quickly, not queue them); `clock` returns
    microseconds since the epoch and exists for tests and imports of old events.
    `max_queue` bounds memory when the database is slower than the callers: past it,
    appends fail at once.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 512,
        pipeline: int = 2,
        lock_timeout: float = 2.0,
        max_queue: int = 65_536,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        if max_batch < 1 or max_queue < max_batch or pipeline < 1:
            raise ValueError("need max_batch >= 1, max_queue >= max_batch and pipeline >= 1")
        self._pool = pool
        self._max_batch = max_batch
        self._depth = pipeline
        self._timeout = lock_timeout
        self._max_queue = max_queue
        self._clock = clock
        # One group per append_many call: a group is never split across batches.
        self._queue: list[list[_Waiting]] = []
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._stopping = False
        # What this process knows of the tree: the edge after its last commit (None:
        # unknown), whether it was the last writer, and the edge after the batches it
        # has in flight (None: the chain is broken, wait until they are done).
        self._edge: _Edge | None = None
        self._fast = True
        self._tail: _Edge | None = None
        self._in_flight = 0  # batches sent and not yet answered by the database
        self._locked_in_flight = False
        self.batches = 0
        """Transactions committed by this process (tests and metrics)."""
        self.fast_batches = 0
        """Of which on the one-statement path."""

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    async def start(self) -> None:
        """Start the writer. Refuses a database where commits are not durable: an
        entry that a crash can lose is an access without a trace."""
        if self._task is not None:
            return
        async with self._pool.acquire() as conn:
            if await conn.fetchval(sql.SHOW_SYNCHRONOUS_COMMIT) == "off":
                raise ConfigurationError("synchronous_commit is off for the access log's role")
        self._stopping = False
        self._task = asyncio.create_task(self._writer(), name="access-log-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop; later appends fail closed."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        await self._task
        self._task = None

    async def append(self, event: AccessEvent) -> int:
        # append_many for one event, without its lists: this is every request's path.
        prepared = prepare(event, self._clock())
        self._admit(1)
        waiting = _Waiting(prepared, asyncio.get_running_loop().create_future())
        self._queue.append([waiting])
        self._queued += 1
        self._wakeup.set()
        return await waiting.future

    async def append_many(self, events: Iterable[AccessEvent]) -> list[int]:
        """Append several events; they commit together (in one batch) and their
        indexes are consecutive."""
        return await self.append_prepared([prepare(event, self._clock()) for event in events])

    async def append_prepared(self, prepared: Sequence[Prepared]) -> list[int]:
        """Append entries already prepared (the integrator's: read from the pending
        queue, which they leave in the same transaction); they commit together."""
        if not prepared:
            return []
        self._admit(len(prepared))
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(p, loop.create_future()) for p in prepared]
        self._queue.append(waiting)
        self._queued += len(waiting)
        self._wakeup.set()
        # gather: when the batch fails, every future's exception is retrieved.
        return list(await asyncio.gather(*(w.future for w in waiting)))

    def _admit(self, count: int) -> None:
        if not self.running:
            _failed.add(count, {"reason": "not_running"})
            raise AuditUnavailable()
        if self._queued + count > self._max_queue:
            _failed.add(count, {"reason": "queue_full"})
            log.warning("audit_queue_full", queued=self._queued)
            raise AuditUnavailable()

    def _take(self, limit: int) -> list[_Waiting]:
        # Whole groups only: the entries of one append_many commit together, so a group
        # larger than the limit makes a batch of its own.
        batch: list[_Waiting] = []
        taken = 0
        for group in self._queue:
            if batch and len(batch) + len(group) > limit:
                break
            batch.extend(group)
            taken += 1
        del self._queue[:taken]
        self._queued -= len(batch)
        return batch

    # --- the writer: launches batches, never waits for one -------------------------------
    async def _writer(self) -> None:
        while True:
            self._launch()
            if self._stopping and not self._queue and not self._in_flight:
                await asyncio.gather(*self._batches)
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    def _launch(self) -> None:
        while self._queue and self._in_flight < self._depth and not self._locked_in_flight:
            if self._in_flight:
                base = self._tail
                if base is None:
                    return  # a batch in flight went astray: let them all land first
            else:
                base = self._edge if self._fast else None
            if base is None:
                batch = self._take(self._max_batch)
                self._locked_in_flight = True
                self._spawn(self._run_locked(batch, _Flight()))
                return
            limit = self._max_batch
            if not self._in_flight and self._depth > 1 and self._queued >= 2 * _SPLIT_MIN:
                limit = min(limit, -(-self._queued // 2))
            batch = self._take(limit)
            try:
                built = _build([w.prepared for w in batch], base)
            except Exception as exc:  # noqa: BLE001 - a layout failure fails this batch closed
                self._failed_batch(batch, exc)
                continue
            self._tail = built.edge
            self._spawn(self._run_fast(batch, built, _Flight()))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        self._in_flight += 1
        task = asyncio.create_task(work)
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _land(self, flight: _Flight) -> None:
        """The database answered (or the batch failed): the writer may send the next
        batch now, without waiting for the connection to go back to the pool."""
        if not flight.landed:
            flight.landed = True
            self._in_flight -= 1
            self._wakeup.set()

    def _committed(self, batch: Sequence[_Waiting], built: _Built) -> None:
        if self._edge is None or built.edge.size > self._edge.size:
            self._edge = built.edge
        for waiting, index in zip(batch, built.indexes, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(index)
        self.batches += 1
        _appended.add(len(batch))
        _batch_size.record(len(batch))

    def _failed_batch(self, batch: Sequence[_Waiting], exc: BaseException) -> None:
        # The tree as this process knew it may be wrong now: start again from the head.
        self._edge = None
        self._tail = None
        reason = type(exc).__name__
        log.error("audit_append_failed", error_type=reason, entries=len(batch))
        _failed.add(len(batch), {"reason": reason})
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(AuditUnavailable())

    async def _run_fast(self, batch: list[_Waiting], built: _Built, flight: _Flight) -> None:
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                try:
                    if await _write(conn, built, self._timeout):
                        self.fast_batches += 1
                        self._committed(batch, built)
                        return
                    # Another process appended (or the batch before this one failed):
                    # nothing was written. Take the locked path on this connection.
                    self._fast = False
                    self._tail = None
                    await self._locked(conn, batch)
                except BaseException:
                    conn.terminate()
                    raise
                finally:
                    self._land(flight)
        except Exception as exc:  # noqa: BLE001 - any failure fails these appends closed
            self._failed_batch(batch, exc)
        except asyncio.CancelledError as exc:
            self._failed_batch(batch, exc)
            raise
        finally:
            self._land(flight)

    async def _run_locked(self, batch: list[_Waiting], flight: _Flight) -> None:
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                try:
                    await self._locked(conn, batch)
                except BaseException:
                    conn.terminate()
                    raise
                finally:
                    self._locked_in_flight = False
                    self._land(flight)
        except Exception as exc:  # noqa: BLE001 - any failure fails these appends closed
            self._failed_batch(batch, exc)
        except asyncio.CancelledError as exc:
            self._failed_batch(batch, exc)
            raise
        finally:
            self._locked_in_flight = False
            self._land(flight)

    async def _locked(self, conn: Connection, batch: list[_Waiting]) -> None:
        """The locked path, on a clean connection. On any failure the caller drops the
        connection: the server then rolls back and frees the tree lock at once, and
        the pool (which may not reset connections on release) never hands out one
        with a transaction still open."""
        timeout = self._timeout
        edge = self._edge
        await conn.execute(sql.BEGIN_APPEND, timeout=timeout)
        built, current = await _append_locked(conn, [w.prepared for w in batch], edge, timeout)
        await conn.execute(sql.COMMIT, timeout=timeout)
        self._committed(batch, built)
        # Back to the one-statement path once this process finds itself the last writer
        # again (or, at its first append, optimistically).
        self._fast = current or edge is None
