"""Hostile values in every field and parameter: refused with a stable code, never echoed.

Each body field of the case record (every leaf of the full fixture, nested objects and
list items included) is replaced in turn by a hostile string, a hostile number and a
hostile object; every object gains a property whose name is hostile; every query
parameter of every route and every path parameter gets the same treatment. The
answer must be a 4xx problem with a stable code, and no part of the hostile value
may appear anywhere in it (body or headers).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Account, World, load_fixture
from vault_service.auth.permissions import Role
from vault_service.errors import BODY_REASONS

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))
MINIMAL = json.loads(load_fixture("minimal_record.json"))

# A NIR-shaped number, quotes of both kinds, backticks, markup and a name: whatever a
# message template could quote.
HOSTILE = 'DUP\'ONT "1850275123456" `Zqhostile` <b>'
HOSTILE_NUMBER = 1850275123456
MARKERS = ("DUP'ONT", "DUP\\u0027ONT", "1850275123456", "Zqhostile", "<b>")
REASONS = set(BODY_REASONS.values())


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))


def _replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(document)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


def _with_hostile_key(document: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(document)
    target = out
    for step in path:
        target = target[step]
    target[HOSTILE] = HOSTILE
    return out


def _mutations(document: dict[str, Any]) -> Iterator[Any]:
    """Every leaf and branch replaced by each hostile value; a hostile key in every
    object; and the body itself as hostile JSON of the wrong shape."""
    for path in _leaves(document):
        if not path:
            continue
        for value in (HOSTILE, HOSTILE_NUMBER, [HOSTILE], {HOSTILE: HOSTILE_NUMBER}):
            if value != document_at(document, path):
                yield _replaced(document, path, value)
    for path in _leaves(document):
        if isinstance(document_at(document, path), dict):
            yield _with_hostile_key(document, path)
    yield [HOSTILE]
    yield HOSTILE


def document_at(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        document = document[step]
    return document


def assert_clean(response: Any, what: str, *, accepted: int | None = None) -> None:
    """A 4xx problem that quotes nothing of the request (or the `accepted` status, when
    the hostile value is valid there: a name may hold quotes; quoting nothing either)."""
    if response.status_code != accepted:
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
        problem = response.json()
        assert problem["code"] and problem["status"] == response.status_code, what
        assert response.headers["content-type"].startswith("application/problem+json"), what
    seen = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for marker in MARKERS:
        assert marker not in seen, (what, marker, response.text)


async def test_every_record_field_refuses_hostile_values_without_echo(client, world: World) -> None:
    c = await world.counsellor()
    rid = (await client.post("/v1/records", json=MINIMAL, headers=c.headers())).json()["id"]
    tried = refused = 0
    for body in _mutations(FULL):
        created = await client.post("/v1/records", json=body, headers=c.headers())
        assert_clean(created, f"POST {str(body)[:80]}", accepted=201)
        refused += created.status_code == 400
        if created.status_code == 400 and isinstance(body, dict):
            # A body refusal says where and why, from a fixed list of reasons.
            reason, _, where = created.json()["detail"].rpartition(" (at ")
            assert reason in REASONS and where.startswith("$"), created.json()["detail"]
        patched = await client.patch(
            f"/v1/records/{rid}", json=body, headers=c.headers(**{"If-Match": '"999"'})
        )  # a stale version: 400 for a bad body, 412 for a good one, nothing written
        assert_clean(patched, f"PATCH {str(body)[:80]}")
        tried += 2
    print(f"hostile record bodies: {tried} requests, {refused} refused creations")
    assert tried > 400  # the fixture is full: every field type is reached
    assert refused > 200, refused
    # Nothing of it was written: the record kept its first version.
    assert (await client.get(f"/v1/records/{rid}", headers=c.headers())).headers["etag"] == '"1"'


async def _actors(world: World) -> dict[Role, Account]:
    structure = await world.structure()
    return {
        Role.COUNSELLOR: await world.account(Role.COUNSELLOR, structure),
        Role.SUPERVISOR: await world.account(Role.SUPERVISOR, structure),
        Role.AUDITOR: await world.account(Role.AUDITOR, None),
    }


# (role, route, its query parameters): every route that reads a query.
QUERIES: list[tuple[Role, str, tuple[str, ...]]] = [
    (
        Role.COUNSELLOR,
        "/v1/records",
        ("birth_name", "first_name", "birth_date", "email", "phone", "ft_id", "cursor", "limit"),
    ),
    (Role.COUNSELLOR, "/v1/caseload", ("cursor", "limit")),
    (Role.SUPERVISOR, "/v1/break-glass/reviews", ("cursor", "limit")),
    (Role.SUPERVISOR, "/v1/transfers", ("direction", "cursor", "limit")),
    (
        Role.AUDITOR,
        "/v1/audit/events",
        ("record_id", "actor_id", "action", "since", "until", "cursor", "limit"),
    ),
    (Role.AUDITOR, "/v1/audit/checkpoint", ("size",)),
    (Role.AUDITOR, "/v1/audit/proofs/inclusion", ("index", "size")),
    (Role.AUDITOR, "/v1/audit/proofs/consistency", ("from", "to")),
    (Role.AUDITOR, "/v1/audit/bundles", ("start", "end", "size")),
    (
        Role.AUDITOR,
        "/v1/audit/reports/breach-impact",
        ("actor_id", "since", "until", "cursor", "limit", "format"),
    ),
    (Role.AUDITOR, "/v1/audit/reports/breach-impact/proofs", ("actor_id", "since", "until")),
    (Role.AUDITOR, f"/v1/audit/reports/subject/{uuid.uuid4()}", ("cursor", "limit")),
    (Role.AUDITOR, "/v1/alerts", ("state", "since", "cursor", "limit")),
]
PURPOSES = {Role.COUNSELLOR: "follow_up", Role.SUPERVISOR: "follow_up", Role.AUDITOR: "audit"}


async def test_every_query_parameter_refuses_hostile_values_without_echo(
    client, world: World
) -> None:
    actors = await _actors(world)
    tried = refused = 0
    for role, route, names in QUERIES:
        headers = actors[role].headers(PURPOSES[role])
        for name in (*names, HOSTILE):
            for value in (HOSTILE, str(HOSTILE_NUMBER) + "'", "Zqhostile" * 40):
                r = await client.get(route, params={name: value}, headers=headers)
                # A valid search for a name nobody has: 200, an empty page.
                assert_clean(r, f"{role} {route}?{name}", accepted=200)
                refused += r.status_code != 200
                tried += 1
        # A repeated parameter is refused too, without its values.
        r = await client.get(
            route, params=[(names[0], HOSTILE), (names[0], HOSTILE)], headers=headers
        )
        assert_clean(r, f"{route} repeated")
    print(f"hostile query parameters: {tried} requests, {refused} refused")
    assert tried > 150 and refused > tried - 10, (tried, refused)


async def test_every_other_body_and_path_refuses_hostile_values_without_echo(
    client, world: World
) -> None:
    actors = await _actors(world)
    c, s = actors[Role.COUNSELLOR], actors[Role.SUPERVISOR]
    rid = (await client.post("/v1/records", json=MINIMAL, headers=c.headers())).json()["id"]
    bodies: list[tuple[Account, str, dict[str, Any]]] = [
        (c, "/v1/records/search/nir", {"nir": "185057800604822"}),
        (c, f"/v1/records/{rid}/transfer", {"to_account": str(s.id), "kind": "temporary"}),
        (
            c,
            f"/v1/records/{rid}/transfer",
            {"to_account": str(s.id), "kind": "temporary", "until": "2030-01-01T00:00:00Z"},
        ),
        (c, f"/v1/records/{rid}/break-glass", {"reason": "emergency"}),
        (s, f"/v1/break-glass/{uuid.uuid4()}/review", {"outcome": "justified"}),
        (s, f"/v1/transfers/{uuid.uuid4()}/accept", {}),
        (s, f"/v1/transfers/{uuid.uuid4()}/decline", {}),
        (s, f"/v1/transfers/{uuid.uuid4()}/cancel", {}),
    ]
    tried = 0
    for actor, route, body in bodies:
        mutations = [*_mutations(body), {HOSTILE: HOSTILE}] if body else [{HOSTILE: 1}, [HOSTILE]]
        for mutated in mutations:
            r = await client.post(route, json=mutated, headers=actor.headers())
            assert_clean(r, f"POST {route} {mutated}")
            tried += 1
    for actor, route in [
        (c, "/v1/records/{}"),
        (c, "/v1/records/{}/transfer"),
        (c, "/v1/records/{}/break-glass"),
        (s, "/v1/break-glass/{}/review"),
        (s, "/v1/transfers/{}/accept"),
        (actors[Role.AUDITOR], "/v1/audit/reports/subject/{}"),
    ]:
        for raw in ("DUP'ONT 1850275123456", "Zqhostile", str(HOSTILE_NUMBER)):
            path = route.format(raw)
            purpose = "audit" if "audit" in route else "follow_up"
            if route.endswith("{}"):
                r = await client.get(path, headers=actor.headers(purpose))
            else:
                r = await client.post(path, json={}, headers=actor.headers(purpose))
            assert_clean(r, path)
            tried += 1
    print(f"hostile other bodies and path ids: {tried} requests")
    assert tried > 50
