"""The aggregate behind GET /v1/stats, rebuilt as a whole from the records.

The rebuild reads every record in batches, opens only the fields a dimension needs
(`STATS_FIELDS`: sex, birth date, situations; never a name, a contact, the NIR or a
note) through the one sealing path (records/sealing.py, which also checks each row's
integrity tag), turns them into codes at once (a sex, an age band, a situation
kind), and keeps nothing but counts per combination of codes. Canaries never count
(the service recognises them by their tag, limits/honeytokens.py); anonymised and
erased records have no row left in `records` (records/retention.py), so they drop
out of every count at the next rebuild; until then the counts are those of the last
rebuild (at most `stats_refresh_seconds` old, `refreshed_at` in every answer).

The counts replace the previous ones in one transaction, with one access-log entry
saying which fields of how many records were opened (`stats.refresh`, no id).
Run every `stats_refresh_seconds` by whichever replica takes the round first, and
by operators with `vault-service stats refresh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import msgspec
import structlog

from vault_service.audit.recording import build_event
from vault_service.audit.sequencer import add_in_transaction
from vault_service.errors import (
    ConfigurationError,
    DecryptionFailed,
    KmsUnavailable,
    RecordIntegrityFailed,
)
from vault_service.limits.defence import Alerts
from vault_service.records.schema import RecordSchema
from vault_service.records.sealing import Sealer, clear_values
from vault_service.stats import repository as sql

__all__ = ["AGE_BANDS", "STATS_FIELDS", "Refresh", "StatsJob", "StatsRefresher", "codes_of"]

log = structlog.get_logger(__name__)

STATS_FIELDS: Final = ("sex", "birth_date", "situations")
"""The only encrypted fields the rebuild opens."""
AGE_BANDS: Final = ("under_16", "16_17", "18_21", "22_25", "26_plus", "unknown")
NO_SITUATION: Final = "none"
NO_PROGRAMME: Final = "none"
UNKNOWN: Final = "unknown"

Key = tuple[datetime.date, uuid.UUID, str, str, str, str]


def _age_band(birth: object, at: datetime.date) -> str:
    if not isinstance(birth, str):
        return UNKNOWN
    try:
        born = datetime.date.fromisoformat(birth)
    except ValueError:
        return UNKNOWN
    age = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
    if age < 16:
        return "under_16"
    if age < 18:
        return "16_17"
    if age < 22:
        return "18_21"
    if age < 26:
        return "22_25"
    return "26_plus"


def codes_of(
    values: Mapping[str, Any], clear: Mapping[str, Any], entered: datetime.date
) -> tuple[str, str, str, str]:
    """(programme, situation, age band at entry, sex) of one record's opened fields."""
    programme = clear.get("programme_kind")
    situations = values.get("situations")
    situation = NO_SITUATION
    if isinstance(situations, list) and situations and isinstance(situations[0], dict):
        # Most recent first (the schema's order).
        situation = str(situations[0].get("kind") or NO_SITUATION)
    sex = values.get("sex")
    return (
        str(programme) if isinstance(programme, str) else NO_PROGRAMME,
        situation,
        _age_band(values.get("birth_date"), entered),
        str(sex) if isinstance(sex, str) else UNKNOWN,
    )


@dataclass(frozen=True, slots=True)
class Refresh:
    refreshed_at: datetime.datetime
    records: int  # counted
    canaries: int  # read and left out
    failed: int  # unreadable (integrity or decryption): left out, logged
    cells: int  # rows of the aggregate


_NEVER_OPENED: Final = frozenset({"national_id", "contact", "special_category", "financial"})


def check_fields(schema: RecordSchema) -> None:
    """Refuse to start a rebuild that would open more than a dimension needs: a
    field of a sensitivity never aggregated, a free-text one, or a name (anything
    indexed with the name normaliser)."""
    for name in STATS_FIELDS:
        plan = schema.fields.get(name)
        if (
            plan is None
            or plan.sensitivity in _NEVER_OPENED
            or (plan.index is not None and plan.index.normalise == "name")
            or name == "notes"
        ):
            raise ConfigurationError(f"the statistics may not open the field {name}")


class StatsRefresher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sealer: Sealer,
        is_canary: Callable[[uuid.UUID], bool],
        *,
        batch_size: int = 1000,
        alerts: Alerts | None = None,
    ) -> None:
        check_fields(sealer.schema)
        self._alerts = alerts
        self._alerted: set[uuid.UUID] = set()
        self._pool = pool
        self._sealer = sealer
        self._is_canary = is_canary
        self._batch = batch_size

    async def refresh(self, conn: Any | None = None) -> Refresh:
        """Rebuild the aggregate (on `conn` when given: a leader's connection)."""
        if conn is None:
            async with self._pool.acquire() as own:
                return await self._refresh(own)
        return await self._refresh(conn)

    async def _refresh(self, conn: Any) -> Refresh:
        counts: Counter[Key] = Counter()
        canaries = failed = records = 0
        tampered: list[tuple[uuid.UUID, uuid.UUID]] = []
        after = uuid.UUID(int=0)
        while True:
            rows = await conn.fetch(sql.RECORDS_PAGE, after, self._batch)
            if not rows:
                break
            after = rows[-1]["id"]
            for row in rows:
                if self._is_canary(row["id"]):
                    canaries += 1
                    continue
                try:
                    record_key = await self._sealer.record_key(row)
                    values = self._sealer.decrypt_values(row, record_key, STATS_FIELDS)
                except KmsUnavailable:
                    raise  # no partial aggregate: the previous one stays
                except (DecryptionFailed, msgspec.DecodeError) as exc:
                    failed += 1
                    if isinstance(exc, RecordIntegrityFailed):
                        tampered.append((row["id"], row["structure_id"]))
                    continue
                created: datetime.datetime = row["created_at"]
                entered = created.astimezone(datetime.UTC).date()
                month = entered.replace(day=1)
                programme, situation, band, sex = codes_of(values, clear_values(row), entered)
                counts[(month, row["structure_id"], programme, situation, band, sex)] += 1
                records += 1
        keys = list(counts)
        columns = [list(col) for col in zip(*keys, strict=True)] if keys else [[]] * 6
        event = msgspec.structs.replace(
            build_event(None, {}, "stats.refresh", "allowed", fields=STATS_FIELDS),
            count=max(records, 1),
        )
        async with conn.transaction():
            await conn.execute(sql.LOCK, sql.REFRESH_LOCK_ID)
            await conn.execute(sql.CLEAR)
            await conn.execute(sql.INSERT, *columns, [counts[k] for k in keys])
            at: datetime.datetime = await conn.fetchval(sql.MARK, records, canaries, failed)
            await add_in_transaction(conn, event)
        if failed:
            log.warning("stats_records_unreadable", count=failed)
        await self._alert(conn, tampered)
        log.info("stats_refreshed", records=records, cells=len(keys))
        return Refresh(at, records, canaries, failed, len(keys))

    async def _alert(self, conn: Any, tampered: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """A row that fails its integrity check was written by someone holding the
        database: the critical alert a read of it raises, once per record (the
        rebuild meets it again every round)."""
        if self._alerts is None:
            return
        for record_id, structure_id in tampered[:100]:
            if record_id in self._alerted or await conn.fetchval(
                sql.INTEGRITY_ALERTED, str(record_id)
            ):
                continue
            await self._alerts.raise_on(
                conn,
                "critical",
                "record.integrity_failed",
                account_id=None,
                structure_id=structure_id,
                details={"record_id": str(record_id)},
            )
            if len(self._alerted) < 10_000:
                self._alerted.add(record_id)


class StatsJob:
    """The scheduled rebuild. Every process with an interval wakes every `interval`
    seconds; the first to take the round's lock rebuilds if the aggregate is older
    than the interval, the others find it fresh and sleep (no process keeps a lead,
    so a replica with a shorter interval is never held back by one with a longer)."""

    def __init__(self, pool: asyncpg.Pool, refresher: StatsRefresher, interval: float) -> None:
        self._pool = pool
        self._refresher = refresher
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def round(self) -> Refresh | None:
        """One round: the rebuild, or None when another process has the round or the
        aggregate is fresh."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(sql.TRY_ROUND, sql.ROUND_LOCK_ID):
                return None
            try:
                if await conn.fetchval(sql.FRESH, self._interval):
                    return None
                return await self._refresher.refresh(conn)
            finally:
                await conn.fetchval(sql.END_ROUND, sql.ROUND_LOCK_ID)

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the schedule must outlive a failed round
                log.warning("stats_refresh_failed", error_type=type(exc).__name__)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="stats-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
