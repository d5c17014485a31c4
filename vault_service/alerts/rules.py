"""Anomaly rules over the access log, the budget state and custody, run by one leader,
off the request path.

Every `interval` seconds the leader (an advisory lock, leadership.py) runs each
rule's query over the recent window; a subject found above a rule's threshold raises
one alert per rule, subject and window (the `rule_hits` table is the memory that keeps
replicas and restarts from alerting twice). Rules read ids, counts and times only.
Each rule, its severity and its setting (`VAULT_SERVICE_` + upper case):

- `anomaly.enumeration` (warning): one account named records it may not see (404 on
  a read, an update, a transfer, a break-the-glass) at least `anomaly_not_found_5min`
  times in five minutes: ids guessed or taken from an export.
- `anomaly.new_account_volume` (warning): an account in its restricted period
  counted at least `anomaly_new_account_records_hour` distinct full records this
  hour: the pattern of the accounts an intruder creates.
- `anomaly.off_hours` (warning): an account counted at least
  `anomaly_off_hours_records_hour` distinct full records in the last hour at times
  outside its structure's working hours (`structures.working_days`, `working_start`,
  `working_end`, `time_zone`), or else `working_hours` in `working_time_zone`.
- `anomaly.account_baseline` (warning): an account's full records this hour are at
  least `anomaly_baseline_factor` times its mean over its active hours of the last
  14 days, and at least `anomaly_baseline_min_records`, once it has
  `anomaly_baseline_min_hours` hours of history (before that, the new-account rule
  watches it).
- `anomaly.structure_baseline` (warning): the same for a whole structure (the
  `structure.hour` budget: many usurped accounts of one structure), with
  `anomaly_structure_baseline_min_records`.
- `anomaly.account_admin_burst` (critical): one admin requested or approved at least
  `anomaly_account_changes_hour` account creations, reactivations or role changes in
  the last hour (the 2025 extraction began with an account manager creating two
  accounts).
- `anomaly.custody_concentration` (critical): at least
  `anomaly_custody_to_account_hour` records were given to one account in the last hour
  (referent changes, temporary assignments, cross-structure transfers waiting for it):
  a structure handed to one reader.

Baselines need history longer than the two days `budget_usage` keeps: each round the
leader copies closed hourly windows into `usage_hours` (kept four weeks).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from vault_service.alerts.store import Alerts
from vault_service.leadership import LeaderLoop, Leadership
from vault_service.settings import Settings
from vault_service.settings.hours import parse_working_hours

__all__ = ["RuleRunner"]

log = structlog.get_logger(__name__)
RULES_LOCK_ID: Final = 0x7661756C74_04
HISTORY_EVERY = 60.0
"""Seconds between two copies of closed hours into `usage_hours` (a closed hour
changes no more; the copy skips what it has)."""

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
OFF_HOURS: Final = """
SELECT m.subject, a.structure_id, count(*) AS hits, date_trunc('hour', now(), 'UTC') AS window_start
FROM budget_marks m
JOIN accounts a ON a.id = m.subject
LEFT JOIN structures s ON s.id = a.structure_id
CROSS JOIN LATERAL (SELECT m.marked_at AT TIME ZONE coalesce(s.time_zone, $2) AS t) l
WHERE m.budget = 'record.hour'
  AND m.window_start >= date_trunc('hour', now(), 'UTC') - interval '1 hour'
  AND m.marked_at >= now() - interval '1 hour'
  AND NOT (extract(isodow FROM l.t)::smallint = ANY(coalesce(s.working_days, $3::smallint[]))
           AND l.t::time >= coalesce(s.working_start, $4::text::time)
           AND l.t::time < coalesce(s.working_end, $5::text::time))
GROUP BY 1, 2
HAVING count(*) >= $1
"""
# A subject's records this hour against its mean over its active hours (a window with
# any record) of the last 14 days: an account's (`record.hour`) or a structure's
# (`structure.hour`, whose subject is the structure).
BASELINE: Final = """
SELECT u.subject,
       CASE WHEN u.budget = 'structure.hour' THEN u.subject ELSE a.structure_id END
           AS structure_id,
       u.used AS hits, u.window_start
FROM budget_usage u
LEFT JOIN accounts a ON a.id = u.subject
JOIN LATERAL (
    SELECT avg(h.used) AS mean, count(*) AS hours FROM usage_hours h
    WHERE h.subject = u.subject AND h.budget = u.budget
      AND h.hour >= now() - interval '14 days' AND h.hour < u.window_start
) b ON true
WHERE u.budget = $4
  AND u.window_start = date_trunc('hour', now(), 'UTC')
  AND u.used >= $1 AND b.hours >= $2 AND u.used >= $3 * b.mean
"""
ACCOUNT_ADMIN_BURST: Final = """
WITH acts AS (
    SELECT requested_by AS subject FROM account_requests
    WHERE requested_at >= now() - interval '1 hour'
    UNION ALL
    SELECT decided_by FROM account_requests
    WHERE decided_at >= now() - interval '1 hour' AND state = 'approved'
)
SELECT acts.subject, a.structure_id, count(*) AS hits,
       date_trunc('hour', now(), 'UTC') AS window_start
FROM acts JOIN accounts a ON a.id = acts.subject
GROUP BY 1, 2
HAVING count(*) >= $1
"""
CUSTODY_CONCENTRATION: Final = """
WITH given AS (
    SELECT to_account AS subject FROM referent_changes
    WHERE changed_at >= now() - interval '1 hour'
    UNION ALL
    SELECT account_id FROM record_assignments WHERE starts_at >= now() - interval '1 hour'
    UNION ALL
    SELECT to_account FROM transfer_requests
    WHERE requested_at >= now() - interval '1 hour' AND state = 'pending'
)
SELECT given.subject, a.structure_id, count(*) AS hits,
       date_trunc('hour', now(), 'UTC') AS window_start
FROM given JOIN accounts a ON a.id = given.subject
GROUP BY 1, 2
HAVING count(*) >= $1
"""
# Closed hours of the record and structure budgets, before budget_usage is swept.
KEEP_USAGE_HOURS: Final = """
INSERT INTO usage_hours (subject, budget, hour, used)
SELECT subject, budget, window_start, used FROM budget_usage
WHERE budget IN ('record.hour', 'structure.hour')
  AND window_start < date_trunc('hour', now(), 'UTC')
  AND window_start >= now() - interval '2 days'
ON CONFLICT DO NOTHING
"""
DELETE_OLD_USAGE_HOURS: Final = "DELETE FROM usage_hours WHERE hour < now() - interval '28 days'"
# One alert per rule, subject and window, whichever replica found it first.
CLAIM_HIT: Final = """
INSERT INTO rule_hits (rule, subject, window_start) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING rule
"""


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    severity: str
    query: str
    args: tuple[object, ...]
    threshold: float
    # Whose alert: the account found, or (None) the structure found.
    account: bool = True


def rules_of(settings: Settings) -> tuple[_Rule, ...]:
    hours = parse_working_hours(settings.rules.working_hours)
    restriction = settings.accounts.new_account_restriction_hours * 3600.0
    factor = settings.rules.anomaly_baseline_factor
    min_hours = settings.rules.anomaly_baseline_min_hours
    return (
        _Rule(
            "anomaly.enumeration",
            "warning",
            ENUMERATION,
            (settings.rules.anomaly_not_found_5min,),
            settings.rules.anomaly_not_found_5min,
        ),
        _Rule(
            "anomaly.new_account_volume",
            "warning",
            NEW_ACCOUNT_VOLUME,
            (settings.rules.anomaly_new_account_records_hour, restriction),
            settings.rules.anomaly_new_account_records_hour,
        ),
        _Rule(
            "anomaly.off_hours",
            "warning",
            OFF_HOURS,
            (
                settings.rules.anomaly_off_hours_records_hour,
                settings.rules.working_time_zone,
                list(hours.days),
                hours.start,
                hours.end,
            ),
            settings.rules.anomaly_off_hours_records_hour,
        ),
        _Rule(
            "anomaly.account_baseline",
            "warning",
            BASELINE,
            (settings.rules.anomaly_baseline_min_records, min_hours, factor, "record.hour"),
            settings.rules.anomaly_baseline_min_records,
        ),
        _Rule(
            "anomaly.structure_baseline",
            "warning",
            BASELINE,
            (
                settings.rules.anomaly_structure_baseline_min_records,
                min_hours,
                factor,
                "structure.hour",
            ),
            settings.rules.anomaly_structure_baseline_min_records,
            account=False,
        ),
        _Rule(
            "anomaly.account_admin_burst",
            "critical",
            ACCOUNT_ADMIN_BURST,
            (settings.rules.anomaly_account_changes_hour,),
            settings.rules.anomaly_account_changes_hour,
        ),
        _Rule(
            "anomaly.custody_concentration",
            "critical",
            CUSTODY_CONCENTRATION,
            (settings.rules.anomaly_custody_to_account_hour,),
            settings.rules.anomaly_custody_to_account_hour,
        ),
    )


class RuleRunner:
    def __init__(self, pool: asyncpg.Pool, alerts: Alerts, settings: Settings) -> None:
        self._pool = pool
        self._alerts = alerts
        self._lead = Leadership(pool, RULES_LOCK_ID, "rules_leader_elected")
        self._loop = LeaderLoop(
            self._lead,
            self.evaluate,
            interval=settings.rules.anomaly_interval_seconds,
            name="anomaly-rules",
            failed_event="rules_round_failed",
        )
        self._rules = rules_of(settings)
        self._kept_hour = -HISTORY_EVERY

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self._lead.resign()

    async def _keep_history(self, conn: Any) -> None:
        """Copy the hours just closed into the baselines' history."""
        now = time.monotonic()
        if now - self._kept_hour < HISTORY_EVERY:
            return
        self._kept_hour = now
        await conn.execute(KEEP_USAGE_HOURS)
        await conn.execute(DELETE_OLD_USAGE_HOURS)

    async def evaluate(self) -> int:
        """Run every rule once; returns the number of alerts raised."""
        conn = self._lead.connection
        if conn is None:
            return 0
        await self._keep_history(conn)
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
                        rule.severity,
                        rule.kind,
                        account_id=subject if rule.account else None,
                        structure_id=hit["structure_id"],
                        details={"count": int(hit["hits"]), "threshold": int(rule.threshold)},
                    )
                raised += 1
        return raised
