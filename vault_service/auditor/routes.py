"""Auditor API (API.md): events, checkpoints, proofs, bundles, keys and reports.

Every route needs `audit:events:read` and, being a data route, an `X-Purpose` the
caller's role may state (`audit` for auditors). Every answer is itself logged: the
entry is appended, durably, before the response leaves; if it cannot be, the
auditor gets 503 and nothing else, like any other reader.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from vault_service.access.budgets import Charge, rate_limit_headers
from vault_service.access.recording import request_log
from vault_service.alerts.store import Alerts
from vault_service.audit.integrator import Integrator
from vault_service.audit.proofs import AuditProofs
from vault_service.auth.permissions import Permission
from vault_service.auth.principal import Principal
from vault_service.errors import InvalidParameter, NotFound, invalid_body
from vault_service.paging import Query, encode_uuid_cursor, parse_uuid
from vault_service.records.custody import CustodyService

JSON: Final = "application/json"


def _opt(action: str) -> dict[str, object]:
    # `action` names the route in the log, allowed or refused (the request gate and
    # `request_log` read it from the handler's opt).
    return {"permission": Permission.AUDIT_READ, "data": True, "action": action}


_ACTION = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}$")
_MAX_PARAM = 64
_encoder = msgspec.json.Encoder()


# --- query parameters: strict, stable error codes, values never echoed ---------------------
def _params(request: Request[Any, Any, Any], allowed: frozenset[str]) -> Query:
    return Query(request.query_params.multi_items(), max_length=_MAX_PARAM, allowed=allowed)


def _newest_first(params: Query) -> bool:
    """`order`: `oldest` first (the default, as before the parameter existed) or
    `newest` first. A cursor continues the order it was given in; it carries no order
    of its own, so the caller repeats `order` with it."""
    return params.get_choice("order", ("oldest", "newest"), "oldest") == "newest"


def _json(value: object) -> Response[bytes]:
    return Response(_encoder.encode(value), media_type=JSON)


# --- logging the auditor's own access ------------------------------------------------------
async def _log(
    request: Request[Principal, Any, Any],
    params: Mapping[str, str],
    record_ids: tuple[uuid.UUID, ...] = (),
) -> None:
    """The auditor's own access, under the route's declared action: criterion names
    only (the values, ids and times, are in the request, not worth a copy)."""
    await request_log(request.scope).allowed(
        Charge.NONE, record_ids=record_ids, criteria=tuple(sorted(params))
    )


async def _settled(request: Request[Any, Any, Any]) -> None:
    """Everything logged before this request is in the tree before it is queried: a
    report must include every access that finished before it was asked for."""
    integrator: Integrator = request.app.state.integrator
    await integrator.settle()


def _proofs(request: Request[Any, Any, Any]) -> AuditProofs:
    proofs: AuditProofs = request.app.state.audit_proofs
    return proofs


_EVENTS: Final = frozenset(
    {"record_id", "actor_id", "structure_id", "action", "since", "until", "cursor", "limit"}
)
_REPORT: Final = frozenset({"actor_id", "since", "until", "cursor", "limit", "format"})
_PAGE: Final = frozenset({"cursor", "limit"})
# The console's charts: a quarter at most, and a bound on the groups it answers.
_VOLUME_WINDOW: Final = datetime.timedelta(days=93)
_VOLUME_ROWS: Final = 5000
# The entries of one structure: a week at most (the console asks for one day).
_STRUCTURE_WINDOW: Final = datetime.timedelta(days=7)


class AuditController(Controller):
    path = "/v1/audit"
    tags: Final = ["audit"]  # type: ignore[misc]

    @get(
        "/events",
        opt=_opt("audit.events"),
        summary="Access-log entries by record, actor, structure, action and time",
    )
    async def events(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, _EVENTS)
        action = params.get("action")
        if action is not None and not _ACTION.match(action):
            raise InvalidParameter("action must be a dotted code like record.read")
        record_id = params.get_uuid("record_id")
        since, until = params.get_time("since"), params.get_time("until")
        if since is not None and until is not None and until <= since:
            raise InvalidParameter("until must be after since")
        structure_id = params.get_uuid("structure_id")
        if structure_id is not None and (
            since is None or until is None or until - since > _STRUCTURE_WINDOW
        ):
            # No index on the structure: the window is what bounds the scan.
            raise InvalidParameter("structure_id needs since and until, at most 7 days apart")
        proofs = _proofs(request)
        await _settled(request)
        page = await proofs.events(
            record_id=record_id,
            actor_id=params.get_uuid("actor_id"),
            action=action,
            since=since,
            until=until,
            cursor=params.get("cursor"),
            limit=params.get_limit(100, proofs.events_page_max),
            structure_id=structure_id,
        )
        await _log(request, params, (record_id,) if record_id else ())
        return _json(page)

    @get(
        "/checkpoint",
        opt=_opt("audit.checkpoint"),
        summary="Latest signed checkpoint (C2SP signed note)",
    )
    async def checkpoint(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, frozenset({"size"}))
        _, note = await _proofs(request).checkpoint(params.get_int("size"))
        await _log(request, params)
        return Response(note.encode("utf-8"), media_type="text/plain; charset=utf-8")

    @get(
        "/keys",
        opt=_opt("audit.keys"),
        summary="Verifier keys of every live checkpoint key version",
    )
    async def keys(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, frozenset())
        keys = await _proofs(request).keys()
        await _log(request, params)
        return _json(keys)

    @get(
        "/proofs/inclusion",
        opt=_opt("audit.proof"),
        summary="Inclusion proof of one entry",
    )
    async def inclusion(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, frozenset({"index", "size"}))
        proof = await _proofs(request).inclusion(
            params.require_int("index"), params.get_int("size")
        )
        await _log(request, params)
        return _json(proof)

    @get(
        "/proofs/consistency",
        opt=_opt("audit.proof"),
        summary="Consistency proof between two tree sizes",
    )
    async def consistency(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, frozenset({"from", "to"}))
        proof = await _proofs(request).consistency(params.require_int("from"), params.get_int("to"))
        await _log(request, params)
        return _json(proof)

    @get(
        "/bundles",
        opt=_opt("audit.bundle"),
        summary="Entries of a range with what rebuilds the signed root",
    )
    async def bundles(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, frozenset({"start", "end", "size"}))
        bundle = await _proofs(request).bundle(
            params.require_int("start"), params.get_int("end"), params.get_int("size")
        )
        await _log(request, params)
        return _json(bundle)

    @get(
        "/reports/breach-impact",
        opt=_opt("audit.breach_impact"),
        summary="Every record and field an actor was given in a window (JSON or CSV)",
    )
    async def breach_impact(self, request: Request[Principal, Any, Any]) -> Response[Any]:
        params = _params(request, _REPORT)
        actor_id = params.get_uuid("actor_id")
        since, until = params.get_time("since"), params.get_time("until")
        if actor_id is None or since is None or until is None:
            raise InvalidParameter("actor_id, since and until are required")
        output = params.get_choice("format", ("json", "csv"), "json")
        proofs = _proofs(request)
        if output == "csv" and ("cursor" in params or "limit" in params):
            raise InvalidParameter("the CSV report is never paged")
        limit = (
            proofs.report_page_max
            if output == "csv"
            else params.get_limit(1000, proofs.report_page_max)
        )
        await _settled(request)
        page = await proofs.breach_impact(actor_id, since, until, params.get("cursor"), limit)
        await _log(request, params)
        if output == "json":
            return _json(page)
        return Stream(
            proofs.breach_impact_csv(page),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="breach-impact.csv"'},
        )

    @get(
        "/reports/breach-impact/proofs",
        opt=_opt("audit.report_proofs"),
        summary="The inclusion proofs of a breach-impact window's entries, in one file",
    )
    async def report_proofs(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, frozenset({"actor_id", "since", "until"}))
        actor_id = params.get_uuid("actor_id")
        since, until = params.get_time("since"), params.get_time("until")
        if actor_id is None or since is None or until is None:
            raise InvalidParameter("actor_id, since and until are required")
        bundle = await _proofs(request).report_proofs(actor_id, since, until)
        await _log(request, params)
        return _json(bundle)

    @get(
        "/volume",
        opt=_opt("audit.volume"),
        summary="Entries and records named per day and per actor or structure (counts only)",
        description=(
            "A window of at most 93 days; at most 5,000 (day, key) groups, newest days "
            "first, `truncated` when more. Each query is logged and counts against the "
            "auditor's `volume.hour` budget (429 `volume_budget_exceeded` past it), "
            "decided before the query runs."
        ),
    )
    async def volume(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, frozenset({"by", "since", "until"}))
        by = params.get_choice("by", ("actor", "structure"), "actor")
        since, until = params.get_time("since"), params.get_time("until")
        if since is None or until is None:
            raise InvalidParameter("since and until are required")
        if until <= since:
            raise InvalidParameter("until must be after since")
        if until - since > _VOLUME_WINDOW:
            raise InvalidParameter("the window is at most 93 days")
        # The budget is decided (with the durable entry) before the query runs, not
        # after as for the other auditor routes: what it bounds is the scan itself, so
        # a refused request must not cost the database one.
        log = request_log(request.scope)
        decision = await log.allowed(Charge.VOLUME, criteria=tuple(sorted(params)))
        await _settled(request)
        page = await _proofs(request).volume(by, since, until, _VOLUME_ROWS)
        return Response(
            _encoder.encode(page), media_type=JSON, headers=rate_limit_headers(decision)
        )

    @get(
        "/break-glass",
        opt=_opt("audit.break_glass"),
        summary="Break-the-glass grants and their reviews (ids, reasons, times, outcomes)",
    )
    async def break_glass(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, frozenset({"state", "order", "cursor", "limit"}))
        state = params.get_choice("state", ("pending", "reviewed"), None)
        newest = _newest_first(params)
        limit = params.get_limit(100, 500)
        custody: CustodyService = request.app.state.custody
        items = await custody.grants_for_audit(
            request.user,
            state,
            params.get_uuid_cursor(),
            limit,
            newest_first=newest,
        )
        await _log(request, params, tuple(i["record_id"] for i in items))
        next_cursor = encode_uuid_cursor(items[-1]["id"]) if len(items) == limit else None
        return _json({"items": items, "next_cursor": next_cursor})

    @get(
        "/reports/subject/{record_id:str}",
        opt=_opt("audit.subject"),
        summary="Who accessed one youth's record, when and why",
    )
    async def subject(
        self, request: Request[Principal, Any, Any], record_id: FromPath[str]
    ) -> Response[bytes]:
        params = _params(request, _PAGE)
        rid = parse_uuid(record_id, "record_id")
        proofs = _proofs(request)
        await _settled(request)
        page = await proofs.subject(
            rid, params.get("cursor"), params.get_limit(100, proofs.events_page_max)
        )
        await _log(request, params, (rid,))
        return _json(page)


_ALERTS: Final = frozenset({"state", "since", "order", "cursor", "limit"})


class AckRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Why the alert is closed, kept with the alert (never in a log line or an entry).
    # A note, not a channel: no control character but tab and line breaks (and no NUL,
    # which PostgreSQL's text cannot hold: it answered 500 before this check).
    comment: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=500, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"),
    ]


_ack_decoder = msgspec.json.Decoder(AckRequest)


class AlertsController(Controller):
    """Auditors: the alerts of the bulk-read defence (ids, codes and counts only)."""

    path = "/v1"
    tags: Final = ["audit"]  # type: ignore[misc]

    @get(
        "/alerts",
        opt=_opt("audit.alerts"),
        summary="Alerts raised by budgets and the bulk-read defence",
    )
    async def alerts(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        params = _params(request, _ALERTS)
        state = params.get_choice("state", ("open", "acknowledged"), None)
        newest = _newest_first(params)
        after = params.get_uuid_cursor()
        limit = params.get_limit(100, 500)
        source: Alerts = request.app.state.alerts
        rows = await source.page(state, params.get_time("since"), after, limit, newest_first=newest)
        items = [
            {
                "id": r["id"],
                "raised_at": r["raised_at"],
                "severity": r["severity"],
                "kind": r["kind"],
                "account_id": r["account_id"],
                "structure_id": r["structure_id"],
                "details": msgspec.Raw(r["details"].encode()),
                "state": r["state"],
                "acked_by": r["acked_by"],
                "acked_at": r["acked_at"],
            }
            for r in rows
        ]
        await _log(request, params)
        next_cursor = encode_uuid_cursor(rows[-1]["id"]) if len(rows) == limit else None
        return _json({"items": items, "next_cursor": next_cursor})

    @post(
        "/alerts/{alert_id:str}/ack",
        opt={"permission": Permission.ALERTS_ACK, "data": True, "action": "alert.ack"},
        status_code=204,
        summary="Acknowledge an open alert, with a comment (auditors)",
    )
    async def ack(
        self, request: Request[Principal, Any, Any], alert_id: FromPath[str]
    ) -> Response[None]:
        _params(request, frozenset())
        aid = parse_uuid(alert_id, "alert id")
        try:
            body = _ack_decoder.decode(await request.body())
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise invalid_body(exc) from None
        source: Alerts = request.app.state.alerts
        if not await source.acknowledge(
            aid, request.user.account_id, body.comment, request_log(request.scope)
        ):
            raise NotFound(
                "no open alert with this id that an auditor may acknowledge (critical "
                "alerts and alerts about oneself go to an admin)"
            )
        return Response(None, status_code=204)
