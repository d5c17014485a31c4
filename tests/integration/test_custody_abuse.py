"""Custody cannot be used to hand a structure to one account: transfers draw on a
per-supervisor budget, restricted accounts neither give nor receive, and a
break-the-glass grant ends when its record leaves the structure."""

from __future__ import annotations

import contextlib
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import Stack, World, load_fixture
from vault_service.app import create_app
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
MINIMAL = json.loads(load_fixture("minimal_record.json"))


@contextlib.asynccontextmanager
async def _service(stack: Stack, **overrides: Any) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(stack.settings(**overrides))
    async with AsyncTestClient(app, base_url="http://testserver.local") as client:
        yield client


def _until() -> str:
    return (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)).isoformat()


async def test_a_supervisor_cannot_hand_a_structure_to_one_counsellor(
    stack: Stack, world: World
) -> None:
    async with _service(stack, budget_transfer_hour=3) as api:
        sid = await world.structure()
        referent, taker = await world.counsellor(sid), await world.counsellor(sid)
        sup = await world.account(Role.SUPERVISOR, sid)
        auditor = await world.account(Role.AUDITOR, None)
        rids = []
        for _ in range(6):
            r = await api.post("/v1/records", json=MINIMAL, headers=referent.headers())
            rids.append(r.json()["id"])
        answers = []
        for rid in rids:
            r = await api.post(
                f"/v1/records/{rid}/transfer",
                json={"to_account": str(taker.id), "kind": "temporary", "until": _until()},
                headers=sup.headers(purpose="transfer"),
            )
            answers.append((r.status_code, r.json().get("code") if r.status_code != 200 else None))
        assert answers == [(200, None)] * 3 + [(429, "transfer_budget_exceeded")] * 3
        assigned = await world.owner.fetchval(
            "SELECT count(*) FROM record_assignments WHERE account_id = $1", taker.id
        )
        assert assigned == 3  # nothing of a refused transfer stays
        r = await api.get("/v1/alerts", headers=auditor.headers(purpose="audit"))
        kinds = [
            (a["kind"], a["details"]["budget"])
            for a in r.json()["items"]
            if a["account_id"] == str(sup.id)
        ]
        assert ("budget.exceeded", "transfer.hour") in kinds


async def test_restricted_accounts_neither_give_nor_receive(client, world: World) -> None:
    sid = await world.structure()
    referent, fresh = await world.counsellor(sid), await world.counsellor(sid)
    sup = await world.account(Role.SUPERVISOR, sid)
    rid = (await client.post("/v1/records", json=MINIMAL, headers=referent.headers())).json()["id"]
    await world.owner.execute("UPDATE accounts SET activated_at = now() WHERE id = $1", fresh.id)
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(fresh.id), "kind": "definitive"},
        headers=sup.headers(purpose="transfer"),
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid_transfer_target")
    new_sup = await world.account(Role.SUPERVISOR, sid)
    await world.owner.execute("UPDATE accounts SET activated_at = now() WHERE id = $1", new_sup.id)
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(referent.id), "kind": "definitive"},
        headers=new_sup.headers(purpose="transfer"),
    )
    assert (r.status_code, r.json()["code"]) == (403, "account_restricted")
    referent_now = await world.owner.fetchval(
        "SELECT referent_id FROM records WHERE id = $1", uuid.UUID(rid)
    )
    assert referent_now == referent.id


async def test_a_grant_ends_when_its_record_leaves_the_structure(client, world: World) -> None:
    s1, s2 = await world.structure(), await world.structure()
    referent, outsider = await world.counsellor(s1), await world.counsellor(s1)
    receiver = await world.counsellor(s2)
    sup = await world.account(Role.SUPERVISOR, s1)
    sup2 = await world.account(Role.SUPERVISOR, s2)
    rid = (await client.post("/v1/records", json=MINIMAL, headers=referent.headers())).json()["id"]
    r = await client.post(
        f"/v1/records/{rid}/break-glass",
        json={"reason": "safety_emergency"},
        headers=outsider.headers(purpose="break_glass"),
    )
    assert r.status_code == 201, r.text
    glass = outsider.headers(purpose="break_glass")
    assert (await client.get(f"/v1/records/{rid}", headers=glass)).status_code == 200
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(receiver.id), "kind": "definitive"},
        headers=sup.headers(purpose="transfer"),
    )
    assert r.status_code == 202, r.text
    # Asked is not moved: the grant lives on until the receiving structure accepts.
    assert (await client.get(f"/v1/records/{rid}", headers=glass)).status_code == 200
    r = await client.post(
        f"/v1/transfers/{r.json()['transfer_id']}/accept", headers=sup2.headers(purpose="transfer")
    )
    assert r.status_code == 200, r.text
    assert (await client.get(f"/v1/records/{rid}", headers=glass)).status_code == 404
    live = await world.owner.fetchval(
        "SELECT count(*) FROM break_glass_grants WHERE record_id = $1 AND expires_at > now()",
        uuid.UUID(rid),
    )
    assert live == 0


async def test_the_service_role_can_shorten_a_grant_never_extend_it(
    client, stack: Stack, world: World
) -> None:
    import asyncpg

    sid = await world.structure()
    referent, outsider = await world.counsellor(sid), await world.counsellor(sid)
    rid = (await client.post("/v1/records", json=MINIMAL, headers=referent.headers())).json()["id"]
    r = await client.post(
        f"/v1/records/{rid}/break-glass",
        json={"reason": "safety_emergency"},
        headers=outsider.headers(purpose="break_glass"),
    )
    assert r.status_code == 201
    app_role = await asyncpg.connect(stack.dsn())
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app_role.execute(
                "UPDATE break_glass_grants SET expires_at = expires_at + interval '1 day' "
                "WHERE record_id = $1",
                uuid.UUID(rid),
            )
        await app_role.execute(
            "UPDATE break_glass_grants SET expires_at = now() WHERE record_id = $1",
            uuid.UUID(rid),
        )
    finally:
        await app_role.close()


async def test_fifty_transfers_to_one_counsellor_stop_at_the_budget_and_alert(
    client, world: World
) -> None:
    """The review's scenario with the defaults: 20 transfers an hour, and records given
    to one account flagged from 10."""
    import asyncio

    sid = await world.structure()
    referent, taker = await world.counsellor(sid), await world.counsellor(sid)
    sup = await world.account(Role.SUPERVISOR, sid)
    auditor = await world.account(Role.AUDITOR, None)
    statuses = []
    for _ in range(50):
        r = await client.post("/v1/records", json=MINIMAL, headers=referent.headers())
        r = await client.post(
            f"/v1/records/{r.json()['id']}/transfer",
            json={"to_account": str(taker.id), "kind": "temporary", "until": _until()},
            headers=sup.headers(purpose="transfer"),
        )
        statuses.append(r.status_code)
    assert statuses == [200] * 20 + [429] * 30
    for _ in range(100):
        r = await client.get("/v1/alerts", headers=auditor.headers(purpose="audit"))
        found = [
            a
            for a in r.json()["items"]
            if a["kind"] == "anomaly.custody_concentration" and a["account_id"] == str(taker.id)
        ]
        if found:
            break
        await asyncio.sleep(0.1)
    assert len(found) == 1 and found[0]["severity"] == "critical"
    assert found[0]["details"]["threshold"] == 10 and found[0]["details"]["count"] >= 10
