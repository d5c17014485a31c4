-- Identity and authorization (issue 3): sites, four-eyes account requests, caseload
-- assignments, break-the-glass grants, external identities.
--
-- Account changes go through SECURITY DEFINER functions owned by the owner role:
-- the application role has no UPDATE on accounts at all, so even a compromised
-- service (or an SQL injection) cannot approve its own request, skip the second
-- admin, or grant a role above the requester's. The functions are the rule.

CREATE TABLE sites (
    id            uuid PRIMARY KEY,
    structure_id  uuid NOT NULL REFERENCES structures (id),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at    timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE accounts
    ADD COLUMN site_id uuid REFERENCES sites (id),
    -- Set when an account becomes active: the restricted period counts from here.
    ADD COLUMN activated_at timestamptz;
UPDATE accounts SET activated_at = created_at WHERE state = 'active';

CREATE TABLE account_requests (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('create', 'role_change', 'reactivate')),
    account_id    uuid NOT NULL REFERENCES accounts (id),
    role          text CHECK (role IN ('counsellor', 'supervisor', 'admin', 'auditor', 'analyst')),
    structure_id  uuid REFERENCES structures (id),
    requested_by  uuid NOT NULL REFERENCES accounts (id),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'refused')),
    decided_by    uuid REFERENCES accounts (id),
    decided_at    timestamptz,
    CONSTRAINT account_requests_four_eyes CHECK (decided_by IS NULL OR decided_by <> requested_by),
    CONSTRAINT account_requests_decided CHECK ((state = 'pending') = (decided_by IS NULL))
);
CREATE INDEX account_requests_pending_idx ON account_requests (requested_at) WHERE state = 'pending';

-- Temporary and support assignments: the referent stays on the record.
CREATE TABLE record_assignments (
    record_id   uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    kind        text NOT NULL CHECK (kind IN ('temporary', 'support')),
    starts_at   timestamptz NOT NULL DEFAULT now(),
    ends_at     timestamptz,
    created_by  uuid NOT NULL REFERENCES accounts (id),
    PRIMARY KEY (record_id, account_id),
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX record_assignments_account_idx ON record_assignments (account_id, record_id);

CREATE TABLE break_glass_grants (
    id              uuid PRIMARY KEY,
    record_id       uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    account_id      uuid NOT NULL REFERENCES accounts (id),
    -- The caller's structure when the grant opened: its supervisors review it.
    structure_id    uuid NOT NULL REFERENCES structures (id),
    reason          text NOT NULL CHECK (reason IN ('referent_absent_youth_present',
                        'safety_emergency', 'legal_obligation', 'service_continuity')),
    opened_at       timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    reviewed_by     uuid REFERENCES accounts (id),
    reviewed_at     timestamptz,
    review_outcome  text CHECK (review_outcome IN ('justified', 'unjustified')),
    CHECK (expires_at > opened_at),
    CHECK ((reviewed_by IS NULL) = (review_outcome IS NULL)),
    CHECK (reviewed_by IS NULL OR reviewed_by <> account_id)
);
CREATE INDEX break_glass_active_idx ON break_glass_grants (account_id, record_id, expires_at);
CREATE INDEX break_glass_review_idx ON break_glass_grants (structure_id, opened_at)
    WHERE reviewed_by IS NULL;

CREATE TABLE external_identities (
    issuer      text NOT NULL CHECK (length(issuer) <= 300),
    subject     text NOT NULL CHECK (length(subject) <= 255),
    account_id  uuid NOT NULL REFERENCES accounts (id),
    PRIMARY KEY (issuer, subject)
);

CREATE FUNCTION vs_role_rank(p_role text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_role WHEN 'counsellor' THEN 1 WHEN 'analyst' THEN 1
                       WHEN 'supervisor' THEN 2 WHEN 'auditor' THEN 2
                       WHEN 'admin' THEN 3 END
$$;

-- The acting admin must exist, be active and be an admin.
CREATE FUNCTION vs_require_admin(p_actor uuid) RETURNS accounts
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE a accounts;
BEGIN
    SELECT * INTO a FROM accounts WHERE id = p_actor;
    IF NOT FOUND OR a.state <> 'active' OR a.role <> 'admin' THEN
        RAISE EXCEPTION 'actor is not an active admin' USING ERRCODE = 'VS001';
    END IF;
    RETURN a;
END
$$;

CREATE FUNCTION vs_request_account(p_request uuid, p_account uuid, p_role text,
                                   p_structure uuid, p_actor uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_require_admin(p_actor);
    IF vs_role_rank(p_role) IS NULL OR vs_role_rank(p_role) > vs_role_rank(actor.role) THEN
        RAISE EXCEPTION 'role above the requester''s' USING ERRCODE = 'VS002';
    END IF;
    INSERT INTO accounts (id, role, structure_id, state) VALUES (p_account, p_role, p_structure, 'pending');
    INSERT INTO account_requests (id, kind, account_id, role, structure_id, requested_by)
    VALUES (p_request, 'create', p_account, p_role, p_structure, p_actor);
END
$$;

CREATE FUNCTION vs_request_change(p_request uuid, p_kind text, p_account uuid, p_role text,
                                  p_structure uuid, p_actor uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; target accounts;
BEGIN
    actor := vs_require_admin(p_actor);
    SELECT * INTO target FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such account' USING ERRCODE = 'VS003';
    END IF;
    IF p_kind = 'role_change' THEN
        IF vs_role_rank(p_role) IS NULL OR vs_role_rank(p_role) > vs_role_rank(actor.role) THEN
            RAISE EXCEPTION 'role above the requester''s' USING ERRCODE = 'VS002';
        END IF;
    ELSIF p_kind = 'reactivate' THEN
        IF target.state NOT IN ('suspended', 'disabled') THEN
            RAISE EXCEPTION 'account is not suspended' USING ERRCODE = 'VS004';
        END IF;
        p_role := target.role;
        p_structure := target.structure_id;
    ELSE
        RAISE EXCEPTION 'unknown request kind' USING ERRCODE = 'VS005';
    END IF;
    INSERT INTO account_requests (id, kind, account_id, role, structure_id, requested_by)
    VALUES (p_request, p_kind, p_account, p_role, p_structure, p_actor);
END
$$;

-- Approve or refuse: a second, different admin whose own role is at least the one
-- granted. Returns the request's kind and target.
CREATE FUNCTION vs_decide_request(p_request uuid, p_actor uuid, p_approve boolean,
                                  OUT kind text, OUT account_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; req account_requests;
BEGIN
    actor := vs_require_admin(p_actor);
    SELECT * INTO req FROM account_requests r WHERE r.id = p_request FOR UPDATE;
    IF NOT FOUND OR req.state <> 'pending' THEN
        RAISE EXCEPTION 'no pending request' USING ERRCODE = 'VS006';
    END IF;
    IF req.requested_by = p_actor THEN
        RAISE EXCEPTION 'the requester cannot decide their own request' USING ERRCODE = 'VS007';
    END IF;
    IF vs_role_rank(req.role) > vs_role_rank(actor.role) THEN
        RAISE EXCEPTION 'role above the approver''s' USING ERRCODE = 'VS002';
    END IF;
    UPDATE account_requests SET state = CASE WHEN p_approve THEN 'approved' ELSE 'refused' END,
           decided_by = p_actor, decided_at = now()
    WHERE id = p_request;
    IF p_approve THEN
        UPDATE accounts a SET state = 'active', activated_at = now(), updated_at = now(),
               role = req.role, structure_id = req.structure_id,
               -- tokens issued under the old role or state die with it
               tokens_valid_after = now()
        WHERE a.id = req.account_id;
    ELSIF req.kind = 'create' THEN
        UPDATE accounts a SET state = 'disabled', updated_at = now() WHERE a.id = req.account_id;
    END IF;
    PERFORM pg_notify('vault_service_accounts', req.account_id::text);
    kind := req.kind;
    account_id := req.account_id;
END
$$;

-- Suspend or disable at once, by an admin or (p_actor NULL) by the service itself:
-- every outstanding token is refused from the next request on, on every replica.
CREATE FUNCTION vs_set_account_state(p_account uuid, p_state text, p_actor uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF p_state NOT IN ('suspended', 'disabled') THEN
        RAISE EXCEPTION 'only suspension and disabling are immediate' USING ERRCODE = 'VS008';
    END IF;
    IF p_actor IS NOT NULL THEN
        PERFORM vs_require_admin(p_actor);
        IF p_actor = p_account THEN
            RAISE EXCEPTION 'an admin cannot change their own state' USING ERRCODE = 'VS007';
        END IF;
    END IF;
    UPDATE accounts SET state = p_state, tokens_valid_after = now(), updated_at = now()
    WHERE id = p_account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such account' USING ERRCODE = 'VS003';
    END IF;
    PERFORM pg_notify('vault_service_accounts', p_account::text);
END
$$;

-- One-time bootstrap of the first two admins, only while there is none (the DBA runs
-- it as the owner; see README). Both start active; everything after is four-eyes.
CREATE FUNCTION vs_bootstrap_admins(p_first uuid, p_second uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM accounts WHERE role = 'admin') THEN
        RAISE EXCEPTION 'admins already exist: use four-eyes requests' USING ERRCODE = 'VS009';
    END IF;
    IF p_first = p_second THEN
        RAISE EXCEPTION 'two distinct admins are needed' USING ERRCODE = 'VS009';
    END IF;
    INSERT INTO accounts (id, role, state, activated_at)
    VALUES (p_first, 'admin', 'active', now()), (p_second, 'admin', 'active', now());
END
$$;

REVOKE ALL ON FUNCTION vs_require_admin(uuid), vs_request_account(uuid, uuid, text, uuid, uuid),
    vs_request_change(uuid, text, uuid, text, uuid, uuid), vs_decide_request(uuid, uuid, boolean),
    vs_set_account_state(uuid, text, uuid), vs_bootstrap_admins(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_request_account(uuid, uuid, text, uuid, uuid),
    vs_request_change(uuid, text, uuid, text, uuid, uuid), vs_decide_request(uuid, uuid, boolean),
    vs_set_account_state(uuid, text, uuid) TO vault_service_app;

GRANT SELECT ON sites, account_requests, external_identities TO vault_service_app;
GRANT SELECT, INSERT, DELETE, UPDATE (kind, starts_at, ends_at, created_by) ON record_assignments
    TO vault_service_app;
GRANT SELECT, INSERT, UPDATE (reviewed_by, reviewed_at, review_outcome) ON break_glass_grants
    TO vault_service_app;
