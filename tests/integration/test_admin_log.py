"""Admin acts reach the access log through vs_log_admin_act on the admin's own login:
in the act's transaction, naming the login's account, integrated and verifiable like
any entry."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from tests.conftest import Stack, World
from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack

pytestmark = pytest.mark.integration


async def _admin_conn(stack: Stack, world: World) -> tuple[asyncpg.Connection, uuid.UUID]:
    login = f"vs_log_admin_{uuid.uuid4().hex[:8]}"
    await devstack.create_admin_login(stack.admin_dsn, login)
    account = await world.account(Role.ADMIN, None)
    await world.owner.execute(
        "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2)", login, account.id
    )
    return await asyncpg.connect(stack.dsn(login)), account.id


async def _bodies(owner: asyncpg.Connection, actor: uuid.UUID) -> list[dict]:
    for _ in range(100):
        if not await owner.fetchval("SELECT count(*) FROM audit_pending"):
            break
        await asyncio.sleep(0.05)
    rows = await owner.fetch(
        "SELECT body FROM audit_bodies WHERE body ->> 'actor_id' = $1 ORDER BY idx", str(actor)
    )
    return [json.loads(r["body"]) for r in rows]


async def test_an_admin_act_is_logged_in_its_transaction(
    client, stack: Stack, world: World
) -> None:
    conn, admin = await _admin_conn(stack, world)
    sid, rid = await world.structure(), uuid.uuid4()
    try:
        await conn.execute("SELECT vs_log_admin_act('key.rotate', 'allowed', $1, $2)", [rid], sid)
        # Rolled back with its act: no entry.
        async with conn.transaction():
            await conn.execute("SELECT vs_log_admin_act('account.request')")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.execute("SELECT 1 / 0")
        with pytest.raises(asyncpg.PostgresError, match="invalid admin log entry"):
            await conn.execute("SELECT vs_log_admin_act('Not An Action')")
        # The log's tables stay out of reach of an admin login.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO audit_pending (salt, body) VALUES ('\\x00', '{}')")
    finally:
        await conn.close()
    bodies = await _bodies(world.owner, admin)
    assert [(b["action"], b["role"], b["record_ids"], b["structure_id"]) for b in bodies] == [
        ("key.rotate", "admin", [str(rid)], str(sid))
    ]
    # The service role cannot speak for an admin.
    service = await asyncpg.connect(stack.dsn())
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await service.execute("SELECT vs_log_admin_act('key.rotate')")
    finally:
        await service.close()
