"""Recording every access in the access log, allowed or refused.

Allowed accesses are recorded by the route that serves them, with what it returned
(record ids, field paths, criterion names), and awaited before the response leaves:
no entry, no data (`AuditUnavailable`, 503). Refusals (401, 403, 404, 4xx on bad
input, 5xx) are recorded by `RefusalRecorder`, a middleware that sees every error a
/v1 route raises, including the authentication middleware's and the guards'.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Any, Final

import msgspec
import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from vault_service.audit.log import AccessEvent, AccessLog
from vault_service.auth.principal import Principal
from vault_service.errors import Unauthenticated, VaultServiceError

log = structlog.get_logger(__name__)
FINGERPRINT_LABEL: Final = b"vault-service/client-fingerprint/v1"


def _uuid(value: uuid.UUID | None) -> uuid.UUID | None:
    """asyncpg hands out its own UUID subclass; the log stores plain uuid.UUID."""
    if value is None or type(value) is uuid.UUID:
        return value
    return uuid.UUID(bytes=value.bytes)


class AccessRecorder:
    def __init__(self, access_log: AccessLog, fingerprint_key: bytes) -> None:
        self.log = access_log
        self._key = fingerprint_key

    def fingerprint(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        """Salted hash of the client (address and user agent): links the requests of
        one client in an investigation, without storing an address."""
        client = connection.client.host if connection.client else ""
        agent = connection.headers.get("user-agent", "")[:512]
        mac = hmac.new(self._key, f"{client}|{agent}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def event(
        self,
        connection: ASGIConnection[Any, Any, Any, Any],
        action: str,
        outcome: str,
        *,
        record_ids: tuple[uuid.UUID, ...] = (),
        fields: tuple[str, ...] = (),
        criteria: tuple[str, ...] = (),
        refusal_code: str | None = None,
    ) -> AccessEvent:
        principal = connection.scope.get("user")
        if not isinstance(principal, Principal):
            principal = None
        purpose = connection.scope.get("state", {}).get("purpose")
        return AccessEvent(
            action=action,
            outcome="allowed" if outcome == "allowed" else "refused",
            actor_id=_uuid(principal.account_id) if principal else None,
            role=str(principal.role) if principal else None,
            structure_id=_uuid(principal.structure_id) if principal else None,
            record_ids=tuple(_uuid(r) for r in record_ids),  # type: ignore[misc]
            fields=fields,
            purpose=str(purpose[0]) if purpose else None,
            purpose_detail=purpose[1] if purpose else None,
            refusal_code=refusal_code,
            request_id=connection.scope.get("state", {}).get("request_id"),
            token_jti=_uuid(principal.jti) if principal else None,
            client_fingerprint=self.fingerprint(connection),
            criteria=criteria,
        )

    async def allowed(
        self, connection: ASGIConnection[Any, Any, Any, Any], action: str, **fields: Any
    ) -> int:
        """Append and wait for the commit; raises AuditUnavailable (fail closed)."""
        return await self.log.append(self.event(connection, action, "allowed", **fields))


def _refusal_code(exc: Exception) -> str:
    if isinstance(exc, Unauthenticated):
        return exc.reason
    if isinstance(exc, VaultServiceError):
        return exc.code
    if isinstance(exc, HTTPException):
        return f"http_{exc.status_code}"
    return "internal_error"


class RefusalRecorder:
    """Records every refused /v1 request (a route with an `action` in its opt), then
    lets the error through unchanged.

    Errors raised before routing completes (the authentication middleware) pass
    through here as exceptions; errors from guards and handlers come back as our own
    problem+json responses, whose `code` is read from the body. Either way the entry
    is appended before the response leaves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        action = handler.opt.get("action") if handler is not None else None
        if not action:
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        status = 0
        body = bytearray()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start" and message["status"] >= 400:
                status = message["status"]
                held.append(message)
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                await self._record(scope, action, _code_of(bytes(body), status))
                for m in held:
                    await send(m)
                held.clear()
                return
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            await self._record(scope, action, _refusal_code(exc))
            raise

    @staticmethod
    async def _record(scope: Scope, action: str, code: str) -> None:
        recorder: AccessRecorder | None = getattr(scope["app"].state, "recorder", None)
        if recorder is None:
            return
        raw_id = scope.get("path_params", {}).get("record_id")
        try:
            record_ids: tuple[uuid.UUID, ...] = (uuid.UUID(raw_id),) if raw_id else ()
        except ValueError:
            record_ids = ()
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope)
        event = recorder.event(
            connection, action, "refused", record_ids=record_ids, refusal_code=code
        )
        try:
            await recorder.log.append(event)
        except VaultServiceError:
            # The request is refused either way; the operator is told.
            log.error("refusal_not_logged", action=action, code=code)


def _code_of(body: bytes, status: int) -> str:
    try:
        code = msgspec.json.decode(body).get("code")
    except (msgspec.DecodeError, AttributeError):
        code = None
    return code if isinstance(code, str) and _CODE.fullmatch(code) else f"http_{status}"


_CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
