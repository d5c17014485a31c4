-- Bulk import of a legacy export (`vault-service import`, imports/), on an admin's own
-- login: the records come sealed by the service's code and keys; each batch, its
-- ledger rows and its access-log entry (action `record.import`, the ids it created)
-- commit in one statement through vs_import_batch.
--
-- The ledger holds a keyed HMAC of each legacy id (a Vault-derived key, like the blind
-- indexes), never the id itself: a copy of the database cannot link a record to the
-- old system's file. One (source, digest) once: a rerun, or a resume after a crash,
-- skips what a committed batch already holds.

CREATE TABLE import_runs (
    id            uuid PRIMARY KEY,
    source        text NOT NULL CHECK (source ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    started_by    uuid NOT NULL REFERENCES accounts (id),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    -- Counts only (lines read, records imported, lines skipped as already present,
    -- lines refused), written when the run finishes.
    lines_read    integer CHECK (lines_read >= 0),
    imported      integer CHECK (imported >= 0),
    skipped       integer CHECK (skipped >= 0),
    refused       integer CHECK (refused >= 0)
);
-- One unfinished run per source: a second one waits for `--resume`.
CREATE UNIQUE INDEX import_runs_one_open ON import_runs (source) WHERE finished_at IS NULL;

CREATE TABLE import_ledger (
    source         text NOT NULL,
    legacy_digest  bytea NOT NULL CHECK (length(legacy_digest) = 32),
    record_id      uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    run_id         uuid NOT NULL REFERENCES import_runs (id),
    PRIMARY KEY (source, legacy_digest)
);
CREATE INDEX import_ledger_record_idx ON import_ledger (record_id);

-- The referent of a structure's records whose legacy referent is unknown: a disabled
-- counsellor account, like the canaries' (nobody logs in as it); supervisors see these
-- records structure-wide and transfer each one to a counsellor.
CREATE TABLE import_queues (
    structure_id  uuid PRIMARY KEY REFERENCES structures (id),
    account_id    uuid NOT NULL UNIQUE REFERENCES accounts (id)
);

GRANT SELECT ON import_runs, import_ledger, import_queues TO vault_service_admin;
GRANT SELECT ON import_runs, import_queues TO vault_service_auditor, vault_service_app;

CREATE FUNCTION vs_import_start(p_run uuid, p_source text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    INSERT INTO import_runs (id, source, started_by) VALUES (p_run, p_source, actor.id);
    PERFORM vs_admin_entry(actor.id, actor.role, 'record.import.started', 'allowed', '{}',
                           NULL, NULL, 1, p_run, NULL);
END
$$;

-- The run's end, with its counts: one entry for the run (the records imported are
-- the batches' entries that carry the run's id), one for the lines skipped (count),
-- one refusal entry per code (count), as the schema's `count` stands for identical
-- events.
CREATE FUNCTION vs_import_finish(p_run uuid, p_read integer, p_imported integer,
                                 p_skipped integer, p_codes text[], p_counts integer[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    actor accounts;
    i integer;
BEGIN
    actor := vs_actor();
    UPDATE import_runs
    SET finished_at = now(), lines_read = p_read, imported = p_imported, skipped = p_skipped,
        refused = (SELECT coalesce(sum(c), 0) FROM unnest(p_counts) AS c)
    WHERE id = p_run AND finished_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such unfinished import run' USING ERRCODE = 'VS003';
    END IF;
    PERFORM vs_admin_entry(actor.id, actor.role, 'record.import.finished', 'allowed', '{}',
                           NULL, NULL, 1, p_run, NULL);
    IF p_skipped > 0 THEN
        PERFORM vs_admin_entry(actor.id, actor.role, 'record.import.skipped', 'allowed', '{}',
                               NULL, NULL, p_skipped, p_run, NULL);
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_codes), 0) LOOP
        PERFORM vs_admin_entry(actor.id, actor.role, 'record.import.refused', 'refused', '{}',
                               NULL, p_codes[i], p_counts[i], p_run, NULL);
    END LOOP;
END
$$;

-- The structure's queue account, made on first use.
CREATE FUNCTION vs_import_queue(p_structure uuid) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    made uuid;
BEGIN
    PERFORM vs_actor();
    SELECT account_id INTO made FROM import_queues WHERE structure_id = p_structure;
    IF FOUND THEN
        RETURN made;
    END IF;
    made := gen_random_uuid();
    INSERT INTO accounts (id, role, structure_id, state) VALUES (made, 'counsellor', p_structure,
                                                                 'disabled');
    INSERT INTO import_queues (structure_id, account_id) VALUES (p_structure, made);
    RETURN made;
END
$$;

-- One batch of one structure: the records, their blind indexes (flattened: entry k
-- belongs to record p_index_of[k], an index into p_ids), the ledger rows and the
-- batch's access-log entry, all or nothing. A legacy digest already in the ledger
-- (another run of the same source committed it meanwhile) fails the whole batch.
CREATE FUNCTION vs_import_batch(
    p_run uuid, p_source text, p_structure uuid, p_ids uuid[], p_referents uuid[],
    p_branch_versions integer[], p_record_keys bytea[], p_sealed bytea[], p_clear text[],
    p_retain date[], p_digests bytea[], p_index_of integer[], p_index_names text[],
    p_index_digests bytea[], p_index_national boolean[]
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    IF NOT EXISTS (SELECT 1 FROM import_runs WHERE id = p_run AND source = p_source
                   AND finished_at IS NULL) THEN
        RAISE EXCEPTION 'no such unfinished import run' USING ERRCODE = 'VS003';
    END IF;
    INSERT INTO records (id, structure_id, referent_id, branch_key_version, record_key,
                         key_version, sealed, clear, created_by, retain_until)
    SELECT u.id, p_structure, u.referent, u.bv, u.rk, 1, u.sealed, u.clear::jsonb, actor.id,
           u.retain
    FROM unnest(p_ids, p_referents, p_branch_versions, p_record_keys, p_sealed, p_clear,
                p_retain) AS u (id, referent, bv, rk, sealed, clear, retain);
    INSERT INTO record_index (record_id, structure_id, name, digest)
    SELECT p_ids[u.k], CASE WHEN u.national THEN NULL ELSE p_structure END, u.n, u.d
    FROM unnest(p_index_of, p_index_names, p_index_digests, p_index_national)
         AS u (k, n, d, national)
    ON CONFLICT DO NOTHING;
    INSERT INTO import_ledger (source, legacy_digest, record_id, run_id)
    SELECT p_source, u.d, u.id, p_run FROM unnest(p_digests, p_ids) AS u (d, id);
    PERFORM vs_admin_entry(actor.id, actor.role, 'record.import', 'allowed', p_ids,
                           p_structure, NULL, greatest(cardinality(p_ids), 1), p_run, NULL);
END
$$;

REVOKE ALL ON FUNCTION vs_import_start(uuid, text),
    vs_import_finish(uuid, integer, integer, integer, text[], integer[]),
    vs_import_queue(uuid),
    vs_import_batch(uuid, text, uuid, uuid[], uuid[], integer[], bytea[], bytea[], text[],
                    date[], bytea[], integer[], text[], bytea[], boolean[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_import_start(uuid, text),
    vs_import_finish(uuid, integer, integer, integer, text[], integer[]),
    vs_import_queue(uuid),
    vs_import_batch(uuid, text, uuid, uuid[], uuid[], integer[], bytea[], bytea[], text[],
                    date[], bytea[], integer[], text[], bytea[], boolean[]) TO vault_service_admin;
