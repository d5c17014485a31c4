"""The alert store: alerts in PostgreSQL, and as alert-level log lines for the
operator's pipeline (and its OpenTelemetry export).

Alerts hold ids, codes and counts, never a personal value (migration 0005). Every
part of the service that raises one (the bulk-read defence, the anomaly rules, the
checkpoint publisher, the statistics seal) is a caller of this store; an
acknowledgement is written with its caller's access-log entry, through the `EntrySink`
it is given (the store knows nothing of how entries are made).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import asyncpg
import msgspec
import structlog

from vault_service.observability import export_alert

__all__ = ["Alerts", "EntrySink"]


class EntrySink(Protocol):
    """Writes the caller's access-log entry inside the caller's transaction."""

    async def within(self, conn: Any, *, record_ids: Sequence[uuid.UUID] = ()) -> object: ...


alerts_log = structlog.get_logger("vault_service.alerts")

INSERT_ALERT: Final = """
INSERT INTO alerts (id, severity, kind, account_id, structure_id, details)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)
"""
SELECT_ALERTS: Final = """
SELECT id, raised_at, severity, kind, account_id, structure_id, details::text AS details,
       state, acked_by, acked_at
FROM alerts
WHERE ($1::text IS NULL OR state = $1)
  AND ($2::timestamptz IS NULL OR raised_at >= $2)
  AND ($3::uuid IS NULL
       OR (raised_at, id) > (SELECT a.raised_at, a.id FROM alerts a WHERE a.id = $3))
ORDER BY raised_at, id
LIMIT $4
"""
# The same, newest first (the console's list): the cursor's alert bounds the page from
# above, on the same (raised_at, id) index read backwards.
SELECT_ALERTS_NEWEST: Final = """
SELECT id, raised_at, severity, kind, account_id, structure_id, details::text AS details,
       state, acked_by, acked_at
FROM alerts
WHERE ($1::text IS NULL OR state = $1)
  AND ($2::timestamptz IS NULL OR raised_at >= $2)
  AND ($3::uuid IS NULL
       OR (raised_at, id) < (SELECT a.raised_at, a.id FROM alerts a WHERE a.id = $3))
ORDER BY raised_at DESC, id DESC
LIMIT $4
"""
# An auditor's acknowledgement (0018): the id when an open alert was acknowledged.
AUDITOR_ACK: Final = "SELECT vs_auditor_ack_alert($1, $2, $3)"
_details = msgspec.json.Encoder()


class Alerts:
    """Alerts in PostgreSQL, and as alert-level log lines for the operator's pipeline."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def raise_on(
        self,
        conn: asyncpg.Connection[Any] | Any,
        severity: str,
        kind: str,
        *,
        account_id: uuid.UUID | None,
        structure_id: uuid.UUID | None,
        details: Mapping[str, int | str],
    ) -> uuid.UUID:
        alert_id = uuid.uuid4()
        await conn.execute(
            INSERT_ALERT,
            alert_id,
            severity,
            kind,
            account_id,
            structure_id,
            _details.encode(dict(details)).decode(),
        )
        alerts_log.warning(
            kind,
            alert=True,
            severity=severity,
            alert_id=str(alert_id),
            account_id=str(account_id) if account_id else None,
            **details,
        )
        ids = {"alert.id": alert_id, "account.id": account_id, "structure.id": structure_id}
        export_alert(
            kind,
            severity,
            {
                **{k: str(v) for k, v in ids.items() if v is not None},
                **{f"alert.{k}": v for k, v in details.items()},
            },
        )
        return alert_id

    async def critical(self, kind: str, details: Mapping[str, int | str]) -> uuid.UUID:
        """A critical alert about the service itself (no account, no structure), on a
        connection of its own: the sink the access log's publisher is given."""
        async with self._pool.acquire() as conn:
            return await self.raise_on(
                conn, "critical", kind, account_id=None, structure_id=None, details=details
            )

    async def page(
        self,
        state: str | None,
        since: datetime.datetime | None,
        after: uuid.UUID | None,
        limit: int,
        *,
        newest_first: bool = False,
    ) -> list[asyncpg.Record]:
        """Alerts in the order they were raised (or the reverse), after the alert
        `after` in that order (None: from the first)."""
        query = SELECT_ALERTS_NEWEST if newest_first else SELECT_ALERTS
        async with self._pool.acquire() as conn:
            return await conn.fetch(query, state, since, after, limit)

    async def acknowledge(
        self, alert_id: uuid.UUID, auditor_id: uuid.UUID, comment: str, log: EntrySink
    ) -> bool:
        """An auditor acknowledges an open alert, with the request's access-log entry in
        the same transaction (no acknowledgement without its entry). False: no open
        alert with this id, nothing written."""
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(AUDITOR_ACK, alert_id, auditor_id, comment)
            if found is None:
                return False
            await log.within(conn, record_ids=(alert_id,))
        # Ids only: the comment stays with the alert.
        alerts_log.info(
            "alert_acknowledged", alert_id=str(alert_id), actor_id=str(auditor_id), role="auditor"
        )
        return True
