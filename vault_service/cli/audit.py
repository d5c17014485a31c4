"""`vault-service audit` and `vault-service witness`: the access log's commands.

`audit verify`, `audit monitor` and `witness` are the tools outside parties run with
no database, no Vault and no settings: they are dispatched before any parsing
(`standalone`), and import nothing of the server. `audit integrate` runs the
integrator in a process of its own; `audit prune` removes entry bodies past their
retention on the retention role.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

__all__ = ["is_standalone", "register", "standalone"]


def is_standalone(argv: list[str]) -> bool:
    return argv[:2] in (["audit", "verify"], ["audit", "monitor"]) or argv[:1] == ["witness"]


def standalone(argv: list[str]) -> int:
    if argv[:2] == ["audit", "verify"]:
        from vault_service.audit.verify import main as verify_main

        return verify_main(argv[2:])
    if argv[:2] == ["audit", "monitor"]:
        from vault_service.audit.monitor import main as monitor_main

        return monitor_main(argv[2:])
    from vault_service.audit.witness import main as witness_main

    return witness_main(argv[1:])


def register(sub: Any) -> None:
    # Dispatched before parsing (main): run by a witness's operator, no settings needed.
    sub.add_parser(
        "witness", help="a C2SP witness cosigning checkpoints (keygen, serve)", add_help=False
    )
    audit = sub.add_parser("audit", help="the access log").add_subparsers(
        dest="action", required=True
    )
    audit.add_parser(
        "verify", help="offline verification of checkpoints, proofs and bundles", add_help=False
    )
    audit.add_parser(
        "monitor", help="follow the checkpoints; alert on a fork or rollback", add_help=False
    )
    audit.add_parser(
        "integrate",
        help="integrate the access log's pending entries into its tree until stopped "
        "(one leader among all that run it; replicas then set "
        "VAULT_SERVICE_AUDIT_INTEGRATOR=false)",
    ).set_defaults(run=_integrate_command)
    prune = audit.add_parser("prune", help="prune entry bodies past retention (retention role)")
    prune.add_argument("--older-than-days", type=int, default=214, help="default: 7 months")
    prune.set_defaults(run=_prune_command)


def _integrate_command(_args: argparse.Namespace) -> int:
    from vault_service.services import run_integrator
    from vault_service.settings import Settings

    return asyncio.run(run_integrator(Settings.from_env()))


async def _prune(days: int) -> int:
    import datetime

    from vault_service.audit.retention import prune
    from vault_service.errors import ConfigurationError
    from vault_service.services import connection
    from vault_service.settings import Logins

    dsn = Logins.from_env().retention
    if not dsn:
        raise ConfigurationError("VAULT_SERVICE_RETENTION_DATABASE_URL (retention role) is not set")
    async with connection(dsn) as conn:
        return await prune(conn, datetime.timedelta(days=days))


def _prune_command(args: argparse.Namespace) -> int:
    print(json.dumps({"pruned": asyncio.run(_prune(args.older_than_days))}))
    return 0
