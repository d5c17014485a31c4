"""The auditor API end to end: real tokens, guards, PostgreSQL and OpenBao.

Runs on an app instance of its own built by `create_app` (same middleware, guards
and error handlers as the service). Until app.py wires the access log, the fixture
registers `AuditController` and sets the `app.state` collaborators itself, exactly as
the wiring will; once wired, it uses the app's own."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import Account, Stack, World
from tests.integration.test_audit_log import event
from vault_service.app import create_app
from vault_service.audit import verify
from vault_service.audit.checkpoints import CheckpointPublisher
from vault_service.audit.log import AccessLog
from vault_service.audit.proofs import AuditProofs
from vault_service.auditor.routes import AuditController
from vault_service.auth.permissions import Role
from vault_service.kms import VaultKms

pytestmark = pytest.mark.integration
ORIGIN = "vault-service.test/api"


@pytest.fixture(scope="module")
async def audit_app(stack: Stack) -> AsyncIterator[tuple[Litestar, AsyncTestClient[Litestar]]]:
    application = create_app(stack.settings())
    wired = any(getattr(r, "path", "").startswith("/v1/audit") for r in application.routes)
    if not wired:
        application.register(AuditController)

    # The test client runs the app on an event loop of its own: the app's collaborators
    # are made there, by lifespan hooks, after create_app's own lifespan has its pool.
    async def start_audit(app: Litestar) -> None:
        state = app.state
        if getattr(state, "access_log", None) is None:
            state.access_log = AccessLog(state.pool, lock_timeout=0.5)
            state.own_access_log = True
            await state.access_log.start()
        if getattr(state, "audit_proofs", None) is None:
            state.audit_proofs = AuditProofs(state.pool, state.kms, ORIGIN)

    async def stop_audit(app: Litestar) -> None:
        if getattr(app.state, "own_access_log", False):
            await app.state.access_log.stop()

    application.on_startup.append(start_audit)
    application.on_shutdown.append(stop_audit)
    async with AsyncTestClient(application, base_url="http://testserver.local") as client:
        yield application, client


@pytest.fixture
def api(audit_app) -> AsyncTestClient[Litestar]:
    return audit_app[1]


@pytest.fixture(scope="module")
async def seed_pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(stack.dsn("vault_service_app"), min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def access_log(seed_pool) -> AsyncIterator[AccessLog]:
    """The tests' own writer, in the tests' event loop: a second sequencer on the same
    database as the app's, which the tree lock serialises like another replica."""
    log = AccessLog(seed_pool)
    await log.start()
    yield log
    await log.stop()


@pytest.fixture
async def publisher(stack: Stack, audit_app, seed_pool) -> AsyncIterator[CheckpointPublisher]:
    kms = VaultKms(stack.settings().vault)
    yield CheckpointPublisher(seed_pool, kms, audit_app[0].state.audit_proofs.origin)
    kms.close()


@pytest.fixture
async def auditor(world: World) -> Account:
    return await world.account(Role.AUDITOR, None)


def audit_headers(account: Account) -> dict[str, str]:
    return account.headers(purpose="audit", **{"X-Purpose-Detail": "quarterly review"})


async def pages(api, auditor: Account, path: str, **params: str) -> list[dict]:
    items: list[dict] = []
    cursor = None
    for _ in range(100):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = await api.get(path, params=query, headers=audit_headers(auditor))
        assert r.status_code == 200, r.text
        body = r.json()
        items.extend(body.get("items", body.get("records", [])))
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    pytest.fail("paging did not end")


# --- access control -----------------------------------------------------------------------------
async def test_only_auditors_with_the_audit_purpose(api, world: World, auditor) -> None:
    counsellor = await world.counsellor()
    r = await api.get("/v1/audit/events", headers=counsellor.headers())
    assert r.status_code == 403
    r = await api.get("/v1/audit/events", headers=auditor.headers(purpose=None))
    assert (r.status_code, r.json()["code"]) == (400, "purpose_required")
    r = await api.get("/v1/audit/events", headers=auditor.headers(purpose="follow_up"))
    assert (r.status_code, r.json()["code"]) == (403, "purpose_not_allowed")
    r = await api.get("/v1/audit/events")
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/audit/events", {"nope": "1"}),
        ("/v1/audit/events", {"actor_id": "Jean-Dupont-1980"}),
        ("/v1/audit/events", {"record_id": "not-a-uuid"}),
        ("/v1/audit/events", {"since": "2025-01-01T00:00:00"}),
        ("/v1/audit/events", {"since": "yesterday"}),
        ("/v1/audit/events", {"limit": "100000"}),
        ("/v1/audit/events", {"limit": "-1"}),
        ("/v1/audit/events", {"cursor": "%%%"}),
        ("/v1/audit/events", {"action": "DROP TABLE"}),
        ("/v1/audit/events", {"since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}),
        ("/v1/audit/proofs/inclusion", {}),
        ("/v1/audit/proofs/inclusion", {"index": "0", "size": "99999999999"}),
        ("/v1/audit/proofs/inclusion", {"index": "1e3"}),
        ("/v1/audit/proofs/consistency", {"from": "0", "to": "1"}),
        ("/v1/audit/bundles", {"start": "0", "end": "20000", "size": "30000"}),
        ("/v1/audit/reports/breach-impact", {"actor_id": str(uuid.uuid4())}),
        (
            "/v1/audit/reports/breach-impact",
            {
                "actor_id": str(uuid.uuid4()),
                "since": "2025-01-01T00:00:00Z",
                "until": "2025-02-01T00:00:00Z",
                "format": "xml",
            },
        ),
        ("/v1/audit/reports/subject/not-a-uuid", {}),
    ],
)
async def test_parameters_are_validated_with_stable_codes(api, auditor, path, params) -> None:
    r = await api.get(path, params=params, headers=audit_headers(auditor))
    assert r.status_code == 400, r.text
    problem = r.json()
    assert problem["code"] == "invalid_parameter"
    for value in params.values():
        if len(value) > 3:
            assert value not in problem["detail"]


# --- events, subject report, auditor entries ------------------------------------------------------
async def test_events_by_record_actor_action_and_time_with_cursor(api, auditor, access_log):
    actor, record = uuid.uuid4(), uuid.uuid4()
    start = datetime.datetime.now(datetime.UTC)
    indexes = [await access_log.append(event(actor, record)) for _ in range(5)]
    indexes.append(await access_log.append(event(actor, action="caseload.list")))
    await access_log.append(event(None, record, outcome="refused", refusal_code="not_found"))

    by_actor = await pages(api, auditor, "/v1/audit/events", actor_id=str(actor), limit="2")
    assert [i["index"] for i in by_actor] == indexes
    assert {i["actor_id"] for i in by_actor} == {str(actor)}
    by_record = await pages(api, auditor, "/v1/audit/events", record_id=str(record))
    assert len(by_record) == 6
    assert by_record[-1]["outcome"] == "refused"
    by_both = await pages(
        api, auditor, "/v1/audit/events", actor_id=str(actor), action="caseload.list"
    )
    assert [i["index"] for i in by_both] == indexes[-1:]
    window = await pages(
        api,
        auditor,
        "/v1/audit/events",
        record_id=str(record),
        since=start.isoformat(),
        until=(start + datetime.timedelta(hours=1)).isoformat(),
    )
    # ...and now the auditor's own look-up by this record id, which is logged too.
    assert [i["action"] for i in window][6:] == ["audit.events"]
    assert window[6]["actor_id"] == str(auditor.id)
    assert (
        await pages(
            api,
            auditor,
            "/v1/audit/events",
            record_id=str(record),
            until=start.isoformat(),
        )
        == []
    )


async def test_subject_report_and_auditor_entries(api, world: World, auditor, access_log):
    record = uuid.uuid4()
    readers = [uuid.uuid4(), uuid.uuid4()]
    for reader in readers:
        await access_log.append(
            event(reader, record, purpose="follow_up", purpose_detail="rendez-vous")
        )
    r = await api.get(f"/v1/audit/reports/subject/{record}", headers=audit_headers(auditor))
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["record_id"] == str(record)
    assert [i["actor_id"] for i in report["items"]] == [str(r) for r in readers]
    assert {i["purpose"] for i in report["items"]} == {"follow_up"}
    assert all("at" in i and "index" in i for i in report["items"])

    # The auditor's look-up is in the log too, and shows up in the subject's report.
    mine = await pages(api, auditor, "/v1/audit/events", actor_id=str(auditor.id))
    actions = [i["action"] for i in mine]
    assert "audit.subject" in actions
    lookup = next(i for i in mine if i["action"] == "audit.subject")
    assert lookup["record_ids"] == [str(record)]
    assert lookup["role"] == "auditor"
    assert lookup["purpose"] == "audit"
    assert lookup["purpose_detail"] == "quarterly review"
    assert lookup["request_id"]
    r = await api.get(f"/v1/audit/reports/subject/{record}", headers=audit_headers(auditor))
    assert [i["action"] for i in r.json()["items"]][-1] == "audit.subject"


# --- breach impact ----------------------------------------------------------------------------------
async def test_breach_impact_lists_exactly_the_records_returned(api, auditor, access_log):
    scraper, colleague = uuid.uuid4(), uuid.uuid4()
    await access_log.append(event(scraper, uuid.uuid4()))  # before the window
    await asyncio.sleep(0.01)
    since = datetime.datetime.now(datetime.UTC)
    read = [uuid.uuid4() for _ in range(40)]
    searched = [uuid.uuid4() for _ in range(12)]
    refused = [uuid.uuid4() for _ in range(5)]
    full = ("birth_name", "first_names", "nir", "addresses[].city")
    summary = ("birth_name", "first_names", "birth_date")
    for record in read:
        await access_log.append(event(scraper, record, fields=full))
    await access_log.append(event(scraper, read[3], fields=full))  # read twice
    await access_log.append(
        event(scraper, *searched, action="record.search", fields=summary, criteria=("birth_name",))
    )
    await access_log.append(event(scraper, *read[:10], action="caseload.list", fields=summary))
    for record in refused:
        await access_log.append(
            event(scraper, record, outcome="refused", refusal_code="not_found", fields=())
        )
    await access_log.append(event(colleague, uuid.uuid4()))  # someone else
    await asyncio.sleep(0.01)
    until = datetime.datetime.now(datetime.UTC)
    await asyncio.sleep(0.01)
    await access_log.append(event(scraper, uuid.uuid4()))  # after the window

    window = {"actor_id": str(scraper), "since": since.isoformat(), "until": until.isoformat()}
    r = await api.get(
        "/v1/audit/reports/breach-impact", params=window, headers=audit_headers(auditor)
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["entries"] == 40 + 1 + 1 + 1 + 5
    assert report["refused"] == 5
    assert report["complete"] is True
    expected = {str(x) for x in read + searched}
    records = await pages(api, auditor, "/v1/audit/reports/breach-impact", **window, limit="7")
    assert len(records) == len(expected)
    assert {x["record_id"] for x in records} == expected
    by_id = {x["record_id"]: x for x in records}
    assert by_id[str(read[3])]["accesses"] == 3  # two reads and the caseload page
    assert by_id[str(read[3])]["actions"] == ["caseload.list", "record.read"]
    assert by_id[str(read[3])]["fields"] == sorted(set(full) | set(summary))
    assert by_id[str(read[20])]["fields"] == sorted(full)
    assert by_id[str(searched[0])]["fields"] == sorted(summary)

    r = await api.get(
        "/v1/audit/reports/breach-impact",
        params={**window, "format": "csv"},
        headers=audit_headers(auditor),
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["record_id"] for row in rows} == expected
    assert len(rows) == len(expected)
    assert next(row for row in rows if row["record_id"] == str(read[3]))["accesses"] == "3"


# --- checkpoints, proofs, bundles, offline verification ----------------------------------------------
async def test_downloads_verify_offline(api, auditor, access_log, publisher, tmp_path: Path):
    await access_log.append_many([event() for _ in range(20)])
    await publisher.publish_once()
    headers = audit_headers(auditor)

    async def download(name: str, path: str, **params: str) -> Path:
        r = await api.get(path, params=params, headers=headers)
        assert r.status_code == 200, r.text
        target = tmp_path / name
        target.write_bytes(r.content)
        return target

    keys = await download("keys.json", "/v1/audit/keys")
    first = await download("c1.txt", "/v1/audit/checkpoint")
    size1 = int(first.read_text().split("\n")[1])
    state = tmp_path / "state.json"
    tail = await download("tail.json", "/v1/audit/bundles", start=str(max(0, size1 - 15)))
    inclusion = await download("i.json", "/v1/audit/proofs/inclusion", index=str(size1 - 1))
    args = ["--keys", str(keys), "--state", str(state)]
    assert (
        verify.main(
            [
                *args,
                "--checkpoint",
                str(first),
                "--bundle",
                str(tail),
                "--inclusion",
                str(inclusion),
            ]
        )
        == 0
    )

    await access_log.append_many([event() for _ in range(30)])
    await publisher.publish_once()
    second = await download("c2.txt", "/v1/audit/checkpoint")
    size2 = int(second.read_text().split("\n")[1])
    assert size2 > size1
    consistency = await download(
        "k.json", "/v1/audit/proofs/consistency", **{"from": str(size1), "to": str(size2)}
    )
    middle = await download(
        "mid.json", "/v1/audit/bundles", start=str(size1 - 3), end=str(size1 + 3)
    )
    old = await download("c1-again.txt", "/v1/audit/checkpoint", size=str(size1))
    assert old.read_text() == first.read_text()
    assert (
        verify.main(
            [
                *args,
                "--checkpoint",
                str(second),
                "--consistency",
                str(consistency),
                "--bundle",
                str(middle),
            ]
        )
        == 0
    )


# --- fail closed -----------------------------------------------------------------------------------------
async def test_no_answer_without_a_durable_entry(api, auditor, stack: Stack, access_log) -> None:
    await access_log.append(event())
    blocker = await asyncpg.connect(stack.dsn(None))
    try:
        async with blocker.transaction():
            # Requests' entries go to the pending queue: block it, and no entry can be
            # made durable.
            await blocker.execute("LOCK TABLE audit_pending IN ACCESS EXCLUSIVE MODE")
            r = await api.get(
                "/v1/audit/events", params={"limit": "5"}, headers=audit_headers(auditor)
            )
    finally:
        await blocker.close()
    assert r.status_code == 503
    problem = r.json()
    assert problem["code"] == "audit_unavailable"
    assert "items" not in problem
    assert r.headers["retry-after"] == "5"
    r = await api.get("/v1/audit/events", params={"limit": "5"}, headers=audit_headers(auditor))
    assert r.status_code == 200


async def test_a_reports_entries_come_with_their_inclusion_proofs(
    api, auditor, access_log, publisher, tmp_path: Path
):
    """Issue 10: one file holds the inclusion proof of every entry of a breach-impact
    window in the latest checkpoint; `audit verify` checks them offline, and a body
    changed in that file is reported."""
    scraper = uuid.uuid4()
    since = datetime.datetime.now(datetime.UTC)
    await access_log.append_many([event(scraper, uuid.uuid4()) for _ in range(12)])
    await access_log.append_many([event() for _ in range(5)])  # someone else's
    until = datetime.datetime.now(datetime.UTC)
    await publisher.publish_once()
    headers = audit_headers(auditor)
    window = {"actor_id": str(scraper), "since": since.isoformat(), "until": until.isoformat()}
    r = await api.get("/v1/audit/reports/breach-impact/proofs", params=window, headers=headers)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert len(bundle["entries"]) == 12
    (tmp_path / "c.txt").write_text(bundle["checkpoint"])
    (tmp_path / "p.json").write_bytes(r.content)
    keys = await api.get("/v1/audit/keys", headers=headers)
    (tmp_path / "keys.json").write_bytes(keys.content)
    args = ["--keys", str(tmp_path / "keys.json"), "--checkpoint", str(tmp_path / "c.txt")]
    assert verify.main([*args, "--report-proofs", str(tmp_path / "p.json")]) == 0
    # The same file with one body changed (another youth named): reported.
    entry = bundle["entries"][4]
    entry["body"]["record_ids"] = [str(uuid.uuid4())]
    (tmp_path / "forged.json").write_text(json.dumps(bundle))
    assert verify.main([*args, "--report-proofs", str(tmp_path / "forged.json")]) == 1
    # A window without parameters is refused with a stable code.
    r = await api.get("/v1/audit/reports/breach-impact/proofs", headers=headers)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter")
