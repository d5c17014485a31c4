"""Key-rotation benchmark: record-key rewrap and full re-encryption rates, and the read
throughput the service keeps while they run.

    python -m bench.keys [--records 100000] [--slice 3]

Starts its own embedded PostgreSQL and OpenBao dev server (bench/records.py's set-up:
`prepare` seeds 1,000 records through the service's own code), then adds records in
bulk with the service's key hierarchy and sealer (record keys wrapped under the
structure's branch key, fields sealed per the schema, as `RecordService.create` does;
no blind indexes, which no rotation touches), starts one `vault-service` process
(granian, one worker) and the access-log integrator, and measures with wrk:

1. the read throughput alone (the baseline);
2. `vault-service keys rotate branch --all` (record keys rewrapped under a new branch
   key), run as an operator runs it, while wrk reads in slices; the rate is taken from
   the command's own progress lines (first to last batch), the read throughput from
   the slices that ran wholly while it rewrapped;
3. `vault-service keys rotate records --all` (every record re-sealed), the same way.

Everything shares one machine (the service, PostgreSQL, OpenBao, wrk, the rotation):
figures depend on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import asyncpg

from bench.records import (
    READ_LUA,
    RESULTS,
    lua_headers,
    prepare,
    server_cmd,
    stop_all,
    wait_http,
    wrk,
)
from vault_service.crypto.keys import KeyHierarchy
from vault_service.dev import embedded as devstack
from vault_service.kms import VaultKms
from vault_service.records import schema
from vault_service.records.plausible import youth
from vault_service.records.sealing import RowState, Sealer
from vault_service.settings import Settings

COLUMNS = [
    "id",
    "structure_id",
    "referent_id",
    "branch_key_version",
    "record_key",
    "key_version",
    "sealed",
    "clear",
    "created_by",
]


async def bulk_seed(owner_dsn: str, env: dict[str, str], n: int) -> None:
    """`n` more records in the bench structure, sealed by the service's own code."""
    from faker import Faker

    settings = Settings.from_env(env)
    kms = VaultKms(settings.vault)
    pool = await asyncpg.create_pool(settings.database.url, min_size=1, max_size=2)
    owner = await asyncpg.connect(owner_dsn)
    try:
        sid = await owner.fetchval("SELECT id FROM structures WHERE code = 'BENCH'")
        aid = await owner.fetchval("SELECT id FROM accounts WHERE structure_id = $1", sid)
        keys = KeyHierarchy(kms, pool, ttl=300, max_uses=10**9)
        sealer = Sealer(keys, schema.load())
        branch = await keys.active_branch_key(sid)
        fake, rng = Faker("fr_FR"), random.Random(11)
        values = [youth(fake, rng, "75") for _ in range(500)]
        rows = []
        for i in range(n):
            rid = uuid.uuid4()
            record_key, wrapped = KeyHierarchy.new_record_key(branch, rid)
            sealed, clear = sealer.split(values[i % len(values)], record_key, rid)
            state = RowState(rid, 1, sid, aid, 1)  # a new record, as a create leaves it
            sealed_bytes, clear_text = Sealer.pack(sealed, clear, record_key, state)
            rows.append((rid, sid, aid, branch.version, wrapped, 1, sealed_bytes, clear_text, aid))
            if len(rows) == 5000:
                await owner.copy_records_to_table("records", records=rows, columns=COLUMNS)
                rows.clear()
        if rows:
            await owner.copy_records_to_table("records", records=rows, columns=COLUMNS)
        await owner.execute("ANALYZE records")
    finally:
        await owner.close()
        await pool.close()
        kms.close()


async def admin_login(pg: devstack.Postgres, owner_dsn: str) -> str:
    login = "bench_key_admin"
    await devstack.create_admin_login(pg.admin_dsn, login)
    owner = await asyncpg.connect(owner_dsn)
    try:
        aid = uuid.uuid4()
        await owner.execute(
            "INSERT INTO accounts (id, role, structure_id, state) VALUES ($1, 'admin', NULL, 'active')",
            aid,
        )
        await owner.execute(
            "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2)", login, aid
        )
    finally:
        await owner.close()
    return devstack.dsn_for(pg.admin_dsn, user=login, database=devstack.DATABASE)


def rotation_under_reads(
    kind: str, env: dict[str, str], script: Path, base: str, slice_s: int, connections: int
) -> dict[str, object]:
    """Run `keys rotate <kind> --all` while wrk reads in slices; the rate from the
    command's progress lines, the reads from the slices wholly inside its work."""
    cli = [str(Path(sys.executable).parent / "vault-service"), "keys", "rotate", kind, "--all"]
    proc = subprocess.Popen(
        [*cli, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    progress: list[tuple[float, int]] = []

    def follow() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if ": " in line and "/" in line:
                done = int(line.rsplit(" ", 1)[-1].split("/")[0])
                progress.append((time.monotonic(), done))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    slices = []
    while proc.poll() is None:
        start = time.monotonic()
        result = wrk(script, base, slice_s, connections)
        slices.append((start, time.monotonic(), result))
    out = proc.stdout.read() if proc.stdout else ""
    reader.join(5)
    if proc.returncode != 0:
        raise RuntimeError(f"keys rotate {kind} failed")
    report = json.loads(out)
    working = [p for p in progress if p[1] > 0]
    first = progress[0] if progress else (0.0, 0)
    last = max(working, key=lambda p: p[1]) if working else first
    elapsed = last[0] - first[0]
    rate = last[1] / elapsed if elapsed > 0 else float("nan")
    inside = [r for s, e, r in slices if s >= first[0] and e <= last[0]]
    reads = sum(r["rps"] for r in inside) / len(inside) if inside else float("nan")
    return {
        "report": {k: v for k, v in report.items() if k != "structures"},
        "rows": last[1],
        "seconds": elapsed,
        "rate_per_s": rate,
        "read_slices_inside": len(inside),
        "read_rps_during": reads,
        "non_2xx_during": sum(r["non_2xx"] for _, _, r in slices),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--baseline", type=int, default=10, help="seconds of reads alone")
    parser.add_argument("--slice", type=int, default=2, help="seconds per wrk slice")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-keys-"))
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
            "VAULT_SERVICE_BUDGET_COUNSELLOR_HOUR": "10000000",
            "VAULT_SERVICE_BUDGET_COUNSELLOR_DAY": "10000000",
            "VAULT_SERVICE_BUDGET_STRUCTURE_HOUR": "10000000",
            # A branch-key rotation waits one TTL before it deletes the old version.
            "VAULT_SERVICE_BRANCH_KEY_TTL_SECONDS": "5",
        }
        ids, token = asyncio.run(prepare(pg, env, 1000))
        owner_dsn = devstack.dsn_for(
            pg.admin_dsn, user="vault_service_owner", database=devstack.DATABASE
        )
        seeded = time.monotonic()
        asyncio.run(bulk_seed(owner_dsn, env, max(0, args.records - len(ids))))
        print(f"seeded {args.records} records in {time.monotonic() - seeded:.0f} s", flush=True)
        admin_env = {
            **os.environ,
            **env,
            "VAULT_SERVICE_ADMIN_DATABASE_URL": asyncio.run(admin_login(pg, owner_dsn)),
        }
        procs.append(
            subprocess.Popen(
                [str(Path(sys.executable).parent / "vault-service"), "audit", "integrate"],
                env={**os.environ, **env},
            )
        )
        procs.append(
            subprocess.Popen(
                server_cmd("granian", "vault_service.asgi:app", port),
                env={**os.environ, **env, "VAULT_SERVICE_AUDIT_INTEGRATOR": "false"},
            )
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health/live")
        script = tmp / "read.lua"
        auth = {"Authorization": f"Bearer {token}", "X-Purpose": "follow_up"}
        id_list = ", ".join(f'"{i}"' for i in ids)
        script.write_text(lua_headers(auth) + READ_LUA % (id_list, "/v1/records/"))
        wrk(script, base, 3, args.connections)  # warm-up
        baseline = wrk(script, base, args.baseline, args.connections)
        results: dict[str, object] = {"baseline_read": baseline}
        for kind in ("branch", "records"):
            result = rotation_under_reads(
                kind, admin_env, script, base, args.slice, args.connections
            )
            result["read_share"] = float(result["read_rps_during"]) / baseline["rps"]  # type: ignore[arg-type]
            results[kind] = result
        report = {"records": args.records, "connections": args.connections, **results}
        (RESULTS / "keys.json").write_text(json.dumps(report, indent=2))
        print(f"baseline reads: {baseline['rps']:.0f} req/s (p99 {baseline['p99_ms']:.1f} ms)")
        for kind, label, target in (
            ("branch", "record keys rewrapped", 20_000),
            ("records", "records re-encrypted", 2_000),
        ):
            r = results[kind]
            assert isinstance(r, dict)
            print(
                f"{kind}: {r['rows']} {label} in {r['seconds']:.1f} s = {r['rate_per_s']:.0f}/s "
                f"(target {target}); reads meanwhile {r['read_rps_during']:.0f} req/s = "
                f"{r['read_share']:.0%} of baseline over {r['read_slices_inside']} slices "
                f"(target 80%), non-2xx {r['non_2xx_during']}"
            )
        return 0
    finally:
        stop_all(procs, bao, pg, tmp)


if __name__ == "__main__":
    raise SystemExit(main())
