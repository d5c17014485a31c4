"""`vault-service keys`: the key inventory, what is due for rotation, and the online,
resumable rotations. Rotations run on the admin's own login (each step and its
access-log entry in one transaction) with the service's Vault configuration for the
rewraps, and a key admin's own VAULT_TOKEN for the Vault steps."""

from __future__ import annotations

import argparse
import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

from vault_service.cli.arguments import batch_size, uuid_arg
from vault_service.cli.logins import admin_login
from vault_service.errors import VaultServiceError
from vault_service.settings import OperatorVault, Settings

__all__ = ["register"]


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="key inventory and rotations").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser("list", help="transit keys, signing key versions, branch keys").set_defaults(
        run=_list
    )
    status = keys.add_parser("status", help="key versions, ages, and what is due for rotation")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status)
    rotate = keys.add_parser(
        "rotate",
        help="online, resumable rotations (admin login, the service's Vault configuration, "
        "and VAULT_TOKEN of a key admin for the Vault steps)",
    ).add_subparsers(dest="target", required=True)
    kek = rotate.add_parser(
        "kek", help="rotate the branch-key KEK and rewrap every branch key inside Vault"
    )
    kek.add_argument(
        "--retire", action="store_true", help="then raise min_decryption_version to the new version"
    )
    branch = rotate.add_parser(
        "branch",
        help="a new branch-key version per structure, record keys rewrapped under it, "
        "the old version deleted once unused",
    )
    records = rotate.add_parser(
        "records",
        help="re-seal every record's fields under a new record key (a data key may have leaked)",
    )
    signing = [
        rotate.add_parser(
            name,
            help=f"a new version of the {what} signing key; --retire once the older "
            "versions may stop verifying",
        )
        for name, what in (("token", "token"), ("checkpoint", "checkpoint"))
    ]
    for command in signing:
        command.add_argument(
            "--retire", action="store_true", help="raise min_decryption_version to the latest"
        )
    for command in (branch, records):
        which = command.add_mutually_exclusive_group(required=True)
        which.add_argument("--structure", type=uuid_arg, action="append", help="repeatable")
        which.add_argument("--all", action="store_true", help="every structure")
    for command in (kek, branch, records, *signing):
        command.set_defaults(run=_rotate_command)
        command.add_argument(
            "--dry-run", action="store_true", help="say what would be done, do nothing"
        )
        command.add_argument("--json", action="store_true")
        command.add_argument(
            "--batch-size",
            type=batch_size,
            metavar="1..10000",
            help="rows per transaction (default: VAULT_SERVICE_ROTATION_BATCH_SIZE)",
        )


async def _key_inventory(settings: Settings) -> dict[str, Any]:
    from vault_service.kms import SERVICE_KEYS
    from vault_service.services import connection, vault

    async with connection(settings.database.url) as conn:
        rows = await conn.fetch(
            """SELECT k.structure_id, k.version, k.created_at,
                      split_part(k.wrapped_key, ':', 2) AS kek_version,
                      (SELECT count(*) FROM records r WHERE r.structure_id = k.structure_id
                         AND r.branch_key_version = k.version) AS records
               FROM structure_keys k ORDER BY k.structure_id, k.version"""
        )
    async with AsyncExitStack() as stack:
        kms = vault(stack, settings)
        signing = {}
        for name, kind in SERVICE_KEYS.items():
            if kind == "ed25519":
                latest, keys = await kms.public_keys(name)
                signing[name] = {"latest_version": latest, "live_versions": sorted(keys)}
    return {
        "transit_keys": list(SERVICE_KEYS),
        "signing_keys": signing,
        "branch_keys": [
            {
                "structure_id": str(r["structure_id"]),
                "version": r["version"],
                "wrapped_under": r["kek_version"],
                "records": r["records"],
                "created_at": r["created_at"].isoformat(),
            }
            for r in rows
        ],
    }


def _list(_args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_key_inventory(Settings.from_env())), indent=2))
    return 0


async def _key_status(settings: Settings) -> dict[str, Any]:
    from vault_service.rotation.inventory import key_status
    from vault_service.services import connection, vault

    async with connection(settings.database.url) as conn, AsyncExitStack() as stack:
        return await key_status(settings, conn, vault(stack, settings))


def _status(args: argparse.Namespace) -> int:
    from vault_service.rotation.inventory import render_text

    status = asyncio.run(_key_status(Settings.from_env()))
    print(json.dumps(status, indent=2) if args.json else render_text(status))
    return 0


async def _rotate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import asyncpg

    from vault_service.rotation.branch import rotate_branch
    from vault_service.rotation.kek import rotate_kek
    from vault_service.rotation.records import rotate_records
    from vault_service.rotation.signing import rotate_signing
    from vault_service.services import connection, key_admin, vault

    dsn = admin_login()
    operator = OperatorVault.from_env()
    batch = args.batch_size or settings.rotation.batch_size
    async with AsyncExitStack() as stack:
        conn = await stack.enter_async_context(connection(dsn))
        kms = vault(stack, settings)
        try:
            if args.target == "records":
                return (
                    await rotate_records(
                        conn,
                        kms,
                        None if args.all else args.structure,
                        batch_size=batch,
                        dry_run=args.dry_run,
                        max_rate=settings.rotation.records_per_second,
                    )
                ).report()
            if args.target in ("token", "checkpoint"):
                return await rotate_signing(
                    conn,
                    kms,
                    lambda: key_admin(settings, operator),
                    args.target,
                    retire=args.retire,
                    dry_run=args.dry_run,
                    token_lifetime_seconds=settings.tokens.max_lifetime_seconds,
                )
            if args.target == "branch":
                # How long a service process may still wrap new records under the old
                # version: its branch-key TTL, plus a write in flight.
                ttl = settings.keys.ttl_seconds + settings.database.statement_timeout_ms / 1000
                return (
                    await rotate_branch(
                        conn,
                        kms,
                        None if args.all else args.structure,
                        batch_size=batch,
                        ttl_seconds=ttl,
                        dry_run=args.dry_run,
                    )
                ).report()
            run = await rotate_kek(
                conn,
                kms,
                lambda: key_admin(settings, operator),
                batch_size=batch,
                retire=args.retire,
                dry_run=args.dry_run,
            )
            return run.report()
        except asyncpg.PostgresError as exc:
            # The database's text is not echoed; its class says enough to an operator.
            raise VaultServiceError(
                f"the database refused ({type(exc).__name__}): is "
                "VAULT_SERVICE_ADMIN_DATABASE_URL your own admin login?"
            ) from None


def _print_rotation(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    verb = "would " if report["dry_run"] else ""
    if report["kind"] == "records":
        print(
            f"records: {verb}start {report['started']} structures; {report['resealed']} of "
            f"{report['to_reseal']} records re-sealed in {report['batches']} batches"
        )
        return
    if report["kind"] == "branch":
        print(
            f"branch keys: {verb}rotate {report['rotated']} structures; "
            f"{report['rewrapped']} of {report['to_rewrap']} record keys rewrapped in "
            f"{report['batches']} batches; {report['destroyed']} old versions destroyed"
        )
        return
    if report["rotated"] or (report["kind"] != "kek" and not report["retire"]):
        print(f"{report['key']}: {verb}rotate to v{report['target_version']}")
    if report["kind"] != "kek":
        if report["retired"]:
            print(f"{report['key']}: versions below v{report['min_decryption_version']} retired")
        return
    print(
        f"{report['key']}: {report['rewrapped']} of {report['to_rewrap']} branch keys "
        f"rewrapped to v{report['target_version']} in {report['batches']} batches"
    )
    if report["retired"]:
        print(f"{report['key']}: versions below v{report['min_decryption_version']} retired")


def _rotate_command(args: argparse.Namespace) -> int:
    _print_rotation(asyncio.run(_rotate(args, Settings.from_env())), args.json)
    return 0
