"""`vault-service keys rotate records`: every record of a structure re-sealed under a
new record key (a record key may have leaked): fields opened with the old key and AAD
(record id, field, key version), sealed again with a fresh key and the next key
version, the fresh key wrapped under the record's branch key.

Rows are read without locks and re-sealed in memory; the write is one statement per
batch that changes a row only if its version, key version and wrapped key are still
those read (the service's writers lock the row first, so the statement waits for a
write in flight and then re-checks): the record's own short critical section, never
a lock held across the cryptography. A row changed meanwhile is read again by the next
pass. The record's version (its ETag) is kept: its content did not change.

Resumable and locked like the other rotations; `record_key_rotations` remembers, per
structure, a run not yet finished (new records start at key version 1, so the versions
alone cannot tell).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from vault_service.crypto import aead
from vault_service.crypto.keys import BranchKey, KeyHierarchy
from vault_service.errors import InvalidParameter
from vault_service.kms import VaultKms
from vault_service.progress import Pace, RotationProgress
from vault_service.records.sealing import INTEGRITY_FIELD, RowState, Sealer, clear_values
from vault_service.rotation import repository as sql
from vault_service.rotation.common import acquire, branch_key, release

_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
_NO_ID = uuid.UUID(int=0)


@dataclass
class StructureReseal:
    structure_id: uuid.UUID
    target_version: int
    started: bool
    to_reseal: int = 0
    resealed: int = 0
    batches: int = 0

    def report(self) -> dict[str, Any]:
        return {
            "structure_id": str(self.structure_id),
            "target_key_version": self.target_version,
            "started": self.started,
            "to_reseal": self.to_reseal,
            "resealed": self.resealed,
            "batches": self.batches,
        }


@dataclass
class RecordsRotation:
    dry_run: bool
    structures: list[StructureReseal] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            "kind": "records",
            "dry_run": self.dry_run,
            "started": sum(s.started for s in self.structures),
            "to_reseal": sum(s.to_reseal for s in self.structures),
            "resealed": sum(s.resealed for s in self.structures),
            "batches": sum(s.batches for s in self.structures),
            "structures": [s.report() for s in self.structures],
        }


async def rotate_records(
    conn: asyncpg.Connection,
    kms: VaultKms,
    structures: Sequence[uuid.UUID] | None,
    *,
    batch_size: int,
    dry_run: bool,
    max_rate: float = 0.0,
) -> RecordsRotation:
    """`max_rate` records a second at most (0: as fast as it goes): a re-encryption
    shares the machine and the database with the service, and the service must keep
    serving reads while it runs."""
    await acquire(conn, "records")
    try:
        pace = Pace(max_rate)
        return await _rotate(conn, kms, structures, batch_size, dry_run=dry_run, pace=pace)
    finally:
        await release(conn, "records")


async def _rotate(
    conn: asyncpg.Connection,
    kms: VaultKms,
    wanted: Sequence[uuid.UUID] | None,
    batch_size: int,
    *,
    dry_run: bool,
    pace: Pace,
) -> RecordsRotation:
    run = RecordsRotation(dry_run=dry_run)
    known = {r["structure_id"]: r for r in await conn.fetch(sql.SELECT_RECORD_KEY_VERSIONS)}

    def unfinished(r: asyncpg.Record) -> bool:
        return r["target_version"] is not None and r["finished_at"] is None

    if wanted is not None:
        if any(s not in known for s in wanted):
            raise InvalidParameter("a structure named has no records")
        rows = [known[s] for s in dict.fromkeys(wanted)]
    else:
        rows = list(known.values())
        if any(unfinished(r) for r in rows):
            rows = [r for r in rows if unfinished(r)]  # finish before starting anew
    for r in rows:
        resume = unfinished(r)
        target = r["target_version"] if resume else r["newest"] + 1
        item = StructureReseal(r["structure_id"], target, started=not resume)
        item.to_reseal = int(
            await conn.fetchval(sql.COUNT_RECORDS_KEY_BELOW, item.structure_id, target)
        )
        run.structures.append(item)
    if dry_run:
        return run
    with RotationProgress("re-seal records", sum(s.to_reseal for s in run.structures)) as bar:
        for item in run.structures:
            if item.started:
                async with conn.transaction():
                    await conn.execute(
                        sql.START_RECORD_ROTATION, item.structure_id, item.target_version
                    )
                    await conn.execute(
                        sql.LOG_ADMIN_ACT, "key.rotate_records", item.structure_id, 1
                    )
            await _reseal(conn, kms, item, batch_size, bar, pace)
            await conn.execute(sql.FINISH_RECORD_ROTATION, item.structure_id, item.target_version)
    return run


async def _reseal(
    conn: asyncpg.Connection,
    kms: VaultKms,
    item: StructureReseal,
    batch_size: int,
    bar: RotationProgress,
    pace: Pace,
) -> None:
    branches: dict[int, BranchKey] = {}
    while True:  # passes, until one finds nothing behind
        after, found = _NO_ID, 0
        while True:
            rows = await conn.fetch(
                sql.SELECT_RESEAL_BATCH, item.structure_id, item.target_version, after, batch_size
            )
            if not rows:
                break
            found += len(rows)
            after = rows[-1]["id"]
            for r in rows:
                version = r["branch_key_version"]
                if version not in branches:
                    branches[version], _ = await branch_key(conn, kms, item.structure_id, version)
            columns = _reseal_rows(rows, branches, item.target_version)
            async with conn.transaction():
                done = await conn.fetch(
                    sql.RESEAL_RECORDS, item.structure_id, item.target_version, *columns
                )
                ids = [d["id"] for d in done]
                if ids:
                    await conn.execute(
                        sql.LOG_RECORDS_ACT, "key.reseal_records", ids, item.structure_id, len(ids)
                    )
            item.resealed += len(ids)
            item.batches += 1
            bar.advance(len(ids))
            await pace.after(len(rows))
        if not found:
            return


def _reseal_rows(
    rows: Sequence[asyncpg.Record], branches: dict[int, BranchKey], target: int
) -> tuple[list[Any], ...]:
    ids, versions, old_versions, old_keys, new_keys, sealed = [], [], [], [], [], []
    for r in rows:
        branch = branches[r["branch_key_version"]]
        old = KeyHierarchy.open_record_key(branch, r["id"], r["record_key"])
        new, wrapped = KeyHierarchy.new_record_key(branch, r["id"])
        stored = _decoder.decode(r["sealed"])
        # A row that fails its own integrity check is never re-sealed as ours: the run
        # stops on it (fail closed) and resumes once someone has looked.
        Sealer.check_integrity(r, old, stored)
        fields = {
            name: aead.seal(
                new,
                aead.open_(old, blob, aead.field_aad(r["id"], name, r["key_version"])),
                aead.field_aad(r["id"], name, target),
            )
            for name, blob in stored.items()
            if name != INTEGRITY_FIELD
        }
        state = RowState(r["id"], int(r["version"]), r["structure_id"], r["referent_id"], target)
        resealed, _ = Sealer.pack(fields, clear_values(r), new, state)
        ids.append(r["id"])
        versions.append(r["version"])
        old_versions.append(r["key_version"])
        old_keys.append(r["record_key"])
        new_keys.append(wrapped)
        sealed.append(resealed)
    return ids, versions, old_versions, old_keys, new_keys, sealed
