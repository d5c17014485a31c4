#!/bin/sh
# One-shot bootstrap of the DEMO OpenBao (service `openbao-init` in
# docker-compose.yml). Idempotent: every step checks before it acts, so it is
# run again on every `docker compose up`, which is also how a restarted (and
# therefore sealed) demo OpenBao gets unsealed.
#
#   1. initialise with ONE unseal key share and keep it, with the root token,
#      in $SECRETS_DIR: a volume that only this container mounts;
#   2. unseal, and wait until this node is the active (raft leader) node;
#   3. enable transit at `transit/` and create the five service keys;
#   4. write the `vault-service` and `key-admin` policies;
#   5. enable AppRole, create role `vault-service` with the service policy,
#      pin its role id, and leave a secret id for the service in $APPROLE_DIR.
#
# DEMO ONLY. A single unseal share stored next to the server, and a root token
# kept on disk, are exactly what production must not do: there, OpenBao
# auto-unseals through a KMS/HSM (seal "awskms"/"gcpckms"/"pkcs11"...), the
# recovery shares are split between operators, the root token is revoked
# after set-up, and secret ids are delivered response-wrapped by the
# orchestrator. See infra/README.md.
#
# Step 3 mirrors `vault-service vault-setup` (vault_service.kms), which does
# the same with an operator token where the bao CLI is not at hand.
set -eu

SECRETS_DIR=${SECRETS_DIR:-/run/openbao-init}
APPROLE_DIR=${APPROLE_DIR:-/run/approle}
POLICY_DIR=${POLICY_DIR:-/infra/openbao}
# uid:gid of the service's image (Dockerfile): owner of the secret-id file.
APP_OWNER=${APP_OWNER:-10001:0}
: "${BAO_ADDR:?BAO_ADDR must name the OpenBao API (https://...)}"
: "${VAULT_SERVICE_VAULT_ROLE_ID:?VAULT_SERVICE_VAULT_ROLE_ID must be set}"

ROLE=vault-service
umask 077

log() { printf 'openbao-init: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# `bao status` exits 0 when unsealed, 2 when sealed or uninitialised, and 1
# when it cannot get an answer at all.
wait_for_api() {
    n=0
    while :; do
        rc=0
        bao status >/dev/null 2>&1 || rc=$?
        [ "$rc" -ne 1 ] && return 0
        n=$((n + 1))
        [ "$n" -lt 60 ] || die "no answer from $BAO_ADDR after 60 s"
        sleep 1
    done
}

wait_for_active() {
    n=0
    until [ "$(bao read -field=is_self sys/leader 2>/dev/null || true)" = true ]; do
        n=$((n + 1))
        [ "$n" -lt 60 ] || die "this node did not become the active node after 60 s"
        sleep 1
    done
}

# --- 1. initialise -----------------------------------------------------------
wait_for_api
rc=0
bao operator init -status >/dev/null 2>&1 || rc=$?
case $rc in
0) log "already initialised" ;;
2)
    log "initialising (demo: 1 key share, threshold 1)"
    [ ! -e "$SECRETS_DIR/unseal-key" ] ||
        die "$SECRETS_DIR already holds an unseal key for another OpenBao; refusing to overwrite it"
    # The whole answer lands on the secrets volume first, so that nothing is
    # lost if parsing it fails.
    bao operator init -key-shares=1 -key-threshold=1 >"$SECRETS_DIR/init.txt"
    unseal_key=$(sed -n 's/^Unseal Key 1: //p' "$SECRETS_DIR/init.txt")
    root_token=$(sed -n 's/^Initial Root Token: //p' "$SECRETS_DIR/init.txt")
    [ -n "$unseal_key" ] && [ -n "$root_token" ] ||
        die "could not read the init output; it is kept in $SECRETS_DIR/init.txt"
    # No trailing newline: `key=@file` below sends the file byte for byte.
    printf '%s' "$unseal_key" >"$SECRETS_DIR/unseal-key"
    printf '%s' "$root_token" >"$SECRETS_DIR/root-token"
    rm -f "$SECRETS_DIR/init.txt"
    unset unseal_key root_token
    ;;
*) die "cannot tell whether OpenBao is initialised" ;;
esac

# --- 2. unseal ---------------------------------------------------------------
[ -s "$SECRETS_DIR/unseal-key" ] && [ -s "$SECRETS_DIR/root-token" ] ||
    die "OpenBao is initialised but $SECRETS_DIR holds no unseal key: it was initialised elsewhere"
rc=0
bao status >/dev/null 2>&1 || rc=$?
if [ "$rc" -eq 2 ]; then
    log "unsealing"
    # Through the API with key=@file, so the key never appears in argv.
    bao write sys/unseal key=@"$SECRETS_DIR/unseal-key" >/dev/null
fi
wait_for_active
BAO_TOKEN=$(cat "$SECRETS_DIR/root-token")
export BAO_TOKEN

# --- 3. transit and the service keys -----------------------------------------
if bao read sys/mounts/transit >/dev/null 2>&1; then
    log "transit already enabled"
else
    bao secrets enable -path=transit -description="vault-service key-encryption and signing keys" transit >/dev/null
    log "enabled transit"
fi

# ensure_key NAME TYPE: create the key if missing; refuse a key of another type.
# Keys are created non-exportable, without plaintext backup and not deletable
# (those are transit's defaults; stated here so that a reader need not know).
ensure_key() {
    if current=$(bao read -field=type "transit/keys/$1" 2>/dev/null); then
        [ "$current" = "$2" ] || die "transit key $1 exists with type $current, expected $2"
        log "key $1 present ($2)"
    else
        bao write "transit/keys/$1" type="$2" exportable=false allow_plaintext_backup=false >/dev/null
        log "created key $1 ($2)"
    fi
}
ensure_key vault-service-branch-kek aes256-gcm96
ensure_key vault-service-index aes256-gcm96
ensure_key vault-service-national-index aes256-gcm96
ensure_key vault-service-token ed25519
ensure_key vault-service-checkpoint ed25519

# The checkpoint signer's anchor: KV version 2, one secret created empty here (the
# service may update it, never create it).
if bao read sys/mounts/vault-service-anchor >/dev/null 2>&1; then
    log "anchor mount already enabled"
else
    bao secrets enable -path=vault-service-anchor -version=2 -description="vault-service checkpoint anchor" kv >/dev/null
    log "enabled the anchor mount"
fi
if bao kv get -mount=vault-service-anchor checkpoints >/dev/null 2>&1; then
    log "anchor present"
else
    echo "{}" | bao kv put -mount=vault-service-anchor -cas=0 checkpoints - >/dev/null
    log "created the empty anchor"
fi

# --- 4. policies -------------------------------------------------------------
bao policy write vault-service "$POLICY_DIR/vault-service.hcl" >/dev/null
bao policy write key-admin "$POLICY_DIR/key-admin.hcl" >/dev/null
log "policies vault-service and key-admin written"

# --- 5. AppRole for the service ----------------------------------------------
if bao read sys/auth/approle >/dev/null 2>&1; then
    log "approle already enabled"
else
    bao auth enable approle >/dev/null
    log "enabled approle"
fi

# Tokens are short-lived and renewable up to a day; the service logs in again
# with its secret id when one expires. secret_id_ttl=0 and num_uses=0 keep the
# demo's secret id valid across restarts: production delivers a fresh,
# response-wrapped, short-lived secret id to each replica instead.
bao write "auth/approle/role/$ROLE" \
    token_policies=vault-service \
    token_type=service \
    token_ttl=1h \
    token_max_ttl=24h \
    secret_id_ttl=0 \
    secret_id_num_uses=0 >/dev/null
# A fixed role id (not a secret: it names the role, the secret id proves it)
# lets docker-compose.yml give the same value to every replica's environment.
bao write "auth/approle/role/$ROLE/role-id" role_id="$VAULT_SERVICE_VAULT_ROLE_ID" >/dev/null
printf '%s\n' "$VAULT_SERVICE_VAULT_ROLE_ID" >"$APPROLE_DIR/role-id.tmp"
chmod 0444 "$APPROLE_DIR/role-id.tmp"
mv -f "$APPROLE_DIR/role-id.tmp" "$APPROLE_DIR/role-id"

# Keep a secret id that is still valid; mint a new one otherwise.
if [ -s "$APPROLE_DIR/secret-id" ] &&
    bao write -format=json "auth/approle/role/$ROLE/secret-id/lookup" \
        secret_id=@"$APPROLE_DIR/secret-id" 2>/dev/null | grep -q '"secret_id_accessor"'; then
    log "secret id in $APPROLE_DIR is still valid"
else
    tmp="$APPROLE_DIR/secret-id.tmp"
    rm -f "$tmp"
    bao write -f -field=secret_id "auth/approle/role/$ROLE/secret-id" | tr -d '\n' >"$tmp"
    [ -s "$tmp" ] || die "no secret id was returned"
    # Owner: the service's uid. Group 0 lets this (root, but capability-less)
    # container read it back on the next run to check it.
    chmod 0440 "$tmp"
    chown "$APP_OWNER" "$tmp"
    mv -f "$tmp" "$APPROLE_DIR/secret-id"
    log "new secret id written to $APPROLE_DIR/secret-id"
fi

log "done"
