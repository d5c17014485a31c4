-- Identity and authorization (issue 3): sites, four-eyes account requests, caseload
-- assignments, break-the-glass grants, external identities.
--
-- Account changes go through SECURITY DEFINER functions owned by the owner role, and
-- the acting admin is the database login that calls them (session_user, mapped in
-- admin_logins), never an argument. Each admin has their own PostgreSQL login, member
-- of vault_service_admin; the service's role holds neither that membership nor any
-- right on these functions. So a compromised service, an SQL injection or one person
-- holding the service's credentials cannot request and approve, skip the second
-- admin, or grant a role above the requester's: two different logins must act.

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

CREATE TABLE admin_logins (
    rolname     name PRIMARY KEY,
    account_id  uuid NOT NULL UNIQUE REFERENCES accounts (id)
);

CREATE FUNCTION vs_role_rank(p_role text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_role WHEN 'counsellor' THEN 1 WHEN 'analyst' THEN 1
                       WHEN 'supervisor' THEN 2 WHEN 'auditor' THEN 2
                       WHEN 'admin' THEN 3 END
$$;

-- The acting admin: the calling login's account, which must be an active admin.
CREATE FUNCTION vs_actor() RETURNS accounts
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE a accounts;
BEGIN
    SELECT acc.* INTO a FROM admin_logins l JOIN accounts acc ON acc.id = l.account_id
    WHERE l.rolname = session_user;
    IF NOT FOUND OR a.state <> 'active' OR a.role <> 'admin' THEN
        RAISE EXCEPTION 'the calling login is not an active admin' USING ERRCODE = 'VS001';
    END IF;
    RETURN a;
END
$$;

CREATE FUNCTION vs_request_account(p_request uuid, p_account uuid, p_role text,
                                   p_structure uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    IF vs_role_rank(p_role) IS NULL OR vs_role_rank(p_role) > vs_role_rank(actor.role) THEN
        RAISE EXCEPTION 'role above the requester''s' USING ERRCODE = 'VS002';
    END IF;
    INSERT INTO accounts (id, role, structure_id, state) VALUES (p_account, p_role, p_structure, 'pending');
    INSERT INTO account_requests (id, kind, account_id, role, structure_id, requested_by)
    VALUES (p_request, 'create', p_account, p_role, p_structure, actor.id);
END
$$;

CREATE FUNCTION vs_request_change(p_request uuid, p_kind text, p_account uuid, p_role text,
                                  p_structure uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; target accounts;
BEGIN
    actor := vs_actor();
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
    VALUES (p_request, p_kind, p_account, p_role, p_structure, actor.id);
END
$$;

-- Approve or refuse: a second, different admin whose own role is at least the one
-- granted. A counsellor still referent of youth cannot change structure: their
-- youth are transferred first, so no record follows a person out of its structure.
CREATE FUNCTION vs_decide_request(p_request uuid, p_approve boolean,
                                  OUT kind text, OUT account_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; req account_requests; target accounts;
BEGIN
    actor := vs_actor();
    SELECT * INTO req FROM account_requests r WHERE r.id = p_request FOR UPDATE;
    IF NOT FOUND OR req.state <> 'pending' THEN
        RAISE EXCEPTION 'no pending request' USING ERRCODE = 'VS006';
    END IF;
    IF req.requested_by = actor.id THEN
        RAISE EXCEPTION 'the requester cannot decide their own request' USING ERRCODE = 'VS007';
    END IF;
    IF vs_role_rank(req.role) > vs_role_rank(actor.role) THEN
        RAISE EXCEPTION 'role above the approver''s' USING ERRCODE = 'VS002';
    END IF;
    SELECT * INTO target FROM accounts a WHERE a.id = req.account_id FOR UPDATE;
    IF p_approve AND req.kind = 'role_change'
       AND target.structure_id IS DISTINCT FROM req.structure_id
       AND EXISTS (SELECT 1 FROM records r WHERE r.referent_id = req.account_id) THEN
        RAISE EXCEPTION 'transfer this account''s youth first' USING ERRCODE = 'VS010';
    END IF;
    UPDATE account_requests SET state = CASE WHEN p_approve THEN 'approved' ELSE 'refused' END,
           decided_by = actor.id, decided_at = now()
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

CREATE FUNCTION vs_apply_state(p_account uuid, p_state text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE accounts SET state = p_state, tokens_valid_after = now(), updated_at = now()
    WHERE id = p_account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such account' USING ERRCODE = 'VS003';
    END IF;
    PERFORM pg_notify('vault_service_accounts', p_account::text);
END
$$;

-- An admin suspends or disables at once: every outstanding token is refused from the
-- next request on, on every replica.
CREATE FUNCTION vs_set_account_state(p_account uuid, p_state text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    IF p_state NOT IN ('suspended', 'disabled') THEN
        RAISE EXCEPTION 'only suspension and disabling are immediate' USING ERRCODE = 'VS008';
    END IF;
    IF actor.id = p_account THEN
        RAISE EXCEPTION 'an admin cannot change their own state' USING ERRCODE = 'VS007';
    END IF;
    PERFORM vs_apply_state(p_account, p_state);
END
$$;

-- The service itself may only suspend (the bulk-read defence); never reactivate,
-- never touch an admin.
CREATE FUNCTION vs_service_suspend(p_account uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM accounts WHERE id = p_account AND role = 'admin') THEN
        RAISE EXCEPTION 'the service does not suspend admins' USING ERRCODE = 'VS008';
    END IF;
    PERFORM vs_apply_state(p_account, 'suspended');
END
$$;

-- One-time bootstrap of the first two admins, mapped to two distinct database logins,
-- only while there is none (the DBA runs it as the owner; see README). Everything
-- after is four-eyes.
CREATE FUNCTION vs_bootstrap_admins(p_first_login name, p_second_login name,
                                    OUT first_admin uuid, OUT second_admin uuid)
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM accounts WHERE role = 'admin') THEN
        RAISE EXCEPTION 'admins already exist: use four-eyes requests' USING ERRCODE = 'VS009';
    END IF;
    IF p_first_login = p_second_login THEN
        RAISE EXCEPTION 'two distinct admins are needed' USING ERRCODE = 'VS009';
    END IF;
    first_admin := gen_random_uuid();
    second_admin := gen_random_uuid();
    INSERT INTO accounts (id, role, state, activated_at)
    VALUES (first_admin, 'admin', 'active', now()), (second_admin, 'admin', 'active', now());
    INSERT INTO admin_logins (rolname, account_id)
    VALUES (p_first_login, first_admin), (p_second_login, second_admin);
END
$$;

REVOKE ALL ON FUNCTION vs_actor(), vs_request_account(uuid, uuid, text, uuid),
    vs_request_change(uuid, text, uuid, text, uuid), vs_decide_request(uuid, boolean),
    vs_apply_state(uuid, text), vs_set_account_state(uuid, text), vs_service_suspend(uuid),
    vs_bootstrap_admins(name, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_request_account(uuid, uuid, text, uuid),
    vs_request_change(uuid, text, uuid, text, uuid), vs_decide_request(uuid, boolean),
    vs_set_account_state(uuid, text) TO vault_service_admin;
GRANT EXECUTE ON FUNCTION vs_service_suspend(uuid) TO vault_service_app;
GRANT USAGE ON SCHEMA public TO vault_service_admin;
GRANT SELECT ON accounts, account_requests, structures, sites, admin_logins TO vault_service_admin;

GRANT SELECT ON sites, account_requests, external_identities TO vault_service_app;
GRANT SELECT, INSERT, DELETE, UPDATE (kind, starts_at, ends_at, created_by) ON record_assignments
    TO vault_service_app;
GRANT SELECT, INSERT, UPDATE (reviewed_by, reviewed_at, review_outcome) ON break_glass_grants
    TO vault_service_app;
