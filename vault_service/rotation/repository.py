"""The SQL of key inventory and rotation: structure keys and the records under them.

The inventory runs on the service's login (it reads counts and versions, never a
key); rotations run on an admin's own login, so that each step and its access-log
entry (vs_log_admin_act) commit in one transaction.
"""

from __future__ import annotations

from typing import Final

# Session-level advisory locks, one per kind of rotation: a second run of the same
# kind anywhere is refused while the first one's connection lives (kill -9 included:
# PostgreSQL drops the lock with the session).
LOCK_IDS: Final = {
    "kek": 0x7661756C74_21,
    "branch": 0x7661756C74_22,
    "records": 0x7661756C74_23,
    "token": 0x7661756C74_24,  # nosec B105 # an advisory-lock id, not a secret
    "checkpoint": 0x7661756C74_25,
}
TRY_LOCK: Final = "SELECT pg_try_advisory_lock($1)"
UNLOCK: Final = "SELECT pg_advisory_unlock($1)"

# The KEK version is the `v<N>` of transit's 'vault:v<N>:...' (the CHECK on the column
# guarantees the prefix).
_KEK_VERSION: Final = "substr(split_part(k.wrapped_key, ':', 2), 2)::integer"

SELECT_BRANCH_INVENTORY: Final = f"""
SELECT k.structure_id, k.version, k.created_at, {_KEK_VERSION} AS kek_version,
       coalesce(c.records, 0) AS records
FROM structure_keys k
LEFT JOIN (SELECT structure_id, branch_key_version, count(*) AS records
           FROM records GROUP BY structure_id, branch_key_version) c
       ON c.structure_id = k.structure_id AND c.branch_key_version = k.version
ORDER BY k.structure_id, k.version
"""  # noqa: S608 - a constant expression, no input  # nosec B608

COUNT_BELOW_KEK: Final = f"""
SELECT (SELECT count(*) FROM structure_keys k WHERE {_KEK_VERSION} < $1)
     + (SELECT count(*) FROM stats_years k WHERE {_KEK_VERSION} < $1)
"""  # noqa: S608 - a constant expression, no input  # nosec B608

COUNT_BY_KEK: Final = f"""
SELECT {_KEK_VERSION} AS kek_version, count(*) AS branch_keys
FROM structure_keys k GROUP BY 1 ORDER BY 1
"""  # noqa: S608 - a constant expression, no input  # nosec B608

# One batch: the oldest-wrapped rows first, locked until the batch commits, so a rerun
# after a kill finds exactly the rows a finished batch did not reach.
SELECT_KEK_BATCH: Final = f"""
SELECT k.structure_id, k.version, k.wrapped_key FROM structure_keys k
WHERE {_KEK_VERSION} < $1
ORDER BY k.structure_id, k.version
LIMIT $2
FOR UPDATE
"""  # noqa: S608 - a constant expression, no input  # nosec B608

# The keys of sealed statistics years (vault_service/stats/), wrapped under the same KEK.
SELECT_STATS_KEK_BATCH: Final = f"""
SELECT k.year, k.wrapped_key FROM stats_years k
WHERE {_KEK_VERSION} < $1
ORDER BY k.year
LIMIT $2
FOR UPDATE
"""  # noqa: S608 - a constant expression, no input  # nosec B608
UPDATE_STATS_WRAPPED: Final = "UPDATE stats_years SET wrapped_key = $2 WHERE year = $1"

UPDATE_WRAPPED: Final = """
UPDATE structure_keys SET wrapped_key = $3 WHERE structure_id = $1 AND version = $2
"""

LOG_ADMIN_ACT: Final = """
SELECT vs_log_admin_act($1, 'allowed', '{}'::uuid[], $2, NULL, $3)
"""

# --- branch keys ------------------------------------------------------------------
SELECT_BRANCH_VERSIONS: Final = """
SELECT structure_id, max(version) AS active, count(*) AS versions
FROM structure_keys GROUP BY structure_id ORDER BY structure_id
"""
SELECT_WRAPPED_BRANCH: Final = """
SELECT wrapped_key, extract(epoch FROM now() - created_at)::float8 AS age_seconds
FROM structure_keys WHERE structure_id = $1 AND version = $2
"""
INSERT_BRANCH_VERSION: Final = """
INSERT INTO structure_keys (structure_id, version, wrapped_key) VALUES ($1, $2, $3)
"""
COUNT_RECORDS_BELOW: Final = """
SELECT count(*) FROM records WHERE structure_id = $1 AND branch_key_version < $2
"""
# Row locks for one batch: a concurrent update of one of these records waits for the
# batch to commit; reads never wait.
# Keyset pagination (`id > $3`): each batch starts where the last one ended instead of
# scanning again past every row already rewrapped.
SELECT_RECORD_BATCH: Final = """
SELECT id, branch_key_version, record_key FROM records
WHERE structure_id = $1 AND branch_key_version < $2 AND id > $3
ORDER BY id
LIMIT $4
FOR UPDATE
"""
UPDATE_RECORD_KEYS: Final = """
UPDATE records r SET record_key = u.record_key, branch_key_version = $2
FROM unnest($3::uuid[], $4::bytea[]) AS u (id, record_key)
WHERE r.id = u.id AND r.structure_id = $1
"""
# The foreign key from records would refuse the delete of a version still named; the
# NOT EXISTS keeps one such row from failing the whole statement.
DELETE_UNUSED_VERSIONS: Final = """
DELETE FROM structure_keys k
WHERE k.structure_id = $1 AND k.version < $2
  AND NOT EXISTS (SELECT 1 FROM records r
                  WHERE r.structure_id = k.structure_id AND r.branch_key_version = k.version)
RETURNING k.version
"""
LOG_RECORDS_ACT: Final = """
SELECT vs_log_admin_act($1, 'allowed', $2::uuid[], $3, NULL, $4)
"""

# --- record re-encryption ---------------------------------------------------------
SELECT_RECORD_KEY_VERSIONS: Final = """
SELECT r.structure_id, max(r.key_version) AS newest, k.target_version, k.finished_at
FROM records r LEFT JOIN record_key_rotations k ON k.structure_id = r.structure_id
GROUP BY r.structure_id, k.target_version, k.finished_at ORDER BY r.structure_id
"""
START_RECORD_ROTATION: Final = """
INSERT INTO record_key_rotations (structure_id, target_version) VALUES ($1, $2)
ON CONFLICT (structure_id) DO UPDATE
SET target_version = excluded.target_version, started_at = now(), finished_at = NULL
"""
FINISH_RECORD_ROTATION: Final = """
UPDATE record_key_rotations SET finished_at = now()
WHERE structure_id = $1 AND target_version = $2
"""
COUNT_RECORDS_KEY_BELOW: Final = """
SELECT count(*) FROM records WHERE structure_id = $1 AND key_version < $2
"""
# Read without locks: the re-sealing happens in memory, and the write below only
# lands on a row nobody changed meanwhile.
SELECT_RESEAL_BATCH: Final = """
SELECT id, structure_id, referent_id, branch_key_version, record_key, key_version, sealed,
       clear, version FROM records
WHERE structure_id = $1 AND key_version < $2 AND id > $3
ORDER BY id
LIMIT $4
"""
# Compare-and-set per row: a record updated, moved or re-sealed since it was read
# (its version, key version or wrapped key changed) is left alone and read again by
# the next pass. Every writer of the service locks the row first, so this statement
# waits for it, then re-checks the row it finds.
RESEAL_RECORDS: Final = """
UPDATE records r
SET record_key = u.record_key, key_version = $2, sealed = u.sealed
FROM unnest($3::uuid[], $4::bigint[], $5::integer[], $6::bytea[], $7::bytea[], $8::bytea[])
     AS u (id, version, old_key_version, old_record_key, record_key, sealed)
WHERE r.id = u.id AND r.structure_id = $1 AND r.version = u.version
  AND r.key_version = u.old_key_version AND r.record_key = u.old_record_key
RETURNING r.id
"""
