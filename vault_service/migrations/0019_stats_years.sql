-- The BI lane publishes on a fixed grid: one calendar year, once closed, and a
-- year's tables never change once computed (review findings of 0017: overlapping
-- periods differenced into one month; closed months that changed at every rebuild,
-- with an erasure or a youth's new situation, showed that youth's codes to whoever
-- asked before and after; regional subtotals moved with a structure).
--
-- At the first rebuild after a year closes (and holds records), every table an
-- analyst may ask for (each grouping of one to three dimensions) is computed from
-- one pass over that year's records, suppressed, sealed under a data key of the
-- year (AES-256-GCM, the key wrapped by Vault's transit key: a copy of the database
-- shows neither the counts nor, by comparing them with `records`, where canaries
-- sit), and kept here. No analyst request computes anything. The app role may add
-- a year and its tables, never change or remove one.

DROP TABLE stats_counts;
ALTER TABLE stats_refresh DROP COLUMN canaries;
ALTER TABLE stats_refresh DROP COLUMN records;
ALTER TABLE stats_refresh DROP COLUMN failed;

CREATE TABLE stats_years (
    year         integer PRIMARY KEY CHECK (year BETWEEN 1970 AND 2100),
    sealed_at    timestamptz NOT NULL,
    k            integer NOT NULL CHECK (k >= 10),
    wrapped_key  text NOT NULL CHECK (wrapped_key ~ '^vault:v[0-9]+:' AND length(wrapped_key) <= 1024)
);

CREATE TABLE stats_tables (
    year      integer NOT NULL REFERENCES stats_years (year),
    group_by  text NOT NULL CHECK (group_by ~ '^[a-z_]{1,16}(,[a-z_]{1,16}){0,2}$'),
    body      bytea NOT NULL,
    PRIMARY KEY (year, group_by)
);

-- A record's entry date never changes: it is the service's clock at creation, and
-- the statistics count each youth in the year it gives. Moving records between
-- years with the service's role (whose UPDATE on `records` covers every column)
-- would have two years sealed that differ by one youth (review), so no role but the
-- owner, disabling this trigger on purpose, may change it.
CREATE FUNCTION records_created_at_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'a record''s entry date never changes'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER records_created_at_fixed BEFORE UPDATE OF created_at ON records
    FOR EACH ROW EXECUTE FUNCTION records_created_at_fixed();

-- A round reads only the records of years after the newest sealed one.
CREATE INDEX records_created_at_brin ON records USING brin (created_at);

GRANT SELECT, INSERT ON stats_years TO vault_service_app;
GRANT SELECT, INSERT ON stats_tables TO vault_service_app;
-- `keys rotate kek` rewraps a year's key with the branch keys (same transit key).
GRANT SELECT (year, wrapped_key), UPDATE (wrapped_key) ON stats_years TO vault_service_admin;
