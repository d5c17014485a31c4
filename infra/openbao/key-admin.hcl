# Policy `key-admin`: the key-rotation operator. Attach it to a human
# operator's identity (OIDC or userpass with MFA in production), never to the
# service and never to a long-lived token.
#
# The operator may list and read the service's transit keys, rotate them, and
# raise min_decryption_version / min_encryption_version once every wrapped
# branch key has been rewrapped (see infra/README.md, "Rotating keys").
#
# The operator may NOT: export, back up or restore a key; delete it; trim old
# versions (that destroys them); or use any key (no encrypt, decrypt, sign,
# hmac, datakey). allowed_parameters on the config paths is what stops the
# operator from setting exportable, allow_plaintext_backup or deletion_allowed,
# each of which would open a path this policy otherwise keeps closed.

path "transit/keys" {
  capabilities = ["list"]
}

# --- vault-service-branch-kek ------------------------------------------------
path "transit/keys/vault-service-branch-kek" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-branch-kek/rotate" {
  capabilities = ["update"]
}

path "transit/keys/vault-service-branch-kek/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
    "min_encryption_version" = []
    "auto_rotate_period"     = []
  }
}

# --- vault-service-index -----------------------------------------------------
# The two index roots differ from the other keys: every blind index is an
# HMAC under the version the service pins, so a new version is only useful as
# part of a planned re-indexing, and raising min_encryption_version (or
# auto-rotating) would break derivation outright. Hence only
# min_decryption_version here.
path "transit/keys/vault-service-index" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-index/rotate" {
  capabilities = ["update"]
}

path "transit/keys/vault-service-index/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
  }
}

# --- vault-service-national-index --------------------------------------------
path "transit/keys/vault-service-national-index" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-national-index/rotate" {
  capabilities = ["update"]
}

path "transit/keys/vault-service-national-index/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
  }
}

# --- vault-service-token -----------------------------------------------------
path "transit/keys/vault-service-token" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-token/rotate" {
  capabilities = ["update"]
}

path "transit/keys/vault-service-token/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
    "min_encryption_version" = []
    "auto_rotate_period"     = []
  }
}

# --- vault-service-checkpoint ------------------------------------------------
path "transit/keys/vault-service-checkpoint" {
  capabilities = ["read"]
}

path "transit/keys/vault-service-checkpoint/rotate" {
  capabilities = ["update"]
}

path "transit/keys/vault-service-checkpoint/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
    "min_encryption_version" = []
    "auto_rotate_period"     = []
  }
}
