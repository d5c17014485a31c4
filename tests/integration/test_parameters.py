"""Every numeric and cursor query parameter of every route refuses hostile input with
400 `invalid_parameter`, never a 500 and never a silently different number.

`str.isdigit` alone accepts "²" and other Unicode digits that `int()` refuses or reads
as another number; `int()` alone accepts "+1", " 1" and "1_0"; base64 decoders skip
characters outside their alphabet. Values go into the URL percent-encoded exactly as
written here, and a few raw encodings go in verbatim.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote, urlencode

import pytest

from tests.conftest import Account, World
from vault_service.auth.permissions import Role
from vault_service.paging import encode_index_cursor, encode_uuid_cursor

pytestmark = pytest.mark.integration

HOSTILE_INTS = [
    "²",  # superscript two: isdigit() says yes, int() says no
    "١",  # Arabic-Indic one: int() reads it as 1
    "１",  # fullwidth one
    "+1",
    "-1",
    " 1",
    "1 ",
    "1e3",
    "1.0",
    "0x10",
    "1_0",
    "",
    "NaN",
    "1\x00",
    "9" * 25,
    "9" * 5000,  # int() refuses this many digits outright
]
# Verbatim in the URL: these never pass through a client-side encoder.
RAW_INTS = ["%C2%B2", "%EF%BC%91", "+1", "%2B1", "1%20", "%00"]

_uuid_cursor = encode_uuid_cursor(uuid.UUID("0123456789abcdef0123456789abcdef"))
_index_cursor = encode_index_cursor(5)
HOSTILE_UUID_CURSORS = [
    "",
    "²",
    "!!",
    "%%%",
    "A" * 21 + "B",  # decodes, but not the canonical spelling of any id
    _uuid_cursor + "==",
    _uuid_cursor + "A",
    " " + _uuid_cursor,
    _uuid_cursor[:-1] + "!",
    "A" * 300,
    _index_cursor,  # the other kind
]
HOSTILE_INDEX_CURSORS = [
    "",
    "²",
    "!!",
    "%%%",
    "A" * 10 + "B",
    _index_cursor + "=",
    _index_cursor + "A",
    " " + _index_cursor,
    encode_index_cursor(2**64 - 1),  # no bigint holds it
    "A" * 300,
    _uuid_cursor,
]
RAW_CURSORS = ["%C2%B2", "%00", "+", "%2B"]

SINCE = "2020-01-01T00:00:00Z"
UNTIL = "2100-01-01T00:00:00Z"
_someone = str(uuid.UUID("00000000-0000-4000-8000-000000000001"))

# (role, purpose, path, other parameters, parameter, kind)
CASES = [
    ("c", "/v1/caseload", {}, "limit", "int"),
    ("c", "/v1/caseload", {}, "cursor", "uuid"),
    ("c", "/v1/records", {"birth_name": "x"}, "limit", "int"),
    ("c", "/v1/records", {"birth_name": "x"}, "cursor", "uuid"),
    ("s", "/v1/break-glass/reviews", {}, "limit", "int"),
    ("s", "/v1/break-glass/reviews", {}, "cursor", "uuid"),
    ("a", "/v1/audit/events", {}, "limit", "int"),
    ("a", "/v1/audit/events", {}, "cursor", "index"),
    ("a", "/v1/audit/checkpoint", {}, "size", "int"),
    ("a", "/v1/audit/proofs/inclusion", {}, "index", "int"),
    ("a", "/v1/audit/proofs/inclusion", {"index": "0"}, "size", "int"),
    ("a", "/v1/audit/proofs/consistency", {}, "from", "int"),
    ("a", "/v1/audit/proofs/consistency", {"from": "1"}, "to", "int"),
    ("a", "/v1/audit/bundles", {}, "start", "int"),
    ("a", "/v1/audit/bundles", {"start": "0"}, "end", "int"),
    ("a", "/v1/audit/bundles", {"start": "0"}, "size", "int"),
    (
        "a",
        "/v1/audit/reports/breach-impact",
        {"actor_id": _someone, "since": SINCE, "until": UNTIL},
        "limit",
        "int",
    ),
    (
        "a",
        "/v1/audit/reports/breach-impact",
        {"actor_id": _someone, "since": SINCE, "until": UNTIL},
        "cursor",
        "uuid",
    ),
    ("a", f"/v1/audit/reports/subject/{_someone}", {}, "limit", "int"),
    ("a", f"/v1/audit/reports/subject/{_someone}", {}, "cursor", "index"),
]


async def _caller(world: World, who: str) -> tuple[Account, dict[str, str]]:
    if who == "a":
        account = await world.account(Role.AUDITOR, None)
        return account, account.headers(purpose="audit", **{"X-Purpose-Detail": "tests"})
    structure = await world.structure()
    if who == "s":
        account = await world.account(Role.SUPERVISOR, structure)
        return account, account.headers(purpose="supervision")
    account = await world.counsellor(structure)
    return account, account.headers()


def _hostile(kind: str) -> tuple[list[str], list[str]]:
    if kind == "int":
        return HOSTILE_INTS, RAW_INTS
    return (HOSTILE_UUID_CURSORS if kind == "uuid" else HOSTILE_INDEX_CURSORS), RAW_CURSORS


@pytest.mark.parametrize(
    ("who", "path", "others", "name", "kind"),
    CASES,
    ids=[f"{path}?{name}" for _, path, _, name, _ in CASES],
)
async def test_hostile_values_answer_400(client, world: World, who, path, others, name, kind):
    _, headers = await _caller(world, who)
    encoded, raw = _hostile(kind)
    queries = [urlencode({**others, name: value}, quote_via=quote) for value in encoded]
    prefix = urlencode(others, quote_via=quote)
    queries += [f"{prefix}&{name}={value}" if prefix else f"{name}={value}" for value in raw]
    for query in queries:
        r = await client.get(f"{path}?{query}", headers=headers)
        assert (r.status_code, r.json().get("code")) == (400, "invalid_parameter"), query
        # Errors never echo what was sent.
        assert "²" not in r.text and "9" * 25 not in r.text


async def test_the_reported_limit_is_refused(client, world: World) -> None:
    c = await world.counsellor()
    r = await client.get("/v1/caseload?limit=%C2%B2", headers=c.headers())
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_parameter"


@pytest.mark.parametrize(
    ("who", "path", "query"),
    [
        ("c", "/v1/caseload", f"limit=5&cursor={_uuid_cursor}"),
        ("c", "/v1/records", f"birth_name=x&limit=1000&cursor={_uuid_cursor}"),
        ("s", "/v1/break-glass/reviews", f"limit=1&cursor={_uuid_cursor}"),
        ("a", "/v1/audit/events", f"limit=007&cursor={_index_cursor}"),
        ("a", f"/v1/audit/reports/subject/{_someone}", f"limit=1&cursor={_index_cursor}"),
        (
            "a",
            "/v1/audit/reports/breach-impact",
            f"actor_id={_someone}&since={quote(SINCE)}&until={quote(UNTIL)}"
            f"&limit=3&cursor={_uuid_cursor}",
        ),
    ],
)
async def test_well_formed_values_still_pass(client, world: World, who, path, query) -> None:
    """The control: the same routes and headers answer 200 to plain values."""
    _, headers = await _caller(world, who)
    r = await client.get(f"{path}?{query}", headers=headers)
    assert r.status_code == 200, r.text


async def test_limits_out_of_range_are_refused(client, world: World) -> None:
    c = await world.counsellor()
    for value in ("0", "1001", "00000000000000000001001"):
        r = await client.get(f"/v1/caseload?limit={value}", headers=c.headers())
        assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter"), value
