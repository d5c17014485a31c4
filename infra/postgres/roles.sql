-- vault-service: PostgreSQL roles and database, for a deployment.
--
-- Run ONCE per cluster by the DBA, as a superuser, with psql 15 or newer
-- (for \getenv), BEFORE the first `vault-service migrate`:
--
--     psql -v ON_ERROR_STOP=1 --no-psqlrc -d postgres -f infra/postgres/roles.sql
--
-- Re-running it is safe: roles and database are created only when missing,
-- and the attributes and grants below are asserted again every time, so a
-- drifted role is put back.
--
-- What it does NOT do: create tables or grant on them. The migrations, run as
-- vault_service_owner, create the schema and grant vault_service_app (DML on
-- the application's tables), vault_service_auditor (read on the audit tables)
-- and vault_service_retention (pruning of access-log entry bodies) exactly
-- what each needs, so that grants live beside the tables they concern.
--
-- Passwords never appear in this file. Either the DBA sets them afterwards,
-- interactively, with psql's \password (the password is hashed client-side
-- and never travels or gets logged in clear):
--
--     \password vault_service_owner
--     \password vault_service_app
--
-- or psql reads them from its environment (PG_OWNER_PASSWORD, PG_APP_PASSWORD,
-- PG_AUDITOR_PASSWORD, PG_RETENTION_PASSWORD), as infra/postgres/init-roles.sh
-- does for the demo stack. A role left without a password cannot log in.
--
-- vault_service/migrations/roles.sql creates the same five roles for the dev
-- stack and the tests; keep the two in step.

\set ON_ERROR_STOP on

-- --- Roles --------------------------------------------------------------------
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'vault_service_owner') THEN
        CREATE ROLE vault_service_owner;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'vault_service_app') THEN
        CREATE ROLE vault_service_app;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'vault_service_auditor') THEN
        CREATE ROLE vault_service_auditor;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'vault_service_retention') THEN
        CREATE ROLE vault_service_retention;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'vault_service_admin') THEN
        CREATE ROLE vault_service_admin;
    END IF;
END
$roles$;

-- Owns the database and, through the migrations, every object in it. LOGIN
-- only so that `vault-service migrate` can connect; the running service never
-- holds this role's password.
ALTER ROLE vault_service_owner
    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

-- The service at run time. NOINHERIT: even if someone later grants it
-- membership in another role, it does not silently gain that role's rights.
ALTER ROLE vault_service_app
    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;

-- Auditors' tools: read-only on the audit tables.
ALTER ROLE vault_service_auditor
    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;

-- The retention job: prunes access-log entry bodies past their retention.
ALTER ROLE vault_service_retention
    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;

-- The group of the admins' own logins (the migrations grant it the account
-- functions; it never logs in itself). The DBA makes one login per person, in
-- the group, with a password or a certificate of their own:
--     CREATE ROLE alice LOGIN IN ROLE vault_service_admin;
--     \password alice
-- The service's roles are never members.
ALTER ROLE vault_service_admin
    NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

-- A session left idle inside a transaction holds locks and snapshots (and, for
-- the access log, delays the sequencer); end it rather than wait forever.
ALTER ROLE vault_service_app SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE vault_service_auditor SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE vault_service_retention SET idle_in_transaction_session_timeout = '60s';

-- --- Passwords, only when psql's environment provides them ---------------------
-- \getenv leaves the variable unset when the environment variable is absent;
-- :'name' quotes the value as an SQL literal. The server hashes it with
-- SCRAM-SHA-256 (password_encryption).
\getenv owner_password PG_OWNER_PASSWORD
\getenv app_password PG_APP_PASSWORD
\getenv auditor_password PG_AUDITOR_PASSWORD
\getenv retention_password PG_RETENTION_PASSWORD
SET password_encryption = 'scram-sha-256';
\if :{?owner_password}
ALTER ROLE vault_service_owner PASSWORD :'owner_password';
\endif
\if :{?app_password}
ALTER ROLE vault_service_app PASSWORD :'app_password';
\endif
\if :{?auditor_password}
ALTER ROLE vault_service_auditor PASSWORD :'auditor_password';
\endif
\if :{?retention_password}
ALTER ROLE vault_service_retention PASSWORD :'retention_password';
\endif
\unset owner_password
\unset app_password
\unset auditor_password
\unset retention_password

-- --- Database -------------------------------------------------------------------
-- CREATE DATABASE cannot run inside a DO block (nor any transaction), hence
-- psql's \gexec on a query that yields the statement only when it is missing.
SELECT 'CREATE DATABASE vault_service OWNER vault_service_owner ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'vault_service')
\gexec
ALTER DATABASE vault_service OWNER TO vault_service_owner;

-- Nobody connects or creates temporary tables by default; each login role is
-- granted CONNECT by name. The owner keeps its implicit rights.
REVOKE ALL ON DATABASE vault_service FROM PUBLIC;
GRANT CONNECT ON DATABASE vault_service
    TO vault_service_app, vault_service_auditor, vault_service_retention, vault_service_admin;

-- --- Schema public, inside the new database -------------------------------------
\connect vault_service
-- PUBLIC keeps no right on schema public (not even USAGE): the migrations
-- grant USAGE to the roles that need it. Since PostgreSQL 15, schema public
-- belongs to pg_database_owner, i.e. to vault_service_owner here.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
