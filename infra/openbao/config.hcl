# OpenBao server configuration for the demo stack (docker-compose.yml).
# One node of integrated (raft) storage; production runs three or five nodes
# of the same file with their own node_id, api_addr and retry_join blocks
# (see infra/README.md, "OpenBao").

ui = false

# No disable_mlock: the OpenBao release pinned in docker-compose.yml no longer
# supports memory locking (the option only draws an "unsupported field"
# warning), and raft storage wants it off anyway. Keep swap off on the host
# instead, so that key material is never paged to disk.

cluster_name = "vault-service-demo"

# Addresses other nodes and redirected clients use: the compose service name,
# which is also in the certificate's subjectAltName.
api_addr     = "https://openbao:8200"
cluster_addr = "https://openbao:8201"

# Leases handed to the service (its AppRole token) never outlive a day,
# whatever a role asks for.
default_lease_ttl = "1h"
max_lease_ttl     = "24h"

storage "raft" {
  # /openbao/file is owned by the openbao user in the image, so the named
  # volume mounted there starts with the right owner.
  path    = "/openbao/file"
  node_id = "openbao-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"

  # TLS only: the certificate comes from the `certs` one-shot (infra/tls/).
  tls_disable     = false
  tls_cert_file   = "/run/tls/openbao/server.crt"
  tls_key_file    = "/run/tls/openbao/server.key"
  tls_min_version = "tls13"
}

# Every request and response, HMAC'd by OpenBao (no secret appears in clear),
# to the container's stdout. Declared here because OpenBao 2.x no longer
# lets the API enable audit devices by default.
audit "file" "stdout" {
  options {
    file_path = "stdout"
  }
}
