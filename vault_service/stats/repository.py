"""Every statement of the BI lane: the rebuild that seals closed years, and reads."""

from __future__ import annotations

from typing import Final

REFRESH_LOCK_ID: Final = 0x7661756C74_17
"""One rebuild at a time (the scheduled round of one replica, or an operator's CLI)."""

SEALED_YEARS: Final = """
SELECT y.year, count(t.group_by) AS tables
FROM stats_years y LEFT JOIN stats_tables t ON t.year = y.year
GROUP BY y.year
"""
# An alert of a kind already open: a round meets the same state every hour.
OPEN_ALERT: Final = "SELECT EXISTS (SELECT 1 FROM alerts WHERE kind = $1 AND state = 'open')"
# The records of closed years not sealed yet, by keyset: what the sealer needs to
# open the three fields a dimension needs and to check the row's integrity tag, and
# the entry date. `$2` is the first instant of the open year (UTC).
RECORDS_PAGE: Final = """
SELECT id, structure_id, referent_id, branch_key_version, record_key, key_version,
       sealed, clear, version, created_at
FROM records
WHERE id > $1
  AND created_at >= $5 AND created_at < $2
  AND date_part('year', created_at AT TIME ZONE 'UTC')::integer <> ALL ($3::integer[])
ORDER BY id
LIMIT $4
"""
# Records dated into a closed year older than the newest sealed one, not sealed:
# `created_at` is the service's `now()` at creation, so only someone holding the
# database puts a record there (to have a year sealed that differs from another by
# one youth: review). Never sealed; alerted. `$1` is the first instant after the
# newest sealed year. Bounded by the BRIN index on created_at (0019).
BACKDATED: Final = """
SELECT count(*) FROM records
WHERE created_at < $1
  AND date_part('year', created_at AT TIME ZONE 'UTC')::integer <> ALL ($2::integer[])
"""

LOCK: Final = "SELECT pg_advisory_xact_lock($1)"
ROUND_LOCK_ID: Final = REFRESH_LOCK_ID + 1
"""The scheduled round: one replica looks at the aggregate's age at a time."""
TRY_ROUND: Final = "SELECT pg_try_advisory_lock($1)"
END_ROUND: Final = "SELECT pg_advisory_unlock($1)"
FRESH: Final = """
SELECT EXISTS (SELECT 1 FROM stats_refresh
               WHERE refreshed_at > now() - make_interval(secs => $1))
"""
MARK: Final = """
INSERT INTO stats_refresh (id, refreshed_at) VALUES (true, now())
ON CONFLICT (id) DO UPDATE SET refreshed_at = excluded.refreshed_at
RETURNING refreshed_at
"""
# A year is sealed once: a rebuild racing another (the lock is taken again inside
# the transaction) finds it there and writes nothing.
SEAL_YEAR: Final = """
INSERT INTO stats_years (year, sealed_at, k, wrapped_key) VALUES ($1, now(), $2, $3)
ON CONFLICT (year) DO NOTHING
RETURNING sealed_at
"""
INSERT_TABLES: Final = """
INSERT INTO stats_tables (year, group_by, body)
SELECT $1, * FROM unnest($2::text[], $3::bytea[])
"""
STRUCTURES: Final = "SELECT id, coalesce(region, 'unknown') AS region FROM structures ORDER BY id"
TABLE: Final = """
SELECT y.sealed_at, y.k, y.wrapped_key, t.body
FROM stats_years y JOIN stats_tables t ON t.year = y.year
WHERE y.year = $1 AND t.group_by = $2
"""
# A tampered row met by the rebuild: alerted once, whoever met it first (a read, a
# rebuild of another process, an earlier round).
INTEGRITY_ALERTED: Final = """
SELECT EXISTS (SELECT 1 FROM alerts
               WHERE kind = 'record.integrity_failed' AND details ->> 'record_id' = $1)
"""
