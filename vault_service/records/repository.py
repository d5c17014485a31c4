"""Case records in PostgreSQL: every statement the records package runs, and its SQL.

SQL as named constants with explicit column lists, no string building. The services
above hold no SQL and no connection handling of their own: a method that must run
inside the caller's transaction takes its `conn` (from `transaction()`), the others
take a pooled connection for one statement.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from vault_service.batching import Batcher
from vault_service.errors import AuditUnavailable, InternalError

Connection = asyncpg.Connection | PoolConnectionProxy


def _read_failed(exc: BaseException | None) -> BaseException:
    """What every request of a failed batch of reads gets: the first request's own
    error would have been the same (the database or the pool failed)."""
    if exc is None:
        return InternalError()
    return exc


RECORD_COLUMNS: Final = (
    "r.id, r.structure_id, r.referent_id, r.branch_key_version, r.record_key, r.key_version, "
    "r.sealed, r.clear, r.version, r.created_at, r.updated_at"
)

# A caseload member: the referent, or an account with a live temporary/support assignment.
_ASSIGNED: Final = """EXISTS (
    SELECT 1 FROM record_assignments a
    WHERE a.record_id = r.id AND a.account_id = {who}
      AND a.starts_at <= now() AND (a.ends_at IS NULL OR a.ends_at > now()))"""
_GLASS: Final = """EXISTS (
    SELECT 1 FROM break_glass_grants g
    WHERE g.record_id = r.id AND g.account_id = $2 AND g.expires_at > now())"""

# The record and, in the same round trip, what the caller ($2) holds on it.
SELECT_RECORD: Final = (
    f"SELECT {RECORD_COLUMNS}, {_ASSIGNED.format(who='$2')} AS assigned, {_GLASS} AS glass "  # noqa: S608 - constants  # nosec B608
    "FROM records r WHERE r.id = $1"
)
SELECT_RECORD_FOR_UPDATE: Final = SELECT_RECORD + " FOR UPDATE OF r"
# Many reads of concurrent requests in one round trip: request n asks for record $1[n]
# as account $2[n]; one row per request, in request order, all NULL where no such
# record exists.
SELECT_RECORDS: Final = f"""
SELECT {RECORD_COLUMNS},
       {_ASSIGNED.format(who="q.account")} AS assigned,
       EXISTS (SELECT 1 FROM break_glass_grants g
               WHERE g.record_id = r.id AND g.account_id = q.account
                 AND g.expires_at > now()) AS glass
FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS q (id, account, n)
LEFT JOIN records r ON r.id = q.id
ORDER BY q.n
"""  # noqa: S608 - constants  # nosec B608

# A create in one statement (migrations 0004 and 0013): the record ($1-$7), its blind
# indexes ($8 names, $9 digests, $10 national flags), its idempotency key ($11 key, $12
# request digest), its access-log entry ($13-$19, vs_access_commit's arrays for one
# request) and its last readable day ($20, records/retention.py).
CREATE_RECORD: Final = """
SELECT version, refused, budget, lim, remaining, reset_s, refusals
FROM vs_create_dated_record($1, $2, $3, $4, $5, $6, $7, $8::text[], $9::bytea[],
                            $10::boolean[], $11, $12, $13::integer[], $14::uuid[], $15::text[],
                            $16::integer[], $17::uuid[], $18::bytea[], $19::text[], $20::date)
"""
# Raised by vs_create_record when the entry, not the record, failed.
_ENTRY_FAILED: Final = "VS102"

UPDATE_RECORD: Final = """
UPDATE records SET sealed = $2, clear = $3, version = version + 1, updated_at = now()
WHERE id = $1 AND version = $4
RETURNING version, updated_at
"""

# The last readable day (records/retention.py): metadata of the record, not a
# change of its contents, so neither its version nor its ETag moves.
SET_RETAIN_UNTIL: Final = "UPDATE records SET retain_until = $2 WHERE id = $1"
SELECT_UNDATED: Final = f"""
SELECT {RECORD_COLUMNS} FROM records r
WHERE r.retain_until IS NULL AND r.id > $1
ORDER BY r.id
LIMIT $2
"""  # noqa: S608 - constants  # nosec B608
SET_RETAIN_UNTIL_IF_UNDATED: Final = """
UPDATE records r SET retain_until = u.day
FROM unnest($1::uuid[], $2::date[]) AS u (id, day)
WHERE r.id = u.id AND r.retain_until IS NULL
"""

INSERT_INDEX: Final = """
INSERT INTO record_index (record_id, structure_id, name, digest)
SELECT $1, CASE WHEN u.national THEN NULL ELSE $2::uuid END, u.n, u.d
FROM unnest($3::text[], $4::bytea[], $5::bool[]) AS u (n, d, national)
ON CONFLICT DO NOTHING
"""
DELETE_INDEX: Final = "DELETE FROM record_index WHERE record_id = $1 AND name = ANY($2::text[])"

SELECT_IDEMPOTENCY: Final = """
SELECT request_digest, record_id FROM idempotency_keys WHERE account_id = $1 AND key = $2
"""

# Equality search: records whose index rows match every (name, digest) pair given,
# restricted to what the caller may see ($4 structure, $5 referent or NULL), paged by id.
SEARCH: Final = f"""
SELECT {RECORD_COLUMNS} FROM records r
WHERE r.id IN (
    SELECT i.record_id FROM record_index i
    JOIN unnest($1::text[], $2::bytea[]) AS q (n, d) ON i.name = q.n AND i.digest = q.d
    GROUP BY i.record_id HAVING count(DISTINCT i.name) = $3
)
  AND r.structure_id = $4
  AND ($5::uuid IS NULL OR r.referent_id = $5 OR {_ASSIGNED.format(who="$5")})
  AND r.id > $6
ORDER BY r.id
LIMIT $7
"""  # noqa: S608 - constant  # nosec B608

# Honeytokens are in nobody's caseload; a supervisor's structure-wide list meets them
# and the service leaves them out (records/service.py): listing one is not a sign of
# anything.
CASELOAD: Final = f"""
SELECT {RECORD_COLUMNS} FROM records r
WHERE r.structure_id = $1
  AND ($2::uuid IS NULL OR r.referent_id = $2 OR {_ASSIGNED.format(who="$2")})
  AND r.id > $3
ORDER BY r.id
LIMIT $4
"""  # noqa: S608 - constant  # nosec B608

SELECT_TRANSFER_TARGET: Final = """
SELECT id, role, structure_id, state, activated_at FROM accounts WHERE id = $1
"""
# Grants on a record that moves to another structure end now: they were opened for a
# reason in the old structure.
END_GRANTS: Final = """
UPDATE break_glass_grants SET expires_at = greatest(now(), opened_at + interval '1 millisecond')
WHERE record_id = $1 AND expires_at > now()
"""
# Both re-tag the row (sealed, $6/$4) for its next version: the caller read it locked
# at version $5/$3.
MOVE_RECORD: Final = """
UPDATE records SET structure_id = $2, referent_id = $3, branch_key_version = $4, record_key = $5,
                   sealed = $7, version = version + 1, updated_at = now()
WHERE id = $1 AND version = $6
RETURNING version
"""
SET_REFERENT: Final = """
UPDATE records SET referent_id = $2, sealed = $4, version = version + 1, updated_at = now()
WHERE id = $1 AND version = $3
RETURNING version
"""
DELETE_ASSIGNMENTS: Final = "DELETE FROM record_assignments WHERE record_id = $1"
DELETE_STRUCTURE_INDEX: Final = (
    "DELETE FROM record_index WHERE record_id = $1 AND structure_id IS NOT NULL"
)
UPSERT_ASSIGNMENT: Final = """
INSERT INTO record_assignments (record_id, account_id, kind, ends_at, created_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (record_id, account_id) DO UPDATE SET kind = EXCLUDED.kind, ends_at = EXCLUDED.ends_at,
    starts_at = now(), created_by = EXCLUDED.created_by
"""

# Cross-structure transfer requests. A pending request past its expiry is expired in
# effect; its row says so once the record is asked for again (the one pending slot per
# record is then freed in the asking transaction).
_TRANSFER_COLUMNS: Final = (
    "id, record_id, from_structure, to_structure, to_account, requested_by, requested_at, "
    "expires_at, state"
)
EXPIRE_TRANSFER_REQUESTS: Final = """
UPDATE transfer_requests SET state = 'expired', decided_at = expires_at
WHERE record_id = $1 AND state = 'pending' AND expires_at <= now()
"""
# Nothing inserted (no row returned): a request for this record is already pending.
INSERT_TRANSFER_REQUEST: Final = """
INSERT INTO transfer_requests (id, record_id, from_structure, to_structure, to_account,
                               requested_by, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(days => $7))
ON CONFLICT (record_id) WHERE state = 'pending' DO NOTHING
RETURNING expires_at
"""
# `expired` by the database's clock, the one that dated the request.
SELECT_TRANSFER_REQUEST: Final = (
    f"SELECT {_TRANSFER_COLUMNS}, expires_at <= now() AS expired "  # noqa: S608 - constants  # nosec B608
    "FROM transfer_requests WHERE id = $1"
)
SELECT_TRANSFER_REQUEST_FOR_UPDATE: Final = SELECT_TRANSFER_REQUEST + " FOR UPDATE"
DECIDE_TRANSFER_REQUEST: Final = """
UPDATE transfer_requests SET state = $2, decided_by = $3, decided_at = now()
WHERE id = $1 AND state = 'pending'
"""
INCOMING_TRANSFER_REQUESTS: Final = f"""
SELECT {_TRANSFER_COLUMNS} FROM transfer_requests
WHERE to_structure = $1 AND state = 'pending' AND expires_at > now() AND id > $2
ORDER BY id LIMIT $3
"""  # noqa: S608 - constants  # nosec B608
OUTGOING_TRANSFER_REQUESTS: Final = f"""
SELECT {_TRANSFER_COLUMNS} FROM transfer_requests
WHERE from_structure = $1 AND state = 'pending' AND expires_at > now() AND id > $2
ORDER BY id LIMIT $3
"""  # noqa: S608 - constants  # nosec B608

RECORD_EXISTS: Final = "SELECT r.structure_id FROM records r WHERE r.id = $1"
# Serialises one account's grants (transaction-scoped) so the daily limit cannot be raced.
LOCK_ACCOUNT_GRANTS: Final = "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 42))"
COUNT_RECENT_GRANTS: Final = """
SELECT count(*) FROM break_glass_grants
WHERE account_id = $1 AND opened_at > now() - interval '1 day'
"""
INSERT_GRANT: Final = """
INSERT INTO break_glass_grants (id, record_id, account_id, structure_id, reason, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(mins => $6))
RETURNING opened_at, expires_at
"""
SELECT_REVIEW_QUEUE: Final = """
SELECT id, record_id, account_id, reason, opened_at, expires_at
FROM break_glass_grants
WHERE structure_id = $1 AND reviewed_by IS NULL AND id > $2
ORDER BY id LIMIT $3
"""
# Auditors: every break-the-glass grant and its review, in id order (a uuid cursor),
# optionally only those awaiting review or only those reviewed.
SELECT_GRANTS_FOR_AUDIT: Final = """
SELECT id, record_id, account_id, structure_id, reason, opened_at, expires_at,
       reviewed_by, reviewed_at, review_outcome
FROM break_glass_grants
WHERE ($1::text IS NULL
       OR ($1 = 'pending' AND reviewed_by IS NULL)
       OR ($1 = 'reviewed' AND reviewed_by IS NOT NULL))
  AND id > $2
ORDER BY id
LIMIT $3
"""
# The same, newest grant first (the console's list): the cursor's grant bounds the page
# from above in (opened_at, id) order; no cursor ($2 NULL) starts from the newest.
SELECT_GRANTS_FOR_AUDIT_NEWEST: Final = """
SELECT id, record_id, account_id, structure_id, reason, opened_at, expires_at,
       reviewed_by, reviewed_at, review_outcome
FROM break_glass_grants
WHERE ($1::text IS NULL
       OR ($1 = 'pending' AND reviewed_by IS NULL)
       OR ($1 = 'reviewed' AND reviewed_by IS NOT NULL))
  AND ($2::uuid IS NULL
       OR (opened_at, id) < (SELECT g.opened_at, g.id FROM break_glass_grants g WHERE g.id = $2))
ORDER BY opened_at DESC, id DESC
LIMIT $3
"""
REVIEW_GRANT: Final = """
UPDATE break_glass_grants SET reviewed_by = $3, reviewed_at = now(), review_outcome = $4
WHERE id = $1 AND structure_id = $2 AND reviewed_by IS NULL AND account_id <> $3
RETURNING record_id, account_id
"""


class IdempotencyRace(Exception):
    """Another request stored the same idempotency key first."""


class RecordRepository:
    __slots__ = ("_pool", "_reads")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        # A round trip to PostgreSQL costs more than the query of one record: the
        # reads of concurrent requests share one (see batching.py).
        self._reads: Batcher[tuple[uuid.UUID, uuid.UUID], asyncpg.Record | None] = Batcher(
            self._fetch_many, error=_read_failed, max_batch=128, max_in_flight=4
        )
        self._reads.start()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    # --- one record -----------------------------------------------------------------------
    def fetch(
        self, record_id: uuid.UUID, account_id: uuid.UUID
    ) -> Coroutine[Any, Any, asyncpg.Record | None]:
        """The record with the caller's `assigned` and `glass` flags (None: no such
        record), read together with other requests' in one round trip."""
        return self._reads.submit((record_id, account_id))

    async def _fetch_many(
        self, wanted: Sequence[tuple[uuid.UUID, uuid.UUID]]
    ) -> list[asyncpg.Record | None]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_RECORDS, [w[0] for w in wanted], [w[1] for w in wanted])
        return [row if row["id"] is not None else None for row in rows]

    async def fetch_for_update(
        self, conn: Connection, record_id: uuid.UUID, account_id: uuid.UUID
    ) -> asyncpg.Record | None:
        """As `fetch`, the row locked until the caller's transaction ends."""
        return await conn.fetchrow(SELECT_RECORD_FOR_UPDATE, record_id, account_id)

    async def create(
        self,
        *,
        record_id: uuid.UUID,
        structure_id: uuid.UUID,
        referent_id: uuid.UUID,
        branch_key_version: int,
        record_key: bytes,
        sealed: bytes,
        clear: str,
        index_names: Sequence[str],
        index_digests: Sequence[bytes],
        index_national: Sequence[bool],
        idempotency_key: str | None,
        request_digest: bytes | None,
        entry: Sequence[object],
        retain_until: datetime.date | None = None,
    ) -> asyncpg.Record:
        """The record, its indexes, its idempotency key and its access-log entry
        (`entry`: vs_access_commit's arguments) in one statement: the new version and
        the entry's budget decision. AuditUnavailable when the entry could not be made
        durable (nothing was written); IdempotencyRace when a concurrent request with
        the same key won (nothing of ours was written; look the winner up)."""
        try:
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(
                    CREATE_RECORD,
                    record_id,
                    structure_id,
                    referent_id,
                    branch_key_version,
                    record_key,
                    sealed,
                    clear,
                    index_names,
                    index_digests,
                    index_national,
                    idempotency_key,
                    request_digest,
                    *entry,
                    retain_until,
                )
        except asyncpg.UniqueViolationError:
            # Whatever else collided than an idempotency key is not ours to explain.
            if idempotency_key is None:
                raise
            raise IdempotencyRace() from None
        except (asyncpg.QueryCanceledError, asyncpg.PostgresError) as exc:
            if isinstance(exc, asyncpg.QueryCanceledError) or exc.sqlstate == _ENTRY_FAILED:
                raise AuditUnavailable() from None
            raise
        assert row is not None  # the function always returns its one row
        return row

    async def idempotency(self, account_id: uuid.UUID, key: str) -> asyncpg.Record | None:
        """(`request_digest`, `record_id`) stored under an account's idempotency key."""
        async with self._pool.acquire() as conn:
            return await conn.fetchrow(SELECT_IDEMPOTENCY, account_id, key)

    async def update(
        self,
        conn: Connection,
        record_id: uuid.UUID,
        sealed: bytes,
        clear: str,
        expected_version: int,
    ) -> asyncpg.Record | None:
        """(`version`, `updated_at`), or None when the version moved meanwhile."""
        return await conn.fetchrow(UPDATE_RECORD, record_id, sealed, clear, expected_version)

    async def set_retain_until(
        self, conn: Connection, record_id: uuid.UUID, day: datetime.date | None
    ) -> None:
        await conn.execute(SET_RETAIN_UNTIL, record_id, day)

    async def undated(self, after: uuid.UUID, limit: int) -> list[asyncpg.Record]:
        """Up to `limit` records after `after` whose last readable day is not set."""
        async with self._pool.acquire() as conn:
            return await conn.fetch(SELECT_UNDATED, after, limit)

    async def date_undated(
        self, record_ids: Sequence[uuid.UUID], days: Sequence[datetime.date | None]
    ) -> None:
        """Set the days of records still undated (a concurrent write's day wins)."""
        async with self._pool.acquire() as conn:
            await conn.execute(SET_RETAIN_UNTIL_IF_UNDATED, record_ids, days)

    async def replace_indexes(
        self,
        conn: Connection,
        record_id: uuid.UUID,
        structure_id: uuid.UUID,
        replaced: Sequence[str],
        names: Sequence[str],
        digests: Sequence[bytes],
        national: Sequence[bool],
    ) -> None:
        """Drop the record's index rows named in `replaced`, then add the given ones."""
        await conn.execute(DELETE_INDEX, record_id, replaced)
        await conn.execute(INSERT_INDEX, record_id, structure_id, names, digests, national)

    # --- pages ----------------------------------------------------------------------------
    async def search_page(
        self,
        names: Sequence[str],
        digests: Sequence[bytes],
        structure_id: uuid.UUID,
        referent_id: uuid.UUID | None,
        after: uuid.UUID,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Up to `limit` records after `after` matching every (name, digest) pair."""
        async with self._pool.acquire() as conn:
            return await conn.fetch(
                SEARCH,
                names,
                digests,
                len(set(names)),
                structure_id,
                referent_id,
                after,
                limit,
            )

    async def caseload_page(
        self, structure_id: uuid.UUID, referent_id: uuid.UUID | None, after: uuid.UUID, limit: int
    ) -> list[asyncpg.Record]:
        """Up to `limit` records after `after`: a structure's, or one counsellor's."""
        async with self._pool.acquire() as conn:
            return await conn.fetch(CASELOAD, structure_id, referent_id, after, limit)

    # --- custody: transfers ---------------------------------------------------------------
    async def transfer_target(
        self, conn: Connection, account_id: uuid.UUID
    ) -> asyncpg.Record | None:
        """(`id`, `role`, `structure_id`, `state`) of the account a record goes to."""
        return await conn.fetchrow(SELECT_TRANSFER_TARGET, account_id)

    async def assign(
        self,
        conn: Connection,
        record_id: uuid.UUID,
        account_id: uuid.UUID,
        kind: str,
        until: datetime.datetime | None,
        created_by: uuid.UUID,
    ) -> None:
        await conn.execute(UPSERT_ASSIGNMENT, record_id, account_id, kind, until, created_by)

    async def set_referent(
        self,
        conn: Connection,
        record_id: uuid.UUID,
        referent_id: uuid.UUID,
        version: int,
        sealed: bytes,
    ) -> int:
        """A new referent in the same structure; every assignment ends. The new version."""
        new_version = await conn.fetchval(SET_REFERENT, record_id, referent_id, version, sealed)
        if new_version is None:
            raise InternalError()  # the row changed under its lock: never expected
        await conn.execute(DELETE_ASSIGNMENTS, record_id)
        return int(new_version)

    async def move(
        self,
        conn: Connection,
        record_id: uuid.UUID,
        structure_id: uuid.UUID,
        referent_id: uuid.UUID,
        branch_key_version: int,
        record_key: bytes,
        names: Sequence[str],
        digests: Sequence[bytes],
        version: int,
        sealed: bytes,
    ) -> int:
        """Another structure: the rewrapped record key, the structure-scoped indexes
        recomputed under that structure's keys, no assignment and no live break-the-glass
        grant left. The new version."""
        await conn.execute(DELETE_STRUCTURE_INDEX, record_id)
        await conn.execute(
            INSERT_INDEX, record_id, structure_id, names, digests, [False] * len(names)
        )
        await conn.execute(DELETE_ASSIGNMENTS, record_id)
        await conn.execute(END_GRANTS, record_id)
        new_version = await conn.fetchval(
            MOVE_RECORD,
            record_id,
            structure_id,
            referent_id,
            branch_key_version,
            record_key,
            version,
            sealed,
        )
        if new_version is None:
            raise InternalError()
        return int(new_version)

    # --- custody: cross-structure transfer requests --------------------------------------------
    async def request_transfer(
        self,
        conn: Connection,
        transfer_id: uuid.UUID,
        record_id: uuid.UUID,
        from_structure: uuid.UUID,
        to_structure: uuid.UUID,
        to_account: uuid.UUID,
        requested_by: uuid.UUID,
        days: int,
    ) -> datetime.datetime | None:
        """A pending request, after expiring the record's lapsed one: its expiry, or
        None when another request for the record is still pending (nothing written)."""
        await conn.execute(EXPIRE_TRANSFER_REQUESTS, record_id)
        expires_at: datetime.datetime | None = await conn.fetchval(
            INSERT_TRANSFER_REQUEST,
            transfer_id,
            record_id,
            from_structure,
            to_structure,
            to_account,
            requested_by,
            days,
        )
        return expires_at

    async def transfer_request(
        self, conn: Connection, transfer_id: uuid.UUID, *, lock: bool = False
    ) -> asyncpg.Record | None:
        """The request with its `expired` flag; `lock`: the row locked until the
        caller's transaction ends."""
        query = SELECT_TRANSFER_REQUEST_FOR_UPDATE if lock else SELECT_TRANSFER_REQUEST
        return await conn.fetchrow(query, transfer_id)

    async def decide_transfer(
        self, conn: Connection, transfer_id: uuid.UUID, state: str, decided_by: uuid.UUID
    ) -> None:
        """Accepted, declined or cancelled: the caller holds the row's lock and has
        checked that it is pending."""
        done = await conn.execute(DECIDE_TRANSFER_REQUEST, transfer_id, state, decided_by)
        if done != "UPDATE 1":
            raise InternalError()

    async def transfer_requests(
        self, structure_id: uuid.UUID, incoming: bool, after: uuid.UUID, limit: int
    ) -> list[asyncpg.Record]:
        """Live pending requests into (`incoming`) or out of a structure, by id."""
        query = INCOMING_TRANSFER_REQUESTS if incoming else OUTGOING_TRANSFER_REQUESTS
        async with self._pool.acquire() as conn:
            return await conn.fetch(query, structure_id, after, limit)

    # --- custody: break-the-glass ---------------------------------------------------------------
    async def lock_account_grants(self, conn: Connection, account_id: uuid.UUID) -> None:
        await conn.execute(LOCK_ACCOUNT_GRANTS, str(account_id))

    async def recent_grants(self, conn: Connection, account_id: uuid.UUID) -> int:
        """Grants the account opened in the last 24 hours."""
        return int(await conn.fetchval(COUNT_RECENT_GRANTS, account_id))

    async def record_structure(self, conn: Connection, record_id: uuid.UUID) -> uuid.UUID | None:
        """The record's structure (None: no such record)."""
        structure: uuid.UUID | None = await conn.fetchval(RECORD_EXISTS, record_id)
        return structure

    async def insert_grant(
        self,
        conn: Connection,
        grant_id: uuid.UUID,
        record_id: uuid.UUID,
        account_id: uuid.UUID,
        structure_id: uuid.UUID,
        reason: str,
        minutes: int,
    ) -> asyncpg.Record:
        """(`opened_at`, `expires_at`) of the new grant."""
        row = await conn.fetchrow(
            INSERT_GRANT, grant_id, record_id, account_id, structure_id, reason, minutes
        )
        assert row is not None  # INSERT ... RETURNING always returns its row
        return row

    async def review_queue(
        self, structure_id: uuid.UUID, after: uuid.UUID, limit: int
    ) -> list[asyncpg.Record]:
        async with self._pool.acquire() as conn:
            return await conn.fetch(SELECT_REVIEW_QUEUE, structure_id, after, limit)

    async def grants_for_audit(
        self, state: str | None, after: uuid.UUID | None, limit: int, *, newest_first: bool
    ) -> list[asyncpg.Record]:
        async with self._pool.acquire() as conn:
            if newest_first:
                return await conn.fetch(SELECT_GRANTS_FOR_AUDIT_NEWEST, state, after, limit)
            return await conn.fetch(
                SELECT_GRANTS_FOR_AUDIT, state, after or uuid.UUID(int=0), limit
            )

    async def review_grant(
        self,
        conn: Connection,
        grant_id: uuid.UUID,
        structure_id: uuid.UUID,
        reviewer_id: uuid.UUID,
        outcome: str,
    ) -> asyncpg.Record | None:
        """(`record_id`, `account_id`), or None: no such unreviewed grant in the
        structure, or the reviewer's own (nobody reviews their own grant)."""
        return await conn.fetchrow(REVIEW_GRANT, grant_id, structure_id, reviewer_id, outcome)
