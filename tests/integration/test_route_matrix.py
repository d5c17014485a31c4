"""Function-level authorization: every route of the OpenAPI document x every role.

The expected table is written out here, by hand, on purpose: it is the reviewable
statement of who may call what. A new route fails this test until it has a row.
"""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import World
from vault_service.auth.permissions import ROLE_PURPOSES, Role

pytestmark = pytest.mark.integration

C, S, AD, AU, AN = Role.COUNSELLOR, Role.SUPERVISOR, Role.ADMIN, Role.AUDITOR, Role.ANALYST
ALL = {C, S, AD, AU, AN}
EXPECTED: dict[tuple[str, str], set[Role]] = {
    ("POST", "/v1/records"): {C},
    ("GET", "/v1/records"): {C, S},
    ("GET", "/v1/records/{record_id}"): {C, S},
    ("PATCH", "/v1/records/{record_id}"): {C},
    ("POST", "/v1/records/search/nir"): {C},
    ("GET", "/v1/caseload"): {C, S},
    ("POST", "/v1/records/{record_id}/transfer"): {S},
    ("GET", "/v1/transfers"): {S},
    ("POST", "/v1/transfers/{transfer_id}/accept"): {S},
    ("POST", "/v1/transfers/{transfer_id}/decline"): {S},
    ("POST", "/v1/transfers/{transfer_id}/cancel"): {S},
    ("POST", "/v1/records/{record_id}/break-glass"): {C, S},
    ("GET", "/v1/break-glass/reviews"): {S},
    ("POST", "/v1/break-glass/{grant_id}/review"): {S},
    ("GET", "/v1/audit/events"): {AU},
    ("GET", "/v1/audit/checkpoint"): {AU},
    ("GET", "/v1/audit/keys"): {AU},
    ("GET", "/v1/audit/bundles"): {AU},
    ("GET", "/v1/audit/proofs/inclusion"): {AU},
    ("GET", "/v1/audit/proofs/consistency"): {AU},
    ("GET", "/v1/audit/reports/breach-impact"): {AU},
    ("GET", "/v1/audit/reports/breach-impact/proofs"): {AU},
    ("GET", "/v1/audit/reports/subject/{record_id}"): {AU},
    ("GET", "/v1/audit/volume"): {AU},
    ("GET", "/v1/audit/break-glass"): {AU},
    ("GET", "/v1/alerts"): {AU},
    ("POST", "/v1/alerts/{alert_id}/ack"): {AU},
    ("GET", "/v1/stats"): {AN},
}
PUBLIC = {"/health/live", "/health/ready", "/.well-known/jwks.json"}


async def test_every_route_and_role(client, world: World) -> None:
    spec = (await client.get("/schema/openapi.json")).json()
    routes = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "patch", "put", "delete"}
        and path not in PUBLIC
        and not path.startswith("/schema")
    }
    assert routes == set(EXPECTED), "a route without a row in the matrix (or a stale row)"
    sid = await world.structure()
    accounts = {role: await world.account(role, sid if role in (C, S) else None) for role in ALL}
    checked = 0
    for method, path in sorted(routes):
        url = path
        for name in ("{record_id}", "{grant_id}", "{transfer_id}", "{alert_id}"):
            url = url.replace(name, str(uuid.uuid4()))
        for role, account in accounts.items():
            purpose = sorted(ROLE_PURPOSES[role])[0] if ROLE_PURPOSES[role] else "follow_up"
            r = await client.request(
                method,
                url,
                json={} if method != "GET" else None,
                headers=account.headers(purpose=purpose),
            )
            code = (
                r.json().get("code")
                if r.headers.get("content-type", "").startswith("application/problem")
                else None
            )
            refused = r.status_code == 403 and code == "forbidden"
            assert r.status_code != 401, (method, path, role)
            assert refused != (role in EXPECTED[(method, path)]), (
                method,
                path,
                role,
                r.status_code,
                code,
            )
            checked += 1
    assert checked == len(routes) * len(ALL)
