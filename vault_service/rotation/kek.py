"""`vault-service keys rotate kek`: a new version of the branch-key KEK in Vault, every
stored branch key (and the key of every sealed statistics year) rewrapped to it
through transit's rewrap (no plaintext key leaves Vault), then, with `retire`, the
older versions disabled (min_decryption_version).

The run is stateless and resumable: a branch key still wrapped under a version below
the latest is work left over, so a run that finds any resumes rather than rotating
again, and a run killed at any point leaves only whole batches done (each batch is
one transaction with its access-log entry). Rows are locked only for their batch;
the service reads branch keys without locks and an old or new wrapping unwraps to the
same key, so reads and writes go on throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from vault_service.errors import ConfigurationError, InternalError
from vault_service.kms import BRANCH_KEK, TransitKeyAdmin, VaultKms, wrapped_version
from vault_service.progress import RotationProgress
from vault_service.rotation import repository as sql
from vault_service.rotation.common import acquire, release


@dataclass
class KekRotation:
    dry_run: bool
    retire: bool
    from_version: int = 0
    target_version: int = 0
    min_decryption_version: int = 0
    rotated: bool = False
    to_rewrap: int = 0
    rewrapped: int = 0
    batches: int = 0
    retired: bool = False

    def report(self) -> dict[str, Any]:
        return {
            "kind": "kek",
            "key": BRANCH_KEK,
            "dry_run": self.dry_run,
            "from_version": self.from_version,
            "target_version": self.target_version,
            "rotated": self.rotated,
            "to_rewrap": self.to_rewrap,
            "rewrapped": self.rewrapped,
            "batches": self.batches,
            "retire": self.retire,
            "retired": self.retired,
            "min_decryption_version": self.min_decryption_version,
        }


async def rotate_kek(
    conn: asyncpg.Connection,
    kms: VaultKms,
    key_admin: Callable[[], TransitKeyAdmin],
    *,
    batch_size: int,
    retire: bool,
    dry_run: bool,
) -> KekRotation:
    """On an admin's own connection. `key_admin` gives the operator's Vault client,
    asked for only when a step needs it (a resumed rewrap does not)."""
    await acquire(conn, "kek")
    try:
        return await _rotate(conn, kms, key_admin, batch_size, retire=retire, dry_run=dry_run)
    finally:
        await release(conn, "kek")


async def _rotate(
    conn: asyncpg.Connection,
    kms: VaultKms,
    key_admin: Callable[[], TransitKeyAdmin],
    batch_size: int,
    *,
    retire: bool,
    dry_run: bool,
) -> KekRotation:
    run = KekRotation(dry_run=dry_run, retire=retire)
    info = await kms.key_info(BRANCH_KEK)
    run.from_version = run.target_version = info.latest_version
    run.min_decryption_version = info.min_decryption_version
    run.to_rewrap = int(await conn.fetchval(sql.COUNT_BELOW_KEK, info.latest_version))
    # Left-over work (branch keys behind, or a retirement asked for and not done) is
    # finished first; only a run that finds none rotates.
    pending = run.to_rewrap > 0 or (retire and info.min_decryption_version < info.latest_version)
    admin: TransitKeyAdmin | None = None
    if not dry_run and (not pending or retire):
        admin = key_admin()  # fails before any change when the operator token is missing
    if not pending:
        if dry_run:
            run.target_version = info.latest_version + 1
            run.to_rewrap = int(await conn.fetchval(sql.COUNT_BELOW_KEK, run.target_version))
            run.rotated = True
            return run
        assert admin is not None
        async with conn.transaction():
            # The entry commits only if Vault rotated: the transaction waits on it.
            await conn.execute(sql.LOG_ADMIN_ACT, "key.rotate_kek", None, 1)
            run.target_version = await admin.rotate(BRANCH_KEK)
        run.rotated = True
        run.to_rewrap = int(await conn.fetchval(sql.COUNT_BELOW_KEK, run.target_version))
    if dry_run:
        return run
    with RotationProgress("rewrap branch keys", run.to_rewrap) as progress:
        # Branch keys, then the keys of sealed statistics years (same KEK).
        for select, update, key_of in (
            (sql.SELECT_KEK_BATCH, sql.UPDATE_WRAPPED, ("structure_id", "version")),
            (sql.SELECT_STATS_KEK_BATCH, sql.UPDATE_STATS_WRAPPED, ("year",)),
        ):
            while True:
                async with conn.transaction():
                    rows = await conn.fetch(select, run.target_version, batch_size)
                    if not rows:
                        break
                    fresh = await kms.rewrap_keys([r["wrapped_key"] for r in rows])
                    if any(wrapped_version(w) < run.target_version for w in fresh):
                        raise InternalError("transit rewrapped below the target version")
                    await conn.executemany(
                        update,
                        [(*(r[c] for c in key_of), w) for r, w in zip(rows, fresh, strict=True)],
                    )
                    await conn.execute(sql.LOG_ADMIN_ACT, "key.rewrap_kek", None, len(rows))
                run.rewrapped += len(rows)
                run.batches += 1
                progress.advance(len(rows))
    if retire and run.min_decryption_version < run.target_version:
        assert admin is not None
        async with conn.transaction():
            # Rows are checked in the transaction that logs the retirement: a branch
            # key still behind would become unreadable.
            if await conn.fetchval(sql.COUNT_BELOW_KEK, run.target_version):
                raise ConfigurationError("branch keys are still behind; nothing retired")
            await conn.execute(sql.LOG_ADMIN_ACT, "key.retire", None, 1)
            await admin.set_min_decryption_version(BRANCH_KEK, run.target_version)
        run.retired = True
        run.min_decryption_version = run.target_version
    return run
