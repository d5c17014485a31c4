"""The stack of docker-compose.yml, on this machine (vault_service.stack), once for the
fault campaign: real PostgreSQL with TLS verify-full, OpenBao in server mode with raft
and AppRole, two `vault-service serve` replicas, Caddy in front. Nothing is mocked."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from vault_service import stack as stack_module
from vault_service.stack import Stack
from vault_service.stack.load import LOAD_OVERRIDES, Accounts, make_accounts

# Short enough for the OpenBao test to see cached keys expire, long enough to serve
# through the first seconds of an outage.
BRANCH_KEY_TTL = 15


def _missing() -> str | None:
    if shutil.which("caddy") is None:
        return "caddy is not installed (apt-get install -y caddy)"
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        return "PostgreSQL server binaries are not installed (postgresql-15)"
    return None


@pytest.fixture(scope="session")
def deployment() -> Iterator[Stack]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    state_dir = Path(tempfile.mkdtemp(prefix="vault-service-stack-"))
    overrides = {
        **LOAD_OVERRIDES,
        "VAULT_SERVICE_BRANCH_KEY_TTL_SECONDS": str(BRANCH_KEY_TTL),
        "VAULT_SERVICE_VAULT_TIMEOUT_SECONDS": "1",
        "VAULT_SERVICE_VAULT_RETRIES": "1",
    }
    stack = stack_module.start(state_dir, replica_overrides=overrides)
    try:
        yield stack
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
async def accounts(deployment: Stack) -> AsyncIterator[Accounts]:
    """A structure of its own for each test, four counsellors and an auditor."""
    yield await make_accounts(deployment, 4)
