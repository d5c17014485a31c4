-- Every admin act in the access log, and the edges of four-eyes.
--
-- Each account function of 0003 and 0005 appends its one entry itself, in the act's
-- transaction, naming the admin of the calling login (vs_actor): the act and its
-- entry commit together or not at all, whoever calls the function (the CLI, psql).
-- Entries hold ids and codes only: `record_ids` names what the act concerns (an
-- account, an alert), `request_id` the account request, `token_jti` a revoked token.
--
-- Four-eyes edges:
-- - an admin is suspended or disabled through a request that a second admin approves
--   (a counsellor, supervisor, auditor or analyst still at once);
-- - no act leaves fewer than two active admins;
-- - approving a role change keeps the account's state (never reactivates it);
-- - the account a request concerns does not decide it;
-- - a requester's pending requests are cancelled when they are suspended, disabled or
--   no longer an admin.

ALTER TABLE account_requests
    DROP CONSTRAINT account_requests_kind_check,
    ADD CONSTRAINT account_requests_kind_check
        CHECK (kind IN ('create', 'role_change', 'reactivate', 'suspend', 'disable')),
    DROP CONSTRAINT account_requests_state_check,
    ADD CONSTRAINT account_requests_state_check
        CHECK (state IN ('pending', 'approved', 'refused', 'cancelled')),
    -- A cancelled request was decided by no one: its entry names the admin whose
    -- act (a suspension, a disabling, a demotion) cancelled it.
    DROP CONSTRAINT account_requests_decided,
    ADD CONSTRAINT account_requests_decided CHECK (CASE state
        WHEN 'pending' THEN decided_by IS NULL AND decided_at IS NULL
        WHEN 'cancelled' THEN decided_by IS NULL AND decided_at IS NOT NULL
        ELSE decided_by IS NOT NULL END);

-- The one place that writes an admin act's entry (owner only: callers are the
-- SECURITY DEFINER functions below and vs_log_admin_act). Body as in 0010.
CREATE FUNCTION vs_admin_entry(
    p_actor         uuid,
    p_role          text,
    p_action        text,
    p_outcome       text,
    p_record_ids    uuid[],
    p_structure     uuid,
    p_refusal_code  text,
    p_count         integer,
    p_request       uuid,
    p_jti           uuid
) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE body jsonb;
BEGIN
    IF p_action !~ '^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}$'
       OR p_outcome NOT IN ('allowed', 'refused')
       OR (p_refusal_code IS NOT NULL AND p_refusal_code !~ '^[a-z][a-z0-9_]{0,63}$')
       OR p_count IS NULL OR p_count < 1 OR cardinality(p_record_ids) > 10000 THEN
        RAISE EXCEPTION 'invalid admin log entry' USING ERRCODE = 'VS102';
    END IF;
    body := jsonb_build_object(
        'v', CASE WHEN p_count = 1 THEN 1 ELSE 2 END,
        'at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'action', p_action,
        'outcome', p_outcome,
        'actor_id', p_actor,
        'role', p_role,
        'structure_id', p_structure,
        'record_ids', to_jsonb(coalesce(p_record_ids, '{}')),
        'fields', '[]'::jsonb,
        'purpose', NULL,
        'purpose_detail', NULL,
        'refusal_code', p_refusal_code,
        'request_id', p_request,
        'token_jti', p_jti,
        'client_fingerprint', NULL,
        'criteria', '[]'::jsonb
    );
    IF p_count > 1 THEN
        body := body || jsonb_build_object('count', p_count);
    END IF;
    INSERT INTO audit_pending (salt, body)
    VALUES (
        sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
               || convert_to(clock_timestamp()::text, 'UTF8')),
        body::text
    );
END
$$;
REVOKE ALL ON FUNCTION vs_admin_entry(uuid, text, text, text, uuid[], uuid, text, integer, uuid,
    uuid) FROM PUBLIC;

-- The same, for an admin's own login (refusals, which roll their act back, are
-- logged by the CLI through this in a transaction of their own); now with the
-- account request and the token an act concerns.
DROP FUNCTION vs_log_admin_act(text, text, uuid[], uuid, text, integer);
CREATE FUNCTION vs_log_admin_act(
    p_action        text,
    p_outcome       text DEFAULT 'allowed',
    p_record_ids    uuid[] DEFAULT '{}',
    p_structure     uuid DEFAULT NULL,
    p_refusal_code  text DEFAULT NULL,
    p_count         integer DEFAULT 1,
    p_request       uuid DEFAULT NULL,
    p_jti           uuid DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    PERFORM vs_admin_entry(actor.id, actor.role, p_action, p_outcome, p_record_ids,
                           p_structure, p_refusal_code, p_count, p_request, p_jti);
END
$$;
REVOKE ALL ON FUNCTION vs_log_admin_act(text, text, uuid[], uuid, text, integer, uuid, uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_log_admin_act(text, text, uuid[], uuid, text, integer, uuid, uuid)
    TO vault_service_admin;

-- Refuses an act that would leave fewer than two active admins. Two approvals
-- committing at once (each suspending another admin) would each count the other's
-- target as active: acts that remove an admin are serialised by a transaction lock,
-- and each counts after the previous one committed (a new snapshot per statement).
CREATE FUNCTION vs_keep_two_admins(p_leaving uuid) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('vault_service.admins_remaining'));
    IF EXISTS (SELECT 1 FROM accounts WHERE id = p_leaving AND role = 'admin' AND state = 'active')
       AND (SELECT count(*) FROM accounts
            WHERE role = 'admin' AND state = 'active' AND id <> p_leaving) < 2 THEN
        RAISE EXCEPTION 'at least two active admins must remain' USING ERRCODE = 'VS013';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION vs_keep_two_admins(uuid) FROM PUBLIC;

-- A suspended or disabled requester's pending requests die with their rights: a
-- request an intruder filed is not left for a second admin to approve by habit.
-- One entry per request, naming who suspended the requester (NULL: the service).
CREATE FUNCTION vs_cancel_requests_of(p_requester uuid, p_actor uuid, p_role text) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE req account_requests;
BEGIN
    FOR req IN
        UPDATE account_requests r SET state = 'cancelled', decided_at = now()
        WHERE r.requested_by = p_requester AND r.state = 'pending'
        RETURNING r.*
    LOOP
        IF req.kind = 'create' THEN
            UPDATE accounts a SET state = 'disabled', updated_at = now()
            WHERE a.id = req.account_id AND a.state = 'pending';
        END IF;
        PERFORM vs_admin_entry(p_actor, p_role, 'account.request_cancel', 'allowed',
                               ARRAY[req.account_id], req.structure_id, NULL, 1, req.id, NULL);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION vs_cancel_requests_of(uuid, uuid, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION vs_request_account(p_request uuid, p_account uuid, p_role text,
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
    PERFORM vs_admin_entry(actor.id, actor.role, 'account.request_create', 'allowed',
                           ARRAY[p_account], p_structure, NULL, 1, p_request, NULL);
END
$$;

CREATE OR REPLACE FUNCTION vs_request_change(p_request uuid, p_kind text, p_account uuid,
                                             p_role text, p_structure uuid) RETURNS void
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
        IF p_role <> 'admin' THEN
            PERFORM vs_keep_two_admins(p_account);
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
    PERFORM vs_admin_entry(actor.id, actor.role, 'account.request_' || p_kind, 'allowed',
                           ARRAY[p_account], p_structure, NULL, 1, p_request, NULL);
END
$$;

-- Approve or refuse (0003), with the edges above. What an approval does depends on
-- the kind: a creation or a reactivation makes the account active; a role change
-- changes role and structure and nothing else; a suspension or disabling of an admin
-- applies it.
CREATE OR REPLACE FUNCTION vs_decide_request(p_request uuid, p_approve boolean,
                                             OUT kind text, OUT account_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; req account_requests; target accounts;
BEGIN
    actor := vs_actor();
    SELECT * INTO req FROM account_requests r WHERE r.id = p_request FOR UPDATE;
    IF NOT FOUND OR req.state <> 'pending' THEN
        RAISE EXCEPTION 'no pending request' USING ERRCODE = 'VS006';
    END IF;
    IF req.requested_by = actor.id OR req.account_id = actor.id THEN
        RAISE EXCEPTION 'neither the requester nor the account concerned decides a request'
            USING ERRCODE = 'VS007';
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
    IF p_approve AND (req.kind IN ('suspend', 'disable')
                      OR (req.kind = 'role_change' AND req.role <> 'admin')) THEN
        PERFORM vs_keep_two_admins(req.account_id);
    END IF;
    -- The decision's entry first, then what it causes (cancellations).
    PERFORM vs_admin_entry(actor.id, actor.role,
                           CASE WHEN p_approve THEN 'account.approve' ELSE 'account.refuse' END,
                           'allowed', ARRAY[req.account_id], req.structure_id, NULL, 1, req.id,
                           NULL);
    UPDATE account_requests r SET state = CASE WHEN p_approve THEN 'approved' ELSE 'refused' END,
           decided_by = actor.id, decided_at = now()
    WHERE r.id = p_request;
    IF p_approve AND req.kind IN ('create', 'reactivate') THEN
        UPDATE accounts a SET state = 'active', activated_at = now(), updated_at = now(),
               role = req.role, structure_id = req.structure_id,
               -- tokens issued under the old role or state die with it
               tokens_valid_after = now()
        WHERE a.id = req.account_id;
    ELSIF p_approve AND req.kind = 'role_change' THEN
        UPDATE accounts a SET role = req.role, structure_id = req.structure_id,
               updated_at = now(), tokens_valid_after = now()
        WHERE a.id = req.account_id;
        IF target.role = 'admin' AND req.role <> 'admin' THEN
            -- No longer an admin: their requests die as a suspended admin's do.
            PERFORM vs_cancel_requests_of(req.account_id, actor.id, actor.role);
        END IF;
    ELSIF p_approve THEN
        PERFORM vs_apply_state(req.account_id,
                               CASE req.kind WHEN 'suspend' THEN 'suspended' ELSE 'disabled' END);
        PERFORM vs_cancel_requests_of(req.account_id, actor.id, actor.role);
    ELSIF req.kind = 'create' THEN
        UPDATE accounts a SET state = 'disabled', updated_at = now() WHERE a.id = req.account_id;
    END IF;
    PERFORM pg_notify('vault_service_accounts', req.account_id::text);
    kind := req.kind;
    account_id := req.account_id;
END
$$;

-- Suspend or disable: at once for every role but admin; for an admin, a request that a
-- second admin approves (p_request is its id). Returns the account's state after the
-- call: 'suspended', 'disabled', or 'pending' (a request was filed).
DROP FUNCTION vs_set_account_state(uuid, text);
CREATE FUNCTION vs_set_account_state(p_account uuid, p_state text, p_request uuid)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; target accounts; verb text;
BEGIN
    actor := vs_actor();
    IF p_state NOT IN ('suspended', 'disabled') THEN
        RAISE EXCEPTION 'only suspension and disabling are immediate' USING ERRCODE = 'VS008';
    END IF;
    IF actor.id = p_account THEN
        RAISE EXCEPTION 'an admin cannot change their own state' USING ERRCODE = 'VS007';
    END IF;
    SELECT * INTO target FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such account' USING ERRCODE = 'VS003';
    END IF;
    verb := CASE p_state WHEN 'suspended' THEN 'suspend' ELSE 'disable' END;
    IF target.role = 'admin' THEN
        PERFORM vs_keep_two_admins(p_account);
        INSERT INTO account_requests (id, kind, account_id, role, structure_id, requested_by)
        VALUES (p_request, verb, p_account, target.role, target.structure_id, actor.id);
        PERFORM vs_admin_entry(actor.id, actor.role, 'account.request_' || verb, 'allowed',
                               ARRAY[p_account], target.structure_id, NULL, 1, p_request, NULL);
        RETURN 'pending';
    END IF;
    PERFORM vs_apply_state(p_account, p_state);
    PERFORM vs_cancel_requests_of(p_account, actor.id, actor.role);
    PERFORM vs_admin_entry(actor.id, actor.role, 'account.' || verb, 'allowed',
                           ARRAY[p_account], target.structure_id, NULL, 1, NULL, NULL);
    RETURN p_state;
END
$$;
REVOKE ALL ON FUNCTION vs_set_account_state(uuid, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_set_account_state(uuid, text, uuid) TO vault_service_admin;

CREATE OR REPLACE FUNCTION vs_ack_alert(p_alert uuid, p_comment text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; found_structure uuid;
BEGIN
    actor := vs_actor();
    UPDATE alerts SET state = 'acknowledged', acked_by = actor.id, acked_at = now(),
                      ack_comment = p_comment
    WHERE id = p_alert AND state = 'open'
    RETURNING structure_id INTO found_structure;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no open alert with this id' USING ERRCODE = 'VS011';
    END IF;
    -- The comment stays with the alert: the entry holds ids only.
    PERFORM vs_admin_entry(actor.id, actor.role, 'alert.ack', 'allowed', ARRAY[p_alert],
                           found_structure, NULL, 1, NULL, NULL);
END
$$;

CREATE OR REPLACE FUNCTION vs_revoke_token(p_jti uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    INSERT INTO revoked_tokens (jti, account_id, expires_at, revoked_by)
    VALUES (p_jti, NULL, now() + interval '1 hour', actor.id)
    ON CONFLICT (jti) DO NOTHING;
    PERFORM pg_notify('vault_service_accounts', 'jti:' || p_jti::text);
    PERFORM vs_admin_entry(actor.id, actor.role, 'token.revoke', 'allowed', '{}', NULL, NULL, 1,
                           NULL, p_jti);
END
$$;

CREATE OR REPLACE FUNCTION vs_revoke_account_tokens(p_account uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; found_structure uuid;
BEGIN
    actor := vs_actor();
    UPDATE accounts SET tokens_valid_after = now(), updated_at = now() WHERE id = p_account
    RETURNING structure_id INTO found_structure;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such account' USING ERRCODE = 'VS003';
    END IF;
    PERFORM pg_notify('vault_service_accounts', p_account::text);
    PERFORM vs_admin_entry(actor.id, actor.role, 'account.revoke_tokens', 'allowed',
                           ARRAY[p_account], found_structure, NULL, 1, NULL, NULL);
END
$$;
