"""Demo data for `vault-service dev`: structures, accounts and a few hundred youth.

Youth are created through RecordService, the same path as the API, so demo data
is encrypted and indexed exactly like real data. Faker's fr_FR locale makes the
values; every NIR gets a correct control key.
"""

from __future__ import annotations

import datetime
import random
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from vault_service.audit.recording import ToolLog
from vault_service.auth.permissions import Role, scopes_for
from vault_service.auth.principal import Principal
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


def nir_for(sex: str, birth: datetime.date, department: str, rng: random.Random) -> str:
    commune = f"{rng.randint(1, 999):03d}"
    order = f"{rng.randint(1, 999):03d}"
    sex_digit = 1 if sex == "M" else 2
    body = f"{sex_digit}{birth.year % 100:02d}{birth.month:02d}{department}{commune}{order}"
    numeric = body.replace("2A", "19").replace("2B", "18")
    return f"{body}{97 - int(numeric) % 97:02d}"


def youth(fake: Any, rng: random.Random, department: str) -> dict[str, Any]:
    sex = rng.choice(["F", "M"])
    first = fake.first_name_female() if sex == "F" else fake.first_name_male()
    birth = fake.date_of_birth(minimum_age=16, maximum_age=25)
    record: dict[str, Any] = {
        "birth_name": fake.last_name(),
        "first_names": [first],
        "sex": sex,
        "birth_date": birth.isoformat(),
        "nir": nir_for(sex, birth, department, rng),
        "email": f"{first.lower()}.{rng.randint(10, 9999)}@example.org".replace(" ", ""),
        "phone": f"06{rng.randint(10_000_000, 99_999_999)}",
        "ft_id": f"{rng.randint(1_000_000, 9_999_999)}{rng.choice('ABCDEFGHJK')}",
        "programme_kind": rng.choice(["CEJ", "PACEA"]),
        "pathway_status": "active",
    }
    # The situation at entry, for the statistics' `situation` dimension (drawn last:
    # the values above stay those of earlier demo data; started before any demo
    # youth's entry, so in effect at it).
    kind = rng.choice(["job_seeking", "training", "employment", "apprenticeship", "none"])
    if kind != "none":
        record["situations"] = [{"kind": kind, "start_date": "2024-06-03"}]
    return record


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
