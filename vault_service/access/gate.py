"""The one ASGI layer every request passes, after routing and before its handler.

In order: a request id; authentication (bearer token, account state) unless the route
is public; authorization (the route's declared permission, held by the token's scopes
and the account's current role, and a purpose for data routes); the handler; then,
for a refused /v1 request (any 4xx or 5xx of a route that declares an `action`), its
access-log entry before the response leaves; a span named by route template, a
duration metric and one access line.

One layer instead of a telemetry middleware, a refusal recorder, an authentication
middleware and a guard: each of those wrapped every request in its own coroutine and
`send` closure, and together they cost about as much as the plaintext reference's
whole request.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Final

import asyncpg
import msgspec
import structlog
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send, WebSocketCloseEvent
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from vault_service.access.recording import REFUSAL_LOGGED, AccessRecorder
from vault_service.auth.guards import PUBLIC_OPT, authenticate, authorize
from vault_service.errors import (
    DatabaseUnavailable,
    Unauthenticated,
    VaultServiceError,
)
from vault_service.observability import tracing_enabled

REQUEST_ID_HEADER: Final = b"x-request-id"
# Only a UUID from the proxy is kept: free text here would reach every log line and
# error body (a client could put a NIR in it).
# What a database restart raises in a request (found by tests/stack/test_faults.py,
# which saw them answer 500 internal_error): lost or refused connections, and the
# server's own shutdown and start-up refusals.
DATABASE_GONE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    ConnectionError,  # refused or reset sockets
)


_REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_tracer = trace.get_tracer("vault_service.http")
_meter = metrics.get_meter("vault_service.http")
_requests = _meter.create_counter("vault_service.http.requests", description="HTTP requests")
_duration = _meter.create_histogram(
    "vault_service.http.duration", unit="s", description="HTTP request duration"
)
_access = structlog.get_logger("vault_service.access")


def _refusal_code(exc: Exception) -> str:
    if isinstance(exc, Unauthenticated):
        return exc.reason
    if isinstance(exc, VaultServiceError):
        return exc.code
    if isinstance(exc, HTTPException):
        return f"http_{exc.status_code}"
    if isinstance(exc, DATABASE_GONE):
        return DatabaseUnavailable.code
    return "internal_error"


def _status_of(exc: Exception) -> int:
    if isinstance(exc, VaultServiceError):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, DATABASE_GONE):
        return DatabaseUnavailable.status
    return 500


def _code_of(body: bytes, status: int) -> str:
    try:
        code = msgspec.json.decode(body).get("code")
    except (msgspec.DecodeError, AttributeError):
        code = None
    return code if isinstance(code, str) and _CODE.fullmatch(code) else f"http_{status}"


class RequestGate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            handler = scope.get("route_handler")
            if scope["type"] == ScopeType.WEBSOCKET and not (
                handler is not None and handler.opt.get(PUBLIC_OPT)
            ):
                # No websocket route is authenticated here: deny by default.
                close: WebSocketCloseEvent = {"type": "websocket.close", "code": 1008, "reason": ""}
                await send(close)
                return
            await self.app(scope, receive, send)
            return
        incoming = ""
        for key, value in scope["headers"]:
            if key == REQUEST_ID_HEADER:
                incoming = value.decode("latin-1")
                break
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        start = time.perf_counter()
        method = str(scope.get("method", ""))
        status = 500
        try:
            status = await self._traced(scope, receive, send, request_id, method)
        except Exception as exc:
            # Refused by the gate itself (401, 403, a missing purpose): Litestar answers
            # outside this layer, with the status the error carries; it is measured and
            # logged like any other answer.
            status = _status_of(exc)
            raise
        finally:
            self._account(scope, method, status, start)

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, method: str
    ) -> int:
        if tracing_enabled():
            # record_exception=False: an exception's text and stack can carry values.
            with _tracer.start_as_current_span(
                f"{method} http",
                kind=SpanKind.SERVER,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                status = await self._serve(scope, receive, send, request_id)
                route = scope.get("path_template") or "unmatched"
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                span.set_attribute("vault_service.request_id", request_id)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            return status
        return await self._serve(scope, receive, send, request_id)

    @staticmethod
    def _account(scope: Scope, method: str, status: int, start: float) -> None:
        elapsed = time.perf_counter() - start
        # Litestar has routed by now: the template, never the raw path.
        route = scope.get("path_template") or "unmatched"
        attrs: dict[str, str | int] = {
            "http.route": route,
            "http.request.method": method,
            "http.response.status_code": status,
        }
        _requests.add(1, attrs)
        _duration.record(elapsed, attrs)
        _access.info(
            "http_request",
            method=method,
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )
        structlog.contextvars.unbind_contextvars("request_id")

    async def _serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> int:
        """Authenticate, authorize, run the handler; record a refusal. Returns the status
        (or, when an exception leaves for Litestar's handler, the status it will get)."""
        handler = scope.get("route_handler")
        opt: dict[str, Any] = handler.opt if handler is not None else {}
        action: str | None = opt.get("action")
        recorder: AccessRecorder | None = getattr(scope["app"].state, "recorder", None)
        status = 500
        held: list[Message] = []
        body = bytearray()
        rid = request_id.encode()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid)]
                if status >= 400 and action and recorder is not None:
                    held.append(message)
                    return
                await send(message)
                return
            if held and message["type"] == "http.response.body":
                # A refusal: its entry is durable before any byte of it leaves.
                held.append(message)
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                if action and recorder is not None and not scope["state"].get(REFUSAL_LOGGED):
                    await recorder.refused(scope, action, _code_of(bytes(body), status))
                for m in held:
                    await send(m)
                held.clear()
                return
            await send(message)

        try:
            if not opt.get(PUBLIC_OPT) and not opt.get("exclude_from_auth"):
                scope["user"] = await authenticate(scope)
            if handler is not None:
                authorize(scope, opt)
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            status = _status_of(exc)
            if action and recorder is not None and not scope["state"].get(REFUSAL_LOGGED):
                await recorder.refused(scope, action, _refusal_code(exc))
            raise
        return status
