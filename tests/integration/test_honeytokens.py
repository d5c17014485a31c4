"""Honeytokens through the CLI and the running service: planted canaries look like any
record, sit in nobody's caseload, and any request naming one suspends its caller."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.conftest import Account, Stack, World, load_fixture
from tests.integration.test_cli import _admin_env, _cli
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
MINIMAL = json.loads(load_fixture("minimal_record.json"))


async def _plant(stack: Stack, world: World, sid: uuid.UUID) -> list[str]:
    env = await _admin_env(stack, world)
    done = _cli(env, "honeytokens", "plant", "--structure", str(sid), "--count", "2")
    assert done.returncode == 0, done.stderr
    [planted] = json.loads(done.stdout)
    assert planted["structure_id"] == str(sid)
    listed = json.loads(_cli(env, "honeytokens", "list").stdout)
    assert set(planted["planted"]) <= {h["record_id"] for h in listed}
    await _recognised(world, planted["planted"])
    return list(planted["planted"])


async def _recognised(world: World, canaries: list[str]) -> None:
    """The service reloads the canaries' tags periodically (every half second in the
    tests): wait until it knows these."""
    is_canary = world.app.state.records.is_canary
    for _ in range(100):
        if all(is_canary(uuid.UUID(c)) for c in canaries):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the service did not load the canaries' tags")


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
    # Its creation, like any record's, then the suspension that names it; the planting
    # says who planted how many where, never which.
    assert actions == {
        ("record.create", "allowed", None),
        ("record.read", "refused", "not_found"),
        ("account.suspended", "refused", "honeytoken"),
    }
    r = await client.get(
        "/v1/audit/events",
        params={"action": "honeytoken.plant"},
        headers=auditor.headers(purpose="audit"),
    )
    plants = [e for e in r.json()["items"] if e["structure_id"] == str(sid)]
    assert [(e["record_ids"], e["count"], e["role"]) for e in plants] == [([], 2, "admin")]


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
    pool = await asyncpg.create_pool(settings.database.url, min_size=1, max_size=2)
    kms = VaultKms(settings.vault)
    try:
        sealer = Sealer(KeyHierarchy(kms, pool, ttl=60, max_uses=10), schema.load())
        row = await pool.fetchrow(SELECT_RECORD, record_id, uuid.uuid4())
        key = await sealer.record_key(row)
        return str(sealer.decrypt_values(row, key, [field])[field])
    finally:
        kms.close()
        await pool.close()


async def test_a_copy_of_the_database_does_not_tell_a_canary_from_a_youth(
    client, stack: Stack, world: World
) -> None:
    """Review finding: the registry, the canary accounts and the planting entries named
    the canaries in clear, and their e-mail addresses used a reserved domain."""
    sid = await world.structure()
    canaries = [uuid.UUID(c) for c in await _plant(stack, world, sid)]
    owner = world.owner
    # No table holds a canary's id but those that hold every record's.
    holders = set()
    columns = await owner.fetch(
        """SELECT table_name, column_name FROM information_schema.columns
           WHERE table_schema = 'public' AND data_type = 'uuid'"""
    )
    for c in columns:
        found = await owner.fetchval(
            f'SELECT count(*) FROM "{c["table_name"]}" WHERE "{c["column_name"]}" = ANY($1)',
            canaries,
        )
        if found:
            holders.add((c["table_name"], c["column_name"]))
    assert holders <= {("records", "id"), ("record_index", "record_id")}, holders
    assert not await owner.fetchval(
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'canary%'"
    )
    # The registry: keyed tags and days only.
    row = await owner.fetchrow("SELECT * FROM honeytokens WHERE structure_id = $1 LIMIT 1", sid)
    assert set(row.keys()) == {"tag", "structure_id", "planted_on", "retired_on"}
    assert all(c.bytes not in bytes(row["tag"]) for c in canaries)
    # In the log, a canary is named only by its creation, as any record is.
    bodies = await owner.fetch(
        "SELECT body ->> 'action' AS action FROM audit_bodies"
        " WHERE body -> 'record_ids' ?| $1::text[]",
        [str(c) for c in canaries],
    )
    assert {b["action"] for b in bodies} == {"record.create"}
    # The referent: a counsellor who served and left, like any other.
    referent = await owner.fetchrow(
        "SELECT a.state, a.role, a.activated_at < now() - interval '300 days' AS served"
        " FROM records r JOIN accounts a ON a.id = r.referent_id WHERE r.id = $1",
        canaries[0],
    )
    assert dict(referent) == {"state": "disabled", "role": "counsellor", "served": True}
    email = await _value(stack, canaries[0], "email")
    assert email.rpartition("@")[2] in {
        "gmail.com", "orange.fr", "free.fr", "laposte.net", "hotmail.fr", "sfr.fr"
    }  # fmt: skip


async def test_rotation_retires_the_earlier_canaries_and_they_still_trip(
    client, stack: Stack, world: World
) -> None:
    sid = await world.structure()
    old = await _plant(stack, world, sid)
    env = await _admin_env(stack, world)
    done = _cli(env, "honeytokens", "rotate", "--structure", str(sid), "--count", "1")
    assert done.returncode == 0, done.stderr
    [rotated] = json.loads(done.stdout)
    assert rotated["retired"] == 2 and len(rotated["planted"]) == 1
    listed = {h["record_id"]: h for h in json.loads(_cli(env, "honeytokens", "list").stdout)}
    assert all(listed[c]["retired_on"] is not None for c in old)
    assert listed[rotated["planted"][0]]["retired_on"] is None
    await _recognised(world, [*old, *rotated["planted"]])
    # A retired canary still trips: an older copy of the database holds exactly those.
    reader = await world.counsellor(sid)
    r = await client.get(f"/v1/records/{old[0]}", headers=reader.headers())
    assert r.status_code == 404
    await _suspended(client, reader)
    # The service's own role cannot unregister a canary.
    import asyncpg

    conn = await asyncpg.connect(stack.dsn())
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM honeytokens WHERE structure_id = $1", sid)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE honeytokens SET retired_on = NULL")
    finally:
        await conn.close()


async def test_paging_never_hands_out_a_canarys_id(client, stack: Stack, world: World) -> None:
    """Review finding: a supervisor paging with limit=1 got the canaries' ids in the
    cursors of the pages they were left out of."""
    from vault_service.paging import decode_uuid_cursor

    sid = await world.structure()
    canaries = set(await _plant(stack, world, sid))
    referent = await world.counsellor(sid)
    supervisor = await world.account(Role.SUPERVISOR, sid)
    created = set()
    for _ in range(4):
        r = await client.post("/v1/records", json=MINIMAL, headers=referent.headers())
        assert r.status_code == 201, r.text
        created.add(r.json()["id"])
    seen, cursors, cursor = [], [], None
    for _ in range(20):
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/caseload", params=params, headers=supervisor.headers())
        assert r.status_code == 200, r.text
        seen += [i["id"] for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
        cursors.append(str(decode_uuid_cursor(cursor)))
    assert set(seen) == created
    assert not canaries & set(cursors)
