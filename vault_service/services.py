"""The composition root: every collaborator of a process, built from `Settings` here.

The API server (`create_app`'s lifespan), every CLI command, the dev server and the
import workers build what they need through this module, and nothing else constructs
a pool, a Vault client, the key hierarchy or a service. So a collaborator gets the same
arguments wherever it runs (an import worker's record service applies the retention
rule the server applies), and a reader finds the wiring in one file.

Every builder that holds a resource takes the `AsyncExitStack` of its caller and
registers its release there: whatever fails half-way, what was started is stopped,
in reverse order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from vault_service.access.anonymous import AnonymousRefusals
from vault_service.access.budgets import BudgetPolicy
from vault_service.access.defence import BulkReadDefence
from vault_service.access.recording import FINGERPRINT_LABEL, AccessRecorder
from vault_service.access.sequencer import Sequencer
from vault_service.alerts.rules import RuleRunner
from vault_service.alerts.store import Alerts
from vault_service.alerts.webhook import WebhookSender, load_secret
from vault_service.audit.checkpoints import CheckpointPublisher
from vault_service.audit.integrator import Integrator
from vault_service.audit.log import AccessLog
from vault_service.audit.proofs import AuditProofs
from vault_service.auth.accounts import AccountGate
from vault_service.auth.oidc import ExternalIssuers
from vault_service.auth.tokens import SigningKeys, TokenIssuer, TokenVerifier
from vault_service.auth.verified import VerifiedTokens
from vault_service.crypto.keys import KeyHierarchy
from vault_service.errors import ConfigurationError, VaultServiceError
from vault_service.kms import TransitKeyAdmin, VaultKms
from vault_service.records import schema as record_schema
from vault_service.records.custody import CustodyService
from vault_service.records.honeytokens import HONEYTOKEN_LABEL, Canaries
from vault_service.records.retention import RetentionRule
from vault_service.records.schema import RecordSchema
from vault_service.records.sealing import Sealer
from vault_service.records.service import RecordService
from vault_service.settings import OperatorVault, Settings
from vault_service.stats.refresh import StatsJob, StatsRefresher
from vault_service.stats.service import StatsService

__all__ = [
    "ServiceSide",
    "connection",
    "database_pool",
    "import_worker_records",
    "keep_session",
    "key_admin",
    "login_pool",
    "record_service",
    "run_integrator",
    "service_side",
    "start_server",
    "token_issuer",
    "vault",
]

log = structlog.get_logger(__name__)


# --- the pieces ----------------------------------------------------------------------
async def keep_session(_conn: asyncpg.Connection[Any]) -> None:
    """Pool release without asyncpg's reset round trip (`RESET ALL; UNLISTEN *; ...`).

    Pooled connections never carry session state here: settings are fixed at connect
    time, LISTEN and advisory locks use dedicated connections, and every transaction
    is closed by its context manager. One query less per request on the hot path."""


async def database_pool(
    stack: AsyncExitStack, dsn: str, *, min_size: int, max_size: int
) -> asyncpg.Pool:
    """A pool on one login (the service's, or an admin's own), closed by the stack."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
    stack.push_async_callback(pool.close)
    return pool


@asynccontextmanager
async def login_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 2
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on one login for the length of a command (an admin's own, most often)."""
    async with AsyncExitStack() as stack:
        yield await database_pool(stack, dsn, min_size=min_size, max_size=max_size)


@asynccontextmanager
async def connection(
    dsn: str, *, connect_timeout: float = 60
) -> AsyncIterator[asyncpg.Connection[Any]]:
    """One session on one login for the length of a command (a lock, a migration)."""
    conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    try:
        yield conn
    finally:
        await conn.close()


async def _server_pool(stack: AsyncExitStack, settings: Settings) -> asyncpg.Pool:
    """The API server's pool: its size, statement timeout and no reset round trip."""
    db = settings.database
    pool = await asyncpg.create_pool(
        db.url,
        min_size=db.pool_min,
        max_size=db.pool_max,
        reset=keep_session,
        server_settings={
            "statement_timeout": str(db.statement_timeout_ms),
            "application_name": "vault-service",
        },
    )
    stack.push_async_callback(pool.close)
    return pool


def vault(stack: AsyncExitStack, settings: Settings) -> VaultKms:
    """The service's Vault client (its own identity), closed by the stack."""
    kms = VaultKms(settings.vault)
    stack.callback(kms.close)
    return kms


def key_admin(settings: Settings, operator: OperatorVault) -> TransitKeyAdmin:
    """The key admin's Vault client (policy `key-admin`), from their own VAULT_TOKEN:
    rotating and retiring are the operator's, never the service's."""
    if not operator.token:
        raise ConfigurationError("set VAULT_TOKEN to a key admin's token (policy key-admin)")
    return TransitKeyAdmin(
        operator.addr or settings.vault.addr,
        operator.token,
        mount=settings.vault.transit_mount,
        cacert=operator.cacert or settings.vault.cacert,
    )


def key_hierarchy(settings: Settings, kms: VaultKms, pool: asyncpg.Pool) -> KeyHierarchy:
    return KeyHierarchy(kms, pool, ttl=settings.keys.ttl_seconds, max_uses=settings.keys.max_uses)


def record_service(
    settings: Settings,
    pool: asyncpg.Pool,
    keys: KeyHierarchy,
    schema: RecordSchema | None = None,
    *,
    defence: BulkReadDefence | None = None,
    is_canary: Callable[[Any], bool] | None = None,
) -> RecordService:
    """The one constructor of the record service. In the API server it is watched by
    the bulk-read defence (honeytokens, integrity failures); in a job it is not."""
    return RecordService(
        pool,
        keys,
        record_schema.load() if schema is None else schema,
        search_page_max=settings.records.search_page_max,
        caseload_page_max=settings.records.caseload_page_max,
        on_honeytoken=None if defence is None else defence.honeytoken,
        is_canary=is_canary,
        on_integrity_failure=None if defence is None else defence.integrity_failed,
        retention=RetentionRule(settings.retention.age_years, settings.retention.programme_end),
    )


def token_issuer(settings: Settings, kms: VaultKms) -> TokenIssuer:
    return TokenIssuer(settings, kms, SigningKeys(kms))


def stats_refresher(
    settings: Settings,
    pool: asyncpg.Pool,
    sealer: Sealer,
    kms: VaultKms,
    is_canary: Callable[[Any], bool],
    alerts: Alerts,
) -> StatsRefresher:
    stats = settings.stats
    return StatsRefresher(
        pool,
        sealer,
        kms,
        is_canary,
        k=stats.k,
        seal_after_days=stats.seal_after_days,
        audit_seconds=stats.audit_seconds,
        batch_size=stats.batch_size,
        alerts=alerts,
    )


# --- what runs with the service's identity outside the server -------------------------
@dataclass(frozen=True)
class ServiceSide:
    """The service's own login, Vault identity, key hierarchy and record service, as
    a job outside the API server holds them (honeytokens, imports, the statistics
    seal, retention's dating of old records)."""

    pool: asyncpg.Pool
    kms: VaultKms
    keys: KeyHierarchy
    records: RecordService


@asynccontextmanager
async def service_side(
    settings: Settings, *, min_size: int = 1, max_size: int = 2
) -> AsyncIterator[ServiceSide]:
    async with AsyncExitStack() as stack:
        pool = await database_pool(
            stack, settings.database.url, min_size=min_size, max_size=max_size
        )
        kms = vault(stack, settings)
        keys = key_hierarchy(settings, kms, pool)
        yield ServiceSide(pool, kms, keys, record_service(settings, pool, keys))


async def import_worker_records() -> RecordService:
    """An import worker's record service (a spawned process: its own settings, one
    database session, its own Vault client), kept for the process's life."""
    settings = Settings.from_env()
    pool = await asyncpg.create_pool(settings.database.url, min_size=1, max_size=1)
    kms = VaultKms(settings.vault)
    return record_service(settings, pool, key_hierarchy(settings, kms, pool))


# --- the API server --------------------------------------------------------------------
async def _refresh_forever(keys: SigningKeys, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await keys.refresh()
        except VaultServiceError:
            log.warning("signing_keys_refresh_failed")  # keep the last known keys


def _verifiers(
    settings: Settings, signing: SigningKeys
) -> tuple[TokenVerifier, ExternalIssuers | None]:
    """Our own tokens' verifier, and the configured external OpenID providers'
    (auth/oidc.py; None when none is configured), routed to by the token's `iss` in
    auth/guards.py, with one verified-token cache for both (auth/verified.py)."""
    tokens = settings.tokens
    verified = VerifiedTokens(tokens.cache_size)
    external = ExternalIssuers(tokens.oidc_issuers, cache=verified) if tokens.oidc_issuers else None
    return TokenVerifier(settings, signing, verified), external


async def _start_log(
    stack: AsyncExitStack, settings: Settings, pool: asyncpg.Pool
) -> tuple[AccessLog, Integrator, Sequencer]:
    """The access log: the tree writer, fed by the integrator (one leader among the
    replicas) from the pending queue that requests write through the sequencer."""
    tree = AccessLog(pool)
    await tree.start()
    stack.push_async_callback(tree.stop)
    integrator = Integrator(pool, tree, enabled=settings.log.integrator)
    await integrator.start()
    stack.push_async_callback(integrator.stop)
    sequencer = Sequencer(pool, on_commit=integrator.wake)
    sequencer.start()
    stack.push_async_callback(sequencer.stop)
    return tree, integrator, sequencer


async def _start_watchers(
    stack: AsyncExitStack, settings: Settings, pool: asyncpg.Pool, alerts: Alerts
) -> None:
    """What watches off the request path: the anomaly rules and the alert webhook."""
    rules = RuleRunner(pool, alerts, settings)
    await rules.start()
    stack.push_async_callback(rules.stop)
    webhook = settings.webhook
    if webhook.url and webhook.secret_file:
        # Only processes with a webhook compete to send: one of them leads.
        sender = WebhookSender(pool, webhook.url, load_secret(webhook.secret_file))
        await sender.start()
        stack.push_async_callback(sender.stop)


def _start_anonymous(
    stack: AsyncExitStack, settings: Settings, sequencer: Sequencer
) -> AnonymousRefusals:
    """The counter of refusals with no verified actor. Stopped before the sequencer
    (the stack unwinds in reverse): its last counts are logged on the way out."""
    anonymous = AnonymousRefusals(
        sequencer,
        window=settings.log.anonymous_refusal_window_seconds,
        max_keys=settings.log.anonymous_refusal_keys_max,
    )
    anonymous.start()
    stack.push_async_callback(anonymous.stop)
    return anonymous


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
        refresh=settings.records.honeytoken_reload_seconds,
    )
    await canaries.start()
    stack.push_async_callback(canaries.stop)
    return record_service(settings, pool, keys, schema, defence=defence, is_canary=canaries.named)


def _start_stats(
    stack: AsyncExitStack,
    settings: Settings,
    pool: asyncpg.Pool,
    records: RecordService,
    alerts: Alerts,
    kms: VaultKms,
) -> StatsService:
    """The BI lane: the scheduled rebuild of the aggregate (one replica at a time;
    none when `stats.refresh_seconds` is 0) and the queries over it."""
    if settings.stats.refresh_seconds > 0:
        refresher = stats_refresher(settings, pool, records.sealer, kms, records.is_canary, alerts)
        job = StatsJob(pool, refresher, settings.stats.refresh_seconds)
        job.start()
        stack.push_async_callback(job.stop)
    return StatsService(pool, kms, settings.stats.k)


async def start_server(
    stack: AsyncExitStack, settings: Settings, schema: RecordSchema
) -> dict[str, object]:
    """Everything the API server holds, started in dependency order, each released by
    `stack` in reverse however far start-up got. Returns the application's state (the
    names route handlers and the request gate look up)."""
    pool = await _server_pool(stack, settings)
    kms = vault(stack, settings)
    gate = AccountGate(
        pool,
        settings.database.url,
        settings.accounts.cache_seconds,
        settings.accounts.restriction_seconds,
    )
    keys = key_hierarchy(settings, kms, pool)
    signing = SigningKeys(kms)
    await signing.refresh()  # fail fast: no verification keys, no service
    await gate.start()
    stack.push_async_callback(gate.stop)
    # A retired signing version stops verifying within minutes, not at restart.
    refresher = asyncio.create_task(_refresh_forever(signing, 300.0))
    stack.callback(refresher.cancel)
    tree, integrator, sequencer = await _start_log(stack, settings, pool)
    alerts = Alerts(pool)
    defence = BulkReadDefence(
        pool, alerts, suspend_after=settings.budgets.suspend_after_refusals_hour
    )
    await _start_watchers(stack, settings, pool, alerts)
    anonymous = _start_anonymous(stack, settings, sequencer)
    recorder = AccessRecorder(
        sequencer,
        BudgetPolicy(settings.budgets),
        await keys.derived_key(False, FINGERPRINT_LABEL),
        defence,
        anonymous,
        settings.server.trusted_proxies,
    )
    records = await _start_records(stack, settings, pool, keys, schema, defence)
    publisher = CheckpointPublisher(
        pool,
        kms,
        settings.log.origin,
        settings.log.checkpoint_interval_seconds,
        on_alert=alerts.critical,
        witnesses=settings.log.witnesses,
    )
    await publisher.start()
    stack.push_async_callback(publisher.stop)
    verifier, external = _verifiers(settings, signing)
    return {
        "settings": settings,
        "pool": pool,
        "kms": kms,
        "key_hierarchy": keys,
        "signing_keys": signing,
        "token_issuer": token_issuer(settings, kms),
        "token_verifier": verifier,
        "external_issuers": external,
        "account_gate": gate,
        "records": records,
        "custody": CustodyService(
            records,
            break_glass_minutes=settings.records.break_glass_minutes,
            break_glass_daily_limit=settings.records.break_glass_daily_limit,
            restriction_seconds=settings.accounts.restriction_seconds,
            transfer_acceptance_days=settings.records.transfer_acceptance_days,
        ),
        # The access log's collaborators.
        "access_log": tree,
        "integrator": integrator,
        "sequencer": sequencer,
        "recorder": recorder,
        "anonymous_refusals": anonymous,
        "alerts": alerts,
        "audit_proofs": AuditProofs(pool, kms, settings.log.origin),
        "checkpoints": publisher,
        # The BI lane's queries, and its scheduled rebuild.
        "stats": _start_stats(stack, settings, pool, records, alerts, kms),
    }


async def run_integrator(settings: Settings) -> int:
    """`vault-service audit integrate`: the integrator (audit/integrator.py) in a
    process of its own, so that hashing and tiles take nothing from the processes that
    serve requests; until SIGTERM or SIGINT."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        pool = await database_pool(stack, settings.database.url, min_size=2, max_size=4)
        tree = AccessLog(pool)
        await tree.start()
        integrator = Integrator(pool, tree, poll_seconds=0.1)
        await integrator.start()
        await stop.wait()
        await integrator.stop()
        await tree.stop()
    return 0
