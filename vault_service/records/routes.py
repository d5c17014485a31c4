"""HTTP routes of case records (API.md). Thin: parse, call the service, shape headers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.params import FromPath

from vault_service.access.budgets import Charge, rate_limit_headers
from vault_service.access.recording import RequestLog, request_log
from vault_service.auth.permissions import Permission, Purpose
from vault_service.auth.principal import Principal
from vault_service.errors import (
    InvalidBody,
    InvalidParameter,
    PreconditionRequired,
    invalid_body,
)
from vault_service.paging import Query, decode_uuid_cursor, encode_uuid_cursor, parse_uuid
from vault_service.records.access import View
from vault_service.records.custody import (
    BreakGlassRequest,
    CustodyService,
    Requested,
    ReviewRequest,
    TransferRequest,
)
from vault_service.records.service import Page, RecordDocument, RecordService

T = TypeVar("T")

_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{8,128}$")
_PAGING: Final = frozenset({"cursor", "limit"})
_MAX_PARAM: Final = 320
# The services cap each page further; this only keeps the number sane.
_LIMIT_MAX: Final = 1000
JSON: Final = "application/json"


class NirQuery(msgspec.Struct, forbid_unknown_fields=True):
    nir: str = msgspec.field()


_nir_decoder = msgspec.json.Decoder(NirQuery)
_encoder = msgspec.json.Encoder()


def parse_id(raw: str, what: str = "record id") -> uuid.UUID:
    return parse_uuid(raw, what)


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    """The version an If-Match names; -1 (matches nothing) for any other tag."""
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        # A weak tag never satisfies If-Match (RFC 9110 13.1.1): compare strongly.
        return -1
    try:
        return int(value.strip('"'))
    except ValueError:
        return -1


def _query(request: Request[Any, Any, Any]) -> Query:
    """Any name (a search's criteria are checked by the service); a route with a
    fixed list checks it with `Query.only`, after the rest."""
    return Query(request.query_params.multi_items(), max_length=_MAX_PARAM)


def _headers(log: RequestLog, **extra: str) -> dict[str, str]:
    headers = rate_limit_headers(log.decision)
    headers.update(extra)
    return headers


def _document_response(log: RequestLog, document: RecordDocument) -> Response[bytes]:
    return Response(
        document.body, media_type=JSON, headers=_headers(log, ETag=etag(document.version))
    )


def _page_response(log: RequestLog, page: Page) -> Response[bytes]:
    next_cursor = None if page.next_after is None else encode_uuid_cursor(page.next_after)
    body = _encoder.encode({"items": page.items, "next_cursor": next_cursor})
    return Response(body, media_type=JSON, headers=_headers(log))


class RecordsController(Controller):
    """Every route declares its permission and, for the access log, its action; the
    log of a request (`request_log`) takes the action from there. What a response
    returns is charged to the caller's budgets in the statement that makes its entry
    durable, before any of it leaves (access/recording.py)."""

    path = "/v1"
    tags: Final = ["records"]  # type: ignore[misc]

    @post(
        "/records",
        opt={"permission": Permission.RECORDS_CREATE, "data": True, "action": "record.create"},
        status_code=201,
        summary="Create a youth record in the caller's structure",
    )
    async def create_record(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        service: RecordService = request.app.state.records
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            raise InvalidParameter("Idempotency-Key must be 8 to 128 characters [A-Za-z0-9_.:-]")
        log = request_log(request.scope)
        created = await service.create(request.user, await request.body(), key, log)
        if created.replayed:
            # Nothing was written this time: the replay is an access of its own.
            await log.allowed(Charge.NONE, record_ids=(created.record_id,))
        headers = _headers(log, Location=f"/v1/records/{created.record_id}")
        if created.replayed:
            headers["Idempotent-Replayed"] = "true"
        body = msgspec.json.encode({"id": created.record_id})
        return Response(body, status_code=201, media_type=JSON, headers=headers)

    @get(
        "/records/{record_id:str}",
        opt={"permission": Permission.RECORDS_READ, "data": True, "action": "record.read"},
        summary="Read a record: full for its referent, masked for the structure's supervisors",
    )
    async def read_record(
        self, request: Request[Principal, Any, Any], record_id: FromPath[str]
    ) -> Response[bytes]:
        service: RecordService = request.app.state.records
        if request.scope["query_string"]:
            raise InvalidParameter("unknown query parameter")  # as strict as every route
        purpose = request.state.purpose[0]
        document = await service.read(request.user, parse_id(record_id), purpose)
        full = document.view is View.FULL
        log = request_log(request.scope)
        await log.allowed(
            Charge.FULL if full else Charge.SUMMARY,
            record_ids=(document.record_id,),
            fields=document.fields,
            break_glass=full and purpose is Purpose.BREAK_GLASS,
        )
        return _document_response(log, document)

    @patch(
        "/records/{record_id:str}",
        opt={"permission": Permission.RECORDS_UPDATE, "data": True, "action": "record.update"},
        summary="Partial update (JSON merge patch of top-level properties) with If-Match",
    )
    async def update_record(
        self, request: Request[Principal, Any, Any], record_id: FromPath[str]
    ) -> Response[bytes]:
        service: RecordService = request.app.state.records
        rid = parse_id(record_id)
        expected = parse_if_match(request.headers.get("if-match"))
        if expected is None:
            raise PreconditionRequired()
        log = request_log(request.scope)
        document = await service.update(request.user, rid, expected, await request.body(), log)
        return _document_response(log, document)

    @get(
        "/records",
        opt={"permission": Permission.RECORDS_SEARCH, "data": True, "action": "record.search"},
        summary="Equality search over blind indexes; masked summaries, capped pages",
    )
    async def search_records(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        service: RecordService = request.app.state.records
        params = _query(request)
        criteria = {k: v for k, v in params.items() if k not in _PAGING}
        page = await service.search(
            request.user, criteria, params.get_uuid_cursor(), params.get_limit(20, _LIMIT_MAX)
        )
        log = request_log(request.scope)
        await log.allowed(
            Charge.SUMMARY, record_ids=page.record_ids, criteria=tuple(sorted(criteria))
        )
        return _page_response(log, page)

    @post(
        "/records/search/nir",
        opt={
            "permission": Permission.RECORDS_SEARCH_NIR,
            "data": True,
            "action": "record.search_nir",
        },
        status_code=200,
        summary="NIR lookup; the NIR travels in the body, never in a URL",
    )
    async def search_nir(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        service: RecordService = request.app.state.records
        try:
            query = _nir_decoder.decode(await request.body())
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise InvalidBody('expected {"nir": "<15 characters>"}') from None
        page = await service.search(request.user, {"nir": query.nir}, None, 20, restricted=True)
        log = request_log(request.scope)
        await log.allowed(Charge.NIR, record_ids=page.record_ids, criteria=("nir",))
        return _page_response(log, page)

    @get(
        "/caseload",
        opt={"permission": Permission.CASELOAD_READ, "data": True, "action": "caseload.list"},
        summary="The caller's youth (a supervisor: the structure's), masked summaries",
    )
    async def caseload(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        service: RecordService = request.app.state.records
        params = _query(request)
        params.only(_PAGING)
        page = await service.caseload(
            request.user, params.get_uuid_cursor(), params.get_limit(50, _LIMIT_MAX)
        )
        log = request_log(request.scope)
        await log.allowed(Charge.SUMMARY, record_ids=page.record_ids)
        return _page_response(log, page)

    @post(
        "/records/{record_id:str}/transfer",
        opt={"permission": Permission.RECORDS_TRANSFER, "data": True, "action": "record.transfer"},
        status_code=200,
        summary="Move a youth to another counsellor (definitive or temporary), or ask another "
        "structure to take them (202: pending its acceptance)",
    )
    async def transfer_record(
        self, request: Request[Principal, Any, Any], record_id: FromPath[str]
    ) -> Response[bytes]:
        custody: CustodyService = request.app.state.custody
        body = _decode(_transfer_decoder, await request.body())
        log = request_log(request.scope)
        outcome = await custody.transfer(request.user, parse_id(record_id), body, log)
        if isinstance(outcome, Requested):
            # Nothing moved: the record keeps its version, and its ETag with it.
            return Response(
                msgspec.json.encode(outcome),
                status_code=202,
                media_type=JSON,
                headers=_headers(log),
            )
        return Response(
            msgspec.json.encode(outcome),
            media_type=JSON,
            headers=_headers(log, ETag=etag(outcome.version)),
        )

    @post(
        "/records/{record_id:str}/break-glass",
        opt={
            "permission": Permission.RECORDS_BREAK_GLASS,
            "data": True,
            "action": "record.break_glass",
        },
        status_code=201,
        summary="Open a time-boxed, reviewed grant on a record outside the caseload",
    )
    async def break_glass(
        self, request: Request[Principal, Any, Any], record_id: FromPath[str]
    ) -> Response[bytes]:
        custody: CustodyService = request.app.state.custody
        body = _decode(_break_glass_decoder, await request.body())
        log = request_log(request.scope)
        grant = await custody.break_glass(request.user, parse_id(record_id), body, log)
        return Response(
            msgspec.json.encode(grant), status_code=201, media_type=JSON, headers=_headers(log)
        )

    @get(
        "/break-glass/reviews",
        opt={
            "permission": Permission.BREAK_GLASS_REVIEW,
            "data": True,
            "action": "break_glass.review_queue",
        },
        summary="Break-the-glass grants of the supervisor's structure awaiting review",
    )
    async def review_queue(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        custody: CustodyService = request.app.state.custody
        params = _query(request)
        params.only(_PAGING)
        items = await custody.review_queue(
            request.user,
            decode_uuid_cursor(params.get("cursor")),
            min(params.get_limit(50, _LIMIT_MAX), 100),
        )
        next_cursor = encode_uuid_cursor(items[-1]["id"]) if items else None
        log = request_log(request.scope)
        await log.allowed(Charge.NONE, record_ids=tuple(i["record_id"] for i in items))
        return Response(
            msgspec.json.encode({"items": items, "next_cursor": next_cursor}),
            media_type=JSON,
            headers=_headers(log),
        )

    @post(
        "/break-glass/{grant_id:str}/review",
        opt={
            "permission": Permission.BREAK_GLASS_REVIEW,
            "data": True,
            "action": "break_glass.review",
        },
        status_code=204,
        summary="Record the supervisor's review of a break-the-glass grant",
    )
    async def review_grant(
        self, request: Request[Principal, Any, Any], grant_id: FromPath[str]
    ) -> Response[None]:
        custody: CustodyService = request.app.state.custody
        body = _decode(_review_decoder, await request.body())
        log = request_log(request.scope)
        await custody.review(request.user, parse_id(grant_id, "grant id"), body, log)
        return Response(None, status_code=204, headers=_headers(log))


class TransfersController(Controller):
    """Cross-structure transfer requests, for supervisors: those waiting for their
    structure's answer or for another's, and the answers. A request that is not the
    caller's to see or answer is 404, exactly like one that does not exist."""

    path = "/v1/transfers"
    tags: Final = ["transfers"]  # type: ignore[misc]

    @get(
        "/",
        opt={"permission": Permission.TRANSFERS_READ, "data": True, "action": "transfer.list"},
        summary="Pending transfer requests into (incoming) or out of (outgoing) the "
        "supervisor's structure: ids, structures, dates and state",
    )
    async def list_transfers(self, request: Request[Principal, Any, Any]) -> Response[bytes]:
        custody: CustodyService = request.app.state.custody
        params = _query(request)
        params.only(_PAGING | {"direction"})
        incoming = params.get_choice("direction", ("incoming", "outgoing")) == "incoming"
        limit = min(params.get_limit(50, _LIMIT_MAX), 100)
        items = await custody.transfer_requests(
            request.user, incoming, decode_uuid_cursor(params.get("cursor")), limit
        )
        next_cursor = encode_uuid_cursor(items[-1]["id"]) if len(items) == limit else None
        log = request_log(request.scope)
        await log.allowed(Charge.NONE, record_ids=tuple(i["record_id"] for i in items))
        return Response(
            _encoder.encode({"items": items, "next_cursor": next_cursor}),
            media_type=JSON,
            headers=_headers(log),
        )

    @post(
        "/{transfer_id:str}/accept",
        opt={
            "permission": Permission.TRANSFERS_DECIDE,
            "data": True,
            "action": "record.transfer_accept",
        },
        status_code=200,
        summary="Accept a transfer into the supervisor's structure: the record moves now",
    )
    async def accept_transfer(
        self, request: Request[Principal, Any, Any], transfer_id: FromPath[str]
    ) -> Response[bytes]:
        custody: CustodyService = request.app.state.custody
        return await _answer_transfer(request, transfer_id, custody.accept)

    @post(
        "/{transfer_id:str}/decline",
        opt={
            "permission": Permission.TRANSFERS_DECIDE,
            "data": True,
            "action": "record.transfer_decline",
        },
        status_code=200,
        summary="Decline a transfer into the supervisor's structure: the record stays",
    )
    async def decline_transfer(
        self, request: Request[Principal, Any, Any], transfer_id: FromPath[str]
    ) -> Response[bytes]:
        custody: CustodyService = request.app.state.custody
        return await _answer_transfer(request, transfer_id, custody.decline)

    @post(
        "/{transfer_id:str}/cancel",
        opt={
            "permission": Permission.TRANSFERS_CANCEL,
            "data": True,
            "action": "record.transfer_cancel",
        },
        status_code=200,
        summary="Withdraw a transfer the supervisor's structure asked for",
    )
    async def cancel_transfer(
        self, request: Request[Principal, Any, Any], transfer_id: FromPath[str]
    ) -> Response[bytes]:
        custody: CustodyService = request.app.state.custody
        return await _answer_transfer(request, transfer_id, custody.cancel)


async def _answer_transfer(
    request: Request[Principal, Any, Any],
    transfer_id: str,
    answer: Callable[[Principal, uuid.UUID, RequestLog], Awaitable[Any]],
) -> Response[bytes]:
    """Accept, decline or cancel: the same request shape, the same answer shape."""
    log = request_log(request.scope)
    answered = await answer(request.user, _transfer_id(transfer_id, await request.body()), log)
    return Response(msgspec.json.encode(answered), media_type=JSON, headers=_headers(log))


class NoBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What an answer to a transfer request carries: nothing (an empty body or `{}`)."""


def _transfer_id(raw: str, body: bytes) -> uuid.UUID:
    """The transfer request a route answers. Any property in the body is refused: the
    request names its target once, when asked, and an answer that seemed to change it
    would be silently ignored."""
    if body:
        _decode(_no_body_decoder, body)
    return parse_id(raw, "transfer id")


_transfer_decoder = msgspec.json.Decoder(TransferRequest)
_break_glass_decoder = msgspec.json.Decoder(BreakGlassRequest)
_review_decoder = msgspec.json.Decoder(ReviewRequest)
_no_body_decoder = msgspec.json.Decoder(NoBody)


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid_body(exc) from None
