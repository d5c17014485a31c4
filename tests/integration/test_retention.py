"""Retention by the decree, legal holds and crypto-shredding, as operators run them:
the CLI in its own process on two admins' own logins, records made and read through
the API, the access log read back."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from typing import Any

import asyncpg
import pytest

from tests.conftest import Account, Stack, World, load_fixture
from tests.integration.test_cli import _admin_env, _cli, _env
from vault_service.errors import DecryptionFailed
from vault_service.records.retention import RecordAdmin, RetentionRule

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))
MINIMAL = json.loads(load_fixture("minimal_record.json"))

ROW: str = (
    "SELECT id, structure_id, referent_id, branch_key_version, record_key, key_version, "
    "sealed, clear::text AS clear, version, retain_until FROM records WHERE id = $1"
)


def _past_due(email: str, **extra: Any) -> dict[str, Any]:
    """Born in 1990: past the 26th birthday, no programme running beyond it."""
    return {
        **MINIMAL,
        "birth_date": "1990-05-17",
        "email": email,
        "programme_kind": "CEJ",
        "pathway_status": "ended",
        **extra,
    }


async def _create(client, account: Account, body: dict[str, Any]) -> uuid.UUID:
    r = await client.post("/v1/records", json=body, headers=account.headers())
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


def _ok(done) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def _search(client, account: Account, **criteria: str) -> list[str]:
    r = await client.get("/v1/records", params=criteria, headers=account.headers())
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


async def _log(owner: asyncpg.Connection, prefix: str) -> list[dict[str, Any]]:
    """Integrated entries whose action starts with `prefix`."""
    for _ in range(100):
        if not await owner.fetchval("SELECT count(*) FROM audit_pending"):
            break
        await asyncio.sleep(0.05)
    rows = await owner.fetch(
        "SELECT body FROM audit_bodies WHERE body ->> 'action' LIKE $1 ORDER BY idx", prefix + "%"
    )
    return [json.loads(r["body"]) for r in rows]


def test_the_rule_rounds_up_and_follows_the_programme() -> None:
    rule = RetentionRule()
    assert rule.retain_until({"birth_date": "2000-03-14"}) == datetime.date(2026, 4, 1)
    assert rule.retain_until({"birth_date": "2000-03-01"}) == datetime.date(2026, 3, 1)
    assert rule.retain_until({"birth_date": "2004-02-29"}) == datetime.date(2030, 3, 1)
    later = {"birth_date": "2000-03-14", "programme": {"end_date": "2026-11-20"}}
    assert rule.retain_until(later) == datetime.date(2026, 12, 1)
    earlier = {"birth_date": "2000-03-14", "programme": {"end_date": "2025-01-01"}}
    assert rule.retain_until(earlier) == datetime.date(2026, 4, 1)
    assert RetentionRule(26, programme_end=False).retain_until(later) == datetime.date(2026, 4, 1)
    assert RetentionRule(25).retain_until({"birth_date": "2000-03-14"}) == datetime.date(2025, 4, 1)
    assert rule.retain_until({}) is None


async def test_retention_anonymises_what_is_due_and_spares_what_is_held(
    client, stack: Stack, world: World
) -> None:
    c = await world.counsellor()
    tag = uuid.uuid4().hex[:8]
    old = await _create(client, c, _past_due(f"old.{tag}@example.org"))
    held = await _create(client, c, _past_due(f"held.{tag}@example.org"))
    young = await _create(client, c, {**MINIMAL, "email": f"young.{tag}@example.org"})
    # Past 26, but the programme running then ends later: still readable.
    running = await _create(
        client,
        c,
        _past_due(
            f"running.{tag}@example.org",
            birth_date="2000-01-10",
            programme={"start_date": "2025-06-01", "end_date": "2099-06-30"},
        ),
    )
    # The day is kept on write, rounded up to a month, and moves with a patch.
    assert await world.owner.fetchval(
        "SELECT retain_until FROM records WHERE id = $1", old
    ) == datetime.date(2016, 6, 1)
    assert await world.owner.fetchval(
        "SELECT retain_until FROM records WHERE id = $1", running
    ) == datetime.date(2099, 7, 1)
    r = await client.patch(
        f"/v1/records/{young}",
        json={"birth_date": "2006-11-20"},
        headers=c.headers(**{"If-Match": '"1"'}),
    )
    assert r.status_code == 200, r.text
    assert await world.owner.fetchval(
        "SELECT retain_until FROM records WHERE id = $1", young
    ) == datetime.date(2032, 12, 1)

    a, b = await _admin_env(stack, world), await _admin_env(stack, world)
    requested = _ok(_cli(a, "records", "hold", str(held), "--reason", "litigation"))
    own = _cli(a, "records", "approve", requested["request_id"])
    assert own.returncode == 1
    assert "four_eyes_required" in own.stderr
    free_text = _cli(a, "records", "hold", str(held), "--reason", "Mr Martin's lawyer")
    assert free_text.returncode == 2
    _ok(_cli(b, "records", "approve", requested["request_id"]))

    before = await world.owner.fetchval("SELECT count(*) FROM records")
    dry = _ok(_cli(a, "retention", "run", "--dry-run", "--json"))
    assert dry["dry_run"] is True
    assert dry["due"] >= 1 and dry["held"] >= 1
    assert dry["anonymised"] == 0 and dry["purged"] == 0
    assert await world.owner.fetchval("SELECT count(*) FROM records") == before
    assert (await client.get(f"/v1/records/{old}", headers=c.headers())).status_code == 200

    run = _ok(_cli(a, "retention", "run", "--json"))
    anonymised = set(run["anonymised_ids"])
    assert str(old) in anonymised
    assert not anonymised & {str(held), str(young), str(running)}
    assert run["held"] >= 1

    # Unreadable and unfindable; its codes for statistics stay, nothing else.
    r = await client.get(f"/v1/records/{old}", headers=c.headers())
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert await _search(client, c, email=f"old.{tag}@example.org") == []
    assert await _search(client, c, birth_name="Martin") == sorted(
        str(i) for i in (held, young, running)
    )
    kept = await world.owner.fetchrow(
        "SELECT structure_id, clear::text AS clear, cause, created_at FROM anonymised_records"
        " WHERE id = $1",
        old,
    )
    assert kept is not None
    made = kept["created_at"]  # the month only
    assert (made.minute, made.second, made.microsecond) == (0, 0, 0)
    assert json.loads(kept["clear"]) == {"programme_kind": "CEJ", "pathway_status": "ended"}
    assert (kept["structure_id"], kept["cause"]) == (c.structure_id, "retention")
    for table in ("records WHERE id", "record_index WHERE record_id"):
        assert not await world.owner.fetchval(f"SELECT count(*) FROM {table} = $1", old)  # noqa: S608
    r = await client.get(f"/v1/records/{held}", headers=c.headers())
    assert r.status_code == 200

    # The log shows both decisions: the hold, four-eyes, and the anonymisation.
    holds = [e for e in await _log(world.owner, "records.hold.") if e["record_ids"] == [str(held)]]
    assert [e["action"] for e in holds] == ["records.hold.requested", "records.hold.approved"]
    assert holds[0]["actor_id"] != holds[1]["actor_id"]
    anonymisations = await _log(world.owner, "records.retention.anonymised")
    logged = {i for e in anonymisations for i in e["record_ids"]}
    assert str(old) in logged and str(held) not in logged
    assert any(e["structure_id"] == str(c.structure_id) for e in anonymisations)

    # Idempotent: nothing more is due.
    again = _ok(_cli(a, "retention", "run"))
    assert again["anonymised_ids"] == []

    # Released (four-eyes), the held record goes at the next run.
    release = _ok(_cli(b, "records", "release", str(held)))
    _ok(_cli(a, "records", "approve", release["request_id"]))
    assert str(held) in _ok(_cli(a, "retention", "run"))["anonymised_ids"]

    # Purged after the configured period (here: at once).
    purge = _env(
        stack,
        VAULT_SERVICE_ADMIN_DATABASE_URL=a["VAULT_SERVICE_ADMIN_DATABASE_URL"],
        VAULT_SERVICE_RETENTION_PURGE_AFTER_DAYS="0",
    )
    purged = set(_ok(_cli(purge, "retention", "run"))["purged_ids"])
    assert {str(old), str(held)} <= purged
    assert not await world.owner.fetchval(
        "SELECT count(*) FROM anonymised_records WHERE id = ANY($1::uuid[])", [old, held]
    )
    logged = {
        i for e in await _log(world.owner, "records.retention.purged") for i in e["record_ids"]
    }
    assert {str(old), str(held)} <= logged


async def test_records_written_before_are_dated_once_by_the_run(
    client, stack: Stack, world: World
) -> None:
    c = await world.counsellor()
    tag = uuid.uuid4().hex[:8]
    undated = await _create(client, c, _past_due(f"undated.{tag}@example.org"))
    later = await _create(client, c, {**MINIMAL, "email": f"later.{tag}@example.org"})
    # As if written before the service kept the day.
    await world.owner.execute(
        "UPDATE records SET retain_until = NULL WHERE id = ANY($1::uuid[])", [undated, later]
    )
    a = await _admin_env(stack, world)
    assert _ok(_cli(a, "retention", "run", "--dry-run"))["undated"] >= 2
    assert (
        await world.owner.fetchval(
            "SELECT count(*) FROM records WHERE retain_until IS NULL AND id = ANY($1::uuid[])",
            [undated, later],
        )
        == 2
    )
    run = _ok(_cli(a, "retention", "run"))
    assert run["dated"] >= 2 and run["undated"] == 0
    assert str(undated) in run["anonymised_ids"]
    assert await world.owner.fetchval(
        "SELECT retain_until FROM records WHERE id = $1", later
    ) == datetime.date(2032, 12, 1)
    dated = {i for e in await _log(world.owner, "records.retention.dated") for i in e["record_ids"]}
    assert {str(undated), str(later)} <= dated


async def test_erasure_shreds_the_record_key_and_its_indexes(
    app, client, stack: Stack, world: World
) -> None:
    c = await world.counsellor()
    email = f"erase.{uuid.uuid4().hex[:8]}@example.org"
    rid = await _create(client, c, {**FULL, "email": email})
    sealer = app.state.records.sealer
    copy = await world.owner.fetchrow(ROW, rid)  # a dump taken before the erasure
    assert sealer.full(copy, await sealer.record_key(copy))["email"] is not None

    a, b = await _admin_env(stack, world), await _admin_env(stack, world)
    requested = _ok(_cli(a, "records", "erase", str(rid)))
    own = _cli(a, "records", "approve", requested["request_id"])
    assert own.returncode == 1 and "four_eyes_required" in own.stderr
    assert (await client.get(f"/v1/records/{rid}", headers=c.headers())).status_code == 200
    done = _ok(_cli(b, "records", "approve", requested["request_id"]))
    assert (done["kind"], done["record_id"]) == ("erase", str(rid))

    # The running service (the very process that read it above) answers 404 and
    # finds nothing by the youth's e-mail or name.
    r = await client.get(f"/v1/records/{rid}", headers=c.headers())
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert await _search(client, c, email=email) == []
    assert await _search(client, c, birth_name=FULL["birth_name"]) == []
    assert not await world.owner.fetchval(
        "SELECT count(*) FROM record_index WHERE record_id = $1", rid
    )

    # The live keys of that record are gone: the live database holds no record key
    # for it, and the copied ciphertexts do not open under any record key it does hold.
    assert await world.owner.fetchrow(ROW, rid) is None
    other = await _create(client, c, {**FULL, "email": "other." + email})
    live = await world.owner.fetchrow(ROW, other)
    with pytest.raises(DecryptionFailed):
        sealer.open_fields(copy, await sealer.record_key(live))
    grafted = {**dict(live), "sealed": copy["sealed"]}
    with pytest.raises(DecryptionFailed):
        sealer.open_fields(grafted, await sealer.record_key(live))
    # What erasure does not reach (docs/admin.md): the copy's own wrapped record key still
    # opens under the live branch key, until that branch key version is destroyed.
    assert sealer.full(copy, await sealer.record_key(copy))["email"] is not None

    kept = await world.owner.fetchrow("SELECT cause FROM anonymised_records WHERE id = $1", rid)
    assert kept is not None and kept["cause"] == "erasure"
    entries = [
        e for e in await _log(world.owner, "records.erase.") if e["record_ids"] == [str(rid)]
    ]
    assert [e["action"] for e in entries] == ["records.erase.requested", "records.erase.approved"]


async def test_a_held_record_cannot_be_erased(client, stack: Stack, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, {**MINIMAL, "email": f"h.{uuid.uuid4().hex[:8]}@example.org"})
    a, b = await _admin_env(stack, world), await _admin_env(stack, world)
    erase = _ok(_cli(a, "records", "erase", str(rid)))
    hold = _ok(_cli(a, "records", "hold", str(rid), "--reason", "judicial_requisition"))
    _ok(_cli(b, "records", "approve", hold["request_id"]))
    refused = _cli(b, "records", "approve", erase["request_id"])
    assert refused.returncode == 1 and "record_under_legal_hold" in refused.stderr
    again = _cli(a, "records", "erase", str(rid))
    assert again.returncode == 1 and "record_under_legal_hold" in again.stderr
    assert (await client.get(f"/v1/records/{rid}", headers=c.headers())).status_code == 200
    pending = _ok(_cli(a, "records", "requests"))
    assert [p["id"] for p in pending if p["record_id"] == str(rid)] == [erase["request_id"]]
    _ok(_cli(b, "records", "refuse", erase["request_id"]))
    pending = _ok(_cli(a, "records", "requests"))
    assert [p for p in pending if p["record_id"] == str(rid)] == []
    refusals = [
        e for e in await _log(world.owner, "records.erase.") if e["record_ids"] == [str(rid)]
    ]
    assert [e["action"] for e in refusals] == ["records.erase.requested", "records.erase.refused"]


async def test_one_run_at_a_time(client, stack: Stack, world: World) -> None:
    c = await world.counsellor()
    rid = await _create(client, c, _past_due(f"lock.{uuid.uuid4().hex[:8]}@example.org"))
    a = await _admin_env(stack, world)
    other = await asyncpg.connect(stack.dsn("vault_service_owner"))
    try:
        # Another run (any machine) holds the lock: this one does nothing.
        assert await other.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended('vault-service/retention', 0))"
        )
        skipped = _ok(_cli(a, "retention", "run"))
        assert skipped["locked_out"] is True and skipped["anonymised_ids"] == []
        assert (await client.get(f"/v1/records/{rid}", headers=c.headers())).status_code == 200
    finally:
        await other.close()
    assert str(rid) in _ok(_cli(a, "retention", "run"))["anonymised_ids"]


async def test_a_failure_mid_erase_leaves_the_record_whole(
    client, stack: Stack, world: World
) -> None:
    c = await world.counsellor()
    email = f"mid.{uuid.uuid4().hex[:8]}@example.org"
    rid = await _create(client, c, {**FULL, "email": email})
    a, b = await _admin_env(stack, world), await _admin_env(stack, world)
    requested = _ok(_cli(a, "records", "erase", str(rid)))
    before = await world.owner.fetchrow(ROW, rid)
    entries = len(await _log(world.owner, "records.erase.approved"))
    # Another transaction holds the record's index rows: the erasure, half done (its
    # codes copied, its request decided), fails on them and must undo everything.
    blocker = await asyncpg.connect(stack.dsn("vault_service_owner"))
    pool = await asyncpg.create_pool(
        b["VAULT_SERVICE_ADMIN_DATABASE_URL"],
        min_size=1,
        max_size=1,
        server_settings={"lock_timeout": "300ms"},
    )
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM record_index WHERE record_id = $1 FOR UPDATE", rid)
            with pytest.raises(asyncpg.LockNotAvailableError):
                await RecordAdmin(pool).decide(uuid.UUID(requested["request_id"]), approve=True)
    finally:
        await pool.close()
        await blocker.close()
    assert await world.owner.fetchrow(ROW, rid) == before
    assert await world.owner.fetchval("SELECT count(*) FROM record_index WHERE record_id = $1", rid)
    assert not await world.owner.fetchval(
        "SELECT count(*) FROM anonymised_records WHERE id = $1", rid
    )
    r = await client.get(f"/v1/records/{rid}", headers=c.headers())
    assert r.status_code == 200 and r.json()["record"]["email"] == email
    assert await _search(client, c, email=email) == [str(rid)]
    assert len(await _log(world.owner, "records.erase.approved")) == entries
    # Still pending: the second admin tries again, and it goes through.
    _ok(_cli(b, "records", "approve", requested["request_id"]))
    assert (await client.get(f"/v1/records/{rid}", headers=c.headers())).status_code == 404


async def test_the_service_role_cannot_hold_release_or_erase(stack: Stack) -> None:
    service = await asyncpg.connect(stack.dsn())
    try:
        for sql in (
            "SELECT vs_request_record_act(gen_random_uuid(), 'erase', gen_random_uuid(), "
            "'data_subject_request')",
            "SELECT vs_decide_record_request(gen_random_uuid(), true)",
            "SELECT vs_retention_anonymise(10)",
            "SELECT vs_shred_record(gen_random_uuid(), 'erasure')",
            "DELETE FROM legal_holds",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await service.execute(sql)
    finally:
        await service.close()
