"""Liveness and readiness (API.md): readiness checks PostgreSQL and Vault."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from litestar import Request, Response, get

from vault_service.kms import VaultKms

_PUBLIC = {"public": True, "exclude_from_auth": True}
_VAULT_CHECK_SECONDS = 5.0


@get("/health/live", opt=_PUBLIC)
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", opt=_PUBLIC)
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    state = request.app.state
    pool: asyncpg.Pool = state.pool
    kms: VaultKms = state.kms
    checks: dict[str, bool] = {}
    try:
        async with pool.acquire(timeout=2) as conn:
            checks["database"] = await conn.fetchval("SELECT true", timeout=2) is True
    except (OSError, TimeoutError, asyncpg.PostgresError):
        checks["database"] = False
    # Probes come every few seconds from every load balancer: remember Vault's answer
    # briefly rather than turning probes into Vault traffic.
    now = time.monotonic()
    last = getattr(state, "vault_health", None)
    if last is None or now - last[0] > _VAULT_CHECK_SECONDS:
        last = (now, await kms.healthy())
        state.vault_health = last
    checks["vault"] = bool(last[1])
    # The access log's sequencer (requests' entries) and tree writer: without them no
    # data route can answer (fail closed).
    sequencer = getattr(state, "sequencer", None)
    access_log = getattr(state, "access_log", None)
    checks["access_log"] = bool(
        sequencer is not None
        and sequencer.running
        and access_log is not None
        and access_log.running
    )
    ok = all(checks.values())
    return Response(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )
