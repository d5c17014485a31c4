"""Numbered SQL migrations and the small runner that applies them.

Each `NNNN_name.sql` runs in its own transaction, under a session advisory lock
(two replicas starting at once apply each file once), with `lock_timeout` and
`statement_timeout` so a migration never queues behind a long transaction while
holding up every request. The sha256 of each applied file is recorded; a file
changed after it was applied stops the runner rather than drifting silently.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg
import structlog

from vault_service.errors import ConfigurationError

log = structlog.get_logger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent
ROLES_SQL: Final = MIGRATIONS_DIR / "roles.sql"
SNAPSHOT: Final = MIGRATIONS_DIR / "schema.snapshot"
# Arbitrary constant: the advisory lock id of vault-service migrations.
_LOCK_ID: Final = 0x7661756C74_01
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

CREATE_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED: Final = "SELECT version, name, sha256 FROM schema_migrations ORDER BY version"
INSERT_APPLIED: Final = "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(int(match[1]), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ConfigurationError("migrations must be numbered 0001, 0002, ... without gaps")
    return found


async def migrate(
    conn: asyncpg.Connection,
    migrations: list[Migration] | None = None,
    *,
    lock_timeout: str = "5s",
    statement_timeout: str = "60s",
) -> list[str]:
    """Apply pending migrations; returns the names applied. Run as the owner role."""
    todo = discover() if migrations is None else migrations
    applied_now: list[str] = []
    await conn.execute("SELECT set_config('lock_timeout', $1, false)", lock_timeout)
    await conn.execute("SELECT set_config('statement_timeout', $1, false)", statement_timeout)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(CREATE_LEDGER)
        applied = {r["version"]: r for r in await conn.fetch(SELECT_APPLIED)}
        for migration in todo:
            previous = applied.get(migration.version)
            if previous is not None:
                if previous["sha256"] != migration.sha256 or previous["name"] != migration.name:
                    raise ConfigurationError(
                        f"migration {migration.name} changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    INSERT_APPLIED, migration.version, migration.name, migration.sha256
                )
            log.info("migration_applied", migration=migration.name)
            applied_now.append(migration.name)
        unknown = set(applied) - {m.version for m in todo}
        if unknown:
            raise ConfigurationError("the database has migrations this build does not know")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied_now


# A catalogue-based description of the schema: one line per column, constraint, index
# and grant, which diffs well and covers what matters for security.
_SNAPSHOT_QUERIES: Final = (
    (
        "column",
        """SELECT c.table_name || '.' || c.column_name || ' ' || c.data_type
                  || CASE WHEN c.is_nullable = 'NO' THEN ' not null' ELSE '' END
                  || COALESCE(' default ' || c.column_default, '')
           FROM information_schema.columns c
           WHERE c.table_schema = 'public' ORDER BY 1""",
    ),
    (
        "constraint",
        """SELECT t.relname || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
           FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
           WHERE n.nspname = 'public' ORDER BY 1""",
    ),
    (
        "index",
        """SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1""",
    ),
    (
        "grant",
        """SELECT table_name || ' ' || grantee || ' ' || privilege_type
           FROM information_schema.role_table_grants
           WHERE table_schema = 'public' AND grantee LIKE 'vault_service_%'
             AND grantee <> 'vault_service_owner' ORDER BY 1""",
    ),
)

# The code in force, in full: several functions are redefined by later migrations, and a
# reader (or a reviewer of a migration's diff) should not have to replay them to find the
# body that runs. Each row is a header naming the object and PostgreSQL's own rendering of
# it. The bodies are the text as written; the lines around them are PostgreSQL's deparse,
# so a new PostgreSQL major version may ask for `make snapshot`. Sorting uses "C" so the
# order does not depend on the database's locale.
_SNAPSHOT_DEFINITIONS: Final = (
    # pg_get_functiondef refuses aggregates; the schema has none, but one added later
    # still shows up by its signature rather than breaking the snapshot.
    """SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate '
                             ELSE 'function ' END
              || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') '
              || CASE WHEN p.prosecdef THEN 'security definer' ELSE 'security invoker' END
              AS header,
              CASE WHEN p.prokind = 'a' THEN '-- an aggregate: pg_get_functiondef cannot show it'
                   ELSE rtrim(pg_get_functiondef(p.oid), E'\\n') || ';' END AS definition
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname = 'public'
       ORDER BY p.proname COLLATE "C", pg_get_function_identity_arguments(p.oid) COLLATE "C"
    """,
    # reloptions carry security_barrier / security_invoker / check_option, which change
    # whose privileges and which rows a view exposes.
    """SELECT CASE c.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END || c.relname
              AS header,
              CASE c.relkind WHEN 'm' THEN 'CREATE MATERIALIZED VIEW ' ELSE 'CREATE VIEW ' END
              || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
              || COALESCE(' WITH (' || array_to_string(c.reloptions, ', ') || ')', '')
              || E' AS\\n' || pg_get_viewdef(c.oid, true) AS definition
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
       ORDER BY c.relname COLLATE "C"
    """,
    # tgenabled is not part of pg_get_triggerdef, and a disabled trigger is a lost guard.
    """SELECT 'trigger ' || c.relname || '.' || t.tgname || ' enabled=' || t.tgenabled::text
              AS header,
              pg_get_triggerdef(t.oid) || ';' AS definition
       FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'public' AND NOT t.tgisinternal
       ORDER BY c.relname COLLATE "C", t.tgname COLLATE "C"
    """,
)


async def snapshot(conn: asyncpg.Connection) -> str:
    """The migrated schema as committed in `schema.snapshot`: lines, then definitions."""
    lines: list[str] = []
    for kind, query in _SNAPSHOT_QUERIES:
        lines.extend(f"{kind} {row[0]}" for row in await conn.fetch(query))
    for query in _SNAPSHOT_DEFINITIONS:
        for row in await conn.fetch(query):
            lines.extend(("", f"-- {row['header']}"))
            # Trailing blanks are dropped so an editor or `git diff --check` cleaning the
            # committed file does not make it differ from a fresh rendering.
            lines.extend(line.rstrip() for line in row["definition"].splitlines())
    return "\n".join(lines) + "\n"
