"""`vault-service tokens`: a service token for an active account (the service's
signing key, inside Vault), and revoking one token (an admin's own login)."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from vault_service.cli.arguments import parse_ttl, uuid_arg
from vault_service.cli.logins import admin_login
from vault_service.cli.output import print_json
from vault_service.errors import Forbidden, NotFound
from vault_service.settings import Settings

if TYPE_CHECKING:
    from vault_service.audit.entry import AccessEvent

__all__ = ["issue", "register"]


def register(sub: Any) -> None:
    tokens = sub.add_parser("tokens", help="service tokens").add_subparsers(
        dest="action", required=True
    )
    revoke = tokens.add_parser(
        "revoke", help="refuse one token from the next request on, every replica (admin login)"
    )
    revoke.add_argument("jti", type=uuid_arg)
    revoke.set_defaults(run=_revoke)
    issuing = tokens.add_parser("issue", help="print a signed token for an active account")
    issuing.add_argument("--subject", type=uuid_arg, required=True)
    issuing.add_argument("--ttl", type=parse_ttl, default=900)
    issuing.set_defaults(run=_issue)


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


async def issue(settings: Settings, subject: uuid.UUID, ttl: int) -> str:
    """A token for `subject`, printed only once its access-log entry is durable."""
    from vault_service.access.sequencer import add_in_transaction
    from vault_service.auth.permissions import Role
    from vault_service.services import connection, token_issuer, vault

    async with connection(settings.database.url) as conn:
        row = await conn.fetchrow(
            "SELECT role, structure_id, state FROM accounts WHERE id = $1", subject
        )
        if row is None or row["state"] != "active":
            raise NotFound("no active account with this id")
        if row["role"] == "admin":
            # Admins act through their own database login, never through a token: a
            # token minted with the service's credentials must not stand for an admin.
            raise Forbidden("admins get no service token")
        async with AsyncExitStack() as stack:
            issuer = token_issuer(settings, vault(stack, settings))
            token = await issuer.issue(subject, Role(row["role"]), row["structure_id"], ttl)
        # No entry, no token: the token is printed only once its entry is durable.
        async with conn.transaction():
            await add_in_transaction(conn, _token_issued(token, row["structure_id"]))
        return token


def _issue(args: argparse.Namespace) -> int:
    print(asyncio.run(issue(Settings.from_env(), args.subject, args.ttl)))
    return 0


async def _revoke_token(jti: uuid.UUID) -> dict[str, str]:
    from vault_service.auth.admin import AccountAdmin
    from vault_service.services import login_pool

    async with login_pool(admin_login()) as pool:
        await AccountAdmin(pool).revoke_token(jti)
    return {"jti": str(jti), "state": "revoked"}


def _revoke(args: argparse.Namespace) -> int:
    return print_json(asyncio.run(_revoke_token(args.jti)))
