"""The admin CLI as an operator runs it: a separate process, settings from the
environment, secrets never on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import Stack, World
from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack

pytestmark = pytest.mark.integration


def _env(stack: Stack, **extra: str) -> dict[str, str]:
    env = stack.service_env()
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault_service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_tokens_issue_prints_a_token_the_service_accepts(
    app, client, stack: Stack, world: World
) -> None:
    c = await world.counsellor()
    done = _cli(_env(stack), "tokens", "issue", "--subject", str(c.id), "--ttl", "10m")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    r = await client.get(
        "/v1/caseload", headers={"Authorization": f"Bearer {token}", "X-Purpose": "follow_up"}
    )
    assert r.status_code == 200
    assert token not in done.stderr
    refused = _cli(_env(stack), "tokens", "issue", "--subject", str(c.id), "--ttl", "2h")
    assert refused.returncode != 0
    unknown = _cli(_env(stack), "tokens", "issue", "--subject", str(uuid.uuid4()))
    assert unknown.returncode == 1
    assert "no active account" in unknown.stderr


async def test_four_eyes_through_the_cli(stack: Stack, world: World) -> None:
    logins, dsns = [], []
    for _ in range(2):
        login = f"vs_cli_admin_{uuid.uuid4().hex[:8]}"
        await devstack.create_admin_login(stack.admin_dsn, login)
        account = await world.account(Role.ADMIN, None)
        await world.owner.execute(
            "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2)", login, account.id
        )
        logins.append(login)
        dsns.append(stack.dsn(login))
    sid = await world.structure()
    a = _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsns[0])
    b = _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsns[1])
    created = _cli(a, "accounts", "create", "--role", "counsellor", "--structure", str(sid))
    assert created.returncode == 0, created.stderr
    request_id = json.loads(created.stdout)["request_id"]
    own = _cli(a, "accounts", "approve", request_id)
    assert own.returncode == 1
    assert "four_eyes_required" in own.stderr
    other = _cli(b, "accounts", "approve", request_id)
    assert other.returncode == 0, other.stderr
    listed = _cli(a, "accounts", "list", "--json")
    account_id = json.loads(created.stdout)["account_id"]
    assert {"id": account_id, "state": "active"}.items() <= next(
        r for r in json.loads(listed.stdout) if r["id"] == account_id
    ).items()
    # The service's own database credentials are not an admin login.
    service = _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=stack.dsn())
    sneaky = _cli(service, "accounts", "create", "--role", "admin")
    assert sneaky.returncode != 0


def test_audit_verify_needs_no_database() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vault_service.cli", "audit", "verify", "--help"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert "--checkpoint" in done.stdout


async def _admin_env(stack: Stack, world: World) -> dict[str, str]:
    login = f"vs_cli_admin_{uuid.uuid4().hex[:8]}"
    await devstack.create_admin_login(stack.admin_dsn, login)
    account = await world.account(Role.ADMIN, None)
    await world.owner.execute(
        "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2)", login, account.id
    )
    return _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=stack.dsn(login))


async def _refused_within(client, headers: dict[str, str], code: str) -> None:
    """Every replica refuses from the next request on (NOTIFY: allow its delivery)."""
    import asyncio

    for _ in range(40):
        r = await client.get("/v1/caseload", headers=headers)
        if r.status_code == 401:
            break
        await asyncio.sleep(0.05)
    assert (r.status_code, r.json()["code"]) == (401, code)


async def test_stolen_tokens_are_revoked_through_the_cli(
    client, stack: Stack, world: World
) -> None:
    import jwt

    admin = await _admin_env(stack, world)
    c = await world.counsellor()
    first = _cli(_env(stack), "tokens", "issue", "--subject", str(c.id)).stdout.strip()
    second = _cli(_env(stack), "tokens", "issue", "--subject", str(c.id)).stdout.strip()
    h1 = {"Authorization": f"Bearer {first}", "X-Purpose": "follow_up"}
    h2 = {"Authorization": f"Bearer {second}", "X-Purpose": "follow_up"}
    assert (await client.get("/v1/caseload", headers=h1)).status_code == 200
    jti = jwt.decode(first, options={"verify_signature": False})["jti"]
    # The service's own credentials cannot revoke: only an admin's login.
    assert (
        _cli(
            _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=stack.dsn()), "tokens", "revoke", jti
        ).returncode
        != 0
    )
    done = _cli(admin, "tokens", "revoke", jti)
    assert done.returncode == 0, done.stderr
    await _refused_within(client, h1, "token_revoked")
    assert (await client.get("/v1/caseload", headers=h2)).status_code == 200  # only that one
    done = _cli(admin, "accounts", "revoke-tokens", str(c.id))
    assert done.returncode == 0, done.stderr
    await _refused_within(client, h2, "token_revoked")
    assert _cli(admin, "accounts", "revoke-tokens", str(uuid.uuid4())).returncode == 1


async def test_alerts_are_listed_and_acknowledged_through_the_cli(
    stack: Stack, world: World
) -> None:
    admin = await _admin_env(stack, world)
    c = await world.counsellor()
    alert_id = uuid.uuid4()
    await world.owner.execute(
        "INSERT INTO alerts (id, severity, kind, account_id, details) "
        "VALUES ($1, 'warning', 'budget.exceeded', $2, '{\"refusals_this_hour\": 1}')",
        alert_id,
        c.id,
    )
    listed = _cli(admin, "alerts", "list")
    assert listed.returncode == 0, listed.stderr
    assert str(alert_id) in {a["id"] for a in json.loads(listed.stdout)}
    # A note is no place for a number (a NIR, a phone): refused before anything is kept.
    bad = _cli(admin, "alerts", "ack", str(alert_id), "--comment", "appel 0612345678")
    assert bad.returncode == 1
    assert "invalid_parameter" in bad.stderr
    done = _cli(admin, "alerts", "ack", str(alert_id), "--comment", "vu, faux positif")
    assert done.returncode == 0, done.stderr
    row = await world.owner.fetchrow("SELECT state, acked_by FROM alerts WHERE id = $1", alert_id)
    assert row["state"] == "acknowledged"
    assert row["acked_by"] is not None
    again = _cli(admin, "alerts", "ack", str(alert_id), "--comment", "encore")
    assert again.returncode == 1
    assert "no_open_alert" in again.stderr
    assert str(alert_id) not in {a["id"] for a in json.loads(_cli(admin, "alerts", "list").stdout)}


async def test_an_admin_creating_accounts_in_a_burst_raises_a_critical_alert(
    stack: Stack, world: World, client
) -> None:
    """The 2025 extraction began with one account manager creating accounts: five
    requests in an hour from one admin (the default threshold) raise an alert."""
    import asyncio

    env = await _admin_env(stack, world)
    sid = await world.structure()
    for _ in range(5):
        done = _cli(env, "accounts", "create", "--role", "counsellor", "--structure", str(sid))
        assert done.returncode == 0, done.stderr
    requester = await world.owner.fetchval(
        "SELECT requested_by FROM account_requests WHERE structure_id = $1 LIMIT 1", sid
    )
    auditor = await world.account(Role.AUDITOR, None)
    for _ in range(100):
        r = await client.get("/v1/alerts", headers=auditor.headers(purpose="audit"))
        found = [
            a
            for a in r.json()["items"]
            if a["kind"] == "anomaly.account_admin_burst" and a["account_id"] == str(requester)
        ]
        if found:
            break
        await asyncio.sleep(0.1)
    assert [(a["severity"], a["details"]) for a in found] == [
        ("critical", {"count": 5, "threshold": 5})
    ]
