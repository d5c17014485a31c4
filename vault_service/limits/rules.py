"""Anomaly rules over the access log and budget state, run by one leader, off the
request path.

Every `interval` seconds the leader (an advisory lock, audit/leadership.py) runs each
rule's query over the recent window; a subject found above a rule's threshold raises
one alert per rule, subject and window (the `rule_hits` table is the memory that keeps
replicas and restarts from alerting twice). Rules read ids and counts only.

- `anomaly.enumeration`: one account named records it may not see (404 on a read, an
  update, a transfer, a break-the-glass) at least
  `VAULT_SERVICE_ANOMALY_NOT_FOUND_5MIN` times in five minutes: ids guessed or taken
  from an export.
- `anomaly.new_account_volume`: an account in its restricted period counted at least
  `VAULT_SERVICE_ANOMALY_NEW_ACCOUNT_RECORDS_HOUR` distinct full records this hour: the
  pattern of the accounts an intruder creates.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog

from vault_service.audit.leadership import LeaderLoop, Leadership
from vault_service.limits.defence import Alerts

__all__ = ["RuleRunner"]

log = structlog.get_logger(__name__)
RULES_LOCK_ID: Final = 0x7661756C74_04

ENUMERATION: Final = """
SELECT (b.body ->> 'actor_id')::uuid AS subject,
       (b.body ->> 'structure_id')::uuid AS structure_id,
       count(*) AS hits,
       date_trunc('minute', now()) - make_interval(mins => extract(minute FROM now())::int % 5)
           AS window_start
FROM audit_bodies b
WHERE b.at >= now() - interval '5 minutes'
  AND b.body ->> 'action' LIKE 'record.%'
  AND b.body ->> 'refusal_code' = 'not_found'
  AND b.body ->> 'actor_id' IS NOT NULL
GROUP BY 1, 2
HAVING count(*) >= $1
"""
NEW_ACCOUNT_VOLUME: Final = """
SELECT u.subject, a.structure_id, u.used AS hits, u.window_start
FROM budget_usage u
JOIN accounts a ON a.id = u.subject
WHERE u.budget = 'record.hour'
  AND u.window_start = date_trunc('hour', now(), 'UTC')
  AND u.used >= $1
  AND a.activated_at > now() - make_interval(secs => $2)
"""
# One alert per rule, subject and window, whichever replica found it first.
CLAIM_HIT: Final = """
INSERT INTO rule_hits (rule, subject, window_start) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING rule
"""


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    query: str
    args: tuple[float, ...]


class RuleRunner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        alerts: Alerts,
        *,
        interval: float,
        not_found_5min: int,
        new_account_records_hour: int,
        restriction_seconds: float,
    ) -> None:
        self._pool = pool
        self._alerts = alerts
        self._lead = Leadership(pool, RULES_LOCK_ID, "rules_leader_elected")
        self._loop = LeaderLoop(
            self._lead,
            self.evaluate,
            interval=interval,
            name="anomaly-rules",
            failed_event="rules_round_failed",
        )
        self._rules = (
            _Rule("anomaly.enumeration", ENUMERATION, (not_found_5min,)),
            _Rule(
                "anomaly.new_account_volume",
                NEW_ACCOUNT_VOLUME,
                (new_account_records_hour, restriction_seconds),
            ),
        )

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self._lead.resign()

    async def evaluate(self) -> int:
        """Run every rule once; returns the number of alerts raised."""
        conn = self._lead.connection
        if conn is None:
            return 0
        raised = 0
        for rule in self._rules:
            for hit in await conn.fetch(rule.query, *rule.args):
                subject: uuid.UUID = hit["subject"]
                # The claim and its alert together: a failed alert leaves no claim.
                async with conn.transaction():
                    if not await conn.fetchval(CLAIM_HIT, rule.kind, subject, hit["window_start"]):
                        continue
                    await self._alerts.raise_on(
                        conn,
                        "warning",
                        rule.kind,
                        account_id=subject,
                        structure_id=hit["structure_id"],
                        details={"count": int(hit["hits"]), "threshold": int(rule.args[0])},
                    )
                raised += 1
        return raised
