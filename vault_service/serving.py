"""Serving the API: the checks that its dependencies answer, then granian.

Shared by `vault-service serve` and `vault-service dev` (which serves in its own
process once its embedded servers are up).
"""

from __future__ import annotations

import asyncio

import asyncpg

from vault_service.settings import Settings

__all__ = ["serve"]


async def _preflight(settings: Settings) -> None:
    """PostgreSQL and Vault answer before any worker starts: a worker that fails its
    start-up prints a traceback of the framework's, and the operator needs one line."""
    from vault_service.errors import KmsUnavailable
    from vault_service.kms import VaultKms

    conn = await asyncpg.connect(settings.database_url, timeout=10)
    await conn.close()
    kms = VaultKms(settings)
    try:
        if not await kms.healthy():
            raise KmsUnavailable(
                "Vault refused its health check: down, sealed or credentials refused"
            )
    finally:
        kms.close()


def serve(settings: Settings) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    asyncio.run(_preflight(settings))

    server = Granian(
        "vault_service.asgi:app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        log_access=False,  # our TelemetryMiddleware logs route templates, never raw paths
    )
    server.serve()
    return 0
