-- Cluster roles of vault-service. Run once per cluster by the DBA (a superuser),
-- before `vault-service migrate`: the dev stack and the tests run this very file,
-- infra/postgres/init-roles.sh runs it in the deployment. Idempotent.
-- No password is ever written here: the DBA sets them with \password or
-- ALTER ROLE ... PASSWORD from a secret store.
DO $roles$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vault_service_owner') THEN
    -- Owns the schema and runs DDL through migrations only.
    CREATE ROLE vault_service_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vault_service_app') THEN
    -- The service at run time: DML on its own tables, granted table by table.
    CREATE ROLE vault_service_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vault_service_auditor') THEN
    -- Auditors' tools: read-only on the access log.
    CREATE ROLE vault_service_auditor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vault_service_admin') THEN
    -- Group of the admins' own logins (one per person, created by the DBA:
    -- CREATE ROLE alice LOGIN IN ROLE vault_service_admin). The service never has it.
    CREATE ROLE vault_service_admin NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vault_service_retention') THEN
    -- The retention job: prunes access-log entry bodies past their retention.
    CREATE ROLE vault_service_retention LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
  END IF;
END
$roles$;

-- Same attributes whoever created the roles first (kept in step with
-- infra/postgres/roles.sql, which adds the passwords and the database for psql).
ALTER ROLE vault_service_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE vault_service_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
ALTER ROLE vault_service_auditor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
ALTER ROLE vault_service_retention LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
ALTER ROLE vault_service_app SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE vault_service_auditor SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE vault_service_retention SET idle_in_transaction_session_timeout = '60s';
