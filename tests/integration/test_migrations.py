"""Migrations: the migrated schema matches the committed snapshot; the runner is safe."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Stack
from vault_service import migrations
from vault_service.dev import embedded as devstack
from vault_service.errors import ConfigurationError

pytestmark = pytest.mark.integration


async def test_schema_matches_snapshot(stack: Stack, owner: asyncpg.Connection) -> None:
    current = await migrations.snapshot(owner)
    if os.environ.get("VAULT_SERVICE_UPDATE_SNAPSHOT") == "1":
        migrations.SNAPSHOT.write_text(current, encoding="utf-8")
    expected = migrations.SNAPSHOT.read_text(encoding="utf-8")
    assert current == expected, (
        "schema drifted from vault_service/migrations/schema.snapshot; "
        "run `make snapshot` after adding a migration"
    )


# The schema has no view yet, so the snapshot's view rendering is exercised on these,
# created inside a transaction that is rolled back.
CREATE_PROBE_VIEW = """
CREATE VIEW vs_snapshot_probe WITH (security_barrier = true) AS
    SELECT id, structure_id FROM records
"""
CREATE_PROBE_MATERIALIZED_VIEW = """
CREATE MATERIALIZED VIEW vs_snapshot_probe_counts AS
    SELECT structure_id, count(*) AS n FROM records GROUP BY structure_id WITH NO DATA
"""


async def test_snapshot_holds_definitions(stack: Stack, owner: asyncpg.Connection) -> None:
    transaction = owner.transaction()
    await transaction.start()
    try:
        await owner.execute(CREATE_PROBE_VIEW)
        await owner.execute(CREATE_PROBE_MATERIALIZED_VIEW)
        current = await migrations.snapshot(owner)
    finally:
        await transaction.rollback()
    blocks = {block.partition("\n")[0]: block for block in current.split("\n\n-- ")[1:]}
    view = blocks["view vs_snapshot_probe"]
    assert "CREATE VIEW public.vs_snapshot_probe WITH (security_barrier=true) AS" in view
    assert "FROM records;" in view
    counts = blocks["materialized view vs_snapshot_probe_counts"]
    assert "CREATE MATERIALIZED VIEW public.vs_snapshot_probe_counts AS" in counts
    assert "GROUP BY structure_id;" in counts
    # Redefined by three migrations: the body shown is the last one's (identity links).
    decide = next(
        text for name, text in blocks.items() if name.startswith("function vs_decide_request(")
    )
    assert "SECURITY DEFINER" in decide
    assert "ELSIF p_approve AND req.kind = 'unlink' THEN" in decide
    assert decide.rstrip().endswith("$function$;")
    assert "-- trigger records.records_created_at_fixed enabled=O" in current


async def test_runner_is_idempotent_and_checks_checksums(stack: Stack, tmp_path: Path) -> None:
    database = f"vs_mig_{secrets.token_hex(3)}"
    await devstack.bootstrap_database(stack.admin_dsn, database)
    conn = await asyncpg.connect(
        devstack.dsn_for(stack.admin_dsn, user="vault_service_owner", database=database)
    )
    try:
        found = migrations.discover()
        assert await migrations.migrate(conn, found) == [m.name for m in found]
        assert await migrations.migrate(conn, found) == []  # nothing twice
        # An applied file edited afterwards stops the runner.
        edited = [
            migrations.Migration(found[0].version, found[0].name, found[0].sql + "\n-- edit")
        ] + found[1:]
        with pytest.raises(ConfigurationError):
            await migrations.migrate(conn, edited)
        # A failing migration leaves nothing behind: one transaction per file.
        broken = [
            *found,
            migrations.Migration(
                len(found) + 1, "9999_broken.sql", "CREATE TABLE half_done (id int); SELECT 1/0;"
            ),
        ]
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrations.migrate(conn, broken)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == len(found)
    finally:
        await conn.close()
        admin = await asyncpg.connect(stack.admin_dsn)
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        await admin.close()


def test_discover_refuses_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0003_c.sql").write_text("SELECT 1")
    with pytest.raises(ConfigurationError):
        migrations.discover(tmp_path)


async def test_application_role_cannot_do_ddl_or_touch_foreign_tables(stack: Stack) -> None:
    app = await asyncpg.connect(stack.dsn("vault_service_app"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("CREATE TABLE sneaky (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DROP TABLE records")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("UPDATE accounts SET role = 'admin'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DELETE FROM records")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("SELECT count(*) FROM schema_migrations")
    finally:
        await app.close()
