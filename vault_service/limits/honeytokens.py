"""Planting honeytokens: canary youth records made by the service's own sealing code.

A canary is a real record (same schema, same encryption, same masked shape, plausible
generated values) whose referent is its structure's canary account, a disabled account
made by an admin's own login (vs_canary_account). It is in nobody's caseload; any
request that names it suspends its caller (records/service.py, limits/defence.py).
Planting writes an access-log entry per canary (action `honeytoken.plant`), so
auditors see them; the statistics lane must leave them out (table `honeytokens`).
"""

from __future__ import annotations

import random
import uuid
from typing import Any, Final

import asyncpg
import msgspec

from vault_service.audit.recording import ToolLog
from vault_service.auth.permissions import Role, scopes_for
from vault_service.auth.principal import Principal
from vault_service.records.service import RecordService

__all__ = ["HoneytokenPlanter"]

CANARY_ACCOUNT: Final = "SELECT vs_canary_account($1)"
STRUCTURES: Final = "SELECT id, department FROM structures ORDER BY code"
STRUCTURE: Final = "SELECT id, department FROM structures WHERE id = $1"
REGISTER: Final = "INSERT INTO honeytokens (record_id, structure_id) VALUES ($1, $2)"
RETIRE: Final = """
UPDATE honeytokens SET retired_at = now()
WHERE structure_id = $1 AND retired_at IS NULL AND record_id <> ALL ($2::uuid[])
RETURNING record_id
"""
LIST: Final = """
SELECT record_id, structure_id, planted_at, retired_at FROM honeytokens
ORDER BY structure_id, planted_at
"""


class HoneytokenPlanter:
    """`admin` runs on an admin's own login (canary accounts, listing); `service` on the
    service's role (records, their entries, the registry)."""

    def __init__(self, admin: asyncpg.Pool, service: asyncpg.Pool, records: RecordService):
        self._admin = admin
        self._service = service
        self._records = records

    async def plant(
        self, structure_id: uuid.UUID | None, count: int, *, rotate: bool = False
    ) -> list[dict[str, Any]]:
        """`count` canaries in one structure (None: every structure); with `rotate`,
        the structure's earlier canaries are retired once the new ones are in place."""
        from faker import Faker

        async with self._service.acquire() as conn:
            if structure_id is None:
                structures = await conn.fetch(STRUCTURES)
            else:
                structures = [r for r in [await conn.fetchrow(STRUCTURE, structure_id)] if r]
        fake, rng = Faker("fr_FR"), random.SystemRandom()
        planted: list[dict[str, Any]] = []
        for structure in structures:
            sid, department = structure["id"], structure["department"] or "75"
            async with self._admin.acquire() as conn:
                canary: uuid.UUID = await conn.fetchval(CANARY_ACCOUNT, sid)
            principal = Principal(
                canary, Role.COUNSELLOR, sid, scopes_for(Role.COUNSELLOR), uuid.uuid4(), 0
            )
            new: list[uuid.UUID] = []
            for _ in range(count):
                body = msgspec.json.encode(_plausible_youth(fake, rng, department))
                created = await self._records.create(
                    principal, body, None, ToolLog(principal, "honeytoken.plant")
                )
                async with self._service.acquire() as conn:
                    await conn.execute(REGISTER, created.record_id, sid)
                new.append(created.record_id)
            retired: list[uuid.UUID] = []
            if rotate:
                async with self._service.acquire() as conn:
                    retired = [r["record_id"] for r in await conn.fetch(RETIRE, sid, new)]
            planted.append(
                {
                    "structure_id": str(sid),
                    "planted": [str(r) for r in new],
                    "retired": [str(r) for r in retired],
                }
            )
        return planted

    async def list(self) -> list[dict[str, Any]]:
        async with self._admin.acquire() as conn:
            rows = await conn.fetch(LIST)
        return [{k: (str(v) if v is not None else None) for k, v in dict(r).items()} for r in rows]


def _plausible_youth(fake: Any, rng: random.Random, department: str) -> dict[str, Any]:
    """The same generator as the demo data: nothing tells a canary from a youth."""
    from vault_service.seed import youth

    return youth(fake, rng, department)
