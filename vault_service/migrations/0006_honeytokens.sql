-- Honeytokens: canary youth records, real records in every way the API can see, in
-- nobody's caseload. Their referent is the structure's canary account, which is
-- disabled: it can never sign in. Only someone holding a copy of the database or an
-- export knows their ids; any request naming one suspends the account that made it.

CREATE TABLE canary_accounts (
    structure_id  uuid PRIMARY KEY REFERENCES structures (id),
    account_id    uuid NOT NULL UNIQUE REFERENCES accounts (id)
);

CREATE TABLE honeytokens (
    record_id     uuid PRIMARY KEY REFERENCES records (id),
    structure_id  uuid NOT NULL REFERENCES structures (id),
    planted_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz
);
CREATE INDEX honeytokens_structure_idx ON honeytokens (structure_id) WHERE retired_at IS NULL;

GRANT SELECT ON canary_accounts TO vault_service_app;
GRANT SELECT, INSERT, UPDATE (retired_at) ON honeytokens TO vault_service_app;
GRANT SELECT ON canary_accounts, honeytokens TO vault_service_auditor, vault_service_admin;

-- The canary account of a structure, made on first use by an admin's own login (no
-- four-eyes: it can do nothing, being disabled). The service's role cannot make one.
CREATE FUNCTION vs_canary_account(p_structure uuid) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    actor accounts;
    found uuid;
BEGIN
    actor := vs_actor();
    SELECT account_id INTO found FROM canary_accounts WHERE structure_id = p_structure;
    IF FOUND THEN
        RETURN found;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM structures WHERE id = p_structure) THEN
        RAISE EXCEPTION 'no such structure' USING ERRCODE = 'VS003';
    END IF;
    found := gen_random_uuid();
    INSERT INTO accounts (id, role, structure_id, state)
    VALUES (found, 'counsellor', p_structure, 'disabled');
    INSERT INTO canary_accounts (structure_id, account_id) VALUES (p_structure, found);
    RETURN found;
END
$$;
REVOKE ALL ON FUNCTION vs_canary_account(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_canary_account(uuid) TO vault_service_admin;

-- A break-the-glass grant was opened for a reason by an account in a role and a
-- structure: when either changes (an approved role change, by any path), its live
-- grants end.
CREATE FUNCTION vs_end_grants_of_account() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE break_glass_grants
    SET expires_at = greatest(now(), opened_at + interval '1 millisecond')
    WHERE account_id = NEW.id AND expires_at > now();
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION vs_end_grants_of_account() FROM PUBLIC;
CREATE TRIGGER accounts_end_grants AFTER UPDATE OF role, structure_id ON accounts
    FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.structure_id IS DISTINCT FROM NEW.structure_id)
    EXECUTE FUNCTION vs_end_grants_of_account();

-- Anomaly rules (limits/rules.py): which rule already alerted on which subject in which
-- window, so that replicas and restarts never alert twice.
CREATE TABLE rule_hits (
    rule          text NOT NULL CHECK (rule ~ '^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}$'),
    subject       uuid NOT NULL,
    window_start  timestamptz NOT NULL,
    hit_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule, subject, window_start)
);
GRANT SELECT, INSERT ON rule_hits TO vault_service_app;

-- Alerts POSTed to a configured webhook (limits/webhook.py), after they commit, by one
-- leader, with retries and back-off: the state of each alert's delivery.
CREATE TABLE alert_deliveries (
    alert_id         uuid PRIMARY KEY REFERENCES alerts (id),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    state            text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed'))
);
GRANT SELECT, INSERT, UPDATE (attempts, next_attempt_at, delivered_at, state)
    ON alert_deliveries TO vault_service_app;
GRANT SELECT ON alert_deliveries TO vault_service_auditor, vault_service_admin;
