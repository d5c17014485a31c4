"""The SQL of a bulk import, run on an admin's own login (migration 0016): the
functions write and log together; the selects resolve the structure map."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import asyncpg

# A session lock per source: a second run of the same source anywhere is refused
# while the first one's connection lives (kill -9 included: the session ends).
TRY_LOCK: Final = "SELECT pg_try_advisory_lock(hashtextextended('vs-import:' || $1, 0))"
UNLOCK: Final = "SELECT pg_advisory_unlock(hashtextextended('vs-import:' || $1, 0))"

SELECT_STRUCTURES: Final = "SELECT id, code FROM structures WHERE code = ANY($1::text[])"
# Referents named by account id in the map: active counsellors only (anyone else's
# records go to the structure's queue).
SELECT_COUNSELLORS: Final = """
SELECT id, structure_id FROM accounts
WHERE id = ANY($1::uuid[]) AND role = 'counsellor' AND state = 'active'
"""
# Referents by their external identity at the map's issuer.
SELECT_LINKED_COUNSELLORS: Final = """
SELECT e.subject, a.id, a.structure_id FROM external_identities e
JOIN accounts a ON a.id = e.account_id
WHERE e.issuer = $1 AND a.role = 'counsellor' AND a.state = 'active'
"""
SELECT_OPEN_RUN: Final = "SELECT id FROM import_runs WHERE source = $1 AND finished_at IS NULL"
SELECT_QUEUE: Final = "SELECT account_id FROM import_queues WHERE structure_id = $1"
# Which of these legacy digests a committed batch already holds.
SELECT_PRESENT: Final = """
SELECT legacy_digest FROM import_ledger
WHERE source = $1 AND legacy_digest = ANY($2::bytea[])
"""

START_RUN: Final = "SELECT vs_import_start($1, $2)"
FINISH_RUN: Final = "SELECT vs_import_finish($1, $2, $3, $4, $5::text[], $6::integer[])"
QUEUE_ACCOUNT: Final = "SELECT vs_import_queue($1)"
IMPORT_BATCH: Final = """
SELECT vs_import_batch($1, $2, $3, $4::uuid[], $5::uuid[], $6::integer[], $7::bytea[],
                       $8::bytea[], $9::text[], $10::date[], $11::bytea[], $12::integer[],
                       $13::text[], $14::bytea[], $15::boolean[])
"""


class ImportRepository:
    """Every statement of an import. `lock` is the run's own session (its advisory lock,
    its start and end); `pool` serves the ledger look-ups and the batch writes, which
    overlap with the sealing of the next batch."""

    __slots__ = ("_lock", "_pool")

    def __init__(self, lock: asyncpg.Connection, pool: asyncpg.Pool) -> None:
        self._lock = lock
        self._pool = pool

    async def try_lock(self, source: str) -> bool:
        return bool(await self._lock.fetchval(TRY_LOCK, source))

    async def unlock(self, source: str) -> None:
        await self._lock.fetchval(UNLOCK, source)

    async def structures(self, codes: Sequence[str]) -> dict[str, uuid.UUID]:
        rows = await self._lock.fetch(SELECT_STRUCTURES, list(codes))
        return {r["code"]: r["id"] for r in rows}

    async def counsellors(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """Active counsellors among `ids`: account id -> structure id."""
        rows = await self._lock.fetch(SELECT_COUNSELLORS, list(ids))
        return {r["id"]: r["structure_id"] for r in rows}

    async def linked_counsellors(self, issuer: str) -> dict[str, tuple[uuid.UUID, uuid.UUID]]:
        """Active counsellors linked at `issuer`: subject -> (account, structure)."""
        rows = await self._lock.fetch(SELECT_LINKED_COUNSELLORS, issuer)
        return {r["subject"]: (r["id"], r["structure_id"]) for r in rows}

    async def open_run(self, source: str) -> uuid.UUID | None:
        run: uuid.UUID | None = await self._lock.fetchval(SELECT_OPEN_RUN, source)
        return run

    async def start(self, run_id: uuid.UUID, source: str) -> None:
        await self._lock.execute(START_RUN, run_id, source)

    async def finish(
        self,
        run_id: uuid.UUID,
        read: int,
        imported: int,
        skipped: int,
        refused: Mapping[str, int],
    ) -> None:
        codes = sorted(refused)
        await self._lock.execute(
            FINISH_RUN, run_id, read, imported, skipped, codes, [refused[c] for c in codes]
        )

    async def queue_account(self, structure_id: uuid.UUID, *, create: bool) -> uuid.UUID | None:
        if not create:
            found: uuid.UUID | None = await self._lock.fetchval(SELECT_QUEUE, structure_id)
            return found
        made: uuid.UUID = await self._lock.fetchval(QUEUE_ACCOUNT, structure_id)
        return made

    async def present(self, source: str, digests: Sequence[bytes]) -> set[bytes]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_PRESENT, source, list(digests))
        return {bytes(r["legacy_digest"]) for r in rows}

    async def write_batch(self, *args: Any) -> None:
        """One structure's batch: vs_import_batch's arguments, in one statement."""
        async with self._pool.acquire() as conn:
            await conn.execute(IMPORT_BATCH, *args)
