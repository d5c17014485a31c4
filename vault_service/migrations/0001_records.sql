-- Structures, accounts, keys, encrypted case records and their blind indexes.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO vault_service_app, vault_service_auditor, vault_service_retention;

CREATE TABLE structures (
    id          uuid PRIMARY KEY,
    code        text NOT NULL UNIQUE CHECK (code ~ '^[A-Z0-9-]{2,32}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    region      text CHECK (length(region) <= 100),
    department  text CHECK (department ~ '^(2A|2B|[0-9]{2,3})$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Accounts hold no names: the identity provider knows people, the service knows ids.
CREATE TABLE accounts (
    id                  uuid PRIMARY KEY,
    role                text NOT NULL
        CHECK (role IN ('counsellor', 'supervisor', 'admin', 'auditor', 'analyst')),
    structure_id        uuid REFERENCES structures (id),
    state               text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'active', 'suspended', 'disabled')),
    -- Tokens issued before this instant are refused: suspension revokes them all at once.
    tokens_valid_after  timestamptz NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_structure_for_case_roles
        CHECK ((role IN ('counsellor', 'supervisor')) = (structure_id IS NOT NULL))
);

-- Branch keys: one 256-bit key per structure and version, wrapped by Vault transit.
CREATE TABLE structure_keys (
    structure_id  uuid NOT NULL REFERENCES structures (id),
    version       integer NOT NULL CHECK (version > 0),
    wrapped_key   text NOT NULL CHECK (wrapped_key LIKE 'vault:v%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (structure_id, version)
);

CREATE TABLE records (
    id                  uuid PRIMARY KEY,
    structure_id        uuid NOT NULL REFERENCES structures (id),
    referent_id         uuid NOT NULL REFERENCES accounts (id),
    branch_key_version  integer NOT NULL,
    -- The record key, AES-GCM-wrapped by the branch key (see crypto/keys.py).
    record_key          bytea NOT NULL CHECK (length(record_key) = 61),
    key_version         integer NOT NULL DEFAULT 1 CHECK (key_version > 0),
    -- msgpack map: field path -> AES-GCM blob; never plaintext.
    sealed              bytea NOT NULL,
    -- Only the schema's `internal` properties (codes for aggregates), never personal.
    clear               jsonb NOT NULL DEFAULT '{}'::jsonb,
    version             bigint NOT NULL DEFAULT 1 CHECK (version > 0),
    created_by          uuid NOT NULL REFERENCES accounts (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (structure_id, branch_key_version) REFERENCES structure_keys (structure_id, version)
);
CREATE INDEX records_referent_idx ON records (referent_id, id);
CREATE INDEX records_structure_idx ON records (structure_id, id);

CREATE TABLE record_index (
    record_id     uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    -- NULL for national indexes (NIR, France Travail id).
    structure_id  uuid REFERENCES structures (id),
    name          text NOT NULL CHECK (name ~ '^[a-z_]{1,32}$'),
    digest        bytea NOT NULL CHECK (length(digest) = 32),
    PRIMARY KEY (name, digest, record_id)
);
CREATE INDEX record_index_record_idx ON record_index (record_id);

CREATE TABLE idempotency_keys (
    account_id      uuid NOT NULL REFERENCES accounts (id),
    key             text NOT NULL CHECK (length(key) BETWEEN 8 AND 128),
    -- HMAC of the request body under a Vault-derived key: replays are recognised
    -- without storing a hash that could be brute-forced back to personal values.
    request_digest  bytea NOT NULL CHECK (length(request_digest) = 32),
    record_id       uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);

CREATE TABLE revoked_tokens (
    jti         uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT ON structures, accounts TO vault_service_app;
GRANT SELECT, INSERT ON structure_keys TO vault_service_app;
GRANT SELECT, INSERT, UPDATE ON records TO vault_service_app;
GRANT SELECT, INSERT, DELETE ON record_index TO vault_service_app;
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO vault_service_app;
GRANT SELECT, INSERT ON revoked_tokens TO vault_service_app;
