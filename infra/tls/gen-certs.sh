#!/bin/sh
# Demo-stack TLS: one private CA and one server certificate for each TLS
# endpoint inside the stack (PostgreSQL, OpenBao, the OpenTelemetry collector).
# Run by the one-shot `certs` service of docker-compose.yml, as root, before
# anything else starts; it needs only openssl and a POSIX shell.
#
# Layout (each directory is its own named volume, so that a container mounts
# the CA certificate and, at most, its own key):
#   $OUT/ca/ca.crt                       public; every client pins it
#   $OUT/<service>/server.{crt,key}      key owned by the uid that serves it
#
# The CA private key never leaves this container's tmpfs and is thrown away
# once the three certificates are signed: nobody can later mint another
# certificate that the stack would trust. The price is that adding a service
# means regenerating everything (remove the tls-* volumes and start again).
#
# Idempotent: when every file is present it does nothing, so a restarted stack
# keeps its certificates. Production does not use this script: see
# infra/README.md ("TLS").
set -eu

OUT=${OUT:-/out}
CA_DAYS=${CA_DAYS:-3650}
# 825 days: the longest validity that common TLS clients accept for a leaf.
LEAF_DAYS=${LEAF_DAYS:-825}

# Numeric owners of each key, as the images run them:
#   postgres:17           postgres = 999:999 (Debian image)
#   openbao/openbao       openbao  = 100:1000 (Alpine image, adduser -S)
#   otel-collector-contrib         10001:10001
POSTGRES_OWNER=${POSTGRES_OWNER:-999:999}
OPENBAO_OWNER=${OPENBAO_OWNER:-100:1000}
OTEL_OWNER=${OTEL_OWNER:-10001:10001}

log() { printf 'certs: %s\n' "$*" >&2; }

complete=yes
for f in ca/ca.crt \
    postgres/server.crt postgres/server.key \
    openbao/server.crt openbao/server.key \
    otel-collector/server.crt otel-collector/server.key; do
    [ -s "$OUT/$f" ] || complete=no
done
if [ "$complete" = yes ]; then
    log "certificates already present; nothing to do"
    exit 0
fi

command -v openssl >/dev/null 2>&1 || {
    log "openssl is not installed in this image"
    exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM
umask 077

# Our own minimal config, so that the distribution's openssl.cnf (which adds
# its own v3_ca extensions) cannot duplicate or weaken what we ask for.
cat >"$work/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = vault-service demo CA
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF

log "creating the demo CA"
openssl req -x509 -new -config "$work/ca.cnf" \
    -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$work/ca.key" -out "$work/ca.crt" -days "$CA_DAYS" -sha256 2>/dev/null

# issue NAME OWNER SUBJECT_ALT_NAMES
issue() {
    name=$1
    owner=$2
    sans=$3
    cat >"$work/$name.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$name" -keyout "$work/$name.key" -out "$work/$name.csr" 2>/dev/null
    openssl x509 -req -in "$work/$name.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$LEAF_DAYS" -sha256 \
        -extfile "$work/$name.ext" -out "$work/$name.crt" 2>/dev/null
    openssl verify -CAfile "$work/ca.crt" "$work/$name.crt" >/dev/null

    mkdir -p "$OUT/$name"
    chmod 0755 "$OUT/$name"
    # rm first: a previous run's key belongs to another uid with mode 0400, and
    # this container deliberately lacks CAP_DAC_OVERRIDE to overwrite it.
    rm -f "$OUT/$name/server.crt" "$OUT/$name/server.key"
    cp "$work/$name.crt" "$OUT/$name/server.crt"
    cp "$work/$name.key" "$OUT/$name/server.key"
    chmod 0444 "$OUT/$name/server.crt"
    # PostgreSQL refuses a key readable by group or others; 0400 suits all three.
    chmod 0400 "$OUT/$name/server.key"
    chown "$owner" "$OUT/$name/server.key"
    log "issued $name ($sans)"
}

# localhost and 127.0.0.1 are there for the containers' own health checks.
issue postgres "$POSTGRES_OWNER" "DNS:postgres, DNS:localhost, IP:127.0.0.1"
issue openbao "$OPENBAO_OWNER" "DNS:openbao, DNS:localhost, IP:127.0.0.1"
issue otel-collector "$OTEL_OWNER" "DNS:otel-collector, DNS:localhost, IP:127.0.0.1"

# The CA certificate goes last: its presence is what marks a complete run.
mkdir -p "$OUT/ca"
chmod 0755 "$OUT/ca"
rm -f "$OUT/ca/ca.crt"
cp "$work/ca.crt" "$OUT/ca/ca.crt"
chmod 0444 "$OUT/ca/ca.crt"
log "done; the CA private key is discarded"
