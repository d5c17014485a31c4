"""The access log: what an entry is, and the batching sequencer that appends entries.

Entry format (version 1, described in schemas/access_log_entry.schema.json and
schemas/checkpoint.md):

- the *body* is the queryable JSON of the event (ids and codes, never a value), its
  canonical bytes being msgspec's JSON encoding of `EntryBody` (members in declaration
  order, no whitespace);
- the *leaf* is 49 bytes, `0x01 || uint64 index || int64 microseconds since the epoch
  || SHA-256(salt || canonical body)`, all big-endian; its Merkle hash is
  SHA-256(0x00 || leaf) (RFC 9162).

The leaf commits to a *salted* hash of the body so that the body (and its salt) can
be pruned at the end of its retention while the tree stays verifiable, and so that
the hash left behind cannot be used to confirm a guess ("did account A read record R
at time T?"): bodies are low-entropy, the 32-byte salt is not.

Sequencing: `append` waits until its entry is committed. One writer task per process
takes everything queued (up to `max_batch`) and appends it in one transaction that
locks the one tree-state row, so any number of processes on one database produce one
tree without gap or duplicate. There is no wait timer: while one batch commits, the
next accumulates (and is already sent, see `AccessLog`).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import re
import struct
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import asyncpg
import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import metrics

from vault_service.audit import repository as sql
from vault_service.audit.merkle import HASH_SIZE, leaf_hash
from vault_service.audit.tiles import TILE_HEIGHT, TILE_WIDTH, TileBuilder, TileError
from vault_service.errors import AuditUnavailable, ConfigurationError, VaultServiceError

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

ENTRY_VERSION: Final = 1
LEAF_SIZE: Final = 1 + 8 + 8 + HASH_SIZE
SALT_SIZE: Final = 32
_LEAF_HEAD = struct.Struct(">BQq")
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MAX_RECORD_IDS: Final = 10_000
_MAX_FIELDS: Final = 500

Connection = asyncpg.Connection | PoolConnectionProxy


class InvalidAccessEvent(VaultServiceError):
    """An event that the log refuses to store: a caller bug (a value where an id or
    code belongs). Fails the request like any other audit failure: no entry, no data."""

    code = "invalid_access_event"
    title = "The access-log entry is malformed"


class AccessEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One access, allowed or refused. Ids and codes only: never a name, a NIR, a
    field value or a token. `fields` are field *paths* returned, `criteria` are search
    criterion *names*; `client_fingerprint` is a salted hash computed by the caller."""

    action: str
    outcome: Literal["allowed", "refused"]
    actor_id: uuid.UUID | None
    role: str | None
    structure_id: uuid.UUID | None
    record_ids: tuple[uuid.UUID, ...] = ()
    fields: tuple[str, ...] = ()
    purpose: str | None = None
    purpose_detail: str | None = None
    refusal_code: str | None = None
    request_id: str | None = None
    token_jti: uuid.UUID | None = None
    client_fingerprint: str | None = None
    criteria: tuple[str, ...] = ()


class EntryBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The stored and hashed body, format version 1. The declaration order IS the
    canonical member order: reorder nothing, add members only in a new version.
    UUIDs are kept as their canonical lower-case text so that decoding and encoding
    again is the identity on canonical bytes."""

    v: int
    at: str
    action: str
    outcome: str
    actor_id: str | None
    role: str | None
    structure_id: str | None
    record_ids: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str | None
    purpose_detail: str | None
    refusal_code: str | None
    request_id: str | None
    token_jti: str | None
    client_fingerprint: str | None
    criteria: tuple[str, ...]


_body_encoder = msgspec.json.Encoder()
_body_decoder = msgspec.json.Decoder(EntryBody)


def canonical_body(data: bytes | str) -> bytes:
    """Canonical bytes of a body given as any JSON text of it (jsonb output, a
    reformatted file): decode into `EntryBody` and encode again."""
    return _body_encoder.encode(_body_decoder.decode(data))


def body_hash(salt: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(salt + canonical).digest()


@dataclass(frozen=True, slots=True)
class Leaf:
    index: int
    at_us: int
    body_hash: bytes

    @property
    def at(self) -> datetime.datetime:
        return _EPOCH + datetime.timedelta(microseconds=self.at_us)


def encode_leaf(index: int, at_us: int, digest: bytes) -> bytes:
    return _LEAF_HEAD.pack(ENTRY_VERSION, index, at_us) + digest


def parse_leaf(leaf: bytes) -> Leaf:
    """Parse a version-1 leaf; raises ValueError for any other length or version."""
    if len(leaf) != LEAF_SIZE or leaf[0] != ENTRY_VERSION:
        raise ValueError("not a version 1 access-log leaf")
    _, index, at_us = _LEAF_HEAD.unpack_from(leaf)
    return Leaf(index=index, at_us=at_us, body_hash=leaf[17:])


_last_second: tuple[int, str] = (-1, "")


def format_time(at_us: int) -> str:
    """RFC 3339 UTC with microseconds, as in the body. The second's text is cached:
    a busy log formats the same second thousands of times."""
    global _last_second  # noqa: PLW0603 - a one-entry cache, racy only in harmless ways
    seconds, micros = divmod(at_us, 1_000_000)
    cached_second, text = _last_second
    if cached_second != seconds:
        moment = _EPOCH + datetime.timedelta(seconds=seconds)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (seconds, text)
    return f"{text}.{micros:06d}Z"


# --- validation: ids and codes only ---------------------------------------------------
_ACTION = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}")
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_FIELD = re.compile(r"[a-z0-9_]{1,64}(\[\]|\.[a-z0-9_*]{1,64}|\[[0-9]{1,4}\]){0,8}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{8,64}")
_FINGERPRINT = re.compile(r"[A-Za-z0-9_=+/:-]{8,128}")
# The X-Purpose-Detail header's own rule (auth/guards.py): short plain text, stated by
# the caller as a reason. It is kept in the prunable body, never in the leaf.
_DETAIL = re.compile(r"[\w .,;:'()/-]{1,200}")
# Codes, actions and field paths come from a small vocabulary: remember the ones that
# passed (bounded, so that varied input cannot grow it) and skip their regex.
_KNOWN_MAX: Final = 4096
_known: dict[re.Pattern[str], set[str]] = {p: set() for p in (_ACTION, _CODE, _FIELD)}


def _check(pattern: re.Pattern[str], value: str | None, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        # The message names the member, never its content.
        raise InvalidAccessEvent(f"access-log entry: invalid {what}")


def _check_code(pattern: re.Pattern[str], value: str | None, what: str) -> None:
    if value is None:
        return
    known = _known[pattern]
    if value in known:
        return
    _check(pattern, value, what)
    if len(known) < _KNOWN_MAX:
        known.add(value)


def _validate(event: AccessEvent) -> None:
    if not isinstance(event, AccessEvent):
        raise InvalidAccessEvent("access-log entry: not an AccessEvent")
    _check_code(_ACTION, event.action, "action")
    if event.outcome not in ("allowed", "refused"):
        raise InvalidAccessEvent("access-log entry: invalid outcome")
    _check_code(_CODE, event.role, "role")
    _check_code(_CODE, event.purpose, "purpose")
    _check(_DETAIL, event.purpose_detail, "purpose_detail")
    _check_code(_CODE, event.refusal_code, "refusal_code")
    _check(_REQUEST_ID, event.request_id, "request_id")
    _check(_FINGERPRINT, event.client_fingerprint, "client_fingerprint")
    if len(event.record_ids) > _MAX_RECORD_IDS or len(event.fields) > _MAX_FIELDS:
        raise InvalidAccessEvent("access-log entry: too many record ids or fields")
    for path in event.fields:
        _check_code(_FIELD, path, "field path")
    for name in event.criteria:
        _check_code(_CODE, name, "criterion name")
    for value in (event.actor_id, event.structure_id, event.token_jti, *event.record_ids):
        if value is not None and type(value) is not uuid.UUID:
            raise InvalidAccessEvent("access-log entry: an id is not a UUID")


def _str_or_none(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An event ready for the sequencer: everything but its index, computed by the
    caller's task so that the writer's critical section stays short."""

    at_us: int
    salt: bytes
    body: str
    body_hash: bytes


_SALTS_PER_READ: Final = 256
_salts = bytearray()


def _salt() -> bytes:
    """32 bytes from the OS CSPRNG, read 8 KiB at a time: one getrandom() call per
    salt costs more than the rest of an entry on some virtual machines."""
    global _salts  # noqa: PLW0603 - a module-level buffer of OS randomness
    if not _salts:
        _salts = bytearray(os.urandom(SALT_SIZE * _SALTS_PER_READ))
    salt = bytes(_salts[-SALT_SIZE:])
    del _salts[-SALT_SIZE:]
    return salt


def _prepare(event: AccessEvent, at_us: int) -> _Prepared:
    _validate(event)
    role, purpose = event.role, event.purpose
    body = EntryBody(
        v=ENTRY_VERSION,
        at=format_time(at_us),
        action=event.action,
        outcome=event.outcome,
        actor_id=_str_or_none(event.actor_id),
        # str() turns a StrEnum (Role, Purpose) into its plain value.
        role=None if role is None else str(role),
        structure_id=_str_or_none(event.structure_id),
        record_ids=tuple(map(str, event.record_ids)),
        fields=event.fields,
        purpose=None if purpose is None else str(purpose),
        purpose_detail=event.purpose_detail,
        refusal_code=event.refusal_code,
        request_id=event.request_id,
        token_jti=_str_or_none(event.token_jti),
        client_fingerprint=event.client_fingerprint,
        criteria=event.criteria,
    )
    canonical = _body_encoder.encode(body)
    salt = _salt()
    return _Prepared(
        at_us=at_us,
        salt=salt,
        body=canonical.decode("utf-8"),
        body_hash=hashlib.sha256(salt + canonical).digest(),
    )


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


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


def _build(batch: Sequence[_Prepared], base: _Edge) -> _Built:
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
    )
    edge = _Edge(result.size, result.root, {key: merged[key] for key in keys})
    return _Built(size, indexes, args, edge)


async def _write(conn: Connection, built: _Built, wait: float | None) -> bool:
    """APPEND_BATCH; False if the tree no longer had the size the batch was built on
    (then nothing was written). `wait` bounds the statement, the lock wait included: a
    blocked log must refuse requests quickly (asyncpg cancels it server-side)."""
    status = await conn.execute(sql.APPEND_BATCH, *built.args, timeout=wait)
    return bool(status == "UPDATE 1")


async def _append_locked(
    conn: Connection,
    batch: Sequence[_Prepared],
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
    clock: Callable[[], int] = _wall_clock_us,
) -> list[int]:
    """Append `events` in the transaction already open on `conn` (for jobs that must
    commit an act and its log entry atomically, like retention). No batching with
    other callers; the row lock still serialises it with every sequencer."""
    batch = [_prepare(event, clock()) for event in events]
    if not batch:
        return []
    if not conn.is_in_transaction():
        raise AuditUnavailable("append_on_connection needs an open transaction")
    built, _ = await _append_locked(conn, batch, None, None)
    return built.indexes


# --- the sequencer ---------------------------------------------------------------------------
@dataclass(slots=True)
class _Waiting:
    prepared: _Prepared
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
        clock: Callable[[], int] = _wall_clock_us,
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
        prepared = _prepare(event, self._clock())
        self._admit(1)
        waiting = _Waiting(prepared, asyncio.get_running_loop().create_future())
        self._queue.append([waiting])
        self._queued += 1
        self._wakeup.set()
        return await waiting.future

    async def append_many(self, events: Iterable[AccessEvent]) -> list[int]:
        """Append several events; they commit together (in one batch) and their
        indexes are consecutive."""
        prepared = [_prepare(event, self._clock()) for event in events]
        if not prepared:
            return []
        self._admit(len(prepared))
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(p, loop.create_future()) for p in prepared]
        self._queue.append(waiting)
        self._queued += len(waiting)
        self._wakeup.set()
        return [await w.future for w in waiting]

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
