"""Retention of access-log bodies (issue 4 item 8).

Bodies older than the retention period (7 months by default, CNIL recommends 6 to
12) are deleted with their salts by the `vault_service_retention` role, the only one
the database lets do it (and only for bodies older than 30 days, whatever this job
is told). Entries, leaf hashes, tiles and checkpoints stay: the tree remains
verifiable, and an auditor's bundle shows pruned entries as pruned, not as missing.
The deletion and the entry that records it commit in one transaction: there is no
pruning without its trace.
"""

from __future__ import annotations

import datetime
from typing import Final

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from vault_service.audit import repository as sql
from vault_service.audit.log import AccessEvent, append_on_connection
from vault_service.errors import InvalidParameter

__all__ = ["DEFAULT_RETENTION", "MINIMUM_RETENTION", "prune"]

log = structlog.get_logger(__name__)

DEFAULT_RETENTION: Final = datetime.timedelta(days=213)  # about 7 months
# Mirrors the floor in the audit_bodies trigger (0002_access_log.sql); checked here
# too so that a misconfigured job gets a clear error instead of a trigger failure.
MINIMUM_RETENTION: Final = datetime.timedelta(days=30)


async def prune(
    conn: asyncpg.Connection | PoolConnectionProxy,
    older_than: datetime.timedelta = DEFAULT_RETENTION,
) -> int:
    """Delete the bodies of entries older than `older_than`; returns how many. Run on
    a connection of the `vault_service_retention` role."""
    if older_than < MINIMUM_RETENTION:
        raise InvalidParameter("the retention period must be at least 30 days")
    cutoff = datetime.datetime.now(datetime.UTC) - older_than
    async with conn.transaction():
        pruned = int(await conn.fetchval(sql.PRUNE_BODIES, cutoff) or 0)
        (index,) = await append_on_connection(
            conn,
            [
                AccessEvent(
                    action="audit.pruned",
                    outcome="allowed",
                    actor_id=None,
                    role="retention",
                    structure_id=None,
                    purpose="retention",
                    # Counts and a date only: what was pruned, not what it said.
                    purpose_detail=f"{pruned} bodies before {cutoff:%Y-%m-%dT%H:%M:%SZ}",
                )
            ],
        )
    log.info("audit_bodies_pruned", count=pruned, entry=index)
    return pruned
