"""The request gate (vault_service/gate.py): what every request passes before its
handler, seen from a client and from the operator's logs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Captured, World

pytestmark = pytest.mark.integration


async def test_a_repeated_credential_or_purpose_is_refused(client, world: World) -> None:
    c = await world.counsellor()
    rid = "00000000-0000-4000-8000-000000000001"
    # Two bearer tokens: a proxy in front may have checked the other one.
    r = await client.get(
        f"/v1/records/{rid}",
        headers=[
            ("Authorization", f"Bearer {c.token}"),
            ("Authorization", f"Bearer {c.token}"),
            ("X-Purpose", "follow_up"),
        ],
    )
    assert (r.status_code, r.json()["code"]) == (401, "token_malformed")
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await client.get(
        f"/v1/records/{rid}",
        headers=[
            ("Authorization", f"Bearer {c.token}"),
            ("X-Purpose", "follow_up"),
            ("X-Purpose", "break_glass"),
        ],
    )
    assert (r.status_code, r.json()["code"]) == (400, "purpose_required")


async def test_refusals_by_the_gate_are_measured_and_logged(
    client, world: World, captured: Captured
) -> None:
    before = len(captured.logs.getvalue())
    r = await client.get("/v1/caseload", headers={"X-Purpose": "follow_up"})
    assert r.status_code == 401
    lines = [
        json.loads(line)
        for line in captured.logs.getvalue()[before:].splitlines()
        if line.startswith("{") and '"http_request"' in line
    ]
    assert any(line["route"] == "/v1/caseload" and line["status"] == 401 for line in lines), lines
