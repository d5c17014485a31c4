"""Mixed load on the stack through Caddy, and the checks that follow a fault.

A `Load` runs one worker per counsellor account (each creates records in its own
caseload and reads them back), counts every answer by status, keeps the id of every
acknowledged write (201) and the request id of every data answer (201, 200), and
`Checker` then proves against the database and the auditor API that nothing was lost:

- every acknowledged write is in `records` and reads back (200) through the proxy;
- every record row (acknowledged or not: a replica killed after the commit never
  answered) reads back whole, has its blind-index rows, and its structure exactly one
  branch key: no partial record, no orphan key;
- every data answer's request id is in the access log (`audit_bodies`);
- `vault-service audit verify` accepts the signed checkpoint and bundles covering the
  whole log: entries numbered 0..size-1, no gap, no duplicate, nothing changed.

The load raises per-counsellor budgets (`LOAD_OVERRIDES`): a handful of accounts does
the work of thousands, and budgets are not what is under test here.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import os
import random
import ssl
import string
import subprocess  # runs our own CLI  # nosec B404
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx

from vault_service.stack import REPLICAS, Stack

LOAD_OVERRIDES: Final = {
    "VAULT_SERVICE_BUDGET_COUNSELLOR_HOUR": "10000000",
    "VAULT_SERVICE_BUDGET_COUNSELLOR_DAY": "10000000",
    "VAULT_SERVICE_BUDGET_STRUCTURE_HOUR": "10000000",
    "VAULT_SERVICE_SUMMARY_BUDGET_COUNSELLOR_HOUR": "10000000",
    "VAULT_SERVICE_NEW_ACCOUNT_RESTRICTION_HOURS": "0",
    "VAULT_SERVICE_ANOMALY_NEW_ACCOUNT_RECORDS_HOUR": "10000000",
    "VAULT_SERVICE_ANOMALY_OFF_HOURS_RECORDS_HOUR": "10000000",
    "VAULT_SERVICE_WORKING_HOURS": "mon-sun 00:00-24:00",
    "VAULT_SERVICE_LOG_LEVEL": "WARNING",
}
PURPOSE: Final = {"X-Purpose": "follow_up"}
AUDIT_PURPOSE: Final = {"X-Purpose": "audit", "X-Purpose-Detail": "stack check"}
NAMES: Final = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand"]


@dataclass
class Accounts:
    structure_id: uuid.UUID
    counsellors: dict[uuid.UUID, str]  # id -> token
    auditor: str


async def owner_connection(stack: Stack) -> asyncpg.Connection:
    """The owner role over TLS verify-full, password from the stack's pgpass file."""
    state = stack.state
    return await asyncpg.connect(
        state.owner_dsn(), passfile=state.owner_env()["PGPASSFILE"], timeout=10
    )


def issue_token(stack: Stack, subject: uuid.UUID, ttl: str = "1h") -> str:
    """`vault-service tokens issue`, with a replica's environment (AppRole, verify-full)."""
    cli = [sys.executable, "-m", "vault_service.cli"]
    out = subprocess.run(  # noqa: S603 - our own CLI  # nosec B603
        [*cli, "tokens", "issue", "--subject", str(subject), "--ttl", ttl],
        env=stack.replica_env(0),
        capture_output=True,
        check=True,
        timeout=60,
    )
    return out.stdout.decode().strip()


async def make_accounts(stack: Stack, counsellors: int) -> Accounts:
    sid = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(counsellors)]
    auditor = uuid.uuid4()
    conn = await owner_connection(stack)
    try:
        await conn.execute(
            "INSERT INTO structures (id, code, name, department) VALUES ($1, $2, 'Stack', '75')",
            sid,
            "STACK-" + uuid.uuid4().hex[:8].upper(),
        )
        for aid in ids:
            await conn.execute(
                "INSERT INTO accounts (id, role, structure_id, state) "
                "VALUES ($1, 'counsellor', $2, 'active')",
                aid,
                sid,
            )
        await conn.execute(
            "INSERT INTO accounts (id, role, structure_id, state) "
            "VALUES ($1, 'auditor', NULL, 'active')",
            auditor,
        )
    finally:
        await conn.close()
    loop = asyncio.get_running_loop()
    tokens = await asyncio.gather(
        *(loop.run_in_executor(None, issue_token, stack, a) for a in [*ids, auditor])
    )
    return Accounts(sid, dict(zip(ids, tokens[:-1], strict=True)), tokens[-1])


def record_body(rng: random.Random) -> dict[str, Any]:
    birth = datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randrange(3650))
    return {
        "birth_name": rng.choice(NAMES) + "".join(rng.choices(string.ascii_lowercase, k=4)),
        "first_names": [rng.choice(["Lucas", "Emma", "Nour", "Léo", "Inès"])],
        "birth_date": birth.isoformat(),
        "sex": rng.choice(["M", "F"]),
    }


def proxy_client(
    stack: Stack, *, timeout: float = 10.0, base: str | None = None
) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(stack.state.proxy_ca))
    return httpx.AsyncClient(
        base_url=base or stack.state.proxy_url,
        verify=context,
        timeout=timeout,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


@dataclass
class Tally:
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    acknowledged: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # record -> owner
    data_request_ids: list[str] = field(default_factory=list)
    requests: int = 0
    transport_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    # (monotonic time the request was sent, status, error code, time its answer came):
    # what a fault test reads its phases from. Caddy may hold a request up to its
    # lb_try_duration (5 s) while no replica is healthy, so a request sent during an
    # outage can be answered after it.
    timeline: list[tuple[float, int, str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies) or [0.0]
        return {
            "requests": self.requests,
            "statuses": dict(self.statuses),
            "error_codes": dict(self.codes),
            "transport_errors": self.transport_errors,
            "acknowledged_writes": len(self.acknowledged),
            "data_answers": len(self.data_request_ids),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 1),
            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1),
        }


class Load:
    """`workers` counsellors in a loop: write_share of the operations create, the rest
    read one of the worker's own records (or its caseload while it has none)."""

    def __init__(
        self,
        stack: Stack,
        accounts: Accounts,
        *,
        write_share: float = 0.3,
        base: str | None = None,
        pause: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.stack, self.accounts = stack, accounts
        self.write_share, self.base, self.pause = write_share, base, pause
        self.rng = random.Random(seed)  # noqa: S311 - load shape, not security  # nosec B311
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.client = proxy_client(stack, base=base)
        self.own: dict[uuid.UUID, list[uuid.UUID]] = {a: [] for a in accounts.counsellors}

    async def __aenter__(self) -> Load:
        for aid, token in self.accounts.counsellors.items():
            self._tasks.append(asyncio.create_task(self._worker(aid, token)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.client.aclose()

    async def _worker(self, aid: uuid.UUID, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}", **PURPOSE}
        mine = self.own[aid]
        while not self._stop.is_set():
            t0 = time.monotonic()
            write = not mine or self.rng.random() < self.write_share
            try:
                if write:
                    r = await self.client.post(
                        "/v1/records", json=record_body(self.rng), headers=headers
                    )
                else:
                    rid = self.rng.choice(mine)
                    r = await self.client.get(f"/v1/records/{rid}", headers=headers)
            except httpx.TransportError:
                self.tally.requests += 1
                self.tally.transport_errors += 1
                self.tally.timeline.append((t0, 0, "transport", time.monotonic()))
                await asyncio.sleep(0.2)
                continue
            self.tally.requests += 1
            self.tally.latencies.append(time.monotonic() - t0)
            op = "create" if write else "read"
            self.tally.statuses[f"{op} {r.status_code}"] += 1
            code = ""
            if r.headers.get("content-type", "").startswith("application/problem+json"):
                code = str(r.json().get("code", ""))
            self.tally.timeline.append((t0, r.status_code, code, time.monotonic()))
            if r.status_code in (200, 201):
                self.tally.data_request_ids.append(r.headers.get("x-request-id", ""))
                if r.status_code == 201:
                    new = uuid.UUID(r.json()["id"])
                    self.tally.acknowledged[new] = aid
                    mine.append(new)
            else:
                self.tally.codes[f"{r.status_code} {code or r.text[:40]!r}"] += 1
                await asyncio.sleep(0.05)
            if self.pause:
                await asyncio.sleep(self.pause)


@dataclass
class Verdict:
    acknowledged: int
    lost: int
    records_in_structure: int
    unreadable: int
    without_index: int
    without_entry: int
    branch_keys: int
    data_answers: int
    unlogged_answers: int
    log_size: int
    verify_exit: int
    verify_output: str = ""

    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.unreadable == 0
            and self.without_index == 0
            and self.without_entry == 0
            and self.branch_keys <= 1
            and self.unlogged_answers == 0
            and self.verify_exit == 0
        )


async def wait_integrated(stack: Stack, limit: float = 120) -> None:
    """Until the access log's pending queue is empty (every entry in the tree)."""
    conn = await owner_connection(stack)
    try:
        deadline = time.monotonic() + limit
        while await conn.fetchval("SELECT count(*) FROM audit_pending"):
            if time.monotonic() > deadline:
                raise TimeoutError("access-log entries still pending")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def verify_log(stack: Stack, auditor_token: str) -> tuple[int, int, str]:
    """Download the latest checkpoint and every bundle up to it through the proxy as an
    auditor; run `vault-service audit verify` on them. (size, exit status, output)."""
    headers = {"Authorization": f"Bearer {auditor_token}", **AUDIT_PURPOSE}
    with tempfile.TemporaryDirectory(prefix="stack-verify-") as tmp:
        d = Path(tmp)
        async with proxy_client(stack, timeout=60) as api:
            # A checkpoint newer than every entry so far: the publisher signs every few seconds.
            conn = await owner_connection(stack)
            try:
                target = await conn.fetchval("SELECT size FROM audit_tree_state")
            finally:
                await conn.close()
            deadline = time.monotonic() + 60
            while True:
                r = await api.get("/v1/audit/checkpoint", headers=headers)
                r.raise_for_status()
                size = int(r.text.split("\n")[1])
                if size >= target or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            (d / "checkpoint.txt").write_bytes(r.content)
            keys = await api.get("/v1/audit/keys", headers=headers)
            keys.raise_for_status()
            (d / "keys.json").write_bytes(keys.content)
            args = ["--keys", str(d / "keys.json"), "--checkpoint", str(d / "checkpoint.txt")]
            for n, start in enumerate(range(0, size, 10_000)):
                b = await api.get(
                    "/v1/audit/bundles",
                    params={
                        "start": str(start),
                        "end": str(min(start + 10_000, size)),
                        "size": str(size),
                    },
                    headers=headers,
                )
                b.raise_for_status()
                (d / f"bundle-{n}.json").write_bytes(b.content)
                args += ["--bundle", str(d / f"bundle-{n}.json")]
        out = subprocess.run(  # noqa: S603, ASYNC221 - our own CLI, once, at the end  # nosec B603
            [sys.executable, "-m", "vault_service.cli", "audit", "verify", *args],
            capture_output=True,
            check=False,
            timeout=600,
            env={k: v for k, v in os.environ.items() if not k.startswith("VAULT_SERVICE_")},
        )
        text = (out.stdout + out.stderr).decode(errors="replace")
        return size, out.returncode, text[-2000:]


async def check(stack: Stack, accounts: Accounts, tallies: list[Tally]) -> Verdict:
    """Everything the module docstring promises, after the load has stopped."""
    acknowledged: dict[uuid.UUID, uuid.UUID] = {}
    request_ids: list[str] = []
    for t in tallies:
        acknowledged.update(t.acknowledged)
        request_ids.extend(t.data_request_ids)
    await wait_integrated(stack)
    conn = await owner_connection(stack)
    try:
        rows = await conn.fetch(
            "SELECT id, referent_id FROM records WHERE structure_id = $1", accounts.structure_id
        )
        present = {r["id"]: r["referent_id"] for r in rows}
        lost = sum(1 for rid in acknowledged if rid not in present)
        without_index = await conn.fetchval(
            "SELECT count(*) FROM records r WHERE r.structure_id = $1 "
            "AND NOT EXISTS (SELECT 1 FROM record_index i WHERE i.record_id = r.id)",
            accounts.structure_id,
        )
        # A row committed whose answer never left (a replica killed after the commit)
        # is fine, as long as its creation is in the log.
        without_entry = await conn.fetchval(
            "SELECT count(*) FROM records r WHERE r.structure_id = $1 AND NOT EXISTS "
            "(SELECT 1 FROM audit_bodies b WHERE b.body->'record_ids' @> jsonb_build_array(r.id))",
            accounts.structure_id,
        )
        branch_keys = await conn.fetchval(
            "SELECT count(*) FROM structure_keys WHERE structure_id = $1", accounts.structure_id
        )
        logged = {
            r[0]
            for r in await conn.fetch(
                "SELECT body->>'request_id' FROM audit_bodies WHERE body->>'request_id' = ANY($1)",
                request_ids,
            )
        }
    finally:
        await conn.close()
    unlogged = sum(1 for rid in request_ids if rid not in logged)
    # Every row reads back whole through the proxy, as its referent.
    unreadable = 0
    sem = asyncio.Semaphore(16)
    async with proxy_client(stack, timeout=30) as api:

        async def read(rid: uuid.UUID, referent: uuid.UUID) -> bool:
            token = accounts.counsellors.get(referent)
            if token is None:
                return False
            async with sem:
                for _ in range(3):
                    try:
                        r = await api.get(
                            f"/v1/records/{rid}",
                            headers={"Authorization": f"Bearer {token}", **PURPOSE},
                        )
                    except httpx.TransportError:
                        await asyncio.sleep(1)
                        continue
                    return r.status_code == 200 and r.json().get("id") == str(rid)
                return False

        results = await asyncio.gather(*(read(rid, ref) for rid, ref in present.items()))
        unreadable = sum(1 for ok in results if not ok)
    size, verify_exit, output = await verify_log(stack, accounts.auditor)
    return Verdict(
        acknowledged=len(acknowledged),
        lost=lost,
        records_in_structure=len(present),
        unreadable=unreadable,
        without_index=int(without_index),
        without_entry=int(without_entry),
        branch_keys=int(branch_keys),
        data_answers=len(request_ids),
        unlogged_answers=unlogged,
        log_size=size,
        verify_exit=verify_exit,
        verify_output=output,
    )


def replica_rss(stack: Stack) -> dict[str, int]:
    """Resident memory (bytes) of each replica: granian and its worker processes, i.e.
    every process in the session the stack started it in."""
    sessions = {stack.state.pids[n]: n for n in REPLICAS if n in stack.state.pids}
    rss: dict[str, int] = dict.fromkeys(sessions.values(), 0)
    page = os.sysconf("SC_PAGE_SIZE")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            sid = int(fields[3])
            if sid in sessions:
                pages = int((proc / "statm").read_text().split()[1])
                rss[sessions[sid]] += pages * page
        except (OSError, ValueError, IndexError):
            continue
    return rss


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
