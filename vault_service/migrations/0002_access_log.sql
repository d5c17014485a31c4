-- The access log: an RFC 9162 Merkle tree stored as immutable entries, prunable
-- bodies, tlog-tiles hashes and signed checkpoints (issue 4; see vault_service/audit/).
--
-- Privileges and triggers below are speed bumps against the application role and
-- careless operators; the real guarantee against anyone who owns the database is
-- the signed checkpoints that auditors keep outside it.

-- Entries: the leaf is 0x01 || uint64 index || int64 microseconds || SHA-256(salt || body)
-- (49 bytes). The checks bind the row to its leaf, so a row cannot be renumbered or
-- given a leaf hash that is not the hash of its leaf.
CREATE TABLE audit_entries (
    idx        bigint PRIMARY KEY CHECK (idx >= 0),
    leaf       bytea NOT NULL CHECK (length(leaf) = 49),
    leaf_hash  bytea NOT NULL CHECK (length(leaf_hash) = 32),
    CONSTRAINT audit_entries_leaf_hash CHECK (leaf_hash = sha256('\x00'::bytea || leaf)),
    CONSTRAINT audit_entries_leaf_index CHECK (substring(leaf FROM 2 FOR 8) = int8send(idx))
);

-- The queryable body of an entry: ids and codes only (schemas/access_log_entry.schema.json).
-- The leaf commits to SHA-256(salt || canonical body); deleting the row and its salt
-- (retention) leaves the tree verifiable and the hash unguessable.
-- Queries and reports read the body itself (through expression indexes), never a copy
-- in other columns: what an auditor's report says is exactly what the offline verifier
-- checks against the signed tree. `at` is the one copy, for retention and time windows,
-- and the constraint ties it to the body.
CREATE TABLE audit_bodies (
    idx   bigint PRIMARY KEY REFERENCES audit_entries (idx),
    at    timestamptz NOT NULL,
    salt  bytea NOT NULL CHECK (length(salt) = 32),
    body  jsonb NOT NULL CHECK (jsonb_typeof(body) = 'object'),
    CONSTRAINT audit_bodies_at CHECK (at = (body ->> 'at')::timestamptz)
);
CREATE INDEX audit_bodies_actor_idx ON audit_bodies ((body ->> 'actor_id'), idx);
CREATE INDEX audit_bodies_action_idx ON audit_bodies ((body ->> 'action'), idx);
-- fastupdate off: with the pending list, one append in thousands would pay for merging
-- megabytes of it into the index (half a second, measured), while holding the tree lock.
CREATE INDEX audit_bodies_records_idx ON audit_bodies
    USING gin ((body -> 'record_ids') jsonb_path_ops) WITH (fastupdate = off);
-- Times follow indexes closely (appends are ordered by the tree lock): a BRIN index
-- costs almost nothing to maintain and serves time windows and retention.
CREATE INDEX audit_bodies_at_idx ON audit_bodies USING brin (at);

-- The tree head. One row, locked FOR UPDATE by every append: this is the sequencer.
CREATE TABLE audit_tree_state (
    id          smallint PRIMARY KEY CHECK (id = 1),
    size        bigint NOT NULL CHECK (size >= 0),
    root        bytea NOT NULL CHECK (length(root) = 32),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_tree_state (id, size, root) VALUES (1, 0, sha256(''::bytea));

-- Hashes of complete subtrees in the C2SP tlog-tiles layout: tile (level, idx) holds
-- up to 256 hashes of Merkle level 8 * level; the rightmost tile of a level grows.
CREATE TABLE audit_tiles (
    level   smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx     bigint NOT NULL CHECK (idx >= 0),
    hashes  bytea NOT NULL
        CHECK (length(hashes) BETWEEN 32 AND 8192 AND length(hashes) % 32 = 0),
    PRIMARY KEY (level, idx)
);

-- Signed checkpoints (C2SP signed note), one per published tree size.
CREATE TABLE audit_checkpoints (
    size         bigint PRIMARY KEY CHECK (size >= 0),
    root         bytea NOT NULL CHECK (length(root) = 32),
    key_version  integer NOT NULL CHECK (key_version > 0),
    note         text NOT NULL CHECK (length(note) BETWEEN 1 AND 65536),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- --- triggers ------------------------------------------------------------------------------
-- ENABLE ALWAYS: they fire even with session_replication_role = replica, which is how
-- a superuser would otherwise silence ordinary triggers.

CREATE FUNCTION audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'the access log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER audit_entries_no_change BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_entries ENABLE ALWAYS TRIGGER audit_entries_no_change;
ALTER TABLE audit_entries ENABLE ALWAYS TRIGGER audit_entries_no_truncate;

CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_checkpoints ENABLE ALWAYS TRIGGER audit_checkpoints_no_change;
ALTER TABLE audit_checkpoints ENABLE ALWAYS TRIGGER audit_checkpoints_no_truncate;

-- Bodies: never updated; deleted only by the retention role, and only once they are
-- older than 30 days, whatever retention period the job is configured with: a stolen
-- retention credential cannot erase the trace of a breach in progress.
CREATE FUNCTION audit_bodies_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'DELETE'
       AND current_user = 'vault_service_retention'
       AND OLD.at < now() - interval '30 days' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'access-log bodies are pruned only by the retention job: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER audit_bodies_guard BEFORE UPDATE OR DELETE ON audit_bodies
    FOR EACH ROW EXECUTE FUNCTION audit_bodies_guard();
CREATE TRIGGER audit_bodies_no_truncate BEFORE TRUNCATE ON audit_bodies
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_bodies ENABLE ALWAYS TRIGGER audit_bodies_guard;
ALTER TABLE audit_bodies ENABLE ALWAYS TRIGGER audit_bodies_no_truncate;

-- Tiles only grow: a row keeps its key and its new hashes extend the old ones.
CREATE FUNCTION audit_tiles_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.level = OLD.level AND NEW.idx = OLD.idx
       AND length(NEW.hashes) >= length(OLD.hashes)
       AND substring(NEW.hashes FROM 1 FOR length(OLD.hashes)) = OLD.hashes THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'access-log tiles only grow: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER audit_tiles_guard BEFORE UPDATE OR DELETE ON audit_tiles
    FOR EACH ROW EXECUTE FUNCTION audit_tiles_guard();
CREATE TRIGGER audit_tiles_no_truncate BEFORE TRUNCATE ON audit_tiles
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_tiles ENABLE ALWAYS TRIGGER audit_tiles_guard;
ALTER TABLE audit_tiles ENABLE ALWAYS TRIGGER audit_tiles_no_truncate;

-- The tree only grows.
CREATE FUNCTION audit_tree_state_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.size >= OLD.size THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the access-log tree only grows: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER audit_tree_state_guard BEFORE UPDATE OR DELETE ON audit_tree_state
    FOR EACH ROW EXECUTE FUNCTION audit_tree_state_guard();
CREATE TRIGGER audit_tree_state_no_truncate BEFORE TRUNCATE ON audit_tree_state
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_tree_state ENABLE ALWAYS TRIGGER audit_tree_state_guard;
ALTER TABLE audit_tree_state ENABLE ALWAYS TRIGGER audit_tree_state_no_truncate;

-- --- privileges ----------------------------------------------------------------------------
-- The service appends (INSERT) and moves the tree head and tiles forward (UPDATE, which
-- the triggers above restrict to growth); it never deletes anything here.
GRANT SELECT, INSERT ON audit_entries, audit_bodies, audit_checkpoints TO vault_service_app;
GRANT SELECT, UPDATE ON audit_tree_state TO vault_service_app;
GRANT SELECT, INSERT, UPDATE ON audit_tiles TO vault_service_app;

-- Auditors' tools read everything and change nothing.
GRANT SELECT ON audit_entries, audit_bodies, audit_tree_state, audit_tiles, audit_checkpoints
    TO vault_service_auditor;

-- The retention job deletes old bodies (the trigger narrows which) and logs that it did,
-- which is an ordinary append. It reads only what its DELETE filters on.
GRANT SELECT (idx, at), DELETE ON audit_bodies TO vault_service_retention;
GRANT INSERT ON audit_entries, audit_bodies TO vault_service_retention;
GRANT SELECT, UPDATE ON audit_tree_state TO vault_service_retention;
GRANT SELECT, INSERT, UPDATE ON audit_tiles TO vault_service_retention;
