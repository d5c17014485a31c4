#!/bin/sh
# Demo-stack database credentials: random passwords, generated on first
# `docker compose up` by the one-shot `pg-credentials` service, so that no
# password is ever committed. Each consumer gets its own named volume:
#
#   $OUT/bootstrap/   superuser-password, owner-password, app-password
#                     (postgres only: POSTGRES_PASSWORD_FILE and init-roles.sh)
#   $OUT/owner/pgpass the owner's line, for `migrate` only
#   $OUT/app/pgpass   the application role's line, for app1/app2 only
#
# The service's DSNs carry no password: asyncpg (like libpq) reads it from the
# file named by PGPASSFILE, which must be mode 0600 or stricter and owned by
# the uid that reads it.
#
# The auditor and retention roles get no password here: no demo container logs
# in as them. The DBA sets one when a consumer exists (infra/postgres/roles.sql).
#
# Idempotent: once generated, the files are kept (the database was initialised
# with them). A half-written set is an error: remove the pg-* volumes and start
# again.
set -eu

OUT=${OUT:-/out}
POSTGRES_OWNER=${POSTGRES_OWNER:-999:999} # postgres user of the Debian image
APP_OWNER=${APP_OWNER:-10001:10001}       # the service's user (Dockerfile)
PGHOST_NAME=${PGHOST_NAME:-postgres}
PGPORT_NUMBER=${PGPORT_NUMBER:-5432}
PGDATABASE_NAME=${PGDATABASE_NAME:-vault_service}

log() { printf 'pg-credentials: %s\n' "$*" >&2; }

files="bootstrap/superuser-password bootstrap/owner-password bootstrap/app-password owner/pgpass app/pgpass"
present=0
total=0
for f in $files; do
    total=$((total + 1))
    [ -s "$OUT/$f" ] && present=$((present + 1))
done
if [ "$present" -eq "$total" ]; then
    log "credentials already present; nothing to do"
    exit 0
fi
if [ "$present" -ne 0 ]; then
    log "only $present of $total credential files exist; remove the pg-* volumes and start again"
    exit 1
fi

umask 077
# 32 random bytes, hex: no character that needs escaping in a pgpass line or a URL.
password() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }

superuser=$(password)
owner=$(password)
app=$(password)

# put FILE OWNER MODE: write stdin to FILE, then hand it over.
put() {
    cat >"$OUT/$1"
    chmod "$3" "$OUT/$1"
    chown "$2" "$OUT/$1"
}

mkdir -p "$OUT/bootstrap" "$OUT/owner" "$OUT/app"
chmod 0755 "$OUT/bootstrap" "$OUT/owner" "$OUT/app"
printf '%s' "$superuser" | put bootstrap/superuser-password "$POSTGRES_OWNER" 0400
printf '%s' "$owner" | put bootstrap/owner-password "$POSTGRES_OWNER" 0400
printf '%s' "$app" | put bootstrap/app-password "$POSTGRES_OWNER" 0400
printf '%s:%s:%s:%s:%s\n' "$PGHOST_NAME" "$PGPORT_NUMBER" "$PGDATABASE_NAME" vault_service_owner "$owner" |
    put owner/pgpass "$APP_OWNER" 0400
printf '%s:%s:%s:%s:%s\n' "$PGHOST_NAME" "$PGPORT_NUMBER" "$PGDATABASE_NAME" vault_service_app "$app" |
    put app/pgpass "$APP_OWNER" 0400
log "generated passwords for the superuser, vault_service_owner and vault_service_app"
