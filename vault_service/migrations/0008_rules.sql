-- The rest of the anomaly rules (limits/rules.py): what they read that no table kept.
--
-- * when a budget mark was made (reads outside a structure's working hours);
-- * each structure's own time zone, for structures outside metropolitan France;
-- * hourly counts kept past the two days that budget_usage keeps (baselines);
-- * every change of a record's referent (custody concentrated on one account).
-- Ids, counts and times only.

-- Set by the statement that counts the record (the transaction's time).
ALTER TABLE budget_marks ADD COLUMN marked_at timestamptz NOT NULL DEFAULT now();

-- A structure's own time zone and working hours; NULL: the service's
-- VAULT_SERVICE_WORKING_TIME_ZONE and VAULT_SERVICE_WORKING_HOURS. Days are ISO
-- weekdays (Monday = 1); an empty list means no working day. A time zone name
-- PostgreSQL does not know would stop every rule's query: refused on write.
ALTER TABLE structures
    ADD COLUMN time_zone text
        CHECK (time_zone IS NULL OR time_zone ~ '^[A-Za-z_]+(/[A-Za-z0-9_+-]+){0,2}$'),
    ADD COLUMN working_days smallint[]
        CHECK (working_days IS NULL OR working_days <@ ARRAY[1, 2, 3, 4, 5, 6, 7]::smallint[]),
    ADD COLUMN working_start time,
    ADD COLUMN working_end time,
    ADD CONSTRAINT structures_working_hours
        CHECK ((working_start IS NULL) = (working_end IS NULL) AND working_start < working_end);

CREATE FUNCTION structures_check_time_zone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.time_zone IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = NEW.time_zone) THEN
        RAISE EXCEPTION 'unknown time zone' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER structures_check_time_zone BEFORE INSERT OR UPDATE OF time_zone ON structures
    FOR EACH ROW EXECUTE FUNCTION structures_check_time_zone();

-- Closed hourly windows of the record and structure budgets, copied by the rules
-- leader from budget_usage before it is swept, kept four weeks: each account's and
-- each structure's own recent baseline.
CREATE TABLE usage_hours (
    subject      uuid NOT NULL,
    budget       text NOT NULL CHECK (budget IN ('record.hour', 'structure.hour')),
    hour         timestamptz NOT NULL,
    used         integer NOT NULL CHECK (used >= 0),
    PRIMARY KEY (subject, budget, hour)
);
CREATE INDEX usage_hours_hour_idx ON usage_hours (hour);
GRANT SELECT, INSERT, DELETE ON usage_hours TO vault_service_app;
GRANT SELECT ON usage_hours TO vault_service_auditor;

-- Every change of referent (same-structure transfer, accepted cross-structure
-- transfer), written by a trigger whatever the path: the service role cannot write
-- or alter it.
CREATE TABLE referent_changes (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id     uuid NOT NULL,
    from_account  uuid,
    to_account    uuid NOT NULL,
    changed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX referent_changes_to_idx ON referent_changes (to_account, changed_at);
CREATE INDEX referent_changes_at_idx ON referent_changes (changed_at);
GRANT SELECT ON referent_changes TO vault_service_app, vault_service_auditor;

CREATE FUNCTION records_referent_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO referent_changes (record_id, from_account, to_account)
    VALUES (NEW.id, OLD.referent_id, NEW.referent_id);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION records_referent_changed() FROM PUBLIC;
CREATE TRIGGER records_referent_changed AFTER UPDATE OF referent_id ON records
    FOR EACH ROW WHEN (OLD.referent_id IS DISTINCT FROM NEW.referent_id)
    EXECUTE FUNCTION records_referent_changed();
