"""`vault-service records` and `vault-service retention`: legal holds and erasure
(four-eyes), and retention by the decree, on an admin's own login."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from vault_service.cli.arguments import uuid_arg
from vault_service.cli.logins import admin_login
from vault_service.cli.output import print_json
from vault_service.settings import Settings

__all__ = ["register"]


def register(sub: Any) -> None:
    from vault_service.records.retention import ERASE_REASONS, HOLD_REASONS, RELEASE_REASONS

    retention = sub.add_parser("retention", help="record retention (admin login)")
    retention_cmd = retention.add_subparsers(dest="action", required=True)
    run = retention_cmd.add_parser(
        "run", help="date, anonymise and purge what the decree says is due (schedulable)"
    )
    run.add_argument("--dry-run", action="store_true", help="count only, change nothing")
    run.add_argument("--json", action="store_true", help="JSON (the default output too)")
    run.set_defaults(run=_retention)
    records = sub.add_parser("records", help="legal holds and erasure (admin login, four-eyes)")
    records_cmd = records.add_subparsers(dest="action", required=True)
    for name, reasons, text, default in (
        ("hold", HOLD_REASONS, "request a legal hold", None),
        ("release", RELEASE_REASONS, "request the release of a hold", "proceedings_closed"),
        ("erase", ERASE_REASONS, "request crypto-shredding", "data_subject_request"),
    ):
        act = records_cmd.add_parser(name, help=f"{text} (a second admin approves)")
        act.add_argument("record", type=uuid_arg)
        act.add_argument("--reason", choices=reasons, required=default is None, default=default)
        act.set_defaults(run=_records)
    for name in ("approve", "refuse"):
        decide = records_cmd.add_parser(name, help=f"{name} another admin's pending request")
        decide.add_argument("request", type=uuid_arg)
        decide.set_defaults(run=_records)
    pending = records_cmd.add_parser("requests", help="pending (or --all) record requests")
    pending.add_argument("--all", action="store_true")
    pending.set_defaults(run=_records)


async def _records_command(args: argparse.Namespace) -> Any:
    """Legal holds and erasures, four-eyes, on the admin's own login."""
    from vault_service.records.retention import RecordAdmin
    from vault_service.services import login_pool

    async with login_pool(admin_login()) as pool:
        admin = RecordAdmin(pool)
        if args.action == "requests":
            return await admin.requests(None if args.all else "pending")
        if args.action in ("approve", "refuse"):
            kind, record_id = await admin.decide(args.request, approve=args.action == "approve")
            return {
                "request_id": str(args.request),
                "kind": kind,
                "record_id": str(record_id),
                "decision": args.action,
            }
        request_id = await admin.request(args.action, args.record, args.reason)
        return {
            "request_id": str(request_id),
            "kind": args.action,
            "record_id": str(args.record),
            "state": "pending",
            "next": "a second admin runs `records approve`",
        }


def _records(args: argparse.Namespace) -> int:
    return print_json(asyncio.run(_records_command(args)))


async def _retention_run(settings: Settings, dry_run: bool) -> dict[str, Any]:
    """Retention by the decree, on an admin's own login (a dedicated one for the
    scheduler): its acts are logged under that account through vs_log_admin_act.
    Records written before the service dated them are dated first, with the
    service's own role and keys (the birth date is encrypted)."""
    from vault_service.records.retention import LogDecrypted, RecordAdmin
    from vault_service.services import login_pool, service_side

    dsn = admin_login("set VAULT_SERVICE_ADMIN_DATABASE_URL to an admin login")

    async def backfill(log: LogDecrypted) -> int:
        async with service_side(settings) as service:
            return await service.records.date_undated(settings.retention.batch_size, log)

    async with login_pool(dsn, max_size=1) as pool:
        report = await RecordAdmin(pool).run(
            purge_after_days=settings.retention.purge_after_days,
            batch_size=settings.retention.batch_size,
            dry_run=dry_run,
            backfill=backfill,
        )
    return {
        "dry_run": report.dry_run,
        "locked_out": report.locked_out,
        "due": report.due,
        "held": report.held,
        "undated": report.undated,
        "dated": report.dated,
        "anonymised": report.anonymised,
        "purgeable": report.purgeable,
        "purged": report.purged,
        "anonymised_ids": [str(i) for i in report.anonymised_ids],
        "purged_ids": [str(i) for i in report.purged_ids],
    }


def _retention(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    print(json.dumps(asyncio.run(_retention_run(settings, args.dry_run)), indent=2))
    return 0
