"""`vault-service keys status` and `keys rotate kek` driven as an operator runs them:
separate processes, the admin's own database login, a key admin's Vault token, real
`vault-service serve` processes serving reads and writes meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import Account, Stack, World, load_fixture, serve_processes
from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack
from vault_service.kms import BRANCH_KEK, VaultKms

pytestmark = pytest.mark.integration

MINIMAL = json.loads(load_fixture("minimal_record.json"))
KEY_ADMIN_POLICY = Path(__file__).resolve().parents[2] / "infra" / "openbao" / "key-admin.hcl"
# Budgets out of the way: these tests count failures of the key hierarchy, not refusals.
UNBUDGETED = {"budget_counsellor_hour": 1_000_000, "budget_counsellor_day": 1_000_000}


@dataclass
class Operator:
    env: dict[str, str]
    actor_id: uuid.UUID


async def _operator(stack: Stack, world: World, **settings: str) -> Operator:
    """An admin's own database login, and a key admin's Vault token (policy key-admin)."""
    login = f"vs_keys_admin_{uuid.uuid4().hex[:8]}"
    await devstack.create_admin_login(stack.admin_dsn, login)
    account = await world.account(Role.ADMIN, None)
    await world.owner.execute(
        "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2)", login, account.id
    )
    root = stack.bao.client()
    root.sys.create_or_update_policy("key-admin", KEY_ADMIN_POLICY.read_text("utf-8"))
    token = root.auth.token.create(policies=["key-admin"], ttl="1h")["auth"]["client_token"]
    env = stack.service_env(**settings)
    env.update(
        VAULT_SERVICE_ADMIN_DATABASE_URL=stack.dsn(login),
        VAULT_TOKEN=token,
        VAULT_ADDR=stack.bao.addr,
    )
    return Operator(env, account.id)


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vault_service.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _transit(stack: Stack) -> dict[str, int]:
    data = stack.bao.client().secrets.transit.read_key(name=BRANCH_KEK)["data"]
    return {
        "latest": int(data["latest_version"]),
        "min_decryption": int(data["min_decryption_version"]),
    }


async def _kek_versions(world: World) -> dict[int, int]:
    # Branch keys and the keys of sealed statistics years: the KEK wraps both.
    rows = await world.owner.fetch(
        "SELECT substr(split_part(wrapped_key, ':', 2), 2)::int AS v, count(*) AS n "
        "FROM (SELECT wrapped_key FROM structure_keys "
        "      UNION ALL SELECT wrapped_key FROM stats_years) k GROUP BY 1"
    )
    return {r["v"]: r["n"] for r in rows}


async def _logged(world: World, actor: uuid.UUID) -> dict[str, int]:
    """Admin entries of one actor in the access log, by action: entry counts summed.
    The integrator (the test app's) moves them from pending into the tree."""
    deadline = time.monotonic() + 20
    while True:
        pending = await world.owner.fetchval(
            "SELECT count(*) FROM audit_pending WHERE body::jsonb ->> 'actor_id' = $1",
            str(actor),
        )
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    rows = await world.owner.fetch(
        "SELECT body ->> 'action' AS action, sum(coalesce((body ->> 'count')::int, 1)) AS n "
        "FROM audit_bodies WHERE body ->> 'actor_id' = $1 GROUP BY 1",
        str(actor),
    )
    return {r["action"]: int(r["n"]) for r in rows}


async def _seed_branch_keys(stack: Stack, world: World, n: int) -> None:
    """Structures with a branch key each, as the service makes them (transit datakey)."""
    kms = VaultKms(stack.settings().vault)
    try:
        for _ in range(n):
            sid = await world.structure()
            await world.owner.execute(
                "INSERT INTO structure_keys (structure_id, version, wrapped_key) "
                "VALUES ($1, 1, $2)",
                sid,
                await kms.generate_wrapped_key(),
            )
    finally:
        kms.close()


@dataclass
class Load:
    reads: int = 0
    failed_reads: list[int] = field(default_factory=list)
    failed_writes: list[int] = field(default_factory=list)
    created: dict[uuid.UUID, list[str]] = field(default_factory=dict)
    # The e-mail each record was last given by an accepted PATCH.
    emails: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def _traffic(
    http: httpx.AsyncClient, bases: list[str], people: list[tuple[Account, list[str]]]
) -> AsyncIterator[Load]:
    """Each counsellor reads their records and creates new ones, through both
    processes, until the block ends."""
    load = Load()
    stop = asyncio.Event()

    async def one(who: Account, ids: list[str]) -> None:
        mine = load.created.setdefault(who.id, [])
        i = 0
        while not stop.is_set():
            base = bases[i % len(bases)]
            r = await http.get(f"{base}/v1/records/{ids[i % len(ids)]}", headers=who.headers())
            load.reads += 1
            if r.status_code != 200:
                load.failed_reads.append(r.status_code)
            elif i % 4 == 2:
                rid, email = ids[i % len(ids)], f"n{i}.{who.id.hex[:6]}@example.org"
                p = await http.patch(
                    f"{base}/v1/records/{rid}",
                    json={"email": email},
                    headers=who.headers(**{"If-Match": r.headers["etag"]}),
                )
                if p.status_code == 200:
                    load.emails[rid] = email
                else:
                    load.failed_writes.append(p.status_code)
            if i % 4 == 0:
                w = await http.post(f"{base}/v1/records", json=MINIMAL, headers=who.headers())
                if w.status_code == 201:
                    mine.append(w.json()["id"])
                else:
                    load.failed_writes.append(w.status_code)
            i += 1

    tasks = [asyncio.create_task(one(who, ids)) for who, ids in people]
    try:
        yield load
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _people(
    http: httpx.AsyncClient, bases: list[str], world: World, n: int
) -> list[tuple[Account, list[str]]]:
    people = []
    for _ in range(n):
        who = await world.counsellor()
        ids = []
        for i in range(6):
            r = await http.post(f"{bases[i % 2]}/v1/records", json=MINIMAL, headers=who.headers())
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        people.append((who, ids))
    return people


async def test_keys_status_json(stack: Stack, world: World) -> None:
    op = await _operator(stack, world, rotation_branch_days="30")
    async with serve_processes(stack, 1, **UNBUDGETED) as served:
        ((who, ids),) = await _people(served.http, served.bases * 2, world, 1)
    # One structure whose branch key is past the policy's age.
    await world.owner.execute(
        "UPDATE structure_keys SET created_at = now() - interval '40 days' WHERE structure_id = $1",
        who.structure_id,
    )
    code, out, err = await _cli(op.env, "keys", "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert set(status) == {"generated_at", "policy", "transit_keys", "branch_keys", "due"}
    assert status["policy"] == {
        "kek_days": 365,
        "branch_days": 30,
        "token_key_days": 90,
        "checkpoint_key_days": 365,
        "index_key_days": 0,
    }
    by_name = {k["name"]: k for k in status["transit_keys"]}
    assert set(by_name) == {
        "vault-service-branch-kek",
        "vault-service-index",
        "vault-service-national-index",
        "vault-service-token",
        "vault-service-checkpoint",
    }
    for k in by_name.values():
        assert set(k) >= {
            "role",
            "type",
            "latest_version",
            "min_decryption_version",
            "min_encryption_version",
            "latest_age_days",
            "rotation_days",
            "versions",
        }
        assert k["versions"][-1]["version"] == k["latest_version"]
        assert set(k["versions"][0]) == {"version", "created_at", "age_days", "enabled"}
    kek = by_name["vault-service-branch-kek"]
    assert sum(kek["branch_keys_by_version"].values()) == len(status["branch_keys"])
    mine = next(b for b in status["branch_keys"] if b["structure_id"] == str(who.structure_id))
    assert mine["active_version"] == 1
    assert mine["active_age_days"] >= 39
    assert mine["versions"] == [
        {
            "version": 1,
            "created_at": mine["versions"][0]["created_at"],
            "age_days": mine["active_age_days"],
            "kek_version": kek["latest_version"],
            "records": len(ids),
        }
    ]
    assert {
        "action": "rotate",
        "kind": "branch",
        "structure_id": str(who.structure_id),
        "reason": "age",
    } in status["due"]
    # A KEK rotated in Vault by hand leaves every branch key behind: a rewrap is due.
    stack.bao.client().secrets.transit.rotate_key(name=BRANCH_KEK)
    code, out, err = await _cli(op.env, "keys", "status", "--json")
    assert code == 0, err
    due = [d for d in json.loads(out)["due"] if d["kind"] == "kek"]
    assert due and due[0]["action"] == "rewrap" and due[0]["count"] >= 1
    code, out, err = await _cli(op.env, "keys", "status")
    assert code == 0, err
    assert "rewrap kek vault-service-branch-kek" in out
    # Bring the store back to a clean state for the rotations that follow.
    # A run that finds work left over finishes it (the rewrap, then the retirement
    # asked for) rather than rotating again.
    code, out, err = await _cli(op.env, "keys", "rotate", "kek", "--retire", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["rotated"] is False and report["retired"] is True
    assert report["rewrapped"] == report["to_rewrap"] >= 1
    assert _transit(stack)["min_decryption"] == _transit(stack)["latest"]


async def test_rotate_kek_with_retire_under_load(stack: Stack, world: World) -> None:
    op = await _operator(stack, world)
    before = _transit(stack)
    async with serve_processes(stack, 2, **UNBUDGETED) as served:
        people = await _people(served.http, served.bases, world, 3)
        async with _traffic(served.http, served.bases, people) as load:
            await asyncio.sleep(0.5)
            code, out, err = await _cli(
                op.env, "keys", "rotate", "kek", "--retire", "--json", "--batch-size", "1"
            )
            await asyncio.sleep(0.5)
    assert code == 0, err
    report = json.loads(out)
    assert report["rotated"] and report["retired"]
    assert report["target_version"] == before["latest"] + 1
    assert report["rewrapped"] == report["to_rewrap"] > 0
    assert report["batches"] == report["rewrapped"]
    assert "rewrap branch keys: " in err  # plain progress lines: stderr is a pipe
    assert load.reads > 0 and load.failed_reads == []
    assert load.failed_writes == []
    after = _transit(stack)
    assert after == {"latest": report["target_version"], "min_decryption": after["latest"]}
    assert set(await _kek_versions(world)) == {after["latest"]}
    # Fresh processes unwrap every branch key with only the new KEK version enabled.
    async with serve_processes(stack, 1, **UNBUDGETED) as served:
        for who, ids in people:
            for rid in ids + load.created[who.id]:
                r = await served.http.get(
                    f"{served.bases[0]}/v1/records/{rid}", headers=who.headers()
                )
                assert r.status_code == 200, (rid, r.status_code)
    assert await _logged(world, op.actor_id) == {
        "key.rotate_kek": 1,
        "key.rewrap_kek": report["rewrapped"],
        "key.retire": 1,
    }


async def test_rotate_kek_killed_half_way_resumes(stack: Stack, world: World) -> None:
    op = await _operator(stack, world)
    await _seed_branch_keys(stack, world, 300)
    total = sum((await _kek_versions(world)).values())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vault_service.cli",
        "keys",
        "rotate",
        "kek",
        "--batch-size",
        "2",
        env=op.env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "the rotation ended before it could be killed"
        if line.startswith("rewrap branch keys: ") and int(line.split()[-1].split("/")[0]) >= 40:
            break
    # Held still (its session and lock alive) while the same rotation is tried
    # elsewhere: refused, with a clear message.
    os.kill(proc.pid, signal.SIGSTOP)
    code, _, err = await _cli(op.env, "keys", "rotate", "kek")
    assert code == 1
    assert "rotation_in_progress" in err and "another `keys rotate kek` is running" in err
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    target = _transit(stack)["latest"]
    versions = await _kek_versions(world)
    done = versions.get(target, 0)
    assert 40 <= done < total
    assert done % 2 == 0  # whole batches only
    code, out, err = await _cli(op.env, "keys", "rotate", "kek", "--dry-run", "--json")
    assert code == 0, err
    planned = json.loads(out)
    assert planned["rotated"] is False and planned["to_rewrap"] == total - done
    assert planned["rewrapped"] == 0
    code, out, err = await _cli(op.env, "keys", "rotate", "kek", "--json", "--batch-size", "50")
    assert code == 0, err
    report = json.loads(out)
    # Resumed, not rotated again; only the rows left were rewrapped.
    assert report["rotated"] is False and report["target_version"] == target
    assert report["rewrapped"] == total - done
    assert await _kek_versions(world) == {target: total}
    logged = await _logged(world, op.actor_id)
    assert logged == {"key.rotate_kek": 1, "key.rewrap_kek": total}
    # Every branch key still unwraps (through the service's own Vault access).
    kms = VaultKms(stack.settings().vault)
    try:
        for row in await world.owner.fetch("SELECT wrapped_key FROM structure_keys"):
            assert len(await kms.unwrap_key(row["wrapped_key"])) == 32
    finally:
        kms.close()


async def test_rotate_kek_needs_the_admin_login_and_a_key_admin(stack: Stack, world: World) -> None:
    op = await _operator(stack, world)
    service_only = dict(op.env, VAULT_SERVICE_ADMIN_DATABASE_URL=stack.dsn())
    code, _, err = await _cli(service_only, "keys", "rotate", "kek")
    assert code == 1  # the service's login cannot log an admin act
    no_token = {k: v for k, v in op.env.items() if k != "VAULT_TOKEN"}
    before = _transit(stack)
    code, _, err = await _cli(no_token, "keys", "rotate", "kek")
    assert code == 1 and "VAULT_TOKEN" in err
    # The service's own token cannot rotate either.
    code, _, err = await _cli(
        dict(op.env, VAULT_TOKEN=stack.service_token), "keys", "rotate", "kek"
    )
    assert code == 1 and "kms_unavailable" in err
    assert _transit(stack) == before


BRANCH_CLI = {"branch_key_ttl_seconds": "1", "db_statement_timeout_ms": "1000"}


async def _branch_versions(world: World, sid: uuid.UUID) -> tuple[list[int], dict[int, int]]:
    keys = [
        r["version"]
        for r in await world.owner.fetch(
            "SELECT version FROM structure_keys WHERE structure_id = $1 ORDER BY version", sid
        )
    ]
    rows = await world.owner.fetch(
        "SELECT branch_key_version AS v, count(*) AS n FROM records WHERE structure_id = $1 "
        "GROUP BY 1",
        sid,
    )
    return keys, {r["v"]: r["n"] for r in rows}


async def _read_all(
    stack: Stack, people: list[tuple[Account, list[str]]], emails: dict[str, str] | None = None
) -> None:
    """Every record, read by a fresh process (nothing cached) through the API, with the
    last e-mail a PATCH gave it."""
    async with serve_processes(stack, 1, **UNBUDGETED) as served:
        for who, ids in people:
            for rid in ids:
                r = await served.http.get(
                    f"{served.bases[0]}/v1/records/{rid}", headers=who.headers()
                )
                assert r.status_code == 200, (rid, r.status_code)
                if emails and rid in emails:
                    assert r.json()["record"]["email"] == emails[rid]


async def test_rotate_branch_under_load(stack: Stack, world: World) -> None:
    op = await _operator(stack, world, **BRANCH_CLI)
    async with serve_processes(stack, 2, branch_key_ttl_seconds=1, **UNBUDGETED) as served:
        people = await _people(served.http, served.bases, world, 3)
        sids = [str(who.structure_id) for who, _ in people]
        async with _traffic(served.http, served.bases, people) as load:
            await asyncio.sleep(0.5)
            code, out, err = await _cli(
                op.env,
                "keys",
                "rotate",
                "branch",
                "--json",
                "--batch-size",
                "2",
                *(a for sid in sids for a in ("--structure", sid)),
            )
            await asyncio.sleep(0.5)
    assert code == 0, err
    report = json.loads(out)
    assert report["rotated"] == 3 and report["destroyed"] == 3
    assert report["rewrapped"] >= report["to_rewrap"] >= 18
    assert "rewrap record keys: " in err
    assert load.reads > 0 and load.failed_reads == []
    assert load.failed_writes == []
    for who, _ in people:
        assert who.structure_id is not None
        keys, records = await _branch_versions(world, who.structure_id)
        # Only the new version is left, and every record, old or written during the
        # rotation, is under it.
        assert keys == [2]
        assert records == {2: 6 + len(load.created[who.id])}
    await _read_all(stack, [(who, ids + load.created[who.id]) for who, ids in people], load.emails)
    logged = await _logged(world, op.actor_id)
    assert logged == {
        "key.rotate_branch": 3,
        "key.rewrap_branch": report["rewrapped"],
        "key.destroy_branch": 3,
    }
    # A rerun finds nothing left over and rotates anew only when asked again: the dry
    # run says so without doing it.
    code, out, err = await _cli(
        op.env, "keys", "rotate", "branch", "--dry-run", "--json", "--structure", sids[0]
    )
    assert code == 0, err
    planned = json.loads(out)
    assert planned["structures"][0]["target_version"] == 3 and planned["rewrapped"] == 0


async def test_rotate_branch_killed_half_way_resumes(stack: Stack, world: World, client) -> None:
    op = await _operator(stack, world, **BRANCH_CLI)
    who = await world.counsellor()
    assert who.structure_id is not None
    ids = []
    for _ in range(240):
        r = await client.post("/v1/records", json=MINIMAL, headers=who.headers())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vault_service.cli",
        "keys",
        "rotate",
        "branch",
        "--structure",
        str(who.structure_id),
        "--batch-size",
        "3",
        env=op.env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "the rotation ended before it could be killed"
        if line.startswith("rewrap record keys: ") and int(line.split()[-1].split("/")[0]) >= 30:
            break
    os.kill(proc.pid, signal.SIGSTOP)
    code, _, err = await _cli(op.env, "keys", "rotate", "branch", "--all")
    assert code == 1 and "another `keys rotate branch` is running" in err
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    keys, records = await _branch_versions(world, who.structure_id)
    assert keys == [1, 2]
    done = records[2]
    assert 30 <= done < 240 and done % 3 == 0 and records[1] == 240 - done
    # --all finishes the structure left half-way and starts nothing new.
    code, out, err = await _cli(op.env, "keys", "rotate", "branch", "--all", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["structure_id"] for s in report["structures"]] == [str(who.structure_id)]
    assert report["rotated"] == 0 and report["rewrapped"] == 240 - done
    assert report["structures"][0]["destroyed_versions"] == [1]
    assert await _branch_versions(world, who.structure_id) == ([2], {2: 240})
    await _read_all(stack, [(who, ids)])
    logged = await _logged(world, op.actor_id)
    assert logged == {"key.rotate_branch": 1, "key.rewrap_branch": 240, "key.destroy_branch": 1}


async def test_rotate_records_under_load(stack: Stack, world: World) -> None:
    op = await _operator(stack, world)
    async with serve_processes(stack, 2, **UNBUDGETED) as served:
        people = await _people(served.http, served.bases, world, 3)
        sids = [str(who.structure_id) for who, _ in people]
        async with _traffic(served.http, served.bases, people) as load:
            await asyncio.sleep(0.5)
            before = {
                str(r["id"]): r["version"]
                for r in await world.owner.fetch(
                    "SELECT id, version FROM records WHERE structure_id = ANY($1::uuid[])",
                    sids,
                )
            }
            code, out, err = await _cli(
                op.env,
                "keys",
                "rotate",
                "records",
                "--json",
                "--batch-size",
                "3",
                *(a for sid in sids for a in ("--structure", sid)),
            )
            await asyncio.sleep(0.5)
    assert code == 0, err
    report = json.loads(out)
    assert report["started"] == 3 and report["resealed"] >= len(before)
    assert "re-seal records: " in err
    assert load.reads > 0 and load.failed_reads == []
    assert load.failed_writes == [] and load.emails
    rows = await world.owner.fetch(
        "SELECT id, key_version FROM records WHERE id = ANY($1::uuid[])", list(before)
    )
    # Every record there when the rotation began is under a new key.
    assert {r["key_version"] for r in rows} == {2}
    await _read_all(stack, [(who, ids + load.created[who.id]) for who, ids in people], load.emails)
    logged = await _logged(world, op.actor_id)
    assert logged == {"key.rotate_records": 3, "key.reseal_records": report["resealed"]}


async def test_rotate_records_killed_half_way_resumes(stack: Stack, world: World, client) -> None:
    # Paced (60 records a second, 4 s for all) so that the kill finds it still running:
    # unpaced, 240 records re-seal faster than the test can read its progress line.
    op = await _operator(stack, world, rotation_records_per_second="60")
    who = await world.counsellor()
    assert who.structure_id is not None
    ids = []
    for _ in range(240):
        r = await client.post("/v1/records", json=MINIMAL, headers=who.headers())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vault_service.cli",
        "keys",
        "rotate",
        "records",
        "--structure",
        str(who.structure_id),
        "--batch-size",
        "3",
        env=op.env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "the rotation ended before it could be killed"
        if line.startswith("re-seal records: ") and int(line.split()[-1].split("/")[0]) >= 30:
            break
    os.kill(proc.pid, signal.SIGSTOP)
    code, _, err = await _cli(op.env, "keys", "rotate", "records", "--all")
    assert code == 1 and "another `keys rotate records` is running" in err
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()

    async def key_versions() -> dict[int, int]:
        rows = await world.owner.fetch(
            "SELECT key_version AS v, count(*) AS n FROM records WHERE structure_id = $1 "
            "GROUP BY 1",
            who.structure_id,
        )
        return {r["v"]: r["n"] for r in rows}

    done = (await key_versions())[2]
    assert 30 <= done < 240 and done % 3 == 0
    code, out, err = await _cli(op.env, "keys", "rotate", "records", "--all", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["structure_id"] for s in report["structures"]] == [str(who.structure_id)]
    assert report["started"] == 0 and report["resealed"] == 240 - done
    assert await key_versions() == {2: 240}
    await _read_all(stack, [(who, ids)])
    logged = await _logged(world, op.actor_id)
    assert logged == {"key.rotate_records": 1, "key.reseal_records": 240}
    # Finished: the next run is a new rotation (the dry run says so, doing nothing).
    code, out, err = await _cli(
        op.env,
        "keys",
        "rotate",
        "records",
        "--dry-run",
        "--json",
        "--structure",
        str(who.structure_id),
    )
    assert code == 0, err
    planned = json.loads(out)["structures"][0]
    assert planned["started"] and planned["target_key_version"] == 3
    assert await key_versions() == {2: 240}


async def test_rotate_the_signing_keys_with_overlap(stack: Stack, world: World, client) -> None:
    """keys rotate token|checkpoint: a new version; the older one keeps verifying, and
    retiring it is refused while it would refuse something still valid."""
    op = await _operator(stack, world)
    c = await world.counsellor()
    transit = stack.bao.client().secrets.transit
    before = transit.read_key(name="vault-service-token")["data"]["latest_version"]
    code, out, err = await _cli(op.env, "keys", "rotate", "token", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["rotated"], report["target_version"]) == (True, before + 1)
    # A token signed by the previous version still authenticates (the overlap).
    r = await client.get("/v1/caseload", headers=c.headers())
    assert r.status_code == 200
    # Retiring now would refuse tokens that may live up to the longest lifetime.
    code, _, err = await _cli(op.env, "keys", "rotate", "token", "--retire")
    assert code == 1 and "retire_refused" in err
    data = transit.read_key(name="vault-service-token")["data"]
    assert data["min_decryption_version"] < data["latest_version"]

    cp_before = transit.read_key(name="vault-service-checkpoint")["data"]["latest_version"]
    code, out, err = await _cli(op.env, "keys", "rotate", "checkpoint", "--json")
    assert code == 0, err
    assert json.loads(out)["target_version"] == cp_before + 1
    signed_by = await world.owner.fetchval(
        "SELECT key_version FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
    )
    code, out, err = await _cli(op.env, "keys", "rotate", "checkpoint", "--retire", "--dry-run")
    if signed_by is not None and signed_by < cp_before + 1:
        assert code == 1 and "retire_refused" in err
    else:
        assert code == 0, err
    # Each rotation is one access-log entry naming the admin.
    for _ in range(100):
        if not await world.owner.fetchval("SELECT count(*) FROM audit_pending"):
            break
        await asyncio.sleep(0.05)
    actions = await world.owner.fetch(
        "SELECT body ->> 'action' AS a FROM audit_bodies WHERE body ->> 'actor_id' = $1",
        str(op.actor_id),
    )
    assert sorted(r["a"] for r in actions) == ["key.rotate_checkpoint", "key.rotate_token"]
