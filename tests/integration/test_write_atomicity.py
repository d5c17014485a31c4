"""A write and its access-log entry commit together or not at all.

The failure of the entry is injected in PostgreSQL itself: a trigger on the pending
queue (audit_pending) that refuses the entries of one account, created for the length
of one test and dropped in a `finally`, so nothing else of the session is affected.
Every write (create, update, transfer, a transfer request and its answers,
break-the-glass, review) must then answer 503 audit_unavailable and leave nothing
behind; once the trigger is gone the same write succeeds."""

from __future__ import annotations

import contextlib
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import Account, World, load_fixture
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))
MINIMAL = json.loads(load_fixture("minimal_record.json"))

Client = AsyncTestClient[Litestar]


@contextlib.asynccontextmanager
async def _entries_fail_for(owner: asyncpg.Connection, actor: Account) -> AsyncIterator[None]:
    """While open, every access-log entry of `actor` fails to be inserted (and with it
    the statement, hence the transaction, that inserts it)."""
    name = f"test_fail_{uuid.uuid4().hex[:12]}"
    await owner.execute(
        f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.body::jsonb ->> 'actor_id' = '{actor.id}' THEN
                RAISE EXCEPTION 'injected failure of the access log';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {name} BEFORE INSERT ON audit_pending
            FOR EACH ROW EXECUTE FUNCTION {name}();
        """
    )
    try:
        yield
    finally:
        await owner.execute(
            f"DROP TRIGGER IF EXISTS {name} ON audit_pending; DROP FUNCTION IF EXISTS {name}();"
        )


def _unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "audit_unavailable"
    for value in (FULL["birth_name"], FULL["nir"], FULL["email"]):
        assert value not in r.text


async def _create(client: Client, who: Account, body: dict[str, Any] = FULL) -> str:
    r = await client.post("/v1/records", json=body, headers=who.headers())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _row(world: World, rid: str) -> asyncpg.Record:
    row = await world.owner.fetchrow(
        "SELECT structure_id, referent_id, version, sealed, record_key, clear, updated_at "
        "FROM records WHERE id = $1",
        uuid.UUID(rid),
    )
    assert row is not None
    return row


async def _index(world: World, rid: str) -> list[tuple[Any, ...]]:
    rows = await world.owner.fetch(
        "SELECT structure_id, name, digest FROM record_index WHERE record_id = $1 "
        "ORDER BY name, digest",
        uuid.UUID(rid),
    )
    return [tuple(r) for r in rows]


async def test_failed_create_writes_nothing(client: Client, world: World) -> None:
    sid = await world.structure()
    c = await world.counsellor(sid)
    key = f"retry-{uuid.uuid4()}"

    async def counts() -> tuple[int, int, int]:
        return (
            await world.owner.fetchval("SELECT count(*) FROM records WHERE structure_id = $1", sid),
            await world.owner.fetchval(
                "SELECT count(*) FROM record_index WHERE structure_id = $1", sid
            ),
            await world.owner.fetchval(
                "SELECT count(*) FROM idempotency_keys WHERE account_id = $1", c.id
            ),
        )

    assert await counts() == (0, 0, 0)
    async with _entries_fail_for(world.owner, c):
        _unavailable(await client.post("/v1/records", json=FULL, headers=c.headers()))
        _unavailable(
            await client.post(
                "/v1/records", json=FULL, headers=c.headers(**{"Idempotency-Key": key})
            )
        )
        # Reads need an entry too: no entry, no data.
        _unavailable(await client.get("/v1/caseload", headers=c.headers()))
    assert await counts() == (0, 0, 0)
    r = await client.get("/v1/caseload", headers=c.headers())
    assert (r.status_code, r.json()["items"]) == (200, [])
    # The retry with the same key is a first creation, not a replay of a ghost.
    r = await client.post("/v1/records", json=FULL, headers=c.headers(**{"Idempotency-Key": key}))
    assert r.status_code == 201, r.text
    assert "idempotent-replayed" not in r.headers
    got = await client.get(f"/v1/records/{r.json()['id']}", headers=c.headers())
    assert got.json()["record"] == FULL
    assert (await counts())[0] == 1


async def test_failed_update_changes_nothing(client: Client, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c)
    before, index_before = await _row(world, rid), await _index(world, rid)
    patch = {"email": "nouveau@example.org", "usage_name": "Changé"}
    async with _entries_fail_for(world.owner, c):
        _unavailable(
            await client.patch(
                f"/v1/records/{rid}", json=patch, headers=c.headers(**{"If-Match": '"1"'})
            )
        )
    assert await _row(world, rid) == before
    assert await _index(world, rid) == index_before
    r = await client.get(f"/v1/records/{rid}", headers=c.headers())
    assert (r.status_code, r.headers["etag"], r.json()["record"]) == (200, '"1"', FULL)
    found = await client.get("/v1/records", params={"email": patch["email"]}, headers=c.headers())
    assert found.json()["items"] == []
    # The version the client knew is still the current one: the same update succeeds.
    r = await client.patch(
        f"/v1/records/{rid}", json=patch, headers=c.headers(**{"If-Match": '"1"'})
    )
    assert (r.status_code, r.headers["etag"]) == (200, '"2"')
    assert r.json()["record"] == {**FULL, **patch}


async def test_failed_transfers_leave_custody_unchanged(client: Client, world: World) -> None:
    s1, s2 = await world.structure(), await world.structure()
    old, colleague = await world.counsellor(s1), await world.counsellor(s1)
    far = await world.counsellor(s2)
    sup, receiving = (
        await world.account(Role.SUPERVISOR, s1),
        await world.account(Role.SUPERVISOR, s2),
    )
    rid = await _create(client, old)
    before, index_before = await _row(world, rid), await _index(world, rid)
    until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)).isoformat()
    attempts = [
        {"to_account": str(colleague.id), "kind": "definitive"},
        {"to_account": str(colleague.id), "kind": "temporary", "until": until},
        {"to_account": str(far.id), "kind": "definitive"},  # a request to s2
    ]
    async with _entries_fail_for(world.owner, sup):
        for body in attempts:
            _unavailable(
                await client.post(
                    f"/v1/records/{rid}/transfer",
                    json=body,
                    headers=sup.headers(purpose="transfer"),
                )
            )
    assert await _row(world, rid) == before
    assert await _index(world, rid) == index_before
    assignments = await world.owner.fetchval(
        "SELECT count(*) FROM record_assignments WHERE record_id = $1", uuid.UUID(rid)
    )
    assert assignments == 0
    assert await _transfer_requests(world, rid) == 0
    assert (await client.get(f"/v1/records/{rid}", headers=old.headers())).status_code == 200
    for who in (colleague, far):
        assert (await client.get(f"/v1/records/{rid}", headers=who.headers())).status_code == 404
    # Without the failure, each transfer goes through.
    r = await client.post(
        f"/v1/records/{rid}/transfer", json=attempts[1], headers=sup.headers(purpose="transfer")
    )
    assert r.status_code == 200, r.text
    assert (await client.get(f"/v1/records/{rid}", headers=colleague.headers())).status_code == 200
    r = await client.post(
        f"/v1/records/{rid}/transfer", json=attempts[2], headers=sup.headers(purpose="transfer")
    )
    assert r.status_code == 202, r.text
    r = await client.post(
        f"/v1/transfers/{r.json()['transfer_id']}/accept",
        headers=receiving.headers(purpose="transfer"),
    )
    assert r.status_code == 200, r.text
    after = await _row(world, rid)
    assert (after["structure_id"], after["referent_id"]) == (s2, far.id)
    got = await client.get(f"/v1/records/{rid}", headers=far.headers())
    assert (got.status_code, got.json()["record"]) == (200, FULL)


async def _transfer_requests(world: World, rid: str) -> int:
    return await world.owner.fetchval(
        "SELECT count(*) FROM transfer_requests WHERE record_id = $1", uuid.UUID(rid)
    )


async def test_failed_answers_leave_the_request_pending(client: Client, world: World) -> None:
    s1, s2 = await world.structure(), await world.structure()
    old, far = await world.counsellor(s1), await world.counsellor(s2)
    sup, receiving = (
        await world.account(Role.SUPERVISOR, s1),
        await world.account(Role.SUPERVISOR, s2),
    )
    rid = await _create(client, old)
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(far.id), "kind": "definitive"},
        headers=sup.headers(purpose="transfer"),
    )
    assert r.status_code == 202, r.text
    transfer = r.json()["transfer_id"]
    before, index_before = await _row(world, rid), await _index(world, rid)

    async def state() -> tuple[Any, Any, Any]:
        row = await world.owner.fetchrow(
            "SELECT state, decided_by, decided_at FROM transfer_requests WHERE id = $1",
            uuid.UUID(transfer),
        )
        return tuple(row)  # type: ignore[arg-type]

    answers = [(receiving, "accept"), (receiving, "decline"), (sup, "cancel")]
    for who, verb in answers:
        async with _entries_fail_for(world.owner, who):
            _unavailable(
                await client.post(
                    f"/v1/transfers/{transfer}/{verb}", headers=who.headers(purpose="transfer")
                )
            )
        assert await state() == ("pending", None, None), verb
    assert await _row(world, rid) == before  # not moved: key, structure, version as they were
    assert await _index(world, rid) == index_before
    assert (await client.get(f"/v1/records/{rid}", headers=far.headers())).status_code == 404
    r = await client.post(
        f"/v1/transfers/{transfer}/accept", headers=receiving.headers(purpose="transfer")
    )
    assert r.status_code == 200, r.text
    got = await client.get(f"/v1/records/{rid}", headers=far.headers())
    assert (got.status_code, got.json()["record"]) == (200, FULL)


async def test_failed_break_glass_opens_no_grant(client: Client, world: World) -> None:
    sid = await world.structure()
    referent, outsider = await world.counsellor(sid), await world.counsellor(sid)
    rid = await _create(client, referent)

    async def grants() -> int:
        return await world.owner.fetchval(
            "SELECT count(*) FROM break_glass_grants WHERE record_id = $1", uuid.UUID(rid)
        )

    async with _entries_fail_for(world.owner, outsider):
        _unavailable(
            await client.post(
                f"/v1/records/{rid}/break-glass",
                json={"reason": "safety_emergency"},
                headers=outsider.headers(purpose="break_glass"),
            )
        )
    assert await grants() == 0
    r = await client.get(f"/v1/records/{rid}", headers=outsider.headers(purpose="break_glass"))
    assert r.status_code == 404
    r = await client.post(
        f"/v1/records/{rid}/break-glass",
        json={"reason": "safety_emergency"},
        headers=outsider.headers(purpose="break_glass"),
    )
    assert r.status_code == 201, r.text
    assert await grants() == 1
    r = await client.get(f"/v1/records/{rid}", headers=outsider.headers(purpose="break_glass"))
    assert (r.status_code, r.json()["record"]) == (200, FULL)


async def test_failed_review_leaves_the_grant_unreviewed(client: Client, world: World) -> None:
    sid = await world.structure()
    referent, outsider = await world.counsellor(sid), await world.counsellor(sid)
    reviewer = await world.account(Role.SUPERVISOR, sid)
    rid = await _create(client, referent)
    r = await client.post(
        f"/v1/records/{rid}/break-glass",
        json={"reason": "service_continuity"},
        headers=outsider.headers(purpose="break_glass"),
    )
    assert r.status_code == 201, r.text
    grant = r.json()["grant_id"]

    async def review_state() -> tuple[Any, Any, Any]:
        row = await world.owner.fetchrow(
            "SELECT reviewed_by, reviewed_at, review_outcome FROM break_glass_grants WHERE id = $1",
            uuid.UUID(grant),
        )
        return tuple(row)  # type: ignore[arg-type]

    async with _entries_fail_for(world.owner, reviewer):
        _unavailable(
            await client.post(
                f"/v1/break-glass/{grant}/review",
                json={"outcome": "unjustified"},
                headers=reviewer.headers(purpose="supervision"),
            )
        )
    assert await review_state() == (None, None, None)
    queue = await client.get(
        "/v1/break-glass/reviews", headers=reviewer.headers(purpose="supervision")
    )
    assert grant in [g["id"] for g in queue.json()["items"]]
    r = await client.post(
        f"/v1/break-glass/{grant}/review",
        json={"outcome": "unjustified"},
        headers=reviewer.headers(purpose="supervision"),
    )
    assert r.status_code == 204, r.text
    reviewed_by, reviewed_at, outcome = await review_state()
    assert (reviewed_by, outcome) == (reviewer.id, "unjustified")
    assert reviewed_at is not None
