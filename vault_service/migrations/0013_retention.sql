-- Record retention by the decree, legal holds and crypto-shredding.
--
-- `records.retain_until`: the last day a record may be read, computed by the service
-- when it writes the record (the birth date and the programme's end are encrypted),
-- rounded up to the first day of a month so that the column does not give the birth
-- date away; NULL until computed (the retention job backfills it).
--
-- Anonymising or erasing a record deletes its row: the wrapped record key, every
-- ciphertext, its blind-index rows, idempotency keys, assignments, grants and
-- transfer requests (ON DELETE CASCADE) go in one statement. Only the schema's
-- `internal` codes (the `clear` column) stay, in `anonymised_records`, for
-- statistics, until they are purged too.
--
-- Every decision runs in a SECURITY DEFINER function on an admin's own login (like
-- account requests, 0003_identity.sql): the acting admin is the calling login, a
-- second admin approves, and the act's access-log entry (vs_log_admin_act, 0010)
-- commits in the same transaction. The service's role can neither hold, release nor
-- erase, nor see who asked.

ALTER TABLE records ADD COLUMN retain_until date;
CREATE INDEX records_retain_until_idx ON records (retain_until);

-- A create with its day, still one statement and one transaction (0004's create, then
-- the day on the row it has just inserted).
CREATE FUNCTION vs_create_dated_record(
    p_id uuid, p_structure uuid, p_referent uuid, p_branch_version integer,
    p_record_key bytea, p_sealed bytea, p_clear text, p_names text[], p_digests bytea[],
    p_national boolean[], p_idem_key text, p_idem_digest bytea, p_claim_req integer[],
    p_claim_subject uuid[], p_claim_budget text[], p_claim_limit integer[],
    p_claim_record uuid[], p_salt bytea[], p_body text[], p_retain_until date,
    OUT version integer, OUT refused boolean, OUT budget text, OUT lim integer,
    OUT remaining integer, OUT reset_s integer, OUT refusals integer
)
LANGUAGE plpgsql AS $fn$
BEGIN
    SELECT c.version, c.refused, c.budget, c.lim, c.remaining, c.reset_s, c.refusals
    INTO version, refused, budget, lim, remaining, reset_s, refusals
    FROM vs_create_record(p_id, p_structure, p_referent, p_branch_version, p_record_key,
                          p_sealed, p_clear, p_names, p_digests, p_national, p_idem_key,
                          p_idem_digest, p_claim_req, p_claim_subject, p_claim_budget,
                          p_claim_limit, p_claim_record, p_salt, p_body) AS c;
    UPDATE records SET retain_until = p_retain_until WHERE id = p_id;
END
$fn$;
REVOKE ALL ON FUNCTION vs_create_dated_record(uuid, uuid, uuid, integer, bytea, bytea, text,
    text[], bytea[], boolean[], text, bytea, integer[], uuid[], text[], integer[], uuid[],
    bytea[], text[], date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_create_dated_record(uuid, uuid, uuid, integer, bytea, bytea, text,
    text[], bytea[], boolean[], text, bytea, integer[], uuid[], text[], integer[], uuid[],
    bytea[], text[], date) TO vault_service_app;

CREATE TABLE anonymised_records (
    id              uuid PRIMARY KEY,
    structure_id    uuid NOT NULL REFERENCES structures (id),
    -- The schema's `internal` properties only (codes for aggregates), as they were.
    clear           jsonb NOT NULL,
    -- The month the record was made: enough for cohorts, too coarse to single one out.
    created_at      timestamptz NOT NULL,
    anonymised_at   timestamptz NOT NULL DEFAULT now(),
    cause           text NOT NULL CHECK (cause IN ('retention', 'erasure'))
);
CREATE INDEX anonymised_records_at_idx ON anonymised_records (anonymised_at);

CREATE TABLE legal_holds (
    record_id    uuid PRIMARY KEY REFERENCES records (id),
    reason       text NOT NULL,
    held_since   timestamptz NOT NULL DEFAULT now(),
    requested_by uuid NOT NULL REFERENCES accounts (id),
    approved_by  uuid NOT NULL REFERENCES accounts (id),
    CHECK (approved_by <> requested_by)
);

-- Reasons are codes from fixed lists, never free text: a reason is no place for a
-- name or a case number.
CREATE TABLE record_requests (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('hold', 'release', 'erase')),
    -- No foreign key: an approved erasure leaves no record to point at.
    record_id     uuid NOT NULL,
    reason        text NOT NULL,
    requested_by  uuid NOT NULL REFERENCES accounts (id),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    state         text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'approved', 'refused')),
    decided_by    uuid REFERENCES accounts (id),
    decided_at    timestamptz,
    CONSTRAINT record_requests_four_eyes CHECK (decided_by IS NULL OR decided_by <> requested_by),
    CONSTRAINT record_requests_decided CHECK ((state = 'pending') = (decided_by IS NULL)),
    CONSTRAINT record_requests_reason CHECK (
        (kind = 'hold' AND reason IN ('litigation', 'judicial_requisition',
                                      'regulator_investigation', 'fraud_investigation'))
        OR (kind = 'release' AND reason IN ('proceedings_closed', 'hold_lifted_by_authority',
                                            'hold_in_error'))
        OR (kind = 'erase' AND reason IN ('data_subject_request', 'unlawful_processing',
                                          'court_order')))
);
CREATE UNIQUE INDEX record_requests_one_pending ON record_requests (record_id, kind)
    WHERE state = 'pending';

CREATE FUNCTION vs_request_record_act(p_request uuid, p_kind text, p_record uuid,
                                      p_reason text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; target records;
BEGIN
    actor := vs_actor();
    SELECT * INTO target FROM records WHERE id = p_record FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such record' USING ERRCODE = 'VS012';
    END IF;
    IF p_kind = 'hold' AND EXISTS (SELECT 1 FROM legal_holds WHERE record_id = p_record) THEN
        RAISE EXCEPTION 'the record is already held' USING ERRCODE = 'VS013';
    ELSIF p_kind = 'release'
          AND NOT EXISTS (SELECT 1 FROM legal_holds WHERE record_id = p_record) THEN
        RAISE EXCEPTION 'the record is not held' USING ERRCODE = 'VS013';
    ELSIF p_kind = 'erase' AND EXISTS (SELECT 1 FROM legal_holds WHERE record_id = p_record) THEN
        -- A legal hold outweighs an erasure request (GDPR art. 17(3)(e)): release first.
        RAISE EXCEPTION 'the record is under legal hold' USING ERRCODE = 'VS014';
    END IF;
    BEGIN
        INSERT INTO record_requests (id, kind, record_id, reason, requested_by)
        VALUES (p_request, p_kind, p_record, p_reason, actor.id);
    EXCEPTION
        WHEN check_violation THEN
            RAISE EXCEPTION 'not a reason code of this act' USING ERRCODE = 'VS015';
        WHEN unique_violation THEN
            RAISE EXCEPTION 'a request of this kind is already pending' USING ERRCODE = 'VS013';
    END;
    PERFORM vs_log_admin_act('records.' || p_kind || '.requested', 'allowed',
                             ARRAY[p_record], target.structure_id);
END
$$;

-- The record's row goes, with everything that cascades from it; its codes stay.
CREATE FUNCTION vs_shred_record(p_record uuid, p_cause text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO anonymised_records (id, structure_id, clear, created_at, cause)
    SELECT id, structure_id, clear, date_trunc('month', created_at), p_cause
    FROM records WHERE id = p_record;
    DELETE FROM records WHERE id = p_record;
END
$$;

CREATE FUNCTION vs_decide_record_request(p_request uuid, p_approve boolean,
                                         OUT kind text, OUT record_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; req record_requests; target records; hold legal_holds;
BEGIN
    actor := vs_actor();
    SELECT * INTO req FROM record_requests r WHERE r.id = p_request FOR UPDATE;
    IF NOT FOUND OR req.state <> 'pending' THEN
        RAISE EXCEPTION 'no pending request' USING ERRCODE = 'VS006';
    END IF;
    IF req.requested_by = actor.id THEN
        RAISE EXCEPTION 'the requester cannot decide their own request' USING ERRCODE = 'VS007';
    END IF;
    SELECT * INTO target FROM records r WHERE r.id = req.record_id FOR UPDATE;
    IF p_approve AND NOT FOUND THEN
        -- Anonymised by retention since the request: nothing left to act on.
        RAISE EXCEPTION 'no such record' USING ERRCODE = 'VS012';
    END IF;
    SELECT * INTO hold FROM legal_holds h WHERE h.record_id = req.record_id FOR UPDATE;
    UPDATE record_requests r SET state = CASE WHEN p_approve THEN 'approved' ELSE 'refused' END,
           decided_by = actor.id, decided_at = now()
    WHERE r.id = p_request;
    IF p_approve THEN
        IF req.kind = 'hold' THEN
            IF hold.record_id IS NOT NULL THEN
                RAISE EXCEPTION 'the record is already held' USING ERRCODE = 'VS013';
            END IF;
            INSERT INTO legal_holds (record_id, reason, requested_by, approved_by)
            VALUES (req.record_id, req.reason, req.requested_by, actor.id);
        ELSIF req.kind = 'release' THEN
            DELETE FROM legal_holds h WHERE h.record_id = req.record_id;
        ELSE
            IF hold.record_id IS NOT NULL THEN
                RAISE EXCEPTION 'the record is under legal hold' USING ERRCODE = 'VS014';
            END IF;
            PERFORM vs_shred_record(req.record_id, 'erasure');
        END IF;
    END IF;
    PERFORM vs_log_admin_act(
        'records.' || req.kind || CASE WHEN p_approve THEN '.approved' ELSE '.refused' END,
        'allowed', ARRAY[req.record_id], target.structure_id);
    kind := req.kind;
    record_id := req.record_id;
END
$$;

-- What a retention run would do now: records past their day (not held), held ones
-- past their day, records whose day is not computed yet, anonymised rows past
-- `p_purge_days`.
CREATE FUNCTION vs_retention_counts(p_purge_days integer,
                                    OUT due bigint, OUT held bigint, OUT unknown bigint,
                                    OUT purgeable bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM vs_actor();
    SELECT count(*) FILTER (WHERE h.record_id IS NULL AND r.retain_until < current_date),
           count(*) FILTER (WHERE h.record_id IS NOT NULL AND r.retain_until < current_date),
           count(*) FILTER (WHERE r.retain_until IS NULL)
      INTO due, held, unknown
      FROM records r LEFT JOIN legal_holds h ON h.record_id = r.id;
    SELECT count(*) INTO purgeable FROM anonymised_records a
     WHERE a.anonymised_at < now() - make_interval(days => p_purge_days);
END
$$;

-- One batch of anonymisations (records past their day and not held, skipping rows
-- another transaction holds), logged per structure: the ids anonymised.
CREATE FUNCTION vs_retention_anonymise(p_limit integer) RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE picked uuid[]; s record;
BEGIN
    PERFORM vs_actor();
    IF p_limit < 1 OR p_limit > 10000 THEN
        RAISE EXCEPTION 'batch size out of range' USING ERRCODE = 'VS016';
    END IF;
    SELECT coalesce(array_agg(id), '{}') INTO picked FROM (
        SELECT r.id FROM records r
        WHERE r.retain_until < current_date
          AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.record_id = r.id)
        ORDER BY r.retain_until, r.id
        LIMIT p_limit
        FOR UPDATE OF r SKIP LOCKED) due;
    FOR s IN SELECT r.structure_id, array_agg(r.id ORDER BY r.id) AS ids
             FROM records r WHERE r.id = ANY(picked) GROUP BY r.structure_id LOOP
        PERFORM vs_log_admin_act('records.retention.anonymised', 'allowed', s.ids,
                                 s.structure_id);
    END LOOP;
    INSERT INTO anonymised_records (id, structure_id, clear, created_at, cause)
    SELECT id, structure_id, clear, date_trunc('month', created_at), 'retention'
    FROM records WHERE id = ANY(picked);
    DELETE FROM records WHERE id = ANY(picked);
    RETURN QUERY SELECT unnest(picked);
END
$$;

-- One batch of purges of anonymised rows older than `p_purge_days`.
CREATE FUNCTION vs_retention_purge(p_purge_days integer, p_limit integer) RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE picked uuid[]; s record;
BEGIN
    PERFORM vs_actor();
    IF p_limit < 1 OR p_limit > 10000 OR p_purge_days < 0 THEN
        RAISE EXCEPTION 'batch size out of range' USING ERRCODE = 'VS016';
    END IF;
    SELECT coalesce(array_agg(id), '{}') INTO picked FROM (
        SELECT a.id FROM anonymised_records a
        WHERE a.anonymised_at < now() - make_interval(days => p_purge_days)
        ORDER BY a.anonymised_at, a.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED) old;
    FOR s IN SELECT a.structure_id, array_agg(a.id ORDER BY a.id) AS ids
             FROM anonymised_records a WHERE a.id = ANY(picked) GROUP BY a.structure_id LOOP
        PERFORM vs_log_admin_act('records.retention.purged', 'allowed', s.ids, s.structure_id);
    END LOOP;
    DELETE FROM anonymised_records WHERE id = ANY(picked);
    RETURN QUERY SELECT unnest(picked);
END
$$;

REVOKE ALL ON FUNCTION vs_request_record_act(uuid, text, uuid, text),
    vs_shred_record(uuid, text), vs_decide_record_request(uuid, boolean),
    vs_retention_counts(integer), vs_retention_anonymise(integer),
    vs_retention_purge(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_request_record_act(uuid, text, uuid, text),
    vs_decide_record_request(uuid, boolean), vs_retention_counts(integer),
    vs_retention_anonymise(integer), vs_retention_purge(integer, integer)
    TO vault_service_admin;
GRANT SELECT ON record_requests, legal_holds TO vault_service_admin;
-- The service keeps `retain_until` up to date (and backfills it); it reads the
-- anonymised codes for statistics, never who held or erased what.
GRANT SELECT ON anonymised_records TO vault_service_app;
