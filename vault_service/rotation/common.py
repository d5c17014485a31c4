"""What every rotation shares: its lock, and branch keys read on the admin's login."""

from __future__ import annotations

import uuid

import asyncpg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.crypto.keys import BranchKey
from vault_service.errors import Conflict, DecryptionFailed
from vault_service.kms import VaultKms
from vault_service.rotation import repository as sql


class RotationInProgress(Conflict):
    code = "rotation_in_progress"
    title = "The same rotation is running elsewhere"


async def acquire(conn: asyncpg.Connection, kind: str) -> None:
    """A session lock: released by `release`, or by PostgreSQL when the session ends
    (a killed run included)."""
    if not await conn.fetchval(sql.TRY_LOCK, sql.LOCK_IDS[kind]):
        raise RotationInProgress(
            f"another `keys rotate {kind}` is running; this one did nothing "
            "(rerun it once the other has finished)"
        )


async def release(conn: asyncpg.Connection, kind: str) -> None:
    await conn.fetchval(sql.UNLOCK, sql.LOCK_IDS[kind])


async def branch_key(
    conn: asyncpg.Connection, kms: VaultKms, structure_id: uuid.UUID, version: int
) -> tuple[BranchKey, float]:
    """A structure's branch key of one version, unwrapped by Vault (the service's
    access), and its age in seconds."""
    row = await conn.fetchrow(sql.SELECT_WRAPPED_BRANCH, structure_id, version)
    if row is None:
        raise DecryptionFailed()  # a record names a version that does not exist
    key = BranchKey(structure_id, version, AESGCM(await kms.unwrap_key(row["wrapped_key"])))
    return key, float(row["age_seconds"])
