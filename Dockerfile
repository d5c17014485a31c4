# syntax=docker/dockerfile:1
#
# vault-service image: the package and its runtime dependencies in a virtual
# environment, on python:3.11-slim, run as an unprivileged user.
#
#   docker build -t vault-service:local .
#   docker run --rm vault-service:local --help
#
# The same image runs `serve` (the default), `migrate` and the other
# `vault-service` commands. Configuration comes only from the environment
# (VAULT_SERVICE_*, see vault_service/settings.py) and from mounted files; the
# image holds no secret and no certificate.

# Pin one Debian release for both stages: wheels built against one glibc run
# on the other only by luck. docker-compose.yml uses the same image for its
# one-shot `certs` and `pg-credentials` services.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src
# .dockerignore admits only what the package build needs.
COPY . .
# The runtime dependencies from the committed lock, each checked against its
# hashes (`make lock` writes it), then the package alone: `pip install .`, not
# `.[dev]` or `.[test]`: no embedded PostgreSQL, no OpenBao binary, no test
# tools in the runtime image. Non-editable, so the image does not depend on /src.
RUN /opt/venv/bin/pip install --require-hashes -r requirements-runtime.lock
RUN /opt/venv/bin/pip install --no-deps .

# Fail the build, not the first request, when the wheel lacks a file that the
# service reads at run time (package data must be listed in pyproject.toml).
RUN /opt/venv/bin/python - <<'EOF'
import importlib.resources
import sys

package = importlib.resources.files("vault_service")
wanted = {"schemas": ".json", "migrations": ".sql"}
missing = [
    folder
    for folder, suffix in wanted.items()
    if not (package / folder).is_dir()
    or not any(f.name.endswith(suffix) for f in (package / folder).iterdir())
]
if missing:
    sys.exit("package data missing from the installed wheel: " + ", ".join(missing))
EOF
RUN /opt/venv/bin/vault-service --help >/dev/null

# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="vault-service" \
      org.opencontainers.image.description="Youth case records with field-level encryption, scoped tokens and a verifiable access log" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"

# A fixed uid/gid: infra/openbao/init.sh and infra/postgres/gen-credentials.sh
# hand the AppRole secret id and the pgpass files to exactly this owner.
# No home directory, no login shell.
RUN groupadd --system --gid 10001 vault-service \
    && useradd --system --uid 10001 --gid vault-service \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin vault-service

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    # In a container the API must listen beyond loopback (the default).
    VAULT_SERVICE_HOST=0.0.0.0 \
    VAULT_SERVICE_PORT=8000

USER 10001:10001
EXPOSE 8000

# No curl in the slim image: python's urllib it is. urlopen raises on any
# non-2xx answer or on a refused connection, and the exit status follows.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('VAULT_SERVICE_PORT', '8000') + '/health/live', timeout=4)"]

ENTRYPOINT ["vault-service"]
CMD ["serve"]
