"""Identity and authorization (issue 3): four-eyes, suspension on every replica,
transfers, break-the-glass, and the route x role matrix."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

from tests.conftest import Stack, World, load_fixture
from vault_service.auth.admin import AccountAdmin, ActorNotAdmin, SelfApproval
from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack

pytestmark = pytest.mark.integration
MINIMAL = json.loads(load_fixture("minimal_record.json"))
FULL = json.loads(load_fixture("full_record.json"))


async def _create(client, account, body=MINIMAL) -> str:
    r = await client.post("/v1/records", json=body, headers=account.headers())
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _caseload_status(client, account) -> tuple[int, str]:
    r = await client.get("/v1/caseload", headers=account.headers())
    return r.status_code, r.json().get("code", "") if r.status_code >= 400 else ""


@dataclass
class Admins:
    a: AccountAdmin
    b: AccountAdmin
    a_id: uuid.UUID
    b_id: uuid.UUID


@pytest.fixture
async def admins(stack: Stack, world: World):
    """Two admins, each acting through their own database login (as the CLI does)."""
    import asyncpg

    pools, ids = [], []
    for _ in range(2):
        login = f"vs_admin_{uuid.uuid4().hex[:10]}"
        await devstack.create_admin_login(stack.admin_dsn, login)
        account = await world.account(Role.ADMIN, None)
        await world.owner.execute(
            "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2)", login, account.id
        )
        pools.append(await asyncpg.create_pool(stack.dsn(login), min_size=1, max_size=2))
        ids.append(account.id)
    yield Admins(AccountAdmin(pools[0]), AccountAdmin(pools[1]), ids[0], ids[1])
    for pool in pools:
        await pool.close()


# --- four-eyes -----------------------------------------------------------------------
async def test_four_eyes_account_creation(app, client, world: World, admins: Admins) -> None:
    sid = await world.structure()
    ref = await admins.a.request_create(Role.COUNSELLOR, sid)
    state = await world.owner.fetchval("SELECT state FROM accounts WHERE id = $1", ref.account_id)
    assert state == "pending"
    # A pending account cannot get a token.
    from vault_service.cli.tokens import issue as _issue

    with pytest.raises(Exception, match="active account"):
        await _issue(app.state.settings, ref.account_id, 600)
    # The requester cannot approve their own request: the database knows who is calling.
    with pytest.raises(SelfApproval):
        await admins.a.decide(ref.request_id, approve=True)
    await admins.b.decide(ref.request_id, approve=True)
    row = await world.owner.fetchrow(
        "SELECT state, activated_at FROM accounts WHERE id = $1", ref.account_id
    )
    assert row["state"] == "active"
    assert row["activated_at"] is not None
    history = await world.owner.fetchrow(
        "SELECT requested_by, decided_by, state FROM account_requests WHERE id = $1", ref.request_id
    )
    assert (history["requested_by"], history["decided_by"], history["state"]) == (
        admins.a_id,
        admins.b_id,
        "approved",
    )
    # An admin account that was suspended acts no more, whatever login it uses. (Set
    # here by the owner: suspending an admin is itself four-eyes, test_admin_acts.py.)
    await world.owner.execute("UPDATE accounts SET state = 'suspended' WHERE id = $1", admins.a_id)
    with pytest.raises(ActorNotAdmin):
        await admins.a.request_create(Role.COUNSELLOR, sid)
    # The database itself refuses a self-decided request, whatever the code above does.
    import asyncpg

    with pytest.raises(asyncpg.CheckViolationError):
        await world.owner.execute(
            "UPDATE account_requests SET decided_by = requested_by, state = 'approved' WHERE id = $1",
            ref.request_id,
        )


async def test_admins_get_no_service_token(app, world: World) -> None:
    from vault_service.cli.tokens import issue as _issue

    admin = await world.account(Role.ADMIN, None)
    with pytest.raises(Exception, match="admins get no service token"):
        await _issue(app.state.settings, admin.id, 600)


async def test_application_role_cannot_change_accounts_directly(stack: Stack) -> None:
    import asyncpg

    conn = await asyncpg.connect(stack.dsn("vault_service_app"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE accounts SET state = 'active'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO accounts (id, role, state) VALUES ($1, 'admin', 'active')",
                uuid.uuid4(),
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT vs_bootstrap_admins('a', 'b')")
        # Holding the service's credentials is not being two admins.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "SELECT vs_request_account($1, $2, 'admin', NULL)", uuid.uuid4(), uuid.uuid4()
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT * FROM vs_decide_request($1, true)", uuid.uuid4())
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "SELECT vs_set_account_state($1, 'suspended', $2)", uuid.uuid4(), uuid.uuid4()
            )
    finally:
        await conn.close()


async def test_role_change_and_reactivation_are_four_eyes(
    app, client, world: World, admins: Admins
) -> None:
    sid = await world.structure()
    c = await world.counsellor(sid)
    assert (await _caseload_status(client, c))[0] == 200
    ref = await admins.a.request_change("role_change", c.id, Role.SUPERVISOR, sid)
    assert (await _caseload_status(client, c))[0] == 200  # nothing happens before approval
    await admins.b.decide(ref.request_id, approve=True)
    assert await _caseload_status(client, c) == (401, "token_revoked")
    await admins.a.set_state(c.id, "suspended")
    ref = await admins.a.request_change("reactivate", c.id)
    with pytest.raises(SelfApproval):
        await admins.a.decide(ref.request_id, approve=True)
    await admins.b.decide(ref.request_id, approve=True)
    # Tokens are refused up to the second of the change (iat has one-second resolution:
    # within that second we cannot tell before from after, so we refuse).
    time.sleep(1.05)
    fresh = await app.state.token_issuer.issue(c.id, Role.SUPERVISOR, sid, 600)
    r = await client.get(
        "/v1/caseload", headers={"Authorization": f"Bearer {fresh}", "X-Purpose": "follow_up"}
    )
    assert r.status_code == 200


async def test_a_role_change_ends_the_accounts_live_grants(
    client, world: World, admins: Admins
) -> None:
    sid = await world.structure()
    referent, outsider = await world.counsellor(sid), await world.counsellor(sid)
    rid = await _create(client, referent)
    r = await client.post(
        f"/v1/records/{rid}/break-glass",
        json={"reason": "safety_emergency"},
        headers=outsider.headers(purpose="break_glass"),
    )
    assert r.status_code == 201, r.text
    ref = await admins.a.request_change("role_change", outsider.id, Role.SUPERVISOR, sid)
    live = "SELECT count(*) FROM break_glass_grants WHERE account_id = $1 AND expires_at > now()"
    assert await world.owner.fetchval(live, outsider.id) == 1  # not before approval
    await admins.b.decide(ref.request_id, approve=True)
    assert await world.owner.fetchval(live, outsider.id) == 0
    assert (
        await world.owner.fetchval(
            "SELECT count(*) FROM break_glass_grants WHERE account_id = $1", outsider.id
        )
        == 1
    )  # ended, not erased: its review is still due


async def test_moving_a_referent_to_another_structure_needs_a_transfer_first(
    client, world: World, admins: Admins
) -> None:
    s1, s2 = await world.structure(), await world.structure()
    c = await world.counsellor(s1)
    rid = await _create(client, c)
    ref = await admins.a.request_change("role_change", c.id, Role.COUNSELLOR, s2)
    from vault_service.auth.admin import StillReferent

    with pytest.raises(StillReferent):
        await admins.b.decide(ref.request_id, approve=True)
    # Even if the account were moved behind the service's back, the record stays put.
    await world.owner.execute("UPDATE accounts SET structure_id = $2 WHERE id = $1", c.id, s2)
    moved = await world.app.state.token_issuer.issue(c.id, Role.COUNSELLOR, s2, 600)
    r = await client.get(
        f"/v1/records/{rid}", headers={"Authorization": f"Bearer {moved}", "X-Purpose": "follow_up"}
    )
    assert r.status_code == 404


def _serve(stack: Stack, port: int) -> subprocess.Popen[bytes]:
    env = stack.service_env(port=port, log_level="WARNING")
    return subprocess.Popen(
        [sys.executable, "-m", "vault_service.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _get(port: int, token: str) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/caseload",
        headers={"Authorization": f"Bearer {token}", "X-Purpose": "follow_up"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()).get("code", "")


async def test_suspension_applies_on_the_next_request_on_every_replica(
    stack: Stack, world: World, admins: Admins
) -> None:
    ports = [devstack.free_port(), devstack.free_port()]
    procs = [_serve(stack, p) for p in ports]
    try:
        deadline = time.monotonic() + 30
        c = await world.counsellor()
        for port in ports:
            while True:
                try:
                    if _get(port, c.token)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "replica did not start"
                time.sleep(0.2)
        # Warm both replicas' caches, then suspend and ask at once.
        assert [_get(p, c.token)[0] for p in ports] == [200, 200]
        await admins.a.set_state(c.id, "suspended")
        time.sleep(0.05)  # NOTIFY delivery is asynchronous; well under one request's time
        assert [_get(p, c.token) for p in ports] == [(401, "account_inactive")] * 2
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


# --- transfers -------------------------------------------------------------------------
async def test_definitive_transfer_within_structure(client, world: World) -> None:
    sid = await world.structure()
    old, new = await world.counsellor(sid), await world.counsellor(sid)
    supervisor = await world.account(Role.SUPERVISOR, sid)
    rid = await _create(client, old, FULL)
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(new.id), "kind": "definitive"},
        headers=supervisor.headers(purpose="transfer"),
    )
    assert r.status_code == 200, r.text
    assert (await client.get(f"/v1/records/{rid}", headers=old.headers())).status_code == 404
    got = await client.get(f"/v1/records/{rid}", headers=new.headers())
    assert got.status_code == 200
    assert got.json()["record"] == FULL


async def test_cross_structure_transfer_rewraps_and_reindexes(client, world: World) -> None:
    s1, s2 = await world.structure(), await world.structure()
    old, new = await world.counsellor(s1), await world.counsellor(s2)
    sup1 = await world.account(Role.SUPERVISOR, s1)
    sup2 = await world.account(Role.SUPERVISOR, s2)
    body = {**FULL, "birth_name": "Transféré"}
    rid = await _create(client, old, body)
    before = await world.owner.fetchrow(
        "SELECT record_key, branch_key_version FROM records WHERE id = $1", uuid.UUID(rid)
    )
    # Counsellors and other structures' supervisors cannot transfer.
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(new.id), "kind": "definitive"},
        headers=old.headers(purpose="transfer"),
    )
    assert r.status_code == 403
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(new.id), "kind": "definitive"},
        headers=sup2.headers(purpose="transfer"),
    )
    assert r.status_code == 404
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(new.id), "kind": "definitive"},
        headers=sup1.headers(purpose="transfer"),
    )
    assert r.status_code == 202, r.text
    # Nothing moves until a supervisor of the receiving structure accepts.
    assert (await client.get(f"/v1/records/{rid}", headers=new.headers())).status_code == 404
    r = await client.post(
        f"/v1/transfers/{r.json()['transfer_id']}/accept", headers=sup2.headers(purpose="transfer")
    )
    assert r.status_code == 200, r.text
    after = await world.owner.fetchrow(
        "SELECT record_key, structure_id FROM records WHERE id = $1", uuid.UUID(rid)
    )
    assert after["record_key"] != before["record_key"]
    assert after["structure_id"] == s2
    assert (await client.get(f"/v1/records/{rid}", headers=old.headers())).status_code == 404
    assert (await client.get(f"/v1/records/{rid}", headers=sup1.headers())).status_code == 404
    got = await client.get(f"/v1/records/{rid}", headers=new.headers())
    assert got.json()["record"] == body
    # Structure-scoped indexes now live under the new structure's keys.
    found = await client.get(
        "/v1/records", params={"birth_name": "transfere"}, headers=new.headers()
    )
    assert [i["id"] for i in found.json()["items"]] == [rid]
    nir = await client.post(
        "/v1/records/search/nir", json={"nir": FULL["nir"]}, headers=new.headers()
    )
    assert rid in [i["id"] for i in nir.json()["items"]]
    gone = await client.get(
        "/v1/records", params={"birth_name": "transfere"}, headers=old.headers()
    )
    assert gone.json()["items"] == []


async def test_failed_transfer_leaves_the_record_with_exactly_one_side(
    client, stack: Stack, world: World
) -> None:
    s1, s2 = await world.structure(), await world.structure()  # s2 has no branch key yet
    old, new = await world.counsellor(s1), await world.counsellor(s2)
    sup1 = await world.account(Role.SUPERVISOR, s1)
    sup2 = await world.account(Role.SUPERVISOR, s2)
    rid = await _create(client, old, FULL)
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(new.id), "kind": "definitive"},
        headers=sup1.headers(purpose="transfer"),
    )
    assert r.status_code == 202, r.text
    transfer_id = r.json()["transfer_id"]
    stack.bao.pause()  # the move, at acceptance, needs s2's branch key from Vault
    try:
        r = await client.post(
            f"/v1/transfers/{transfer_id}/accept", headers=sup2.headers(purpose="transfer")
        )
        assert (r.status_code, r.json()["code"]) == (503, "kms_unavailable")
    finally:
        stack.bao.resume()
    state = await world.owner.fetchval(
        "SELECT state FROM transfer_requests WHERE id = $1", uuid.UUID(transfer_id)
    )
    assert state == "pending"  # still there to be accepted once Vault answers
    assert (await client.get(f"/v1/records/{rid}", headers=old.headers())).json()["record"] == FULL
    assert (await client.get(f"/v1/records/{rid}", headers=new.headers())).status_code == 404
    assert (
        await world.owner.fetchval("SELECT structure_id FROM records WHERE id = $1", uuid.UUID(rid))
        == s1
    )


async def test_temporary_transfer_keeps_the_referent(client, world: World) -> None:
    sid = await world.structure()
    ref, helper = await world.counsellor(sid), await world.counsellor(sid)
    sup = await world.account(Role.SUPERVISOR, sid)
    rid = await _create(client, ref)
    until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)).isoformat()
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(helper.id), "kind": "temporary", "until": until},
        headers=sup.headers(purpose="transfer"),
    )
    assert r.status_code == 200, r.text
    assert (await client.get(f"/v1/records/{rid}", headers=ref.headers())).status_code == 200
    assert (await client.get(f"/v1/records/{rid}", headers=helper.headers())).status_code == 200
    caseload = await client.get("/v1/caseload", headers=helper.headers())
    assert rid in [i["id"] for i in caseload.json()["items"]]
    await world.owner.execute(
        "UPDATE record_assignments SET ends_at = now() - interval '1 second', "
        "starts_at = now() - interval '1 day' WHERE record_id = $1",
        uuid.UUID(rid),
    )
    assert (await client.get(f"/v1/records/{rid}", headers=helper.headers())).status_code == 404


# --- break-the-glass -------------------------------------------------------------------------
async def test_break_glass_is_time_boxed_marked_and_reviewed(client, world: World) -> None:
    s1, s2 = await world.structure(), await world.structure()
    referent = await world.counsellor(s1)
    outsider = await world.counsellor(s1)  # same structure, not their caseload
    reviewer = await world.account(Role.SUPERVISOR, s1)
    stranger = await world.counsellor(s2)
    rid = await _create(client, referent, FULL)
    # Another structure's record is not found, exactly like a missing one.
    for target in (rid, str(uuid.uuid4())):
        r = await client.post(
            f"/v1/records/{target}/break-glass",
            json={"reason": "safety_emergency"},
            headers=stranger.headers(purpose="break_glass"),
        )
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert (await client.get(f"/v1/records/{rid}", headers=outsider.headers())).status_code == 404
    r = await client.post(
        f"/v1/records/{rid}/break-glass",
        json={"reason": "safety_emergency"},
        headers=outsider.headers(purpose="break_glass"),
    )
    assert r.status_code == 201, r.text
    grant = r.json()
    # Only reads that say so: a grant does not widen ordinary reads, nor writes.
    assert (await client.get(f"/v1/records/{rid}", headers=outsider.headers())).status_code == 404
    got = await client.get(f"/v1/records/{rid}", headers=outsider.headers(purpose="break_glass"))
    assert got.status_code == 200
    assert got.json()["record"] == FULL
    r = await client.patch(
        f"/v1/records/{rid}",
        json={"email": "x@example.org"},
        headers=outsider.headers(purpose="break_glass", **{"If-Match": '"1"'}),
    )
    assert r.status_code == 404
    queue = await client.get(
        "/v1/break-glass/reviews", headers=reviewer.headers(purpose="supervision")
    )
    assert grant["grant_id"] in [g["id"] for g in queue.json()["items"]]
    r = await client.post(
        f"/v1/break-glass/{grant['grant_id']}/review",
        json={"outcome": "justified"},
        headers=reviewer.headers(purpose="supervision"),
    )
    assert r.status_code == 204
    queue = await client.get(
        "/v1/break-glass/reviews", headers=reviewer.headers(purpose="supervision")
    )
    assert grant["grant_id"] not in [g["id"] for g in queue.json()["items"]]
    # Time-boxed.
    await world.owner.execute(
        "UPDATE break_glass_grants SET opened_at = now() - interval '2 hours', "
        "expires_at = now() - interval '1 hour' WHERE id = $1",
        uuid.UUID(grant["grant_id"]),
    )
    got = await client.get(f"/v1/records/{rid}", headers=outsider.headers(purpose="break_glass"))
    assert got.status_code == 404


async def test_break_glass_refused_to_restricted_accounts_and_limited(
    app, client, world: World, admins: Admins
) -> None:
    sid = await world.structure()
    ref = await admins.a.request_create(Role.COUNSELLOR, sid)
    await admins.b.decide(ref.request_id, approve=True)
    time.sleep(1.05)
    newcomer_token = await app.state.token_issuer.issue(ref.account_id, Role.COUNSELLOR, sid, 600)
    owner_c = await world.counsellor(sid)
    rid = await _create(client, owner_c)
    h = {"Authorization": f"Bearer {newcomer_token}", "X-Purpose": "break_glass"}
    r = await client.post(
        f"/v1/records/{rid}/break-glass", json={"reason": "safety_emergency"}, headers=h
    )
    assert (r.status_code, r.json()["code"]) == (403, "account_restricted")
    veteran = await world.counsellor(sid)
    limit = app.state.settings.records.break_glass_daily_limit
    for _ in range(limit):
        r = await client.post(
            f"/v1/records/{rid}/break-glass",
            json={"reason": "service_continuity"},
            headers=veteran.headers(purpose="break_glass"),
        )
        assert r.status_code == 201
    r = await client.post(
        f"/v1/records/{rid}/break-glass",
        json={"reason": "service_continuity"},
        headers=veteran.headers(purpose="break_glass"),
    )
    assert (r.status_code, r.json()["code"]) == (429, "break_glass_limit")
    r = await client.post(
        f"/v1/records/{rid}/break-glass",
        json={"reason": "curiosity"},
        headers=veteran.headers(purpose="break_glass"),
    )
    assert r.status_code == 400


async def test_transfer_dates_need_a_time_zone(client, world: World) -> None:
    sid = await world.structure()
    ref, helper = await world.counsellor(sid), await world.counsellor(sid)
    sup = await world.account(Role.SUPERVISOR, sid)
    rid = await _create(client, ref)
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(helper.id), "kind": "temporary", "until": "2030-01-01T00:00:00"},
        headers=sup.headers(purpose="transfer"),
    )
    assert (r.status_code, r.json()["code"]) == (400, "invalid_body")
