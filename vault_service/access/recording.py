"""Recording every access in the access log, allowed or refused.

Allowed accesses are recorded by the route that serves them, with what it returns
(record ids, field paths, criterion names) and the budgets that it draws on: one
durable entry and one budget decision, awaited before the response leaves (no entry,
no data: `AuditUnavailable`, 503; over budget: `BudgetExceeded`, 429, the entry then
stored as a refusal). Writes record their entry inside their own transaction.
Refusals (401, 403, 404, 4xx on bad input, 5xx) are recorded by the request gate
(vault_service/access/gate.py), which sees every error a /v1 route raises.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import asyncpg
import msgspec
import structlog
from litestar.types import Scope

from vault_service.access.anonymous import AnonymousRefusals
from vault_service.access.budgets import BudgetExceeded, BudgetPolicy, Charge
from vault_service.access.defence import BulkReadDefence
from vault_service.access.sequencer import (
    NO_BUDGET,
    BudgetClaim,
    Connection,
    Decision,
    Sequencer,
    add_in_transaction,
    decision_of,
    entry_arguments,
)
from vault_service.audit.entry import AccessEvent
from vault_service.auth.guards import VERIFIED_CLAIMS
from vault_service.auth.principal import Principal, VerifiedActor
from vault_service.errors import VaultServiceError

log = structlog.get_logger(__name__)
FINGERPRINT_LABEL: Final = b"vault-service/client-fingerprint/v1"
REFUSAL_LOGGED: Final = "refusal_logged"
"""Set in the request state when the refusal's entry is already durable (a budget
refusal is stored by the same statement that decided it): the gate adds no other."""


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def principal_of(scope: Scope) -> Principal | None:
    user: Any = scope.get("user")
    return user if isinstance(user, Principal) else None


def build_event(
    principal: Principal | None,
    state: Mapping[str, Any],
    action: str,
    outcome: str,
    *,
    record_ids: Sequence[uuid.UUID] = (),
    fields: tuple[str, ...] = (),
    criteria: tuple[str, ...] = (),
    refusal_code: str | None = None,
    fingerprint: str | None = None,
) -> AccessEvent:
    """An entry naming `principal` (None: unauthenticated), with the purpose and
    request id found in the request `state` (empty for a tool)."""
    purpose = state.get("purpose")
    return AccessEvent(
        action=action,
        outcome="allowed" if outcome == "allowed" else "refused",
        actor_id=principal.account_id if principal else None,
        role=str(principal.role) if principal else None,
        structure_id=principal.structure_id if principal else None,
        record_ids=tuple(record_ids),
        fields=fields,
        purpose=str(purpose[0]) if purpose else None,
        purpose_detail=purpose[1] if purpose else None,
        refusal_code=refusal_code,
        request_id=state.get("request_id"),
        token_jti=principal.jti if principal else None,
        client_fingerprint=fingerprint,
        criteria=criteria,
    )


class AccessRecorder:
    def __init__(
        self,
        sequencer: Sequencer,
        budgets: BudgetPolicy,
        fingerprint_key: bytes,
        defence: BulkReadDefence,
        anonymous: AnonymousRefusals,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.sequencer = sequencer
        self._anonymous = anonymous
        self.budgets = budgets
        self._key = fingerprint_key
        self._defence = defence
        self._proxies = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        self._trusted: dict[str, bool] = {}

    def _client_host(self, scope: Scope) -> str:
        """The client's address: the peer's, or, when the peer is a trusted proxy, the
        last address of X-Forwarded-For (the one that proxy appended)."""
        client = scope.get("client")
        host = client[0] if client else ""
        if not self._proxies or not host:
            return host
        trusted = self._trusted.get(host)
        if trusted is None:
            try:
                address = ipaddress.ip_address(host)
                trusted = any(address in network for network in self._proxies)
            except ValueError:
                trusted = False
            if len(self._trusted) < 1024:
                self._trusted[host] = trusted
        if not trusted:
            return host
        # The last header line, and its last address: what the trusted proxy appended
        # (a proxy may add a line of its own after the client's rather than append to
        # it; anything before is the client's say-so).
        forwarded = ""
        for key, value in scope["headers"]:
            if key == b"x-forwarded-for":
                forwarded = value.decode("latin-1")
        return forwarded.rpartition(",")[2].strip()[:64] or host

    def fingerprint(self, scope: Scope) -> str:
        """Salted hash of the client (address and user agent): links the requests of
        one client in an investigation, without storing an address."""
        host = self._client_host(scope)
        agent = _header(scope, b"user-agent")[:512]
        mac = hmac.new(self._key, f"{host}|{agent}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def event(
        self,
        scope: Scope,
        action: str,
        outcome: str,
        *,
        record_ids: Sequence[uuid.UUID] = (),
        fields: tuple[str, ...] = (),
        criteria: tuple[str, ...] = (),
        refusal_code: str | None = None,
    ) -> AccessEvent:
        return build_event(
            principal_of(scope),
            scope.get("state", {}),
            action,
            outcome,
            record_ids=record_ids,
            fields=fields,
            criteria=criteria,
            refusal_code=refusal_code,
            fingerprint=self.fingerprint(scope),
        )

    def _allowed_entry(
        self,
        scope: Scope,
        action: str,
        charge: Charge,
        record_ids: Sequence[uuid.UUID],
        fields: tuple[str, ...],
        criteria: tuple[str, ...] = (),
        break_glass: bool = False,
    ) -> tuple[Principal, AccessEvent, list[BudgetClaim]]:
        """The caller, its allowed entry and the budgets that entry draws on."""
        principal: Principal = scope["user"]
        claims = self.budgets.claims(principal, charge, record_ids, break_glass=break_glass)
        event = self.event(
            scope, action, "allowed", record_ids=record_ids, fields=fields, criteria=criteria
        )
        return principal, event, claims

    async def allowed(
        self,
        scope: Scope,
        action: str,
        charge: Charge,
        *,
        record_ids: Sequence[uuid.UUID] = (),
        fields: tuple[str, ...] = (),
        criteria: tuple[str, ...] = (),
        break_glass: bool = False,
    ) -> Decision:
        """Decide the budgets and make the entry durable, in one statement; returns the
        decision (for the RateLimit headers). Raises AuditUnavailable (no entry: return
        nothing) or BudgetExceeded (the entry was stored as a refusal)."""
        principal, event, claims = self._allowed_entry(
            scope, action, charge, record_ids, fields, criteria, break_glass
        )
        decision = await self.sequencer.commit(event, claims)
        if decision.refused:
            scope["state"][REFUSAL_LOGGED] = True
            await self._defence.refused(principal, decision)
            raise BudgetExceeded(decision, logged=True)
        return decision

    async def in_transaction(
        self,
        conn: Connection,
        scope: Scope,
        action: str,
        charge: Charge = Charge.NONE,
        *,
        record_ids: Sequence[uuid.UUID] = (),
        fields: tuple[str, ...] = (),
    ) -> Decision:
        """A write's entry, and its budgets, inside the write's transaction: they
        commit together or not at all. Over budget, BudgetExceeded is raised with
        nothing kept (the caller's transaction rolls back); the gate then records the
        refusal like any other."""
        principal, event, claims = self._allowed_entry(scope, action, charge, record_ids, fields)
        decision = await add_in_transaction(conn, event, claims)
        if decision.refused:
            # The caller's transaction rolls back (the refusal count with it); the
            # alert is raised on a connection of its own and stays.
            await self._defence.refused(principal, decision)
            raise BudgetExceeded(decision, logged=False)
        return decision

    def statement_entry(
        self,
        scope: Scope,
        action: str,
        charge: Charge,
        *,
        record_ids: Sequence[uuid.UUID] = (),
        fields: tuple[str, ...] = (),
    ) -> tuple[object, ...]:
        """The entry of a write whose own statement makes it durable (a create), as
        vs_access_commit's arguments; `accepted` reads the decision back."""
        _, event, claims = self._allowed_entry(scope, action, charge, record_ids, fields)
        return entry_arguments(event, claims)

    async def refused(self, scope: Scope, action: str, code: str) -> None:
        """The entry of a refused request; the request is refused either way, so a
        failure here is reported to the operator and not to the client. A request
        that named no verified actor is only counted (access/anonymous.py)."""
        state = scope.get("state", {})
        verified: VerifiedActor | None = state.get(VERIFIED_CLAIMS)
        if verified is None and principal_of(scope) is None:
            self._anonymous.count(self.fingerprint(scope), action, code)
            return
        raw_id = scope.get("path_params", {}).get("record_id")
        try:
            record_ids: tuple[uuid.UUID, ...] = (uuid.UUID(raw_id),) if raw_id else ()
        except (ValueError, TypeError):
            record_ids = ()
        event = self.event(scope, action, "refused", record_ids=record_ids, refusal_code=code)
        if verified is not None:
            # Verified, then refused (account state, link, assurance): the token's actor.
            event = msgspec.structs.replace(
                event,
                actor_id=verified.actor_id,
                role=verified.role,
                structure_id=verified.structure_id,
                token_jti=verified.jti,
            )
        try:
            await self.sequencer.commit(event)
        except VaultServiceError:
            log.error("refusal_not_logged", action=action, code=code)


class RequestLog:
    """The access-log side of one request. Its action is the one its route declares
    (`opt["action"]`), named once: allowed and refused entries both use it."""

    __slots__ = ("_recorder", "_scope", "action", "decision")

    def __init__(self, recorder: AccessRecorder, scope: Scope, action: str) -> None:
        self._recorder = recorder
        self._scope = scope
        self.action = action
        self.decision = NO_BUDGET
        """The budget decision of the entry made last (the response's RateLimit headers)."""

    async def allowed(
        self,
        charge: Charge,
        *,
        record_ids: Sequence[uuid.UUID] = (),
        fields: tuple[str, ...] = (),
        criteria: tuple[str, ...] = (),
        break_glass: bool = False,
    ) -> Decision:
        self.decision = await self._recorder.allowed(
            self._scope,
            self.action,
            charge,
            record_ids=record_ids,
            fields=fields,
            criteria=criteria,
            break_glass=break_glass,
        )
        return self.decision

    async def within(
        self,
        conn: Connection,
        charge: Charge = Charge.NONE,
        *,
        record_ids: Sequence[uuid.UUID] = (),
        fields: tuple[str, ...] = (),
    ) -> Decision:
        self.decision = await self._recorder.in_transaction(
            conn, self._scope, self.action, charge, record_ids=record_ids, fields=fields
        )
        return self.decision

    def statement_entry(
        self, charge: Charge = Charge.NONE, *, record_ids: Sequence[uuid.UUID] = ()
    ) -> tuple[object, ...]:
        return self._recorder.statement_entry(
            self._scope, self.action, charge, record_ids=record_ids
        )

    def accepted(self, row: asyncpg.Record) -> Decision:
        """The decision of a write's own statement (over budget: BudgetExceeded, and
        the statement wrote nothing because the caller rolled it back)."""
        return _accepted(self, decision_of(row))


class ToolLog:
    """The log of a write made by a tool rather than a request (demo data, benchmark
    seeding): the same entry in the same transaction, naming the principal the tool
    acts as, with no budget (a tool returns nothing to anyone)."""

    __slots__ = ("action", "decision", "principal")

    def __init__(self, principal: Principal, action: str) -> None:
        self.principal = principal
        self.action = action
        self.decision = NO_BUDGET

    async def within(
        self,
        conn: Connection,
        charge: Charge = Charge.NONE,
        *,
        record_ids: Sequence[uuid.UUID] = (),
        fields: tuple[str, ...] = (),
    ) -> Decision:
        del charge  # nothing is returned to anyone: no budget
        event = build_event(
            self.principal, {}, self.action, "allowed", record_ids=record_ids, fields=fields
        )
        return await add_in_transaction(conn, event)

    def statement_entry(
        self, charge: Charge = Charge.NONE, *, record_ids: Sequence[uuid.UUID] = ()
    ) -> tuple[object, ...]:
        del charge
        return entry_arguments(
            build_event(self.principal, {}, self.action, "allowed", record_ids=record_ids)
        )

    def accepted(self, row: asyncpg.Record) -> Decision:
        return _accepted(self, decision_of(row))


WriteLog = RequestLog | ToolLog
"""What a write takes to record itself inside its own transaction."""


def _accepted(log: RequestLog | ToolLog, decision: Decision) -> Decision:
    log.decision = decision
    if decision.refused:
        raise BudgetExceeded(decision, logged=False)
    return decision


def request_log(scope: Any) -> RequestLog:
    """The log of the request whose route declared an action (every data route)."""
    handler: Any = scope["route_handler"]
    recorder: AccessRecorder = scope["app"].state.recorder
    return RequestLog(recorder, scope, handler.opt["action"])
