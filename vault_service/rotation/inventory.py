"""`vault-service keys status`: the key inventory and what the rotation policy says
is due. Versions, dates and counts only: nothing here is key material.

The JSON shape is stable (docs/admin.md, "`keys status --json`"): keys are added, never renamed.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from vault_service.kms import (
    BRANCH_KEK,
    CHECKPOINT_KEY,
    INDEX_KEY,
    NATIONAL_INDEX_KEY,
    TOKEN_KEY,
    TransitKeyInfo,
    VaultKms,
)
from vault_service.rotation import repository as sql
from vault_service.settings import Settings

# What each transit key is for, and the `keys rotate` kind that rotates it.
ROLES = {
    BRANCH_KEK: ("kek", "kek"),
    INDEX_KEY: ("index", "index"),
    NATIONAL_INDEX_KEY: ("national_index", "index"),
    TOKEN_KEY: ("token_signing", "token"),
    CHECKPOINT_KEY: ("checkpoint_signing", "checkpoint"),
}


def _policy_days(settings: Settings, role: str) -> int:
    return {
        "kek": settings.rotation.kek_days,
        "index": settings.rotation.index_key_days,
        "national_index": settings.rotation.index_key_days,
        "token_signing": settings.rotation.token_key_days,
        "checkpoint_signing": settings.rotation.checkpoint_key_days,
    }[role]


def _iso(at: datetime.datetime) -> str:
    return at.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _age_days(at: datetime.datetime, now: datetime.datetime) -> int:
    return max(0, (now - at).days)


def inventory(
    settings: Settings,
    transit: Sequence[TransitKeyInfo],
    branch_rows: Sequence[asyncpg.Record],
    now: datetime.datetime,
) -> dict[str, Any]:
    due: list[dict[str, Any]] = []
    kek_counts: dict[int, int] = {}
    for r in branch_rows:
        kek_counts[r["kek_version"]] = kek_counts.get(r["kek_version"], 0) + 1
    keys = []
    for info in transit:
        role, kind = ROLES[info.name]
        days = _policy_days(settings, role)
        latest_at = info.created.get(info.latest_version)
        age = _age_days(latest_at, now) if latest_at else None
        entry: dict[str, Any] = {
            "name": info.name,
            "role": role,
            "type": info.key_type,
            "latest_version": info.latest_version,
            "min_decryption_version": info.min_decryption_version,
            "min_encryption_version": info.min_encryption_version,
            "latest_age_days": age,
            "rotation_days": days,
            "versions": [
                {
                    "version": v,
                    "created_at": _iso(at),
                    "age_days": _age_days(at, now),
                    "enabled": v >= info.min_decryption_version,
                }
                for v, at in sorted(info.created.items())
            ],
        }
        if days and age is not None and age >= days:
            due.append({"action": "rotate", "kind": kind, "key": info.name, "reason": "age"})
        if info.name == BRANCH_KEK:
            entry["branch_keys_by_version"] = {str(v): n for v, n in sorted(kek_counts.items())}
            behind = sum(n for v, n in kek_counts.items() if v < info.latest_version)
            if behind:
                due.append(
                    {
                        "action": "rewrap",
                        "kind": "kek",
                        "key": info.name,
                        "reason": "behind",
                        "count": behind,
                    }
                )
            elif info.min_decryption_version < info.latest_version and branch_rows:
                due.append(
                    {
                        "action": "retire",
                        "kind": "kek",
                        "key": info.name,
                        "reason": "old_versions_enabled",
                    }
                )
        keys.append(entry)
    structures: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for r in branch_rows:
        structures.setdefault(r["structure_id"], []).append(r)
    branch = []
    for sid, rows in structures.items():
        active = rows[-1]  # ordered by version: the highest is the one new records use
        age = _age_days(active["created_at"], now)
        branch.append(
            {
                "structure_id": str(sid),
                "active_version": active["version"],
                "active_age_days": age,
                "versions": [
                    {
                        "version": r["version"],
                        "created_at": _iso(r["created_at"]),
                        "age_days": _age_days(r["created_at"], now),
                        "kek_version": r["kek_version"],
                        "records": r["records"],
                    }
                    for r in rows
                ],
            }
        )
        if settings.rotation.branch_days and age >= settings.rotation.branch_days:
            due.append(
                {"action": "rotate", "kind": "branch", "structure_id": str(sid), "reason": "age"}
            )
    return {
        "generated_at": _iso(now),
        "policy": {
            "kek_days": settings.rotation.kek_days,
            "branch_days": settings.rotation.branch_days,
            "token_key_days": settings.rotation.token_key_days,
            "checkpoint_key_days": settings.rotation.checkpoint_key_days,
            "index_key_days": settings.rotation.index_key_days,
        },
        "transit_keys": keys,
        "branch_keys": branch,
        "due": due,
    }


async def key_status(
    settings: Settings, conn: asyncpg.Connection[Any], kms: VaultKms
) -> dict[str, Any]:
    """The inventory, read on the service's login and with its Vault client."""
    rows = await conn.fetch(sql.SELECT_BRANCH_INVENTORY)
    transit = [await kms.key_info(name) for name in ROLES]
    return inventory(settings, transit, rows, datetime.datetime.now(datetime.UTC))


def render_text(status: dict[str, Any]) -> str:
    lines = ["transit keys:"]
    for k in status["transit_keys"]:
        lines.append(
            f"  {k['name']:<32} v{k['latest_version']} (min decryption "
            f"v{k['min_decryption_version']}), latest {k['latest_age_days']} days old"
        )
    lines.append(f"branch keys: {len(status['branch_keys'])} structures")
    for b in status["branch_keys"]:
        counts = ", ".join(f"v{v['version']}: {v['records']} records" for v in b["versions"])
        lines.append(f"  {b['structure_id']}  active v{b['active_version']}  ({counts})")
    lines.append("due:" if status["due"] else "due: nothing")
    for d in status["due"]:
        what = d.get("key") or d.get("structure_id")
        lines.append(f"  {d['action']} {d['kind']} {what} ({d['reason']})")
    return "\n".join(lines)
