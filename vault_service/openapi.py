"""The OpenAPI document, complete: what Litestar derives from the routes, plus what it
cannot see because the handlers parse their own input (strictly, so that nothing of a
refused value is echoed): query parameters with their constraints, request bodies
(the case record's from its JSON Schema, the others' from their msgspec Structs),
success bodies, and every problem response (RFC 9457, errors.py) by status.

The routes stay the source of the parameter lists where they keep one (the audit
routes' allowed sets); `complete` refuses to document a route it has no entry for,
so a new route cannot ship half-described (tests/integration/test_openapi.py).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from litestar import Request
from litestar.openapi.plugins import JsonRenderPlugin

from vault_service.auditor.routes import AckRequest
from vault_service.auth.permissions import Purpose
from vault_service.errors import ConfigurationError
from vault_service.records import schema as record_schema
from vault_service.records.custody import BreakGlassRequest, ReviewRequest, TransferRequest
from vault_service.records.routes import NirQuery, NoBody
from vault_service.stats.routes import StatsDocument
from vault_service.stats.service import DIMENSIONS, MAX_DIMENSIONS

PROBLEM_MEDIA: Final = "application/problem+json"
_REF: Final = "#/components/schemas/{name}"
_UUID_CURSOR: Final = {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"}
_INDEX_CURSOR: Final = {"type": "string", "pattern": "^[A-Za-z0-9_-]{11}$"}
_UUID: Final = {"type": "string", "format": "uuid"}
_UINT: Final = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_TIME: Final = {"type": "string", "format": "date-time"}
_TEXT: Final = {"type": "string"}

# What each status means here; the `code` of the body says which case it is.
_STATUS_TEXT: Final = {
    400: "Malformed request: invalid_parameter, invalid_body, purpose_required, ...",
    401: "No valid bearer token (the code names the reason: token_expired, ...)",
    403: "The role, scope or purpose does not allow this (forbidden, purpose_not_allowed, ...)",
    404: "No such resource, or not one the caller may see (not_found)",
    409: "Conflicts with the current state (conflict, stats_not_sealed)",
    412: "The record changed since it was read (precondition_failed)",
    413: "The request body is too large (payload_too_large)",
    422: "Well formed but not acceptable (idempotency_key_reused, invalid_transfer_target, "
    "stats_unprotectable)",
    428: "If-Match is required (precondition_required)",
    429: "A budget or limit is spent: Retry-After says when to come back",
    500: "Internal error, or a stored value failed its integrity check",
    503: "PostgreSQL, Vault or the access log is unavailable (database_unavailable, "
    "kms_unavailable, audit_unavailable)",
}
_PROBLEM_SCHEMA: Final = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable, nothing echoes a value.",
    "required": ["type", "title", "status", "code", "detail", "request_id"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
    },
}
_PAGE: Final = {
    "type": "object",
    "required": ["items", "next_cursor"],
    "properties": {
        "items": {"type": "array", "items": {"type": "object"}},
        "next_cursor": {"type": ["string", "null"]},
    },
}
_OBJECT: Final = {"type": "object"}


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    required: bool = False
    where: str = "query"
    description: str = ""


@dataclass(frozen=True)
class Operation:
    """What one operation takes and answers beyond what Litestar derives."""

    params: tuple[Param, ...] = ()
    body: str | None = None  # a component name
    body_required: bool = True
    success: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    errors: frozenset[int] = frozenset()
    public: bool = False
    # OpenAPI links from a success status: name -> (method, path, parameters), so that
    # a client (and schemathesis's stateful mode) can chain create, read, update.
    links: dict[int, dict[str, tuple[str, str, dict[str, str]]]] = field(default_factory=dict)


def _limit(maximum: int) -> Param:
    return Param("limit", {"type": "integer", "minimum": 1, "maximum": maximum}, False)


_ORDER = Param(
    "order",
    {"type": "string", "enum": ["oldest", "newest"]},
    False,
    description="oldest first (the default) or newest first; repeat it with `cursor`, "
    "which continues the order it was given in",
)
_PURPOSE = Param(
    "X-Purpose",
    {"type": "string", "enum": sorted(p.value for p in Purpose)},
    True,
    "header",
    "Why the data is accessed; logged with the access (which purposes a role may "
    "state: 403 purpose_not_allowed otherwise)",
)
_PURPOSE_DETAIL = Param(
    "X-Purpose-Detail",
    {"type": "string", "maxLength": 120},
    False,
    "header",
    "A short reference, never personal data (refused when it looks like some)",
)
_IF_MATCH = Param("If-Match", {"type": "string"}, False, "header", "The record's ETag (required)")
_IDEMPOTENCY = Param(
    "Idempotency-Key", {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{8,128}$"}, False, "header"
)
# The search criteria are the schema's blind indexes, less the NIR's (its own route).
_SEARCH = tuple(
    Param(plan.index.name, {"type": "string", "minLength": 1, "maxLength": 320})
    for plan in record_schema.load().fields.values()
    if plan.index is not None and not plan.index.restricted
)
_AUTHED: Final = frozenset({400, 401, 403, 429, 500, 503})
_BODY: Final = frozenset({413, 409, 422})
_JSON = "application/json"
_RECORD = "/v1/records/{record_id}"

OPERATIONS: Final[dict[tuple[str, str], Operation]] = {
    ("get", "/health/live"): Operation(success={200: {_JSON: _OBJECT}}, public=True),
    ("get", "/health/ready"): Operation(
        success={200: {_JSON: _OBJECT}, 503: {_JSON: _OBJECT}}, public=True
    ),
    ("get", "/.well-known/jwks.json"): Operation(success={200: {_JSON: _OBJECT}}, public=True),
    ("get", "/schema/openapi.json"): Operation(
        success={200: {"application/vnd.oai.openapi+json": _OBJECT}}, public=True
    ),
    ("post", "/v1/records"): Operation(
        params=(_IDEMPOTENCY,),
        body="CaseRecord",
        success={
            201: {
                _JSON: {
                    "type": "object",
                    "required": ["id"],
                    "additionalProperties": False,
                    "properties": {"id": _UUID},
                }
            }
        },
        errors=_BODY,
        links={
            201: {
                "ReadRecord": ("get", _RECORD, {"record_id": "$response.body#/id"}),
                # A new record is version 1: its ETag is "1".
                "UpdateRecord": (
                    "patch",
                    _RECORD,
                    {"record_id": "$response.body#/id", "header.If-Match": '"1"'},
                ),
                "TransferRecord": (
                    "post",
                    _RECORD + "/transfer",
                    {"record_id": "$response.body#/id"},
                ),
                "BreakGlass": (
                    "post",
                    _RECORD + "/break-glass",
                    {"record_id": "$response.body#/id"},
                ),
                "SubjectReport": (
                    "get",
                    "/v1/audit/reports/subject/{record_id}",
                    {"record_id": "$response.body#/id"},
                ),
            }
        },
    ),
    ("get", "/v1/records"): Operation(
        params=(*_SEARCH, Param("cursor", _UUID_CURSOR), _limit(1000)),
        success={200: {_JSON: _PAGE}},
    ),
    ("post", "/v1/records/search/nir"): Operation(
        body="NirQuery", success={200: {_JSON: _PAGE}}, errors=frozenset({413})
    ),
    ("get", _RECORD): Operation(
        success={200: {_JSON: _OBJECT}},
        links={
            200: {
                "UpdateRecord": (
                    "patch",
                    _RECORD,
                    {
                        "record_id": "$request.path.record_id",
                        "header.If-Match": "$response.header.ETag",
                    },
                )
            }
        },
    ),
    ("patch", _RECORD): Operation(
        params=(_IF_MATCH,),
        body="CaseRecordPatch",
        success={200: {_JSON: _OBJECT}},
        errors=_BODY | {412, 428},
        links={200: {"ReadRecord": ("get", _RECORD, {"record_id": "$request.path.record_id"})}},
    ),
    ("post", "/v1/records/{record_id}/transfer"): Operation(
        body="TransferRequest",
        success={200: {_JSON: _OBJECT}, 202: {_JSON: _OBJECT}},
        errors=_BODY,
    ),
    ("post", "/v1/records/{record_id}/break-glass"): Operation(
        body="BreakGlassRequest", success={201: {_JSON: _OBJECT}}, errors=_BODY
    ),
    ("get", "/v1/caseload"): Operation(
        params=(Param("cursor", _UUID_CURSOR), _limit(1000)), success={200: {_JSON: _PAGE}}
    ),
    ("get", "/v1/break-glass/reviews"): Operation(
        params=(Param("cursor", _UUID_CURSOR), _limit(1000)), success={200: {_JSON: _PAGE}}
    ),
    ("post", "/v1/break-glass/{grant_id}/review"): Operation(
        body="ReviewRequest", success={204: {}}, errors=_BODY
    ),
    ("get", "/v1/transfers"): Operation(
        params=(
            Param("direction", {"type": "string", "enum": ["incoming", "outgoing"]}, True),
            Param("cursor", _UUID_CURSOR),
            _limit(1000),
        ),
        success={200: {_JSON: _PAGE}},
    ),
    **{
        ("post", f"/v1/transfers/{{transfer_id}}/{answer}"): Operation(
            body="NoBody", body_required=False, success={200: {_JSON: _OBJECT}}, errors=_BODY
        )
        for answer in ("accept", "decline", "cancel")
    },
    ("get", "/v1/audit/events"): Operation(
        params=(
            Param("record_id", _UUID),
            Param("actor_id", _UUID),
            Param(
                "structure_id",
                _UUID,
                description="Entries made by accounts of this structure (the entry's "
                "`structure_id`, as `GET /v1/audit/volume?by=structure` groups them); "
                "needs since and until, at most 7 days apart",
            ),
            Param(
                "action",
                {
                    "type": "string",
                    "pattern": r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}$",
                },
            ),
            Param("since", _TIME),
            Param("until", _TIME),
            Param("cursor", _INDEX_CURSOR),
            _limit(1000),
        ),
        success={200: {_JSON: _PAGE}},
    ),
    ("get", "/v1/audit/checkpoint"): Operation(
        params=(Param("size", _UINT),),
        success={200: {"text/plain": {"type": "string"}}},
        errors=frozenset({404}),
    ),
    ("get", "/v1/audit/keys"): Operation(success={200: {_JSON: _OBJECT}}),
    ("get", "/v1/audit/proofs/inclusion"): Operation(
        params=(Param("index", _UINT, True), Param("size", _UINT)),
        success={200: {_JSON: _OBJECT}},
        errors=frozenset({404}),
    ),
    ("get", "/v1/audit/proofs/consistency"): Operation(
        params=(Param("from", _UINT, True), Param("to", _UINT)),
        success={200: {_JSON: _OBJECT}},
        errors=frozenset({404}),
    ),
    ("get", "/v1/audit/bundles"): Operation(
        params=(Param("start", _UINT, True), Param("end", _UINT), Param("size", _UINT)),
        success={200: {_JSON: _OBJECT}},
        errors=frozenset({404}),
    ),
    ("get", "/v1/audit/reports/breach-impact"): Operation(
        params=(
            Param("actor_id", _UUID, True),
            Param("since", _TIME, True),
            Param("until", _TIME, True),
            Param("cursor", _UUID_CURSOR),
            _limit(10_000),
            Param("format", {"type": "string", "enum": ["json", "csv"]}),
        ),
        success={200: {_JSON: _OBJECT, "text/csv": {"type": "string"}}},
    ),
    ("get", "/v1/audit/reports/breach-impact/proofs"): Operation(
        params=(
            Param("actor_id", _UUID, True),
            Param("since", _TIME, True),
            Param("until", _TIME, True),
        ),
        success={200: {_JSON: _OBJECT}},
    ),
    ("get", "/v1/audit/reports/subject/{record_id}"): Operation(
        params=(Param("cursor", _INDEX_CURSOR), _limit(1000)),
        success={200: {_JSON: _OBJECT}},
    ),
    ("get", "/v1/audit/volume"): Operation(
        params=(
            Param("by", {"type": "string", "enum": ["actor", "structure"]}),
            Param("since", _TIME, True),
            Param("until", _TIME, True, description="At most 93 days after since"),
        ),
        success={200: {_JSON: _OBJECT}},
    ),
    ("get", "/v1/audit/break-glass"): Operation(
        params=(
            Param("state", {"type": "string", "enum": ["pending", "reviewed"]}),
            _ORDER,
            Param("cursor", _UUID_CURSOR),
            _limit(500),
        ),
        success={200: {_JSON: _PAGE}},
    ),
    ("post", "/v1/alerts/{alert_id}/ack"): Operation(
        body="AckRequest", success={204: {}}, errors=frozenset({404, 413})
    ),
    ("get", "/v1/stats"): Operation(
        params=(
            Param(
                "group_by",
                {
                    "type": "string",
                    "pattern": "^({d})(,({d})){{0,{n}}}$".format(
                        d="|".join(DIMENSIONS), n=MAX_DIMENSIONS - 1
                    ),
                },
                True,
                description="Comma-separated, distinct, at most "
                f"{MAX_DIMENSIONS} of: {', '.join(DIMENSIONS)} (structure brings its region)",
            ),
            Param(
                "since",
                {"type": "string", "pattern": r"^\d{4}-01$"},
                description="January of a closed year (the period is one calendar year; "
                "default: the last closed year)",
            ),
            Param(
                "until",
                {"type": "string", "pattern": r"^\d{4}-12$"},
                description="December of the same year",
            ),
            Param("format", {"type": "string", "enum": ["json", "csv"]}),
        ),
        success={200: {_JSON: {"$ref": _REF.format(name="StatsDocument")}, "text/csv": _TEXT}},
        errors=frozenset({409, 422}),
    ),
    ("get", "/v1/alerts"): Operation(
        params=(
            Param("state", {"type": "string", "enum": ["open", "acknowledged"]}),
            Param("since", _TIME),
            _ORDER,
            Param("cursor", _UUID_CURSOR),
            _limit(500),
        ),
        success={200: {_JSON: _PAGE}},
    ),
}
# The documentation's own browsing routes (`/schema`, `/schema/{path}`): not API.
_UNDOCUMENTED: Final = frozenset({"/schema", "/schema/{path}"})


def _record_components() -> dict[str, Any]:
    """The case record's JSON Schema as components: its `$defs` become components of
    their own (a local `$ref` would otherwise point into the OpenAPI document)."""
    raw = copy.deepcopy(dict(record_schema.load().raw))
    defs = raw.pop("$defs", {})
    prefix = "CaseRecord"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items() if k not in ("$schema", "$id")}
            ref = out.get("$ref")
            if isinstance(ref, str):
                if not ref.startswith("#/$defs/"):
                    raise ConfigurationError("the case-record schema has a non-local $ref")
                out["$ref"] = _REF.format(name=prefix + ref.removeprefix("#/$defs/"))
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    record = rewrite(raw)
    components = {prefix + name: rewrite(value) for name, value in defs.items()}
    components[prefix] = record
    # A patch names only what changes: the same properties, none required, at least one.
    patch = {k: v for k, v in record.items() if k != "required"}
    patch["minProperties"] = 1
    patch["description"] = "Top-level properties to replace; absent ones stay as they are."
    components[prefix + "Patch"] = patch
    return components


def _struct_components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            NirQuery,
            NoBody,
            TransferRequest,
            BreakGlassRequest,
            ReviewRequest,
            AckRequest,
            StatsDocument,
        ],
        ref_template=_REF,
    )
    return components


def _parameter(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "schema": param.schema,
    }
    if param.description:
        out["description"] = param.description
    return out


def _problem_response(status: int) -> dict[str, Any]:
    return {
        "description": _STATUS_TEXT[status],
        "content": {PROBLEM_MEDIA: {"schema": {"$ref": _REF.format(name="Problem")}}},
    }


def complete(generated: dict[str, Any]) -> dict[str, Any]:
    """Litestar's document with every operation's input and answers filled in."""
    doc = copy.deepcopy(generated)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = _PROBLEM_SCHEMA
    schemas.update(_record_components())
    schemas.update(_struct_components())
    for path in _UNDOCUMENTED:
        doc["paths"].pop(path, None)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            spec = OPERATIONS.get((method, path))
            if spec is None:
                raise ConfigurationError(f"{method.upper()} {path} is not described in openapi.py")
            _complete_operation(path, operation, spec)
    _link(doc)
    return doc


def _link(doc: dict[str, Any]) -> None:
    """OpenAPI links, by operationId (Litestar names them: looked up, never hard-coded)."""
    ids = {
        (method, path): op["operationId"]
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    for (method, path), spec in OPERATIONS.items():
        for status, links in spec.links.items():
            response = doc["paths"][path][method]["responses"][str(status)]
            response["links"] = {
                name: {"operationId": ids[target[:2]], "parameters": target[2]}
                for name, target in links.items()
            }


def _complete_operation(path: str, operation: dict[str, Any], spec: Operation) -> None:
    params = [p for p in operation.get("parameters", []) if p["in"] == "path"]
    for p in params:
        # Ids are canonical UUIDs (anything else: 400, never echoed).
        p["schema"] = _UUID
    extra = list(spec.params)
    if not spec.public:
        if path.startswith("/v1/"):
            extra += [_PURPOSE, _PURPOSE_DETAIL]
        operation["security"] = [{"bearer": []}]
    operation["parameters"] = params + [_parameter(p) for p in extra]
    if not operation["parameters"]:
        del operation["parameters"]
    if spec.body is not None:
        operation["requestBody"] = {
            "required": spec.body_required,
            "content": {_JSON: {"schema": {"$ref": _REF.format(name=spec.body)}}},
        }
    # The headers Litestar documents on every answer (nosniff, no-store, ...).
    generated: dict[str, Any] = next(iter(operation.get("responses", {}).values()), {})
    headers = generated.get("headers", {})
    responses: dict[str, Any] = {}
    for status, media in spec.success.items():
        answer: dict[str, Any] = {"description": "Success", "headers": headers}
        if media:
            answer["content"] = {kind: {"schema": schema} for kind, schema in media.items()}
        responses[str(status)] = answer
    errors = set(spec.errors) | ({500} if spec.public else set(_AUTHED))
    if params:
        errors |= {400, 404}
    for status in sorted(errors):
        responses[str(status)] = _problem_response(status)
    operation["responses"] = responses


class CompleteJsonRenderPlugin(JsonRenderPlugin):
    """Serves the completed document at `/schema/openapi.json`."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return _rendered(json.dumps(openapi_schema, sort_keys=True))

    def __init__(self) -> None:
        super().__init__(path="/openapi.json")


@functools.cache
def _rendered(generated: str) -> bytes:
    doc = complete(json.loads(generated))
    doc.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    return msgspec.json.encode(doc)


__all__ = ["OPERATIONS", "CompleteJsonRenderPlugin", "complete"]
