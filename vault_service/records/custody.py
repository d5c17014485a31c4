"""Who holds a youth's record: transfers and break-the-glass.

Within a structure a supervisor transfers alone. A definitive transfer to another
structure is only asked by the sending structure's supervisor: it waits, pending, for
a supervisor of the receiving structure to accept it (or decline it; the sender may
cancel it; unanswered, it expires), so no one person pushes youth into another
structure. The move itself happens in the accepting transaction: the record key is
rewrapped under the target structure's branch key, the structure-scoped blind indexes
are recomputed under the target structure's index keys, the referent changes and the
request is marked accepted, together. A failure anywhere leaves the record exactly as
it was, readable by the old side only, and the request pending.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import asyncpg
import msgspec
import structlog

from vault_service.access.budgets import Charge
from vault_service.access.recording import WriteLog
from vault_service.auth.permissions import Role
from vault_service.auth.principal import Principal
from vault_service.errors import Conflict, Forbidden, InvalidBody, NotFound, VaultServiceError
from vault_service.records import access
from vault_service.records.repository import Connection, RecordRepository
from vault_service.records.sealing import RowState, Sealer

if TYPE_CHECKING:
    from vault_service.records.service import RecordService

alerts = structlog.get_logger("vault_service.alerts")
MAX_TEMPORARY: Final = datetime.timedelta(days=92)

BreakGlassReason = Literal[
    "referent_absent_youth_present", "safety_emergency", "legal_obligation", "service_continuity"
]


class TransferRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    to_account: uuid.UUID
    kind: Literal["definitive", "temporary"]
    until: Annotated[datetime.datetime, msgspec.Meta(tz=True)] | None = None


class BreakGlassRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    reason: BreakGlassReason


class ReviewRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    outcome: Literal["justified", "unjustified"]


class InvalidTransferTarget(VaultServiceError):
    status = 422
    code = "invalid_transfer_target"
    title = "The target must be an active counsellor (same structure for a temporary transfer)"


class AccountRestricted(Forbidden):
    code = "account_restricted"
    title = "A newly activated account cannot do this during its restricted period"


class TransferPending(Conflict):
    code = "transfer_pending"
    title = "A transfer request for this record is already waiting for its answer"


class TransferNotPending(Conflict):
    code = "transfer_not_pending"
    title = "This transfer request was already accepted, declined or cancelled"


class TransferExpired(Conflict):
    code = "transfer_expired"
    title = "This transfer request expired unanswered; the sending structure may ask again"


class TransferStale(Conflict):
    code = "transfer_stale"
    title = "The record is no longer in the structure that asked for its transfer"


class BreakGlassLimit(VaultServiceError):
    status = 429
    code = "break_glass_limit"
    title = "Too many break-the-glass grants in the last 24 hours"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "3600"})


@dataclass(frozen=True)
class Moved:
    record_id: uuid.UUID
    version: int
    structure_id: uuid.UUID
    referent_id: uuid.UUID


@dataclass(frozen=True)
class Requested:
    """A cross-structure transfer waiting for the receiving structure (202)."""

    transfer_id: uuid.UUID
    state: Literal["pending"]
    record_id: uuid.UUID
    to_structure: uuid.UUID
    expires_at: datetime.datetime


@dataclass(frozen=True)
class Answered:
    """A transfer request accepted (the record moved: its new version), declined or
    cancelled (`version` None)."""

    transfer_id: uuid.UUID
    state: Literal["accepted", "declined", "cancelled"]
    record_id: uuid.UUID
    structure_id: uuid.UUID
    referent_id: uuid.UUID | None = None
    version: int | None = None


class CustodyService:
    def __init__(
        self,
        records: RecordService,
        *,
        break_glass_minutes: int,
        break_glass_daily_limit: int,
        restriction_seconds: float = 0.0,
        transfer_acceptance_days: int = 14,
    ) -> None:
        # The record service's repository and sealer, shared: one pool, one key cache.
        self._records = records
        self._repo: RecordRepository = records.repository
        self._sealer: Sealer = records.sealer
        self._minutes = break_glass_minutes
        self._daily_limit = break_glass_daily_limit
        self._restriction = datetime.timedelta(seconds=restriction_seconds)
        self._acceptance_days = transfer_acceptance_days

    def _restricted(self, activated_at: datetime.datetime | None) -> bool:
        """Whether an account activated then is still in its restricted period."""
        if activated_at is None:
            return False  # as the account gate: never activated through a request
        return datetime.datetime.now(datetime.UTC) < activated_at + self._restriction

    async def transfer(
        self, principal: Principal, record_id: uuid.UUID, request: TransferRequest, log: WriteLog
    ) -> Moved | Requested:
        """Within the structure: done now. To another structure (definitive only): a
        pending request, the record untouched until the receiving side accepts."""
        if principal.role != Role.SUPERVISOR:
            raise Forbidden()
        if principal.restricted:
            # A newly activated account gives no youth away (nor receives any, below).
            raise AccountRestricted()
        async with self._repo.transaction() as conn:
            row = await self._held(conn, principal, record_id)
            target = await self._target(conn, request.to_account)
            source_structure: uuid.UUID = row["structure_id"]
            target_structure: uuid.UUID = target["structure_id"]
            outcome: Moved | Requested
            if request.kind == "temporary":
                outcome = await self._assign(conn, principal, row, target_structure, request)
            elif target_structure == source_structure:
                record_key = await self._sealer.record_key(row)
                sealed = self._resealed(row, record_key, source_structure, request.to_account)
                version = await self._repo.set_referent(
                    conn, record_id, request.to_account, int(row["version"]), sealed
                )
                outcome = Moved(record_id, version, target_structure, request.to_account)
            else:
                outcome = await self._ask(conn, principal, row, target_structure, request)
            await log.within(conn, Charge.TRANSFER, record_ids=(record_id,))
        _alert_transfer(principal, outcome, request)
        return outcome

    async def _held(
        self, conn: Connection, principal: Principal, record_id: uuid.UUID
    ) -> asyncpg.Record:
        """The record, locked, when the caller supervises its structure; 404 otherwise
        (and a honeytoken suspends the caller)."""
        if self._records.is_canary(record_id):
            await self._records.honeytoken_touched(principal, record_id)
            raise NotFound()
        row = await self._repo.fetch_for_update(conn, record_id, principal.account_id)
        if row is None or not access.supervises(principal, row["structure_id"]):
            raise NotFound()
        return row

    async def _target(self, conn: Connection, account_id: uuid.UUID) -> asyncpg.Record:
        """The account a record goes to: an active counsellor past their restricted
        period, checked when asked and again when accepted."""
        target = await self._repo.transfer_target(conn, account_id)
        if target is None or target["state"] != "active" or target["role"] != "counsellor":
            raise InvalidTransferTarget()
        if self._restricted(target["activated_at"]):
            raise InvalidTransferTarget("the target account is in its restricted period")
        return target

    async def _assign(
        self,
        conn: Connection,
        principal: Principal,
        row: asyncpg.Record,
        target_structure: uuid.UUID,
        request: TransferRequest,
    ) -> Moved:
        """A temporary transfer: a time-boxed assignment in the same structure."""
        if target_structure != row["structure_id"] or request.until is None:
            raise InvalidTransferTarget()
        now = datetime.datetime.now(datetime.UTC)
        if not now < request.until <= now + MAX_TEMPORARY:
            raise InvalidBody("`until` must be in the next 92 days")
        await self._repo.assign(
            conn, row["id"], request.to_account, "temporary", request.until, principal.account_id
        )
        return Moved(row["id"], int(row["version"]), target_structure, request.to_account)

    async def _ask(
        self,
        conn: Connection,
        principal: Principal,
        row: asyncpg.Record,
        target_structure: uuid.UUID,
        request: TransferRequest,
    ) -> Requested:
        """A definitive transfer to another structure: only the request is written."""
        transfer_id = uuid.uuid4()
        expires_at = await self._repo.request_transfer(
            conn,
            transfer_id,
            row["id"],
            row["structure_id"],
            target_structure,
            request.to_account,
            principal.account_id,
            self._acceptance_days,
        )
        if expires_at is None:
            raise TransferPending()
        return Requested(transfer_id, "pending", row["id"], target_structure, expires_at)

    async def accept(self, principal: Principal, transfer_id: uuid.UUID, log: WriteLog) -> Answered:
        """The receiving structure's supervisor accepts: everything the request was
        checked for is checked again, under the record's lock, then the record moves."""
        if principal.restricted:
            raise AccountRestricted()  # a newcomer receives no youth for the structure
        async with self._repo.transaction() as conn:
            # Record first, then request: the order every custody write locks in.
            first = await self._repo.transfer_request(conn, transfer_id)
            if first is None or not access.may_answer_transfer(principal, first):
                raise NotFound()
            row = await self._repo.fetch_for_update(conn, first["record_id"], principal.account_id)
            pending = await self._pending(conn, transfer_id)
            if row is None or row["structure_id"] != pending["from_structure"]:
                raise TransferStale()
            target = await self._target(conn, pending["to_account"])
            if target["structure_id"] != pending["to_structure"]:
                raise InvalidTransferTarget()
            version = await self._move(conn, row, pending["to_structure"], pending["to_account"])
            await self._repo.decide_transfer(conn, transfer_id, "accepted", principal.account_id)
            await log.within(conn, Charge.TRANSFER, record_ids=(row["id"],))
        answered = Answered(
            transfer_id,
            "accepted",
            row["id"],
            pending["to_structure"],
            pending["to_account"],
            version,
        )
        _alert_answer(principal, answered)
        return answered

    async def _move(
        self, conn: Connection, row: Any, target_structure: uuid.UUID, to_account: uuid.UUID
    ) -> int:
        """Another structure: rewrap the record key and re-derive structure-scoped
        indexes. The one code path by which a record changes structure."""
        record_key, rewrapped, target_version = await self._sealer.rewrap_record_key(
            row, target_structure
        )
        scoped = [p for p in self._sealer.schema.indexed if p.index and not p.index.national]
        values = self._sealer.decrypt_values(row, record_key, [p.name for p in scoped])
        names, digests = await self._sealer.index_values(target_structure, values, scoped)
        sealed = self._resealed(row, record_key, target_structure, to_account)
        return await self._repo.move(
            conn,
            row["id"],
            target_structure,
            to_account,
            target_version,
            rewrapped,
            names,
            digests,
            int(row["version"]),
            sealed,
        )

    def _resealed(
        self, row: Any, record_key: Any, structure_id: uuid.UUID, referent_id: uuid.UUID
    ) -> bytes:
        """The row's sealed fields with a new integrity tag for its new holder and next
        version, once the row as it is has passed its own check (a tampered row is
        never re-tagged as ours)."""
        self._sealer.check_integrity(row, record_key)
        sealed, clear = self._sealer.stored(row)
        state = RowState(
            row["id"], int(row["version"]) + 1, structure_id, referent_id, int(row["key_version"])
        )
        return self._sealer.pack(sealed, clear, record_key, state)[0]

    async def decline(
        self, principal: Principal, transfer_id: uuid.UUID, log: WriteLog
    ) -> Answered:
        """The receiving structure says no: the record stays where it is."""
        return await self._close(principal, transfer_id, "declined", log)

    async def cancel(self, principal: Principal, transfer_id: uuid.UUID, log: WriteLog) -> Answered:
        """The sending structure withdraws its request."""
        return await self._close(principal, transfer_id, "cancelled", log)

    async def _close(
        self,
        principal: Principal,
        transfer_id: uuid.UUID,
        state: Literal["declined", "cancelled"],
        log: WriteLog,
    ) -> Answered:
        """A request ends without a move: no key, no index, no referent changes."""
        allowed = access.may_answer_transfer if state == "declined" else access.may_cancel_transfer
        async with self._repo.transaction() as conn:
            request = await self._repo.transfer_request(conn, transfer_id, lock=True)
            if request is None or not allowed(principal, request):
                raise NotFound()
            _still_pending(request)
            await self._repo.decide_transfer(conn, transfer_id, state, principal.account_id)
            await log.within(conn, record_ids=(request["record_id"],))
        answered = Answered(transfer_id, state, request["record_id"], request["from_structure"])
        _alert_answer(principal, answered)
        return answered

    async def _pending(self, conn: Connection, transfer_id: uuid.UUID) -> asyncpg.Record:
        """The request, locked, still pending and not expired."""
        request = await self._repo.transfer_request(conn, transfer_id, lock=True)
        if request is None:
            raise NotFound()
        _still_pending(request)
        return request

    async def transfer_requests(
        self, principal: Principal, incoming: bool, after: uuid.UUID, limit: int
    ) -> list[dict[str, Any]]:
        """Requests waiting for an answer, into (`incoming`) or out of the supervisor's
        structure."""
        if principal.role != Role.SUPERVISOR or principal.structure_id is None:
            raise Forbidden()
        rows = await self._repo.transfer_requests(principal.structure_id, incoming, after, limit)
        return [dict(r) for r in rows]

    async def break_glass(
        self,
        principal: Principal,
        record_id: uuid.UUID,
        request: BreakGlassRequest,
        log: WriteLog,
    ) -> dict[str, Any]:
        if principal.restricted:
            alerts.warning(
                "break_glass_refused",
                alert=True,
                code="account_restricted",
                actor_id=str(principal.account_id),
                record_id=str(record_id),
            )
            raise AccountRestricted()
        if principal.structure_id is None:
            raise Forbidden()
        grant_id = uuid.uuid4()
        async with self._repo.transaction() as conn:
            # Serialise one account's grants so the daily limit cannot be raced.
            await self._repo.lock_account_grants(conn, principal.account_id)
            if await self._repo.recent_grants(conn, principal.account_id) >= self._daily_limit:
                alerts.warning(
                    "break_glass_refused",
                    alert=True,
                    code="break_glass_limit",
                    actor_id=str(principal.account_id),
                )
                raise BreakGlassLimit()
            # Only within the caller's own structure, checked after the limit so the
            # answer is never an existence oracle: a record elsewhere is "not found".
            structure_id = await self._repo.record_structure(conn, record_id)
            if self._records.is_canary(record_id):
                await self._records.honeytoken_touched(principal, record_id)
                raise NotFound()
            if not access.may_break_glass_on(principal, structure_id):
                raise NotFound()
            row = await self._repo.insert_grant(
                conn,
                grant_id,
                record_id,
                principal.account_id,
                principal.structure_id,
                request.reason,
                self._minutes,
            )
            await log.within(conn, record_ids=(record_id,))
        alerts.warning(
            "break_glass_opened",
            alert=True,
            grant_id=str(grant_id),
            record_id=str(record_id),
            actor_id=str(principal.account_id),
            reason=request.reason,
        )
        return {"grant_id": grant_id, "record_id": record_id, "expires_at": row["expires_at"]}

    async def review_queue(
        self, principal: Principal, after: uuid.UUID, limit: int
    ) -> list[dict[str, Any]]:
        if principal.role != Role.SUPERVISOR or principal.structure_id is None:
            raise Forbidden()
        rows = await self._repo.review_queue(principal.structure_id, after, limit)
        return [dict(r) for r in rows]

    async def grants_for_audit(
        self,
        principal: Principal,
        state: str | None,
        after: uuid.UUID | None,
        limit: int,
        *,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Every grant and its review, for auditors: ids, codes and times only; in id
        order, or newest first, after the grant `after` (None: from the first)."""
        if principal.role != Role.AUDITOR:
            raise Forbidden()
        rows = await self._repo.grants_for_audit(state, after, limit, newest_first=newest_first)
        return [dict(r) for r in rows]

    async def review(
        self, principal: Principal, grant_id: uuid.UUID, request: ReviewRequest, log: WriteLog
    ) -> None:
        if principal.role != Role.SUPERVISOR or principal.structure_id is None:
            raise Forbidden()
        async with self._repo.transaction() as conn:
            row = await self._repo.review_grant(
                conn, grant_id, principal.structure_id, principal.account_id, request.outcome
            )
            if row is None:
                raise NotFound()
            await log.within(conn, record_ids=(row["record_id"],))
        alerts.warning(
            "break_glass_reviewed",
            alert=True,
            grant_id=str(grant_id),
            outcome=request.outcome,
            actor_id=str(principal.account_id),
        )


def _still_pending(request: asyncpg.Record) -> None:
    if request["state"] != "pending":
        raise TransferNotPending()
    if request["expired"]:
        raise TransferExpired()


def _alert_transfer(
    principal: Principal, outcome: Moved | Requested, request: TransferRequest
) -> None:
    """Ids only: who moved (or asked to move) which record to whom."""
    if isinstance(outcome, Requested):
        alerts.warning(
            "transfer_requested",
            alert=True,
            transfer_id=str(outcome.transfer_id),
            record_id=str(outcome.record_id),
            actor_id=str(principal.account_id),
            to_account=str(request.to_account),
            to_structure=str(outcome.to_structure),
        )
        return
    alerts.warning(
        "record_transferred",
        alert=True,
        record_id=str(outcome.record_id),
        kind=request.kind,
        actor_id=str(principal.account_id),
        to_account=str(request.to_account),
        cross_structure=False,
    )


def _alert_answer(principal: Principal, answered: Answered) -> None:
    alerts.warning(
        "record_transferred" if answered.state == "accepted" else f"transfer_{answered.state}",
        alert=True,
        transfer_id=str(answered.transfer_id),
        record_id=str(answered.record_id),
        actor_id=str(principal.account_id),
        cross_structure=True,
    )
