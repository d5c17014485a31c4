"""The bulk-read defence through the running service: an account that keeps hitting its
budget is suspended by the service on its own, alerts say so (ids and counts only),
and the suspension is in the access log."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import Captured, Stack, World, load_fixture
from vault_service.app import create_app
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))


@contextlib.asynccontextmanager
async def _service(stack: Stack, **overrides: Any) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(stack.settings(**overrides))
    async with AsyncTestClient(app, base_url="http://testserver.local") as client:
        yield client


async def test_repeated_refusals_suspend_the_account_and_raise_alerts(
    stack: Stack, world: World, captured: Captured
) -> None:
    async with _service(stack, budget_counsellor_hour=1, suspend_after_refusals_hour=3) as api:
        c = await world.counsellor()
        auditor = await world.account(Role.AUDITOR, None)
        ids = []
        for _ in range(2):
            r = await api.post("/v1/records", json=FULL, headers=c.headers())
            assert r.status_code == 201
            ids.append(r.json()["id"])
        assert (await api.get(f"/v1/records/{ids[0]}", headers=c.headers())).status_code == 200
        for _ in range(3):
            r = await api.get(f"/v1/records/{ids[1]}", headers=c.headers())
            assert (r.status_code, r.json()["code"]) == (429, "record_budget_exceeded")
        # Suspended on every replica from the next request on (NOTIFY; allow its delivery).
        for _ in range(40):
            r = await api.get(f"/v1/records/{ids[0]}", headers=c.headers())
            if r.status_code == 401:
                break
            await asyncio.sleep(0.05)
        assert (r.status_code, r.json()["code"]) == (401, "account_inactive")

        r = await api.get("/v1/alerts", headers=auditor.headers(purpose="audit"))
        assert r.status_code == 200, r.text
        mine = [a for a in r.json()["items"] if a["account_id"] == str(c.id)]
        assert [(a["kind"], a["severity"]) for a in mine] == [
            ("budget.exceeded", "warning"),
            ("account.suspended", "critical"),
        ]
        assert mine[1]["details"] == {
            "budget": "record.hour",
            "refusals_this_hour": 3,
            "threshold": 3,
        }
        assert FULL["birth_name"] not in r.text
        # The same alerts as OpenTelemetry log records and counts, ids and counts only.
        exported = [
            (d.log_record.body, d.log_record.severity_text, dict(d.log_record.attributes or {}))
            for d in captured.records.get_finished_logs()
            if (d.log_record.attributes or {}).get("account.id") == str(c.id)
        ]
        assert [(body, sev) for body, sev, _ in exported] == [
            ("budget.exceeded", "WARNING"),
            ("account.suspended", "CRITICAL"),
        ]
        assert exported[1][2] == {
            "alert.kind": "account.suspended",
            "alert.severity": "critical",
            "alert.id": mine[1]["id"],
            "account.id": str(c.id),
            "structure.id": str(c.structure_id),
            "alert.budget": "record.hour",
            "alert.refusals_this_hour": 3,
            "alert.threshold": 3,
        }
        raised = {
            tuple(sorted(point.attributes.items())): point.value
            for resource in captured.metrics.get_metrics_data().resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "vault_service.alerts.raised"
            for point in metric.data.data_points
        }
        key = (("alert.kind", "account.suspended"), ("alert.severity", "critical"))
        assert raised[key] >= 1
        # Open alerts only, and a counsellor may not read them.
        r = await api.get(
            "/v1/alerts", params={"state": "open"}, headers=auditor.headers(purpose="audit")
        )
        assert all(a["state"] == "open" for a in r.json()["items"])
        assert (await api.get("/v1/alerts", headers=c.headers())).status_code in (401, 403)
        # The suspension is an access-log entry of its own.
        r = await api.get(
            "/v1/audit/events",
            params={"actor_id": str(c.id), "action": "account.suspended"},
            headers=auditor.headers(purpose="audit"),
        )
        entries = r.json()["items"]
        assert [(e["outcome"], e["refusal_code"]) for e in entries] == [
            ("refused", "bulk_read_suspended")
        ]


async def test_alert_parameters_are_checked(client, world: World) -> None:
    auditor = await world.account(Role.AUDITOR, None)
    for params in ({"state": "closed"}, {"limit": "0"}, {"cursor": "x"}, {"since": "yesterday"}):
        r = await client.get("/v1/alerts", params=params, headers=auditor.headers(purpose="audit"))
        assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter"), params


async def test_a_scraper_gets_its_budget_and_no_more_and_the_report_names_it_all(
    stack: Stack, world: World
) -> None:
    """One valid counsellor token, then one supervisor token, taking everything they can
    reach: their caseload, every search they can form, random ids. Each obtains no
    more than its budgets, is suspended, raises alerts, and the breach-impact report
    names exactly the records it was given."""
    import datetime
    import uuid

    async with _service(
        stack,
        budget_counsellor_hour=4,
        summary_budget_counsellor_hour=6,
        summary_budget_supervisor_hour=6,
        suspend_after_refusals_hour=3,
    ) as api:
        sid = await world.structure()
        referent = await world.counsellor(sid)
        supervisor = await world.account(Role.SUPERVISOR, sid)
        auditor = await world.account(Role.AUDITOR, None)
        ids = [
            (await api.post("/v1/records", json=FULL, headers=referent.headers())).json()["id"]
            for _ in range(10)
        ]
        start = datetime.datetime.now(datetime.UTC)
        for scraper in (referent, supervisor):
            given: set[str] = set()
            statuses: list[int] = []
            attempts = [f"/v1/records/{rid}" for rid in ids]
            attempts += [f"/v1/records/{uuid.uuid4()}" for _ in range(5)]
            attempts += ["/v1/caseload", f"/v1/records?birth_name={FULL['birth_name']}"]
            for path in attempts:
                r = await api.get(path, headers=scraper.headers())
                statuses.append(r.status_code)
                if r.status_code == 401:
                    break
                if r.status_code == 200 and path.startswith("/v1/records/"):
                    given.add(path.rsplit("/", 1)[1])
                elif r.status_code == 200:
                    given |= {item["id"] for item in r.json()["items"]}
            full = [i for i in given if i in ids]
            limit = 4 if scraper is referent else 6  # records, or the supervisor's summaries
            assert len(full) <= limit
            assert 401 in statuses, statuses  # suspended before the end
            end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
            r = await api.get(
                "/v1/audit/reports/breach-impact",
                params={
                    "actor_id": str(scraper.id),
                    "since": start.isoformat(),
                    "until": end.isoformat(),
                },
                headers=auditor.headers(purpose="audit"),
            )
            assert r.status_code == 200, r.text
            assert {item["record_id"] for item in r.json()["records"]} == given
        r = await api.get("/v1/alerts", headers=auditor.headers(purpose="audit"))
        kinds = {
            (a["account_id"], a["kind"])
            for a in r.json()["items"]
            if a["account_id"] in (str(referent.id), str(supervisor.id))
        }
        assert (str(referent.id), "account.suspended") in kinds
        assert (str(supervisor.id), "account.suspended") in kinds
