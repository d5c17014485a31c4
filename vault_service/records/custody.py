"""Who holds a youth's record: transfers and break-the-glass.

A transfer is one transaction: the record key is rewrapped under the target
structure's branch key, the structure-scoped blind indexes are recomputed under the
target structure's index keys, and the referent changes, together. A failure
anywhere leaves the record exactly as it was, readable by the old side only.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
import structlog

from vault_service.audit.recording import WriteLog
from vault_service.auth.permissions import Role
from vault_service.auth.principal import Principal
from vault_service.errors import Forbidden, InvalidBody, NotFound, VaultServiceError
from vault_service.limits.budgets import Charge
from vault_service.records import access
from vault_service.records.repository import Connection, RecordRepository
from vault_service.records.sealing import Sealer

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


class CustodyService:
    def __init__(
        self,
        records: RecordService,
        *,
        break_glass_minutes: int,
        break_glass_daily_limit: int,
        restriction_seconds: float = 0.0,
    ) -> None:
        # The record service's repository and sealer, shared: one pool, one key cache.
        self._records = records
        self._repo: RecordRepository = records.repository
        self._sealer: Sealer = records.sealer
        self._minutes = break_glass_minutes
        self._daily_limit = break_glass_daily_limit
        self._restriction = datetime.timedelta(seconds=restriction_seconds)

    def _restricted(self, activated_at: datetime.datetime | None) -> bool:
        """Whether an account activated then is still in its restricted period."""
        if activated_at is None:
            return False  # as the account gate: never activated through a request
        return datetime.datetime.now(datetime.UTC) < activated_at + self._restriction

    async def transfer(
        self, principal: Principal, record_id: uuid.UUID, request: TransferRequest, log: WriteLog
    ) -> Moved:
        if principal.role != Role.SUPERVISOR:
            raise Forbidden()
        if principal.restricted:
            # A newly activated account gives no youth away (nor receives any, below).
            raise AccountRestricted()
        async with self._repo.transaction() as conn:
            row = await self._repo.fetch_for_update(conn, record_id, principal.account_id)
            if row is not None and row["honeytoken"]:
                await self._records.honeytoken_touched(principal, record_id)
                raise NotFound()
            if row is None or not access.supervises(principal, row["structure_id"]):
                raise NotFound()
            target = await self._repo.transfer_target(conn, request.to_account)
            if target is None or target["state"] != "active" or target["role"] != "counsellor":
                raise InvalidTransferTarget()
            if self._restricted(target["activated_at"]):
                raise InvalidTransferTarget("the target account is in its restricted period")
            source_structure: uuid.UUID = row["structure_id"]
            target_structure: uuid.UUID = target["structure_id"]
            if request.kind == "temporary":
                if target_structure != source_structure or request.until is None:
                    raise InvalidTransferTarget()
                now = datetime.datetime.now(datetime.UTC)
                if not now < request.until <= now + MAX_TEMPORARY:
                    raise InvalidBody("`until` must be in the next 92 days")
                await self._repo.assign(
                    conn,
                    record_id,
                    request.to_account,
                    "temporary",
                    request.until,
                    principal.account_id,
                )
                version = int(row["version"])
            elif target_structure == source_structure:
                version = await self._repo.set_referent(conn, record_id, request.to_account)
            else:
                version = await self._move(conn, row, target_structure, request.to_account)
            await log.within(conn, Charge.TRANSFER, record_ids=(record_id,))
        alerts.warning(
            "record_transferred",
            alert=True,
            record_id=str(record_id),
            kind=request.kind,
            actor_id=str(principal.account_id),
            to_account=str(request.to_account),
            cross_structure=target_structure != source_structure,
        )
        return Moved(record_id, version, target_structure, request.to_account)

    async def _move(
        self, conn: Connection, row: Any, target_structure: uuid.UUID, to_account: uuid.UUID
    ) -> int:
        """Another structure: rewrap the record key and re-derive structure-scoped indexes."""
        record_key, rewrapped, target_version = await self._sealer.rewrap_record_key(
            row, target_structure
        )
        scoped = [p for p in self._sealer.schema.indexed if p.index and not p.index.national]
        values = self._sealer.decrypt_values(row, record_key, [p.name for p in scoped])
        names, digests = await self._sealer.index_values(target_structure, values, scoped)
        return await self._repo.move(
            conn, row["id"], target_structure, to_account, target_version, rewrapped, names, digests
        )

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
            structure_id, honeytoken = await self._repo.record_structure(conn, record_id)
            if honeytoken:
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
