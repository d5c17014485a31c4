"""Bulk-import benchmark: records imported a second with every field of the full fixture,
and the read throughput the service keeps while an import runs.

    python -m bench.imports [--records 50000] [--batch-size 1000] [--workers 1]
                            [--max-rate 0] [--slice 2]

Starts its own embedded PostgreSQL and OpenBao dev server (bench/records.py's set-up:
`prepare` seeds 1,000 records through the service's own code and gives a counsellor's
token), writes a JSON Lines export of `--records` youth (tests/fixtures/full_record.json
with a distinct legacy id, names, e-mail and phone each), starts one `vault-service`
process (granian, one worker) and the access-log integrator, and measures with wrk:

1. the read throughput alone (the baseline);
2. `vault-service import` run as an operator runs it (admin login, the service's
   configuration), while wrk reads in slices: the import's rate is its own summary
   (records imported / seconds of the run), the reads are the slices that ran wholly
   inside the import.

Everything shares one machine (the service, PostgreSQL, OpenBao, wrk, the import):
figures depend on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.keys import admin_login
from bench.records import (
    READ_LUA,
    RESULTS,
    ROOT,
    lua_headers,
    prepare,
    server_cmd,
    stop_all,
    wait_http,
    wrk,
)
from vault_service.dev import embedded as devstack

FULL = json.loads((ROOT / "tests" / "fixtures" / "full_record.json").read_text("utf-8"))


def write_export(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            record = dict(FULL)
            record["birth_name"] = f"Lefèvre{i:07d}"
            record["first_names"] = ["Zoé", f"Marie{i}"]
            record["email"] = f"youth{i}@example.org"
            record["phone"] = f"06 {i // 1000000 % 100:02d} {i // 10000 % 100:02d} "
            record["phone"] += f"{i // 100 % 100:02d} {i % 100:02d}"
            line = {"legacy_id": f"DOS-{i:08d}", "structure": "OLD-BENCH", "referent": "CNS-1"}
            line["record"] = record  # type: ignore[assignment]
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def import_under_reads(
    env: dict[str, str],
    cmd: list[str],
    script: Path,
    base: str,
    slice_s: int,
    connections: int,
    summary: Path,
) -> dict[str, object]:
    """`summary`: the import's --report file (read from there, not from stdout: under
    py-spy the command's stdout is py-spy's)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    slices = []
    if connections == 0:  # the import alone, no reads
        proc.wait()
    while proc.poll() is None:
        start = time.monotonic()
        result = wrk(script, base, slice_s, connections)
        slices.append((start, time.monotonic(), result))
    ended = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError("vault-service import failed")
    report = json.loads(summary.read_text("utf-8"))
    inside = [r for s, e, r in slices if s >= started and e <= ended]
    reads = sum(r["rps"] for r in inside) / len(inside) if inside else float("nan")
    report.pop("refusals", None)
    return {
        "report": report,
        "read_slices_inside": len(inside),
        "read_rps_during": reads,
        "non_2xx_during": sum(r["non_2xx"] for _, _, r in slices),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="import --workers")
    parser.add_argument("--max-rate", type=int, default=0, help="import --max-rate")
    parser.add_argument(
        "--connections", type=int, default=16, help="wrk's; 0: the import alone, no reads"
    )
    parser.add_argument("--baseline", type=int, default=10, help="seconds of reads alone")
    parser.add_argument("--slice", type=int, default=2, help="seconds per wrk slice")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the import (bench/results/import-profile.txt)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-imports-"))
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
        }
        ids, token = asyncio.run(prepare(pg, env, 1000))
        owner_dsn = devstack.dsn_for(
            pg.admin_dsn, user="vault_service_owner", database=devstack.DATABASE
        )

        async def referent() -> str:
            owner = await asyncpg.connect(owner_dsn)
            try:
                return str(
                    await owner.fetchval("SELECT id FROM accounts WHERE role = 'counsellor'")
                )
            finally:
                await owner.close()

        export, smap = tmp / "export.jsonl", tmp / "map.json"
        write_export(export, args.records)
        smap.write_text(
            json.dumps(
                {
                    "source": "bench",
                    "structures": {"OLD-BENCH": "BENCH"},
                    "referents": {"CNS-1": asyncio.run(referent())},
                }
            )
        )
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
        baseline = {"rps": float("nan"), "p99_ms": float("nan")}
        if args.connections:
            wrk(script, base, 3, args.connections)  # warm-up
            baseline = wrk(script, base, args.baseline, args.connections)
        cmd = [
            str(Path(sys.executable).parent / "vault-service"),
            "import", str(export), "--structure-map", str(smap), "--json",
            "--report", str(tmp / "summary.json"),
            "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--max-rate", str(args.max_rate),
        ]  # fmt: skip
        if args.profile:
            spy = str(Path(sys.executable).parent / "py-spy")
            out = str(RESULTS / "import-profile.txt")
            cmd = [spy, "record", "--format", "raw", "--rate", "200", "-o", out, "--", *cmd]
        result = import_under_reads(
            admin_env, cmd, script, base, args.slice, args.connections, tmp / "summary.json"
        )
        result["read_share"] = float(result["read_rps_during"]) / baseline["rps"]  # type: ignore[arg-type]
        report = {
            "records": args.records,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "max_rate": args.max_rate,
            "connections": args.connections,
            "baseline_read": baseline,
            "import": result,
        }
        (RESULTS / f"imports-w{args.workers}.json").write_text(json.dumps(report, indent=2))
        r = result["report"]
        assert isinstance(r, dict)
        print(f"baseline reads: {baseline['rps']:.0f} req/s (p99 {baseline['p99_ms']:.1f} ms)")
        print(
            f"import: {r['imported']} records in {r['seconds']:.1f} s = "
            f"{r['records_per_second']}/s (target 5000); reads meanwhile "
            f"{result['read_rps_during']:.0f} req/s = {result['read_share']:.0%} of baseline "
            f"over {result['read_slices_inside']} slices (target 80%), "
            f"non-2xx {result['non_2xx_during']}"
        )
        return 0
    finally:
        stop_all(procs, bao, pg, tmp)


if __name__ == "__main__":
    raise SystemExit(main())
