"""Capacity of the stack (vault_service.stack): one replica alone, then Caddy over two.

    python -m bench.stack_capacity [--duration 10] [--connections 32] [--records 300]

Starts the stack of docker-compose.yml on this machine (TLS verify-full to PostgreSQL,
OpenBao in server mode, two `vault-service serve` replicas with one granian worker each,
Caddy in front), creates `--records` records through the proxy as one counsellor (the
load's budgets: vault_service.stack.load.LOAD_OVERRIDES), then drives with wrk (one
thread, `--connections`), one after the other in the same run:

1. reads straight at app1 (plain HTTP on loopback: one replica, one PostgreSQL);
2. the same reads through Caddy (TLS) balanced over both replicas;
3. creates straight at app1, then through Caddy.

Prints one JSON document: req/s, p50 and p99 per phase, and the ratio of each proxied
phase to its one-replica phase. wrk, Caddy, both replicas, PostgreSQL and OpenBao share
the machine's CPUs: on a 2-CPU machine a second replica adds no CPU, only a second
event loop, so the ratio says what the proxy and TLS cost more than what a replica adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.records import CREATE_LUA, READ_LUA, lua_headers, wrk
from vault_service.stack import start
from vault_service.stack.load import (
    LOAD_OVERRIDES,
    PURPOSE,
    make_accounts,
    proxy_client,
    record_body,
)


async def seed(stack: Any, count: int) -> tuple[str, list[str]]:
    accounts = await make_accounts(stack, 1)
    token = next(iter(accounts.counsellors.values()))
    headers = {"Authorization": f"Bearer {token}", **PURPOSE}
    rng = random.Random(7)
    ids: list[str] = []
    sem = asyncio.Semaphore(16)
    async with proxy_client(stack, timeout=30) as api:

        async def one() -> None:
            async with sem:
                r = await api.post("/v1/records", json=record_body(rng), headers=headers)
                r.raise_for_status()
                ids.append(r.json()["id"])

        await asyncio.gather(*(one() for _ in range(count)))
    return token, ids


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stack_capacity")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--records", type=int, default=300)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 1
    state_dir = Path(tempfile.mkdtemp(prefix="vault-service-capacity-"))
    stack = start(state_dir, replica_overrides=LOAD_OVERRIDES)
    try:
        token, ids = asyncio.run(seed(stack, args.records))
        headers = {"Authorization": f"Bearer {token}", **PURPOSE}
        work = state_dir / "wrk"
        work.mkdir()
        read = work / "read.lua"
        read.write_text(
            lua_headers(headers) + READ_LUA % (", ".join(f'"{i}"' for i in ids), "/v1/records/"),
            encoding="utf-8",
        )
        create = work / "create.lua"
        body = json.dumps(record_body(random.Random(8)))
        create.write_text(
            lua_headers({**headers, "Content-Type": "application/json"})
            + f"BODY = {json.dumps(body)}\n"
            + CREATE_LUA % "/v1/records",
            encoding="utf-8",
        )
        direct = stack.state.replica_url(0)
        proxy = stack.state.proxy_url
        d, c = args.duration, args.connections
        results: dict[str, Any] = {
            "read, one replica": wrk(read, direct, d, c),
            "read, Caddy over two replicas": wrk(read, proxy, d, c),
            "create, one replica": wrk(create, direct, d, c),
            "create, Caddy over two replicas": wrk(create, proxy, d, c),
        }
        for op in ("read", "create"):
            one = results[f"{op}, one replica"]["rps"]
            two = results[f"{op}, Caddy over two replicas"]["rps"]
            results[f"{op} ratio (Caddy + two / one)"] = round(two / one, 2) if one else None
        results["cpus"] = os.cpu_count()
        results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
        print(json.dumps(results, indent=2))
        return 0
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
