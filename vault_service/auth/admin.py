"""Account administration: four-eyes requests, decisions, suspension.

The rules live in the database (migrations/0003_identity.sql): SECURITY DEFINER
functions that take the acting admin from the calling database login, never from an
argument. `AccountAdmin` therefore runs on a pool connected as the admin's own
login (VAULT_SERVICE_ADMIN_DATABASE_URL), maps the functions' refusals to stable
error codes, and raises an alert-level log event for every request, decision and
refusal. `service_suspend` is the one act the service's own role may perform.

Each act's access-log entry is written by its database function, in the act's
transaction (migrations/0012_admin_acts.sql). A refused act rolls back with its
entry, so the refusal is logged here, in a transaction of its own on the same login
(`vs_log_admin_act`): one entry per act either way. A login that is not an active
admin cannot be named, so its refusals reach the alert log only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from vault_service.auth.acts import (
    SHARED_REFUSALS,
    ActFamily,
    ActorNotAdmin,
    NoPendingRequest,
    SelfApproval,
)
from vault_service.auth.permissions import Role
from vault_service.errors import Conflict, Forbidden, NotFound, VaultServiceError

# The refusals shared with the record acts are defined in acts.py and named here too:
# a caller of the account acts catches every refusal of theirs from this module.
__all__ = [
    "AccountAdmin",
    "ActorNotAdmin",
    "IdentityLinked",
    "IdentityNotLinked",
    "IdentityRequestPending",
    "LastAdmins",
    "NoOpenAlert",
    "NoPendingRequest",
    "NoSuchAccount",
    "NotAllowed",
    "NotSuspended",
    "RequestRef",
    "RoleAboveActor",
    "SelfApproval",
    "StillReferent",
    "service_suspend",
]

alerts = structlog.get_logger("vault_service.alerts")


class RoleAboveActor(Forbidden):
    code = "role_above_actor"
    title = "Nobody grants or approves a role above their own"


class NoSuchAccount(NotFound):
    code = "no_such_account"
    title = "No such account"


class NotSuspended(Conflict):
    code = "account_not_suspended"
    title = "Only a suspended or disabled account can be reactivated"


class StillReferent(Conflict):
    code = "caseload_not_empty"
    title = "Transfer this account's youth before moving it to another structure"


class NotAllowed(Forbidden):
    code = "state_change_not_allowed"
    title = "This state change is not allowed here"


class NoOpenAlert(NotFound):
    code = "no_open_alert"
    title = "No open alert with this id"


class LastAdmins(Conflict):
    code = "two_admins_must_remain"
    title = "At least two active admins must remain"


class IdentityLinked(Conflict):
    code = "identity_already_linked"
    title = "This external identity is already linked to an account"


class IdentityNotLinked(NotFound):
    code = "identity_not_linked"
    title = "This external identity is not linked to this account"


class IdentityRequestPending(Conflict):
    code = "identity_request_pending"
    title = "A request for this external identity is already pending"


_ACCOUNT_ACTS: Final = ActFamily(
    "account_action_refused",
    {
        **SHARED_REFUSALS,
        "VS002": RoleAboveActor,
        "VS003": NoSuchAccount,
        "VS004": NotSuspended,
        "VS008": NotAllowed,
        "VS010": StillReferent,
        "VS011": NoOpenAlert,
        "VS013": LastAdmins,
        "VS014": IdentityLinked,
        "VS015": IdentityNotLinked,
        "VS016": IdentityRequestPending,
    },
)

SELECT_REQUESTS: Final = """
SELECT id, kind, account_id, role, structure_id, requested_by, requested_at, state,
       decided_by, decided_at, issuer, subject
FROM account_requests WHERE ($1::text IS NULL OR state = $1) ORDER BY requested_at, id
"""
SELECT_ACTOR: Final = "SELECT account_id FROM admin_logins WHERE rolname = session_user"
SELECT_ALERTS: Final = """
SELECT id, raised_at, severity, kind, account_id, structure_id, details::text AS details,
       state, acked_by, acked_at, ack_comment
FROM alerts WHERE ($1::text IS NULL OR state = $1) ORDER BY raised_at, id
"""


@dataclass(frozen=True)
class RequestRef:
    request_id: uuid.UUID
    account_id: uuid.UUID


@dataclass(frozen=True)
class _Act:
    """An admin act as the access log names it: the action, and the ids it concerns."""

    action: str
    record_ids: tuple[uuid.UUID, ...] = ()
    request_id: uuid.UUID | None = None
    jti: uuid.UUID | None = None


LOG_REFUSAL: Final = "SELECT vs_log_admin_act($1, 'refused', $2, NULL, $3, 1, $4, $5)"


async def _call(
    pool: asyncpg.Pool, act: _Act, sql: str, *args: Any, log_refusal: bool = True
) -> Any:
    async def logged(conn: Any, error: type[VaultServiceError]) -> None:
        if error is ActorNotAdmin:
            return  # a login that is not an active admin cannot be named in an entry
        # The act rolled back with its entry: the refusal gets its own. Were that to
        # fail, the act stays refused and the alert log says so.
        try:
            await conn.execute(
                LOG_REFUSAL, act.action, list(act.record_ids), error.code, act.request_id, act.jti
            )
        except asyncpg.PostgresError as failed:
            alerts.error(
                "admin_refusal_not_logged",
                alert=True,
                action=act.action,
                error_type=type(failed).__name__,
            )

    async with pool.acquire() as conn:
        return await _ACCOUNT_ACTS.call(
            conn, act.action, sql, *args, on_refusal=logged if log_refusal else None
        )


class AccountAdmin:
    """Admin acts, on a pool connected as one admin's own database login."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def actor(self) -> uuid.UUID | None:
        async with self._pool.acquire() as conn:
            found: uuid.UUID | None = await conn.fetchval(SELECT_ACTOR)
        return found

    async def _alert(self, event: str, **fields: Any) -> None:
        actor = await self.actor()
        alerts.warning(event, alert=True, actor_id=str(actor) if actor else None, **fields)

    async def request_create(self, role: Role, structure_id: uuid.UUID | None) -> RequestRef:
        ref = RequestRef(uuid.uuid4(), uuid.uuid4())
        await _call(
            self._pool,
            _Act("account.request_create", (ref.account_id,), ref.request_id),
            "SELECT vs_request_account($1, $2, $3, $4)",
            ref.request_id,
            ref.account_id,
            str(role),
            structure_id,
        )
        await self._alert(
            "account_requested",
            request_id=str(ref.request_id),
            account_id=str(ref.account_id),
            role=str(role),
        )
        return ref

    async def request_change(
        self,
        kind: str,
        account_id: uuid.UUID,
        role: Role | None = None,
        structure_id: uuid.UUID | None = None,
    ) -> RequestRef:
        ref = RequestRef(uuid.uuid4(), account_id)
        await _call(
            self._pool,
            _Act(f"account.request_{kind}", (account_id,), ref.request_id),
            "SELECT vs_request_change($1, $2, $3, $4, $5)",
            ref.request_id,
            kind,
            account_id,
            str(role) if role else None,
            structure_id,
        )
        await self._alert(
            "account_change_requested",
            kind=kind,
            request_id=str(ref.request_id),
            account_id=str(account_id),
        )
        return ref

    async def request_identity(
        self, kind: str, account_id: uuid.UUID, issuer: str, subject: str
    ) -> RequestRef:
        """Ask to link (`link`) or unlink (`unlink`) an external OpenID identity; a
        second admin approves. The subject stays out of the logs: ids only."""
        ref = RequestRef(uuid.uuid4(), account_id)
        await _call(
            self._pool,
            _Act(f"account.request_{kind}", (account_id,), ref.request_id),
            "SELECT vs_request_identity($1, $2, $3, $4, $5)",
            ref.request_id,
            kind,
            account_id,
            issuer,
            subject,
        )
        await self._alert(
            "account_change_requested",
            kind=kind,
            request_id=str(ref.request_id),
            account_id=str(account_id),
        )
        return ref

    async def decide(self, request_id: uuid.UUID, *, approve: bool) -> RequestRef:
        row = await _call(
            self._pool,
            _Act("account.approve" if approve else "account.refuse", (), request_id),
            "SELECT kind, account_id FROM vs_decide_request($1, $2)",
            request_id,
            approve,
        )
        await self._alert(
            "account_request_decided",
            request_id=str(request_id),
            kind=row["kind"],
            approved=approve,
            account_id=str(row["account_id"]),
        )
        return RequestRef(request_id, row["account_id"])

    async def set_state(self, account_id: uuid.UUID, state: str) -> RequestRef | None:
        """Suspend or disable now; an admin, through a request that a second admin
        approves (returned; None when the state changed at once)."""
        verb = {"suspended": "suspend", "disabled": "disable"}.get(state, "set_state")
        request_id = uuid.uuid4()
        row = await _call(
            self._pool,
            _Act(f"account.{verb}", (account_id,)),
            "SELECT vs_set_account_state($1, $2, $3) AS state",
            account_id,
            state,
            request_id,
        )
        if row["state"] == "pending":
            await self._alert(
                "account_change_requested",
                kind=verb,
                request_id=str(request_id),
                account_id=str(account_id),
            )
            return RequestRef(request_id, account_id)
        await self._alert("account_state_changed", account_id=str(account_id), state=state)
        return None

    async def requests(self, state: str | None = "pending") -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_REQUESTS, state)
        return [
            {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in dict(r).items()}
            for r in rows
        ]

    async def revoke_token(self, jti: uuid.UUID) -> None:
        await _call(self._pool, _Act("token.revoke", jti=jti), "SELECT vs_revoke_token($1)", jti)
        await self._alert("token_revoked", jti=str(jti))

    async def revoke_account_tokens(self, account_id: uuid.UUID) -> None:
        await _call(
            self._pool,
            _Act("account.revoke_tokens", (account_id,)),
            "SELECT vs_revoke_account_tokens($1)",
            account_id,
        )
        await self._alert("account_tokens_revoked", account_id=str(account_id))

    async def alerts(self, state: str | None = "open") -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_ALERTS, state)
        return [
            {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in dict(r).items()}
            for r in rows
        ]

    async def ack_alert(self, alert_id: uuid.UUID, comment: str) -> None:
        await _call(
            self._pool,
            _Act("alert.ack", (alert_id,)),
            "SELECT vs_ack_alert($1, $2)",
            alert_id,
            comment,
        )
        await self._alert("alert_acknowledged", alert_id=str(alert_id))


async def service_suspend(pool: asyncpg.Pool, account_id: uuid.UUID, reason: str) -> None:
    """The service suspends an account by itself (the bulk-read defence), on its own
    pool: the only account act its database role may perform."""
    # The service's role cannot speak for an admin: the defence logs its suspensions.
    await _call(
        pool,
        _Act("account.service_suspend"),
        "SELECT vs_service_suspend($1)",
        account_id,
        log_refusal=False,
    )
    alerts.warning(
        "account_state_changed",
        alert=True,
        account_id=str(account_id),
        state="suspended",
        actor_id="service",
        reason=reason,
    )
