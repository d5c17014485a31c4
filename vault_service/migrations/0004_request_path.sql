-- The request path in one durable write: record budgets decided in PostgreSQL, and
-- access-log entries made durable (sequenced) before they are integrated into the
-- Merkle tree by a leader in the background.

-- --- sequenced, not yet integrated access-log entries ----------------------------------------
-- A request's entry is durable once its row here commits: in the same transaction as
-- the write it records, or in the batch statement that also decides budgets. The
-- integrator (audit/integrator.py) moves rows into audit_entries/audit_bodies, giving
-- them their leaf index, in the transaction that deletes them here; a row is thus
-- either pending or in the tree, never both, never neither.
-- Whoever holds the service's credentials can delete a row before it is integrated,
-- as they could write without logging at all: the guarantee that history cannot be
-- rewritten starts at integration and rests on the signed checkpoints.
CREATE TABLE audit_pending (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    salt  bytea NOT NULL CHECK (length(salt) = 32),
    -- The entry body as JSON text (the integrator canonicalises it before hashing).
    body  text NOT NULL CHECK (length(body) BETWEEN 2 AND 1048576)
) WITH (
    -- A queue: every row is deleted within moments; vacuum it often so that the
    -- integrator's scans do not walk dead rows.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 2000
);

CREATE TRIGGER audit_pending_no_update BEFORE UPDATE ON audit_pending
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_pending_no_truncate BEFORE TRUNCATE ON audit_pending
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_pending ENABLE ALWAYS TRIGGER audit_pending_no_update;
ALTER TABLE audit_pending ENABLE ALWAYS TRIGGER audit_pending_no_truncate;

GRANT SELECT, INSERT, DELETE ON audit_pending TO vault_service_app;
GRANT SELECT ON audit_pending TO vault_service_auditor;

-- A pending row the integrator cannot read as an entry (written by something other
-- than the service's code) is set aside here, with an alert, so that one bad row
-- cannot stop the tree from growing; auditors see it, nothing deletes it.
CREATE TABLE audit_quarantine (
    pending_id     bigint PRIMARY KEY,
    salt           bytea NOT NULL,
    body           text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_quarantine_no_change BEFORE UPDATE OR DELETE ON audit_quarantine
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_quarantine_no_truncate BEFORE TRUNCATE ON audit_quarantine
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_quarantine ENABLE ALWAYS TRIGGER audit_quarantine_no_change;
ALTER TABLE audit_quarantine ENABLE ALWAYS TRIGGER audit_quarantine_no_truncate;
GRANT INSERT ON audit_quarantine TO vault_service_app;
GRANT SELECT ON audit_quarantine TO vault_service_auditor;

-- --- record budgets ---------------------------------------------------------------------------
-- Fixed UTC windows (the hour, the day). A budget counts distinct records per subject
-- (an account, or a structure for the structure-wide budget) and window: a mark per
-- record counted, and the count beside it. Re-reading a marked record is free.
CREATE TABLE budget_usage (
    subject       uuid NOT NULL,
    budget        text NOT NULL CHECK (budget ~ '^[a-z_]{1,32}\.(hour|day)$'),
    window_start  timestamptz NOT NULL,
    used          integer NOT NULL CHECK (used >= 0),
    -- The limit in force at the last change (settings may differ between replicas
    -- during a deployment; each decision uses its own and the row shows the last).
    lim           integer NOT NULL CHECK (lim >= 0),
    PRIMARY KEY (subject, budget, window_start)
);

CREATE TABLE budget_marks (
    subject       uuid NOT NULL,
    budget        text NOT NULL,
    window_start  timestamptz NOT NULL,
    record_id     uuid NOT NULL,
    PRIMARY KEY (subject, budget, window_start, record_id)
);
CREATE INDEX budget_marks_window_idx ON budget_marks (window_start);
CREATE INDEX budget_usage_window_idx ON budget_usage (window_start);

GRANT SELECT, INSERT, UPDATE (used, lim), DELETE ON budget_usage TO vault_service_app;
GRANT SELECT, INSERT, DELETE ON budget_marks TO vault_service_app;
GRANT SELECT ON budget_usage TO vault_service_auditor;

-- Decide the budgets of a batch of requests and make their access-log entries durable,
-- in one statement (one round trip, one commit for a whole batch).
--
-- Requests are numbered 1..n in the order given; each has an entry body and salt.
-- Claims are rows (request number, subject, budget, limit, record id), grouped by
-- request in ascending order; a NULL record id claims nothing but asks for the
-- budget's state (a page that returned no record still carries its RateLimit headers). A request is admitted when, for every budget it claims,
-- the distinct records it adds in the current window keep the count within the limit;
-- then its marks and counts stay. Otherwise nothing of its claims stays, its entry is
-- stored as a refusal (`<budget>_budget_exceeded`, no fields), and the answer names
-- the budget. Requests are decided one after the other, so a batch decides exactly as
-- the same requests would one by one; the budget rows are locked first, in one order,
-- which makes it exact across any number of processes and free of deadlocks.
--
-- Per request the answer also gives the budget that binds it most (the refused one,
-- or the one with the fewest records left), its limit, what is left and the seconds
-- until its window ends: the RateLimit headers of the response; and, for a refusal,
-- how many refusals its account has had this hour (the first claim of a request is
-- always its account's).
CREATE FUNCTION vs_access_commit(
    p_claim_req     integer[],
    p_claim_subject uuid[],
    p_claim_budget  text[],
    p_claim_limit   integer[],
    p_claim_record  uuid[],
    p_salt          bytea[],
    p_body          text[],
    OUT req         integer,
    OUT refused     boolean,
    OUT budget      text,
    OUT lim         integer,
    OUT remaining   integer,
    OUT reset_s     integer,
    OUT refusals    integer
) RETURNS SETOF record
LANGUAGE plpgsql AS $fn$
DECLARE
    n_req     integer := coalesce(array_length(p_body, 1), 0);
    n_claims  integer := coalesce(array_length(p_claim_req, 1), 0);
    lo        integer := 1;
    hi        integer;
    bodies    text[] := p_body;
    fresh     text[];
    fresh_marks text[];
    b         record;
    v_used    integer;
    v_left    integer;
    v_reset   integer;
    charged   text[];
    charged_n integer[];
    i         integer;
BEGIN
    IF coalesce(array_length(p_salt, 1), 0) <> n_req
       OR coalesce(array_length(p_claim_subject, 1), 0) <> n_claims
       OR coalesce(array_length(p_claim_budget, 1), 0) <> n_claims
       OR coalesce(array_length(p_claim_limit, 1), 0) <> n_claims
       OR coalesce(array_length(p_claim_record, 1), 0) <> n_claims THEN
        RAISE EXCEPTION 'vs_access_commit: arrays of different lengths' USING ERRCODE = 'VS101';
    END IF;
    -- Fast path, the common case: no request adds a record to any window (re-reads of
    -- records already counted, state-only claims). Nothing changes then, so every
    -- request is admitted without a lock or a write, and the binding budget of each is
    -- read for all at once. A mark that another transaction is adding right now is not
    -- visible here, which only sends this batch down the exact path below.
    IF NOT EXISTS (
        SELECT 1
        FROM unnest(p_claim_subject, p_claim_budget, p_claim_record) AS u (subject, budget, record_id)
        WHERE u.record_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM budget_marks m
            WHERE m.subject = u.subject AND m.budget = u.budget
              AND m.window_start = date_trunc(split_part(u.budget, '.', 2), now(), 'UTC')
              AND m.record_id = u.record_id)
    ) THEN
        RETURN QUERY
        WITH c AS (
            SELECT DISTINCT u.req, u.subject, u.budget, u.lim,
                   date_trunc(split_part(u.budget, '.', 2), now(), 'UTC') AS win
            FROM unnest(p_claim_req, p_claim_subject, p_claim_budget, p_claim_limit)
                AS u (req, subject, budget, lim)
        ), best AS (
            SELECT DISTINCT ON (c.req) c.req, c.budget, c.lim,
                   greatest(c.lim - coalesce(bu.used, 0), 0) AS remaining,
                   greatest(ceil(extract(epoch FROM
                       (c.win + ('1 ' || split_part(c.budget, '.', 2))::interval) - now()))::integer,
                       1) AS reset_s
            FROM c
            LEFT JOIN budget_usage bu
              ON bu.subject = c.subject AND bu.budget = c.budget AND bu.window_start = c.win
            ORDER BY c.req, 4, c.subject, c.budget
        )
        SELECT g.n::integer, false, best.budget, best.lim, best.remaining, best.reset_s,
               NULL::integer
        FROM generate_series(1, n_req) AS g (n)
        LEFT JOIN best ON best.req = g.n
        ORDER BY g.n;
        INSERT INTO audit_pending (salt, body)
        SELECT u.salt, u.body FROM unnest(p_salt, p_body) WITH ORDINALITY AS u (salt, body, ord)
        ORDER BY u.ord;
        RETURN;
    END IF;
    -- Every budget row the batch touches, created if new and locked in one order, so
    -- that concurrent batches (other processes, other replicas) queue instead of
    -- deadlocking; the marks of a subject are only inserted under its row lock.
    INSERT INTO budget_usage (subject, budget, window_start, used, lim)
    SELECT k.subject, k.budget, date_trunc(split_part(k.budget, '.', 2), now(), 'UTC'), 0, 0
    FROM (SELECT DISTINCT u.subject, u.budget
          FROM unnest(p_claim_subject, p_claim_budget) AS u (subject, budget)) AS k
    ORDER BY k.subject, k.budget
    ON CONFLICT DO NOTHING;
    PERFORM 1
    FROM budget_usage bu
    JOIN (SELECT DISTINCT u.subject, u.budget
          FROM unnest(p_claim_subject, p_claim_budget) AS u (subject, budget)) AS k
      ON bu.subject = k.subject AND bu.budget = k.budget
     AND bu.window_start = date_trunc(split_part(k.budget, '.', 2), now(), 'UTC')
    ORDER BY bu.subject, bu.budget
    FOR UPDATE OF bu;
    FOR r IN 1..n_req LOOP
        req := r;
        refused := false;
        budget := NULL;
        lim := NULL;
        remaining := NULL;
        reset_s := NULL;
        refusals := NULL;
        hi := lo;
        WHILE hi <= n_claims AND p_claim_req[hi] = r LOOP
            hi := hi + 1;
        END LOOP;
        IF hi > lo THEN
            -- The records this request adds to its windows (a mark already there,
            -- from this or any process, makes a re-read free).
            WITH c AS (
                SELECT DISTINCT u.subject, u.budget,
                       date_trunc(split_part(u.budget, '.', 2), now(), 'UTC') AS win,
                       u.record_id
                FROM unnest(p_claim_subject[lo:hi - 1], p_claim_budget[lo:hi - 1],
                            p_claim_record[lo:hi - 1]) AS u (subject, budget, record_id)
                WHERE u.record_id IS NOT NULL
            ), ins AS (
                INSERT INTO budget_marks (subject, budget, window_start, record_id)
                SELECT c.subject, c.budget, c.win, c.record_id FROM c
                ON CONFLICT DO NOTHING
                RETURNING budget_marks.subject, budget_marks.budget, budget_marks.record_id
            )
            SELECT array_agg(ins.subject::text || ' ' || ins.budget),
                   array_agg(ins.subject::text || ' ' || ins.budget || ' ' || ins.record_id::text)
            INTO fresh, fresh_marks FROM ins;
            charged := '{}';
            charged_n := '{}';
            FOR b IN
                SELECT u.subject, u.budget, max(u.lim) AS lim,
                       date_trunc(split_part(u.budget, '.', 2), now(), 'UTC') AS win,
                       (SELECT count(*) FROM unnest(fresh) AS f (k)
                        WHERE f.k = u.subject::text || ' ' || u.budget)::integer AS n
                FROM unnest(p_claim_subject[lo:hi - 1], p_claim_budget[lo:hi - 1],
                            p_claim_limit[lo:hi - 1]) AS u (subject, budget, lim)
                GROUP BY u.subject, u.budget
                ORDER BY u.subject, u.budget
            LOOP
                v_used := NULL;
                IF b.n > 0 THEN
                    UPDATE budget_usage bu SET used = bu.used + b.n, lim = b.lim
                    WHERE bu.subject = b.subject AND bu.budget = b.budget
                      AND bu.window_start = b.win AND bu.used + b.n <= b.lim
                    RETURNING bu.used INTO v_used;
                    IF v_used IS NULL THEN
                        refused := true;
                        SELECT bu.used INTO v_used FROM budget_usage bu
                        WHERE bu.subject = b.subject AND bu.budget = b.budget
                          AND bu.window_start = b.win;
                        v_used := coalesce(v_used, 0);
                    ELSE
                        charged := charged || (b.subject::text || ' ' || b.budget);
                        charged_n := charged_n || b.n;
                    END IF;
                ELSE
                    SELECT bu.used INTO v_used FROM budget_usage bu
                    WHERE bu.subject = b.subject AND bu.budget = b.budget
                      AND bu.window_start = b.win;
                    v_used := coalesce(v_used, 0);
                END IF;
                v_reset := ceil(extract(epoch FROM
                    (b.win + ('1 ' || split_part(b.budget, '.', 2))::interval) - now()))::integer;
                v_left := greatest(b.lim - v_used, 0);
                IF refused OR remaining IS NULL OR v_left < remaining THEN
                    -- The refused budget, or else the tightest one, is the one reported.
                    budget := b.budget;
                    lim := b.lim;
                    remaining := v_left;
                    reset_s := greatest(v_reset, 1);
                END IF;
                IF refused THEN
                    EXIT;
                END IF;
            END LOOP;
            IF refused THEN
                -- Nothing of a refused request stays: the marks it added and the counts
                -- it already took (their row locks are still ours).
                DELETE FROM budget_marks m
                USING unnest(fresh_marks) AS f (k)
                WHERE m.subject = split_part(f.k, ' ', 1)::uuid
                  AND m.budget = split_part(f.k, ' ', 2)
                  AND m.window_start =
                      date_trunc(split_part(split_part(f.k, ' ', 2), '.', 2), now(), 'UTC')
                  AND m.record_id = split_part(f.k, ' ', 3)::uuid;
                FOR i IN 1..coalesce(array_length(charged, 1), 0) LOOP
                    UPDATE budget_usage bu SET used = bu.used - charged_n[i]
                    WHERE bu.subject = split_part(charged[i], ' ', 1)::uuid
                      AND bu.budget = split_part(charged[i], ' ', 2)
                      AND bu.window_start = date_trunc(
                          split_part(split_part(charged[i], ' ', 2), '.', 2), now(), 'UTC');
                END LOOP;
                -- Refusals of the request's account (its first claim's subject) this
                -- hour: repeated refusals are what the service suspends an account for.
                INSERT INTO budget_usage AS bu (subject, budget, window_start, used, lim)
                VALUES (p_claim_subject[lo], 'refusals.hour',
                        date_trunc('hour', now(), 'UTC'), 1, 0)
                ON CONFLICT ON CONSTRAINT budget_usage_pkey DO UPDATE SET used = bu.used + 1
                RETURNING bu.used INTO refusals;
                bodies[r] := (p_body[r]::jsonb || jsonb_build_object(
                    'outcome', 'refused',
                    'refusal_code', split_part(budget, '.', 1) || '_budget_exceeded',
                    'fields', '[]'::jsonb))::text;
            END IF;
        END IF;
        lo := hi;
        RETURN NEXT;
    END LOOP;
    IF lo <= n_claims THEN
        RAISE EXCEPTION 'vs_access_commit: claims out of order' USING ERRCODE = 'VS101';
    END IF;
    INSERT INTO audit_pending (salt, body)
    SELECT u.salt, u.body FROM unnest(p_salt, bodies) WITH ORDINALITY AS u (salt, body, ord)
    ORDER BY u.ord;
END
$fn$;

REVOKE ALL ON FUNCTION vs_access_commit(integer[], uuid[], text[], integer[], uuid[], bytea[], text[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    vs_access_commit(integer[], uuid[], text[], integer[], uuid[], bytea[], text[])
    TO vault_service_app;

-- A create in one statement and one round trip: the record, its blind indexes, its
-- idempotency key and its access-log entry (through vs_access_commit, with the
-- caller's one-request arrays) commit together or not at all. A failure of the entry
-- is re-raised as VS102 so that the service answers 503 audit_unavailable for it and
-- nothing else; a concurrent retry with the same idempotency key still surfaces as a
-- unique violation.
CREATE FUNCTION vs_create_record(
    p_id            uuid,
    p_structure     uuid,
    p_referent      uuid,
    p_branch_version integer,
    p_record_key    bytea,
    p_sealed        bytea,
    p_clear         text,
    p_names         text[],
    p_digests       bytea[],
    p_national      boolean[],
    p_idem_key      text,
    p_idem_digest   bytea,
    p_claim_req     integer[],
    p_claim_subject uuid[],
    p_claim_budget  text[],
    p_claim_limit   integer[],
    p_claim_record  uuid[],
    p_salt          bytea[],
    p_body          text[],
    OUT version     integer,
    OUT refused     boolean,
    OUT budget      text,
    OUT lim         integer,
    OUT remaining   integer,
    OUT reset_s     integer,
    OUT refusals    integer
)
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO records (id, structure_id, referent_id, branch_key_version, record_key,
                         key_version, sealed, clear, created_by)
    VALUES (p_id, p_structure, p_referent, p_branch_version, p_record_key, 1, p_sealed,
            p_clear::jsonb, p_referent)
    RETURNING records.version INTO version;
    INSERT INTO record_index (record_id, structure_id, name, digest)
    SELECT p_id, CASE WHEN u.national THEN NULL ELSE p_structure END, u.n, u.d
    FROM unnest(p_names, p_digests, p_national) AS u (n, d, national)
    ON CONFLICT DO NOTHING;
    IF p_idem_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (account_id, key, request_digest, record_id)
        VALUES (p_referent, p_idem_key, p_idem_digest, p_id);
    END IF;
    BEGIN
        SELECT c.refused, c.budget, c.lim, c.remaining, c.reset_s, c.refusals
        INTO refused, budget, lim, remaining, reset_s, refusals
        FROM vs_access_commit(p_claim_req, p_claim_subject, p_claim_budget, p_claim_limit,
                              p_claim_record, p_salt, p_body) AS c;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'the access-log entry of a create could not be made durable'
            USING ERRCODE = 'VS102';
    END;
END
$fn$;

REVOKE ALL ON FUNCTION vs_create_record(uuid, uuid, uuid, integer, bytea, bytea, text, text[],
    bytea[], boolean[], text, bytea, integer[], uuid[], text[], integer[], uuid[], bytea[], text[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_create_record(uuid, uuid, uuid, integer, bytea, bytea, text,
    text[], bytea[], boolean[], text, bytea, integer[], uuid[], text[], integer[], uuid[],
    bytea[], text[])
    TO vault_service_app;
