"""Demo data for `vault-service dev`: structures, accounts and a few hundred youth.

Youth are created through RecordService, the same path as the API, so demo data
is encrypted and indexed exactly like real data. Faker's fr_FR locale makes the
values; every NIR gets a correct control key.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

import asyncpg
import msgspec

from vault_service.access.recording import ToolLog
from vault_service.auth.permissions import Role, scopes_for
from vault_service.auth.principal import Principal
from vault_service.records.plausible import youth
from vault_service.records.service import RecordService

STRUCTURES = (
    ("ML-PARIS-13", "Mission locale de Paris 13e", "Île-de-France", "75"),
    ("ML-LYON-SUD", "Mission locale de Lyon Sud", "Auvergne-Rhône-Alpes", "69"),
    ("ML-AJACCIO", "Mission locale d'Ajaccio", "Corse", "2A"),
)
INSERT_STRUCTURE = """
INSERT INTO structures (id, code, name, region, department) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (code) DO NOTHING
"""
INSERT_ACCOUNT = """
INSERT INTO accounts (id, role, structure_id, state) VALUES ($1, $2, $3, 'active')
"""


@dataclass(frozen=True)
class DemoAccount:
    id: uuid.UUID
    role: Role
    structure_id: uuid.UUID | None
    label: str


async def seed(
    owner: asyncpg.Connection, records: RecordService, *, youth_per_counsellor: int = 40
) -> list[DemoAccount]:
    """Idempotent: seeds only an empty database. Returns the demo accounts."""
    existing = await owner.fetch(
        "SELECT id, role, structure_id FROM accounts ORDER BY created_at, id"
    )
    if existing:
        return [
            DemoAccount(r["id"], Role(r["role"]), r["structure_id"], r["role"]) for r in existing
        ]
    from faker import Faker

    fake = Faker("fr_FR")
    Faker.seed(2024)
    rng = random.Random(2024)  # noqa: S311 - demo data, not secrets  # nosec B311
    accounts: list[DemoAccount] = []
    async with owner.transaction():
        for code, name, region, department in STRUCTURES:
            sid = uuid.uuid4()
            await owner.execute(INSERT_STRUCTURE, sid, code, name, region, department)
            for i in (1, 2):
                accounts.append(
                    DemoAccount(uuid.uuid4(), Role.COUNSELLOR, sid, f"counsellor {i} of {code}")
                )
            accounts.append(
                DemoAccount(uuid.uuid4(), Role.SUPERVISOR, sid, f"supervisor of {code}")
            )
        for role in (Role.ADMIN, Role.ADMIN, Role.AUDITOR, Role.ANALYST):
            accounts.append(DemoAccount(uuid.uuid4(), role, None, str(role)))
        for account in accounts:
            await owner.execute(INSERT_ACCOUNT, account.id, account.role, account.structure_id)
    departments = {
        r["id"]: r["department"] for r in await owner.fetch("SELECT id, department FROM structures")
    }
    for account in accounts:
        if account.role != Role.COUNSELLOR or account.structure_id is None:
            continue
        principal = Principal(
            account.id,
            account.role,
            account.structure_id,
            scopes_for(account.role),
            uuid.uuid4(),
            0,
        )
        for _ in range(youth_per_counsellor):
            body = msgspec.json.encode(youth(fake, rng, departments[account.structure_id]))
            await records.create(principal, body, None, ToolLog(principal, "record.seed"))
    # Demo youth entered over the last 18 months, so that the statistics (closed
    # years only, each sealed once) have last year's tables from the first rebuild.
    # (The owner's own act, on demo data only: entry dates are otherwise fixed.)
    async with owner.transaction():
        await owner.execute("ALTER TABLE records DISABLE TRIGGER records_created_at_fixed")
        await owner.execute(
            "UPDATE records SET created_at = created_at "
            "- make_interval(days => mod(abs(hashtext(id::text)::bigint), 540)::integer)"
        )
        await owner.execute("ALTER TABLE records ENABLE TRIGGER records_created_at_fixed")
    return accounts
