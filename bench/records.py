"""Record read/create benchmark: the real service against a plaintext reference.

    python -m bench.records [--duration 15] [--connections 32] [--server granian|uvicorn]
                            [--external]

Starts its own embedded PostgreSQL and OpenBao dev server, seeds records through
the service's own code, runs the service and the reference app (bench/reference_app.py)
as separate server processes with one worker each, drives both with wrk on the same
machine, one after the other, and reports requests/s, p50, p99 and the ratio.
Vault calls during the read phase are counted from OpenBao's own audit log.
With --external, the same reads run a second time with an ID token of OpenBao's OIDC
identity provider (RS256, linked to the same account), reported beside the own-token run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import msgspec

from vault_service.access.recording import ToolLog
from vault_service.auth.permissions import Role, scopes_for
from vault_service.auth.principal import Principal
from vault_service.dev import embedded as devstack
from vault_service.records.plausible import youth
from vault_service.services import service_side, token_issuer
from vault_service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

READ_LUA = """
ids = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "%s" .. ids[(counter %% #ids) + 1], HEADERS)
end
"""
CREATE_LUA = """
request = function()
  return wrk.format("POST", "%s", HEADERS, BODY)
end
"""


def lua_headers(headers: dict[str, str]) -> str:
    return "HEADERS = {" + ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items()) + "}\n"


def parse_wrk(out: str) -> dict[str, float]:
    def to_ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": total, "non_2xx": errors}


def wrk(script: Path, url: str, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return parse_wrk(out)


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def server_cmd(server: str, target: str, port: int) -> list[str]:
    if server == "granian":
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            target,
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


async def prepare(
    pg: devstack.Postgres, env: dict[str, str], n: int, external: tuple[str, str] | None = None
) -> tuple[list[str], str]:
    await devstack.bootstrap_database(pg.admin_dsn, devstack.DATABASE)
    await devstack.migrate_database(pg.admin_dsn, devstack.DATABASE)
    owner = await asyncpg.connect(
        devstack.dsn_for(pg.admin_dsn, user="vault_service_owner", database=devstack.DATABASE)
    )
    sid, aid = uuid.uuid4(), uuid.uuid4()
    await owner.execute(
        "INSERT INTO structures (id, code, name, department) VALUES ($1, 'BENCH', 'Bench', '75')",
        sid,
    )
    await owner.execute(
        "INSERT INTO accounts (id, role, structure_id, state) VALUES ($1, 'counsellor', $2, 'active')",
        aid,
        sid,
    )
    if external is not None:
        await owner.execute(
            "INSERT INTO external_identities (issuer, subject, account_id) VALUES ($1, $2, $3)",
            *external,
            aid,
        )
    await owner.execute("CREATE TABLE bench_reference (id uuid PRIMARY KEY, body jsonb NOT NULL)")
    await owner.execute("GRANT SELECT, INSERT ON bench_reference TO vault_service_app")
    settings = Settings.from_env(env)
    async with service_side(settings, min_size=2, max_size=8) as side:
        service = side.records
        principal = Principal(
            aid, Role.COUNSELLOR, sid, scopes_for(Role.COUNSELLOR), uuid.uuid4(), 0
        )
        import random

        from faker import Faker

        fake, rng = Faker("fr_FR"), random.Random(7)
        full = json.loads((ROOT / "tests" / "fixtures" / "full_record.json").read_text())
        ids = []
        for i in range(n):
            record = {**full, **youth(fake, rng, "75")} if i % 2 else youth(fake, rng, "75")
            body = msgspec.json.encode(record)
            created = await service.create(principal, body, None, ToolLog(principal, "record.seed"))
            # The reference stores the same plaintext under the same id.
            await owner.execute(
                "INSERT INTO bench_reference (id, body) VALUES ($1, $2::jsonb)",
                created.record_id,
                body.decode(),
            )
            ids.append(str(created.record_id))
        token = await token_issuer(settings, side.kms).issue(aid, Role.COUNSELLOR, sid, 3600)
    await owner.close()
    return ids, token


def external_provider(bao: devstack.OpenBao, audience: str) -> tuple[dict[str, object], str, str]:
    """OpenBao's identity OIDC provider as the external issuer: its configuration
    (VAULT_SERVICE_OIDC_ISSUERS entry), a user's subject, and an hour-long ID token
    with a second factor."""
    import hvac

    c = bao.client()
    c.write("identity/oidc/config", issuer=bao.addr)
    c.write("identity/oidc/key/bench", algorithm="RS256", allowed_client_ids=["*"])
    c.write(
        "identity/oidc/role/bench",
        key="bench",
        client_id=audience,
        ttl="1h",
        template=json.dumps({"acr": "eidas2", "amr": ["pwd", "mfa"]}),
    )
    c.sys.create_or_update_policy(
        "bench-oidc", 'path "identity/oidc/token/*" { capabilities = ["read"] }'
    )
    c.sys.enable_auth_method("userpass")
    c.write("auth/userpass/users/bench", password="bench-password", token_policies=["bench-oidc"])
    login = c.auth.userpass.login("bench", "bench-password")
    user = hvac.Client(url=bao.addr, token=login["auth"]["client_token"])
    token = str(user.read("identity/oidc/token/bench")["data"]["token"])
    base = bao.addr + "/v1/identity/oidc"
    with urllib.request.urlopen(base + "/.well-known/openid-configuration") as r:
        issuer = json.load(r)["issuer"]
    config = {
        "issuer": issuer,
        "audience": audience,
        "jwks_uri": base + "/.well-known/keys",
        "algorithms": ["RS256"],
        "required_acr": ["eidas2"],
    }
    return config, login["auth"]["entity_id"], token


def stop_all(
    procs: list[subprocess.Popen[bytes]],
    bao: devstack.OpenBao,
    pg: devstack.Postgres,
    tmp: Path,
) -> None:
    """A benchmark's processes, then its OpenBao and PostgreSQL, then its files.

    The processes stop one at a time, the last started first: the servers commit their
    last entries to the pending queue before a dedicated integrator (started before
    them) stops, so that its last round integrates them."""
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    bao.stop()
    pg.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def vault_requests(audit_log: Path) -> list[str]:
    """Paths of the requests OpenBao itself logged (its audit device), in order."""
    if not audit_log.exists():
        return []
    paths = []
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("type") == "request" and not entry["request"]["path"].startswith("sys/"):
            paths.append(entry["request"]["path"])
    return paths


def count_vault_requests(audit_log: Path) -> int:
    return len(vault_requests(audit_log))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="granian")
    parser.add_argument("--profile", action="store_true", help="py-spy the service during reads")
    parser.add_argument(
        "--external",
        action="store_true",
        help="also read with an external OIDC token (OpenBao's identity provider)",
    )
    parser.add_argument(
        "--budget-cost",
        action="store_true",
        help="also read through a benchmark-only build without budgets (bench/budgets_off.py)",
    )
    parser.add_argument(
        "--integrity-cost",
        action="store_true",
        help="also read through a benchmark-only build without the record integrity "
        "check (bench/integrity_off.py)",
    )
    args = parser.parse_args()
    if args.budget_cost and args.integrity_cost:
        parser.error("one of --budget-cost and --integrity-cost at a time")
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-"))
    pg = devstack.start_embedded_postgres(tmp / "pgdata", delete_on_stop=True)
    audit_log = tmp / "openbao-audit.log"
    bao = devstack.start_openbao(tmp / "openbao", persistent=False, audit_log=audit_log)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        token_for_service = devstack.configure_vault(bao)
        port, ref_port = devstack.free_port(), devstack.free_port()
        env = {
            "VAULT_SERVICE_DATABASE_URL": devstack.dsn_for(
                pg.admin_dsn, user="vault_service_app", database=devstack.DATABASE
            ),
            "VAULT_SERVICE_VAULT_ADDR": bao.addr,
            "VAULT_SERVICE_VAULT_TOKEN": token_for_service,
            "VAULT_SERVICE_JWT_ISSUER": "https://bench.local",
            "VAULT_SERVICE_JWT_AUDIENCE": "vault-service",
            "VAULT_SERVICE_LOG_LEVEL": "WARNING",
            # Budgets stay on: every read is decided and counted in PostgreSQL. They
            # are large enough that no read is refused (a refusal counts as non-2xx).
            "VAULT_SERVICE_BUDGET_COUNSELLOR_HOUR": "10000000",
            "VAULT_SERVICE_BUDGET_COUNSELLOR_DAY": "10000000",
            "VAULT_SERVICE_BUDGET_STRUCTURE_HOUR": "10000000",
            "VAULT_SERVICE_SUMMARY_BUDGET_COUNSELLOR_HOUR": "10000000",
        }
        ext_token = None
        linked = None
        if args.external:
            config, subject, ext_token = external_provider(bao, env["VAULT_SERVICE_JWT_AUDIENCE"])
            env["VAULT_SERVICE_OIDC_ISSUERS"] = json.dumps([config])
            linked = (str(config["issuer"]), subject)
        ids, token = asyncio.run(prepare(pg, env, args.records, linked))
        # Integration (tree hashes, tiles) runs in a process of its own, as a deployment
        # would run it beside its replicas; the service only sequences entries.
        procs.append(
            subprocess.Popen(
                [str(Path(sys.executable).parent / "vault-service"), "audit", "integrate"],
                env={**os.environ, **env},
            )
        )
        procs.append(
            subprocess.Popen(
                server_cmd(args.server, "vault_service.asgi:app", port),
                env={**os.environ, **env, "VAULT_SERVICE_AUDIT_INTEGRATOR": "false"},
            )
        )
        procs.append(
            subprocess.Popen(
                server_cmd(args.server, "bench.reference_app:app", ref_port),
                env={**os.environ, "BENCH_REFERENCE_DSN": env["VAULT_SERVICE_DATABASE_URL"]},
            )
        )
        off_port = None
        if args.budget_cost or args.integrity_cost:
            off_port = devstack.free_port()
            off_app = "bench.budgets_off:app" if args.budget_cost else "bench.integrity_off:app"
            procs.append(
                subprocess.Popen(
                    server_cmd(args.server, off_app, off_port),
                    env={**os.environ, **env, "VAULT_SERVICE_AUDIT_INTEGRATOR": "false"},
                )
            )
            wait_http(f"http://127.0.0.1:{off_port}/health/live")
        wait_http(f"http://127.0.0.1:{port}/health/live")
        wait_http(f"http://127.0.0.1:{ref_port}/ref/records/{ids[0]}")
        id_list = ", ".join(f'"{i}"' for i in ids)
        auth = {"Authorization": f"Bearer {token}", "X-Purpose": "follow_up"}
        body = msgspec.json.encode(
            json.loads((ROOT / "tests" / "fixtures" / "full_record.json").read_text())
        ).decode()
        scripts = {}
        reads = [("svc_read", "/v1/records/", auth), ("ref_read", "/ref/records/", {})]
        if ext_token is not None:
            ext_auth = {"Authorization": f"Bearer {ext_token}", "X-Purpose": "follow_up"}
            reads.append(("ext_read", "/v1/records/", ext_auth))
        for name, prefix, headers in reads:
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(lua_headers(headers) + READ_LUA % (id_list, prefix))
        for name, path, headers in (
            ("svc_create", "/v1/records", auth),
            ("ref_create", "/ref/records", {}),
        ):
            scripts[name] = tmp / f"{name}.lua"
            h = {**headers, "Content-Type": "application/json"}
            body_file = tmp / "body.json"
            body_file.write_text(body, encoding="utf-8")
            # LuaJIT has no \u escapes: the body is read from a file, bytes as they are.
            load = f'local f = io.open("{body_file}", "rb")\nBODY = f:read("*a")\nf:close()\n'
            scripts[name].write_text(lua_headers(h) + load + CREATE_LUA % path)
        base = {"svc": f"http://127.0.0.1:{port}", "ref": f"http://127.0.0.1:{ref_port}"}
        if off_port is not None:
            base["off"] = f"http://127.0.0.1:{off_port}"
            scripts["off_read"] = scripts["svc_read"]
        base["ext"] = base["svc"]
        read_sides = ["ref", "svc"] + (["ext"] if ext_token else []) + (["off"] if off_port else [])
        results: dict[str, dict[str, float]] = {}
        for phase in ("read", "create"):
            for side in read_sides if phase == "read" else ("ref", "svc"):
                name = f"{side}_{phase}"
                wrk(scripts[name], base[side], 3, args.connections)  # warm-up
                before = len(vault_requests(audit_log))
                spy = None
                if args.profile and name == "svc_read":
                    spy = subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "-p",
                            str(procs[1].pid),
                            "--subprocesses",
                            "-d",
                            str(args.duration),
                            "-f",
                            "raw",
                            "-o",
                            str(RESULTS / "profile.txt"),
                        ]
                    )
                results[name] = wrk(scripts[name], base[side], args.duration, args.connections)
                if spy is not None:
                    spy.wait()
                during = vault_requests(audit_log)[before:]
                results[name]["vault_calls"] = len(during)
                # Checkpoint signatures are periodic (one per interval while the log
                # grows), not per request: counted apart.
                results[name]["vault_checkpoint_signatures"] = sum(
                    p.endswith("sign/vault-service-checkpoint") for p in during
                )
        report = {
            "server": args.server,
            "connections": args.connections,
            "duration_s": args.duration,
            "records": args.records,
            "results": results,
            "read_ratio": results["svc_read"]["rps"] / results["ref_read"]["rps"],
            "create_ratio": results["svc_create"]["rps"] / results["ref_create"]["rps"],
            "vault_calls_per_1000_reads": 1000
            * results["svc_read"]["vault_calls"]
            / results["svc_read"]["requests"],
            "vault_calls_per_1000_reads_excluding_checkpoints": 1000
            * (
                results["svc_read"]["vault_calls"]
                - results["svc_read"]["vault_checkpoint_signatures"]
            )
            / results["svc_read"]["requests"],
        }
        if "ext_read" in results:
            report["external_read_ratio"] = results["ext_read"]["rps"] / results["ref_read"]["rps"]
        if "off_read" in results:
            what = "budget" if args.budget_cost else "integrity"
            report[f"{what}_cost_p50_share"] = (
                results["svc_read"]["p50_ms"] - results["off_read"]["p50_ms"]
            ) / results["svc_read"]["p50_ms"]
            report[f"{what}_cost_throughput_share"] = 1 - (
                results["svc_read"]["rps"] / results["off_read"]["rps"]
            )
        (RESULTS / f"records-{args.server}.json").write_text(json.dumps(report, indent=2))
        print(f"{'':12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}")
        for name, r in results.items():
            print(
                f"{name:12}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['non_2xx']:>9.0f}"
            )
        print(f"read ratio (service / reference):   {report['read_ratio']:.2f}")
        if "external_read_ratio" in report:
            print(f"read ratio, external OIDC token:    {report['external_read_ratio']:.2f}")
        for what in ("budget", "integrity"):
            if f"{what}_cost_p50_share" in report:
                print(
                    f"{what} checks' share of the read p50: {report[f'{what}_cost_p50_share']:.1%}"
                    f", of read throughput: {report[f'{what}_cost_throughput_share']:.1%}"
                )
        print(f"create ratio (service / reference): {report['create_ratio']:.2f}")
        print(
            f"Vault calls per 1,000 reads:        {report['vault_calls_per_1000_reads']:.2f} "
            f"({results['svc_read']['vault_checkpoint_signatures']:.0f} checkpoint signatures; "
            f"{report['vault_calls_per_1000_reads_excluding_checkpoints']:.2f} without them)"
        )
        return 0
    finally:
        stop_all(procs, bao, pg, tmp)


if __name__ == "__main__":
    raise SystemExit(main())
