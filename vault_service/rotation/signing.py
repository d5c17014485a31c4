"""`vault-service keys rotate token|checkpoint`: a new version of an Ed25519 signing key
in Vault, used for every signature from the next key refresh on (the service re-reads
its signing keys every few minutes), the older versions verifying until retired.

`--retire` raises the key's min_decryption_version to its latest version, so that the
older versions stop verifying; it is refused while that would refuse something still
valid:

- token: until the latest version has been the one signing for longer than the
  longest token lifetime (`VAULT_SERVICE_JWT_MAX_LIFETIME_SECONDS`), since a token
  signed by the previous version may still be in use until then;
- checkpoint: until the latest checkpoint is signed by the latest version (the
  publisher checks each new tree against the previous checkpoint's signature, which
  a retired version would no longer verify). Auditors keep the retired public keys
  they pinned (`/v1/audit/keys` lists only live versions), so old checkpoints stay
  checkable offline.

Each step is one access-log entry from the admin's own login, in the transaction that
waits on Vault.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, Literal

import asyncpg

from vault_service.errors import VaultServiceError
from vault_service.kms import CHECKPOINT_KEY, TOKEN_KEY, TransitKeyAdmin, VaultKms
from vault_service.rotation import repository as sql
from vault_service.rotation.common import acquire, release

Kind = Literal["token", "checkpoint"]
_KEYS: dict[str, str] = {"token": TOKEN_KEY, "checkpoint": CHECKPOINT_KEY}
LATEST_CHECKPOINT_VERSION = "SELECT key_version FROM audit_checkpoints ORDER BY size DESC LIMIT 1"


class RetireRefused(VaultServiceError):
    status = 409
    code = "retire_refused"
    title = "Retiring now would refuse something still valid"


async def rotate_signing(
    conn: asyncpg.Connection,
    kms: VaultKms,
    key_admin: Callable[[], TransitKeyAdmin],
    kind: Kind,
    *,
    retire: bool,
    dry_run: bool,
    token_lifetime_seconds: int,
) -> dict[str, Any]:
    key = _KEYS[kind]
    await acquire(conn, kind)
    try:
        info = await kms.key_info(key)
        report: dict[str, Any] = {
            "kind": kind,
            "key": key,
            "dry_run": dry_run,
            "from_version": info.latest_version,
            "target_version": info.latest_version if retire else info.latest_version + 1,
            "rotated": False,
            "retire": retire,
            "retired": False,
            "min_decryption_version": info.min_decryption_version,
        }
        if retire:
            await _check_retirable(conn, kind, info.created, info.latest_version,
                                   token_lifetime_seconds)  # fmt: skip
            if dry_run or info.min_decryption_version >= info.latest_version:
                return report
            admin = key_admin()
            async with conn.transaction():
                await conn.execute(sql.LOG_ADMIN_ACT, f"key.retire_{kind}", None, 1)
                await admin.set_min_decryption_version(key, info.latest_version)
            report |= {"retired": True, "min_decryption_version": info.latest_version}
            return report
        if dry_run:
            return report
        admin = key_admin()  # fails before any change when the operator token is missing
        async with conn.transaction():
            # The entry commits only if Vault rotated: the transaction waits on it.
            await conn.execute(sql.LOG_ADMIN_ACT, f"key.rotate_{kind}", None, 1)
            report["target_version"] = await admin.rotate(key)
        report["rotated"] = True
        return report
    finally:
        await release(conn, kind)


async def _check_retirable(
    conn: asyncpg.Connection,
    kind: Kind,
    created: dict[int, datetime.datetime],
    latest: int,
    token_lifetime_seconds: int,
) -> None:
    if kind == "token":
        since = created.get(latest)
        overlap = datetime.timedelta(seconds=token_lifetime_seconds)
        if since is None or datetime.datetime.now(datetime.UTC) - since < overlap:
            raise RetireRefused(
                f"tokens signed by the previous version may be valid for up to "
                f"{token_lifetime_seconds} s after the rotation; retire after that"
            )
        return
    signed_by = await conn.fetchval(LATEST_CHECKPOINT_VERSION)
    if signed_by is not None and int(signed_by) < latest:
        raise RetireRefused(
            "the latest checkpoint is signed by an older version; retire once a "
            "checkpoint signed by the latest version is published"
        )
