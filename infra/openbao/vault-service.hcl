# Policy `vault-service`: what the running service (AppRole role
# `vault-service`) may do, and nothing more. Every path is one named key on
# the `transit` mount; there is no glob, so a key added later is out of reach
# until it is written here.
#
# Deliberately absent: transit/export/*, transit/backup/*, transit/restore/*,
# transit/keys/*/rotate, transit/keys/*/config, transit/keys/*/trim, DELETE on
# transit/keys/*, transit/encrypt/* and transit/datakey/plaintext/*. Rotation
# and configuration belong to the key admin (key-admin.hcl); nobody exports,
# backs up or deletes these keys through a policy.
#
# tests/unit/test_deployment_files.py checks this file path by path.

# --- Branch-key KEK: wraps the per-structure branch keys ---------------------
# New branch key, returned only wrapped (the plaintext variant is not granted:
# the service unwraps through decrypt, where every call is audited).
path "transit/datakey/wrapped/vault-service-branch-kek" {
  capabilities = ["update"]
}

# Unwrap a branch key into memory (bounded cache in the service).
path "transit/decrypt/vault-service-branch-kek" {
  capabilities = ["update"]
}

# Move a wrapped branch key to the latest KEK version after a rotation,
# without the plaintext leaving OpenBao.
path "transit/rewrap/vault-service-branch-kek" {
  capabilities = ["update"]
}

# --- Blind-index roots: HMAC only, to derive the blind-index keys ------------
path "transit/hmac/vault-service-index" {
  capabilities = ["update"]
}

path "transit/hmac/vault-service-national-index" {
  capabilities = ["update"]
}

# --- Ed25519 signing keys: the service's JWTs and access-log checkpoints -----
path "transit/sign/vault-service-token" {
  capabilities = ["update"]
}

path "transit/sign/vault-service-checkpoint" {
  capabilities = ["update"]
}

# --- Key metadata: versions, types and the Ed25519 public keys (JWKS) -------
# A read of transit/keys/<name> never returns private or symmetric material.
path "transit/keys/vault-service-branch-kek" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-index" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-national-index" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-token" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-checkpoint" {
  capabilities = ["read"]
}

# --- The checkpoint signer's anchor (audit/checkpoints.py) -------------------
# The last (size, root) signed per log origin, kept where a database insider
# cannot roll it back; written with check-and-set. The operator creates it
# (init.sh): the service reads and updates it, never creates or deletes it.
path "vault-service-anchor/data/checkpoints" {
  capabilities = ["read", "update"]
}
