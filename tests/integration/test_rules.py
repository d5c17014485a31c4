"""Anomaly rules through the running service: one leader evaluates them over the access
log and budget state, raises one alert per subject and window, never on the request
path."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from tests.conftest import Account, World, load_fixture
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
MINIMAL = json.loads(load_fixture("minimal_record.json"))


async def _alerts_for(client, auditor: Account, who: Account, kind: str) -> list[dict]:
    r = await client.get("/v1/alerts", headers=auditor.headers(purpose="audit"))
    assert r.status_code == 200, r.text
    return [a for a in r.json()["items"] if a["account_id"] == str(who.id) and a["kind"] == kind]


async def _wait_for(client, auditor: Account, who: Account, kind: str) -> tuple[list, float]:
    started = time.monotonic()
    while time.monotonic() - started < 15:
        found = await _alerts_for(client, auditor, who, kind)
        if found:
            return found, time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} alert")


async def test_guessing_ids_raises_one_enumeration_alert(client, world: World) -> None:
    scraper = await world.counsellor()
    auditor = await world.account(Role.AUDITOR, None)
    for _ in range(21):  # the default threshold is 20 in five minutes
        r = await client.get(f"/v1/records/{uuid.uuid4()}", headers=scraper.headers())
        assert r.status_code == 404
    found, lag = await _wait_for(client, auditor, scraper, "anomaly.enumeration")
    assert found[0]["details"]["count"] >= 20
    assert found[0]["details"]["threshold"] == 20
    assert lag < 10
    for _ in range(5):
        await client.get(f"/v1/records/{uuid.uuid4()}", headers=scraper.headers())
    await asyncio.sleep(1.2)  # two more rounds of the rules
    assert len(await _alerts_for(client, auditor, scraper, "anomaly.enumeration")) == 1


async def test_a_new_account_reading_at_volume_is_flagged(client, world: World) -> None:
    sid = await world.structure()
    fresh = await world.counsellor(sid)
    auditor = await world.account(Role.AUDITOR, None)
    await world.owner.execute("UPDATE accounts SET activated_at = now() WHERE id = $1", fresh.id)
    ids = []
    for _ in range(50):  # the default threshold (restricted budget: 100 an hour)
        r = await client.post("/v1/records", json=MINIMAL, headers=fresh.headers())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for rid in ids:
        assert (await client.get(f"/v1/records/{rid}", headers=fresh.headers())).status_code == 200
    found, _ = await _wait_for(client, auditor, fresh, "anomaly.new_account_volume")
    assert found[0]["details"] == {"count": 50, "threshold": 50}
