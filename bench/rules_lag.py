"""Anomaly-rule lag under read load: from the access that crosses a rule's threshold to
its alert, while the service serves secure reads as fast as it can.

    python -m bench.rules_lag [--duration 60] [--interval 30] [--connections 32]

Same set-up as bench.records (embedded PostgreSQL, OpenBao dev server, seeded records,
the service and the plaintext reference as separate one-worker processes, integration
in a process of its own, wrk on the same machine). The reference is read first, then
the service for `--duration` seconds; during the service's run, probes (a counsellor
guessing 21 record ids, one more than `anomaly.enumeration`'s default threshold) are
sent at fixed times, and the alert's `raised_at` is read back from PostgreSQL. Also
reported: the read ratio of that same run (every rule is enabled; they cannot be
disabled) and the time one round of every rule's query takes on a database under
that load (`alerts/rules.py`, run here on a connection of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
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
from vault_service.alerts.rules import rules_of
from vault_service.auth.permissions import Role
from vault_service.auth.tokens import SigningKeys, TokenIssuer
from vault_service.dev import embedded as devstack
from vault_service.kms import VaultKms
from vault_service.settings import Settings

PROBE_AT = (5.0, 0.5)  # seconds after the start, and then at this fraction of the run


async def _scrapers(env: dict[str, str], admin_dsn: str, n: int) -> list[tuple[uuid.UUID, str]]:
    """`n` counsellors of the benchmark's structure, each with a token."""
    owner = await asyncpg.connect(
        devstack.dsn_for(admin_dsn, user="vault_service_owner", database=devstack.DATABASE)
    )
    settings = Settings.from_env(env)
    kms = VaultKms(settings.vault)
    issuer = TokenIssuer(settings, kms, SigningKeys(kms))
    sid = await owner.fetchval("SELECT id FROM structures WHERE code = 'BENCH'")
    out = []
    for _ in range(n):
        aid = uuid.uuid4()
        await owner.execute(
            "INSERT INTO accounts (id, role, structure_id, state) VALUES ($1, 'counsellor', $2,"
            " 'active')",
            aid,
            sid,
        )
        out.append((aid, await issuer.issue(aid, Role.COUNSELLOR, sid, 3600)))
    await owner.close()
    kms.close()
    return out


def _probe(base: str, token: str) -> float:
    """21 guessed ids; returns the wall-clock time of the last answer."""
    for _ in range(21):
        request = urllib.request.Request(
            f"{base}/v1/records/{uuid.uuid4()}",
            headers={"Authorization": f"Bearer {token}", "X-Purpose": "follow_up"},
        )
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
    return time.time()


async def _alert_time(dsn: str, account: uuid.UUID, deadline: float) -> float | None:
    conn = await asyncpg.connect(dsn)
    try:
        while time.time() < deadline:
            raised = await conn.fetchval(
                "SELECT raised_at FROM alerts WHERE kind = 'anomaly.enumeration'"
                " AND account_id = $1",
                account,
            )
            if raised is not None:
                return float(raised.timestamp())
            await asyncio.sleep(0.05)
        return None
    finally:
        await conn.close()


async def _round_ms(dsn: str, settings: Settings, rounds: int) -> list[float]:
    """Wall time of one round of every rule's query, `rounds` times."""
    conn = await asyncpg.connect(dsn)
    try:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for rule in rules_of(settings):
                await conn.fetch(rule.query, *rule.args)
            times.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.5)
        return times
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--interval", type=float, default=30.0, help="rules interval (s)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-rules-"))
    pg = devstack.start_embedded_postgres(tmp / "pgdata", delete_on_stop=True)
    bao = devstack.start_openbao(tmp / "openbao", persistent=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        dsn = devstack.dsn_for(pg.admin_dsn, user="vault_service_app", database=devstack.DATABASE)
        env = {
            "VAULT_SERVICE_DATABASE_URL": dsn,
            "VAULT_SERVICE_VAULT_ADDR": bao.addr,
            "VAULT_SERVICE_VAULT_TOKEN": devstack.configure_vault(bao),
            "VAULT_SERVICE_JWT_ISSUER": "https://bench.local",
            "VAULT_SERVICE_JWT_AUDIENCE": "vault-service",
            "VAULT_SERVICE_LOG_LEVEL": "WARNING",
            "VAULT_SERVICE_BUDGET_COUNSELLOR_HOUR": "10000000",
            "VAULT_SERVICE_BUDGET_COUNSELLOR_DAY": "10000000",
            "VAULT_SERVICE_BUDGET_STRUCTURE_HOUR": "10000000",
            "VAULT_SERVICE_SUMMARY_BUDGET_COUNSELLOR_HOUR": "10000000",
            "VAULT_SERVICE_ANOMALY_INTERVAL_SECONDS": str(args.interval),
        }
        ids, token = asyncio.run(prepare(pg, env, args.records))
        scrapers = asyncio.run(_scrapers(env, pg.admin_dsn, len(PROBE_AT)))
        port, ref_port = devstack.free_port(), devstack.free_port()
        bin_dir = Path(sys.executable).parent
        procs.append(
            subprocess.Popen(
                [str(bin_dir / "vault-service"), "audit", "integrate"], env={**os.environ, **env}
            )
        )
        procs.append(
            subprocess.Popen(
                server_cmd("granian", "vault_service.asgi:app", port),
                env={**os.environ, **env, "VAULT_SERVICE_AUDIT_INTEGRATOR": "false"},
            )
        )
        procs.append(
            subprocess.Popen(
                server_cmd("granian", "bench.reference_app:app", ref_port),
                env={**os.environ, "BENCH_REFERENCE_DSN": dsn},
            )
        )
        wait_http(f"http://127.0.0.1:{port}/health/live")
        wait_http(f"http://127.0.0.1:{ref_port}/ref/records/{ids[0]}")
        id_list = ", ".join(f'"{i}"' for i in ids)
        scripts = {}
        for name, prefix, headers in (
            ("svc", "/v1/records/", {"Authorization": f"Bearer {token}", "X-Purpose": "follow_up"}),
            ("ref", "/ref/records/", {}),
        ):
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(lua_headers(headers) + READ_LUA % (id_list, prefix))
        base = f"http://127.0.0.1:{port}"
        wrk(scripts["ref"], f"http://127.0.0.1:{ref_port}", 3, args.connections)
        ref = wrk(scripts["ref"], f"http://127.0.0.1:{ref_port}", args.duration, args.connections)
        wrk(scripts["svc"], base, 3, args.connections)

        probes: list[dict[str, float | None]] = []
        rounds: list[float] = []
        settings = Settings.from_env(env)

        def during_load() -> None:
            started = time.time()
            for (account, scraper_token), at in zip(scrapers, PROBE_AT, strict=True):
                wait = at if at > 1 else at * args.duration
                time.sleep(max(0.0, started + wait - time.time()))
                done = _probe(base, scraper_token)
                deadline = started + args.duration - 1
                raised = asyncio.run(_alert_time(dsn, account, deadline))
                probes.append(
                    {"sent_at_s": done - started, "lag_s": raised - done if raised else None}
                )
            rounds.extend(asyncio.run(_round_ms(dsn, settings, 5)))

        watcher = threading.Thread(target=during_load)
        watcher.start()
        svc = wrk(scripts["svc"], base, args.duration, args.connections)
        watcher.join()
        report = {
            "duration_s": args.duration,
            "rules_interval_s": args.interval,
            "reference_read": ref,
            "service_read": svc,
            "read_ratio": svc["rps"] / ref["rps"],
            "probes": probes,
            "rule_round_ms": rounds,
            "at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "rules-lag.json").write_text(json.dumps(report, indent=2))
        print(
            f"reference reads:  {ref['rps']:.0f}/s   service reads: {svc['rps']:.0f}/s "
            f"(non-2xx {svc['non_2xx']:.0f})   ratio {report['read_ratio']:.2f}"
        )
        for p in probes:
            lag = "no alert" if p["lag_s"] is None else f"{p['lag_s']:.2f} s"
            print(
                f"probe at {p['sent_at_s']:.1f} s: access to alert {lag} "
                f"(rules every {args.interval:g} s)"
            )
        if rounds:
            print(
                f"one round of every rule under load: median {statistics.median(rounds):.1f} ms,"
                f" max {max(rounds):.1f} ms"
            )
        return 0 if all(p["lag_s"] is not None for p in probes) else 1
    finally:
        stop_all(procs, bao, pg, tmp)


if __name__ == "__main__":
    sys.exit(main())
