"""Every statement of the BI lane: the aggregate's rebuild and its queries."""

from __future__ import annotations

from typing import Final

REFRESH_LOCK_ID: Final = 0x7661756C74_17
"""One rebuild at a time (the scheduled round of one replica, or an operator's CLI)."""

# The records to aggregate, by keyset: what the sealer needs to open the three
# fields a dimension needs and to check the row's integrity tag, and the month.
RECORDS_PAGE: Final = """
SELECT id, structure_id, referent_id, branch_key_version, record_key, key_version,
       sealed, clear, version, created_at
FROM records
WHERE id > $1
ORDER BY id
LIMIT $2
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
CLEAR: Final = "DELETE FROM stats_counts"
INSERT: Final = """
INSERT INTO stats_counts (month, structure_id, programme, situation, age_band, sex, n)
SELECT * FROM unnest($1::date[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::integer[])
"""
MARK: Final = """
INSERT INTO stats_refresh (id, refreshed_at, records, canaries, failed)
VALUES (true, now(), $1, $2, $3)
ON CONFLICT (id) DO UPDATE
SET refreshed_at = excluded.refreshed_at, records = excluded.records,
    canaries = excluded.canaries, failed = excluded.failed
RETURNING refreshed_at
"""
LAST_REFRESH: Final = "SELECT refreshed_at FROM stats_refresh"
STRUCTURES: Final = "SELECT id, coalesce(region, 'unknown') AS region FROM structures ORDER BY id"

# One query per grouping: the columns not grouped are summed over. Each grouped
# column comes back as text (the structure's id, a month as YYYY-MM), the others as
# NULL, so one statement serves every grouping (GROUPING SETS would compute many).
COUNTS: Final = """
SELECT CASE WHEN $3 THEN to_char(c.month, 'YYYY-MM') END AS month,
       CASE WHEN $4 THEN c.structure_id::text END AS structure,
       CASE WHEN $5 THEN coalesce(s.region, 'unknown') END AS region,
       CASE WHEN $6 THEN c.programme END AS programme,
       CASE WHEN $7 THEN c.situation END AS situation,
       CASE WHEN $8 THEN c.age_band END AS age_band,
       CASE WHEN $9 THEN c.sex END AS sex,
       sum(c.n)::bigint AS n
FROM stats_counts c
JOIN structures s ON s.id = c.structure_id
WHERE c.month >= $1 AND c.month <= $2
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
# A tampered row met by the rebuild: alerted once, whoever met it first (a read, a
# rebuild of another process, an earlier round).
INTEGRITY_ALERTED: Final = """
SELECT EXISTS (SELECT 1 FROM alerts
               WHERE kind = 'record.integrity_failed' AND details ->> 'record_id' = $1)
"""
