-- Admin acts in the access log (issue 9): an admin's own database login gets its
-- entries through this function, in the transaction of its act, never through a
-- grant on the log's tables.
--
-- The entry is a version 1 body (version 2 with `count` above 1) naming the admin
-- from the calling login (vs_actor: never an argument), the act, the records and the
-- structure it concerns, ids and codes only. It goes to audit_pending, like every
-- request's entry; the integrator gives it its leaf. Its salt: two random UUIDs'
-- bytes hashed with the clock (244 random bits), as pgcrypto is not installed.

CREATE FUNCTION vs_log_admin_act(
    p_action        text,
    p_outcome       text DEFAULT 'allowed',
    p_record_ids    uuid[] DEFAULT '{}',
    p_structure     uuid DEFAULT NULL,
    p_refusal_code  text DEFAULT NULL,
    p_count         integer DEFAULT 1
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    actor accounts;
    body  jsonb;
BEGIN
    actor := vs_actor();
    IF p_action !~ '^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}$'
       OR p_outcome NOT IN ('allowed', 'refused')
       OR (p_refusal_code IS NOT NULL AND p_refusal_code !~ '^[a-z][a-z0-9_]{0,63}$')
       OR p_count < 1 OR cardinality(p_record_ids) > 10000 THEN
        RAISE EXCEPTION 'invalid admin log entry' USING ERRCODE = 'VS102';
    END IF;
    body := jsonb_build_object(
        'v', CASE WHEN p_count = 1 THEN 1 ELSE 2 END,
        'at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'action', p_action,
        'outcome', p_outcome,
        'actor_id', actor.id,
        'role', actor.role,
        'structure_id', p_structure,
        'record_ids', to_jsonb(coalesce(p_record_ids, '{}')),
        'fields', '[]'::jsonb,
        'purpose', NULL,
        'purpose_detail', NULL,
        'refusal_code', p_refusal_code,
        'request_id', NULL,
        'token_jti', NULL,
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
REVOKE ALL ON FUNCTION vs_log_admin_act(text, text, uuid[], uuid, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_log_admin_act(text, text, uuid[], uuid, text, integer)
    TO vault_service_admin;
