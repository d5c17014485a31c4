"""The stack of docker-compose.yml, on this machine (vault_service.stack), once for the
fault campaign: real PostgreSQL with TLS verify-full, OpenBao in server mode with raft
and AppRole, two `vault-service serve` replicas, Caddy in front. Nothing is mocked."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from vault_service import stack as stack_module
from vault_service.dev.embedded import free_port
from vault_service.stack import Stack, alive
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
        # `make test` installs Caddy; PostgreSQL's binaries come with the machine. A
        # campaign that cannot run fails, it never passes by skipping.
        pytest.fail(reason)
    state_dir = Path(tempfile.mkdtemp(prefix="vault-service-stack-"))
    overrides = {
        **LOAD_OVERRIDES,
        "VAULT_SERVICE_BRANCH_KEY_TTL_SECONDS": str(BRANCH_KEY_TTL),
        "VAULT_SERVICE_VAULT_TIMEOUT_SECONDS": "1",
        "VAULT_SERVICE_VAULT_RETRIES": "1",
    }
    # Up and down through the command line that `make stack` and `make stack-down` run.
    cli = [sys.executable, "-m", "vault_service.stack"]
    where = ["--state-dir", str(state_dir)]
    up = subprocess.run(  # noqa: S603 - our own command
        [*cli, "up", *where, "--proxy-port", str(free_port())]
        + [f"--env={k}={v}" for k, v in overrides.items()],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stderr
        assert "proxy       https://localhost:" in up.stdout
        yield stack_module.attach(state_dir)
    finally:
        pids = dict(stack_module.attach(state_dir).state.pids) if up.returncode == 0 else {}
        if (state_dir / stack_module.STATE_FILE).exists():
            down = subprocess.run(  # noqa: S603
                [*cli, "down", *where], capture_output=True, text=True, timeout=120, check=False
            )
            assert down.returncode == 0, down.stderr
        if up.returncode == 0:
            assert set(pids) == {"postgres", "openbao", "app1", "app2", "proxy"}, pids
        assert not [name for name, pid in pids.items() if alive(pid)]
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
async def accounts(deployment: Stack) -> AsyncIterator[Accounts]:
    """A structure of its own for each test, four counsellors and an auditor."""
    yield await make_accounts(deployment, 4)
