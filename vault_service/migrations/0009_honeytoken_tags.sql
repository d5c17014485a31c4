-- Honeytokens that a copy of the database does not give away (review finding).
--
-- Migration 0006 kept the canaries' record ids in clear (`honeytokens.record_id`) and
-- one canary account per structure (`canary_accounts`): whoever held a dump could read
-- which records to leave alone. Now the registry holds only a keyed tag of each id
-- (HMAC-SHA-256 under a key derived inside Vault, truncated to 16 bytes, see
-- limits/honeytokens.py) and the day it was planted; a canary's referent is an
-- ordinary-looking disabled counsellor account, registered nowhere. The service role
-- can read the tags, never write them: registration is an admin's act, through
-- vs_register_honeytoken on the admin's own login.
--
-- The ids of canaries planted before this migration cannot be turned into tags here
-- (the key is in Vault): their registrations are dropped, and the operator plants new
-- ones (`vault-service honeytokens plant`).

DROP TABLE honeytokens;
DROP TABLE canary_accounts;

CREATE TABLE honeytokens (
    tag           bytea PRIMARY KEY CHECK (length(tag) = 16),
    structure_id  uuid NOT NULL REFERENCES structures (id),
    planted_on    date NOT NULL DEFAULT current_date,
    retired_on    date
);
GRANT SELECT ON honeytokens TO vault_service_app, vault_service_auditor, vault_service_admin;

-- A disabled counsellor account of the structure to be the canaries' referent, dated
-- like an account that served and left (activated one to three years ago).
DROP FUNCTION vs_canary_account(uuid);
CREATE FUNCTION vs_canary_account(p_structure uuid) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    actor accounts;
    made uuid := gen_random_uuid();
    served interval := make_interval(days => 365 + floor(random() * 730)::int);
BEGIN
    actor := vs_actor();
    IF NOT EXISTS (SELECT 1 FROM structures WHERE id = p_structure) THEN
        RAISE EXCEPTION 'no such structure' USING ERRCODE = 'VS003';
    END IF;
    INSERT INTO accounts (id, role, structure_id, state, created_at, activated_at, updated_at)
    VALUES (made, 'counsellor', p_structure, 'disabled', now() - served, now() - served,
            now() - make_interval(days => floor(random() * 300)::int));
    RETURN made;
END
$$;
REVOKE ALL ON FUNCTION vs_canary_account(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_canary_account(uuid) TO vault_service_admin;

-- Register (before its record exists: a crash in between leaves a tag that names
-- nothing, never a canary that trips nobody) or retire a structure's canaries.
CREATE FUNCTION vs_register_honeytoken(p_tag bytea, p_structure uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM vs_actor();
    INSERT INTO honeytokens (tag, structure_id) VALUES (p_tag, p_structure);
END
$$;
CREATE FUNCTION vs_retire_honeytokens(p_structure uuid, p_keep bytea[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE n integer;
BEGIN
    PERFORM vs_actor();
    UPDATE honeytokens SET retired_on = current_date
    WHERE structure_id = p_structure AND retired_on IS NULL AND tag <> ALL (p_keep);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION vs_register_honeytoken(bytea, uuid), vs_retire_honeytokens(uuid, bytea[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_register_honeytoken(bytea, uuid), vs_retire_honeytokens(uuid, bytea[])
    TO vault_service_admin;

-- The account of the admin login calling (who planted, for the planting's entry).
CREATE FUNCTION vs_whoami() RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN (vs_actor()).id;
END
$$;
REVOKE ALL ON FUNCTION vs_whoami() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_whoami() TO vault_service_admin;
