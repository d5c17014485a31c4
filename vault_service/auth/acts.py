"""Admin acts in the database: the refusals every family of them shares, and the one
way a refusal becomes an error.

An admin act is a SECURITY DEFINER function run on the acting admin's own login
(account acts: auth/admin.py; record acts: records/retention.py). A function refuses
with a SQLSTATE of the `VS` class; each family maps its SQLSTATEs to errors, starting
from `SHARED_REFUSALS`. The two families' maps cannot be merged into one: past the
shared codes, the same SQLSTATE means different things (VS013 is "two admins must
remain" for an account and "request conflict" for a record). A SQLSTATE a family does
not map stays a database error (500), never a guessed refusal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from vault_service.errors import Forbidden, NotFound, VaultServiceError

__all__ = [
    "SHARED_REFUSALS",
    "ActFamily",
    "ActorNotAdmin",
    "NoPendingRequest",
    "OnRefusal",
    "SelfApproval",
]

alerts = structlog.get_logger("vault_service.alerts")


class ActorNotAdmin(Forbidden):
    code = "actor_not_admin"
    title = "The calling login is not an active admin"


class SelfApproval(Forbidden):
    code = "four_eyes_required"
    title = "A second, different admin must decide this request"


class NoPendingRequest(NotFound):
    code = "no_pending_request"
    title = "No pending request with this id"


SHARED_REFUSALS: Final[Mapping[str, type[VaultServiceError]]] = {
    "VS001": ActorNotAdmin,
    "VS006": NoPendingRequest,
    "VS007": SelfApproval,
}
"""What every admin-act function means by these SQLSTATEs (migrations/0003_identity.sql)."""

OnRefusal = Callable[[Any, type[VaultServiceError]], Awaitable[None]]
"""Called with the act's connection and the refusal, before it is raised."""


@dataclass(frozen=True, slots=True)
class ActFamily:
    """One family of admin-act functions: the alert event its refusals raise, and what
    its SQLSTATEs mean (`SHARED_REFUSALS` and its own)."""

    refused_event: str
    refusals: Mapping[str, type[VaultServiceError]]

    async def call(
        self,
        conn: Any,
        action: str,
        sql: str,
        *args: Any,
        on_refusal: OnRefusal | None = None,
    ) -> Any:
        """The act's one row. A refusal raises an alert-level event (its code, never
        the database's text) and then its error; any other database error, the
        event with `database_error`, then itself."""
        try:
            return await conn.fetchrow(sql, *args)
        except asyncpg.PostgresError as exc:
            error = self.refusals.get(getattr(exc, "sqlstate", "") or "")
            code = error.code if error else "database_error"
            alerts.warning(self.refused_event, alert=True, action=action, code=code)
            if error is None:
                raise
            if on_refusal is not None:
                await on_refusal(conn, error)
            raise error() from None
