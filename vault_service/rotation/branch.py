"""`vault-service keys rotate branch`: a new branch-key version for a structure, every
record key of the structure rewrapped under it (in memory, AAD recomputed for the new
version: record id, structure, branch version), then the old version deleted once no
record names it.

Online: each batch is one transaction holding row locks on its records, so a reader
never waits and a writer waits one batch at most; a record is always readable, as the
old version stays until no record uses it. Service processes learn the new version
within one branch-key TTL (crypto/keys.py); until then they may still wrap new
records under the old one, so the run waits that TTL (plus the statement timeout, for
writes in flight) after the new version was made, sweeps again, and only then deletes.

Stateless and resumable like `rotate kek`: a structure with more than one version has
work left over (records to rewrap, or an old version to delete); a run finds and
finishes that work before it would rotate again. With `--all`, a run that finds any
structure with work left over only finishes those.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from vault_service.crypto.keys import BranchKey, KeyHierarchy
from vault_service.errors import InvalidParameter
from vault_service.kms import VaultKms
from vault_service.progress import RotationProgress
from vault_service.rotation import repository as sql
from vault_service.rotation.common import acquire, branch_key, release


@dataclass
class StructureRotation:
    structure_id: uuid.UUID
    from_version: int
    target_version: int
    rotated: bool = False
    to_rewrap: int = 0
    rewrapped: int = 0
    batches: int = 0
    destroyed: list[int] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            "structure_id": str(self.structure_id),
            "from_version": self.from_version,
            "target_version": self.target_version,
            "rotated": self.rotated,
            "to_rewrap": self.to_rewrap,
            "rewrapped": self.rewrapped,
            "batches": self.batches,
            "destroyed_versions": self.destroyed,
        }


@dataclass
class BranchRotation:
    dry_run: bool
    structures: list[StructureRotation] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            "kind": "branch",
            "dry_run": self.dry_run,
            "rotated": sum(s.rotated for s in self.structures),
            "to_rewrap": sum(s.to_rewrap for s in self.structures),
            "rewrapped": sum(s.rewrapped for s in self.structures),
            "batches": sum(s.batches for s in self.structures),
            "destroyed": sum(len(s.destroyed) for s in self.structures),
            "structures": [s.report() for s in self.structures],
        }


async def rotate_branch(
    conn: asyncpg.Connection,
    kms: VaultKms,
    structures: Sequence[uuid.UUID] | None,
    *,
    batch_size: int,
    ttl_seconds: float,
    dry_run: bool,
) -> BranchRotation:
    """On an admin's own connection; `structures` None is every structure with keys.
    `ttl_seconds`: how long a service process may keep wrapping under the old version
    (its branch-key TTL plus writes in flight)."""
    await acquire(conn, "branch")
    try:
        return await _rotate(
            conn, kms, structures, batch_size, ttl_seconds=ttl_seconds, dry_run=dry_run
        )
    finally:
        await release(conn, "branch")


async def _rotate(
    conn: asyncpg.Connection,
    kms: VaultKms,
    wanted: Sequence[uuid.UUID] | None,
    batch_size: int,
    *,
    ttl_seconds: float,
    dry_run: bool,
) -> BranchRotation:
    run = BranchRotation(dry_run=dry_run)
    known = {r["structure_id"]: r for r in await conn.fetch(sql.SELECT_BRANCH_VERSIONS)}
    if wanted is not None:
        missing = [s for s in wanted if s not in known]
        if missing:
            raise InvalidParameter("a structure named has no branch key yet")
        rows = [known[s] for s in dict.fromkeys(wanted)]
    else:
        rows = list(known.values())
        if any(r["versions"] > 1 for r in rows):
            rows = [r for r in rows if r["versions"] > 1]  # finish before starting anew
    for r in rows:
        pending = r["versions"] > 1
        target = r["active"] if pending else r["active"] + 1
        item = StructureRotation(r["structure_id"], r["active"], target, rotated=not pending)
        item.to_rewrap = int(
            await conn.fetchval(sql.COUNT_RECORDS_BELOW, item.structure_id, target)
        )
        run.structures.append(item)
    if dry_run:
        return run
    for item in run.structures:
        if item.rotated:
            wrapped = await kms.generate_wrapped_key()
            async with conn.transaction():
                await conn.execute(
                    sql.INSERT_BRANCH_VERSION, item.structure_id, item.target_version, wrapped
                )
                await conn.execute(sql.LOG_ADMIN_ACT, "key.rotate_branch", item.structure_id, 1)
    total = sum(s.to_rewrap for s in run.structures)
    wait = 0.0
    with RotationProgress("rewrap record keys", total) as progress:
        targets: dict[uuid.UUID, BranchKey] = {}
        for item in run.structures:
            targets[item.structure_id], age = await branch_key(
                conn, kms, item.structure_id, item.target_version
            )
            wait = max(wait, ttl_seconds - age)
            await _rewrap(conn, kms, item, targets[item.structure_id], batch_size, progress)
        # Writes of processes that still knew the old version as active, then the
        # last sweep: only after it may an old version go.
        if wait > 0:
            await asyncio.sleep(wait)
        for item in run.structures:
            await _rewrap(conn, kms, item, targets[item.structure_id], batch_size, progress)
    for item in run.structures:
        async with conn.transaction():
            gone = await conn.fetch(
                sql.DELETE_UNUSED_VERSIONS, item.structure_id, item.target_version
            )
            item.destroyed = sorted(int(g["version"]) for g in gone)
            if gone:
                await conn.execute(
                    sql.LOG_ADMIN_ACT, "key.destroy_branch", item.structure_id, len(gone)
                )
    return run


async def _rewrap(
    conn: asyncpg.Connection,
    kms: VaultKms,
    item: StructureRotation,
    target: BranchKey,
    batch_size: int,
    progress: RotationProgress,
) -> None:
    sources: dict[int, BranchKey] = {}
    after = uuid.UUID(int=0)
    while True:
        async with conn.transaction():
            rows = await conn.fetch(
                sql.SELECT_RECORD_BATCH, item.structure_id, item.target_version, after, batch_size
            )
            if not rows:
                # A record moved into the structure behind the cursor is found by one
                # more pass from the start; a pass that finds nothing ends.
                if after == uuid.UUID(int=0):
                    return
                after = uuid.UUID(int=0)
                continue
            after = rows[-1]["id"]
            ids, keys = [], []
            for r in rows:
                version = r["branch_key_version"]
                if version not in sources:
                    sources[version], _ = await branch_key(conn, kms, item.structure_id, version)
                ids.append(r["id"])
                keys.append(
                    KeyHierarchy.rewrap_record_key(
                        sources[version], target, r["id"], r["record_key"]
                    )
                )
            await conn.execute(
                sql.UPDATE_RECORD_KEYS, item.structure_id, item.target_version, ids, keys
            )
            await conn.execute(
                sql.LOG_RECORDS_ACT, "key.rewrap_branch", ids, item.structure_id, len(ids)
            )
        item.rewrapped += len(rows)
        item.batches += 1
        progress.advance(len(rows))
