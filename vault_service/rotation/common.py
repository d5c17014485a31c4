"""What every rotation shares: its lock."""

from __future__ import annotations

import asyncpg

from vault_service.errors import Conflict
from vault_service.rotation import repository as sql


class RotationInProgress(Conflict):
    code = "rotation_in_progress"
    title = "The same rotation is running elsewhere"


async def acquire(conn: asyncpg.Connection, kind: str) -> None:
    """A session lock: released by `release`, or by PostgreSQL when the session ends
    (a killed run included)."""
    if not await conn.fetchval(sql.TRY_LOCK, sql.LOCK_IDS[kind]):
        raise RotationInProgress(
            f"another `keys rotate {kind}` is running; this one did nothing "
            "(rerun it once the other has finished)"
        )


async def release(conn: asyncpg.Connection, kind: str) -> None:
    await conn.fetchval(sql.UNLOCK, sql.LOCK_IDS[kind])
