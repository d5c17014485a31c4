"""One leader among the replicas for a background job, by a PostgreSQL advisory lock.

The lock is a session lock held on a pooled connection that the leader keeps for as
long as it leads; it dies with that session, so a leader that crashes or loses its
connection is replaced at the next attempt of another replica. Used by the checkpoint
publisher and the access-log integrator, each with its own lock id.
"""

from __future__ import annotations

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from vault_service.audit import repository as sql

log = structlog.get_logger(__name__)


class Leadership:
    def __init__(self, pool: asyncpg.Pool, lock_id: int, elected_event: str) -> None:
        self._pool = pool
        self._lock_id = lock_id
        self._event = elected_event
        self.connection: PoolConnectionProxy | None = None
        """The leader's connection (holding the lock), None when not leading."""

    @property
    def leading(self) -> bool:
        return self.connection is not None

    async def try_lead(self) -> bool:
        """Take the lock if it is free; keep its connection while leading."""
        if self.connection is not None:
            return True
        conn = await self._pool.acquire()
        try:
            won = await conn.fetchval(sql.TRY_LEADER, self._lock_id)
        except BaseException:
            await self._pool.release(conn)
            raise
        if not won:
            await self._pool.release(conn)
            return False
        self.connection = conn
        log.info(self._event)
        return True

    async def resign(self) -> None:
        conn, self.connection = self.connection, None
        if conn is None:
            return
        try:
            await conn.fetchval(sql.RELEASE_LEADER, self._lock_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            conn.terminate()  # the session lock dies with the session
        finally:
            await self._pool.release(conn)
