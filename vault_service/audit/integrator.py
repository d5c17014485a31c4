"""Integration: pending entries into the Merkle tree, by one leader, in the background.

Requests make their entries durable in `audit_pending` (access/sequencer.py). One
process among the replicas, the holder of an advisory lock on a connection it keeps
while it leads, moves them into the tree in id order: it gives each its leaf index,
appends leaves, bodies and tiles with the tree writer (audit/log.py), and deletes the
rows from the queue in the same statement. A crash at any point leaves every entry
either pending or in the tree; the next leader carries on.

Other processes wake the leader through no channel: it polls the queue every
`poll_seconds` when idle, and its own process wakes it after each commit. Auditors'
routes call `settle()` so that a report includes every access that finished before it
was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import asyncpg
import structlog

from vault_service.audit import repository as sql
from vault_service.audit.entry import Prepared, prepare_stored
from vault_service.audit.log import AccessLog
from vault_service.errors import AuditUnavailable, VaultServiceError
from vault_service.leadership import LeaderLoop, Leadership

__all__ = ["Integrator"]

log = structlog.get_logger(__name__)
alerts = structlog.get_logger("vault_service.alerts")
_BUDGET_SWEEP: Final = 600.0


class Integrator:
    def __init__(
        self,
        pool: asyncpg.Pool,
        access_log: AccessLog,
        *,
        batch: int = 2048,
        poll_seconds: float = 0.05,
        enabled: bool = True,
    ) -> None:
        """`enabled=False`: this process never leads (a replica that leaves integration
        to a dedicated `vault-service audit integrate` process); `settle` still works."""
        self._pool = pool
        self._log = access_log
        self._batch = batch
        self._enabled = enabled
        self._lead = Leadership(pool, sql.INTEGRATOR_LOCK_ID, "integration_leader_elected")
        self._loop = LeaderLoop(
            self._lead,
            self._round,
            interval=poll_seconds,
            name="access-log-integrator",
            failed_event="integration_round_failed",
        )
        self._swept_at = 0.0
        # The append of the last batch read from the queue, as a task of its own: a round
        # cancelled while it is in flight (stop) must not let the next read of the queue
        # see its rows, which stay pending until it commits.
        self._appending: asyncio.Task[list[int]] | None = None
        self.integrated = 0
        """Entries this process moved into the tree (tests and metrics)."""

    @property
    def is_leader(self) -> bool:
        return self._lead.leading

    def wake(self) -> None:
        self._loop.wake()

    async def start(self) -> None:
        if self._enabled:
            self._loop.start()

    async def stop(self) -> None:
        """Integrate what is pending (if leading), then stop and release the lead."""
        await self._loop.stop()
        if self._lead.leading:
            with contextlib.suppress(Exception):
                while await self.integrate_once():
                    pass
        await self._lead.resign()

    async def settle(self, within: float = 3.0) -> None:
        """Wait until every entry pending now is in the tree; AuditUnavailable if that
        takes longer than `within` seconds (an auditor's report must not look complete when
        it is not)."""
        deadline = time.monotonic() + within
        try:
            async with self._pool.acquire(timeout=within) as conn:
                high = await conn.fetchval(sql.PENDING_HIGH_WATER, timeout=within)
                if high is None:
                    return
                while await conn.fetchval(sql.PENDING_AT_OR_BELOW, high, timeout=within):
                    _check_deadline(deadline)
                    self.wake()
                    await asyncio.sleep(0.005)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.error("audit_integration_lagging", error_type=type(exc).__name__)
            raise AuditUnavailable("the access log is behind; try again shortly") from None

    # --- integration ---------------------------------------------------------------
    async def _round(self) -> None:
        while await self.integrate_once():
            pass
        await self._sweep_budgets()

    async def integrate_once(self) -> int:
        """Integrate up to `batch` pending entries; returns how many (0: none pending).
        Only the leader calls it (the lead is what keeps two integrators from
        appending the same entry twice)."""
        leader = self._lead.connection
        if leader is None:
            return 0
        await self._landed()
        rows = await leader.fetch(sql.SELECT_PENDING, self._batch)
        if not rows:
            return 0
        prepared: list[Prepared] = []
        for r in rows:
            try:
                prepared.append(prepare_stored(int(r["id"]), bytes(r["salt"]), str(r["body"])))
            except (ValueError, VaultServiceError):
                # Not an entry our code wrote: set it aside (kept, visible to auditors)
                # rather than let it stop the tree; someone must look at it.
                await leader.execute(sql.QUARANTINE_PENDING, int(r["id"]))
                alerts.error("audit_pending_quarantined", alert=True, pending_id=int(r["id"]))
        if not prepared:
            return len(rows)
        appending = asyncio.create_task(self._log.append_prepared(prepared))
        self._appending = appending
        # Shielded: cancelling the round leaves the batch to land (or fail) on its own,
        # and `_landed` waits for it before the queue is read again.
        await asyncio.shield(appending)
        self._appending = None
        self.integrated += len(prepared)
        return len(prepared)

    async def _landed(self) -> None:
        """Wait for an append that a cancelled round left in flight. Reading the queue
        before it commits would append its rows a second time: that batch would fail
        whole (the rows are no longer pending when it runs), taking with it any entry
        read after them, and the writer would log the failure."""
        appending, self._appending = self._appending, None
        if appending is None:
            return
        await asyncio.wait((appending,))
        if not appending.cancelled() and appending.exception() is None:
            self.integrated += len(appending.result())
        # A failure was logged by the writer; its rows are still pending, read again below.

    async def _sweep_budgets(self) -> None:
        """Budget marks and counts of windows long closed are of no further use."""
        now = time.monotonic()
        leader = self._lead.connection
        if now - self._swept_at < _BUDGET_SWEEP or leader is None:
            return
        self._swept_at = now
        await leader.execute(sql.DELETE_OLD_BUDGETS)


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError
