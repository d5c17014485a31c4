-- Cross-structure transfers wait for the receiving structure. A supervisor of the
-- record's structure asks; a supervisor of the receiving structure accepts (the record
-- moves then, in the accepting transaction) or declines; the sending structure may
-- cancel; an unanswered request expires. So no supervisor moves a youth into another
-- structure alone. Ids, codes and dates only: never a personal value.

CREATE TABLE transfer_requests (
    id              uuid PRIMARY KEY,
    record_id       uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    from_structure  uuid NOT NULL REFERENCES structures (id),
    to_structure    uuid NOT NULL REFERENCES structures (id),
    -- The counsellor who becomes referent on acceptance.
    to_account      uuid NOT NULL REFERENCES accounts (id),
    requested_by    uuid NOT NULL REFERENCES accounts (id),
    requested_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'accepted', 'declined', 'cancelled', 'expired')),
    -- Who accepted, declined or cancelled, and when; an expired request has no decider
    -- and is dated by its expiry.
    decided_by      uuid REFERENCES accounts (id),
    decided_at      timestamptz,
    CONSTRAINT transfer_requests_other_structure CHECK (from_structure <> to_structure),
    CONSTRAINT transfer_requests_expiry CHECK (expires_at > requested_at),
    CONSTRAINT transfer_requests_decided CHECK ((state = 'pending') = (decided_at IS NULL)),
    CONSTRAINT transfer_requests_decider
        CHECK ((state IN ('accepted', 'declined', 'cancelled')) = (decided_by IS NOT NULL)),
    -- The receiving side is never the one who asked (an account moved meanwhile from
    -- the sending structure to the receiving one).
    CONSTRAINT transfer_requests_four_eyes
        CHECK (state NOT IN ('accepted', 'declined') OR decided_by <> requested_by)
);
-- At most one request waits per record: a second one is refused, not queued.
CREATE UNIQUE INDEX transfer_requests_one_pending ON transfer_requests (record_id)
    WHERE state = 'pending';
CREATE INDEX transfer_requests_incoming_idx ON transfer_requests (to_structure, id)
    WHERE state = 'pending';
CREATE INDEX transfer_requests_outgoing_idx ON transfer_requests (from_structure, id)
    WHERE state = 'pending';

-- A request is decided once: nothing of it changes after it leaves `pending`. The
-- service's role may only change the decision columns (the grant below).
CREATE FUNCTION vs_transfer_decided_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'pending' THEN
        RAISE EXCEPTION 'a decided transfer request never changes'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER transfer_requests_decided_once BEFORE UPDATE ON transfer_requests
    FOR EACH ROW EXECUTE FUNCTION vs_transfer_decided_once();

GRANT SELECT, INSERT, UPDATE (state, decided_by, decided_at) ON transfer_requests
    TO vault_service_app;
GRANT SELECT ON transfer_requests TO vault_service_auditor;
