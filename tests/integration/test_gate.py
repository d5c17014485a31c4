"""The request gate (vault_service/access/gate.py): what every request passes before its
handler, seen from a client and from the operator's logs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Captured, Stack, World
from vault_service.auth.permissions import Role

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


async def test_client_fingerprint_believes_only_trusted_proxies(
    client, stack: Stack, world: World
) -> None:
    """Behind the proxy every request comes from the proxy's address: the fingerprint
    must name the client it saw, but only a configured proxy is believed."""
    from tests.conftest import serve_processes

    c = await world.counsellor()
    auditor = await world.account(Role.AUDITOR, None)

    async def fingerprints(spoofed_line: bool = False, **overrides: str) -> set[str]:
        async with serve_processes(stack, 1, **overrides) as served:
            http, bases = served.http, served.bases
            for forwarded in ("198.51.100.7", "203.0.113.9"):
                headers = [(k, v) for k, v in c.headers().items()]
                if spoofed_line:
                    # The client's own line first, the proxy's line after it: only the
                    # proxy's last line counts, whatever the client wrote before.
                    headers += [("X-Forwarded-For", forwarded), ("X-Forwarded-For", "192.0.2.1")]
                else:
                    headers.append(("X-Forwarded-For", f"192.0.2.1, {forwarded}"))
                r = await http.get(f"{bases[0]}/v1/caseload", headers=headers)
                assert r.status_code == 200, r.text
        r = await client.get(
            "/v1/audit/events",
            params={"actor_id": str(c.id), "action": "caseload.list"},
            headers=auditor.headers(purpose="audit"),
        )
        items = r.json()["items"][-2:]
        return {e["client_fingerprint"] for e in items}

    # Not trusted: both requests come from 127.0.0.1 and one user agent: one client.
    assert len(await fingerprints()) == 1
    # The peer is a trusted proxy: the address it appended tells the clients apart.
    assert len(await fingerprints(trusted_proxies="127.0.0.1/32")) == 2
    assert len(await fingerprints(spoofed_line=True, trusted_proxies="127.0.0.1/32")) == 1
