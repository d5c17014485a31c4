"""The committed OpenAPI document is what the service serves (API.md: checked for drift)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
