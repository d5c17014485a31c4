"""Who holds a youth's record: transfers and break-the-glass (issue 3).

A transfer is one transaction: the record key is rewrapped under the target
structure's branch key, the structure-scoped blind indexes are recomputed under the
target structure's index keys, and the referent changes, together. A failure
anywhere leaves the record exactly as it was, readable by the old side only.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import structlog

from vault_service.auth.permissions import Role
from vault_service.auth.principal import Principal
from vault_service.errors import Forbidden, InvalidBody, NotFound, VaultServiceError
from vault_service.records import repository as sql
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
        self, records: RecordService, *, break_glass_minutes: int, break_glass_daily_limit: int
    ) -> None:
        self._records = records
        self._pool = records.pool
        self._keys = records.keys
        self._minutes = break_glass_minutes
        self._daily_limit = break_glass_daily_limit

    async def transfer(
        self, principal: Principal, record_id: uuid.UUID, request: TransferRequest
    ) -> Moved:
        if principal.role != Role.SUPERVISOR:
            raise Forbidden()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(sql.SELECT_RECORD_FOR_UPDATE, record_id, principal.account_id)
            if row is None or row["structure_id"] != principal.structure_id:
                raise NotFound()
            target = await conn.fetchrow(sql.SELECT_TRANSFER_TARGET, request.to_account)
            if target is None or target["state"] != "active" or target["role"] != "counsellor":
                raise InvalidTransferTarget()
            source_structure: uuid.UUID = row["structure_id"]
            target_structure: uuid.UUID = target["structure_id"]
            if request.kind == "temporary":
                if target_structure != source_structure or request.until is None:
                    raise InvalidTransferTarget()
                now = datetime.datetime.now(datetime.UTC)
                if not now < request.until <= now + MAX_TEMPORARY:
                    raise InvalidBody("`until` must be in the next 92 days")
                await conn.execute(
                    sql.UPSERT_ASSIGNMENT,
                    record_id,
                    request.to_account,
                    "temporary",
                    request.until,
                    principal.account_id,
                )
                version = int(row["version"])
            elif target_structure == source_structure:
                version = await conn.fetchval(sql.SET_REFERENT, record_id, request.to_account)
                await conn.execute(sql.DELETE_ASSIGNMENTS, record_id)
            else:
                version = await self._move(conn, row, target_structure, request.to_account)
        alerts.warning(
            "record_transferred",
            alert=True,
            record_id=str(record_id),
            kind=request.kind,
            actor_id=str(principal.account_id),
            to_account=str(request.to_account),
            cross_structure=target_structure != source_structure,
        )
        return Moved(record_id, int(version), target_structure, request.to_account)

    async def _move(
        self, conn: Any, row: Any, target_structure: uuid.UUID, to_account: uuid.UUID
    ) -> int:
        """Another structure: rewrap the record key and re-derive structure-scoped indexes."""
        source = await self._keys.branch_key(row["structure_id"], row["branch_key_version"])
        target = await self._keys.active_branch_key(target_structure)
        rewrapped = self._keys.rewrap_record_key(source, target, row["id"], row["record_key"])
        record_key = self._keys.open_record_key(source, row["id"], row["record_key"])
        scoped = [p for p in self._records.schema.indexed if p.index and not p.index.national]
        values = self._records.decrypt_values(row, record_key, [p.name for p in scoped])
        names, digests = await self._records.index_rows(target_structure, values, scoped)
        await conn.execute(sql.DELETE_STRUCTURE_INDEX, row["id"])
        await conn.execute(
            sql.INSERT_INDEX, row["id"], target_structure, names, digests, [False] * len(names)
        )
        await conn.execute(sql.DELETE_ASSIGNMENTS, row["id"])
        version: int = await conn.fetchval(
            sql.MOVE_RECORD, row["id"], target_structure, to_account, target.version, rewrapped
        )
        return version

    async def break_glass(
        self, principal: Principal, record_id: uuid.UUID, request: BreakGlassRequest
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
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise one account's grants so the daily limit cannot be raced.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 42))",
                str(principal.account_id),
            )
            if await conn.fetchval(sql.COUNT_RECENT_GRANTS, principal.account_id) >= (
                self._daily_limit
            ):
                alerts.warning(
                    "break_glass_refused",
                    alert=True,
                    code="break_glass_limit",
                    actor_id=str(principal.account_id),
                )
                raise BreakGlassLimit()
            # Only within the caller's own structure, checked after the limit so the
            # answer is never an existence oracle: a record elsewhere is "not found".
            if await conn.fetchval(sql.RECORD_EXISTS, record_id) != principal.structure_id:
                raise NotFound()
            row = await conn.fetchrow(
                sql.INSERT_GRANT,
                grant_id,
                record_id,
                principal.account_id,
                principal.structure_id,
                request.reason,
                self._minutes,
            )
        assert row is not None
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
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql.SELECT_REVIEW_QUEUE, principal.structure_id, after, limit)
        return [dict(r) for r in rows]

    async def review(
        self, principal: Principal, grant_id: uuid.UUID, request: ReviewRequest
    ) -> None:
        if principal.role != Role.SUPERVISOR or principal.structure_id is None:
            raise Forbidden()
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                sql.REVIEW_GRANT,
                grant_id,
                principal.structure_id,
                principal.account_id,
                request.outcome,
            )
        if row is None:
            raise NotFound()
        alerts.warning(
            "break_glass_reviewed",
            alert=True,
            grant_id=str(grant_id),
            outcome=request.outcome,
            actor_id=str(principal.account_id),
        )
