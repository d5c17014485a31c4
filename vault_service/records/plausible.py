"""Plausible French youth, made up by Faker's fr_FR locale: the demo data's and the
honeytokens' (a canary must look like any youth). Every NIR gets a correct control key.
"""

from __future__ import annotations

import datetime
import random
from typing import Any

__all__ = ["nir_for", "youth"]


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
