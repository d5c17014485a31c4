"""The BI lane through HTTP on the real stack: youth created by counsellors and
dated into a past year of their own, that year sealed by `vault-service stats
refresh` (and by the service's own round), and GET /v1/stats as an analyst sees it:
small cells suppressed, no suppressed count recoverable by linear programming from
the cells and margins, canaries not counted, a sealed year never changing, every
query logged and budgeted, nothing else reachable with an analyst's token."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import itertools
import json
import random
import secrets
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Account, Stack, World, serve_processes
from tests.integration.test_cli import _admin_env, _cli, _env
from tests.integration.test_honeytokens import _recognised
from tests.integration.test_route_matrix import EXPECTED
from tests.stats_solver import bounds
from vault_service.auth.permissions import Role
from vault_service.stats.refresh import tables_digest

pytestmark = pytest.mark.integration
K = 10
SITUATIONS = ("job_seeking", "training", "employment")


def _youth(
    rng: random.Random,
    sex: str,
    age: int,
    programme: str,
    situation: str | None,
    entered: datetime.date | None = None,
) -> dict[str, Any]:
    # Born on the first of the month of entry (today by default), `age` years
    # before: the age at entry, hence its band, is `age`.
    at = entered or datetime.datetime.now(datetime.UTC).date()
    born = datetime.date(at.year - age, at.month, 1)
    record: dict[str, Any] = {
        "birth_name": rng.choice(["Martin", "Bernard", "Petit", "Durand", "Leroy"]),
        "first_names": [rng.choice(["Lina", "Adam", "Nour", "Hugo"])],
        "birth_date": born.isoformat(),
        "sex": sex,
        "programme_kind": programme,
        "email": f"stats.{secrets.token_hex(4)}@example.org",
    }
    if situation is not None:
        # Started on the day of entry: the situation at the end of the entry month.
        record["situations"] = [{"kind": situation, "start_date": at.isoformat()}]
    return record


_YEARS = itertools.count()


def _own_month() -> datetime.date:
    """A day of entry in a year no other test writes in (other tests' youth enter
    today, in the open year): this test's tables hold its own youth only, whatever ran
    before it, and its year is sealed by its own rebuild."""
    return datetime.date(1990 + next(_YEARS), 3, 15)


async def _backdate(world: World, sid: uuid.UUID, entered: datetime.date) -> None:
    """As if imported from a legacy system: the structure's records entered that day
    (the entry date is no part of a record's integrity tag)."""
    await _set_entry(
        world,
        sid,
        datetime.datetime(entered.year, entered.month, entered.day, 12, tzinfo=datetime.UTC),
    )


async def _set_entry(world: World, sid: uuid.UUID, at: datetime.datetime | None) -> None:
    """The owner's own act (entry dates are otherwise fixed: a trigger refuses any
    change, the service's role included)."""
    async with world.owner.transaction():
        await world.owner.execute("ALTER TABLE records DISABLE TRIGGER records_created_at_fixed")
        await world.owner.execute(
            "UPDATE records SET created_at = coalesce($2, now()) WHERE structure_id = $1", sid, at
        )
        await world.owner.execute("ALTER TABLE records ENABLE TRIGGER records_created_at_fixed")


def _period(entered: datetime.date) -> dict[str, str]:
    return {"since": f"{entered.year}-01", "until": f"{entered.year}-12"}


def _band(age: int) -> str:
    return "16_17" if age < 18 else "18_21" if age < 22 else "22_25"


async def _seed(
    client,
    world: World,
    region: str,
    plan: list[tuple[str, int, str, str | None]],
    entered: datetime.date,
) -> tuple[uuid.UUID, Counter[tuple[str, str, str, str]]]:
    """One structure in `region`, its youth created over HTTP by its counsellor."""
    sid = await world.structure()
    await world.owner.execute("UPDATE structures SET region = $2 WHERE id = $1", sid, region)
    counsellor = await world.counsellor(sid)
    rng = random.Random(str(sid))
    truth: Counter[tuple[str, str, str, str]] = Counter()
    for sex, age, programme, situation in plan:
        body = _youth(rng, sex, age, programme, situation, entered)
        r = await client.post("/v1/records", json=body, headers=counsellor.headers())
        assert r.status_code == 201, r.text
        truth[(sex, _band(age), programme, situation or "none")] += 1
    await _backdate(world, sid, entered)
    return sid, truth


def _plan(rng: random.Random, n: int) -> list[tuple[str, int, str, str | None]]:
    # Skewed on purpose: big cells and small ones side by side.
    return [
        (
            rng.choices(["F", "M"], [3, 1])[0],
            rng.choices([17, 19, 23], [1, 5, 2])[0],
            rng.choices(["CEJ", "PACEA", "PPAE"], [6, 3, 1])[0],
            rng.choices([*SITUATIONS, None], [5, 2, 1, 1])[0],
        )
        for _ in range(n)
    ]


def _refresh(stack: Stack) -> dict[str, Any]:
    done = _cli(_env(stack), "stats", "refresh")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def _stats(client, who: Account, **params: str) -> dict[str, Any]:
    r = await client.get("/v1/stats", params=params, headers=who.headers(purpose="statistics"))
    assert r.status_code == 200, r.text
    return r.json()


def _columns(doc: dict[str, Any]) -> list[str]:
    return [c for c in doc["cells"][0] if c != "count"]


@pytest.fixture
async def seeded(client, stack: Stack, world: World) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    rng = random.Random(13)
    regions = [f"Region A {tag}", f"Region A {tag}", f"Region B {tag}"]
    structures = {}
    entered = _own_month()
    for region, n in zip(regions, (120, 80, 60), strict=True):
        sid, truth = await _seed(client, world, region, _plan(rng, n), entered)
        structures[str(sid)] = {"region": region, "truth": truth}
    report = _refresh(stack)
    assert report["records"] >= 260
    analyst = await world.account(Role.ANALYST, None)
    return {
        "structures": structures,
        "analyst": analyst,
        "report": report,
        "period": _period(entered),
    }


def _mine(doc: dict[str, Any], structures: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in doc["cells"] if c.get("structure") in structures]


async def test_small_cells_are_suppressed_and_cannot_be_recomputed(
    client, seeded: dict[str, Any]
) -> None:
    analyst, structures = seeded["analyst"], seeded["structures"]
    period = seeded["period"]
    dims = {"sex": 0, "age_band": 1, "programme": 2, "situation": 3}
    answers = {}
    headers = analyst.headers(purpose="statistics")
    for group_by in (
        "structure,sex,age_band",
        "structure,sex",
        "structure,programme",
        "region,sex",
        "sex,age_band,situation",
    ):
        r = await client.get("/v1/stats", params={"group_by": group_by, **period}, headers=headers)
        if r.status_code == 422:  # refused by the joint check of the year: nothing shown
            assert r.json()["code"] == "stats_unprotectable"
            continue
        assert r.status_code == 200, r.text
        doc = r.json()
        answers[group_by] = doc
        assert doc["k"] == K
        assert (doc["since"], doc["until"]) == (period["since"], period["until"])
        columns = _columns(doc)
        # Nothing but codes and counts: no cell shows a count in (0, k).
        for cell in doc["cells"]:
            assert cell["count"] is None or cell["count"] == 0 or cell["count"] >= K
        # Our structures' cells: the true count, or suppressed (always, under k).
        wanted = [d for d in group_by.split(",") if d in dims]
        if "structure" in columns:
            for cell in _mine(doc, structures):
                if any(cell[d] == "*" for d in wanted):
                    continue
                truth = structures[cell["structure"]]["truth"]
                n = sum(
                    v for key, v in truth.items() if all(key[dims[d]] == cell[d] for d in wanted)
                )
                assert cell["region"] == structures[cell["structure"]]["region"]
                if 0 < n < K:
                    assert cell["count"] is None, cell
                else:
                    assert cell["count"] in (None, n), cell
            suppressed = [c for c in _mine(doc, structures) if c["count"] is None]
            assert suppressed, "the seeded data has small cells: some must be hidden"
        # The attacker's solver: every suppressed cell keeps an interval.
        for key, (low, high) in bounds(columns, doc["cells"]).items():
            assert high - low >= 1, (group_by, key, low, high)
    assert len(answers) >= 3 and "region,sex" in answers, sorted(answers)
    # One family, one set of margins: the structure-by-sex margins of the finer table
    # are the region-by-sex table's regional rows and totals.
    finer = answers.get("structure,sex,age_band") or answers["structure,sex"]
    three = {
        (c["region"], c["sex"]): c["count"]
        for c in finer["cells"]
        if c["structure"] == "*" and c.get("age_band", "*") == "*"
    }
    two = {(c["region"], c["sex"]): c["count"] for c in answers["region,sex"]["cells"]}
    assert three == two


async def test_csv_export_is_the_same_table(client, seeded: dict[str, Any]) -> None:
    analyst = seeded["analyst"]
    period = seeded["period"]
    doc = await _stats(client, analyst, group_by="structure,sex", **period)
    for how in (
        {"params": {"group_by": "structure,sex", "format": "csv", **period}, "headers": {}},
        {"params": {"group_by": "structure,sex", **period}, "headers": {"Accept": "text/csv"}},
    ):
        r = await client.get(
            "/v1/stats",
            params=how["params"],
            headers={**analyst.headers(purpose="statistics"), **how["headers"]},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        assert "attachment" in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [list(rows[0])] == [["structure", "region", "sex", "count", "suppressed"]]
        as_json = [
            {
                **{k: v for k, v in c.items() if k != "count"},
                "count": "" if c["count"] is None else str(c["count"]),
                "suppressed": "true" if c["count"] is None else "false",
            }
            for c in doc["cells"]
        ]
        assert rows == as_json


async def test_honeytokens_never_count(client, stack: Stack, world: World) -> None:
    entered = _own_month()
    sid, _ = await _seed(
        client, world, f"Region C {secrets.token_hex(3)}", [("F", 19, "CEJ", None)] * 12, entered
    )
    env = await _admin_env(stack, world)
    done = _cli(env, "honeytokens", "plant", "--structure", str(sid), "--count", "3")
    assert done.returncode == 0, done.stderr
    canaries = json.loads(done.stdout)[0]["planted"]
    await _recognised(world, canaries)
    await _backdate(world, sid, entered)  # the canaries too: same month, same structure
    report = _refresh(stack)
    assert report["canaries_left_out"] >= 3
    analyst = await world.account(Role.ANALYST, None)
    doc = await _stats(client, analyst, group_by="structure", **_period(entered))
    [mine] = [c for c in doc["cells"] if c["structure"] == str(sid)]
    assert mine["count"] == 12  # 15 rows in `records`, three of them canaries


async def test_a_sealed_year_never_changes(client, stack: Stack, world: World) -> None:
    """A youth erased before the year is sealed never counts; after it is sealed,
    an erasure, a new situation or a structure moving to another region leave every
    table as it was (review: two answers straddling a rebuild differed by one youth,
    whose codes they gave away)."""
    sid = await world.structure()
    await world.owner.execute("UPDATE structures SET region = 'Ouest' WHERE id = $1", sid)
    counsellor = await world.counsellor(sid)
    rng = random.Random(3)
    entered = _own_month()
    ids = []
    for _ in range(13):
        body = _youth(rng, "F", 19, "CEJ", "job_seeking", entered)
        r = await client.post("/v1/records", json=body, headers=counsellor.headers())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    await _backdate(world, sid, entered)
    a, b = await _admin_env(stack, world), await _admin_env(stack, world)

    def erase(record_id: str) -> None:
        requested = json.loads(_cli(a, "records", "erase", record_id).stdout)
        done = _cli(b, "records", "approve", requested["request_id"])
        assert done.returncode == 0, done.stderr

    erase(ids[0])  # before the year is sealed: never counted
    analyst = await world.account(Role.ANALYST, None)
    r = await client.get(
        "/v1/stats",
        params={"group_by": "structure", **_period(entered)},
        headers=analyst.headers(purpose="statistics"),
    )
    assert (r.status_code, r.json()["code"]) == (409, "stats_not_sealed")
    report = _refresh(stack)
    assert entered.year in report["years_sealed"]

    async def tables() -> list[dict[str, Any]]:
        return [
            await _stats(client, analyst, group_by=g, **_period(entered))
            for g in ("structure", "structure,situation", "region,situation")
        ]

    before = await tables()
    [mine] = [c for c in before[0]["cells"] if c["structure"] == str(sid)]
    assert mine["count"] == 12
    # After: one more erased, one youth finds a job, the structure changes region.
    erase(ids[1])
    r = await client.get(f"/v1/records/{ids[2]}", headers=counsellor.headers())
    assert r.status_code == 200, r.text
    r = await client.patch(
        f"/v1/records/{ids[2]}",
        json={"situations": [{"kind": "employment", "start_date": "2026-01-05"}]},
        headers={**counsellor.headers(), "If-Match": r.headers["ETag"]},
    )
    assert r.status_code == 200, r.text
    await world.owner.execute("UPDATE structures SET region = 'Est' WHERE id = $1", sid)
    report = _refresh(stack)
    assert entered.year not in report["years_sealed"]
    # A new process (no table kept in memory) reads the same sealed tables.
    async with serve_processes(stack, 1, budget_stats_hour=100_000) as served:
        after = []
        for g in ("structure", "structure,situation", "region,situation"):
            r = await served.http.get(
                f"{served.bases[0]}/v1/stats",
                params={"group_by": g, **_period(entered)},
                headers=analyst.headers(purpose="statistics"),
            )
            assert r.status_code == 200, r.text
            after.append(r.json())
    assert after == before


async def test_periods_are_one_closed_calendar_year(client, world: World) -> None:
    """No two periods overlap unless equal: Jan-Jun minus Jan-May would be June,
    whose small cells no one checked (review)."""
    analyst = await world.account(Role.ANALYST, None)
    headers = analyst.headers(purpose="statistics")
    this_year = datetime.datetime.now(datetime.UTC).year
    for params in (
        {"since": "2020-01", "until": "2020-06"},
        {"since": "2020-02", "until": "2020-12"},
        {"since": "2020-01", "until": "2021-12"},
        {"since": "2020-06"},
        {"until": f"{this_year}-12"},
        {"since": f"{this_year}-01"},
    ):
        r = await client.get("/v1/stats", params={"group_by": "sex", **params}, headers=headers)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter"), params
    # Either bound alone names the year; without either, the last closed year.
    for params in ({"since": "1971-01"}, {"until": "1971-12"}):
        r = await client.get("/v1/stats", params={"group_by": "sex", **params}, headers=headers)
        assert (r.status_code, r.json()["code"]) == (409, "stats_not_sealed"), r.text


async def test_a_table_moved_in_the_database_is_not_served(
    client, stack: Stack, world: World
) -> None:
    """Tables are sealed under the year's key and bound to their year and grouping:
    the database holds no count in clear, and one table copied over another (by
    someone holding the database) fails to open instead of being served."""
    entered = _own_month()
    sid, _ = await _seed(
        client, world, f"Region E {secrets.token_hex(3)}", [("F", 19, "CEJ", None)] * 11, entered
    )
    _refresh(stack)
    rows = await world.owner.fetch(
        "SELECT group_by, body FROM stats_tables WHERE year = $1", entered.year
    )
    assert len(rows) == 57
    for row in rows:
        assert str(sid).encode() not in bytes(row["body"])
    await world.owner.execute(
        "UPDATE stats_tables SET body = (SELECT body FROM stats_tables "
        "WHERE year = $1 AND group_by = 'sex') WHERE year = $1 AND group_by = 'programme'",
        entered.year,
    )
    analyst = await world.account(Role.ANALYST, None)
    async with serve_processes(stack, 1) as served:
        r = await served.http.get(
            f"{served.bases[0]}/v1/stats",
            params={"group_by": "programme", **_period(entered)},
            headers=analyst.headers(purpose="statistics"),
        )
    assert (r.status_code, r.json()["code"]) == (500, "decryption_failed"), r.text


async def test_the_service_refreshes_by_itself(client, stack: Stack, world: World) -> None:
    entered = _own_month()
    sid, _ = await _seed(
        client,
        world,
        f"Region D {secrets.token_hex(3)}",
        [("M", 23, "PACEA", "training")] * 11,
        entered,
    )
    analyst = await world.account(Role.ANALYST, None)
    async with serve_processes(
        stack, 1, stats_refresh_seconds=1, budget_stats_hour=100_000
    ) as served:
        headers = analyst.headers(purpose="statistics")
        for _ in range(100):
            r = await served.http.get(
                f"{served.bases[0]}/v1/stats",
                params={"group_by": "structure", **_period(entered)},
                headers=headers,
            )
            if r.status_code == 409:  # not sealed yet
                assert r.json()["code"] == "stats_not_sealed"
                await asyncio.sleep(0.2)
                continue
            assert r.status_code == 200, r.text
            counts = {c["structure"]: c["count"] for c in r.json()["cells"]}
            assert counts.get(str(sid)) == 11
            break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the scheduled rebuild did not seal the year")


async def test_an_analyst_reaches_no_other_route(client, world: World) -> None:
    analyst = await world.account(Role.ANALYST, None)
    assert EXPECTED[("GET", "/v1/stats")] == {Role.ANALYST}
    for (method, path), roles in sorted(EXPECTED.items()):
        if Role.ANALYST in roles:
            continue
        url = path
        for name in ("{record_id}", "{grant_id}", "{transfer_id}"):
            url = url.replace(name, str(uuid.uuid4()))
        for purpose in ("statistics", "follow_up", "audit"):
            r = await client.request(
                method,
                url,
                json={} if method != "GET" else None,
                headers=analyst.headers(purpose=purpose),
            )
            assert (r.status_code, r.json()["code"]) == (403, "forbidden"), (method, path)


async def test_purpose_is_required(client, world: World) -> None:
    analyst = await world.account(Role.ANALYST, None)
    r = await client.get(
        "/v1/stats", params={"group_by": "sex"}, headers=analyst.headers(purpose=None)
    )
    assert (r.status_code, r.json()["code"]) == (400, "purpose_required")
    r = await client.get(
        "/v1/stats", params={"group_by": "sex"}, headers=analyst.headers(purpose="audit")
    )
    assert (r.status_code, r.json()["code"]) == (403, "purpose_not_allowed")
    # Other roles, with any purpose they may state: forbidden.
    sid = await world.structure()
    for role, purpose in (
        (Role.COUNSELLOR, "follow_up"),
        (Role.SUPERVISOR, "supervision"),
        (Role.AUDITOR, "audit"),
    ):
        who = await world.account(role, sid if role in (Role.COUNSELLOR, Role.SUPERVISOR) else None)
        r = await client.get(
            "/v1/stats", params={"group_by": "sex"}, headers=who.headers(purpose=purpose)
        )
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"group_by": "name"},
        {"group_by": "sex,sex"},
        {"group_by": "sex,age_band,programme,situation"},
        {"group_by": "structure,region"},
        {"group_by": "sex", "since": "2026-13"},
        {"group_by": "sex", "since": "2025-01", "until": "2024-12"},
        {"group_by": "sex", "since": "2020-01", "until": "2026-12"},
        {"group_by": "sex", "since": "2020-01", "until": "2020-06"},
        {"group_by": "sex", "format": "xml"},
        {"group_by": "sex", "nir": "1"},
        # The year still open (it changes at every rebuild) and years out of range.
        {"group_by": "sex", "until": f"{datetime.date.today().year}-12"},
        {"group_by": "sex", "since": "0000-01", "until": "0000-12"},
        {"group_by": "sex", "until": "9999-12"},
    ],
)
async def test_bad_queries_are_refused_with_a_stable_code(
    client, world: World, params: dict[str, str]
) -> None:
    analyst = await world.account(Role.ANALYST, None)
    r = await client.get("/v1/stats", params=params, headers=analyst.headers(purpose="statistics"))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_parameter"
    for value in params.values():
        if len(value) > 2:
            assert value not in r.json()["detail"]


async def test_each_query_is_logged_and_budgeted(client, stack: Stack, world: World) -> None:
    analyst = await world.account(Role.ANALYST, None)
    auditor = await world.account(Role.AUDITOR, None)
    decided = None
    entered = _own_month()
    await _seed(
        client, world, f"Region F {secrets.token_hex(3)}", [("M", 19, "CEJ", None)] * 12, entered
    )
    _refresh(stack)
    for i in range(61):
        r = await client.get(
            "/v1/stats",
            params={"group_by": "sex,age_band", **_period(entered)},
            headers=analyst.headers(purpose="statistics"),
        )
        if r.status_code == 429:
            decided = i
            break
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Policy"] == '"stats-hour";q=60;w=3600'
    assert decided == 60, "the 61st query of the hour is refused (VAULT_SERVICE_BUDGET_STATS_HOUR)"
    assert r.json()["code"] == "stats_budget_exceeded"
    r = await client.get(
        "/v1/audit/events",
        params={"actor_id": str(analyst.id), "limit": "100"},
        headers=auditor.headers(purpose="audit"),
    )
    assert r.status_code == 200, r.text
    entries = [e for e in r.json()["items"] if e["action"] == "stats.query"]
    allowed = [e for e in entries if e["outcome"] == "allowed"]
    refused = [e for e in entries if e["outcome"] == "refused"]
    assert len(allowed) == 60 and len(refused) >= 1
    assert refused[0]["refusal_code"] == "stats_budget_exceeded"
    for e in allowed:
        assert e["purpose"] == "statistics"
        assert e["record_ids"] == []
        assert sorted(e["criteria"]) == [
            "group_by_age_band",
            "group_by_sex",
            f"since_{entered.year}_01",
            f"until_{entered.year}_12",
        ]


async def test_the_rebuild_is_logged_with_the_fields_it_opened(
    client, stack: Stack, world: World
) -> None:
    entered = _own_month()
    await _seed(
        client, world, f"Region G {secrets.token_hex(3)}", [("F", 22, "CEJ", None)], entered
    )
    report = _refresh(stack)
    auditor = await world.account(Role.AUDITOR, None)

    async def entries() -> list[dict[str, Any]]:
        r = await client.get(
            "/v1/audit/events",
            params={"action": "stats.refresh", "limit": "500"},
            headers=auditor.headers(purpose="audit"),
        )
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    logged = await entries()
    latest = logged[-1]
    assert latest["fields"] == ["sex", "birth_date", "situations"]
    assert latest["record_ids"] == [] and latest["actor_id"] is None
    # Every record opened, canaries and unreadable ones included (the count tells
    # nothing about either).
    opened = report["records"] + report["canaries_left_out"] + report["unreadable_left_out"]
    assert latest.get("count", 1) == opened >= 1  # 1 is left out of the body
    # The year it sealed, and the digest of that year's stored tables: what an
    # auditor compares with `stats_tables` (a year sealed twice, or a table replaced,
    # shows).
    rows = await world.owner.fetch(
        "SELECT group_by, body FROM stats_tables WHERE year = $1", entered.year
    )
    digest = tables_digest(entered.year, [r["group_by"] for r in rows], [r["body"] for r in rows])
    assert latest["criteria"] == [f"sealed_{entered.year}", f"tables_{digest}"]
    # A round with no year to seal opens nothing and logs nothing.
    again = _refresh(stack)
    assert again["years_sealed"] == [] and again["records"] == 0
    assert len(await entries()) == len(logged)


async def test_a_table_that_cannot_be_protected_is_refused(
    client, stack: Stack, world: World
) -> None:
    """One month holding only this test's youth: 5 girls of 17, 30 of 19, 20 boys of
    17. The sex and age tables publish F 35, M 20, 16-17 25, 18-21 30; in the sex by
    age table the 5 girls of 17 are 25 - 20 whatever else is hidden (the boys are
    all 17), so the table is refused, and logged as refused."""
    sid = await world.structure()
    counsellor = await world.counsellor(sid)
    rng = random.Random(5)
    entered = _own_month()
    for sex, age, n in (("F", 17, 5), ("F", 19, 30), ("M", 17, 20)):
        for _ in range(n):
            body = _youth(rng, sex, age, "CEJ", None, entered)
            r = await client.post("/v1/records", json=body, headers=counsellor.headers())
            assert r.status_code == 201, r.text
    await _backdate(world, sid, entered)
    _refresh(stack)
    analyst = await world.account(Role.ANALYST, None)
    headers = analyst.headers(purpose="statistics")
    period = _period(entered)
    doc = await _stats(client, analyst, group_by="sex", **period)
    assert {c["sex"]: c["count"] for c in doc["cells"]} == {"F": 35, "M": 20, "unknown": 0, "*": 55}
    r = await client.get(
        "/v1/stats", params={"group_by": "sex,age_band", **period}, headers=headers
    )
    assert r.status_code == 422, r.text[:3000]
    assert r.json()["code"] == "stats_unprotectable"
    assert "5" not in r.json()["detail"]
    auditor = await world.account(Role.AUDITOR, None)
    r = await client.get(
        "/v1/audit/events",
        params={"actor_id": str(analyst.id), "action": "stats.query"},
        headers=auditor.headers(purpose="audit"),
    )
    outcomes = [(e["outcome"], e["refusal_code"]) for e in r.json()["items"]]
    # The budget is charged before the table is read (one entry), then the refusal.
    assert outcomes == [("allowed", None), ("allowed", None), ("refused", "stats_unprotectable")]


async def test_a_tampered_row_is_left_out_and_alerted(client, stack: Stack, world: World) -> None:
    sid = await world.structure()
    counsellor = await world.counsellor(sid)
    rng = random.Random(8)
    entered = _own_month()
    ids = []
    for _ in range(11):
        r = await client.post(
            "/v1/records",
            json=_youth(rng, "M", 20, "CEJ", None, entered),
            headers=counsellor.headers(),
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    await _backdate(world, sid, entered)
    # Someone with the database moves one youth to another programme.
    await world.owner.execute(
        "UPDATE records SET clear = jsonb_set(clear, '{programme_kind}', '\"PACEA\"') "
        "WHERE id = $1",
        uuid.UUID(ids[0]),
    )
    report = _refresh(stack)
    assert report["unreadable_left_out"] >= 1
    analyst = await world.account(Role.ANALYST, None)
    doc = await _stats(client, analyst, group_by="structure,programme", **_period(entered))
    mine = {c["programme"]: c["count"] for c in doc["cells"] if c["structure"] == str(sid)}
    assert mine["CEJ"] == 10 and mine["PACEA"] == 0 and mine["*"] == 10
    alerted = await world.owner.fetch(
        "SELECT severity FROM alerts WHERE kind = 'record.integrity_failed' "
        "AND details ->> 'record_id' = $1",
        ids[0],
    )
    assert [a["severity"] for a in alerted] == ["critical"]
    _refresh(stack)  # met again: no second alert
    assert (
        len(
            await world.owner.fetch(
                "SELECT 1 FROM alerts WHERE details ->> 'record_id' = $1", ids[0]
            )
        )
        == 1
    )


async def test_a_sealed_year_survives_a_kek_rotation(client, stack: Stack, world: World) -> None:
    """A year's key is wrapped under the branch-key KEK: `keys rotate kek --retire`
    rewraps it with the branch keys, and a fresh process (no table kept in memory)
    still opens the year's tables with only the new KEK version enabled."""
    from tests.integration.test_keys_cli import _cli as keys_cli
    from tests.integration.test_keys_cli import _operator, _transit

    entered = _own_month()
    sid, _ = await _seed(
        client, world, f"Region H {secrets.token_hex(3)}", [("F", 19, "CEJ", None)] * 11, entered
    )
    _refresh(stack)
    op = await _operator(stack, world)
    code, out, err = await keys_cli(op.env, "keys", "rotate", "kek", "--retire", "--json")
    assert code == 0, err
    assert json.loads(out)["retired"] is True
    latest = _transit(stack)
    assert latest["min_decryption"] == latest["latest"]
    wrapped = [
        r["wrapped_key"] for r in await world.owner.fetch("SELECT wrapped_key FROM stats_years")
    ]
    assert wrapped and all(w.startswith(f"vault:v{latest['latest']}:") for w in wrapped)
    analyst = await world.account(Role.ANALYST, None)
    async with serve_processes(stack, 1) as served:
        r = await served.http.get(
            f"{served.bases[0]}/v1/stats",
            params={"group_by": "structure", **_period(entered)},
            headers=analyst.headers(purpose="statistics"),
        )
    assert r.status_code == 200, r.text
    [mine] = [c for c in r.json()["cells"] if c["structure"] == str(sid)]
    assert mine["count"] == 11


async def test_records_dated_before_the_newest_sealed_year_are_never_sealed_and_alerted(
    client, stack: Stack, world: World
) -> None:
    """`created_at` is the service's clock at creation: records that turn up in a
    closed year older than the newest sealed one were dated there by someone holding
    the database, who could otherwise have two years sealed that differ by one youth
    (review). Sealing goes forward only; such records raise one critical alert."""
    later, _ = await _seed(
        client, world, f"Region I {secrets.token_hex(3)}", [("F", 20, "CEJ", None)] * 11,
        _own_month(),
    )  # fmt: skip
    newest = _refresh(stack)["years_sealed"]
    assert newest
    older = datetime.date(1985, 6, 1)  # before every year the tests seal
    sid, _ = await _seed(
        client, world, f"Region J {secrets.token_hex(3)}", [("M", 20, "CEJ", None)] * 11, older
    )
    try:
        report = _refresh(stack)
        assert older.year not in report["years_sealed"] and report["records"] == 0
        alerts = await world.owner.fetch(
            "SELECT severity, details FROM alerts WHERE kind = 'stats.backdated_records' "
            "AND state = 'open'"
        )
        assert [a["severity"] for a in alerts] == ["critical"]
        assert json.loads(alerts[0]["details"])["records"] >= 11
        _refresh(stack)  # still there: no second alert while the first is open
        assert (
            await world.owner.fetchval(
                "SELECT count(*) FROM alerts WHERE kind = 'stats.backdated_records'"
            )
            == 1
        )
        analyst = await world.account(Role.ANALYST, None)
        r = await client.get(
            "/v1/stats",
            params={"group_by": "sex", **_period(older)},
            headers=analyst.headers(purpose="statistics"),
        )
        assert (r.status_code, r.json()["code"]) == (409, "stats_not_sealed")
    finally:  # the records back in the open year, the alert closed: later tests
        await _set_entry(world, sid, None)
        await world.owner.execute("DELETE FROM alerts WHERE kind = 'stats.backdated_records'")


async def test_a_year_marked_sealed_in_the_database_is_alerted_and_ignored(
    client, stack: Stack, world: World
) -> None:
    """Someone holding the database marks the open year sealed (no tables): left
    alone, it would move the forward-only bound past every closed year and keep them
    from ever being sealed (review). The round ignores it, raises one critical
    alert, and seals the closed year as it would have."""
    this_year = datetime.datetime.now(datetime.UTC).year
    await world.owner.execute(
        "INSERT INTO stats_years (year, sealed_at, k, wrapped_key) "
        "VALUES ($1, now(), 10, 'vault:v1:forged')",
        this_year,
    )
    try:
        entered = _own_month()
        await _seed(
            client, world, f"Region K {secrets.token_hex(3)}", [("F", 21, "CEJ", None)] * 11,
            entered,
        )  # fmt: skip
        report = _refresh(stack)
        assert entered.year in report["years_sealed"]
        alerts = await world.owner.fetch(
            "SELECT severity, details FROM alerts WHERE kind = 'stats.seal_tampered'"
        )
        assert [a["severity"] for a in alerts] == ["critical"]
        assert json.loads(alerts[0]["details"]) == {"years": str(this_year)}
    finally:
        await world.owner.execute("DELETE FROM stats_years WHERE year = $1", this_year)
        await world.owner.execute("DELETE FROM alerts WHERE kind = 'stats.seal_tampered'")


async def test_no_role_but_the_owner_changes_a_records_entry_date(
    client, stack: Stack, world: World
) -> None:
    """The service's role may update every column of `records`; moving records
    between years with it (to have two years sealed that differ by one youth, a
    review's attack) is refused by the database itself."""
    import asyncpg

    sid, _ = await _seed(
        client, world, f"Region L {secrets.token_hex(3)}", [("F", 20, "CEJ", None)], _own_month()
    )
    app = await asyncpg.connect(stack.dsn())
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(
                "UPDATE records SET created_at = created_at - interval '1 year' "
                "WHERE structure_id = $1",
                sid,
            )
        # Every other column the service writes is still its to write.
        await app.execute("UPDATE records SET updated_at = updated_at WHERE structure_id = $1", sid)
    finally:
        await app.close()
