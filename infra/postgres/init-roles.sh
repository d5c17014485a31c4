#!/bin/sh
# First-start hook of the official postgres image: mounted into
# /docker-entrypoint-initdb.d/, it runs once, when the data volume is empty,
# against the temporary server that listens only on the local socket. It runs
# infra/postgres/roles.sql (mounted at /infra/postgres/roles.sql) with the
# passwords that the `pg-credentials` one-shot generated (infra/postgres/
# gen-credentials.sh), so that `migrate` and the service can log in on first
# `docker compose up`.
#
# The entrypoint *sources* a hook that is not executable (file modes of a bind
# mount follow the checkout), so this file must be safe to source: no `exit`,
# no `set -u`, no exported variables. The passwords are given to psql's
# environment for this one command only (never on its command line, where
# `ps` would show them); roles.sql reads them with \getenv.
set -e

PG_OWNER_PASSWORD="$(cat /run/pg-bootstrap/owner-password)" \
PG_APP_PASSWORD="$(cat /run/pg-bootstrap/app-password)" \
    psql -v ON_ERROR_STOP=1 --no-psqlrc \
        --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        -f /infra/postgres/roles.sql
