"""`vault-service honeytokens` and `vault-service alerts`: the bulk-read defence's admin
commands. Canaries are made with the service's configuration (its role, its keys),
their canary accounts on the admin's own login; alerts are listed and acknowledged on
the admin's own login."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from vault_service.cli.arguments import uuid_arg
from vault_service.cli.logins import admin_login
from vault_service.cli.output import print_json
from vault_service.errors import InvalidParameter
from vault_service.settings import Settings

__all__ = ["register"]


def register(sub: Any) -> None:
    honey = sub.add_parser("honeytokens", help="canary records (admin login)").add_subparsers(
        dest="action", required=True
    )
    for name, text in (
        ("plant", "plant canary records in one structure, or in every one"),
        ("rotate", "plant new canaries, then retire the structure's earlier ones"),
    ):
        planting = honey.add_parser(name, help=text)
        planting.add_argument("--structure", type=uuid_arg, help="default: every structure")
        planting.add_argument("--count", type=int, choices=range(1, 21), default=2)
        planting.set_defaults(run=_honeytokens)
    honey.add_parser("list", help="canaries, planted and retired, as JSON").set_defaults(
        run=_honeytokens
    )
    alert_cmd = sub.add_parser("alerts", help="alerts (admin login)").add_subparsers(
        dest="action", required=True
    )
    alert_list = alert_cmd.add_parser("list", help="open (or --all) alerts, as JSON")
    alert_list.add_argument("--all", action="store_true")
    alert_list.set_defaults(run=_alerts)
    ack = alert_cmd.add_parser("ack", help="acknowledge an open alert")
    ack.add_argument("alert", type=uuid_arg)
    ack.add_argument("--comment", required=True, help="a short note: no name, no number")
    ack.set_defaults(run=_alerts)


async def _plant(args: argparse.Namespace, settings: Settings) -> Any:
    from vault_service.records.honeytokens import HONEYTOKEN_LABEL, HoneytokenPlanter
    from vault_service.services import login_pool, service_side

    dsn = admin_login()
    async with login_pool(dsn) as admin, service_side(settings, max_size=4) as service:
        key = await service.keys.derived_key(False, HONEYTOKEN_LABEL)
        planter = HoneytokenPlanter(admin, service.pool, service.records, key)
        if args.action == "list":
            return await planter.list()
        return await planter.plant(args.structure, args.count, rotate=args.action == "rotate")


def _honeytokens(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    print(json.dumps(asyncio.run(_plant(args, settings)), indent=2))
    return 0


async def _alert_command(args: argparse.Namespace) -> Any:
    from vault_service.auth.admin import AccountAdmin
    from vault_service.auth.guards import plain_reference
    from vault_service.services import login_pool

    dsn = admin_login()
    if args.action == "ack" and not plain_reference(args.comment):
        # The comment is kept with the alert: like a purpose detail, it is no place
        # for a name or a number.
        raise InvalidParameter("the comment must be a short plain note (120 characters)")
    async with login_pool(dsn) as pool:
        admin = AccountAdmin(pool)
        if args.action == "list":
            return await admin.alerts(None if args.all else "open")
        await admin.ack_alert(args.alert, args.comment)
        return {"alert_id": str(args.alert), "state": "acknowledged"}


def _alerts(args: argparse.Namespace) -> int:
    return print_json(asyncio.run(_alert_command(args)))
