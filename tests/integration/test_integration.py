"""Sequencing apart from integration: entries durable in the pending queue, moved into
the tree by one leader, never twice, never lost, and one bad row never stops the tree."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest
from asyncpg.transaction import Transaction

from tests.conftest import Captured, Stack
from tests.integration.test_audit_log import AuditDb, check_tree, drop_database, event, new_database
from vault_service.access.sequencer import Sequencer
from vault_service.app import create_app
from vault_service.audit.entry import prepare_stored
from vault_service.audit.integrator import Integrator
from vault_service.audit.log import AccessLog

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[AuditDb]:
    database = await new_database(stack)
    yield database
    await drop_database(database)


async def test_sequenced_entries_reach_the_tree_once_each(db: AuditDb) -> None:
    pool = await db.pool()
    tree = AccessLog(pool, max_batch=64)
    await tree.start()
    integrator = Integrator(pool, tree, batch=50, poll_seconds=0.01)
    sequencer = Sequencer(pool, on_commit=integrator.wake)
    sequencer.start()
    try:
        await integrator.start()
        await asyncio.gather(*(sequencer.commit(event()) for _ in range(300)))
        await integrator.settle(within=10)
        async with pool.acquire() as conn:
            size, _ = await check_tree(conn)
            assert size == 300
            assert await conn.fetchval("SELECT count(*) FROM audit_pending") == 0
            bodies = await conn.fetch("SELECT body->>'request_id' AS r FROM audit_bodies")
            assert len({b["r"] for b in bodies}) == 300  # each entry exactly once
    finally:
        await sequencer.stop()
        await integrator.stop()
        await tree.stop()
        await pool.close()


async def test_a_batch_whose_entries_are_no_longer_pending_appends_nothing(db: AuditDb) -> None:
    """Two integrators holding the same pending rows (a leader that lost its session
    mid-batch, and its successor): the second append fails whole."""
    pool = await db.pool()
    tree = AccessLog(pool, max_batch=64)
    await tree.start()
    sequencer = Sequencer(pool)
    sequencer.start()
    try:
        await asyncio.gather(*(sequencer.commit(event()) for _ in range(5)))
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, salt, body FROM audit_pending ORDER BY id")
        prepared = [prepare_stored(r["id"], bytes(r["salt"]), r["body"]) for r in rows]
        assert len(await tree.append_prepared(prepared)) == 5
        with pytest.raises(Exception):  # noqa: B017 - AuditUnavailable from the writer
            await tree.append_prepared(prepared)
        async with pool.acquire() as conn:
            size, _ = await check_tree(conn)
            assert size == 5
    finally:
        await sequencer.stop()
        await tree.stop()
        await pool.close()


async def test_a_row_that_is_not_an_entry_is_quarantined_and_the_tree_moves_on(
    db: AuditDb, stack: Stack
) -> None:
    pool = await db.pool()
    tree = AccessLog(pool, max_batch=64)
    await tree.start()
    integrator = Integrator(pool, tree, poll_seconds=0.01)
    sequencer = Sequencer(pool, on_commit=integrator.wake)
    sequencer.start()
    app = await asyncpg.connect(db.dsn("vault_service_app"))
    try:
        await sequencer.commit(event())
        # What only a holder of the service's credentials could write: not an entry.
        await app.execute(
            "INSERT INTO audit_pending (salt, body) VALUES ($1, $2)", b"\x00" * 32, '{"x": 1}'
        )
        await sequencer.commit(event())
        await integrator.start()
        await integrator.settle(within=10)
        async with pool.acquire() as conn:
            size, _ = await check_tree(conn)
            assert size == 2
        superuser = await db.superuser()
        try:
            assert await superuser.fetchval("SELECT count(*) FROM audit_quarantine") == 1
        finally:
            await superuser.close()
        # Kept for auditors, and the service's role cannot erase it.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DELETE FROM audit_quarantine")
    finally:
        await app.close()
        await sequencer.stop()
        await integrator.stop()
        await tree.stop()
        await pool.close()


async def _waiting_appends(conn: asyncpg.Connection) -> int:
    """Statements waiting for the tree lock (asked outside a transaction: inside one,
    pg_stat_activity answers from a snapshot taken at its first read)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%audit_tree_state%'"
        )
    )


async def _release_after(seconds: float, lock: Transaction) -> None:
    await asyncio.sleep(seconds)
    await lock.rollback()


async def test_stopping_the_integrate_process_mid_batch_appends_everything_once(
    db: AuditDb, stack: Stack
) -> None:
    """SIGTERM reaches `vault-service audit integrate` while a batch of its is still
    waiting for the tree lock. It must let that batch land before it reads the queue
    again for its last round: those rows are still pending until the batch commits,
    and appending them a second time fails that whole batch (logged as
    audit_append_failed, with the privilege error of the tree's growth trigger)."""
    count = 40
    pool = await db.pool()
    sequencer = Sequencer(pool)
    sequencer.start()
    blocker, watcher = await db.superuser(), await db.superuser()
    proc: subprocess.Popen[str] | None = None
    try:
        await asyncio.gather(*(sequencer.commit(event()) for _ in range(count)))
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT size FROM audit_tree_state WHERE id = 1 FOR UPDATE")
        env = stack.service_env(database_url=db.dsn("vault_service_app"), log_level="WARNING")
        proc = subprocess.Popen(  # noqa: ASYNC220 - a process of its own, as deployed
            [sys.executable, "-m", "vault_service.cli", "audit", "integrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Its first batch is sent and waits for the lock held here.
        for _ in range(200):
            if await _waiting_appends(watcher) == 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the integrator never sent a batch")
        proc.send_signal(signal.SIGTERM)
        # Long enough for a last round to read the queue and send its own batch.
        await asyncio.sleep(0.5)
        await lock.rollback()
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, stderr
        assert "audit_append_failed" not in stderr
        assert "InsufficientPrivilege" not in stderr
        async with pool.acquire() as conn:
            size, _ = await check_tree(conn)
            assert size == count
            assert await conn.fetchval("SELECT count(*) FROM audit_pending") == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await blocker.close()
        await watcher.close()
        await sequencer.stop()
        await pool.close()


async def test_the_service_stopping_mid_batch_appends_everything_once(
    db: AuditDb, stack: Stack, captured: Captured
) -> None:
    """The same stop, in the service's own lifespan (its integrator leads when no
    dedicated process runs): the last entries its requests sequenced are in the tree,
    once each, and nothing is logged as failed."""
    count = 40
    app = create_app(stack.settings(database_url=db.dsn("vault_service_app")))
    blocker, watcher = await db.superuser(), await db.superuser()
    logged = len(captured.logs.getvalue())
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT size FROM audit_tree_state WHERE id = 1 FOR UPDATE")
        async with app.lifespan():
            sequencer = app.state.sequencer
            events = [event() for _ in range(count)]
            await asyncio.gather(*(sequencer.commit(e) for e in events))
            for _ in range(200):
                if await _waiting_appends(watcher) == 1:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the integrator never sent a batch")
            # Shutdown starts now; the batch in flight lands half a second later.
            release = asyncio.create_task(_release_after(0.5, lock))
        await release
        await check_tree(watcher)
        assert await watcher.fetchval("SELECT count(*) FROM audit_pending") == 0
        # The service logs acts of its own beside these (its stats rebuild): ours are each
        # in exactly once.
        ids = await watcher.fetchval(
            "SELECT array_agg(body->>'request_id') FROM audit_bodies WHERE body->>'request_id' = ANY ($1::text[])",
            [e.request_id for e in events],
        )
        assert sorted(ids) == sorted(e.request_id for e in events)
        log = captured.logs.getvalue()[logged:]
        assert "audit_append_failed" not in log
        assert "InsufficientPrivilege" not in log
    finally:
        await blocker.close()
        await watcher.close()
