"""`vault-service import`: a legacy export moved in. Sealed with the service's
configuration (its role for branch keys, its Vault access, in this process or in
worker processes), written and logged on the admin's own login."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from vault_service.cli.arguments import batch_size, bounded, workers
from vault_service.cli.logins import admin_login
from vault_service.errors import VaultServiceError
from vault_service.settings import Settings

__all__ = ["register"]

_REFUSALS_SHOWN = 20


def register(sub: Any) -> None:
    imp = sub.add_parser(
        "import",
        help="bulk import of a legacy export, JSON Lines (admin login, service configuration)",
    )
    imp.add_argument("file", type=Path, help="JSON Lines: legacy_id, structure, referent, record")
    imp.add_argument(
        "--structure-map",
        type=Path,
        required=True,
        help="JSON: structures (legacy code -> structure code), referents, referent_issuer",
    )
    imp.add_argument("--source", type=bounded(64), help="the legacy system's name (or in the map)")
    imp.add_argument("--dry-run", action="store_true", help="check and count; write nothing")
    imp.add_argument("--resume", action="store_true", help="continue an unfinished import")
    imp.add_argument("--batch-size", type=batch_size, help="records per batch")
    imp.add_argument(
        "--max-rate",
        type=int,
        help="records a second at most, 0 for no limit (VAULT_SERVICE_IMPORT_RECORDS_PER_SECOND)",
    )
    imp.add_argument(
        "--workers", type=workers, help="processes that seal (VAULT_SERVICE_IMPORT_WORKERS)"
    )
    imp.add_argument("--report", type=Path, help="write the summary and refusals (JSON) here")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(run=_run)


async def _import(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import asyncpg

    from vault_service.imports.importer import Importer, InvalidStructureMap, load_map
    from vault_service.imports.repository import ImportRepository
    from vault_service.imports.sealers import InProcess, LineSealer, WorkerPool
    from vault_service.services import connection, import_worker_records, login_pool, service_side

    smap = load_map(args.structure_map)
    source = args.source or smap.source
    if source is None:
        raise InvalidStructureMap("name the source: --source NAME, or `source` in the map")
    if not args.file.is_file():
        raise InvalidStructureMap("the import file cannot be read")
    dsn = admin_login(error=VaultServiceError)
    count = args.workers or settings.imports.workers
    sealer: LineSealer | None = None
    try:
        async with (
            connection(dsn) as lock,
            login_pool(dsn, min_size=2, max_size=2) as admin,
            service_side(settings) as service,
        ):
            sealer = (
                WorkerPool(count, import_worker_records)
                if count > 1
                else InProcess(service.records)
            )
            importer = Importer(
                service.records,
                ImportRepository(lock, admin),
                smap,
                source=source,
                batch_size=args.batch_size or settings.imports.batch_size,
                dry_run=args.dry_run,
                resume=args.resume,
                sealer=sealer,
                max_rate=(
                    args.max_rate
                    if args.max_rate is not None
                    else settings.imports.records_per_second
                ),
            )
            report = (await importer.run(args.file)).report()
    except asyncpg.PostgresError as exc:
        # The database's text is not echoed; its class says enough to an operator.
        raise VaultServiceError(
            f"the database refused ({type(exc).__name__}): is "
            "VAULT_SERVICE_ADMIN_DATABASE_URL your own admin login? Batches already "
            "committed stay; rerun with --resume"
        ) from None
    finally:
        if sealer is not None:
            sealer.close()
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    return report


def _print_import(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    verb = "would import" if report["dry_run"] else "imported"
    print(
        f"{report['source']}: read {report['read']}, {verb} {report['imported']} "
        f"({report['queued']} to a structure queue), skipped {report['skipped']} already "
        f"present, refused {report['refused']} in {report['batches']} batches, "
        f"{report['seconds']} s ({report['records_per_second']} records/s)"
    )
    if report["read"] and not report["imported"] and report["skipped"] and not report["dry_run"]:
        print("nothing new: every valid line is already imported")
    for code, n in report["refused_by_code"].items():
        print(f"refused {code}: {n}")
    shown = report["refusals"][:_REFUSALS_SHOWN]
    for r in shown:
        print(f"line {r['line']}: {r['code']}")
    if len(report["refusals"]) > len(shown):
        print(f"... {len(report['refusals']) - len(shown)} more (--json or --report FILE)")


def _run(args: argparse.Namespace) -> int:
    _print_import(asyncio.run(_import(args, Settings.from_env())), args.json)
    return 0
