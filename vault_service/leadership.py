"""One leader among the replicas for a background job, by a PostgreSQL advisory lock.

The lock is a session lock held on a pooled connection that the leader keeps for as
long as it leads; it dies with that session, so a leader that crashes or loses its
connection is replaced at the next attempt of another replica. Used by the checkpoint
publisher, the access-log integrator, the anomaly rules and the alert webhook, each
with its own lock id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

TRY_LEADER: Final = "SELECT pg_try_advisory_lock($1)"
RELEASE_LEADER: Final = "SELECT pg_advisory_unlock($1)"

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
            won = await conn.fetchval(TRY_LEADER, self._lock_id)
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
            await conn.fetchval(RELEASE_LEADER, self._lock_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            conn.terminate()  # the session lock dies with the session
        finally:
            await self._pool.release(conn)


class LeaderLoop:
    """A background task that, while this process holds `lead`, runs `work` every
    `interval` seconds (or sooner when woken), and competes for the lead every
    `retry` seconds otherwise. A failing round gives the lead up (the connection may
    be gone) and is logged under `failed_event`; the loop outlives any failure."""

    def __init__(
        self,
        lead: Leadership,
        work: Callable[[], Awaitable[object]],
        *,
        interval: float,
        name: str,
        failed_event: str,
        retry: float = 1.0,
    ) -> None:
        self._lead = lead
        self._work = work
        self._interval = interval
        self._name = name
        self._failed_event = failed_event
        self._retry = retry
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Stop the loop (the lead is kept: the owner may finish work first)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                if not await self._lead.try_lead():
                    await asyncio.sleep(self._retry)
                    continue
                await self._work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a leader's loop must outlive any failure
                log.warning(self._failed_event, error_type=type(exc).__name__)
                with contextlib.suppress(Exception):
                    await self._lead.resign()
                await asyncio.sleep(self._retry)
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
