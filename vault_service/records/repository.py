"""SQL of case records: named constants, explicit column lists, no string building."""

from __future__ import annotations

from typing import Final

RECORD_COLUMNS: Final = (
    "r.id, r.structure_id, r.referent_id, r.branch_key_version, r.record_key, r.key_version, "
    "r.sealed, r.clear, r.version, r.created_at, r.updated_at"
)

# A caseload member: the referent, or an account with a live temporary/support assignment.
_ASSIGNED: Final = """EXISTS (
    SELECT 1 FROM record_assignments a
    WHERE a.record_id = r.id AND a.account_id = {who}
      AND a.starts_at <= now() AND (a.ends_at IS NULL OR a.ends_at > now()))"""
_GLASS: Final = """EXISTS (
    SELECT 1 FROM break_glass_grants g
    WHERE g.record_id = r.id AND g.account_id = $2 AND g.expires_at > now())"""

# The record and, in the same round trip, what the caller ($2) holds on it.
SELECT_RECORD: Final = (
    f"SELECT {RECORD_COLUMNS}, {_ASSIGNED.format(who='$2')} AS assigned, {_GLASS} AS glass "  # noqa: S608 - constants
    "FROM records r WHERE r.id = $1"
)
SELECT_RECORD_FOR_UPDATE: Final = SELECT_RECORD + " FOR UPDATE OF r"

# One statement, so one round trip and atomic without an explicit transaction: the
# record, its blind indexes ($8 names, $9 digests, $10 national flags) and, when the
# client sent one, its idempotency key ($11 key, $12 request digest).
INSERT_RECORD: Final = """
WITH rec AS (
    INSERT INTO records (id, structure_id, referent_id, branch_key_version, record_key,
                         key_version, sealed, clear, created_by)
    VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $3)
    RETURNING id, version
), idx AS (
    INSERT INTO record_index (record_id, structure_id, name, digest)
    SELECT rec.id, CASE WHEN u.national THEN NULL ELSE $2::uuid END, u.n, u.d
    FROM rec, unnest($8::text[], $9::bytea[], $10::bool[]) AS u (n, d, national)
    ON CONFLICT DO NOTHING
), idem AS (
    INSERT INTO idempotency_keys (account_id, key, request_digest, record_id)
    SELECT $3, $11, $12, rec.id FROM rec WHERE $11::text IS NOT NULL
)
SELECT version FROM rec
"""

UPDATE_RECORD: Final = """
UPDATE records SET sealed = $2, clear = $3, version = version + 1, updated_at = now()
WHERE id = $1 AND version = $4
RETURNING version, updated_at
"""

INSERT_INDEX: Final = """
INSERT INTO record_index (record_id, structure_id, name, digest)
SELECT $1, CASE WHEN u.national THEN NULL ELSE $2::uuid END, u.n, u.d
FROM unnest($3::text[], $4::bytea[], $5::bool[]) AS u (n, d, national)
ON CONFLICT DO NOTHING
"""
DELETE_INDEX: Final = "DELETE FROM record_index WHERE record_id = $1 AND name = ANY($2::text[])"

SELECT_IDEMPOTENCY: Final = """
SELECT request_digest, record_id FROM idempotency_keys WHERE account_id = $1 AND key = $2
"""
INSERT_IDEMPOTENCY: Final = """
INSERT INTO idempotency_keys (account_id, key, request_digest, record_id) VALUES ($1, $2, $3, $4)
"""

# Equality search: records whose index rows match every (name, digest) pair given,
# restricted to what the caller may see ($4 structure, $5 referent or NULL), paged by id.
SEARCH: Final = f"""
SELECT {RECORD_COLUMNS} FROM records r
WHERE r.id IN (
    SELECT i.record_id FROM record_index i
    JOIN unnest($1::text[], $2::bytea[]) AS q (n, d) ON i.name = q.n AND i.digest = q.d
    GROUP BY i.record_id HAVING count(DISTINCT i.name) = $3
)
  AND r.structure_id = $4
  AND ($5::uuid IS NULL OR r.referent_id = $5 OR {_ASSIGNED.format(who="$5")})
  AND r.id > $6
ORDER BY r.id
LIMIT $7
"""  # noqa: S608 - constant

CASELOAD: Final = f"""
SELECT {RECORD_COLUMNS} FROM records r
WHERE r.structure_id = $1
  AND ($2::uuid IS NULL OR r.referent_id = $2 OR {_ASSIGNED.format(who="$2")})
  AND r.id > $3
ORDER BY r.id
LIMIT $4
"""  # noqa: S608 - constant

SELECT_TRANSFER_TARGET: Final = """
SELECT id, role, structure_id, state FROM accounts WHERE id = $1
"""
MOVE_RECORD: Final = """
UPDATE records SET structure_id = $2, referent_id = $3, branch_key_version = $4, record_key = $5,
                   version = version + 1, updated_at = now()
WHERE id = $1
RETURNING version
"""
SET_REFERENT: Final = """
UPDATE records SET referent_id = $2, version = version + 1, updated_at = now() WHERE id = $1
RETURNING version
"""
DELETE_ASSIGNMENTS: Final = "DELETE FROM record_assignments WHERE record_id = $1"
DELETE_STRUCTURE_INDEX: Final = (
    "DELETE FROM record_index WHERE record_id = $1 AND structure_id IS NOT NULL"
)
UPSERT_ASSIGNMENT: Final = """
INSERT INTO record_assignments (record_id, account_id, kind, ends_at, created_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (record_id, account_id) DO UPDATE SET kind = EXCLUDED.kind, ends_at = EXCLUDED.ends_at,
    starts_at = now(), created_by = EXCLUDED.created_by
"""

RECORD_EXISTS: Final = "SELECT structure_id FROM records WHERE id = $1"
COUNT_RECENT_GRANTS: Final = """
SELECT count(*) FROM break_glass_grants
WHERE account_id = $1 AND opened_at > now() - interval '1 day'
"""
INSERT_GRANT: Final = """
INSERT INTO break_glass_grants (id, record_id, account_id, structure_id, reason, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(mins => $6))
RETURNING opened_at, expires_at
"""
SELECT_REVIEW_QUEUE: Final = """
SELECT id, record_id, account_id, reason, opened_at, expires_at
FROM break_glass_grants
WHERE structure_id = $1 AND reviewed_by IS NULL AND id > $2
ORDER BY id LIMIT $3
"""
REVIEW_GRANT: Final = """
UPDATE break_glass_grants SET reviewed_by = $3, reviewed_at = now(), review_outcome = $4
WHERE id = $1 AND structure_id = $2 AND reviewed_by IS NULL AND account_id <> $3
RETURNING record_id, account_id
"""
