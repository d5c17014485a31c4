"""create_app(settings): the HTTP application: its routes, its one ASGI layer (the
request gate), its error format (RFC 9457) and its lifespan, which takes every
collaborator from the composition root (vault_service/services.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar, Request, Response, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig

from vault_service import __version__
from vault_service.access.gate import DATABASE_GONE, RequestGate
from vault_service.auditor.routes import AlertsController, AuditController
from vault_service.auth.routes import jwks
from vault_service.console.routes import console_config, console_file, console_index
from vault_service.errors import (
    DatabaseUnavailable,
    Unauthenticated,
    VaultServiceError,
)
from vault_service.health import live, ready
from vault_service.observability import configure_telemetry
from vault_service.openapi import CompleteJsonRenderPlugin
from vault_service.records import schema as record_schema
from vault_service.records.routes import RecordsController, TransfersController
from vault_service.services import start_server
from vault_service.settings import Settings
from vault_service.stats.routes import StatsController

log = structlog.get_logger(__name__)
PROBLEM = "application/problem+json"
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _problem(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    request_id = request.scope.get("state", {}).get("request_id", "")
    body = {
        "type": f"https://vault-service.example/problems/{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        "request_id": request_id,
    }
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers or {})


def _on_service_error(
    request: Request[Any, Any, Any], exc: VaultServiceError
) -> Response[dict[str, Any]]:
    code = exc.reason if isinstance(exc, Unauthenticated) else exc.code
    event = "request_refused" if exc.status < 500 else "request_failed"
    log.warning(event, code=code, status=exc.status, route=request.scope.get("path_template"))
    return _problem(request, exc.status, code, exc.title, exc.detail, exc.headers)


def _on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    # Litestar's own errors (unknown route, wrong method, body too large, bad params):
    # a stable code per status, and never the framework's detail text, which can
    # quote the offending input.
    code = _HTTP_CODES.get(exc.status_code, "bad_request")
    return _problem(request, exc.status_code, code, code.replace("_", " ").capitalize(), code)


def _on_database_gone(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.warning("database_unavailable", error_type=type(exc).__name__)
    return _on_service_error(request, DatabaseUnavailable())


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error(
        "unhandled_error", error_type=type(exc).__name__, route=request.scope.get("path_template")
    )
    return _problem(request, 500, "internal_error", "Internal error", "internal_error")


def create_app(settings: Settings) -> Litestar:
    configure_telemetry()
    schema = record_schema.load()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Every collaborator comes from the composition root; the stack releases each
        # in reverse order, however far start-up got.
        async with AsyncExitStack() as stack:
            app.state.update(await start_server(stack, settings, schema))
            log.info("service_started", version=__version__)
            yield

    cors = (
        CORSConfig(
            allow_origins=list(settings.server.cors_origins),
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "Idempotency-Key",
                "X-Purpose",
                "X-Purpose-Detail",
                "X-Request-Id",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "X-Request-Id",
                "Retry-After",
                "RateLimit",
                "RateLimit-Policy",
            ],
            allow_credentials=False,
            max_age=600,
        )
        if settings.server.cors_origins
        else None
    )
    return Litestar(
        route_handlers=[
            RecordsController,
            TransfersController,
            AuditController,
            AlertsController,
            StatsController,
            jwks,
            console_index,
            console_config,
            console_file,
            live,
            ready,
        ],
        lifespan=[lifespan],
        # One ASGI layer: request id, authentication, authorization, refusal entries,
        # span and metrics (vault_service/access/gate.py).
        middleware=[RequestGate],
        cors_config=cors,
        exception_handlers={
            VaultServiceError: _on_service_error,
            HTTPException: _on_http_error,
            **dict.fromkeys(DATABASE_GONE, _on_database_gone),
            Exception: _on_unexpected,
        },
        # Responses may carry personal data: no cache anywhere, ever.
        cache_control=CacheControlHeader(no_store=True),
        response_headers=[
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
            ResponseHeader(name="Referrer-Policy", value="no-referrer"),
        ],
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="vault-service",
            version=__version__,
            path="/schema",
            render_plugins=[CompleteJsonRenderPlugin()],
            # Public by its router's opt (deny-by-default everywhere else).
            openapi_router=Router(
                path="/schema", route_handlers=[], opt={"public": True, "exclude_from_auth": True}
            ),
        ),
        debug=False,
    )


__all__ = ["create_app"]
