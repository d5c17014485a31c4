"""The bulk-read defence: alerts, and suspension of an account far over its budgets.

Budgets slow a scraper; this makes a human know and stops the account by itself. The
budget statement counts each account's refusals per hour (vs_access_commit). The
first refusal of an hour raises a warning alert; at `suspend_after` refusals the
account is suspended through the service's one account act (`vs_service_suspend`:
every replica refuses its tokens from the next request on), a critical alert is
raised, and the suspension is an access-log entry, all in one transaction.

Alerts hold ids, codes and counts, never a personal value (migration 0005).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Final

import asyncpg
import structlog

from vault_service.access.sequencer import Decision, add_in_transaction
from vault_service.alerts.store import Alerts
from vault_service.audit.entry import AccessEvent
from vault_service.auth.principal import Principal
from vault_service.errors import AuditUnavailable

__all__ = ["BulkReadDefence"]

alerts_log = structlog.get_logger("vault_service.alerts")
SERVICE_SUSPEND: Final = "SELECT vs_service_suspend($1)"


class BulkReadDefence:
    def __init__(self, pool: asyncpg.Pool, alerts: Alerts, *, suspend_after: int) -> None:
        self._pool = pool
        self._alerts = alerts
        self._suspend_after = suspend_after
        self._integrity_alerted: set[uuid.UUID] = set()

    async def refused(self, principal: Principal, decision: Decision) -> None:
        """After a budget refusal (its entry is already durable). Raises nothing the
        client should see: the request is refused either way; a failure here is the
        operator's to see in the logs."""
        refusals = decision.refusals or 0
        details: dict[str, int | str] = {
            "budget": decision.budget or "",
            "refusals_this_hour": refusals,
        }
        try:
            if refusals >= self._suspend_after:
                await self._suspend(principal, details, first=refusals == self._suspend_after)
            elif refusals == 1:
                async with self._pool.acquire() as conn:
                    await self._alerts.raise_on(
                        conn,
                        "warning",
                        "budget.exceeded",
                        account_id=principal.account_id,
                        structure_id=principal.structure_id,
                        details=details,
                    )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            alerts_log.error(
                "bulk_read_defence_failed",
                alert=True,
                error_type=type(exc).__name__,
                account_id=str(principal.account_id),
            )

    async def integrity_failed(self, principal: Principal, record_id: uuid.UUID) -> None:
        """A record failed its integrity check (written by someone holding the database,
        not by the service): a critical alert, once per record and process. The request
        is refused either way; a failure to alert is logged, not raised."""
        if record_id in self._integrity_alerted:
            return
        try:
            async with self._pool.acquire() as conn:
                await self._alerts.raise_on(
                    conn,
                    "critical",
                    "record.integrity_failed",
                    account_id=None,
                    structure_id=principal.structure_id,
                    details={"record_id": str(record_id)},
                )
            if len(self._integrity_alerted) < 10_000:
                self._integrity_alerted.add(record_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            alerts_log.error("integrity_alert_failed", error_type=type(exc).__name__)

    async def honeytoken(self, principal: Principal, record_id: uuid.UUID) -> None:
        """A request named a honeytoken: suspend on that request. Unlike a budget
        refusal this one must hold: if it cannot be done, the request fails (503)."""
        try:
            await self._suspend(
                principal,
                {"honeytoken": str(record_id)},
                first=True,
                kind="honeytoken.touched",
                record_id=record_id,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            alerts_log.error(
                "bulk_read_defence_failed",
                alert=True,
                error_type=type(exc).__name__,
                account_id=str(principal.account_id),
            )
            raise AuditUnavailable() from None

    async def _suspend(
        self,
        principal: Principal,
        details: Mapping[str, int | str],
        *,
        first: bool,
        kind: str = "account.suspended",
        record_id: uuid.UUID | None = None,
    ) -> None:
        # The suspension, its alert and its access-log entry commit together. Past the
        # threshold (requests already in flight) the suspension is only made sure of.
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(SERVICE_SUSPEND, principal.account_id)
            if not first:
                return
            await self._alerts.raise_on(
                conn,
                "critical",
                kind,
                account_id=principal.account_id,
                structure_id=principal.structure_id,
                details=details
                if record_id is not None
                else {**details, "threshold": self._suspend_after},
            )
            await add_in_transaction(
                conn,
                AccessEvent(
                    action="account.suspended",
                    outcome="refused",
                    actor_id=principal.account_id,
                    role=str(principal.role),
                    structure_id=principal.structure_id,
                    record_ids=() if record_id is None else (record_id,),
                    refusal_code="bulk_read_suspended" if record_id is None else "honeytoken",
                    token_jti=principal.jti,
                ),
            )
