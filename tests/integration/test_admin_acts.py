"""Every admin act in the access log, and the edges of four-eyes.

The admin commands run as an admin runs them (the CLI, on the admin's own database
login); their entries are read back as an auditor reads them (the API, after
integration) and verified offline (`vault-service audit verify` on an exported
bundle). The four-eyes edges run through AccountAdmin on admins' own logins: each is
refused with its stable code, nothing changes, and the refusal has its entry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import Account, Stack, World
from tests.integration.test_cli import _cli, _env
from vault_service.auth.admin import (
    AccountAdmin,
    LastAdmins,
    NoPendingRequest,
    SelfApproval,
)
from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack

pytestmark = pytest.mark.integration


async def _login(stack: Stack, world: World) -> tuple[str, uuid.UUID]:
    """An admin account mapped to a database login of its own: (its DSN, its id)."""
    login = f"vs_acts_admin_{uuid.uuid4().hex[:8]}"
    await devstack.create_admin_login(stack.admin_dsn, login)
    account = await world.account(Role.ADMIN, None)
    await world.owner.execute(
        "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2)", login, account.id
    )
    return stack.dsn(login), account.id


@asynccontextmanager
async def _admins(stack: Stack, world: World, n: int) -> AsyncIterator[list[Any]]:
    """n admins as (AccountAdmin, account id) pairs, on their own logins."""
    pools, made = [], []
    try:
        for _ in range(n):
            dsn, account_id = await _login(stack, world)
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            pools.append(pool)
            made.append((AccountAdmin(pool), account_id))
        yield made
    finally:
        for pool in pools:
            await pool.close()


@asynccontextmanager
async def _only_active_admins(owner: asyncpg.Connection, keep: list[uuid.UUID]):
    """The two-admins rule counts every active admin of the database: for the length
    of a test, every other admin of the session is set aside, then put back."""
    others = [
        r["id"]
        for r in await owner.fetch(
            "UPDATE accounts SET state = 'disabled' WHERE role = 'admin' AND state = 'active' "
            "AND id <> ALL($1::uuid[]) RETURNING id",
            keep,
        )
    ]
    try:
        yield
    finally:
        await owner.execute(
            "UPDATE accounts SET state = 'active' WHERE id = ANY($1::uuid[])", others
        )


async def _state(owner: asyncpg.Connection, account_id: uuid.UUID) -> str:
    state: str = await owner.fetchval("SELECT state FROM accounts WHERE id = $1", account_id)
    return state


async def _integrated(owner: asyncpg.Connection) -> None:
    for _ in range(200):
        if not await owner.fetchval("SELECT count(*) FROM audit_pending"):
            return
        await asyncio.sleep(0.05)
    pytest.fail("the integrator did not integrate the pending entries")


async def _events(client, auditor: Account, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = await client.get(
            "/v1/audit/events", params=query, headers=auditor.headers(purpose="audit")
        )
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


def _ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip().startswith(("{", "[")) else None


def _acts(items: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(i["action"], i["outcome"], i["refusal_code"]) for i in items]


# --- item 3: every admin command, one entry ---------------------------------------------
async def test_every_admin_command_leaves_one_entry_that_verifies(
    app, client, stack: Stack, world: World, tmp_path: Path
) -> None:
    (dsn_a, a), (dsn_b, b), (dsn_c, c) = [await _login(stack, world) for _ in range(3)]
    env_a = _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsn_a)
    env_b = _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsn_b)
    env_c = _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsn_c)
    sid = await world.structure()
    counsellor = await world.counsellor(sid)
    alert_id = uuid.uuid4()
    await world.owner.execute(
        "INSERT INTO alerts (id, severity, kind, account_id, structure_id, details) "
        "VALUES ($1, 'warning', 'budget.exceeded', $2, $3, '{}')",
        alert_id,
        counsellor.id,
        sid,
    )

    created = _ok(
        _cli(env_a, "accounts", "create", "--role", "counsellor", "--structure", str(sid))
    )
    own = _cli(env_a, "accounts", "approve", created["request_id"])
    assert (own.returncode, "four_eyes_required" in own.stderr) == (1, True)
    _ok(_cli(env_b, "accounts", "approve", created["request_id"]))
    second = _ok(_cli(env_a, "accounts", "create", "--role", "auditor"))
    _ok(_cli(env_b, "accounts", "refuse", second["request_id"]))
    role = _ok(
        _cli(
            env_a,
            "accounts",
            "set-role",
            str(counsellor.id),
            "--role",
            "supervisor",
            "--structure",
            str(sid),
        )
    )
    _ok(_cli(env_b, "accounts", "approve", role["request_id"]))
    assert _ok(_cli(env_a, "accounts", "suspend", str(counsellor.id)))["state"] == "suspended"
    again = _ok(_cli(env_a, "accounts", "reactivate", str(counsellor.id)))
    _ok(_cli(env_b, "accounts", "approve", again["request_id"]))
    _ok(_cli(env_a, "accounts", "revoke-tokens", str(counsellor.id)))
    token = _cli(_env(stack), "tokens", "issue", "--subject", str(counsellor.id)).stdout.strip()
    import jwt

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    _ok(_cli(env_a, "tokens", "revoke", jti))
    _ok(_cli(env_a, "alerts", "ack", str(alert_id), "--comment", "vu"))
    assert _ok(_cli(env_a, "accounts", "disable", str(created["account_id"])))["state"] == (
        "disabled"
    )
    # An admin is suspended through a request; the suspended admin's own pending
    # request dies with a logged cancellation.
    pending = _ok(
        _cli(env_c, "accounts", "create", "--role", "counsellor", "--structure", str(sid))
    )
    asked = _ok(_cli(env_a, "accounts", "suspend", str(c)))
    assert asked["state"] == "pending"
    assert await _state(world.owner, c) == "active"
    _ok(_cli(env_b, "accounts", "approve", asked["request_id"]))
    assert await _state(world.owner, c) == "suspended"
    assert (
        await world.owner.fetchval(
            "SELECT state FROM account_requests WHERE id = $1", uuid.UUID(pending["request_id"])
        )
        == "cancelled"
    )

    await _integrated(world.owner)
    auditor = await world.account(Role.AUDITOR, None)
    by_a = await _events(client, auditor, actor_id=str(a))
    assert _acts(by_a) == [
        ("account.request_create", "allowed", None),
        ("account.approve", "refused", "four_eyes_required"),
        ("account.request_create", "allowed", None),
        ("account.request_role_change", "allowed", None),
        ("account.suspend", "allowed", None),
        ("account.request_reactivate", "allowed", None),
        ("account.revoke_tokens", "allowed", None),
        ("token.revoke", "allowed", None),
        ("alert.ack", "allowed", None),
        ("account.disable", "allowed", None),
        ("account.request_suspend", "allowed", None),
    ]
    assert all(i["role"] == "admin" and i["fields"] == [] for i in by_a)
    assert by_a[0]["record_ids"] == [created["account_id"]]
    assert by_a[0]["request_id"] == created["request_id"]
    assert by_a[0]["structure_id"] == str(sid)
    assert by_a[1]["request_id"] == created["request_id"]
    assert by_a[7]["token_jti"] == jti and by_a[7]["record_ids"] == []
    assert by_a[8]["record_ids"] == [str(alert_id)]
    assert "vu" not in json.dumps(by_a)  # the comment stays with the alert
    by_b = await _events(client, auditor, actor_id=str(b))
    assert _acts(by_b) == [
        ("account.approve", "allowed", None),
        ("account.refuse", "allowed", None),
        ("account.approve", "allowed", None),
        ("account.approve", "allowed", None),
        ("account.approve", "allowed", None),
        ("account.request_cancel", "allowed", None),
    ]
    assert by_b[-1]["request_id"] == pending["request_id"]
    by_c = await _events(client, auditor, actor_id=str(c))
    assert _acts(by_c) == [("account.request_create", "allowed", None)]
    # tokens issue runs on the service's credentials: no person to name, one entry
    # with the account and the token's id.
    issued = await _events(client, auditor, record_id=str(counsellor.id), action="token.issue")
    assert [(i["actor_id"], i["role"], i["token_jti"]) for i in issued] == [(None, "service", jti)]
    assert token not in json.dumps(issued)

    # The reports: what was done to an account, and what an admin did.
    r = await client.get(
        f"/v1/audit/reports/subject/{counsellor.id}", headers=auditor.headers(purpose="audit")
    )
    assert r.status_code == 200, r.text
    # (The auditor's own reads are logged too: left out here.)
    assert [i["action"] for i in r.json()["items"] if i["actor_id"] != str(auditor.id)] == [
        "account.request_role_change",
        "account.approve",
        "account.suspend",
        "account.request_reactivate",
        "account.approve",
        "account.revoke_tokens",
        "token.issue",
    ]
    since = by_a[0]["at"]
    r = await client.get(
        "/v1/audit/reports/breach-impact",
        params={"actor_id": str(a), "since": since, "until": "2100-01-01T00:00:00Z"},
        headers=auditor.headers(purpose="audit"),
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["entries"], report["refused"]) == (11, 1)
    touched = {x["record_id"]: x["actions"] for x in report["records"]}
    assert touched[str(counsellor.id)] == [
        "account.request_reactivate",
        "account.request_role_change",
        "account.revoke_tokens",
        "account.suspend",
    ]
    assert touched[str(c)] == ["account.request_suspend"]

    # The log holding them still verifies, offline.
    indexes = [i["index"] for i in (*by_a, *by_b, *by_c, *issued)]
    headers = auditor.headers(purpose="audit")
    for _ in range(300):  # the service's publisher signs a checkpoint every few seconds
        got = await client.get("/v1/audit/checkpoint", headers=headers)
        if got.status_code == 200 and int(got.text.split("\n")[1]) > max(indexes):
            break
        await asyncio.sleep(0.1)

    async def download(name: str, path: str, **params: str) -> Path:
        got = await client.get(path, params=params, headers=headers)
        assert got.status_code == 200, got.text
        (tmp_path / name).write_bytes(got.content)
        return tmp_path / name

    checkpoint = await download("checkpoint.txt", "/v1/audit/checkpoint")
    assert int(checkpoint.read_text().split("\n")[1]) > max(indexes)
    keys = await download("keys.json", "/v1/audit/keys")
    bundle = await download(
        "bundle.json", "/v1/audit/bundles", start=str(min(indexes)), end=str(max(indexes) + 1)
    )
    done = subprocess.run(
        [sys.executable, "-m", "vault_service.cli", "audit", "verify"]
        + ["--keys", str(keys), "--checkpoint", str(checkpoint), "--bundle", str(bundle)],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- item 4: the edges of four-eyes -----------------------------------------------------
async def _entries(owner: asyncpg.Connection, actor: uuid.UUID) -> list[tuple[str, str, str]]:
    await _integrated(owner)
    rows = await owner.fetch(
        "SELECT body ->> 'action' AS action, body ->> 'outcome' AS outcome, "
        "coalesce(body ->> 'refusal_code', '') AS code "
        "FROM audit_bodies WHERE body ->> 'actor_id' = $1 ORDER BY idx",
        str(actor),
    )
    return [(r["action"], r["outcome"], r["code"]) for r in rows]


async def test_an_admin_is_suspended_by_a_second_admin_only(stack: Stack, world: World) -> None:
    async with _admins(stack, world, 3) as [(a, a_id), (b, b_id), (c, c_id)]:
        ref = await a.set_state(c_id, "disabled")
        assert ref is not None
        assert await _state(world.owner, c_id) == "active"
        # Neither the requester nor the admin concerned decides it.
        for who in (a, c):
            with pytest.raises(SelfApproval):
                await who.decide(ref.request_id, approve=True)
        assert await _state(world.owner, c_id) == "active"
        await b.decide(ref.request_id, approve=True)
        assert await _state(world.owner, c_id) == "disabled"
        assert await _entries(world.owner, c_id) == [
            ("account.approve", "refused", "four_eyes_required")
        ]
        assert await _entries(world.owner, a_id) == [
            ("account.request_disable", "allowed", ""),
            ("account.approve", "refused", "four_eyes_required"),
        ]
        assert await _entries(world.owner, b_id) == [("account.approve", "allowed", "")]


async def test_two_active_admins_always_remain(stack: Stack, world: World) -> None:
    async with _admins(stack, world, 3) as made:
        (a, a_id), (b, b_id), (c, c_id) = made
        async with _only_active_admins(world.owner, [a_id, b_id]):
            await world.owner.execute("UPDATE accounts SET state = 'disabled' WHERE id = $1", c_id)
            before = await world.owner.fetchval("SELECT count(*) FROM account_requests")
            for state in ("suspended", "disabled"):
                with pytest.raises(LastAdmins):
                    await a.set_state(b_id, state)
            with pytest.raises(LastAdmins):
                await a.request_change("role_change", b_id, Role.SUPERVISOR)
            assert await world.owner.fetchval("SELECT count(*) FROM account_requests") == before
            assert await _state(world.owner, b_id) == "active"
            assert await _entries(world.owner, a_id) == [
                ("account.suspend", "refused", "two_admins_must_remain"),
                ("account.disable", "refused", "two_admins_must_remain"),
                ("account.request_role_change", "refused", "two_admins_must_remain"),
            ]

            # Checked again, under a lock, when a request is approved: here another
            # act (the owner stands in for it) removed an admin in between.
            await world.owner.execute("UPDATE accounts SET state = 'active' WHERE id = $1", c_id)
            suspend_c = await a.set_state(c_id, "suspended")
            assert suspend_c is not None
            await world.owner.execute("UPDATE accounts SET state = 'suspended' WHERE id = $1", a_id)
            with pytest.raises(LastAdmins):
                await b.decide(suspend_c.request_id, approve=True)
            assert await _state(world.owner, c_id) == "active"
            assert (await _entries(world.owner, b_id))[-1] == (
                "account.approve",
                "refused",
                "two_admins_must_remain",
            )


async def test_approving_a_role_change_never_reactivates(stack: Stack, world: World) -> None:
    async with _admins(stack, world, 2) as [(a, _), (b, _)]:
        sid = await world.structure()
        counsellor = await world.counsellor(sid)
        ref = await a.request_change("role_change", counsellor.id, Role.SUPERVISOR, sid)
        assert await a.set_state(counsellor.id, "suspended") is None
        await b.decide(ref.request_id, approve=True)
        row = await world.owner.fetchrow(
            "SELECT role, state FROM accounts WHERE id = $1", counsellor.id
        )
        assert (row["role"], row["state"]) == ("supervisor", "suspended")


async def test_a_suspended_requesters_pending_requests_die(stack: Stack, world: World) -> None:
    async with _admins(stack, world, 4) as [(a, a_id), (b, b_id), (c, c_id), (d, _)]:
        sid = await world.structure()
        filed = await c.request_create(Role.COUNSELLOR, sid)
        suspend = await a.set_state(c_id, "suspended")
        assert suspend is not None
        await b.decide(suspend.request_id, approve=True)
        row = await world.owner.fetchrow(
            "SELECT state, decided_by, decided_at FROM account_requests WHERE id = $1",
            filed.request_id,
        )
        assert (row["state"], row["decided_by"]) == ("cancelled", None)
        assert row["decided_at"] is not None
        assert await _state(world.owner, filed.account_id) == "disabled"
        # Dead: nobody approves it any more.
        with pytest.raises(NoPendingRequest):
            await a.decide(filed.request_id, approve=True)
        assert (await _entries(world.owner, b_id))[-2:] == [
            ("account.approve", "allowed", ""),
            ("account.request_cancel", "allowed", ""),
        ]
        # An admin demoted to another role loses their pending requests the same way.
        filed = await a.request_create(Role.COUNSELLOR, sid)
        demote = await b.request_change("role_change", a_id, Role.SUPERVISOR, sid)
        with pytest.raises(SelfApproval):  # the account concerned does not decide
            await a.decide(demote.request_id, approve=True)
        await d.decide(demote.request_id, approve=True)
        assert await world.owner.fetchval(
            "SELECT state FROM account_requests WHERE id = $1", filed.request_id
        ) == ("cancelled")
        assert await _state(world.owner, filed.account_id) == "disabled"
