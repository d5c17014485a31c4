-- Key rotation on an admin's own login (`vault-service keys rotate`): the rewrap of a
-- stored branch key and its access-log entry (vs_log_admin_act) commit in one
-- transaction, so the admin login reads the wrapped branch keys and may replace the
-- wrapped value, and nothing else of the row. A wrapped branch key is useless without
-- the service's Vault access (transit decrypt), which an admin login does not carry.
GRANT SELECT (structure_id, version, wrapped_key, created_at) ON structure_keys
    TO vault_service_admin;
GRANT UPDATE (wrapped_key) ON structure_keys TO vault_service_admin;

-- Branch-key rotation (`keys rotate branch`): a new branch-key version for a
-- structure, the record keys rewrapped under it (the record key and its version only:
-- never the sealed fields), then the old version deleted once no record names it (the
-- foreign key from records refuses the delete otherwise).
GRANT INSERT (structure_id, version, wrapped_key), DELETE ON structure_keys
    TO vault_service_admin;
GRANT SELECT (id, structure_id, branch_key_version, record_key) ON records
    TO vault_service_admin;
GRANT UPDATE (record_key, branch_key_version) ON records TO vault_service_admin;

-- Record re-encryption (`keys rotate records`): each record's fields re-sealed under a
-- new record key. The admin login reads the sealed blobs (ciphertext: opening them
-- takes the service's Vault access as well) and writes them back with the new key,
-- never the record's version (ETag): a client's If-Match stays valid.
GRANT SELECT (key_version, sealed, version) ON records TO vault_service_admin;
GRANT UPDATE (sealed, key_version) ON records TO vault_service_admin;

-- A re-encryption under way, per structure: records with a key version below the
-- target are still to re-seal. New records start at key version 1 with a fresh key,
-- so "some records are behind" cannot tell a run left half-way from one finished
-- before new records came: this row does.
CREATE TABLE record_key_rotations (
    structure_id    uuid PRIMARY KEY REFERENCES structures (id),
    target_version  integer NOT NULL CHECK (target_version > 1),
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
GRANT SELECT, INSERT, UPDATE ON record_key_rotations TO vault_service_admin;
