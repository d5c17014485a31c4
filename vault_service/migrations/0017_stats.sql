-- The BI lane (vault_service/stats/): counts of youth records by the dimensions an
-- analyst may group by, rebuilt as a whole by the refresh job (`vault-service stats
-- refresh`, or the service's own scheduled round). The job decrypts only sex, birth
-- date and situations, keeps none of them: a row is a count of records sharing the
-- same month of entry, structure, programme, situation, age band and sex. No record
-- id, no value, no row per youth; canaries and anonymised or erased records never
-- count. Small cells are still here (suppression happens when a table is published),
-- so the table is the service's alone: analysts reach it through GET /v1/stats only.

CREATE TABLE stats_counts (
    month         date NOT NULL CHECK (month = date_trunc('month', month)::date),
    structure_id  uuid NOT NULL REFERENCES structures (id),
    programme     text NOT NULL CHECK (programme ~ '^[A-Za-z0-9_]{1,32}$'),
    situation     text NOT NULL CHECK (situation ~ '^[a-z0-9_]{1,32}$'),
    age_band      text NOT NULL CHECK (age_band ~ '^[a-z0-9_]{1,16}$'),
    sex           text NOT NULL CHECK (sex ~ '^[A-Za-z_]{1,16}$'),
    n             integer NOT NULL CHECK (n > 0),
    PRIMARY KEY (month, structure_id, programme, situation, age_band, sex)
);

-- The one row saying when the counts were last rebuilt and from how many records.
CREATE TABLE stats_refresh (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    refreshed_at  timestamptz NOT NULL,
    records       integer NOT NULL CHECK (records >= 0),
    canaries      integer NOT NULL CHECK (canaries >= 0),
    failed        integer NOT NULL CHECK (failed >= 0)
);

GRANT SELECT, INSERT, DELETE ON stats_counts TO vault_service_app;
GRANT SELECT, INSERT, UPDATE ON stats_refresh TO vault_service_app;
