"""The committed OpenAPI document is what the service serves (API.md: checked for drift)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from vault_service.openapi import OPERATIONS

pytestmark = pytest.mark.integration
COMMITTED = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"


async def test_openapi_document_has_not_drifted(client) -> None:
    served = (await client.get("/schema/openapi.json")).json()
    if os.environ.get("VAULT_SERVICE_UPDATE_SNAPSHOT") == "1":
        COMMITTED.write_text(json.dumps(served, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    assert served == json.loads(COMMITTED.read_text(encoding="utf-8")), (
        "schemas/openapi.json is stale: run `make snapshot` and review the diff"
    )


async def test_every_route_declares_a_permission_or_is_public(app) -> None:
    """Deny by default: the guard refuses undeclared routes; this keeps the list honest."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if set(handler.http_methods) == {"OPTIONS"}:
                continue  # Litestar's CORS pre-flight answer: no data, no auth
            opt = handler.opt
            assert opt.get("public") or opt.get("permission"), route.path


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


async def test_every_operation_documents_its_input_and_its_problems(client) -> None:
    """A fuzzer or a front-end team can use the document alone: every operation has its
    parameters, its request body where it takes one, and a problem response for every
    status it can answer with."""
    doc = (await client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert schemas["CaseRecord"]["required"] == ["birth_name", "first_names", "birth_date", "sex"]
    assert set(schemas["CaseRecordPatch"]["properties"]) == set(schemas["CaseRecord"]["properties"])
    # No reference points outside the document (the record schema's $defs moved along).
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    operations = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            operations.add((method, path))
            where = f"{method.upper()} {path}"
            responses = op["responses"]
            assert any(s.startswith("2") for s in responses), where
            problems = {s for s, r in responses.items() if not s.startswith("2")}
            assert "500" in problems, where
            for status in problems - ({"503"} if path == "/health/ready" else set()):
                content = responses[status]["content"]
                assert content == {"application/problem+json": {"schema": PROBLEM_REF}}, where
            params = {(p["in"], p["name"]): p for p in op.get("parameters", [])}
            for name in re.findall(r"{(\w+)}", path):
                assert params[("path", name)]["schema"]["format"] == "uuid", where
                assert {"400", "404"} <= problems, where
            if path.startswith("/v1/"):
                assert {"400", "401", "403", "429", "503"} <= problems, where
                assert params[("header", "X-Purpose")]["required"], where
                assert op["security"] == [{"bearer": []}], where
            if method in ("post", "patch"):
                body = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert body.removeprefix("#/components/schemas/") in schemas, where
                assert "413" in problems, where
            for p in params.values():
                assert p["schema"], where
    assert operations == set(OPERATIONS)  # every route described, nothing stale


async def test_documented_query_parameters_are_exactly_those_accepted(client, world) -> None:
    """Each documented query parameter is one the route reads (never refused as
    unknown), and a name the document does not list is refused: 400."""
    from vault_service.auth.permissions import Role

    doc = (await client.get("/schema/openapi.json")).json()
    structure = await world.structure()
    actors = {
        "counsellor": (await world.account(Role.COUNSELLOR, structure)).headers("follow_up"),
        "supervisor": (await world.account(Role.SUPERVISOR, structure)).headers("follow_up"),
        "auditor": (await world.account(Role.AUDITOR, None)).headers("audit"),
        "analyst": (await world.account(Role.ANALYST, None)).headers("statistics"),
    }
    checked = 0
    for path, item in doc["paths"].items():
        op = item.get("get")
        if op is None or not path.startswith("/v1/"):
            continue
        role = (
            "counsellor"
            if path.startswith(("/v1/records", "/v1/caseload"))
            else "supervisor"
            if path.startswith(("/v1/break-glass", "/v1/transfers"))
            else "analyst"
            if path.startswith("/v1/stats")
            else "auditor"
        )
        url = re.sub(r"{\w+}", "00000000-0000-4000-8000-000000000000", path)
        names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
        unknown = await client.get(url, params={"zz_undocumented": "1"}, headers=actors[role])
        assert unknown.status_code == 400, (path, unknown.status_code)
        for name in names:
            r = await client.get(url, params={name: "?"}, headers=actors[role])
            detail = r.json().get("detail", "") if r.status_code >= 400 else ""
            assert "unknown" not in detail, (path, name, detail)
            checked += 1
    assert checked >= 40, checked
