"""Every CLI command ends with one clear line and a non-zero status, never a traceback,
when PostgreSQL or Vault cannot be reached or a setting is missing; the line carries no
password and no token. Real subprocesses, as an operator runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest

from tests.conftest import Stack
from vault_service.dev import embedded as devstack

pytestmark = pytest.mark.integration
PASSWORD = "Sekr3tPwZq"
TOKEN = "s.Tok3nZqZqZq"
SUBJECT = str(uuid.uuid4())


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault_service.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_one_clear_line(result: subprocess.CompletedProcess[str], code: str, what: str) -> None:
    assert result.returncode != 0, (what, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, what
    assert "Traceback" not in result.stderr, (what, result.stderr)
    assert lines[-1].startswith(f"error: {code}"), (what, lines[-1])
    for secret in (PASSWORD, TOKEN):
        assert secret not in result.stderr and secret not in result.stdout, (what, secret)


def _base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_SERVICE_", "VAULT_"))}
    env.update(
        {
            "VAULT_SERVICE_JWT_ISSUER": "https://vault-service.test",
            "VAULT_SERVICE_JWT_AUDIENCE": "vault-service-test",
            "VAULT_SERVICE_VAULT_TIMEOUT_SECONDS": "1",
            "VAULT_SERVICE_VAULT_RETRIES": "0",
            "VAULT_SERVICE_PORT": str(devstack.free_port()),
            "VAULT_SERVICE_LOG_LEVEL": "WARNING",
        }
    )
    env.update(extra)
    return env


def _closed_dsn(role: str) -> str:
    # A port nothing listens on (just freed), with a password that must not be printed.
    return f"postgresql://{role}:{PASSWORD}@127.0.0.1:{devstack.free_port()}/vs"


# Commands on each connection: the service role's settings, the admin login, the owner.
SERVICE_COMMANDS = [
    ("accounts", "list"),
    ("keys", "status"),
    ("keys", "list"),
    ("tokens", "issue", "--subject", SUBJECT),
    ("honeytokens", "list"),
    ("retention", "run", "--dry-run"),
    ("serve",),
]
ADMIN_COMMANDS = [("alerts", "list"), ("accounts", "requests"), ("records", "requests")]


def test_unreachable_database_ends_with_one_line(stack: Stack) -> None:
    env = _base_env(
        VAULT_SERVICE_DATABASE_URL=_closed_dsn("vault_service_app"),
        VAULT_SERVICE_VAULT_ADDR=stack.bao.addr,
        VAULT_SERVICE_VAULT_TOKEN=TOKEN,
        VAULT_SERVICE_ADMIN_DATABASE_URL=_closed_dsn("admin"),
        VAULT_SERVICE_MIGRATIONS_DATABASE_URL=_closed_dsn("owner"),
    )
    for argv in [*SERVICE_COMMANDS, *ADMIN_COMMANDS, ("migrate",)]:
        _assert_one_clear_line(_run(env, *argv), "database_unavailable", " ".join(argv))
    # A Unix socket that is not there: the FileNotFoundError of a stopped dev database.
    socket_env = {
        **env,
        "VAULT_SERVICE_DATABASE_URL": f"postgresql://vs:{PASSWORD}@/vs?host=/nonexistent-dir",
    }
    _assert_one_clear_line(_run(socket_env, "accounts", "list"), "database_unavailable", "socket")


async def _active_counsellor(stack: Stack) -> str:
    conn = await asyncpg.connect(stack.dsn("vault_service_owner"))
    try:
        structure, account = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO structures (id, code, name, department) VALUES ($1, $2, 'CLI', '75')",
            structure,
            "T-" + structure.hex[:8].upper(),
        )
        await conn.execute(
            "INSERT INTO accounts (id, role, structure_id, state)"
            " VALUES ($1, 'counsellor', $2, 'active')",
            account,
            structure,
        )
    finally:
        await conn.close()
    return str(account)


def test_unreachable_vault_ends_with_one_line(stack: Stack) -> None:
    counsellor = asyncio.run(_active_counsellor(stack))
    # The real database, a Vault address nothing listens on.
    env = _base_env(
        VAULT_SERVICE_DATABASE_URL=stack.dsn(),
        VAULT_SERVICE_VAULT_ADDR=f"http://127.0.0.1:{devstack.free_port()}",
        VAULT_SERVICE_VAULT_TOKEN=TOKEN,
    )
    for argv in [
        ("keys", "list"),
        ("keys", "status"),
        ("tokens", "issue", "--subject", counsellor),
        ("serve",),
    ]:
        _assert_one_clear_line(_run(env, *argv), "kms_unavailable", " ".join(argv))


def test_missing_settings_end_with_one_line(stack: Stack) -> None:
    full = {
        "VAULT_SERVICE_DATABASE_URL": stack.dsn(),
        "VAULT_SERVICE_VAULT_ADDR": stack.bao.addr,
        "VAULT_SERVICE_VAULT_TOKEN": TOKEN,
    }
    for missing in full:
        env = _base_env(**{k: v for k, v in full.items() if k != missing})
        for argv in SERVICE_COMMANDS:
            result = _run(env, *argv)
            _assert_one_clear_line(result, "configuration_error", f"{missing} {argv}")
    env = _base_env(**full)
    # The admin login and the owner role are settings of their commands alone.
    for argv in [*ADMIN_COMMANDS, ("migrate",), ("vault-setup",)]:
        result = _run(env, *argv)
        _assert_one_clear_line(result, "configuration_error", " ".join(argv))
        assert len([x for x in result.stderr.splitlines() if x.strip()]) == 1, result.stderr
