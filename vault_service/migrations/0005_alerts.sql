-- Alerts of the bulk-read defence, kept in PostgreSQL: ids and counts only, never a
-- personal value. The service raises them; auditors read them through the API;
-- admins acknowledge them on their own database login (four-eyes is not needed to
-- say "I have looked", but who looked is taken from the login, never an argument).

CREATE TABLE alerts (
    id           uuid PRIMARY KEY,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    severity     text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    kind         text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}$'),
    account_id   uuid REFERENCES accounts (id),
    structure_id uuid,
    -- Counts and codes only (budget names, thresholds): checked by the code that
    -- raises an alert, bounded here.
    details      jsonb NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(details) = 'object' AND length(details::text) <= 2000),
    state        text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged')),
    acked_by     uuid REFERENCES accounts (id),
    acked_at     timestamptz,
    ack_comment  text CHECK (length(ack_comment) <= 500),
    CONSTRAINT alerts_acked CHECK ((state = 'acknowledged') = (acked_by IS NOT NULL))
);
CREATE INDEX alerts_raised_idx ON alerts (raised_at, id);
CREATE INDEX alerts_open_idx ON alerts (raised_at) WHERE state = 'open';

GRANT SELECT, INSERT ON alerts TO vault_service_app;
GRANT SELECT ON alerts TO vault_service_admin, vault_service_auditor;

CREATE FUNCTION vs_ack_alert(p_alert uuid, p_comment text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    UPDATE alerts SET state = 'acknowledged', acked_by = actor.id, acked_at = now(),
                      ack_comment = p_comment
    WHERE id = p_alert AND state = 'open';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no open alert with this id' USING ERRCODE = 'VS011';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION vs_ack_alert(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_ack_alert(uuid, text) TO vault_service_admin;

-- Stolen tokens. An admin revokes one token by its id (the id alone is what an incident
-- report or a proxy log gives: its account may be unknown) or every token of an
-- account; every replica drops what it cached on the NOTIFY, and refuses from the next
-- request on. A revoked id is kept past any token's lifetime (an hour at most).
ALTER TABLE revoked_tokens ALTER COLUMN account_id DROP NOT NULL;
ALTER TABLE revoked_tokens ADD COLUMN revoked_by uuid REFERENCES accounts (id);

CREATE FUNCTION vs_revoke_token(p_jti uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    INSERT INTO revoked_tokens (jti, account_id, expires_at, revoked_by)
    VALUES (p_jti, NULL, now() + interval '1 hour', actor.id)
    ON CONFLICT (jti) DO NOTHING;
    PERFORM pg_notify('vault_service_accounts', 'jti:' || p_jti::text);
END
$$;

CREATE FUNCTION vs_revoke_account_tokens(p_account uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE actor accounts;
BEGIN
    actor := vs_actor();
    UPDATE accounts SET tokens_valid_after = now(), updated_at = now() WHERE id = p_account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such account' USING ERRCODE = 'VS003';
    END IF;
    PERFORM pg_notify('vault_service_accounts', p_account::text);
END
$$;

REVOKE ALL ON FUNCTION vs_revoke_token(uuid), vs_revoke_account_tokens(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_revoke_token(uuid), vs_revoke_account_tokens(uuid)
    TO vault_service_admin;

-- Custody: a break-the-glass grant ends when its record leaves the structure it was
-- opened in (the service shortens it; nothing else of a grant changes).
GRANT UPDATE (expires_at) ON break_glass_grants TO vault_service_app;
-- ...and only shortens it: a grant is never made to last longer.
CREATE FUNCTION vs_grants_only_shorten() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.expires_at > OLD.expires_at THEN
        RAISE EXCEPTION 'a break-the-glass grant is never extended'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER break_glass_grants_only_shorten BEFORE UPDATE OF expires_at
    ON break_glass_grants FOR EACH ROW EXECUTE FUNCTION vs_grants_only_shorten();
