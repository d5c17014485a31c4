"""The admin CLI: `vault-service dev|serve|migrate|tokens|accounts|keys|records|retention|...`.

Secrets never come from command-line options (they would sit in shell history and
`ps`): Vault and database credentials come from the environment or files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from vault_service.errors import (
    ConfigurationError,
    Forbidden,
    InvalidParameter,
    NotFound,
    VaultServiceError,
)
from vault_service.settings import Settings

if TYPE_CHECKING:
    from vault_service.audit.entry import AccessEvent
    from vault_service.kms import TransitKeyAdmin

_TTL = re.compile(r"^(\d+)([smh]?)$")


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("TTL is like 900, 15m or 1h")
    value = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if not 60 <= value <= 3600:
        raise argparse.ArgumentTypeError("TTL must be between 1 minute and 1 hour")
    return value


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a UUID") from None


def _batch_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError("a batch is 1 to 10000 rows")
    return int(text)


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError("1 to 64 processes")
    return int(text)


# --- commands ------------------------------------------------------------------------
def _bounded(limit: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not 0 < len(text) <= limit or not text.isprintable():
            raise argparse.ArgumentTypeError(f"1 to {limit} printable characters")
        return text

    return parse


async def _migrate(dsn: str) -> list[str]:
    from vault_service import migrations

    conn = await asyncpg.connect(dsn)
    try:
        return await migrations.migrate(conn)
    finally:
        await conn.close()


def cmd_migrate() -> int:
    dsn = os.environ.get("VAULT_SERVICE_MIGRATIONS_DATABASE_URL")
    if not dsn:
        raise ConfigurationError(
            "VAULT_SERVICE_MIGRATIONS_DATABASE_URL (the owner role) is not set"
        )
    applied = asyncio.run(_migrate(dsn))
    print(json.dumps({"applied": applied}))
    return 0


def cmd_vault_setup() -> int:
    """Transit keys, with an operator's token from VAULT_TOKEN (never the service's)."""
    import hvac

    from vault_service.kms.vault import setup_transit

    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not addr or not token:
        raise ConfigurationError("set VAULT_ADDR and VAULT_TOKEN (an operator token)")
    client = hvac.Client(url=addr, token=token, verify=os.environ.get("VAULT_CACERT") or True)
    created = setup_transit(client, os.environ.get("VAULT_SERVICE_VAULT_TRANSIT_MOUNT", "transit"))
    print(json.dumps({"created": created}))
    return 0


def _token_issued(token: str, structure_id: uuid.UUID | None) -> AccessEvent:
    """The entry of `tokens issue`: the account and the token's id, never the token.
    It runs on the service's credentials, which name no person: the entry has no
    actor, and role `service` says whose credentials made the token."""
    import jwt

    from vault_service.audit.entry import AccessEvent

    # Our own token, signed a moment ago: read, not verified.
    claims = jwt.decode(token, options={"verify_signature": False})
    return AccessEvent(
        action="token.issue",
        outcome="allowed",
        actor_id=None,
        role="service",
        structure_id=structure_id,
        record_ids=(uuid.UUID(claims["sub"]),),
        token_jti=uuid.UUID(claims["jti"]),
    )


async def _issue(settings: Settings, subject: uuid.UUID, ttl: int) -> str:
    from vault_service.access.sequencer import add_in_transaction
    from vault_service.auth.permissions import Role
    from vault_service.auth.tokens import SigningKeys, TokenIssuer
    from vault_service.kms import VaultKms

    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT role, structure_id, state FROM accounts WHERE id = $1", subject
        )
        if row is None or row["state"] != "active":
            raise NotFound("no active account with this id")
        if row["role"] == "admin":
            # Admins act through their own database login, never through a token: a
            # token minted with the service's credentials must not stand for an admin.
            raise Forbidden("admins get no service token")
        kms = VaultKms(settings)
        try:
            issuer = TokenIssuer(settings, kms, SigningKeys(kms))
            token = await issuer.issue(subject, Role(row["role"]), row["structure_id"], ttl)
        finally:
            kms.close()
        # No entry, no token: the token is printed only once its entry is durable.
        async with conn.transaction():
            await add_in_transaction(conn, _token_issued(token, row["structure_id"]))
        return token
    finally:
        await conn.close()


async def _accounts(settings: Settings) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, role, structure_id, state, created_at FROM accounts ORDER BY created_at, id"
        )
        links = await conn.fetch(
            "SELECT account_id, issuer, subject FROM external_identities ORDER BY issuer, subject"
        )
    finally:
        await conn.close()
    identities: dict[uuid.UUID, list[dict[str, str]]] = {}
    for link in links:
        identities.setdefault(link["account_id"], []).append(
            {"issuer": link["issuer"], "subject": link["subject"]}
        )
    return [
        {
            "id": str(r["id"]),
            "role": r["role"],
            "structure_id": str(r["structure_id"]) if r["structure_id"] else None,
            "state": r["state"],
            "created_at": r["created_at"].isoformat(),
            "external_identities": identities.get(r["id"], []),
        }
        for r in rows
    ]


async def _key_inventory(settings: Settings) -> dict[str, Any]:
    from vault_service.kms import SERVICE_KEYS, VaultKms

    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            """SELECT k.structure_id, k.version, k.created_at,
                      split_part(k.wrapped_key, ':', 2) AS kek_version,
                      (SELECT count(*) FROM records r WHERE r.structure_id = k.structure_id
                         AND r.branch_key_version = k.version) AS records
               FROM structure_keys k ORDER BY k.structure_id, k.version"""
        )
    finally:
        await conn.close()
    kms = VaultKms(settings)
    try:
        signing = {}
        for name, kind in SERVICE_KEYS.items():
            if kind == "ed25519":
                latest, keys = await kms.public_keys(name)
                signing[name] = {"latest_version": latest, "live_versions": sorted(keys)}
    finally:
        kms.close()
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


def _key_admin(settings: Settings) -> TransitKeyAdmin:
    """The key admin's Vault client (policy `key-admin`), from VAULT_TOKEN: rotating
    and retiring are the operator's, never the service's."""
    from vault_service.kms import TransitKeyAdmin

    token = os.environ.get("VAULT_TOKEN")
    if not token:
        raise ConfigurationError("set VAULT_TOKEN to a key admin's token (policy key-admin)")
    return TransitKeyAdmin(
        os.environ.get("VAULT_ADDR") or settings.vault_addr,
        token,
        mount=settings.vault_transit_mount,
        cacert=os.environ.get("VAULT_CACERT") or settings.vault_cacert,
    )


async def _rotate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Rotations run on the admin's own login (each step and its access-log entry in
    one transaction) with the service's Vault configuration for the rewraps."""
    from vault_service.kms import VaultKms
    from vault_service.rotation.branch import rotate_branch
    from vault_service.rotation.kek import rotate_kek
    from vault_service.rotation.records import rotate_records

    dsn = os.environ.get("VAULT_SERVICE_ADMIN_DATABASE_URL")
    if not dsn:
        raise ConfigurationError("set VAULT_SERVICE_ADMIN_DATABASE_URL to your own admin login")
    conn = await asyncpg.connect(dsn)
    kms = VaultKms(settings)
    batch_size = args.batch_size or settings.rotation_batch_size
    try:
        if args.target == "records":
            return (
                await rotate_records(
                    conn,
                    kms,
                    None if args.all else args.structure,
                    batch_size=batch_size,
                    dry_run=args.dry_run,
                    max_rate=settings.rotation_records_per_second,
                )
            ).report()
        if args.target in ("token", "checkpoint"):
            from vault_service.rotation.signing import rotate_signing

            return await rotate_signing(
                conn,
                kms,
                lambda: _key_admin(settings),
                args.target,
                retire=args.retire,
                dry_run=args.dry_run,
                token_lifetime_seconds=settings.jwt_max_lifetime_seconds,
            )
        if args.target == "branch":
            # How long a service process may still wrap new records under the old
            # version: its branch-key TTL, plus a write in flight.
            ttl = settings.branch_key_ttl_seconds + settings.db_statement_timeout_ms / 1000
            return (
                await rotate_branch(
                    conn,
                    kms,
                    None if args.all else args.structure,
                    batch_size=batch_size,
                    ttl_seconds=ttl,
                    dry_run=args.dry_run,
                )
            ).report()
        run = await rotate_kek(
            conn,
            kms,
            lambda: _key_admin(settings),
            batch_size=batch_size,
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
    finally:
        kms.close()
        await conn.close()


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


async def _account_command(args: argparse.Namespace) -> Any:
    """Admin acts run on the admin's OWN database login (VAULT_SERVICE_ADMIN_DATABASE_URL):
    the database takes the actor from that login, so four-eyes holds even against
    someone who has the service's credentials. Authenticate that login as strongly as
    the database allows (client certificates, SCRAM from a vault, Kerberos)."""
    from vault_service.auth.admin import AccountAdmin
    from vault_service.auth.permissions import Role

    dsn = os.environ.get("VAULT_SERVICE_ADMIN_DATABASE_URL")
    if not dsn:
        raise ConfigurationError("set VAULT_SERVICE_ADMIN_DATABASE_URL to your own admin login")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        admin = AccountAdmin(pool)
        if args.action == "requests":
            return await admin.requests(None if args.all else "pending")
        if args.action == "revoke-tokens":
            await admin.revoke_account_tokens(args.account)
            return {"account_id": str(args.account), "tokens": "revoked"}
        if args.action == "create":
            ref = await admin.request_create(Role(args.role), args.structure)
            return {
                "request_id": str(ref.request_id),
                "account_id": str(ref.account_id),
                "state": "pending",
                "next": "a second admin runs `accounts approve`",
            }
        if args.action in ("approve", "refuse"):
            ref = await admin.decide(args.request, approve=args.action == "approve")
            return {
                "request_id": str(ref.request_id),
                "account_id": str(ref.account_id),
                "decision": args.action,
            }
        if args.action == "set-role":
            ref = await admin.request_change(
                "role_change", args.account, Role(args.role), args.structure
            )
            return {"request_id": str(ref.request_id), "state": "pending"}
        if args.action == "reactivate":
            ref = await admin.request_change("reactivate", args.account)
            return {"request_id": str(ref.request_id), "state": "pending"}
        if args.action in ("link", "unlink"):
            ref = await admin.request_identity(args.action, args.account, args.issuer, args.subject)
            return {
                "request_id": str(ref.request_id),
                "account_id": str(args.account),
                "state": "pending",
                "next": "a second admin runs `accounts approve`",
            }
        state = {"suspend": "suspended", "disable": "disabled"}[args.action]
        request = await admin.set_state(args.account, state)
        if request is not None:
            # An admin: a second admin approves, and two active admins must remain.
            return {
                "request_id": str(request.request_id),
                "account_id": str(args.account),
                "state": "pending",
                "next": "a second admin runs `accounts approve`",
            }
        return {"account_id": str(args.account), "state": state}
    finally:
        await pool.close()


async def _admin_command(args: argparse.Namespace) -> Any:
    """Tokens revocation and alerts, on the admin's own login (as account commands)."""
    from vault_service.auth.admin import AccountAdmin
    from vault_service.auth.guards import plain_reference

    dsn = os.environ.get("VAULT_SERVICE_ADMIN_DATABASE_URL")
    if not dsn:
        raise ConfigurationError("set VAULT_SERVICE_ADMIN_DATABASE_URL to your own admin login")
    if args.command == "alerts" and args.action == "ack" and not plain_reference(args.comment):
        # The comment is kept with the alert: like a purpose detail, it is no place
        # for a name or a number.
        raise InvalidParameter("the comment must be a short plain note (120 characters)")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        admin = AccountAdmin(pool)
        if args.command == "tokens":
            await admin.revoke_token(args.jti)
            return {"jti": str(args.jti), "state": "revoked"}
        if args.action == "list":
            return await admin.alerts(None if args.all else "open")
        await admin.ack_alert(args.alert, args.comment)
        return {"alert_id": str(args.alert), "state": "acknowledged"}
    finally:
        await pool.close()


async def _honeytokens(args: argparse.Namespace, settings: Settings) -> Any:
    """Canary records: made with the service's configuration (its role, its keys), their
    canary accounts on the admin's own login."""
    from vault_service.crypto.keys import KeyHierarchy
    from vault_service.kms import VaultKms
    from vault_service.records import schema
    from vault_service.records.honeytokens import HONEYTOKEN_LABEL, HoneytokenPlanter
    from vault_service.records.service import RecordService

    dsn = os.environ.get("VAULT_SERVICE_ADMIN_DATABASE_URL")
    if not dsn:
        raise ConfigurationError("set VAULT_SERVICE_ADMIN_DATABASE_URL to your own admin login")
    admin = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    service = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    kms = VaultKms(settings)
    try:
        keys = KeyHierarchy(
            kms, service, ttl=settings.branch_key_ttl_seconds, max_uses=settings.branch_key_max_uses
        )
        records = RecordService(
            service,
            keys,
            schema.load(),
            search_page_max=settings.search_page_max,
            caseload_page_max=settings.caseload_page_max,
        )
        key = await keys.derived_key(False, HONEYTOKEN_LABEL)
        planter = HoneytokenPlanter(admin, service, records, key)
        if args.action == "list":
            return await planter.list()
        return await planter.plant(args.structure, args.count, rotate=args.action == "rotate")
    finally:
        kms.close()
        await service.close()
        await admin.close()


async def _stats_refresh(settings: Settings) -> dict[str, Any]:
    """Seal every closed year not sealed yet, with the service's role and keys (the
    same code as the service's scheduled round; one rebuild at a time)."""
    from vault_service.alerts.store import Alerts
    from vault_service.crypto.keys import KeyHierarchy
    from vault_service.kms import VaultKms
    from vault_service.records import schema
    from vault_service.records.honeytokens import HONEYTOKEN_LABEL, Canaries
    from vault_service.records.sealing import Sealer
    from vault_service.stats.refresh import StatsRefresher

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    kms = VaultKms(settings)
    try:
        keys = KeyHierarchy(
            kms, pool, ttl=settings.branch_key_ttl_seconds, max_uses=settings.branch_key_max_uses
        )
        canaries = Canaries(pool, await keys.derived_key(False, HONEYTOKEN_LABEL))
        await canaries.load()
        refresher = StatsRefresher(
            pool,
            Sealer(keys, schema.load()),
            kms,
            canaries.named,
            k=settings.stats_k,
            seal_after_days=settings.stats_seal_after_days,
            audit_seconds=settings.stats_audit_seconds,
            batch_size=settings.stats_batch_size,
            alerts=Alerts(pool),
        )
        done = await refresher.refresh()
    finally:
        kms.close()
        await pool.close()
    return {
        "refreshed_at": done.refreshed_at.isoformat(),
        "years_sealed": list(done.years),
        "tables": done.tables,
        "records": done.records,
        "canaries_left_out": done.canaries,
        "unreadable_left_out": done.failed,
    }


async def _import(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """A legacy export moved in: sealed with the service's configuration (its role for
    branch keys, its Vault access), written and logged on the admin's own login."""
    from vault_service.crypto.keys import KeyHierarchy
    from vault_service.imports.importer import Importer, InvalidStructureMap, load_map
    from vault_service.imports.repository import ImportRepository
    from vault_service.imports.sealers import InProcess, LineSealer, WorkerPool
    from vault_service.kms import VaultKms
    from vault_service.records import schema
    from vault_service.records.retention import RetentionRule
    from vault_service.records.service import RecordService

    smap = load_map(args.structure_map)
    source = args.source or smap.source
    if source is None:
        raise InvalidStructureMap("name the source: --source NAME, or `source` in the map")
    if not args.file.is_file():
        raise InvalidStructureMap("the import file cannot be read")
    dsn = os.environ.get("VAULT_SERVICE_ADMIN_DATABASE_URL")
    if not dsn:
        raise VaultServiceError("set VAULT_SERVICE_ADMIN_DATABASE_URL to your own admin login")
    lock = await asyncpg.connect(dsn)
    admin = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    service = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    kms = VaultKms(settings)
    workers = args.workers or settings.import_workers
    sealer: LineSealer | None = None
    try:
        keys = KeyHierarchy(
            kms, service, ttl=settings.branch_key_ttl_seconds, max_uses=settings.branch_key_max_uses
        )
        records = RecordService(
            service,
            keys,
            schema.load(),
            search_page_max=settings.search_page_max,
            caseload_page_max=settings.caseload_page_max,
            retention=RetentionRule(settings.retention_age_years, settings.retention_programme_end),
        )
        sealer = WorkerPool(workers) if workers > 1 else InProcess(records)
        importer = Importer(
            records,
            ImportRepository(lock, admin),
            smap,
            source=source,
            batch_size=args.batch_size or settings.import_batch_size,
            dry_run=args.dry_run,
            resume=args.resume,
            sealer=sealer,
            max_rate=(
                args.max_rate if args.max_rate is not None else settings.import_records_per_second
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
        kms.close()
        await service.close()
        await admin.close()
        await lock.close()
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


_REFUSALS_SHOWN = 20


async def _bootstrap_admins(first_login: str, second_login: str) -> dict[str, str]:
    dsn = os.environ.get("VAULT_SERVICE_MIGRATIONS_DATABASE_URL")
    if not dsn:
        raise ConfigurationError("VAULT_SERVICE_MIGRATIONS_DATABASE_URL (owner role) is not set")
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT first_admin, second_admin FROM vs_bootstrap_admins($1, $2)",
            first_login,
            second_login,
        )
    except asyncpg.PostgresError:
        raise VaultServiceError("admins already exist, or the logins are not distinct") from None
    finally:
        await conn.close()
    assert row is not None
    return {first_login: str(row["first_admin"]), second_login: str(row["second_admin"])}


async def _records_command(args: argparse.Namespace) -> Any:
    """Legal holds and erasures, four-eyes, on the admin's own login."""
    from vault_service.records.retention import RecordAdmin

    dsn = os.environ.get("VAULT_SERVICE_ADMIN_DATABASE_URL")
    if not dsn:
        raise ConfigurationError("set VAULT_SERVICE_ADMIN_DATABASE_URL to your own admin login")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
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
    finally:
        await pool.close()


async def _retention_run(settings: Settings, dry_run: bool) -> dict[str, Any]:
    """Retention by the decree, on an admin's own login (a dedicated one for the
    scheduler): its acts are logged under that account through vs_log_admin_act.
    Records written before the service dated them are dated first, with the
    service's own role and keys (the birth date is encrypted)."""
    from vault_service.crypto.keys import KeyHierarchy
    from vault_service.kms import VaultKms
    from vault_service.records import schema
    from vault_service.records.retention import LogDecrypted, RecordAdmin, RetentionRule
    from vault_service.records.service import RecordService

    dsn = os.environ.get("VAULT_SERVICE_ADMIN_DATABASE_URL")
    if not dsn:
        raise ConfigurationError("set VAULT_SERVICE_ADMIN_DATABASE_URL to an admin login")

    async def backfill(log: LogDecrypted) -> int:
        service = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        kms = VaultKms(settings)
        try:
            keys = KeyHierarchy(
                kms,
                service,
                ttl=settings.branch_key_ttl_seconds,
                max_uses=settings.branch_key_max_uses,
            )
            records = RecordService(
                service,
                keys,
                schema.load(),
                search_page_max=settings.search_page_max,
                caseload_page_max=settings.caseload_page_max,
                retention=RetentionRule(
                    settings.retention_age_years, settings.retention_programme_end
                ),
            )
            return await records.date_undated(settings.retention_batch_size, log)
        finally:
            kms.close()
            await service.close()

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        report = await RecordAdmin(pool).run(
            purge_after_days=settings.retention_purge_after_days,
            batch_size=settings.retention_batch_size,
            dry_run=dry_run,
            backfill=backfill,
        )
    finally:
        await pool.close()
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


def _records_parsers(sub: Any) -> None:
    """Retention, legal holds and erasure (admin login)."""
    from vault_service.records.retention import ERASE_REASONS, HOLD_REASONS, RELEASE_REASONS

    retention = sub.add_parser("retention", help="record retention (admin login)")
    retention_cmd = retention.add_subparsers(dest="action", required=True)
    run = retention_cmd.add_parser(
        "run", help="date, anonymise and purge what the decree says is due (schedulable)"
    )
    run.add_argument("--dry-run", action="store_true", help="count only, change nothing")
    run.add_argument("--json", action="store_true", help="JSON (the default output too)")
    records = sub.add_parser("records", help="legal holds and erasure (admin login, four-eyes)")
    records_cmd = records.add_subparsers(dest="action", required=True)
    for name, reasons, text, default in (
        ("hold", HOLD_REASONS, "request a legal hold", None),
        ("release", RELEASE_REASONS, "request the release of a hold", "proceedings_closed"),
        ("erase", ERASE_REASONS, "request crypto-shredding", "data_subject_request"),
    ):
        act = records_cmd.add_parser(name, help=f"{text} (a second admin approves)")
        act.add_argument("record", type=_uuid)
        act.add_argument("--reason", choices=reasons, required=default is None, default=default)
    for name in ("approve", "refuse"):
        decide = records_cmd.add_parser(name, help=f"{name} another admin's pending request")
        decide.add_argument("request", type=_uuid)
    pending = records_cmd.add_parser("requests", help="pending (or --all) record requests")
    pending.add_argument("--all", action="store_true")


def _link_parsers(accounts: Any) -> None:
    for name, text in (
        ("link", "request linking an external OpenID identity to the account (four-eyes)"),
        ("unlink", "request unlinking an external OpenID identity (four-eyes)"),
    ):
        link = accounts.add_parser(name, help=text)
        link.add_argument("account", type=_uuid)
        link.add_argument("--issuer", type=_bounded(300), required=True, help="exact `iss`")
        link.add_argument("--subject", type=_bounded(255), required=True, help="exact `sub`")


def _defence_parsers(sub: Any) -> None:
    """Honeytokens and alerts: the bulk-read defence's admin commands."""
    honey = sub.add_parser("honeytokens", help="canary records (admin login)").add_subparsers(
        dest="action", required=True
    )
    for name, text in (
        ("plant", "plant canary records in one structure, or in every one"),
        ("rotate", "plant new canaries, then retire the structure's earlier ones"),
    ):
        planting = honey.add_parser(name, help=text)
        planting.add_argument("--structure", type=_uuid, help="default: every structure")
        planting.add_argument("--count", type=int, choices=range(1, 21), default=2)
    honey.add_parser("list", help="canaries, planted and retired, as JSON")
    alert_cmd = sub.add_parser("alerts", help="alerts (admin login)").add_subparsers(
        dest="action", required=True
    )
    alert_list = alert_cmd.add_parser("list", help="open (or --all) alerts, as JSON")
    alert_list.add_argument("--all", action="store_true")
    ack = alert_cmd.add_parser("ack", help="acknowledge an open alert")
    ack.add_argument("alert", type=_uuid)
    ack.add_argument("--comment", required=True, help="a short note: no name, no number")


def _stats_parser(sub: Any) -> None:
    stats = sub.add_parser("stats", help="the BI lane's aggregate").add_subparsers(
        dest="action", required=True
    )
    stats.add_parser(
        "refresh", help="compute and seal the tables of every closed year not sealed yet"
    )


def _import_parser(sub: Any) -> None:
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
    imp.add_argument("--source", type=_bounded(64), help="the legacy system's name (or in the map)")
    imp.add_argument("--dry-run", action="store_true", help="check and count; write nothing")
    imp.add_argument("--resume", action="store_true", help="continue an unfinished import")
    imp.add_argument("--batch-size", type=_batch_size, help="records per batch")
    imp.add_argument(
        "--max-rate",
        type=int,
        help="records a second at most, 0 for no limit (VAULT_SERVICE_IMPORT_RECORDS_PER_SECOND)",
    )
    imp.add_argument(
        "--workers", type=_workers, help="processes that seal (VAULT_SERVICE_IMPORT_WORKERS)"
    )
    imp.add_argument("--report", type=Path, help="write the summary and refusals (JSON) here")
    imp.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vault-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="everything on one machine, with demo data")
    dev.add_argument("--reset", action="store_true", help="wipe .dev/ first")
    dev.add_argument("--data-dir", type=Path, default=Path(".dev"))
    dev.add_argument("--port", type=int, default=8000)
    sub.add_parser("serve", help="the API against the configured PostgreSQL and Vault")
    _stats_parser(sub)
    sub.add_parser("migrate", help="apply pending migrations (owner role)")
    sub.add_parser("vault-setup", help="enable transit and create the keys (operator token)")
    tokens = sub.add_parser("tokens", help="service tokens").add_subparsers(
        dest="action", required=True
    )
    revoke = tokens.add_parser(
        "revoke", help="refuse one token from the next request on, every replica (admin login)"
    )
    revoke.add_argument("jti", type=_uuid)
    issue = tokens.add_parser("issue", help="print a signed token for an active account")
    issue.add_argument("--subject", type=_uuid, required=True)
    issue.add_argument("--ttl", type=parse_ttl, default=900)
    accounts = sub.add_parser("accounts", help="accounts").add_subparsers(
        dest="action", required=True
    )
    listing = accounts.add_parser("list", help="accounts with id, role, structure, state")
    listing.add_argument("--json", action="store_true")
    roles = ["counsellor", "supervisor", "admin", "auditor", "analyst"]
    create = accounts.add_parser("create", help="request a new account (a second admin approves)")
    create.add_argument("--role", choices=roles, required=True)
    create.add_argument("--structure", type=_uuid)
    for name in ("approve", "refuse"):
        decide = accounts.add_parser(name, help=f"{name} another admin's pending request")
        decide.add_argument("request", type=_uuid)
    set_role = accounts.add_parser("set-role", help="request a role change (four-eyes)")
    set_role.add_argument("account", type=_uuid)
    set_role.add_argument("--role", choices=roles, required=True)
    set_role.add_argument("--structure", type=_uuid)
    for name, text in (
        ("suspend", "suspend now, revoking every token"),
        ("disable", "disable now, revoking every token"),
        ("reactivate", "request reactivation (four-eyes)"),
    ):
        state = accounts.add_parser(name, help=text)
        state.add_argument("account", type=_uuid)
    _link_parsers(accounts)
    revoke_all = accounts.add_parser(
        "revoke-tokens", help="refuse every token of an account issued until now (admin login)"
    )
    revoke_all.add_argument("account", type=_uuid)
    _defence_parsers(sub)
    _records_parsers(sub)
    requests = accounts.add_parser("requests", help="pending (or --all) account requests")
    requests.add_argument("--all", action="store_true")
    boot = accounts.add_parser("bootstrap-admins", help="the first two admins (owner role, once)")
    boot.add_argument("--first-login", required=True, help="database login of the first admin")
    boot.add_argument("--second-login", required=True, help="database login of the second")
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
    )
    prune = audit.add_parser("prune", help="prune entry bodies past retention (retention role)")
    prune.add_argument("--older-than-days", type=int, default=214, help="default: 7 months")
    _keys_parsers(sub)
    _import_parser(sub)
    return parser


def _keys_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="key inventory and rotations").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser("list", help="transit keys, signing key versions, branch keys")
    status = keys.add_parser("status", help="key versions, ages, and what is due for rotation")
    status.add_argument("--json", action="store_true")
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
        which.add_argument("--structure", type=_uuid, action="append", help="repeatable")
        which.add_argument("--all", action="store_true", help="every structure")
    for command in (kek, branch, records, *signing):
        command.add_argument(
            "--dry-run", action="store_true", help="say what would be done, do nothing"
        )
        command.add_argument("--json", action="store_true")
        command.add_argument(
            "--batch-size",
            type=_batch_size,
            metavar="1..10000",
            help="rows per transaction (default: VAULT_SERVICE_ROTATION_BATCH_SIZE)",
        )


async def _integrate(settings: Settings) -> int:
    """Run the integrator (audit/integrator.py) in a process of its own, so that
    hashing and tiles take nothing from the processes that serve requests."""
    import signal

    from vault_service.audit.integrator import Integrator
    from vault_service.audit.log import AccessLog

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await asyncpg.create_pool(settings.database_url, min_size=2, max_size=4)
    try:
        tree = AccessLog(pool)
        await tree.start()
        integrator = Integrator(pool, tree, poll_seconds=0.1)
        await integrator.start()
        await stop.wait()
        await integrator.stop()
        await tree.stop()
    finally:
        await pool.close()
    return 0


async def _prune(days: int) -> int:
    import datetime

    from vault_service.audit.retention import prune

    dsn = os.environ.get("VAULT_SERVICE_RETENTION_DATABASE_URL")
    if not dsn:
        raise ConfigurationError("VAULT_SERVICE_RETENTION_DATABASE_URL (retention role) is not set")
    conn = await asyncpg.connect(dsn)
    try:
        return await prune(conn, datetime.timedelta(days=days))
    finally:
        await conn.close()


def _is_standalone(argv: list[str]) -> bool:
    return argv[:2] in (["audit", "verify"], ["audit", "monitor"]) or argv[:1] == ["witness"]


def _standalone(argv: list[str]) -> int:
    """The tools that outside parties run with no database, no Vault and no settings:
    the offline verifier, the monitor, the witness."""
    if argv[:2] == ["audit", "verify"]:
        from vault_service.audit.verify import main as verify_main

        return verify_main(argv[2:])
    if argv[:2] == ["audit", "monitor"]:
        from vault_service.audit.monitor import main as monitor_main

        return monitor_main(argv[2:])
    from vault_service.audit.witness import main as witness_main

    return witness_main(argv[1:])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from vault_service.observability import configure_logging

    configure_logging(os.environ.get("VAULT_SERVICE_LOG_LEVEL", "INFO"), stream=sys.stderr)
    args = None if _is_standalone(argv) else build_parser().parse_args(argv)
    try:
        return _standalone(argv) if args is None else _dispatch(args)
    except VaultServiceError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - every command ends with one line, never a traceback
        print(f"error: {failure_line(exc)}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "dev":
        from vault_service.dev.server import run_dev

        return run_dev(args.data_dir, reset=args.reset, port=args.port)
    if args.command == "migrate":
        return cmd_migrate()
    if args.command == "audit" and args.action == "prune":
        print(json.dumps({"pruned": asyncio.run(_prune(args.older_than_days))}))
        return 0
    if args.command == "accounts" and args.action == "bootstrap-admins":
        result = asyncio.run(_bootstrap_admins(args.first_login, args.second_login))
        print(json.dumps(result, indent=2))
        return 0
    if (args.command == "tokens" and args.action == "revoke") or args.command == "alerts":
        print(json.dumps(asyncio.run(_admin_command(args)), indent=2, default=str))
        return 0
    if args.command == "accounts" and args.action not in ("list",):
        print(json.dumps(asyncio.run(_account_command(args)), indent=2, default=str))
        return 0
    if args.command == "records":
        print(json.dumps(asyncio.run(_records_command(args)), indent=2, default=str))
        return 0
    if args.command == "vault-setup":
        return cmd_vault_setup()
    settings = Settings.from_env()
    if args.command == "serve":
        from vault_service.serving import serve

        return serve(settings)
    if args.command == "honeytokens":
        print(json.dumps(asyncio.run(_honeytokens(args, settings)), indent=2))
        return 0
    if args.command == "retention":
        print(json.dumps(asyncio.run(_retention_run(settings, args.dry_run)), indent=2))
        return 0
    if args.command == "stats":
        print(json.dumps(asyncio.run(_stats_refresh(settings)), indent=2))
        return 0
    if args.command == "audit" and args.action == "integrate":
        return asyncio.run(_integrate(settings))
    if args.command == "tokens":
        print(asyncio.run(_issue(settings, args.subject, args.ttl)))
        return 0
    if args.command == "accounts":
        rows = asyncio.run(_accounts(settings))
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['id']}  {r['role']:<10} {r['state']:<9} {r['structure_id'] or '-'}")
        return 0
    if args.command == "keys" and args.action == "status":
        from vault_service.rotation.inventory import key_status, render_text

        status = asyncio.run(key_status(settings))
        print(json.dumps(status, indent=2) if args.json else render_text(status))
        return 0
    if args.command == "keys" and args.action == "rotate":
        _print_rotation(asyncio.run(_rotate(args, settings)), args.json)
        return 0
    if args.command == "import":
        _print_import(asyncio.run(_import(args, settings)), args.json)
        return 0
    if args.command == "keys":
        print(json.dumps(asyncio.run(_key_inventory(settings)), indent=2))
        return 0
    return 2


# Where an unexpected failure came from, by the modules its traceback passed through.
_SOURCES: Final = (
    (("asyncpg",), "database_unavailable", "PostgreSQL could not be reached or refused"),
    (("hvac", "requests", "urllib3"), "kms_unavailable", "Vault could not be reached or refused"),
)


def _modules(exc: BaseException) -> Iterator[str]:
    """The modules of every frame of `exc`, its causes and, for a group, its members."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            yield str(tb.tb_frame.f_globals.get("__name__", ""))
            tb = tb.tb_next
        yield type(current).__module__
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def failure_line(exc: BaseException) -> str:
    """One line naming the failing component and the exception's class, never its
    text: a connection error's message can hold a host, a DSN, even a password."""
    kind = type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.isalnum():
        kind += f", SQLSTATE {sqlstate}"
    modules = {m.split(".")[0] for m in _modules(exc)}
    for roots, code, sentence in _SOURCES:
        if modules.intersection(roots):
            return f"{code}: {sentence} ({kind})"
    return f"internal_error: the command failed ({kind})"
