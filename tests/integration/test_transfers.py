"""Cross-structure transfers wait for the receiving structure: the sending supervisor
asks (202, nothing moves), a supervisor of the receiving structure accepts (the record
moves then: key rewrapped, indexes recomputed) or declines, the sender may cancel, an
unanswered request expires. Everyone else gets 404 or 403, and every step, allowed or
refused, is in the access log."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import Account, Stack, World, load_fixture
from vault_service.app import create_app
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))
Client = AsyncTestClient[Litestar]
ITEM_KEYS = {
    "id",
    "record_id",
    "from_structure",
    "to_structure",
    "to_account",
    "requested_by",
    "requested_at",
    "expires_at",
    "state",
}


@dataclass
class Scene:
    """A youth of structure s1 (referent `old`), a counsellor `new` in s2, the
    supervisors of s1, s2 and a third structure, and an auditor."""

    s1: uuid.UUID
    s2: uuid.UUID
    old: Account
    new: Account
    sup1: Account
    sup2: Account
    sup3: Account
    auditor: Account
    rid: str
    body: dict[str, Any]


@pytest.fixture
async def scene(client: Client, world: World) -> Scene:
    s1, s2, s3 = [await world.structure() for _ in range(3)]
    old, new = await world.counsellor(s1), await world.counsellor(s2)
    sup1, sup2, sup3 = [await world.account(Role.SUPERVISOR, s) for s in (s1, s2, s3)]
    auditor = await world.account(Role.AUDITOR, None)
    body = {**FULL, "birth_name": "Accueilli"}
    r = await client.post("/v1/records", json=body, headers=old.headers())
    assert r.status_code == 201, r.text
    return Scene(s1, s2, old, new, sup1, sup2, sup3, auditor, r.json()["id"], body)


async def _ask(client: Client, sup: Account, rid: str, to: Account) -> httpx.Response:
    return await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(to.id), "kind": "definitive"},
        headers=sup.headers(purpose="transfer"),
    )


async def _answer(client: Client, who: Account, transfer_id: str, verb: str) -> httpx.Response:
    return await client.post(
        f"/v1/transfers/{transfer_id}/{verb}", headers=who.headers(purpose="transfer")
    )


async def _listed(client: Client, sup: Account, direction: str) -> list[dict[str, Any]]:
    r = await client.get(
        "/v1/transfers", params={"direction": direction}, headers=sup.headers(purpose="transfer")
    )
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def _record(world: World, rid: str) -> asyncpg.Record:
    row = await world.owner.fetchrow(
        "SELECT structure_id, referent_id, branch_key_version, record_key, sealed, version "
        "FROM records WHERE id = $1",
        uuid.UUID(rid),
    )
    assert row is not None
    return row


async def _request_row(world: World, transfer_id: str) -> asyncpg.Record:
    row = await world.owner.fetchrow(
        "SELECT state, decided_by, decided_at, expires_at FROM transfer_requests WHERE id = $1",
        uuid.UUID(transfer_id),
    )
    assert row is not None
    return row


async def _events(client: Client, auditor: Account, **params: str) -> set[tuple[Any, ...]]:
    r = await client.get("/v1/audit/events", params=params, headers=auditor.headers("audit"))
    assert r.status_code == 200, r.text
    return {
        (e["action"], e["outcome"], e["refusal_code"], e["actor_id"]) for e in r.json()["items"]
    }


def _code(r: httpx.Response) -> tuple[int, str | None]:
    return r.status_code, r.json().get("code")


async def test_a_request_moves_nothing_until_the_receiving_structure_accepts(
    client: Client, world: World, scene: Scene
) -> None:
    sc = scene
    before = await _record(world, sc.rid)
    r = await _ask(client, sc.sup1, sc.rid, sc.new)
    assert r.status_code == 202, r.text
    asked = r.json()
    assert set(asked) == {"transfer_id", "state", "record_id", "to_structure", "expires_at"}
    assert (asked["state"], asked["record_id"], asked["to_structure"]) == (
        "pending",
        sc.rid,
        str(sc.s2),
    )
    expires = datetime.datetime.fromisoformat(asked["expires_at"])
    expected = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=14)
    assert abs(expires - expected) < datetime.timedelta(minutes=1)
    transfer = asked["transfer_id"]

    # Nothing moved: the source side still holds the record, the target does not.
    assert await _record(world, sc.rid) == before
    got = await client.get(f"/v1/records/{sc.rid}", headers=sc.old.headers())
    assert (got.status_code, got.json()["record"]) == (200, sc.body)
    assert (await client.get(f"/v1/records/{sc.rid}", headers=sc.new.headers())).status_code == 404
    assert (await client.get(f"/v1/records/{sc.rid}", headers=sc.sup2.headers())).status_code == 404

    # Listed to the receiving supervisor as incoming, to the sender as outgoing, to no
    # one else; ids, structures, dates and state only.
    incoming = await _listed(client, sc.sup2, "incoming")
    assert [i["id"] for i in incoming] == [transfer]
    assert set(incoming[0]) == ITEM_KEYS
    assert (incoming[0]["from_structure"], incoming[0]["to_account"]) == (
        str(sc.s1),
        str(sc.new.id),
    )
    assert [i["id"] for i in await _listed(client, sc.sup1, "outgoing")] == [transfer]
    assert await _listed(client, sc.sup1, "incoming") == []
    assert await _listed(client, sc.sup2, "outgoing") == []
    for direction in ("incoming", "outgoing"):
        assert await _listed(client, sc.sup3, direction) == []
    r = await client.get(
        "/v1/transfers", params={"direction": "incoming"}, headers=sc.new.headers()
    )
    assert _code(r) == (403, "forbidden")
    r = await client.get("/v1/transfers", headers=sc.sup2.headers(purpose="transfer"))
    assert _code(r) == (400, "invalid_parameter")

    # Only a supervisor of the receiving structure accepts: the sender's side, a third
    # structure and an unknown id are all "not found"; a counsellor is refused.
    for who in (sc.sup1, sc.sup3):
        assert _code(await _answer(client, who, transfer, "accept")) == (404, "not_found")
    assert _code(await _answer(client, sc.sup2, str(uuid.uuid4()), "accept")) == (404, "not_found")
    assert _code(await _answer(client, sc.new, transfer, "accept")) == (403, "forbidden")
    assert _code(await _answer(client, sc.sup2, "not-a-uuid", "accept")) == (
        400,
        "invalid_parameter",
    )
    # An answer names nothing: a body that seems to choose another target is refused.
    r = await client.post(
        f"/v1/transfers/{transfer}/accept",
        json={"to_account": str(sc.sup2.id)},
        headers=sc.sup2.headers(purpose="transfer"),
    )
    assert _code(r) == (400, "invalid_body")
    assert str(sc.sup2.id) not in r.text
    assert await _record(world, sc.rid) == before

    r = await client.post(
        f"/v1/transfers/{transfer}/accept", json={}, headers=sc.sup2.headers(purpose="transfer")
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "transfer_id": transfer,
        "state": "accepted",
        "record_id": sc.rid,
        "structure_id": str(sc.s2),
        "referent_id": str(sc.new.id),
        "version": before["version"] + 1,
    }
    after = await _record(world, sc.rid)
    assert (after["structure_id"], after["referent_id"]) == (sc.s2, sc.new.id)
    assert after["record_key"] != before["record_key"]  # rewrapped under s2's branch key
    # The fields themselves are not touched; only the record's integrity tag is new
    # (it binds the structure, the referent and the version).
    fields_before = msgspec.msgpack.decode(before["sealed"])
    fields_after = msgspec.msgpack.decode(after["sealed"])
    assert fields_after.pop("") != fields_before.pop("")
    assert fields_after == fields_before
    active = await world.owner.fetchval(
        "SELECT max(version) FROM structure_keys WHERE structure_id = $1", sc.s2
    )
    assert after["branch_key_version"] == active
    decided = await _request_row(world, transfer)
    assert (decided["state"], decided["decided_by"]) == ("accepted", sc.sup2.id)
    assert decided["decided_at"] is not None

    got = await client.get(f"/v1/records/{sc.rid}", headers=sc.new.headers())
    assert (got.status_code, got.json()["record"]) == (200, sc.body)
    assert (await client.get(f"/v1/records/{sc.rid}", headers=sc.old.headers())).status_code == 404
    assert (await client.get(f"/v1/records/{sc.rid}", headers=sc.sup1.headers())).status_code == 404
    found = await client.get(
        "/v1/records", params={"birth_name": "accueilli"}, headers=sc.new.headers()
    )
    assert [i["id"] for i in found.json()["items"]] == [sc.rid]
    gone = await client.get(
        "/v1/records", params={"birth_name": "accueilli"}, headers=sc.old.headers()
    )
    assert gone.json()["items"] == []
    assert await _listed(client, sc.sup2, "incoming") == []
    for verb in ("accept", "decline"):
        r = await _answer(client, sc.sup2, transfer, verb)
        assert _code(r) == (409, "transfer_not_pending")

    # Both supervisors drew on their transfer budget for this record.
    for sup in (sc.sup1, sc.sup2):
        marks = await world.owner.fetchval(
            "SELECT count(*) FROM budget_marks WHERE subject = $1 AND budget = 'transfer.hour' "
            "AND record_id = $2",
            sup.id,
            uuid.UUID(sc.rid),
        )
        assert marks == 1

    # Every step is in the access log, the refusals included.
    on_record = await _events(client, sc.auditor, record_id=sc.rid)
    assert ("record.transfer", "allowed", None, str(sc.sup1.id)) in on_record
    assert ("record.transfer_accept", "allowed", None, str(sc.sup2.id)) in on_record
    assert ("transfer.list", "allowed", None, str(sc.sup2.id)) in on_record
    by_sender = await _events(client, sc.auditor, actor_id=str(sc.sup1.id))
    assert ("record.transfer_accept", "refused", "not_found", str(sc.sup1.id)) in by_sender
    by_counsellor = await _events(client, sc.auditor, actor_id=str(sc.new.id))
    assert ("record.transfer_accept", "refused", "forbidden", str(sc.new.id)) in by_counsellor
    by_receiver = await _events(client, sc.auditor, actor_id=str(sc.sup2.id))
    assert ("record.transfer_accept", "refused", "transfer_not_pending", str(sc.sup2.id)) in (
        by_receiver
    )


async def test_one_request_at_a_time_declined_or_cancelled(
    client: Client, world: World, scene: Scene
) -> None:
    sc = scene
    before = await _record(world, sc.rid)
    r = await _ask(client, sc.sup1, sc.rid, sc.new)
    assert r.status_code == 202, r.text
    first = r.json()["transfer_id"]
    assert _code(await _ask(client, sc.sup1, sc.rid, sc.new)) == (409, "transfer_pending")
    assert [i["id"] for i in await _listed(client, sc.sup2, "incoming")] == [first]

    # Declining is the receiving side's, cancelling the sending side's.
    assert _code(await _answer(client, sc.sup1, first, "decline")) == (404, "not_found")
    assert _code(await _answer(client, sc.sup2, first, "cancel")) == (404, "not_found")
    assert _code(await _answer(client, sc.sup3, first, "cancel")) == (404, "not_found")
    r = await _answer(client, sc.sup2, first, "decline")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "transfer_id": first,
        "state": "declined",
        "record_id": sc.rid,
        "structure_id": str(sc.s1),
        "referent_id": None,
        "version": None,
    }
    assert (await _request_row(world, first))["decided_by"] == sc.sup2.id
    assert await _record(world, sc.rid) == before
    assert (await client.get(f"/v1/records/{sc.rid}", headers=sc.old.headers())).status_code == 200
    assert _code(await _answer(client, sc.sup2, first, "accept")) == (409, "transfer_not_pending")

    # Once answered, the record may be asked for again, and the sender may withdraw.
    r = await _ask(client, sc.sup1, sc.rid, sc.new)
    assert r.status_code == 202, r.text
    second = r.json()["transfer_id"]
    r = await _answer(client, sc.sup1, second, "cancel")
    assert (r.status_code, r.json()["state"]) == (200, "cancelled")
    row = await _request_row(world, second)
    assert (row["state"], row["decided_by"]) == ("cancelled", sc.sup1.id)
    assert _code(await _answer(client, sc.sup1, second, "cancel")) == (409, "transfer_not_pending")
    assert _code(await _answer(client, sc.sup2, second, "accept")) == (409, "transfer_not_pending")
    assert await _record(world, sc.rid) == before
    assert await _listed(client, sc.sup2, "incoming") == []

    on_record = await _events(client, sc.auditor, record_id=sc.rid)
    assert ("record.transfer", "refused", "transfer_pending", str(sc.sup1.id)) in on_record
    assert ("record.transfer_decline", "allowed", None, str(sc.sup2.id)) in on_record
    assert ("record.transfer_cancel", "allowed", None, str(sc.sup1.id)) in on_record


@contextlib.asynccontextmanager
async def _service(stack: Stack, **overrides: Any) -> AsyncIterator[Client]:
    app = create_app(stack.settings(**overrides))
    async with AsyncTestClient(app, base_url="http://testserver.local") as api:
        yield api


async def test_an_unanswered_request_expires(
    client: Client, stack: Stack, world: World, scene: Scene
) -> None:
    sc = scene
    before = await _record(world, sc.rid)
    r = await _ask(client, sc.sup1, sc.rid, sc.new)
    assert r.status_code == 202, r.text
    lapsed = r.json()["transfer_id"]
    await world.owner.execute(
        "UPDATE transfer_requests SET requested_at = now() - interval '15 days', "
        "expires_at = now() - interval '1 day' WHERE id = $1",
        uuid.UUID(lapsed),
    )
    for who, verb in ((sc.sup2, "accept"), (sc.sup2, "decline"), (sc.sup1, "cancel")):
        assert _code(await _answer(client, who, lapsed, verb)) == (409, "transfer_expired")
    assert await _record(world, sc.rid) == before
    assert await _listed(client, sc.sup2, "incoming") == []
    assert await _listed(client, sc.sup1, "outgoing") == []

    # Asked again, with the window a setting: the lapsed request is marked expired in
    # the asking transaction.
    async with _service(stack, transfer_acceptance_days=2) as api:
        r = await _ask(api, sc.sup1, sc.rid, sc.new)
    assert r.status_code == 202, r.text
    expires = datetime.datetime.fromisoformat(r.json()["expires_at"])
    expected = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    assert abs(expires - expected) < datetime.timedelta(minutes=1)
    row = await _request_row(world, lapsed)
    assert (row["state"], row["decided_by"], row["decided_at"]) == (
        "expired",
        None,
        row["expires_at"],
    )
    r = await _answer(client, sc.sup2, r.json()["transfer_id"], "accept")
    assert r.status_code == 200, r.text
    events = await _events(client, sc.auditor, actor_id=str(sc.sup2.id))
    assert ("record.transfer_accept", "refused", "transfer_expired", str(sc.sup2.id)) in events


async def _notify(world: World, account: Account) -> None:
    """What an admin's account change does: every replica drops its cached state."""
    await world.owner.execute("SELECT pg_notify('vault_service_accounts', $1)", str(account.id))
    await asyncio.sleep(0.1)


async def test_acceptance_checks_everything_again_and_fails_whole(
    client: Client, world: World, scene: Scene
) -> None:
    sc = scene
    r = await _ask(client, sc.sup1, sc.rid, sc.new)
    assert r.status_code == 202, r.text
    transfer = r.json()["transfer_id"]
    before = await _record(world, sc.rid)
    index_query = (
        "SELECT structure_id, name, digest FROM record_index WHERE record_id = $1 "
        "ORDER BY name, digest"
    )
    index_before = await world.owner.fetch(index_query, uuid.UUID(sc.rid))
    s3 = await world.structure()
    # The target, between asking and accepting: deactivated, moved elsewhere, restricted.
    breakages = [
        (
            ("UPDATE accounts SET state = 'disabled' WHERE id = $1", sc.new.id),
            ("UPDATE accounts SET state = 'active' WHERE id = $1", sc.new.id),
        ),
        (
            ("UPDATE accounts SET structure_id = $2 WHERE id = $1", sc.new.id, s3),
            ("UPDATE accounts SET structure_id = $2 WHERE id = $1", sc.new.id, sc.s2),
        ),
        (
            ("UPDATE accounts SET activated_at = now() WHERE id = $1", sc.new.id),
            ("UPDATE accounts SET activated_at = NULL WHERE id = $1", sc.new.id),
        ),
    ]
    for broken, repaired in breakages:
        await world.owner.execute(*broken)
        r = await _answer(client, sc.sup2, transfer, "accept")
        assert _code(r) == (422, "invalid_transfer_target"), broken
        await world.owner.execute(*repaired)
        assert await _record(world, sc.rid) == before
        assert await world.owner.fetch(index_query, uuid.UUID(sc.rid)) == index_before
        assert (await _request_row(world, transfer))["state"] == "pending"
    await _notify(world, sc.new)

    # The record left the sending structure behind the service's back (s3 has a branch
    # key once one of its counsellors created a record): the request is stale.
    elsewhere = await world.counsellor(s3)
    r = await client.post("/v1/records", json=FULL, headers=elsewhere.headers())
    assert r.status_code == 201, r.text
    key_version = await world.owner.fetchval(
        "SELECT max(version) FROM structure_keys WHERE structure_id = $1", s3
    )
    relocate = "UPDATE records SET structure_id = $2, branch_key_version = $3 WHERE id = $1"
    await world.owner.execute(relocate, uuid.UUID(sc.rid), s3, key_version)
    try:
        r = await _answer(client, sc.sup2, transfer, "accept")
        assert _code(r) == (409, "transfer_stale")
    finally:
        await world.owner.execute(relocate, uuid.UUID(sc.rid), sc.s1, before["branch_key_version"])
    assert await _record(world, sc.rid) == before

    # A newcomer supervisor of the receiving structure receives no youth.
    newcomer = await world.account(Role.SUPERVISOR, sc.s2)
    await world.owner.execute("UPDATE accounts SET activated_at = now() WHERE id = $1", newcomer.id)
    assert _code(await _answer(client, newcomer, transfer, "accept")) == (403, "account_restricted")

    # The one who asked, moved since into the receiving structure, still cannot answer.
    await world.owner.execute(
        "UPDATE accounts SET structure_id = $2 WHERE id = $1", sc.sup1.id, sc.s2
    )
    await _notify(world, sc.sup1)
    moved = Account(sc.sup1.id, Role.SUPERVISOR, sc.s2)
    moved.token = await world.app.state.token_issuer.issue(moved.id, Role.SUPERVISOR, sc.s2, 600)
    for verb in ("accept", "decline"):
        assert _code(await _answer(client, moved, transfer, verb)) == (404, "not_found")
    with pytest.raises(asyncpg.CheckViolationError):
        await world.owner.execute(
            "UPDATE transfer_requests SET state = 'accepted', decided_by = requested_by, "
            "decided_at = now() WHERE id = $1",
            uuid.UUID(transfer),
        )
    assert await _record(world, sc.rid) == before

    r = await _answer(client, sc.sup2, transfer, "accept")
    assert r.status_code == 200, r.text
    got = await client.get(f"/v1/records/{sc.rid}", headers=sc.new.headers())
    assert (got.status_code, got.json()["record"]) == (200, sc.body)
    # Decided once: the database itself refuses to reopen it.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await world.owner.execute(
            "UPDATE transfer_requests SET state = 'pending', decided_by = NULL, "
            "decided_at = NULL WHERE id = $1",
            uuid.UUID(transfer),
        )
