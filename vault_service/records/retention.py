"""Record retention by the decree, legal holds and crypto-shredding.

The rule: a record is readable until the youth's 26th birthday (`retention_age_years`)
or, when later and `retention_programme_end` is set, the end of the programme. The
service computes that day when it writes a record (the birth date and the programme
are encrypted) and stores it, rounded up to the first of a month, in
`records.retain_until`; `retention run` dates the records written before that
(decrypting their two fields once), then anonymises and purges.

Anonymising or erasing deletes the record's row: its wrapped record key, every
ciphertext and every blind-index row go in one statement, and only the `internal`
codes stay (`anonymised_records`) until purged. Nothing caches record keys: the
service unwraps one from its row for each request (records/sealing.py), so a record
erased is unreadable by every running replica from the commit on.

Decisions run on an admin's own login, in SECURITY DEFINER functions that take the
actor from the login, ask a second admin to approve, and log each act in its own
transaction (migrations/0013_retention.sql).
"""

from __future__ import annotations

import calendar
import datetime
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import msgspec
import structlog

from vault_service.auth.acts import SHARED_REFUSALS, ActFamily
from vault_service.errors import BadRequest, Conflict, NotFound

__all__ = [
    "ERASE_REASONS",
    "HOLD_REASONS",
    "RELEASE_REASONS",
    "RecordAdmin",
    "RetentionRule",
]

alerts = structlog.get_logger("vault_service.alerts")
log = structlog.get_logger(__name__)

HOLD_REASONS: Final = (
    "litigation",
    "judicial_requisition",
    "regulator_investigation",
    "fraud_investigation",
)
RELEASE_REASONS: Final = ("proceedings_closed", "hold_lifted_by_authority", "hold_in_error")
ERASE_REASONS: Final = ("data_subject_request", "unlawful_processing", "court_order")

# Session-level: one retention run at a time across every machine that schedules it.
_RUN_LOCK: Final = "SELECT pg_try_advisory_lock(hashtextextended('vault-service/retention', 0))"
_RUN_UNLOCK: Final = "SELECT pg_advisory_unlock(hashtextextended('vault-service/retention', 0))"
REQUEST_ACT: Final = "SELECT vs_request_record_act($1, $2, $3, $4)"
DECIDE: Final = "SELECT kind, record_id FROM vs_decide_record_request($1, $2)"
COUNTS: Final = "SELECT due, held, unknown, purgeable FROM vs_retention_counts($1)"
ANONYMISE: Final = "SELECT id FROM vs_retention_anonymise($1) AS id"
PURGE: Final = "SELECT id FROM vs_retention_purge($1, $2) AS id"
SELECT_REQUESTS: Final = """
SELECT id, kind, record_id, reason, requested_by, requested_at, state, decided_by, decided_at
FROM record_requests WHERE ($1::text IS NULL OR state = $1) ORDER BY requested_at, id
"""
LOG_DATED: Final = "SELECT vs_log_admin_act('records.retention.dated', 'allowed', $1)"


class NoSuchRecord(NotFound):
    code = "no_such_record"
    title = "No such record"


class RecordRequestConflict(Conflict):
    code = "record_request_conflict"
    title = "The record is not in a state this request applies to, or one is pending"


class UnderLegalHold(Conflict):
    code = "record_under_legal_hold"
    title = "The record is under legal hold: release it first"


class BadReason(BadRequest):
    code = "invalid_reason_code"
    title = "Not a reason code of this act"


# VS013 to VS015 mean something else for the account acts (auth/admin.py); VS016, a
# batch size out of range, is not a refusal of this map: it stays a database error.
_RECORD_ACTS: Final = ActFamily(
    "record_action_refused",
    {
        **SHARED_REFUSALS,
        "VS012": NoSuchRecord,
        "VS013": RecordRequestConflict,
        "VS014": UnderLegalHold,
        "VS015": BadReason,
    },
)


# --- the rule ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetentionRule:
    age_years: int = 26
    programme_end: bool = True

    def retain_until(self, values: Mapping[str, Any]) -> datetime.date | None:
        """The first of the month after the last readable day (None: no birth date).

        `values` as the service holds them: decoded request values (dates, structs)
        or decrypted JSON (strings, dicts)."""
        birth = _date(values.get("birth_date"))
        if birth is None:
            return None
        last = _add_years(birth, self.age_years)
        if self.programme_end:
            end = _date(_member(values.get("programme"), "end_date"))
            if end is not None and end > last:
                last = end
        # Rounded up so that the stored day does not give the birth date away: a
        # month's delay at most, and the masked view already shows the birth year.
        if last.day == 1:
            return last
        return (last.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)


def _member(value: Any, name: str) -> Any:
    if value is None or value is msgspec.UNSET:
        return None
    if isinstance(value, Mapping):
        return value.get(name)
    found = getattr(value, name, None)
    return None if found is msgspec.UNSET else found


def _date(value: Any) -> datetime.date | None:
    if value is None or value is msgspec.UNSET:
        return None
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        return None


def _add_years(day: datetime.date, years: int) -> datetime.date:
    year = day.year + years
    if day.month == 2 and day.day == 29 and not calendar.isleap(year):
        return datetime.date(year, 3, 1)  # born on 29 February: of age on 1 March
    return day.replace(year=year)


# --- admin acts ----------------------------------------------------------------------------
LogDecrypted = Callable[[list[uuid.UUID]], Awaitable[None]]
Backfill = Callable[[LogDecrypted], Awaitable[int]]
"""Dates the undated records, calling `log(ids)` for each batch it decrypts; how many."""


@dataclass(frozen=True, slots=True)
class RetentionReport:
    dry_run: bool
    due: int
    held: int
    undated: int
    purgeable: int
    dated: int = 0
    anonymised: int = 0
    purged: int = 0
    locked_out: bool = False
    anonymised_ids: tuple[uuid.UUID, ...] = ()
    purged_ids: tuple[uuid.UUID, ...] = ()


class RecordAdmin:
    """Holds, releases, erasures and retention runs, on a pool connected as one
    admin's own database login."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def request(self, kind: str, record_id: uuid.UUID, reason: str) -> uuid.UUID:
        allowed = {"hold": HOLD_REASONS, "release": RELEASE_REASONS, "erase": ERASE_REASONS}
        if reason not in allowed[kind]:
            raise BadReason()
        request_id = uuid.uuid4()
        async with self._pool.acquire() as conn:
            await _RECORD_ACTS.call(conn, kind, REQUEST_ACT, request_id, kind, record_id, reason)
        alerts.warning(
            "record_act_requested",
            alert=True,
            kind=kind,
            request_id=str(request_id),
            record_id=str(record_id),
            reason=reason,
        )
        return request_id

    async def decide(self, request_id: uuid.UUID, *, approve: bool) -> tuple[str, uuid.UUID]:
        async with self._pool.acquire() as conn:
            row = await _RECORD_ACTS.call(conn, "decide", DECIDE, request_id, approve)
        alerts.warning(
            "record_act_decided",
            alert=True,
            kind=row["kind"],
            request_id=str(request_id),
            record_id=str(row["record_id"]),
            approved=approve,
        )
        return str(row["kind"]), row["record_id"]

    async def requests(self, state: str | None = "pending") -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_REQUESTS, state)
        return [
            {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in dict(r).items()}
            for r in rows
        ]

    async def run(
        self,
        *,
        purge_after_days: int,
        batch_size: int,
        dry_run: bool,
        backfill: Backfill | None = None,
    ) -> RetentionReport:
        """One retention run. `backfill` dates the undated records (called only when
        some are, and not in a dry run). Safe to schedule: a run that finds another
        holding the lock does nothing; every batch is one statement, so one
        transaction with its log entries: a run stopped half-way leaves whole
        records, and the next run picks up where it stopped."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(_RUN_LOCK):
                return RetentionReport(dry_run, 0, 0, 0, 0, locked_out=True)
            try:
                counts = await _RECORD_ACTS.call(conn, "retention", COUNTS, purge_after_days)
                due, held = int(counts["due"]), int(counts["held"])
                undated, purgeable = int(counts["unknown"]), int(counts["purgeable"])
                if dry_run:
                    return RetentionReport(True, due, held, undated, purgeable)
                dated = 0
                if undated and backfill is not None:

                    async def log_decrypted(ids: list[uuid.UUID]) -> None:
                        await conn.execute(LOG_DATED, ids)

                    dated = await backfill(log_decrypted)
                    counts = await _RECORD_ACTS.call(conn, "retention", COUNTS, purge_after_days)
                    due, held = int(counts["due"]), int(counts["held"])
                    undated = int(counts["unknown"])
                anonymised: list[uuid.UUID] = []
                while True:
                    batch = [r["id"] for r in await conn.fetch(ANONYMISE, batch_size)]
                    anonymised += batch
                    if len(batch) < batch_size:
                        break
                purged: list[uuid.UUID] = []
                while True:
                    batch = [r["id"] for r in await conn.fetch(PURGE, purge_after_days, batch_size)]
                    purged += batch
                    if len(batch) < batch_size:
                        break
            finally:
                await conn.execute(_RUN_UNLOCK)
        log.info(
            "retention_run", due=due, held=held, anonymised=len(anonymised), purged=len(purged)
        )
        return RetentionReport(
            False,
            due,
            held,
            undated,
            purgeable,
            dated=dated,
            anonymised=len(anonymised),
            purged=len(purged),
            anonymised_ids=tuple(anonymised),
            purged_ids=tuple(purged),
        )
