"""`vault-service accounts`: four-eyes account acts on the admin's own database login,
the first two admins on the owner role, and the account list.

Admin acts run on the admin's OWN database login (VAULT_SERVICE_ADMIN_DATABASE_URL):
the database takes the actor from that login, so four-eyes holds even against
someone who has the service's credentials. Authenticate that login as strongly as the
database allows (client certificates, SCRAM from a vault, Kerberos).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any

from vault_service.cli.arguments import bounded, uuid_arg
from vault_service.cli.logins import admin_login
from vault_service.cli.output import print_json
from vault_service.errors import ConfigurationError, VaultServiceError
from vault_service.settings import Logins, Settings

if TYPE_CHECKING:
    from vault_service.auth.admin import AccountAdmin

__all__ = ["register"]

ROLES = ["counsellor", "supervisor", "admin", "auditor", "analyst"]


def register(sub: Any) -> None:
    accounts = sub.add_parser("accounts", help="accounts").add_subparsers(
        dest="action", required=True
    )
    listing = accounts.add_parser("list", help="accounts with id, role, structure, state")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)
    create = accounts.add_parser("create", help="request a new account (a second admin approves)")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--structure", type=uuid_arg)
    acts = [create]
    for name in ("approve", "refuse"):
        decide = accounts.add_parser(name, help=f"{name} another admin's pending request")
        decide.add_argument("request", type=uuid_arg)
        acts.append(decide)
    set_role = accounts.add_parser("set-role", help="request a role change (four-eyes)")
    set_role.add_argument("account", type=uuid_arg)
    set_role.add_argument("--role", choices=ROLES, required=True)
    set_role.add_argument("--structure", type=uuid_arg)
    acts.append(set_role)
    for name, text in (
        ("suspend", "suspend now, revoking every token"),
        ("disable", "disable now, revoking every token"),
        ("reactivate", "request reactivation (four-eyes)"),
    ):
        state = accounts.add_parser(name, help=text)
        state.add_argument("account", type=uuid_arg)
        acts.append(state)
    for name, text in (
        ("link", "request linking an external OpenID identity to the account (four-eyes)"),
        ("unlink", "request unlinking an external OpenID identity (four-eyes)"),
    ):
        link = accounts.add_parser(name, help=text)
        link.add_argument("account", type=uuid_arg)
        link.add_argument("--issuer", type=bounded(300), required=True, help="exact `iss`")
        link.add_argument("--subject", type=bounded(255), required=True, help="exact `sub`")
        acts.append(link)
    revoke_all = accounts.add_parser(
        "revoke-tokens", help="refuse every token of an account issued until now (admin login)"
    )
    revoke_all.add_argument("account", type=uuid_arg)
    acts.append(revoke_all)
    requests = accounts.add_parser("requests", help="pending (or --all) account requests")
    requests.add_argument("--all", action="store_true")
    acts.append(requests)
    for act in acts:
        act.set_defaults(run=_act)
    boot = accounts.add_parser("bootstrap-admins", help="the first two admins (owner role, once)")
    boot.add_argument("--first-login", required=True, help="database login of the first admin")
    boot.add_argument("--second-login", required=True, help="database login of the second")
    boot.set_defaults(run=_bootstrap)


# --- the account list (the service's own login) ------------------------------------------
async def _accounts(settings: Settings) -> list[dict[str, Any]]:
    from vault_service.services import connection

    async with connection(settings.database.url) as conn:
        rows = await conn.fetch(
            "SELECT id, role, structure_id, state, created_at FROM accounts ORDER BY created_at, id"
        )
        links = await conn.fetch(
            "SELECT account_id, issuer, subject FROM external_identities ORDER BY issuer, subject"
        )
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


def _list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_accounts(Settings.from_env()))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['id']}  {r['role']:<10} {r['state']:<9} {r['structure_id'] or '-'}")
    return 0


# --- four-eyes acts (the admin's own login) ------------------------------------------------
async def _account_command(args: argparse.Namespace) -> Any:
    from vault_service.auth.admin import AccountAdmin
    from vault_service.services import login_pool

    async with login_pool(admin_login()) as pool:
        return await _account_act(AccountAdmin(pool), args)


async def _account_act(admin: AccountAdmin, args: argparse.Namespace) -> Any:
    from vault_service.auth.permissions import Role

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


def _act(args: argparse.Namespace) -> int:
    return print_json(asyncio.run(_account_command(args)))


# --- the first two admins (the owner role, once) ---------------------------------------------
async def _bootstrap_admins(first_login: str, second_login: str) -> dict[str, str]:
    import asyncpg

    from vault_service.services import connection

    dsn = Logins.from_env().owner
    if not dsn:
        raise ConfigurationError("VAULT_SERVICE_MIGRATIONS_DATABASE_URL (owner role) is not set")
    async with connection(dsn) as conn:
        try:
            row = await conn.fetchrow(
                "SELECT first_admin, second_admin FROM vs_bootstrap_admins($1, $2)",
                first_login,
                second_login,
            )
        except asyncpg.PostgresError:
            raise VaultServiceError(
                "admins already exist, or the logins are not distinct"
            ) from None
    assert row is not None
    return {first_login: str(row["first_admin"]), second_login: str(row["second_admin"])}


def _bootstrap(args: argparse.Namespace) -> int:
    result = asyncio.run(_bootstrap_admins(args.first_login, args.second_login))
    print(json.dumps(result, indent=2))
    return 0
