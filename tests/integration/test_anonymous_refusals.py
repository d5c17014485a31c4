"""Refusals of requests with no verified actor are counted, not logged one by one: a
flood of them adds a few entries to the access log, loses no count, and never makes a
counsellor's read fail. A token that verified and was then refused is still logged
as its account's."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import Stack, World, load_fixture
from vault_service.app import create_app
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))


@contextlib.asynccontextmanager
async def _service(stack: Stack, **overrides: Any) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(stack.settings(**overrides))
    async with AsyncTestClient(app, base_url="http://testserver.local") as client:
        yield client


async def _integrated(owner: asyncpg.Connection) -> None:
    for _ in range(200):
        if not await owner.fetchval("SELECT count(*) FROM audit_pending"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the access log did not integrate its pending entries")


def _forged_token() -> str:
    """Well-formed, signed by a key the service does not know."""
    now = int(time.time())
    claims = {
        "iss": "https://vault-service.test",
        "aud": "vault-service-test",
        "sub": str(uuid.uuid4()),
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
        "role": "counsellor",
        "scope": "records:read",
    }
    return jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "x"})


async def test_a_flood_of_anonymous_refusals_adds_a_few_entries_and_loses_no_count(
    stack: Stack, world: World, owner: asyncpg.Connection
) -> None:
    async with _service(stack, anonymous_refusal_window_seconds=30) as api:
        c = await world.counsellor()
        r = await api.post("/v1/records", json=FULL, headers=c.headers())
        assert r.status_code == 201
        rid = r.json()["id"]
        await _integrated(owner)
        start = datetime.datetime.now(datetime.UTC)
        before = await owner.fetchval("SELECT count(*) FROM audit_bodies")
        forged = _forged_token()
        kinds = [
            {},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": f"Bearer {forged}"},
        ]
        paths = [f"/v1/records/{rid}", f"/v1/records/{uuid.uuid4()}", "/v1/caseload"]
        flood = 5_000

        async def anonymous(i: int) -> int:
            headers = {**kinds[i % 3], "X-Purpose": "follow_up"}
            return (await api.get(paths[i // 3 % 3], headers=headers)).status_code

        async def counsellor_reads() -> list[int]:
            statuses = []
            for _ in range(50):
                statuses.append(
                    (await api.get(f"/v1/records/{rid}", headers=c.headers())).status_code
                )
                await asyncio.sleep(0)
            return statuses

        reads = asyncio.create_task(counsellor_reads())
        statuses: list[int] = []
        for chunk in range(0, flood, 250):
            statuses += await asyncio.gather(
                *(anonymous(i) for i in range(chunk, min(chunk + 250, flood)))
            )
        assert statuses == [401] * flood
        # Every read of the valid counsellor during the flood was served.
        assert await reads == [200] * 50
    # What was counted since the last window is logged as the process stops (and
    # integrated by the other process of the tests, as by any other replica).
    await _integrated(owner)

    rows = await owner.fetch(
        "SELECT body FROM audit_bodies WHERE at >= $1 AND body ->> 'actor_id' IS NULL", start
    )
    bodies = [json.loads(r["body"]) for r in rows]
    added = await owner.fetchval("SELECT count(*) FROM audit_bodies") - before
    # 5,000 refusals, one entry per client, action (two here) and code (three) and
    # 30-second window: a dozen at most, with the 50 reads of the counsellor beside.
    assert len(bodies) <= 12, len(bodies)
    assert added <= 12 + 50
    assert sum(b.get("count", 1) for b in bodies) == flood
    assert {b["refusal_code"] for b in bodies} == {
        "token_missing",
        "token_malformed",
        "token_kid",
    }
    assert all(b["outcome"] == "refused" and b["record_ids"] == [] for b in bodies)
    assert all((b["v"], "count" in b) in ((1, False), (2, True)) for b in bodies)
    # The forged token's subject is not an actor: it never verified.
    assert all(b["token_jti"] is None for b in bodies)


async def test_the_keys_past_the_cap_are_counted_together(
    stack: Stack, owner: asyncpg.Connection
) -> None:
    start = datetime.datetime.now(datetime.UTC)
    async with _service(
        stack, anonymous_refusal_window_seconds=3, anonymous_refusal_keys_max=3
    ) as api:
        # Ten clients (a user agent each, so ten fingerprints), two requests each, well
        # inside the first window.
        for i in range(20):
            r = await api.get("/v1/caseload", headers={"User-Agent": f"client-{i % 10}"})
            assert r.status_code == 401
        refusals = api.app.state.anonymous_refusals
        assert refusals.pending == 20
        for _ in range(100):
            if refusals.pending == 0:
                break
            await asyncio.sleep(0.05)
        assert refusals.pending == 0
        await _integrated(owner)
    rows = await owner.fetch(
        "SELECT body FROM audit_bodies WHERE at >= $1 AND body ->> 'actor_id' IS NULL", start
    )
    counts = sorted(
        (json.loads(r["body"])["client_fingerprint"] is None, json.loads(r["body"]).get("count", 1))
        for r in rows
    )
    assert counts == [(False, 2), (False, 2), (False, 2), (True, 14)]


async def test_a_token_that_verified_is_refused_under_its_account(
    client: AsyncTestClient[Litestar], world: World, owner: asyncpg.Connection
) -> None:
    suspended = await world.account(Role.COUNSELLOR, await world.structure(), state="suspended")
    r = await client.get("/v1/caseload", headers=suspended.headers())
    assert (r.status_code, r.json()["code"]) == (401, "account_inactive")
    await _integrated(owner)
    rows = await owner.fetch(
        "SELECT body FROM audit_bodies WHERE body ->> 'actor_id' = $1", str(suspended.id)
    )
    bodies = [json.loads(r["body"]) for r in rows]
    assert [(b["action"], b["outcome"], b["refusal_code"], b["role"]) for b in bodies] == [
        ("caseload.list", "refused", "account_inactive", "counsellor")
    ]
    assert bodies[0]["token_jti"] is not None and "count" not in bodies[0]
