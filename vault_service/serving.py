"""Serving the API: the checks that its dependencies answer, then granian.

Shared by `vault-service serve` and `vault-service dev` (which serves in its own
process once its embedded servers are up).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from vault_service.errors import KmsUnavailable
from vault_service.services import connection, vault
from vault_service.settings import Settings

__all__ = ["serve"]


async def _preflight(settings: Settings) -> None:
    """PostgreSQL and Vault answer before any worker starts: a worker that fails its
    start-up prints a traceback of the framework's, and the operator needs one line."""
    async with connection(settings.database.url, connect_timeout=10):
        pass
    async with AsyncExitStack() as stack:
        if not await vault(stack, settings).healthy():
            raise KmsUnavailable(
                "Vault refused its health check: down, sealed or credentials refused"
            )


def serve(settings: Settings) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    asyncio.run(_preflight(settings))

    server = Granian(
        "vault_service.asgi:app",
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.ASGI,
        workers=settings.server.workers,
        log_access=False,  # our TelemetryMiddleware logs route templates, never raw paths
    )
    server.serve()
    return 0
