"""Sequencing apart from integration: entries durable in the pending queue, moved into
the tree by one leader, never twice, never lost, and one bad row never stops the tree."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import Stack
from tests.integration.test_audit_log import AuditDb, check_tree, drop_database, event, new_database
from vault_service.audit.entry import prepare_stored
from vault_service.audit.integrator import Integrator
from vault_service.audit.log import AccessLog
from vault_service.audit.sequencer import Sequencer

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
