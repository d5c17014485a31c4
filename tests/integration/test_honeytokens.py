"""Honeytokens through the CLI and the running service: planted canaries look like any
record, sit in nobody's caseload, and any request naming one suspends its caller."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.conftest import Account, Stack, World
from tests.integration.test_cli import _admin_env, _cli
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration


async def _plant(stack: Stack, world: World, sid: uuid.UUID) -> list[str]:
    env = await _admin_env(stack, world)
    done = _cli(env, "honeytokens", "plant", "--structure", str(sid), "--count", "2")
    assert done.returncode == 0, done.stderr
    [planted] = json.loads(done.stdout)
    assert planted["structure_id"] == str(sid)
    listed = json.loads(_cli(env, "honeytokens", "list").stdout)
    assert set(planted["planted"]) <= {h["record_id"] for h in listed}
    return list(planted["planted"])


async def _suspended(client, who: Account) -> None:
    for _ in range(40):
        r = await client.get("/v1/caseload", headers=who.headers())
        if r.status_code == 401:
            break
        await asyncio.sleep(0.05)
    assert (r.status_code, r.json()["code"]) == (401, "account_inactive")


async def test_naming_a_canary_suspends_even_when_the_answer_is_404(
    client, stack: Stack, world: World
) -> None:
    sid = await world.structure()
    canaries = await _plant(stack, world, sid)
    counsellor = await world.counsellor(sid)
    supervisor = await world.account(Role.SUPERVISOR, sid)
    auditor = await world.account(Role.AUDITOR, None)
    # In nobody's caseload, a supervisor's structure-wide list included: listing is fine.
    for who in (counsellor, supervisor):
        r = await client.get("/v1/caseload", headers=who.headers())
        assert r.status_code == 200
        assert not set(canaries) & {i["id"] for i in r.json()["items"]}
    # A counsellor who names one (as only a copy of the database would let them) gets
    # the answer any record outside their caseload gets, and is suspended.
    r = await client.get(f"/v1/records/{canaries[0]}", headers=counsellor.headers())
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    await _suspended(client, counsellor)
    r = await client.get("/v1/alerts", headers=auditor.headers(purpose="audit"))
    mine = [a for a in r.json()["items"] if a["account_id"] == str(counsellor.id)]
    assert [(a["kind"], a["severity"], a["details"]) for a in mine] == [
        ("honeytoken.touched", "critical", {"honeytoken": canaries[0]})
    ]
    r = await client.get(
        "/v1/audit/events",
        params={"record_id": canaries[0]},
        headers=auditor.headers(purpose="audit"),
    )
    actions = {(e["action"], e["outcome"], e["refusal_code"]) for e in r.json()["items"]}
    assert ("account.suspended", "refused", "honeytoken") in actions
    assert ("honeytoken.plant", "allowed", None) in actions


async def test_a_search_hit_and_a_transfer_on_a_canary_suspend(
    client, stack: Stack, world: World
) -> None:
    sid = await world.structure()
    canaries = await _plant(stack, world, sid)
    searcher = await world.account(Role.SUPERVISOR, sid)
    mover = await world.account(Role.SUPERVISOR, sid)
    taker = await world.counsellor(sid)
    r = await client.post(
        f"/v1/records/{canaries[1]}/transfer",
        json={"to_account": str(taker.id), "kind": "definitive"},
        headers=mover.headers(purpose="transfer"),
    )
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    await _suspended(client, mover)
    referent = await world.owner.fetchval(
        "SELECT referent_id FROM records WHERE id = $1", uuid.UUID(canaries[1])
    )
    assert referent != taker.id
    # A common criterion (a birth date) may meet a canary by chance: it is left out of
    # the page and nobody is suspended.
    birth = await _value(stack, uuid.UUID(canaries[0]), "birth_date")
    r = await client.get("/v1/records", params={"birth_date": birth}, headers=searcher.headers())
    assert r.status_code == 200
    assert canaries[0] not in {i["id"] for i in r.json()["items"]}
    assert (await client.get("/v1/caseload", headers=searcher.headers())).status_code == 200
    # A value that identifies one person (what a stolen export holds): the search is
    # answered as finding nothing it may see, and the searcher is suspended.
    email = await _value(stack, uuid.UUID(canaries[0]), "email")
    r = await client.get("/v1/records", params={"email": email}, headers=searcher.headers())
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    await _suspended(client, searcher)


async def _value(stack: Stack, record_id: uuid.UUID, field: str) -> str:
    import asyncpg

    from vault_service.crypto.keys import KeyHierarchy
    from vault_service.kms import VaultKms
    from vault_service.records import schema
    from vault_service.records.repository import SELECT_RECORD
    from vault_service.records.sealing import Sealer

    settings = stack.settings()
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    kms = VaultKms(settings)
    try:
        sealer = Sealer(KeyHierarchy(kms, pool, ttl=60, max_uses=10), schema.load())
        row = await pool.fetchrow(SELECT_RECORD, record_id, uuid.uuid4())
        key = await sealer.record_key(row)
        return str(sealer.decrypt_values(row, key, [field])[field])
    finally:
        kms.close()
        await pool.close()
