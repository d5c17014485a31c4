"""Honeytokens: canary youth records made by the service's own sealing code, and the
set of their tags that the service checks every request against.

A canary is a real record (same schema, same encryption, same masked shape, plausible
generated values) whose referent is a disabled counsellor account dated like one that
served and left (vs_canary_account). It is in nobody's caseload; any request that
names it suspends its caller (records/service.py, access/defence.py).

Nothing in the database says which records are canaries: the registry holds
`tag = HMAC-SHA-256(key, record id)[:16]`, the key derived inside Vault, and the day
of planting; the canary's own entry in the access log is the `record.create` of its
referent, like any record's; the planting is one `honeytoken.plant` entry per
structure naming the admin and how many, not which. Whoever holds a copy of the
database cannot tell a canary from a youth; the service, holding the key, can. An
admin lists them (`vault-service honeytokens list`) by computing the tags of the
structure's records with the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import uuid
from typing import Any, Final

import asyncpg
import msgspec
import structlog

from vault_service.access.recording import ToolLog
from vault_service.auth.permissions import Role, scopes_for
from vault_service.auth.principal import Principal
from vault_service.records.plausible import youth
from vault_service.records.service import RecordService

__all__ = ["HONEYTOKEN_LABEL", "Canaries", "HoneytokenPlanter", "honeytoken_tag"]

log = structlog.get_logger(__name__)
HONEYTOKEN_LABEL: Final = b"vault-service/honeytoken-tag/v1"
TAG_SIZE: Final = 16
TAGS: Final = "SELECT tag FROM honeytokens"
CANARY_ACCOUNT: Final = "SELECT vs_canary_account($1)"
REGISTER: Final = "SELECT vs_register_honeytoken($1, $2)"
RETIRE: Final = "SELECT vs_retire_honeytokens($1, $2::bytea[])"
ADMIN: Final = "SELECT vs_whoami()"
STRUCTURES: Final = "SELECT id, department FROM structures ORDER BY code"
STRUCTURE: Final = "SELECT id, department FROM structures WHERE id = $1"
REGISTRY: Final = """
SELECT tag, structure_id, planted_on, retired_on FROM honeytokens
ORDER BY structure_id, planted_on, tag
"""
RECORD_IDS: Final = "SELECT id FROM records WHERE structure_id = $1"
# Common French mailbox providers: a canary's address must not give it away (a
# reserved domain would), and nothing ever writes to a record in nobody's caseload.
_MAIL_DOMAINS: Final = ("gmail.com", "orange.fr", "free.fr", "laposte.net", "hotmail.fr", "sfr.fr")


def honeytoken_tag(key: bytes, record_id: uuid.UUID) -> bytes:
    return hmac.new(key, record_id.bytes, hashlib.sha256).digest()[:TAG_SIZE]


class Canaries:
    """The tags of every canary ever planted (retired ones still trip: an older copy
    of the database holds exactly those), reloaded every `refresh` seconds."""

    def __init__(self, pool: asyncpg.Pool, key: bytes, *, refresh: float = 30.0) -> None:
        self._pool = pool
        self._key = key
        self._refresh = refresh
        self._tags: frozenset[bytes] = frozenset()
        self._task: asyncio.Task[None] | None = None

    def named(self, record_id: uuid.UUID) -> bool:
        """Whether this id is a canary's (an HMAC and a set lookup: about a microsecond)."""
        tags = self._tags
        return bool(tags) and honeytoken_tag(self._key, record_id) in tags

    async def load(self) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(TAGS)
        self._tags = frozenset(bytes(r["tag"]) for r in rows)

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                await self.load()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                # The last set stays in force: canaries are only ever added.
                log.error("honeytokens_reload_failed", error_type=type(exc).__name__)

    async def start(self) -> None:
        """Load once (no service without its canaries), then keep reloading."""
        await self.load()
        self._task = asyncio.create_task(self._reload_forever(), name="honeytokens")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class HoneytokenPlanter:
    """`admin` runs on an admin's own login (canary accounts, the registry, listing);
    `service` on the service's role (records and their entries)."""

    def __init__(
        self, admin: asyncpg.Pool, service: asyncpg.Pool, records: RecordService, key: bytes
    ) -> None:
        self._admin = admin
        self._service = service
        self._records = records
        self._key = key

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
        async with self._admin.acquire() as conn:
            admin_id: uuid.UUID = await conn.fetchval(ADMIN)
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
                record_id = uuid.uuid4()
                tag = honeytoken_tag(self._key, record_id)
                # Registered first: a crash before the record leaves a tag naming
                # nothing, never a canary nobody watches.
                async with self._admin.acquire() as conn:
                    await conn.execute(REGISTER, tag, sid)
                body = msgspec.json.encode(_plausible_youth(fake, rng, department))
                await self._records.create(
                    principal, body, None, ToolLog(principal, "record.create"), record_id=record_id
                )
                new.append(record_id)
            retired = 0
            if rotate:
                keep = [honeytoken_tag(self._key, r) for r in new]
                async with self._admin.acquire() as conn:
                    retired = int(await conn.fetchval(RETIRE, sid, keep))
            await self._log_planting(admin_id, sid, len(new))
            planted.append(
                {"structure_id": str(sid), "planted": [str(r) for r in new], "retired": retired}
            )
        return planted

    async def _log_planting(self, admin_id: uuid.UUID, structure_id: uuid.UUID, n: int) -> None:
        """One entry per structure and run: who planted, where, how many; not which."""
        admin = Principal(admin_id, Role.ADMIN, None, frozenset(), uuid.uuid4(), 0)
        from vault_service.access.recording import build_event
        from vault_service.access.sequencer import add_in_transaction

        event = msgspec.structs.replace(
            build_event(admin, {}, "honeytoken.plant", "allowed"),
            structure_id=structure_id,
            count=n,
        )
        async with self._service.acquire() as conn, conn.transaction():
            await add_in_transaction(conn, event)

    async def list(self) -> list[dict[str, Any]]:
        """The registry, each tag matched to its record by recomputing the tags of the
        structure's records (an admin's view: auditors see tags and dates only)."""
        async with self._admin.acquire() as conn:
            rows = await conn.fetch(REGISTRY)
        found: dict[bytes, uuid.UUID] = {}
        async with self._service.acquire() as conn:
            for sid in {r["structure_id"] for r in rows}:
                for record in await conn.fetch(RECORD_IDS, sid):
                    found[honeytoken_tag(self._key, record["id"])] = record["id"]
        return [
            {
                "record_id": str(found[bytes(r["tag"])]) if bytes(r["tag"]) in found else None,
                "structure_id": str(r["structure_id"]),
                "planted_on": r["planted_on"].isoformat(),
                "retired_on": r["retired_on"].isoformat() if r["retired_on"] else None,
            }
            for r in rows
        ]


def _plausible_youth(fake: Any, rng: random.Random, department: str) -> dict[str, Any]:
    """The demo data's generator, with an address at a common provider: nothing tells
    a canary from a youth."""
    record = youth(fake, rng, department)
    if isinstance(record.get("email"), str):
        local = record["email"].partition("@")[0]
        record["email"] = f"{local}@{rng.choice(_MAIL_DOMAINS)}"
    return record
