-- Auditors acknowledge alerts from the console (POST /v1/alerts/{id}/ack): the
-- service's role may mark one open alert acknowledged by an active auditor account,
-- with a comment, and nothing else of the alerts table. The route writes its
-- access-log entry in the same transaction, so an acknowledgement never stands
-- without its entry. NULL: no open alert with this id that an auditor may close
-- (the route answers 404). Critical alerts (honeytokens, integrity, witnesses,
-- admin bursts) and alerts about the auditor's own account stay with the admins'
-- `alerts ack` on their own logins (review finding: the service's role could
-- otherwise close them under any auditor's name).
CREATE FUNCTION vs_auditor_ack_alert(p_alert uuid, p_actor uuid, p_comment text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE found_id uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM accounts
                   WHERE id = p_actor AND role = 'auditor' AND state = 'active') THEN
        RAISE EXCEPTION 'only an active auditor acknowledges an alert'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE alerts SET state = 'acknowledged', acked_by = p_actor, acked_at = now(),
                      ack_comment = p_comment
    WHERE id = p_alert AND state = 'open' AND severity <> 'critical'
      AND account_id IS DISTINCT FROM p_actor
    RETURNING id INTO found_id;
    RETURN found_id;
END
$$;
REVOKE ALL ON FUNCTION vs_auditor_ack_alert(uuid, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vs_auditor_ack_alert(uuid, uuid, text) TO vault_service_app;
