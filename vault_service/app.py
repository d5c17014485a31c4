"""create_app(settings): the one place that wires the service together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import structlog
from litestar import Litestar, Request, Response, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig

from vault_service import __version__
from vault_service.access.anonymous import AnonymousRefusals
from vault_service.access.budgets import BudgetPolicy
from vault_service.access.defence import BulkReadDefence
from vault_service.access.gate import RequestGate
from vault_service.access.recording import FINGERPRINT_LABEL, AccessRecorder
from vault_service.access.sequencer import Sequencer
from vault_service.alerts.rules import RuleRunner
from vault_service.alerts.store import Alerts
from vault_service.alerts.webhook import WebhookSender, load_secret
from vault_service.audit.checkpoints import CheckpointPublisher
from vault_service.audit.integrator import Integrator
from vault_service.audit.log import AccessLog
from vault_service.audit.proofs import AuditProofs
from vault_service.auditor.routes import AlertsController, AuditController
from vault_service.auth.accounts import AccountGate
from vault_service.auth.oidc import ExternalIssuers
from vault_service.auth.routes import jwks
from vault_service.auth.tokens import SigningKeys, TokenIssuer, TokenVerifier
from vault_service.auth.verified import VerifiedTokens
from vault_service.console.routes import console_config, console_file, console_index
from vault_service.crypto.keys import KeyHierarchy
from vault_service.errors import (
    DATABASE_GONE,
    DatabaseUnavailable,
    Unauthenticated,
    VaultServiceError,
)
from vault_service.health import live, ready
from vault_service.kms import VaultKms
from vault_service.observability import configure_telemetry
from vault_service.openapi import CompleteJsonRenderPlugin
from vault_service.records import schema as record_schema
from vault_service.records.custody import CustodyService
from vault_service.records.honeytokens import HONEYTOKEN_LABEL, Canaries
from vault_service.records.retention import RetentionRule
from vault_service.records.routes import RecordsController, TransfersController
from vault_service.records.schema import RecordSchema
from vault_service.records.service import RecordService
from vault_service.settings import Settings
from vault_service.stats.refresh import StatsJob, StatsRefresher
from vault_service.stats.routes import StatsController
from vault_service.stats.service import StatsService

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


async def _refresh_forever(keys: SigningKeys, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await keys.refresh()
        except VaultServiceError:
            log.warning("signing_keys_refresh_failed")  # keep the last known keys


async def keep_session(_conn: asyncpg.Connection[Any]) -> None:
    """Pool release without asyncpg's reset round trip (`RESET ALL; UNLISTEN *; ...`).

    Pooled connections never carry session state here: settings are fixed at connect
    time, LISTEN and advisory locks use dedicated connections, and every transaction
    is closed by its context manager. One query less per request on the hot path."""


def _recorder(
    settings: Settings,
    sequencer: Sequencer,
    defence: BulkReadDefence,
    anonymous: AnonymousRefusals,
    fingerprint_key: bytes,
) -> AccessRecorder:
    """Access-log entries, budgets and the bulk-read defence behind them."""
    return AccessRecorder(
        sequencer,
        BudgetPolicy(settings),
        fingerprint_key,
        defence,
        anonymous,
        settings.trusted_proxies,
    )


async def _start_records(
    stack: AsyncExitStack,
    settings: Settings,
    pool: asyncpg.Pool,
    keys: KeyHierarchy,
    schema: RecordSchema,
    defence: BulkReadDefence,
) -> RecordService:
    """The record service, watching every id it is asked for against the canaries."""
    canaries = Canaries(
        pool,
        await keys.derived_key(False, HONEYTOKEN_LABEL),
        refresh=settings.honeytoken_reload_seconds,
    )
    await canaries.start()
    stack.push_async_callback(canaries.stop)
    return RecordService(
        pool,
        keys,
        schema,
        search_page_max=settings.search_page_max,
        caseload_page_max=settings.caseload_page_max,
        on_honeytoken=defence.honeytoken,
        is_canary=canaries.named,
        on_integrity_failure=defence.integrity_failed,
        retention=RetentionRule(settings.retention_age_years, settings.retention_programme_end),
    )


def _start_anonymous(
    stack: AsyncExitStack, settings: Settings, sequencer: Sequencer
) -> AnonymousRefusals:
    """The counter of refusals with no verified actor. Stopped before the sequencer
    (the stack unwinds in reverse): its last counts are logged on the way out."""
    anonymous = AnonymousRefusals(
        sequencer,
        window=settings.anonymous_refusal_window_seconds,
        max_keys=settings.anonymous_refusal_keys_max,
    )
    anonymous.start()
    stack.push_async_callback(anonymous.stop)
    return anonymous


def _start_stats(
    stack: AsyncExitStack,
    settings: Settings,
    pool: asyncpg.Pool,
    records: RecordService,
    alerts: Alerts,
    kms: VaultKms,
) -> StatsService:
    """The BI lane: the scheduled rebuild of the aggregate (one replica at a time;
    none when `stats_refresh_seconds` is 0) and the queries over it."""
    if settings.stats_refresh_seconds > 0:
        refresher = StatsRefresher(
            pool,
            records.sealer,
            kms,
            records.is_canary,
            k=settings.stats_k,
            seal_after_days=settings.stats_seal_after_days,
            audit_seconds=settings.stats_audit_seconds,
            batch_size=settings.stats_batch_size,
            alerts=alerts,
        )
        job = StatsJob(pool, refresher, settings.stats_refresh_seconds)
        job.start()
        stack.push_async_callback(job.stop)
    return StatsService(pool, kms, settings.stats_k)


async def _start_watchers(
    stack: AsyncExitStack, settings: Settings, pool: asyncpg.Pool, alerts: Alerts
) -> None:
    """What watches off the request path: the anomaly rules and the alert webhook."""
    rules = RuleRunner(pool, alerts, settings)
    await rules.start()
    stack.push_async_callback(rules.stop)
    if settings.alert_webhook_url and settings.alert_webhook_secret_file:
        # Only processes with a webhook compete to send: one of them leads.
        webhook = WebhookSender(
            pool, settings.alert_webhook_url, load_secret(settings.alert_webhook_secret_file)
        )
        await webhook.start()
        stack.push_async_callback(webhook.stop)


def _verifiers(
    settings: Settings, signing: SigningKeys
) -> tuple[TokenVerifier, ExternalIssuers | None]:
    """Our own tokens' verifier, and the configured external OpenID providers'
    (auth/oidc.py; None when none is configured), routed to by the token's `iss` in
    auth/guards.py, with one verified-token cache for both (auth/verified.py)."""
    verified = VerifiedTokens(settings.token_cache_size)
    external = (
        ExternalIssuers(settings.oidc_issuers, cache=verified) if settings.oidc_issuers else None
    )
    return TokenVerifier(settings, signing, verified), external


def create_app(settings: Settings) -> Litestar:
    configure_telemetry()
    schema = record_schema.load()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Each resource is released by the stack in reverse order, however far
        # start-up got.
        async with AsyncExitStack() as stack:
            pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                reset=keep_session,
                server_settings={
                    "statement_timeout": str(settings.db_statement_timeout_ms),
                    "application_name": "vault-service",
                },
            )
            stack.push_async_callback(pool.close)
            kms = VaultKms(settings)
            stack.callback(kms.close)
            gate = AccountGate(
                pool,
                settings.database_url,
                settings.account_cache_seconds,
                settings.new_account_restriction_hours * 3600,
            )
            keys = KeyHierarchy(
                kms,
                pool,
                ttl=settings.branch_key_ttl_seconds,
                max_uses=settings.branch_key_max_uses,
            )
            signing = SigningKeys(kms)
            await signing.refresh()  # fail fast: no verification keys, no service
            await gate.start()
            stack.push_async_callback(gate.stop)
            # A retired signing version stops verifying within minutes, not at restart.
            refresher = asyncio.create_task(_refresh_forever(signing, 300.0))
            stack.callback(refresher.cancel)
            # The access log: the tree writer, fed by the integrator (one leader among
            # the replicas) from the pending queue that requests write through the
            # sequencer.
            tree = AccessLog(pool)
            await tree.start()
            stack.push_async_callback(tree.stop)
            integrator = Integrator(pool, tree, enabled=settings.audit_integrator)
            await integrator.start()
            stack.push_async_callback(integrator.stop)
            sequencer = Sequencer(pool, on_commit=integrator.wake)
            sequencer.start()
            stack.push_async_callback(sequencer.stop)
            alerts = Alerts(pool)
            defence = BulkReadDefence(
                pool, alerts, suspend_after=settings.suspend_after_refusals_hour
            )
            await _start_watchers(stack, settings, pool, alerts)
            anonymous = _start_anonymous(stack, settings, sequencer)
            recorder = _recorder(
                settings,
                sequencer,
                defence,
                anonymous,
                await keys.derived_key(False, FINGERPRINT_LABEL),
            )
            records = await _start_records(stack, settings, pool, keys, schema, defence)
            publisher = CheckpointPublisher(
                pool,
                kms,
                settings.audit_origin,
                settings.checkpoint_interval_seconds,
                on_alert=alerts.critical,
                witnesses=settings.audit_witnesses,
            )
            await publisher.start()
            stack.push_async_callback(publisher.stop)
            state = app.state
            state.settings = settings
            state.pool = pool
            state.kms = kms
            state.key_hierarchy = keys
            state.signing_keys = signing
            state.token_issuer = TokenIssuer(settings, kms, signing)
            state.token_verifier, state.external_issuers = _verifiers(settings, signing)
            state.account_gate = gate
            state.records = records
            state.custody = CustodyService(
                records,
                break_glass_minutes=settings.break_glass_minutes,
                break_glass_daily_limit=settings.break_glass_daily_limit,
                restriction_seconds=settings.new_account_restriction_hours * 3600,
                transfer_acceptance_days=settings.transfer_acceptance_days,
            )
            # The access log's collaborators.
            state.update(
                {
                    "access_log": tree,
                    "integrator": integrator,
                    "sequencer": sequencer,
                    "recorder": recorder,
                    "anonymous_refusals": anonymous,
                    "alerts": alerts,
                    "audit_proofs": AuditProofs(pool, kms, settings.audit_origin),
                    "checkpoints": publisher,
                    # The BI lane's queries, and its scheduled rebuild.
                    "stats": _start_stats(stack, settings, pool, records, alerts, kms),
                }
            )
            log.info("service_started", version=__version__)
            yield

    cors = (
        CORSConfig(
            allow_origins=list(settings.cors_origins),
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
        if settings.cors_origins
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
        request_max_body_size=settings.max_body_bytes,
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
