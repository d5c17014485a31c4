"""The scraping simulation of test_defence, spread over two real `vault-service serve`
processes and over two counsellor accounts of one structure.

Budgets, refusal counts, suspensions and alerts are kept in PostgreSQL, not in a
process: two scrapers of one structure, each sending its requests to the two processes
in turn, obtain together exactly what the budgets allow and no more, are suspended on
both processes at the refusal threshold, raise one alert of each kind each, and the
breach-impact report names exactly the records each was given."""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import Account, Stack, World, load_fixture, serve_processes
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))
# Values of the fixture that no alert, report or log line may hold.
PERSONAL = (
    FULL["birth_name"],
    FULL["nir"],
    FULL["email"],
    FULL["phone"],
    FULL["allowance"]["iban"],
)

RECORD_HOUR = 4  # full records per counsellor and hour
STRUCTURE_HOUR = 6  # full records per structure and hour, all its accounts together
SUMMARY_HOUR = 6  # masked summaries per counsellor and hour (caseload, searches)
SUSPEND_AFTER = 3  # budget refusals of an account in an hour before it is suspended
OWN = 5  # records each scraper is the referent of: one more than its budget
OTHERS = 2  # records of the structure's other counsellor: never readable by the scrapers
RANDOM = 5  # ids made up, per pass
# Budgets are per fixed UTC hour: the scenario must not straddle the turn of one.
SCENARIO_SECONDS = 45.0
# NOTIFY delivery to the other process (and to the one that suspended): generous, as
# a bound; the test polls and goes on as soon as both processes refuse.
SUSPENSION_DELAY = 5.0


@dataclass
class Scraper:
    """A valid counsellor token in the wrong hands, and what it obtained."""

    account: Account
    own: list[str]
    attempts: Iterator[str]
    sent: int = 0  # every request it made, on either process
    served: int = 0  # answered 200
    full: set[str] = field(default_factory=set)  # records returned in full
    given: set[str] = field(default_factory=set)  # records returned in any view
    refusals: list[str] = field(default_factory=list)  # codes of its 429 answers
    suspended_after: float | None = None  # seconds from its last refusal to 401 on both

    async def get(self, http: httpx.AsyncClient, bases: Sequence[str], path: str) -> httpx.Response:
        """One request, to the process whose turn it is: the i-th request of a scraper
        goes to process i % 2."""
        base = bases[self.sent % len(bases)]
        self.sent += 1
        r = await http.get(base + path, headers=self.account.headers())
        if r.status_code == 200:
            self.served += 1
        return r


def _attempts(mine: list[str], theirs: list[str], *, mine_first: bool) -> Iterator[str]:
    """Everything a scraper tries, pass after pass (a refused record is tried again
    on the next pass): every id it knows, made-up ids, its caseload, a search."""
    while True:
        known = [f"/v1/records/{rid}" for rid in (mine + theirs if mine_first else theirs + mine)]
        rest = [f"/v1/records/{uuid.uuid4()}" for _ in range(RANDOM)]
        rest += ["/v1/caseload", f"/v1/records?birth_name={FULL['birth_name']}"]
        yield from (known + rest if mine_first else rest + known)


async def _until_suspended(
    http: httpx.AsyncClient, bases: Sequence[str], scraper: Scraper
) -> float:
    """Ask both processes, with a request that costs nothing (a record already counted
    this hour), until both answer 401 account_inactive; the delay it took."""
    free = f"/v1/records/{min(scraper.full)}"
    started = time.monotonic()
    waiting = set(bases)
    while True:
        for base in sorted(waiting):
            scraper.sent += 1
            r = await http.get(base + free, headers=scraper.account.headers())
            if r.status_code == 401:
                assert r.json()["code"] == "account_inactive", r.text
                waiting.discard(base)
            else:
                # Not yet seen there: a re-read, which gives nothing new.
                assert r.status_code == 200, r.text
                scraper.served += 1
        if not waiting:
            return time.monotonic() - started
        assert time.monotonic() - started < SUSPENSION_DELAY, f"still active on {waiting}"
        await asyncio.sleep(0.02)


async def _alerts(
    http: httpx.AsyncClient, base: str, auditor: Account, since: datetime.datetime
) -> tuple[list[dict[str, Any]], str]:
    """Every alert raised since `since` (all pages), and the bodies as sent."""
    items: list[dict[str, Any]] = []
    texts: list[str] = []
    params = {"since": since.isoformat(), "limit": "500"}
    while True:
        r = await http.get(f"{base}/v1/alerts", params=params, headers=auditor.headers("audit"))
        assert r.status_code == 200, r.text
        texts.append(r.text)
        items += r.json()["items"]
        if r.json()["next_cursor"] is None:
            return items, "\n".join(texts)
        params["cursor"] = r.json()["next_cursor"]


async def test_two_scrapers_over_two_processes_get_the_budgets_and_no_more(
    stack: Stack, world: World
) -> None:
    """Two counsellors of one structure scrape, in turn, each through both processes:
    the first takes its own records first and meets its account budget; the second
    starts with made-up ids, its caseload and its colleagues' ids, and by the time it
    reads its own records the structure's budget has only two left. Each is suspended
    at its third refusal on both processes; each raises one `budget.exceeded` and one
    `account.suspended` alert; the breach-impact report of each, asked of either
    process, names exactly what it was given and counts every request it made."""
    async with serve_processes(
        stack,
        2,
        log_level="INFO",  # every request's log line, for the leak check below
        budget_counsellor_hour=RECORD_HOUR,
        budget_structure_hour=STRUCTURE_HOUR,
        summary_budget_counsellor_hour=SUMMARY_HOUR,
        suspend_after_refusals_hour=SUSPEND_AFTER,
        anomaly_interval_seconds=0.5,
    ) as served:
        http, bases = served.http, served.bases
        left = await world.owner.fetchval(
            "SELECT extract(epoch FROM date_trunc('hour', now(), 'UTC') + interval '1 hour'"
            " - now())::float8"
        )
        if left < SCENARIO_SECONDS:
            # Not a race: the windows are fixed UTC hours, and this waits for a fresh one.
            await asyncio.sleep(left + 0.5)

        sid = await world.structure()
        referent = await world.counsellor(sid)
        first, second = await world.counsellor(sid), await world.counsellor(sid)
        auditor = await world.account(Role.AUDITOR, None)

        async def create(who: Account, n: int) -> list[str]:
            ids = []
            for _ in range(n):  # all through one process
                r = await http.post(f"{bases[0]}/v1/records", json=FULL, headers=who.headers())
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            return ids

        others = await create(referent, OTHERS)
        first_own, second_own = await create(first, OWN), await create(second, OWN)
        start = datetime.datetime.now(datetime.UTC)

        a = Scraper(first, first_own, _attempts(first_own, second_own + others, mine_first=True))
        b = Scraper(second, second_own, _attempts(second_own, first_own + others, mine_first=False))
        scrapers = [a, b]
        turn = 0
        while active := [s for s in scrapers if s.suspended_after is None]:
            s = active[turn % len(active)]
            turn += 1
            assert s.sent < 100, f"{s.refusals}: never suspended"
            path = next(s.attempts)
            r = await s.get(http, bases, path)
            if r.status_code == 200 and "/v1/records/" in path:
                assert r.json()["view"] == "full"
                s.full.add(r.json()["id"])
                s.given.add(r.json()["id"])
            elif r.status_code == 200:
                s.given |= {item["id"] for item in r.json()["items"]}
            elif r.status_code == 429:
                s.refusals.append(r.json()["code"])
                if len(s.refusals) == SUSPEND_AFTER:
                    s.suspended_after = await _until_suspended(http, bases, s)
            else:
                assert (r.status_code, r.json()["code"]) == (404, "not_found"), (path, r.text)
        # Suspended, on both: nothing more, however it asks.
        for s in scrapers:
            unread = sorted(set(s.own) - s.full)[0]
            for base in bases:
                for path in (f"/v1/records/{unread}", "/v1/caseload"):
                    s.sent += 1
                    r = await http.get(base + path, headers=s.account.headers())
                    assert (r.status_code, r.json()["code"]) == (401, "account_inactive")
        end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)

        # What each obtained in full: its own budget, and the structure's between them,
        # although each spread its requests over both processes.
        assert a.full <= set(a.own)
        assert b.full <= set(b.own)
        assert len(a.full) == RECORD_HOUR
        assert len(b.full) == STRUCTURE_HOUR - RECORD_HOUR
        assert len(a.full | b.full) == STRUCTURE_HOUR
        # Masked summaries of all their own records (caseload, search): within SUMMARY_HOUR.
        assert a.given == set(a.own)
        assert b.given == set(b.own)
        # The first met its own budget (and, once the second had spent the structure's,
        # possibly that one); the second only ever met the structure's.
        assert a.refusals[0] == "record_budget_exceeded", a.refusals
        assert set(a.refusals) <= {"record_budget_exceeded", "structure_budget_exceeded"}
        assert b.refusals == ["structure_budget_exceeded"] * SUSPEND_AFTER
        for s in scrapers:
            assert s.suspended_after is not None
            assert s.suspended_after < SUSPENSION_DELAY
        # The counts behind it, one row per subject whichever process decided.
        usage = {
            (r["subject"], r["budget"]): r["used"]
            for r in await world.owner.fetch(
                "SELECT subject, budget, sum(used)::int AS used FROM budget_usage"
                " WHERE subject = ANY($1::uuid[]) GROUP BY subject, budget",
                [first.id, second.id, sid],
            )
        }
        assert usage == {
            (first.id, "record.hour"): RECORD_HOUR,
            (first.id, "record.day"): RECORD_HOUR,
            (first.id, "summary.hour"): OWN,
            (first.id, "refusals.hour"): SUSPEND_AFTER,
            (second.id, "record.hour"): STRUCTURE_HOUR - RECORD_HOUR,
            (second.id, "record.day"): STRUCTURE_HOUR - RECORD_HOUR,
            (second.id, "summary.hour"): OWN,
            (second.id, "refusals.hour"): SUSPEND_AFTER,
            (sid, "structure.hour"): STRUCTURE_HOUR,
        }

        # One alert per account and kind, though both processes saw refusals of each.
        alerts, alerts_text = await _alerts(
            http, bases[1], auditor, start - datetime.timedelta(minutes=1)
        )
        for s, budget, last in (
            (a, "record.hour", a.refusals[-1].partition("_")[0] + ".hour"),
            (b, "structure.hour", "structure.hour"),
        ):
            mine = [x for x in alerts if x["account_id"] == str(s.account.id)]
            kinds = collections.Counter(x["kind"] for x in mine)
            assert kinds["budget.exceeded"] == 1, mine
            assert kinds["account.suspended"] == 1, mine
            by_kind = {x["kind"]: x for x in mine}
            warning, critical = by_kind["budget.exceeded"], by_kind["account.suspended"]
            assert (warning["severity"], warning["structure_id"]) == ("warning", str(sid))
            assert warning["details"] == {"budget": budget, "refusals_this_hour": 1}
            assert (critical["severity"], critical["structure_id"]) == ("critical", str(sid))
            assert critical["details"] == {
                "budget": last,
                "refusals_this_hour": SUSPEND_AFTER,
                "threshold": SUSPEND_AFTER,
            }
        for value in PERSONAL:
            assert value not in alerts_text
        # One suspension entry per account in the access log, too.
        for s, base in zip(scrapers, bases, strict=True):
            r = await http.get(
                f"{base}/v1/audit/events",
                params={"actor_id": str(s.account.id), "action": "account.suspended"},
                headers=auditor.headers("audit"),
            )
            assert r.status_code == 200, r.text
            assert [(e["outcome"], e["refusal_code"]) for e in r.json()["items"]] == [
                ("refused", "bulk_read_suspended")
            ]

        # The breach-impact report of each, asked of either process: every record it was
        # given, and every request it made (the suspension's own entry besides).
        for s in scrapers:
            for base in bases:
                r = await http.get(
                    f"{base}/v1/audit/reports/breach-impact",
                    params={
                        "actor_id": str(s.account.id),
                        "since": start.isoformat(),
                        "until": end.isoformat(),
                    },
                    headers=auditor.headers("audit"),
                )
                assert r.status_code == 200, r.text
                report = r.json()
                assert {x["record_id"] for x in report["records"]} == s.given
                for x in report["records"]:
                    assert ("record.read" in x["actions"]) == (x["record_id"] in s.full), x
                assert report["next_cursor"] is None
                assert report["entries"] == s.sent + 1
                assert report["refused"] == s.sent - s.served + 1
                for value in PERSONAL:
                    assert value not in r.text

    # Nor in anything either process wrote (request lines, alerts, errors).
    assert len(served.outputs) == 2
    for output in served.outputs:
        for value in PERSONAL:
            assert value not in output
