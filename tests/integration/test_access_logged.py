"""The access log through the real service: every read leaves an entry, a scraping
session is named record by record, and no entry means no data."""

from __future__ import annotations

import asyncio
import datetime
import json

import asyncpg
import pytest

from tests.conftest import Stack, World, load_fixture
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
MINIMAL = json.loads(load_fixture("minimal_record.json"))
FULL = json.loads(load_fixture("full_record.json"))


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_breach_impact_names_exactly_what_was_returned(client, world: World) -> None:
    sid = await world.structure()
    victim = await world.counsellor(sid)
    other = await world.counsellor(sid)
    auditor = await world.account(Role.AUDITOR, None)
    ids = [
        (
            await client.post(
                "/v1/records", json=FULL if i % 2 else MINIMAL, headers=victim.headers()
            )
        ).json()["id"]
        for i in range(6)
    ]
    untouched = (await client.post("/v1/records", json=MINIMAL, headers=other.headers())).json()[
        "id"
    ]
    await asyncio.sleep(0.01)
    start = datetime.datetime.now(datetime.UTC)
    # The "compromised" session: reads four records, one of them twice, tries one it
    # may not see (refused: nothing returned), lists its caseload.
    read = ids[:4]
    for rid in [*read, read[0]]:
        assert (await client.get(f"/v1/records/{rid}", headers=victim.headers())).status_code == 200
    assert (
        await client.get(f"/v1/records/{untouched}", headers=victim.headers())
    ).status_code == 404
    await asyncio.sleep(0.01)
    end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    r = await client.get(
        "/v1/audit/reports/breach-impact",
        params={"actor_id": str(victim.id), "since": _iso(start), "until": _iso(end)},
        headers=auditor.headers(purpose="audit"),
    )
    assert r.status_code == 200, r.text
    report = r.json()
    reported = {item["record_id"]: item for item in report["records"]}
    assert set(reported) == set(read), "exactly the records returned to the actor"
    assert reported[read[0]]["accesses"] == 2
    assert "birth_name" in reported[read[0]]["fields"]
    assert "nir" in reported[read[1]]["fields"]  # a full record: its NIR was returned
    assert untouched not in reported
    # The refusal is in the log too, as a refusal.
    r = await client.get(
        "/v1/audit/events",
        params={"record_id": untouched},
        headers=auditor.headers(purpose="audit"),
    )
    outcomes = [(e["action"], e["outcome"], e.get("refusal_code")) for e in r.json()["items"]]
    assert ("record.read", "refused", "not_found") in outcomes
    # Counsellors do not read the log.
    r = await client.get(
        "/v1/audit/events", params={"record_id": untouched}, headers=victim.headers()
    )
    assert r.status_code == 403


async def test_no_entry_no_data(client, stack: Stack, world: World) -> None:
    c = await world.counsellor()
    rid = (await client.post("/v1/records", json=FULL, headers=c.headers())).json()["id"]
    blocker = await asyncpg.connect(stack.dsn("vault_service_owner"))
    try:
        async with blocker.transaction():
            # Hold the pending queue, where requests' entries are made durable: no entry
            # can commit while this lock is held.
            await blocker.execute("LOCK TABLE audit_pending IN ACCESS EXCLUSIVE MODE")
            r = await client.get(f"/v1/records/{rid}", headers=c.headers())
            assert (r.status_code, r.json()["code"]) == (503, "audit_unavailable")
            assert FULL["birth_name"] not in r.text
            assert FULL["nir"] not in r.text
            before = await blocker.fetchval("SELECT count(*) FROM records")
            r = await client.post("/v1/records", json=MINIMAL, headers=c.headers())
            assert r.status_code == 503
    finally:
        await blocker.close()
    assert (await client.get(f"/v1/records/{rid}", headers=c.headers())).status_code == 200
    assert before >= 1
