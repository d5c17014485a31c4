"""Statistics benchmark: GET /v1/stats latency on 100,000 records, and the rebuild.

    python -m bench.stats [--records 100000] [--requests 300]

Starts its own embedded PostgreSQL and OpenBao dev server, migrates, makes 20
structures in 5 regions with one counsellor each, and adds records in bulk with the
service's key hierarchy and sealer (as bench/keys.py does: record keys wrapped under
each structure's branch key, fields sealed per the schema, integrity tag included),
every entry date in the last closed year (the one period an analyst may ask for).
Then:

1. `vault-service stats refresh`, run as an operator runs it (every record's three
   fields opened, every table of the year computed, suppressed and sealed), timed;
2. one fresh `vault-service` process (granian, one worker; its own scheduled rebuild
   off), an analyst token, and, sequential, each answer checked (200): every one of
   the 57 groupings once (*first*: the sealed table read, its year's key unwrapped by
   Vault on the first, opened and decoded), then `--requests` more of each of a mix
   of groupings (one, two and three dimensions, the sparse `month,structure,
   situation` among them; kept in the process after the first); p50 and p99 of each
   and over all, beside the same number of GET /health/live on the same connection
   (the floor of one request).

Everything shares one machine (the service, PostgreSQL, OpenBao, the client):
figures depend on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from bench.keys import COLUMNS
from bench.records import RESULTS, server_cmd, stop_all, wait_http
from vault_service.auth.permissions import Role
from vault_service.auth.tokens import SigningKeys, TokenIssuer
from vault_service.crypto.keys import KeyHierarchy
from vault_service.dev import embedded as devstack
from vault_service.kms import VaultKms
from vault_service.records import schema
from vault_service.records.plausible import youth
from vault_service.records.sealing import RowState, Sealer
from vault_service.settings import Settings

REGIONS = ("Bretagne", "Normandie", "Occitanie", "Grand Est", "Corse")
QUERIES = (
    "sex",
    "region,sex",
    "structure,age_band",
    "month,programme",
    "structure,sex,age_band",
    "region,situation,sex",
    # Sparse on purpose: small structures by month and situation have small cells.
    "month,structure,situation",
)


async def seed(owner_dsn: str, env: dict[str, str], n: int) -> str:
    """`n` records over 20 structures; returns an analyst account id."""
    from faker import Faker

    settings = Settings.from_env(env)
    kms = VaultKms(settings.vault)
    pool = await asyncpg.create_pool(settings.database.url, min_size=1, max_size=2)
    owner = await asyncpg.connect(owner_dsn)
    try:
        keys = KeyHierarchy(kms, pool, ttl=300, max_uses=10**9)
        sealer = Sealer(keys, schema.load())
        fake, rng = Faker("fr_FR"), random.Random(17)
        values = [youth(fake, rng, "75") for _ in range(500)]
        structures = []
        for i in range(20):
            sid, aid = uuid.uuid4(), uuid.uuid4()
            await owner.execute(
                "INSERT INTO structures (id, code, name, region, department) "
                "VALUES ($1, $2, $3, $4, '75')",
                sid,
                f"BENCH-{i:02d}",
                f"Bench {i}",
                REGIONS[i % len(REGIONS)],
            )
            await owner.execute(
                "INSERT INTO accounts (id, role, structure_id, state) "
                "VALUES ($1, 'counsellor', $2, 'active')",
                aid,
                sid,
            )
            structures.append((sid, aid, await keys.active_branch_key(sid)))
        analyst = uuid.uuid4()
        await owner.execute(
            "INSERT INTO accounts (id, role, state) VALUES ($1, 'analyst', 'active')", analyst
        )
        year = datetime.datetime.now(datetime.UTC).year - 1
        start = datetime.datetime(year, 1, 1, tzinfo=datetime.UTC)
        seconds = (datetime.datetime(year + 1, 1, 1, tzinfo=datetime.UTC) - start).total_seconds()
        rows = []
        for i in range(n):
            # Bigger structures first (a skew, so that some cells are small).
            sid, aid, branch = structures[min(int(rng.expovariate(0.15)), 19)]
            rid = uuid.uuid4()
            record_key, wrapped = KeyHierarchy.new_record_key(branch, rid)
            sealed, clear = sealer.split(values[i % len(values)], record_key, rid)
            state = RowState(rid, 1, sid, aid, 1)
            sealed_bytes, clear_text = Sealer.pack(sealed, clear, record_key, state)
            created = start + datetime.timedelta(seconds=rng.uniform(0, seconds - 1))
            rows.append(
                (rid, sid, aid, branch.version, wrapped, 1, sealed_bytes, clear_text, aid, created)
            )
            if len(rows) == 5000:
                await owner.copy_records_to_table(
                    "records", records=rows, columns=[*COLUMNS, "created_at"]
                )
                rows.clear()
        if rows:
            await owner.copy_records_to_table(
                "records", records=rows, columns=[*COLUMNS, "created_at"]
            )
        await owner.execute("ANALYZE records")
        return str(analyst)
    finally:
        await owner.close()
        await pool.close()
        kms.close()


async def issue(env: dict[str, str], analyst: str) -> str:
    settings = Settings.from_env(env)
    kms = VaultKms(settings.vault)
    try:
        issuer = TokenIssuer(settings, kms, SigningKeys(kms))
        return await issuer.issue(uuid.UUID(analyst), Role.ANALYST, None, 3600)
    finally:
        kms.close()


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def measure(base: str, token: str, requests: int) -> dict[str, object]:
    from vault_service.stats.service import GROUPINGS

    headers = {"Authorization": f"Bearer {token}", "X-Purpose": "statistics"}
    out: dict[str, object] = {}
    every: list[float] = []
    with httpx.Client(base_url=base, timeout=30) as http:
        floor = []
        for _ in range(requests):
            t = time.perf_counter()
            assert http.get("/health/live").status_code == 200
            floor.append((time.perf_counter() - t) * 1000)

        def get(group_by: str) -> tuple[float, dict[str, object] | None]:
            t = time.perf_counter()
            r = http.get("/v1/stats", params={"group_by": group_by}, headers=headers)
            took = (time.perf_counter() - t) * 1000
            if r.status_code == 422:  # sealed as unprotectable: a refusal, also timed
                assert r.json()["code"] == "stats_unprotectable", r.text
                return took, None
            assert r.status_code == 200, r.text
            return took, r.json()

        first = []
        refused = 0
        for grouping in GROUPINGS:
            took, doc = get(",".join(grouping))
            first.append(took)
            refused += doc is None
        every.extend(first)
        for group_by in QUERIES:
            times = []
            suppressed = cells = 0
            for _ in range(requests):
                took, doc = get(group_by)
                times.append(took)
                if doc is not None:
                    found = doc["cells"]
                    assert isinstance(found, list)
                    cells = len(found)
                    suppressed = sum(1 for c in found if c["count"] is None)
            every.extend(times)
            out[group_by] = {
                "p50_ms": round(statistics.median(times), 2),
                "p99_ms": round(_pct(times, 0.99), 2),
                "cells": cells,
                "suppressed": suppressed,
            }
    out["first_read_of_each_table"] = {
        "p50_ms": round(statistics.median(first), 2),
        "p99_ms": round(_pct(first, 0.99), 2),
        "max_ms": round(max(first), 2),
        "tables": len(first),
        "unprotectable": refused,
    }
    out["all"] = {
        "p50_ms": round(statistics.median(every), 2),
        "p99_ms": round(_pct(every, 0.99), 2),
        "requests": len(every),
    }
    out["health_live"] = {
        "p50_ms": round(statistics.median(floor), 2),
        "p99_ms": round(_pct(floor, 0.99), 2),
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300, help="per grouping")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-stats-"))
    pg = devstack.start_embedded_postgres(tmp / "pgdata", delete_on_stop=True)
    bao = devstack.start_openbao(tmp / "openbao", persistent=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        token_for_service = devstack.configure_vault(bao)
        port = devstack.free_port()
        env = {
            "VAULT_SERVICE_DATABASE_URL": devstack.dsn_for(
                pg.admin_dsn, user="vault_service_app", database=devstack.DATABASE
            ),
            "VAULT_SERVICE_VAULT_ADDR": bao.addr,
            "VAULT_SERVICE_VAULT_TOKEN": token_for_service,
            "VAULT_SERVICE_JWT_ISSUER": "https://bench.local",
            "VAULT_SERVICE_JWT_AUDIENCE": "vault-service",
            "VAULT_SERVICE_LOG_LEVEL": "WARNING",
            "VAULT_SERVICE_BUDGET_STATS_HOUR": "10000000",
        }
        asyncio.run(devstack.bootstrap_database(pg.admin_dsn, devstack.DATABASE))
        asyncio.run(devstack.migrate_database(pg.admin_dsn, devstack.DATABASE))
        owner_dsn = devstack.dsn_for(
            pg.admin_dsn, user="vault_service_owner", database=devstack.DATABASE
        )
        started = time.monotonic()
        analyst = asyncio.run(seed(owner_dsn, env, args.records))
        print(f"seeded {args.records} records in {time.monotonic() - started:.0f} s", flush=True)
        cli = str(Path(sys.executable).parent / "vault-service")
        started = time.monotonic()
        done = subprocess.run(
            [cli, "stats", "refresh"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        rebuild_s = time.monotonic() - started
        rebuild = json.loads(done.stdout)
        print(
            f"stats refresh: {rebuild['records']} records, years {rebuild['years_sealed']}, "
            f"{rebuild['tables']} tables sealed in {rebuild_s:.1f} s (process start included)",
            flush=True,
        )
        procs.append(
            subprocess.Popen(
                server_cmd("granian", "vault_service.asgi:app", port),
                env={**os.environ, **env, "VAULT_SERVICE_STATS_REFRESH_SECONDS": "0"},
            )
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health/live")
        token = asyncio.run(issue(env, analyst))
        results = measure(base, token, args.requests)
        report = {
            "records": args.records,
            "rebuild_seconds": round(rebuild_s, 1),
            "rebuild": rebuild,
            "latency": results,
        }
        (RESULTS / "stats.json").write_text(json.dumps(report, indent=2))
        for name, r in results.items():
            print(f"{name}: {r}")
        overall = results["all"]
        assert isinstance(overall, dict)
        cold = results["first_read_of_each_table"]
        assert isinstance(cold, dict)
        floor = results["health_live"]
        assert isinstance(floor, dict)
        print(
            f"GET /v1/stats p50 {overall['p50_ms']} ms, p99 {overall['p99_ms']} ms over "
            f"{overall['requests']} requests (target 100); first read of each of "
            f"{cold['tables']} tables p50 {cold['p50_ms']} ms, p99 {cold['p99_ms']} ms; "
            f"GET /health/live p50 {floor['p50_ms']} ms (warm p50 = "
            f"{overall['p50_ms'] / floor['p50_ms']:.1f}x the floor)"
        )
    finally:
        stop_all(procs, bao, pg, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
