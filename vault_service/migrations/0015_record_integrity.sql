-- Record integrity (issue 10, records/sealing.py): each row's `sealed` map carries a tag,
-- under the record key, binding its fields, clear codes, structure, referent, version
-- and key version. `keys rotate records` (an admin's login) checks the tag of each row
-- before re-sealing it and writes a new one: it reads the columns the tag binds. The
-- clear column holds the schema's internal codes only (never a personal value).
GRANT SELECT (referent_id, clear) ON records TO vault_service_admin;

-- `keys rotate checkpoint --retire` checks which key version signed the latest
-- checkpoint (public data: the signed notes auditors download).
GRANT SELECT (size, key_version) ON audit_checkpoints TO vault_service_admin;
