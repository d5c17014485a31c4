"""Records API end to end: real PostgreSQL, real OpenBao, real tokens."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import World, load_fixture
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))
MINIMAL = json.loads(load_fixture("minimal_record.json"))


async def _create(client, account, body: dict, **headers: str) -> str:
    r = await client.post("/v1/records", json=body, headers=account.headers(**headers))
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _count(world: World, table: str) -> int:
    return await world.owner.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608


async def test_full_record_round_trips_every_field(client, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, FULL)
    r = await client.get(f"/v1/records/{rid}", headers=c.headers())
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["etag"] == '"1"'
    doc = r.json()
    assert doc["view"] == "full"
    assert doc["record"] == FULL
    assert doc["referent_id"] == str(c.id)


async def test_minimal_record_round_trips(client, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, MINIMAL)
    r = await client.get(f"/v1/records/{rid}", headers=c.headers())
    assert r.json()["record"] == MINIMAL


@pytest.mark.parametrize(
    ("param", "stored", "query"),
    [
        ("birth_name", {"birth_name": "Lefèvre"}, "LEFEVRE"),
        ("birth_name", {"birth_name": "Le Fèvre-Dupont"}, "lefevredupont"),
        ("usage_name", {"usage_name": "N'Guyen"}, "nguyen"),
        ("first_name", {"first_names": ["Zoé", "Marie-Anne"]}, "marie anne"),
        ("first_name", {"first_names": ["Zoé", "Marie-Anne"]}, "ZOE"),
        ("birth_date", {"birth_date": "2004-03-14"}, "2004-03-14"),
        ("email", {"email": "Zoe.Lefevre@Example.org"}, "zoe.lefevre@example.org"),
        ("phone", {"phone": "06 39 98 12 34"}, "+33639981234"),
        ("phone", {"phone": "+33 6 39 98 12 34"}, "0639981234"),
        ("phone", {"phone": "0033639981234"}, "06.39.98.12.34"),
        ("ft_id", {"ft_id": "7654321B"}, "7654321b"),
    ],
)
async def test_search_by_each_index_normalises(client, world: World, param, stored, query) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, {**MINIMAL, **stored})
    other = await _create(
        client,
        c,
        {**MINIMAL, "birth_name": "Autre", "first_names": ["Paul"], "birth_date": "2001-01-01"},
    )
    r = await client.get("/v1/records", params={param: query}, headers=c.headers())
    assert r.status_code == 200, r.text
    ids = [item["id"] for item in r.json()["items"]]
    assert rid in ids
    assert other not in ids


async def test_search_combines_criteria_and_masks(client, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, {**MINIMAL, "birth_name": "Dubois", "birth_date": "2005-05-05"})
    await _create(client, c, {**MINIMAL, "birth_name": "Dubois", "birth_date": "2006-06-06"})
    r = await client.get(
        "/v1/records",
        params={"birth_name": "dubois", "birth_date": "2005-05-05"},
        headers=c.headers(),
    )
    items = r.json()["items"]
    assert [i["id"] for i in items] == [rid]
    assert items[0]["birth_name"] == "D."
    assert items[0]["birth_date_year"] == 2005
    assert "birth_date" not in items[0]


async def test_nir_search_only_by_body(client, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, {**MINIMAL, "nir": FULL["nir"]})
    r = await client.post("/v1/records/search/nir", json={"nir": FULL["nir"]}, headers=c.headers())
    assert r.status_code == 200
    assert [i["id"] for i in r.json()["items"]] == [rid]
    r = await client.get("/v1/records", params={"nir": FULL["nir"]}, headers=c.headers())
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_parameter"
    r = await client.post("/v1/records/search/nir", json={"nir": "123"}, headers=c.headers())
    assert r.json()["code"] == "invalid_search_value"


async def test_search_paging_with_cursor(client, world: World) -> None:
    c = await world.counsellor()
    ids = {await _create(client, c, {**MINIMAL, "birth_name": "Pagination"}) for _ in range(5)}
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"birth_name": "pagination", "limit": "2"}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get("/v1/records", params=params, headers=c.headers())).json()
        assert len(body["items"]) <= 2
        seen += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)


async def test_caseload_lists_own_youth_only(client, world: World) -> None:
    sid = await world.structure()
    a = await world.counsellor(sid)
    b = await world.counsellor(sid)
    mine = {await _create(client, a, MINIMAL) for _ in range(3)}
    await _create(client, b, MINIMAL)
    r = await client.get("/v1/caseload", headers=a.headers())
    assert {i["id"] for i in r.json()["items"]} == mine
    assert all(
        set(i)
        <= {
            "id",
            "referent_id",
            "birth_name",
            "usage_name",
            "first_names",
            "birth_date_year",
            "programme_kind",
            "pathway_status",
        }
        for i in r.json()["items"]
    )


async def test_patch_with_if_match(client, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, {**MINIMAL, "email": "old@example.org"})
    url = f"/v1/records/{rid}"
    r = await client.patch(url, json={"email": "new@example.org"}, headers=c.headers())
    assert r.status_code == 428
    assert r.json()["code"] == "precondition_required"
    r = await client.patch(
        url,
        json={"email": "new@example.org", "usage_name": "Durand"},
        headers=c.headers(**{"If-Match": '"1"'}),
    )
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"2"'
    assert r.json()["record"]["email"] == "new@example.org"
    # A stale tag never overwrites.
    r = await client.patch(
        url, json={"email": "lost@example.org"}, headers=c.headers(**{"If-Match": '"1"'})
    )
    assert r.status_code == 412
    assert r.json()["code"] == "precondition_failed"
    # null removes an optional property, and its index with it.
    r = await client.patch(url, json={"email": None}, headers=c.headers(**{"If-Match": '"2"'}))
    assert r.status_code == 200
    assert "email" not in r.json()["record"]
    found = await client.get(
        "/v1/records", params={"email": "new@example.org"}, headers=c.headers()
    )
    assert found.json()["items"] == []
    by_name = await client.get("/v1/records", params={"usage_name": "durand"}, headers=c.headers())
    assert [i["id"] for i in by_name.json()["items"]] == [rid]
    # A required property cannot be removed.
    r = await client.patch(url, json={"birth_name": None}, headers=c.headers(**{"If-Match": '"3"'}))
    assert r.status_code == 400


async def test_idempotent_create(client, world: World) -> None:
    c = await world.counsellor()
    key = str(uuid.uuid4())
    before = await _count(world, "records")
    first = await client.post(
        "/v1/records", json=MINIMAL, headers=c.headers(**{"Idempotency-Key": key})
    )
    again = await client.post(
        "/v1/records", json=MINIMAL, headers=c.headers(**{"Idempotency-Key": key})
    )
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert await _count(world, "records") == before + 1
    other = await client.post(
        "/v1/records",
        json={**MINIMAL, "birth_name": "Autre"},
        headers=c.headers(**{"Idempotency-Key": key}),
    )
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert await _count(world, "records") == before + 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            b'{"birth_name": "A", "first_names": ["B"], "birth_date": "2004-01-01", "sex": "F", "x": 1}',
            400,
            "invalid_body",
        ),
        (
            b'{"birth_name": 12, "first_names": ["B"], "birth_date": "2004-01-01", "sex": "F"}',
            400,
            "invalid_body",
        ),
        (
            b'{"birth_name": "A", "first_names": ["B"], "birth_date": "2004-02-30", "sex": "F"}',
            400,
            "invalid_body",
        ),
        (
            b'{"birth_name": "A", "first_names": [], "birth_date": "2004-01-01", "sex": "F"}',
            400,
            "invalid_body",
        ),
        (b'{"first_names": ["B"], "birth_date": "2004-01-01", "sex": "F"}', 400, "invalid_body"),
        (
            b'{"birth_name": "'
            + b"A" * 101
            + b'", "first_names": ["B"], "birth_date": "2004-01-01", "sex": "F"}',
            400,
            "invalid_body",
        ),
        (
            b'{"birth_name": "A", "first_names": ["B"], "birth_date": "2004-01-01", "sex": "F", "nir": "104037511112394"}',
            400,
            "invalid_body",
        ),
        (b"not json", 400, "invalid_body"),
        (b"[]", 400, "invalid_body"),
        (
            b'{"birth_name": "A", "first_names": ["B"], "birth_date": "2004-01-01", "sex": "F", "notes": [{"text": "'
            + b"x" * 300_000
            + b'"}]}',
            413,
            "payload_too_large",
        ),
    ],
)
async def test_bad_input_is_refused_and_writes_nothing(
    client, world: World, body, status, code
) -> None:
    c = await world.counsellor()
    before = await _count(world, "records"), await _count(world, "record_index")
    r = await client.post(
        "/v1/records", content=body, headers=c.headers(**{"Content-Type": "application/json"})
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["code"] == code
    assert set(problem) == {"type", "title", "status", "code", "detail", "request_id"}
    assert (await _count(world, "records"), await _count(world, "record_index")) == before


async def test_malformed_ids_and_params(client, world: World) -> None:
    c = await world.counsellor()
    for path in ("/v1/records/not-a-uuid", "/v1/records/123", "/v1/records/%00"):
        r = await client.get(path, headers=c.headers())
        assert r.status_code in (400, 404), path
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.get("/v1/records", params={"shoe_size": "42"}, headers=c.headers())
    assert r.json()["code"] == "invalid_parameter"
    r = await client.get(
        "/v1/records", params={"birth_name": "x", "cursor": "!!"}, headers=c.headers()
    )
    assert r.json()["code"] == "invalid_parameter"
    r = await client.get("/v1/caseload", params={"limit": "-1"}, headers=c.headers())
    assert r.status_code == 400


async def test_object_access_is_scoped(client, world: World) -> None:
    sid = await world.structure()
    owner_c = await world.counsellor(sid)
    colleague = await world.counsellor(sid)
    stranger = await world.counsellor()
    supervisor = await world.account(Role.SUPERVISOR, sid)
    foreign_supervisor = await world.account(Role.SUPERVISOR, await world.structure())
    rid = await _create(client, owner_c, FULL)
    url = f"/v1/records/{rid}"
    missing = f"/v1/records/{uuid.uuid4()}"
    for who in (colleague, stranger, foreign_supervisor):
        r = await client.get(url, headers=who.headers())
        assert r.status_code == 404
        assert r.json()["code"] == "not_found"
        # Exactly as a record that does not exist: no existence oracle.
        ghost = await client.get(missing, headers=who.headers())
        assert (ghost.status_code, ghost.json()["code"]) == (404, "not_found")
    for who in (colleague, stranger):
        r = await client.patch(
            url, json={"email": "x@example.org"}, headers=who.headers(**{"If-Match": '"1"'})
        )
        assert r.status_code == 404
    r = await client.get(url, headers=supervisor.headers())
    assert r.status_code == 200
    masked = r.json()
    assert masked["view"] == "masked"
    assert masked["record"]["birth_name"] == "L."
    assert "nir" not in masked["record"] and "email" not in masked["record"]
    # Supervisors read masked views; they do not write records.
    r = await client.patch(
        url, json={"email": "x@example.org"}, headers=supervisor.headers(**{"If-Match": '"1"'})
    )
    assert r.status_code == 403


async def test_purpose_header(client, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, MINIMAL)
    r = await client.get(f"/v1/records/{rid}", headers=c.headers(purpose=None))
    assert (r.status_code, r.json()["code"]) == (400, "purpose_required")
    r = await client.get(f"/v1/records/{rid}", headers=c.headers(purpose="curiosity"))
    assert (r.status_code, r.json()["code"]) == (400, "purpose_required")
    r = await client.get(f"/v1/records/{rid}", headers=c.headers(purpose="legal_request"))
    assert (r.status_code, r.json()["code"]) == (403, "purpose_not_allowed")
    r = await client.get(
        f"/v1/records/{rid}", headers=c.headers(**{"X-Purpose-Detail": "rdv du 12/03"})
    )
    assert r.status_code == 200


async def test_roles_without_case_access_are_refused(client, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, MINIMAL)
    for role in (Role.ADMIN, Role.AUDITOR, Role.ANALYST):
        who = await world.account(role, None)
        r = await client.get(f"/v1/records/{rid}", headers=who.headers(purpose="audit"))
        assert (r.status_code, r.json()["code"]) == (403, "forbidden"), role


async def test_public_routes(client) -> None:
    assert (await client.get("/health/live")).status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "vault": True, "access_log": True}
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert jwks["keys"] and all(k["kty"] == "OKP" and k["alg"] == "EdDSA" for k in jwks["keys"])
    assert (await client.get("/schema/openapi.json")).status_code == 200
