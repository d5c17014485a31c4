"""Account administration: four-eyes requests, decisions, suspension.

The rules live in the database (migrations/0003_identity.sql: SECURITY DEFINER
functions; the application role cannot update accounts directly). This module
calls them, maps their refusals to stable error codes, and raises an alert-level
log event for every request, decision and refusal.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from vault_service.auth.permissions import Role
from vault_service.errors import Conflict, Forbidden, NotFound, VaultServiceError

alerts = structlog.get_logger("vault_service.alerts")


class ActorNotAdmin(Forbidden):
    code = "actor_not_admin"
    title = "The acting account is not an active admin"


class RoleAboveActor(Forbidden):
    code = "role_above_actor"
    title = "Nobody grants or approves a role above their own"


class SelfApproval(Forbidden):
    code = "four_eyes_required"
    title = "A second, different admin must decide this request"


class NoSuchAccount(NotFound):
    code = "no_such_account"
    title = "No such account"


class NoPendingRequest(NotFound):
    code = "no_pending_request"
    title = "No pending request with this id"


class NotSuspended(Conflict):
    code = "account_not_suspended"
    title = "Only a suspended or disabled account can be reactivated"


_ERRORS: Final[dict[str, type[VaultServiceError]]] = {
    "VS001": ActorNotAdmin,
    "VS002": RoleAboveActor,
    "VS003": NoSuchAccount,
    "VS004": NotSuspended,
    "VS006": NoPendingRequest,
    "VS007": SelfApproval,
}

SELECT_REQUESTS: Final = """
SELECT id, kind, account_id, role, structure_id, requested_by, requested_at, state,
       decided_by, decided_at
FROM account_requests WHERE ($1::text IS NULL OR state = $1) ORDER BY requested_at, id
"""


@dataclass(frozen=True)
class RequestRef:
    request_id: uuid.UUID
    account_id: uuid.UUID


class AccountAdmin:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def _call(self, action: str, actor: uuid.UUID | None, sql: str, *args: Any) -> Any:
        try:
            async with self._pool.acquire() as conn:
                result = await conn.fetchrow(sql, *args)
        except asyncpg.PostgresError as exc:
            error = _ERRORS.get(getattr(exc, "sqlstate", "") or "")
            alerts.warning(
                "account_action_refused",
                alert=True,
                action=action,
                actor_id=str(actor) if actor else None,
                code=error.code if error else "database_error",
            )
            if error is None:
                raise
            raise error() from None
        return result

    async def request_create(
        self, actor: uuid.UUID, role: Role, structure_id: uuid.UUID | None
    ) -> RequestRef:
        ref = RequestRef(uuid.uuid4(), uuid.uuid4())
        await self._call(
            "create",
            actor,
            "SELECT vs_request_account($1, $2, $3, $4, $5)",
            ref.request_id,
            ref.account_id,
            str(role),
            structure_id,
            actor,
        )
        alerts.warning(
            "account_requested",
            alert=True,
            request_id=str(ref.request_id),
            account_id=str(ref.account_id),
            role=str(role),
            actor_id=str(actor),
        )
        return ref

    async def request_change(
        self,
        actor: uuid.UUID,
        kind: str,
        account_id: uuid.UUID,
        role: Role | None = None,
        structure_id: uuid.UUID | None = None,
    ) -> RequestRef:
        ref = RequestRef(uuid.uuid4(), account_id)
        await self._call(
            kind,
            actor,
            "SELECT vs_request_change($1, $2, $3, $4, $5, $6)",
            ref.request_id,
            kind,
            account_id,
            str(role) if role else None,
            structure_id,
            actor,
        )
        alerts.warning(
            "account_change_requested",
            alert=True,
            kind=kind,
            request_id=str(ref.request_id),
            account_id=str(account_id),
            actor_id=str(actor),
        )
        return ref

    async def decide(self, actor: uuid.UUID, request_id: uuid.UUID, *, approve: bool) -> RequestRef:
        row = await self._call(
            "approve" if approve else "refuse",
            actor,
            "SELECT kind, account_id FROM vs_decide_request($1, $2, $3)",
            request_id,
            actor,
            approve,
        )
        alerts.warning(
            "account_request_decided",
            alert=True,
            request_id=str(request_id),
            kind=row["kind"],
            approved=approve,
            account_id=str(row["account_id"]),
            actor_id=str(actor),
        )
        return RequestRef(request_id, row["account_id"])

    async def set_state(self, actor: uuid.UUID | None, account_id: uuid.UUID, state: str) -> None:
        """Suspend or disable now; `actor` None is the service itself (bulk-read defence)."""
        await self._call(
            state, actor, "SELECT vs_set_account_state($1, $2, $3)", account_id, state, actor
        )
        alerts.warning(
            "account_state_changed",
            alert=True,
            account_id=str(account_id),
            state=state,
            actor_id=str(actor) if actor else "service",
        )

    async def requests(self, state: str | None = "pending") -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_REQUESTS, state)
        return [
            {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in dict(r).items()}
            for r in rows
        ]
