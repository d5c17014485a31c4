"""Vault down: cached keys serve until their TTL, nothing else does, nothing half-written."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import Stack, World, load_fixture
from vault_service.app import create_app

pytestmark = pytest.mark.integration
MINIMAL = json.loads(load_fixture("minimal_record.json"))


async def test_outage_fails_closed(stack: Stack, world: World) -> None:
    app = create_app(stack.settings(branch_key_ttl_seconds=3))
    async with AsyncTestClient(app, base_url="http://outage.local") as client:
        world.app = app
        s1, s2 = await world.structure(), await world.structure()
        c1 = await world.counsellor(s1)
        c2 = await world.counsellor(s2)
        r = await client.post("/v1/records", json=MINIMAL, headers=c1.headers())
        rid = r.json()["id"]
        assert (await client.get(f"/v1/records/{rid}", headers=c1.headers())).status_code == 200
        # Steady state: reads make no Vault call at all.
        kms = app.state.kms
        before = kms.calls
        for _ in range(50):
            assert (await client.get(f"/v1/records/{rid}", headers=c1.headers())).status_code == 200
        assert kms.calls == before
        stack.bao.pause()
        try:
            # Cached branch key: still served.
            assert (await client.get(f"/v1/records/{rid}", headers=c1.headers())).status_code == 200
            # A structure whose key was never unwrapped: 503, and nothing written.
            r = await client.post("/v1/records", json=MINIMAL, headers=c2.headers())
            assert (r.status_code, r.json()["code"]) == (503, "kms_unavailable")
            assert r.headers["retry-after"]
            assert (
                await world.owner.fetchval(
                    "SELECT count(*) FROM records WHERE structure_id = $1", s2
                )
                == 0
            )
            assert (
                await world.owner.fetchval(
                    "SELECT count(*) FROM structure_keys WHERE structure_id = $1", s2
                )
                == 0
            )
            # Past the TTL the cached key is gone: refuse rather than guess.
            await asyncio.sleep(3.2)
            r = await client.get(f"/v1/records/{rid}", headers=c1.headers())
            assert (r.status_code, r.json()["code"]) == (503, "kms_unavailable")
            ready = await client.get("/health/ready")
            assert ready.status_code == 503
        finally:
            stack.bao.resume()
        assert (await client.get(f"/v1/records/{rid}", headers=c1.headers())).status_code == 200
        r = await client.post("/v1/records", json=MINIMAL, headers=c2.headers())
        assert r.status_code == 201
        assert uuid.UUID(r.json()["id"])
