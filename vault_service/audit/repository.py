"""SQL of the access log: named constants, explicit column lists, no string building.

Tables (migration 0002_access_log.sql):
- audit_entries      immutable: (idx, leaf, leaf_hash); triggers refuse UPDATE, DELETE, TRUNCATE
- audit_bodies       the queryable body of each entry (jsonb + salt), prunable by retention
- audit_tree_state   one row: the tree size and root, locked by every append
- audit_tiles        tlog-tiles hashes of complete subtrees, append-only per row
- audit_checkpoints  signed checkpoints, immutable
"""

from __future__ import annotations

from typing import Final

# --- sequencer ---------------------------------------------------------------------
# Used when this process does not know the tree head, or another process appended
# since it last did: lock the head, read the size, then APPEND_BATCH, then COMMIT.
BEGIN_APPEND: Final = "BEGIN ISOLATION LEVEL READ COMMITTED"
COMMIT: Final = "COMMIT"
LOCK_TREE: Final = "SELECT size, root FROM audit_tree_state WHERE id = 1 FOR UPDATE"
SELECT_TREE: Final = "SELECT size, root FROM audit_tree_state WHERE id = 1"
SHOW_SYNCHRONOUS_COMMIT: Final = "SELECT current_setting('synchronous_commit')"

SELECT_TILES: Final = """
SELECT t.level, t.idx, t.hashes
FROM audit_tiles t
JOIN unnest($1::smallint[], $2::bigint[]) AS k (level, idx)
  ON t.level = k.level AND t.idx = k.idx
"""

# Every write of a batch in one statement, and on the fast path the whole transaction:
# it locks the head itself and writes only if the head is the one the batch was built
# on (size $11 and root $12: the size alone is not enough, another process may have
# appended exactly as many entries as a batch of ours still in flight). A process that
# was the last to append (it remembers the head) thus appends in one round trip; if
# another process appended meanwhile, nothing is written, the row count is 0, and the
# sequencer takes the locked path.
# Under READ COMMITTED the statement's snapshot may predate the append it waited for
# (that is the pipelined case: this batch was laid out on top of one still in flight).
# So the head is checked only on the row as locked by `head` (FOR UPDATE returns its
# latest version), never by the UPDATE's own WHERE, which would see the snapshot's
# version; the UPDATE re-reads the locked row by id. `at` is read from the body, the
# one source of truth.
_APPEND_WRITES: Final = """
WITH head AS (
    SELECT size, root FROM audit_tree_state WHERE id = 1 FOR UPDATE
), expected AS (
    SELECT 1 FROM head WHERE head.size = $11 AND head.root = $12
), entries AS (
    INSERT INTO audit_entries (idx, leaf, leaf_hash)
    SELECT u.idx, u.leaf, u.leaf_hash
    FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS u (idx, leaf, leaf_hash)
    WHERE EXISTS (SELECT 1 FROM expected)
), bodies AS (
    INSERT INTO audit_bodies (idx, at, salt, body)
    SELECT u.idx, (u.body ->> 'at')::timestamptz, u.salt, u.body
    FROM unnest($1::bigint[], $4::bytea[], $5::jsonb[]) AS u (idx, salt, body)
    WHERE EXISTS (SELECT 1 FROM expected)
), tiles AS (
    INSERT INTO audit_tiles (level, idx, hashes)
    SELECT u.level, u.idx, u.hashes
    FROM unnest($6::smallint[], $7::bigint[], $8::bytea[]) AS u (level, idx, hashes)
    WHERE EXISTS (SELECT 1 FROM expected)
    ON CONFLICT (level, idx) DO UPDATE SET hashes = EXCLUDED.hashes
)"""
_MOVE_HEAD: Final = """
UPDATE audit_tree_state s SET size = $9, root = $10, updated_at = now()
FROM expected
WHERE s.id = 1
"""
APPEND_BATCH: Final = _APPEND_WRITES + _MOVE_HEAD
# The same, for entries integrated from the pending queue ($13: their queue ids), which
# leave it in the same statement: an entry is pending or in the tree, never both and
# never neither. Apart because only the service's role may delete from the queue.
# If any of those ids is no longer pending (another integrator, or a retry of a batch
# already committed, got there first), the head is set to -1, which its CHECK refuses:
# the whole statement fails and nothing is appended twice.
APPEND_INTEGRATED: Final = (
    _APPEND_WRITES  # noqa: S608 - constants only  # nosec B608
    + """, integrated AS (
    DELETE FROM audit_pending p
    WHERE p.id = ANY ($13::bigint[]) AND EXISTS (SELECT 1 FROM expected)
    RETURNING p.id
)
UPDATE audit_tree_state s
SET size = CASE WHEN (SELECT count(*) FROM integrated) = cardinality($13::bigint[])
                THEN $9 ELSE -1 END,
    root = $10, updated_at = now()
FROM expected
WHERE s.id = 1
"""
)

# --- the pending queue (sequenced entries, integrated into the tree in the background) ---
SELECT_PENDING: Final = """
SELECT id, salt, body FROM audit_pending ORDER BY id LIMIT $1
"""
# Pending entries committed up to now: the auditor's routes wait for these to be in
# the tree, so that a report includes every access that finished before it was asked.
PENDING_HIGH_WATER: Final = "SELECT max(id) FROM audit_pending"
PENDING_AT_OR_BELOW: Final = "SELECT EXISTS (SELECT 1 FROM audit_pending WHERE id <= $1)"
INSERT_PENDING: Final = "INSERT INTO audit_pending (salt, body) VALUES ($1, $2)"
QUARANTINE_PENDING: Final = """
WITH moved AS (DELETE FROM audit_pending WHERE id = $1 RETURNING id, salt, body)
INSERT INTO audit_quarantine (pending_id, salt, body) SELECT id, salt, body FROM moved
"""
INTEGRATOR_LOCK_ID: Final = 0x7661756C74_03  # advisory lock of the integration leader
# Requests: budgets decided and entries made durable in one statement per batch
# (migration 0004_request_path.sql).
ACCESS_COMMIT: Final = """
SELECT req, refused, budget, lim, remaining, reset_s, refusals
FROM vs_access_commit($1::integer[], $2::uuid[], $3::text[], $4::integer[], $5::uuid[],
                      $6::bytea[], $7::text[])
"""
DELETE_OLD_BUDGETS: Final = """
WITH marks AS (DELETE FROM budget_marks WHERE window_start < now() - interval '2 days'),
usage AS (DELETE FROM budget_usage WHERE window_start < now() - interval '2 days')
SELECT 1
"""

# --- checkpoints -----------------------------------------------------------------------
CHECKPOINT_LOCK_ID: Final = 0x7661756C74_02  # advisory lock of the checkpoint leader
SELECT_LATEST_CHECKPOINT: Final = """
SELECT size, root, key_version, note, created_at
FROM audit_checkpoints ORDER BY size DESC LIMIT 1
"""
SELECT_CHECKPOINT: Final = """
SELECT size, root, key_version, note, created_at FROM audit_checkpoints WHERE size = $1
"""
INSERT_CHECKPOINT: Final = """
INSERT INTO audit_checkpoints (size, root, key_version, note)
VALUES ($1, $2, $3, $4)
ON CONFLICT (size) DO NOTHING
"""

# --- proofs and bundles ----------------------------------------------------------------
# An entry with the tree size and the latest checkpoint's size, in one round trip.
SELECT_ENTRY_AND_HEAD: Final = """
SELECT t.size AS tree_size,
       (SELECT c.size FROM audit_checkpoints c ORDER BY c.size DESC LIMIT 1) AS checkpoint_size,
       e.leaf, b.salt, b.body::text AS body
FROM audit_tree_state t
LEFT JOIN audit_entries e ON e.idx = $1
LEFT JOIN audit_bodies b ON b.idx = $1
WHERE t.id = 1
"""
SELECT_ENTRY_RANGE: Final = """
SELECT e.idx, e.leaf, b.salt, b.body::text AS body
FROM audit_entries e LEFT JOIN audit_bodies b ON b.idx = e.idx
WHERE e.idx >= $1 AND e.idx < $2
ORDER BY e.idx
"""

# --- auditor queries -------------------------------------------------------------------
# Everything is read from the body (the verified bytes), through expression indexes.
# One constant per leading filter so that each gets a plan on its own index; the other
# filters are optional ($n IS NULL OR ...). Ids are compared as canonical text, which
# is how bodies hold them. Pages are ordered by leaf index. The structure filter ($8,
# the acting account's structure as the entry names it) came last, hence its number.
# The same optional filters in each; spelled out rather than assembled, so that each
# constant reads as the statement PostgreSQL gets.
EVENTS_BY_RECORD: Final = """
SELECT b.idx, b.body::text AS body, b.salt, e.leaf
FROM audit_bodies b JOIN audit_entries e ON e.idx = b.idx
WHERE b.body -> 'record_ids' @> jsonb_build_array($1::text)
  AND ($1::text IS NULL OR b.body -> 'record_ids' @> jsonb_build_array($1::text))
  AND ($2::text IS NULL OR b.body ->> 'actor_id' = $2)
  AND ($3::text IS NULL OR b.body ->> 'action' = $3)
  AND ($8::text IS NULL OR b.body ->> 'structure_id' = $8)
  AND ($4::timestamptz IS NULL OR b.at >= $4)
  AND ($5::timestamptz IS NULL OR b.at < $5)
  AND b.idx > $6
ORDER BY b.idx
LIMIT $7
"""
EVENTS_BY_ACTOR: Final = """
SELECT b.idx, b.body::text AS body, b.salt, e.leaf
FROM audit_bodies b JOIN audit_entries e ON e.idx = b.idx
WHERE b.body ->> 'actor_id' = $2
  AND ($1::text IS NULL OR b.body -> 'record_ids' @> jsonb_build_array($1::text))
  AND ($2::text IS NULL OR b.body ->> 'actor_id' = $2)
  AND ($3::text IS NULL OR b.body ->> 'action' = $3)
  AND ($8::text IS NULL OR b.body ->> 'structure_id' = $8)
  AND ($4::timestamptz IS NULL OR b.at >= $4)
  AND ($5::timestamptz IS NULL OR b.at < $5)
  AND b.idx > $6
ORDER BY b.idx
LIMIT $7
"""
# No index leads on the structure (one more on the log's hottest table, for a
# console's drill-down): the route requires a window of at most a week, which the BRIN
# index on `at` bounds the scan to.
EVENTS_BY_STRUCTURE: Final = """
SELECT b.idx, b.body::text AS body, b.salt, e.leaf
FROM audit_bodies b JOIN audit_entries e ON e.idx = b.idx
WHERE b.body ->> 'structure_id' = $8
  AND ($1::text IS NULL OR b.body -> 'record_ids' @> jsonb_build_array($1::text))
  AND ($2::text IS NULL OR b.body ->> 'actor_id' = $2)
  AND ($3::text IS NULL OR b.body ->> 'action' = $3)
  AND ($8::text IS NULL OR b.body ->> 'structure_id' = $8)
  AND ($4::timestamptz IS NULL OR b.at >= $4)
  AND ($5::timestamptz IS NULL OR b.at < $5)
  AND b.idx > $6
ORDER BY b.idx
LIMIT $7
"""
EVENTS_BY_ACTION: Final = """
SELECT b.idx, b.body::text AS body, b.salt, e.leaf
FROM audit_bodies b JOIN audit_entries e ON e.idx = b.idx
WHERE b.body ->> 'action' = $3
  AND ($1::text IS NULL OR b.body -> 'record_ids' @> jsonb_build_array($1::text))
  AND ($2::text IS NULL OR b.body ->> 'actor_id' = $2)
  AND ($3::text IS NULL OR b.body ->> 'action' = $3)
  AND ($8::text IS NULL OR b.body ->> 'structure_id' = $8)
  AND ($4::timestamptz IS NULL OR b.at >= $4)
  AND ($5::timestamptz IS NULL OR b.at < $5)
  AND b.idx > $6
ORDER BY b.idx
LIMIT $7
"""
EVENTS_ALL: Final = """
SELECT b.idx, b.body::text AS body, b.salt, e.leaf
FROM audit_bodies b JOIN audit_entries e ON e.idx = b.idx
WHERE true
  AND ($1::text IS NULL OR b.body -> 'record_ids' @> jsonb_build_array($1::text))
  AND ($2::text IS NULL OR b.body ->> 'actor_id' = $2)
  AND ($3::text IS NULL OR b.body ->> 'action' = $3)
  AND ($8::text IS NULL OR b.body ->> 'structure_id' = $8)
  AND ($4::timestamptz IS NULL OR b.at >= $4)
  AND ($5::timestamptz IS NULL OR b.at < $5)
  AND b.idx > $6
ORDER BY b.idx
LIMIT $7
"""

# Every record that an actor was given in a window: allowed entries only (a refusal
# returned nothing), every action that names records, aggregated per record.
BREACH_IMPACT: Final = """
WITH hits AS (
    SELECT b.idx, b.at, b.body ->> 'action' AS action, b.body -> 'fields' AS fields,
           r.record_id::uuid AS record_id
    FROM audit_bodies b
    CROSS JOIN LATERAL jsonb_array_elements_text(b.body -> 'record_ids') AS r (record_id)
    WHERE b.body ->> 'actor_id' = $1 AND b.at >= $2 AND b.at < $3
      AND b.body ->> 'outcome' = 'allowed'
)
SELECT h.record_id,
       count(DISTINCT h.idx) AS accesses,
       min(h.at) AS first_at,
       max(h.at) AS last_at,
       array_agg(DISTINCT h.action ORDER BY h.action) AS actions,
       COALESCE(array_agg(DISTINCT f.path ORDER BY f.path) FILTER (WHERE f.path IS NOT NULL),
                '{}'::text[]) AS fields
FROM hits h
LEFT JOIN LATERAL jsonb_array_elements_text(h.fields) AS f (path) ON true
WHERE h.record_id > $4
GROUP BY h.record_id
ORDER BY h.record_id
LIMIT $5
"""
BREACH_IMPACT_TOTALS: Final = """
SELECT count(*) AS entries, count(*) FILTER (WHERE b.body ->> 'outcome' = 'refused') AS refused
FROM audit_bodies b
WHERE b.body ->> 'actor_id' = $1 AND b.at >= $2 AND b.at < $3
"""
# Every entry a breach-impact report counts, to check each body against its leaf.
BREACH_IMPACT_ENTRIES: Final = """
SELECT b.idx, b.body::text AS body, b.salt, e.leaf
FROM audit_bodies b JOIN audit_entries e ON e.idx = b.idx
WHERE b.body ->> 'actor_id' = $1 AND b.at >= $2 AND b.at < $3
"""
# The entries of a breach-impact window inside a tree of size $4, with their leaves:
# what a report's inclusion proofs prove.
REPORT_ENTRIES: Final = """
SELECT e.idx, e.leaf, b.salt, b.body::text AS body
FROM audit_bodies b JOIN audit_entries e ON e.idx = b.idx
WHERE b.body ->> 'actor_id' = $1 AND b.at >= $2 AND b.at < $3 AND b.idx < $4
ORDER BY b.idx
LIMIT $5
"""
# The oldest body still held: a window that starts before it may have lost entries to
# retention, and a report must say so rather than look complete.
OLDEST_BODY: Final = "SELECT min(at) FROM audit_bodies"

SUBJECT_EVENTS: Final = """
SELECT b.idx, b.body::text AS body, b.salt, e.leaf
FROM audit_bodies b JOIN audit_entries e ON e.idx = b.idx
WHERE b.body -> 'record_ids' @> jsonb_build_array($1::text) AND b.idx > $2
ORDER BY b.idx
LIMIT $3
"""

# --- retention -----------------------------------------------------------------------------
PRUNE_BODIES: Final = """
WITH pruned AS (DELETE FROM audit_bodies WHERE at < $1 RETURNING idx)
SELECT count(*) FROM pruned
"""

# The console's charts: entries and records named per day and per actor or structure
# in a window, from the bodies themselves (ids and counts only). The BRIN index on
# `at` bounds the scan to the window. Newest days first: a cut answer loses the
# oldest days, never the latest activity.
# The inner query keeps only the three narrow values per entry and `OFFSET 0` keeps
# PostgreSQL from folding it into the outer one: folded, the grouping sorted whole
# bodies and spilled them to disk (measured on 300,000 entries over 93 days: ~160 MB
# of temporary files and three processes per query); apart, a hash aggregate of a few
# MB in one process.
VOLUME_BY_ACTOR: Final = """
SELECT v.day, v.key, count(*) AS entries, sum(v.named) AS records
FROM (
    SELECT date_trunc('day', b.at, 'UTC') AS day, b.body ->> 'actor_id' AS key,
           jsonb_array_length(COALESCE(b.body -> 'record_ids', '[]'::jsonb)) AS named
    FROM audit_bodies b
    WHERE b.at >= $1 AND b.at < $2
    OFFSET 0
) v
GROUP BY 1, 2
ORDER BY 1 DESC, 2
LIMIT $3
"""
VOLUME_BY_STRUCTURE: Final = """
SELECT v.day, v.key, count(*) AS entries, sum(v.named) AS records
FROM (
    SELECT date_trunc('day', b.at, 'UTC') AS day, b.body ->> 'structure_id' AS key,
           jsonb_array_length(COALESCE(b.body -> 'record_ids', '[]'::jsonb)) AS named
    FROM audit_bodies b
    WHERE b.at >= $1 AND b.at < $2
    OFFSET 0
) v
GROUP BY 1, 2
ORDER BY 1 DESC, 2
LIMIT $3
"""
