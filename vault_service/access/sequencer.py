"""The request side of the access log: entries made durable, budgets decided, together.

A data request ends with one call, `commit(event, claims)`: its budget claims are
decided and its entry is made durable (a row of the pending queue) in one statement,
one round trip and one commit shared by every request of the batch
(`vs_access_commit`, migration 0004). The answer says whether the budgets admitted the
request; if not, the entry was stored as a refusal and the caller returns nothing.
Either way the entry is durable before the response leaves: no entry, no data.

Writes (create, update, transfer, break-the-glass, review) put their entry in the
pending queue inside their own transaction instead (`add_in_transaction`), so a write
and its entry commit together or not at all.

Integration into the Merkle tree (leaf index, tree hashes, tiles) is not on this path:
the integrator (audit/integrator.py) does it in the background, as transparency logs
such as Tessera separate sequencing from integration.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import metrics

from vault_service.audit import repository as sql
from vault_service.audit.entry import AccessEvent, encode_body, new_salt, wall_clock_us
from vault_service.batching import Batcher
from vault_service.errors import AuditUnavailable

__all__ = [
    "BudgetClaim",
    "Decision",
    "Sequencer",
    "add_in_transaction",
    "decision_of",
    "entry_arguments",
]

log = structlog.get_logger(__name__)
_meter = metrics.get_meter("vault_service.audit")
_failed = _meter.create_counter(
    "vault_service.audit.sequence_failures",
    description="request entries that could not be made durable",
)
Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class BudgetClaim:
    """`record_ids` counted against `budget` ('record.hour', ...) of `subject` (an
    account or a structure), which may hold `limit` distinct records per window."""

    subject: uuid.UUID
    budget: str
    limit: int
    record_ids: Sequence[uuid.UUID]


@dataclass(frozen=True, slots=True)
class Decision:
    """The budget outcome of a request, and the budget that binds it most (for the
    RateLimit headers): None when the request claimed no budget."""

    refused: bool
    budget: str | None
    limit: int | None
    remaining: int | None
    reset_seconds: int | None
    # On a refusal: the account's refusals in the current hour, this one included.
    refusals: int | None = None


NO_BUDGET: Final = Decision(False, None, None, None, None)


@dataclass(frozen=True, slots=True)
class _Item:
    salt: bytes
    body: str
    claims: Sequence[BudgetClaim]


def _unavailable(exc: BaseException | None) -> BaseException:
    if exc is not None and not isinstance(exc, AuditUnavailable):
        _failed.add(1, {"reason": type(exc).__name__})
        log.error("audit_sequence_failed", error_type=type(exc).__name__)
    return AuditUnavailable()


class Sequencer:
    """Per-process front of the shared log for requests. `commit` returns the budget
    decision once the entry is durable, or raises AuditUnavailable: the caller must
    then return no data (fail closed). `timeout` bounds each batch statement, a wait
    for a budget row lock or a connection included: a blocked database must refuse
    requests quickly, not queue them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_in_flight: int = 2,
        timeout: float = 2.0,
        clock: Callable[[], int] = wall_clock_us,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._clock = clock
        self._on_commit = on_commit
        self._batcher: Batcher[_Item, Decision] = Batcher(
            self._flush,
            error=_unavailable,
            max_batch=max_batch,
            max_in_flight=max_in_flight,
        )

    @property
    def running(self) -> bool:
        return self._batcher.open

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @property
    def batches(self) -> int:
        return self._batcher.batches

    def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    async def commit(self, event: AccessEvent, claims: Sequence[BudgetClaim] = ()) -> Decision:
        body = encode_body(event, self._clock())
        return await self._batcher.submit(_Item(new_salt(), body.decode("utf-8"), claims))

    async def _flush(self, items: Sequence[_Item]) -> list[Decision]:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            rows = await conn.fetch(sql.ACCESS_COMMIT, *_arguments(items), timeout=self._timeout)
        if self._on_commit is not None:
            self._on_commit()
        return _decisions(rows, len(items))


def _arguments(items: Sequence[_Item]) -> tuple[object, ...]:
    """vs_access_commit's arrays: claim rows grouped by request number, then one salt
    and one body per request."""
    req: list[int] = []
    subjects: list[uuid.UUID] = []
    budgets: list[str] = []
    limits: list[int] = []
    records: list[uuid.UUID | None] = []
    for number, item in enumerate(items, 1):
        for claim in item.claims:
            # No record: the budget's state only (the headers of an empty page).
            for record_id in claim.record_ids or (None,):
                req.append(number)
                subjects.append(claim.subject)
                budgets.append(claim.budget)
                limits.append(claim.limit)
                records.append(record_id)
    return (
        req,
        subjects,
        budgets,
        limits,
        records,
        [item.salt for item in items],
        [item.body for item in items],
    )


def _decisions(rows: Sequence[asyncpg.Record], count: int) -> list[Decision]:
    decisions = [NO_BUDGET] * count
    for row in rows:
        decisions[row["req"] - 1] = _decision(row)
    return decisions


def entry_arguments(event: AccessEvent, claims: Sequence[BudgetClaim] = ()) -> tuple[object, ...]:
    """vs_access_commit's arguments for one request, for a write whose own statement
    makes its entry durable (vs_create_record)."""
    return _arguments(
        (_Item(new_salt(), encode_body(event, wall_clock_us()).decode("utf-8"), claims),)
    )


def decision_of(row: asyncpg.Record) -> Decision:
    """The decision in a row with vs_access_commit's output columns."""
    return _decision(row)


def _decision(row: asyncpg.Record) -> Decision:
    if row["budget"] is None:
        return NO_BUDGET
    return Decision(
        bool(row["refused"]),
        row["budget"],
        row["lim"],
        row["remaining"],
        row["reset_s"],
        row["refusals"],
    )


async def add_in_transaction(
    conn: Connection, event: AccessEvent, claims: Sequence[BudgetClaim] = ()
) -> Decision:
    """Make `event` durable, and decide `claims`, in the transaction open on `conn` (a
    write's own): the write and its entry commit together. Any failure here is the
    log's: the caller's transaction is rolled back and the client gets 503
    audit_unavailable. A refusal by budget is returned, its entry stored as a refusal
    in the same transaction: the caller raises, and everything is rolled back."""
    if not conn.is_in_transaction():
        raise AuditUnavailable("an entry for a write needs the write's transaction")
    item = _Item(new_salt(), encode_body(event, wall_clock_us()).decode("utf-8"), claims)
    try:
        rows = await conn.fetch(sql.ACCESS_COMMIT, *_arguments((item,)))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        _failed.add(1, {"reason": type(exc).__name__})
        log.error("audit_sequence_failed", error_type=type(exc).__name__)
        raise AuditUnavailable() from None
    return _decisions(rows, 1)[0]
