"""The rebuild behind GET /v1/stats: closed years sealed, once each.

A round reads the records of every closed year that has no tables yet, once
`stats_seal_after_days` have passed since it closed (so that December's late data
entry counts; the year still open is never read: it is never published), in batches, opens only the
fields a dimension needs (`STATS_FIELDS`: sex, birth date, situations; never a
name, a contact, the NIR or a note) through the one sealing path
(records/sealing.py, which also checks each row's integrity tag), turns them into
codes at once (a sex, an age band at entry, the situation in effect at the end of
the month of entry), and keeps nothing but counts per combination of codes.
Canaries never count (the service recognises them by their tag,
records/honeytokens.py); anonymised and erased records have no row left in `records`
(records/retention.py).

For each such year holding records, every table an analyst may ask for is computed
(service.build_tables: one per grouping, suppressed), sealed under a fresh data key
of the year (wrapped by Vault) and written, with the year, in one transaction with
one access-log entry saying which fields of how many records were opened
(`stats.refresh`, no id). A sealed year is never read or changed again: an erasure,
a new situation or a structure moving to another region after it is sealed leaves
its tables as they were, so no two answers differ by one youth.

Run every `stats_refresh_seconds` by whichever replica takes the round first (a
round with nothing to seal reads nothing), and by operators with
`vault-service stats refresh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import multiprocessing
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import msgspec
import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.access.recording import build_event
from vault_service.access.sequencer import add_in_transaction
from vault_service.alerts.store import Alerts
from vault_service.crypto import aead
from vault_service.errors import (
    ConfigurationError,
    DecryptionFailed,
    KmsUnavailable,
    RecordIntegrityFailed,
)
from vault_service.kms import VaultKms
from vault_service.records.schema import RecordSchema
from vault_service.records.sealing import Sealer, clear_values
from vault_service.stats import repository as sql
from vault_service.stats.service import (
    GROUPINGS,
    NO_PROGRAMME,
    NO_SITUATION,
    UNKNOWN,
    build_tables,
    flat_axes,
    table_aad,
)

__all__ = ["STATS_FIELDS", "Refresh", "StatsJob", "StatsRefresher", "codes_of"]

log = structlog.get_logger(__name__)

STATS_FIELDS: Final = ("sex", "birth_date", "situations")
"""The only encrypted fields the rebuild opens."""

Key = tuple[datetime.date, str, str, str, str, str]


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


def _month_end(day: datetime.date) -> datetime.date:
    first_next = datetime.date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return first_next - datetime.timedelta(days=1)


def _date(value: object) -> datetime.date | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


def _situation_at(situations: object, at: datetime.date) -> str:
    """The kind of the situation in effect on `at`: started by then and not ended
    before, the latest started if several; `none` without one. Frozen at entry, so
    that a situation added later never changes a youth's cell."""
    if not isinstance(situations, list):
        return NO_SITUATION
    best: tuple[datetime.date, str] | None = None
    for s in situations:
        if not isinstance(s, dict):
            continue
        start, end, kind = _date(s.get("start_date")), _date(s.get("end_date")), s.get("kind")
        if start is None or not isinstance(kind, str) or start > at:
            continue
        if end is not None and end < at:
            continue
        if best is None or start > best[0]:
            best = (start, kind)
    return best[1] if best is not None else NO_SITUATION


def codes_of(
    values: Mapping[str, Any], clear: Mapping[str, Any], entered: datetime.date
) -> tuple[str, str, str, str]:
    """(programme, situation at the end of the month of entry, age band at entry,
    sex) of one record's opened fields."""
    programme = clear.get("programme_kind")
    sex = values.get("sex")
    return (
        str(programme) if isinstance(programme, str) else NO_PROGRAMME,
        _situation_at(values.get("situations"), _month_end(entered)),
        _age_band(values.get("birth_date"), entered),
        str(sex) if isinstance(sex, str) else UNKNOWN,
    )


@dataclass(frozen=True, slots=True)
class Refresh:
    refreshed_at: datetime.datetime
    years: tuple[int, ...]  # sealed by this round
    records: int  # counted
    canaries: int  # read and left out
    failed: int  # unreadable (integrity or decryption): left out, logged
    tables: int  # written


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


async def _in_a_process(*args: Any) -> dict[str, bytes]:
    """`build_tables` in a process of its own: minutes of CPU (the joint check's
    linear programmes) that hold neither the service's event loop nor its GIL."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await loop.run_in_executor(pool, build_tables, *args)


def tables_digest(year: int, names: list[str], blobs: list[bytes]) -> str:
    """The first 128 bits of SHA-256 over a year's stored tables, in grouping order:
    what the round's access-log entry names, for an auditor to compare with
    `stats_tables`."""
    h = hashlib.sha256(f"{year}".encode())
    for name, blob in sorted(zip(names, blobs, strict=True)):
        h.update(len(name).to_bytes(2, "big") + name.encode())
        h.update(len(blob).to_bytes(8, "big") + blob)
    return h.hexdigest()[:32]


def _refresh_event(opened: int, criteria: tuple[str, ...]) -> Any:
    """The round's entry: which fields of how many records it opened (canaries and
    unreadable rows included, so that the count tells nothing about either), and
    the years it sealed."""
    event = build_event(
        None, {}, "stats.refresh", "allowed", fields=STATS_FIELDS, criteria=criteria
    )
    return msgspec.structs.replace(event, count=opened) if opened > 1 else event


@dataclass(slots=True)
class _Read:
    """What one pass over the records of the years to seal gave."""

    counts: dict[int, Counter[Key]]
    opened: int = 0
    records: int = 0
    canaries: int = 0
    failed: int = 0


class StatsRefresher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sealer: Sealer,
        kms: VaultKms,
        is_canary: Callable[[uuid.UUID], bool],
        *,
        k: int,
        seal_after_days: int = 31,
        audit_seconds: float = 1800.0,
        batch_size: int = 1000,
        alerts: Alerts | None = None,
        today: Callable[[], datetime.date] | None = None,
    ) -> None:
        check_fields(sealer.schema)
        self._alerts = alerts
        self._alerted: set[uuid.UUID] = set()
        self._pool = pool
        self._sealer = sealer
        self._kms = kms
        self._is_canary = is_canary
        self._k = k
        self._seal_after = datetime.timedelta(days=seal_after_days)
        self._audit = audit_seconds
        self._batch = batch_size
        self._flat = flat_axes(sealer.schema)
        self._today = today or (lambda: datetime.datetime.now(datetime.UTC).date())
        self._sealing = asyncio.Lock()

    async def refresh(self, conn: Any | None = None) -> Refresh:
        """Seal every closed year not sealed yet (on `conn` when given: a leader's
        connection)."""
        if conn is None:
            async with self._pool.acquire() as own:
                return await self._refresh(own)
        return await self._refresh(conn)

    async def _refresh(self, conn: Any) -> Refresh:
        tampered: list[tuple[uuid.UUID, uuid.UUID]] = []
        read = await self._read(conn, tampered)
        counts, opened = read.counts, read.opened
        structures = await conn.fetch(sql.STRUCTURES)
        region_of = {str(r["id"]): str(r["region"]) for r in structures}
        prepared: list[tuple[int, Mapping[str, bytes]]] = []
        for year, year_counts in sorted(counts.items()):
            # CPU only (suppression and the joint check: minutes for a large year), in
            # a process of its own, one year at a time per process.
            async with self._sealing:
                bodies = await _in_a_process(
                    year, dict(year_counts), region_of, self._flat, self._k, self._audit
                )
            prepared.append((year, bodies))
        written, criteria = await self._seal(conn, prepared)
        tables = sum(len(b) for y, b in prepared if y in written)
        async with conn.transaction():
            if opened:
                # What the round opened, with each year it sealed and the digest of
                # that year's stored tables (an auditor can check that a year was
                # sealed once and its tables never replaced), in one entry.
                await add_in_transaction(conn, _refresh_event(opened, criteria))
            at: datetime.datetime = await conn.fetchval(sql.MARK)
        if read.failed:
            log.warning("stats_records_unreadable", count=read.failed)
        await self._alert(conn, tampered)
        log.info("stats_refreshed", years=len(written), tables=tables)
        return Refresh(at, tuple(written), read.records, read.canaries, read.failed, tables)

    async def _read(self, conn: Any, tampered: list[tuple[uuid.UUID, uuid.UUID]]) -> _Read:
        """Counts per closed year not sealed yet, from one pass over its records."""
        # A year is sealed `seal_after_days` after it closes (December's late entries).
        open_year = (self._today() - self._seal_after).year
        rows = await conn.fetch(sql.SEALED_YEARS)
        sealed = [int(r["year"]) for r in rows]
        # A seal writes its year and every table in one transaction, and only for a
        # closed year: anything else was written by someone holding the database (a
        # year marked sealed to keep it from ever being sealed, or to move the
        # forward-only bound: review).
        odd = [
            int(r["year"])
            for r in rows
            if r["tables"] != len(GROUPINGS) or r["year"] >= self._today().year
        ]
        if odd:
            await self._tampered(conn, odd)
            sealed = [y for y in sealed if y not in odd]
        # Forward only: the years after the newest sealed one (records older than it
        # that are not sealed were dated there by someone holding the database).
        since = datetime.datetime(max(sealed, default=1969) + 1, 1, 1, tzinfo=datetime.UTC)
        await self._backdated(conn, since, sealed)
        read = _Read({})
        after = uuid.UUID(int=0)
        before = datetime.datetime(open_year, 1, 1, tzinfo=datetime.UTC)
        while True:
            rows = await conn.fetch(sql.RECORDS_PAGE, after, before, sealed, self._batch, since)
            if not rows:
                return read
            after = rows[-1]["id"]
            for row in rows:
                created: datetime.datetime = row["created_at"]
                entered = created.astimezone(datetime.UTC).date()
                read.opened += 1
                if self._is_canary(row["id"]):
                    read.canaries += 1
                    continue
                try:
                    record_key = await self._sealer.record_key(row)
                    values = self._sealer.decrypt_values(row, record_key, STATS_FIELDS)
                except KmsUnavailable:
                    raise  # nothing sealed: the next round starts again
                except (DecryptionFailed, msgspec.DecodeError) as exc:
                    read.failed += 1
                    if isinstance(exc, RecordIntegrityFailed):
                        tampered.append((row["id"], row["structure_id"]))
                    continue
                programme, situation, band, sex = codes_of(values, clear_values(row), entered)
                # A year is sealed for the records it counts (a year of canaries or
                # unreadable rows only is not: review).
                bucket = read.counts.setdefault(entered.year, Counter())
                month = entered.replace(day=1)
                bucket[(month, str(row["structure_id"]), programme, situation, band, sex)] += 1
                read.records += 1

    async def _seal(
        self, conn: Any, prepared: list[tuple[int, Mapping[str, bytes]]]
    ) -> tuple[list[int], tuple[str, ...]]:
        """Each year's tables, sealed under a fresh key of the year, every year in one
        transaction; the years written (another rebuild may have sealed one first)
        and the entry's criteria: `sealed_<year>`, `tables_<digest of its rows>`."""
        sealed: list[tuple[int, str, list[str], list[bytes]]] = []
        for year, bodies in prepared:
            wrapped = await self._kms.generate_wrapped_key()
            cipher = AESGCM(await self._kms.unwrap_key(wrapped))
            names = sorted(bodies)
            blobs = [aead.seal(cipher, bodies[n], table_aad(year, n, self._k)) for n in names]
            sealed.append((year, wrapped, names, blobs))
        written: list[int] = []
        criteria: list[str] = []
        async with conn.transaction():
            await conn.execute(sql.LOCK, sql.REFRESH_LOCK_ID)
            for year, wrapped, names, blobs in sealed:
                if await conn.fetchval(sql.SEAL_YEAR, year, self._k, wrapped) is None:
                    continue  # another rebuild sealed it first
                await conn.execute(sql.INSERT_TABLES, year, names, blobs)
                written.append(year)
                criteria += [f"sealed_{year}", f"tables_{tables_digest(year, names, blobs)}"]
        return written, tuple(criteria)

    async def _tampered(self, conn: Any, years: list[int]) -> None:
        log.warning("stats_seal_tampered", years=len(years))
        await self._alert_once(
            conn, "stats.seal_tampered", {"years": ",".join(map(str, sorted(years)))}
        )

    async def _backdated(self, conn: Any, since: datetime.datetime, sealed: list[int]) -> None:
        """Records in a closed year older than the newest sealed one: never sealed (a
        year differing from another by one youth would show that youth's codes), and
        one critical alert while it is open."""
        found = int(await conn.fetchval(sql.BACKDATED, since, sealed))
        if not found:
            return
        log.warning("stats_backdated_records", count=found)
        await self._alert_once(conn, "stats.backdated_records", {"records": found})

    async def _alert_once(self, conn: Any, kind: str, details: Mapping[str, int | str]) -> None:
        """A critical alert of `kind`, unless one is open already (a round meets the
        same state every hour)."""
        if self._alerts is None or await conn.fetchval(sql.OPEN_ALERT, kind):
            return
        await self._alerts.raise_on(
            conn, "critical", kind, account_id=None, structure_id=None, details=details
        )

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
