-- External identities (an OpenID provider's issuer and subject) linked to accounts
-- under four-eyes: an admin asks (`accounts link` / `accounts unlink`), a second
-- admin approves through vs_decide_request, as for every other account change. Each
-- request and decision is an access-log entry naming the account, never the subject.

ALTER TABLE account_requests
    ADD COLUMN issuer  text CHECK (length(issuer) <= 300),
    ADD COLUMN subject text CHECK (length(subject) <= 255),
    DROP CONSTRAINT account_requests_kind_check,
    ADD CONSTRAINT account_requests_kind_check
        CHECK (kind IN ('create', 'role_change', 'reactivate', 'suspend', 'disable',
                        'link', 'unlink')),
    ADD CONSTRAINT account_requests_identity
        CHECK ((kind IN ('link', 'unlink')) = (issuer IS NOT NULL AND subject IS NOT NULL));

-- One account per external identity at a time: a second pending link of the same
-- identity is refused when asked, not when the second approval fails.
CREATE UNIQUE INDEX account_requests_one_pending_link ON account_requests (issuer, subject)
    WHERE state = 'pending' AND kind IN ('link', 'unlink');

GRANT SELECT ON external_identities TO vault_service_admin;

-- Ask to link (p_kind 'link') or unlink ('unlink') an external identity.
CREATE FUNCTION vs_request_identity(p_request uuid, p_kind text, p_account uuid,
                                    p_issuer text, p_subject text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts; target accounts; linked uuid;
BEGIN
    actor := vs_actor();
    SELECT * INTO target FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such account' USING ERRCODE = 'VS003';
    END IF;
    IF vs_role_rank(target.role) > vs_role_rank(actor.role) THEN
        RAISE EXCEPTION 'role above the requester''s' USING ERRCODE = 'VS002';
    END IF;
    SELECT e.account_id INTO linked FROM external_identities e
    WHERE e.issuer = p_issuer AND e.subject = p_subject;
    IF p_kind = 'link' THEN
        IF target.state = 'disabled' THEN
            RAISE EXCEPTION 'a disabled account is not linked' USING ERRCODE = 'VS008';
        END IF;
        IF linked IS NOT NULL THEN
            RAISE EXCEPTION 'identity already linked' USING ERRCODE = 'VS014';
        END IF;
    ELSIF p_kind = 'unlink' THEN
        IF linked IS DISTINCT FROM p_account THEN
            RAISE EXCEPTION 'identity not linked to this account' USING ERRCODE = 'VS015';
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown request kind' USING ERRCODE = 'VS005';
    END IF;
    BEGIN
        INSERT INTO account_requests (id, kind, account_id, role, structure_id, requested_by,
                                      issuer, subject)
        VALUES (p_request, p_kind, p_account, target.role, target.structure_id, actor.id,
                p_issuer, p_subject);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'a request for this identity is pending' USING ERRCODE = 'VS016';
    END;
    PERFORM vs_admin_entry(actor.id, actor.role, 'account.request_' || p_kind, 'allowed',
                           ARRAY[p_account], target.structure_id, NULL, 1, p_request, NULL);
END
$$;
REVOKE ALL ON FUNCTION vs_request_identity(uuid, text, uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_request_identity(uuid, text, uuid, text, text)
    TO vault_service_admin;

-- Decisions (0012), now also applying a link or an unlink. The NOTIFY at the end
-- drops every replica's cached link of the account at once.
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
    ELSIF p_approve AND req.kind = 'link' THEN
        BEGIN
            INSERT INTO external_identities (issuer, subject, account_id)
            VALUES (req.issuer, req.subject, req.account_id);
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION 'identity already linked' USING ERRCODE = 'VS014';
        END;
    ELSIF p_approve AND req.kind = 'unlink' THEN
        DELETE FROM external_identities e
        WHERE e.issuer = req.issuer AND e.subject = req.subject
          AND e.account_id = req.account_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'identity not linked to this account' USING ERRCODE = 'VS015';
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
