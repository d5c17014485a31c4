"""The key hierarchy below Vault: branch keys per structure, record keys per youth.

    Vault transit KEK (never leaves Vault)
      └─ branch key, one per structure and version: wrapped by transit, stored in
         `structure_keys`, unwrapped on demand and cached for a bounded time and
         a bounded number of uses
           └─ record key, one per youth: wrapped locally by the branch key (AES-GCM,
              AAD = record id + structure + branch version), stored beside the record
                └─ field ciphertexts (aead.py)

So the hot path makes no Vault call while the branch key is cached; moving a youth
to another structure rewraps one record key; destroying a record key shreds a youth.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

import asyncpg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.crypto import aead
from vault_service.errors import DecryptionFailed, KmsUnavailable
from vault_service.kms import INDEX_KEY, NATIONAL_INDEX_KEY, VaultKms

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    expires_at: float
    uses_left: int


@dataclass
class KeyCache(Generic[K, V]):
    """TTL- and use-bounded cache with one loader in flight per key.

    When Vault is unreachable, cached keys keep serving until their TTL or use budget
    runs out; then the loader's KmsUnavailable reaches the caller (fail closed).
    """

    ttl_seconds: float
    max_uses: int
    clock: Callable[[], float] = time.monotonic
    _entries: dict[K, _Entry[V]] = field(default_factory=dict)
    _loading: dict[K, asyncio.Task[V]] = field(default_factory=dict)

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires_at > self.clock() and entry.uses_left > 0:
                entry.uses_left -= 1
                return entry.value
            del self._entries[key]
        task = self._loading.get(key)
        if task is None:
            # The load runs in a task the cache owns: a caller that is cancelled (a
            # client gone) does not cancel the load the other waiters share.
            task = asyncio.ensure_future(self._load(key, load))
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await load()
            self._entries[key] = _Entry(value, self.clock() + self.ttl_seconds, self.max_uses - 1)
            return value
        finally:
            del self._loading[key]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class BranchKey:
    structure_id: uuid.UUID
    version: int
    aead: AESGCM


SELECT_ACTIVE_BRANCH_KEY: Final = """
SELECT version, wrapped_key FROM structure_keys
WHERE structure_id = $1 ORDER BY version DESC LIMIT 1
"""
SELECT_BRANCH_KEY: Final = """
SELECT wrapped_key FROM structure_keys WHERE structure_id = $1 AND version = $2
"""
INSERT_BRANCH_KEY: Final = """
INSERT INTO structure_keys (structure_id, version, wrapped_key)
VALUES ($1, $2, $3) ON CONFLICT (structure_id, version) DO NOTHING
"""


class KeyHierarchy:
    def __init__(self, kms: VaultKms, pool: asyncpg.Pool, *, ttl: float, max_uses: int) -> None:
        self._kms = kms
        self._pool = pool
        self._branch: KeyCache[tuple[uuid.UUID, int], BranchKey] = KeyCache(ttl, max_uses)
        # The version new records are wrapped under, known for one TTL: a branch-key
        # rotation (`keys rotate branch`) is picked up by every process within it,
        # and waits that long before it destroys the old version.
        self._active: dict[uuid.UUID, tuple[int, float]] = {}
        self._active_ttl = ttl
        self._derived: KeyCache[tuple[str, bytes], bytes] = KeyCache(ttl, max_uses)

    async def branch_key(self, structure_id: uuid.UUID, version: int) -> BranchKey:
        async def load() -> BranchKey:
            async with self._pool.acquire() as conn:
                wrapped = await conn.fetchval(SELECT_BRANCH_KEY, structure_id, version)
            if wrapped is None:
                # A record names a branch key that does not exist: corrupted row.
                raise DecryptionFailed()
            return BranchKey(structure_id, version, AESGCM(await self._kms.unwrap_key(wrapped)))

        return await self._branch.get((structure_id, version), load)

    async def active_branch_key(self, structure_id: uuid.UUID) -> BranchKey:
        """The key new records of a structure are wrapped under; created on first use."""
        version, until = self._active.get(structure_id, (0, 0.0))
        if until > time.monotonic():
            return await self.branch_key(structure_id, version)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(SELECT_ACTIVE_BRANCH_KEY, structure_id)
            if row is None:
                wrapped = await self._kms.generate_wrapped_key()
                # Two replicas may race here: the loser's key is discarded, never used.
                await conn.execute(INSERT_BRANCH_KEY, structure_id, 1, wrapped)
                row = await conn.fetchrow(SELECT_ACTIVE_BRANCH_KEY, structure_id)
                if row is None:
                    raise KmsUnavailable()
        self._active[structure_id] = (int(row["version"]), time.monotonic() + self._active_ttl)
        return await self.branch_key(structure_id, int(row["version"]))

    def forget_active(self, structure_id: uuid.UUID) -> None:
        """After a branch-key rotation, the next write looks the active version up again."""
        self._active.pop(structure_id, None)

    async def derived_key(self, national: bool, label: bytes) -> bytes:
        """A blind-index or service key derived inside Vault from a non-exportable key."""
        name = NATIONAL_INDEX_KEY if national else INDEX_KEY

        async def load() -> bytes:
            return await self._kms.derive(name, label)

        return await self._derived.get((name, label), load)

    @staticmethod
    def new_record_key(branch: BranchKey, record_id: uuid.UUID) -> tuple[AESGCM, bytes]:
        key = aead.new_key()
        aad = aead.record_key_aad(record_id, branch.structure_id, branch.version)
        return AESGCM(key), aead.seal(branch.aead, key, aad)

    @staticmethod
    def open_record_key(branch: BranchKey, record_id: uuid.UUID, wrapped: bytes) -> AESGCM:
        aad = aead.record_key_aad(record_id, branch.structure_id, branch.version)
        return AESGCM(aead.open_(branch.aead, wrapped, aad))

    @staticmethod
    def rewrap_record_key(
        source: BranchKey, target: BranchKey, record_id: uuid.UUID, wrapped: bytes
    ) -> bytes:
        """Move a record key under another structure's branch key (transfers)."""
        aad = aead.record_key_aad(record_id, source.structure_id, source.version)
        key = aead.open_(source.aead, wrapped, aad)
        new_aad = aead.record_key_aad(record_id, target.structure_id, target.version)
        return aead.seal(target.aead, key, new_aad)

    def clear(self) -> None:
        self._branch.clear()
        self._derived.clear()
        self._active.clear()
