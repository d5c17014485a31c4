"""`vault-service migrate` (the owner role) and `vault-service vault-setup` (an
operator's Vault token): setting up the two stores, never with the service's
credentials."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from vault_service.errors import ConfigurationError
from vault_service.settings import Logins, OperatorVault

__all__ = ["register"]


def register(sub: Any) -> None:
    migrate = sub.add_parser("migrate", help="apply pending migrations (owner role)")
    migrate.set_defaults(run=_migrate)
    setup = sub.add_parser(
        "vault-setup", help="enable transit and create the keys (operator token)"
    )
    setup.set_defaults(run=_vault_setup)


async def _apply(dsn: str) -> list[str]:
    from vault_service import migrations
    from vault_service.services import connection

    async with connection(dsn) as conn:
        return await migrations.migrate(conn)


def _migrate(_args: argparse.Namespace) -> int:
    dsn = Logins.from_env().owner
    if not dsn:
        raise ConfigurationError(
            "VAULT_SERVICE_MIGRATIONS_DATABASE_URL (the owner role) is not set"
        )
    applied = asyncio.run(_apply(dsn))
    print(json.dumps({"applied": applied}))
    return 0


def _vault_setup(_args: argparse.Namespace) -> int:
    """Transit keys, with an operator's token from VAULT_TOKEN (never the service's)."""
    from vault_service.kms.vault import setup_transit_as

    operator = OperatorVault.from_env()
    if not operator.addr or not operator.token:
        raise ConfigurationError("set VAULT_ADDR and VAULT_TOKEN (an operator token)")
    created = setup_transit_as(
        operator.addr, operator.token, cacert=operator.cacert, mount=operator.transit_mount
    )
    print(json.dumps({"created": created}))
    return 0
