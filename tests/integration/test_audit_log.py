"""The access log on the real PostgreSQL (and OpenBao for checkpoints): sequencing,
one tree across processes, fail closed, database hardening, checkpoints, retention."""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Stack
from tests.unit.test_tiles import expected_tiles
from vault_service.audit import verify
from vault_service.audit.checkpoints import CheckpointPublisher
from vault_service.audit.log import (
    AccessEvent,
    AccessLog,
    InvalidAccessEvent,
    canonical_body,
    parse_leaf,
)
from vault_service.audit.merkle import leaf_hash, root_from_leaf_hashes
from vault_service.audit.note import parse_checkpoint, verify_note
from vault_service.audit.proofs import AuditProofs, load_key_set
from vault_service.audit.retention import prune
from vault_service.dev import embedded as devstack
from vault_service.errors import AuditUnavailable, ConfigurationError, InvalidParameter
from vault_service.kms import CHECKPOINT_KEY, VaultKms

pytestmark = pytest.mark.integration
ORIGIN = "vault-service.test/access-log"
REPO = Path(__file__).resolve().parents[2]


# --- helpers shared with the other audit test modules -------------------------------------
@dataclass
class AuditDb:
    """A database of its own (so that tests may lock, tamper with or freeze it)."""

    stack: Stack
    name: str

    def dsn(self, user: str | None = "vault_service_app") -> str:
        return devstack.dsn_for(self.stack.admin_dsn, user=user, database=self.name)

    async def pool(self, user: str = "vault_service_app", **kwargs: object) -> asyncpg.Pool:
        return await asyncpg.create_pool(self.dsn(user), min_size=1, max_size=4, **kwargs)

    async def superuser(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn(None))


async def new_database(stack: Stack) -> AuditDb:
    name = f"vs_audit_{secrets.token_hex(4)}"
    await devstack.bootstrap_database(stack.admin_dsn, name)
    await devstack.migrate_database(stack.admin_dsn, name)
    return AuditDb(stack, name)


async def drop_database(db: AuditDb) -> None:
    conn = await asyncpg.connect(db.stack.admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
    finally:
        await conn.close()


def event(actor: uuid.UUID | None = None, *records: uuid.UUID, **kw: object) -> AccessEvent:
    fields: dict[str, object] = {
        "action": "record.read",
        "outcome": "allowed",
        "actor_id": actor or uuid.uuid4(),
        "role": "counsellor",
        "structure_id": uuid.uuid4(),
        "record_ids": records or (uuid.uuid4(),),
        "fields": ("birth_name", "first_names"),
        "purpose": "follow_up",
        "request_id": "req-" + secrets.token_hex(6),
        "token_jti": uuid.uuid4(),
    }
    fields.update(kw)
    return AccessEvent(**fields)  # type: ignore[arg-type]


async def check_tree(conn: asyncpg.Connection) -> tuple[int, bytes]:
    """The stored tree against a from-scratch recomputation: consecutive indexes, leaf
    hashes, tiles and root."""
    rows = await conn.fetch("SELECT idx, leaf, leaf_hash FROM audit_entries ORDER BY idx")
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    hashes = [leaf_hash(bytes(r["leaf"])) for r in rows]
    assert hashes == [bytes(r["leaf_hash"]) for r in rows]
    state = await conn.fetchrow("SELECT size, root FROM audit_tree_state")
    assert state["size"] == len(rows)
    assert bytes(state["root"]) == root_from_leaf_hashes(hashes)
    tiles = {
        (r["level"], r["idx"]): bytes(r["hashes"])
        for r in await conn.fetch("SELECT level, idx, hashes FROM audit_tiles")
    }
    assert tiles == expected_tiles(hashes)
    return len(rows), bytes(state["root"])


@pytest.fixture(scope="module")
async def db(stack: Stack) -> AsyncIterator[AuditDb]:
    database = await new_database(stack)
    yield database
    await drop_database(database)


@pytest.fixture
async def pool(db: AuditDb) -> AsyncIterator[asyncpg.Pool]:
    p = await db.pool()
    yield p
    await p.close()


@pytest.fixture
async def access_log(pool: asyncpg.Pool) -> AsyncIterator[AccessLog]:
    log = AccessLog(pool, max_batch=64, lock_timeout=1.0)
    await log.start()
    yield log
    await log.stop()


# --- sequencing ---------------------------------------------------------------------------
async def test_concurrent_appends_batch_into_one_consistent_tree(db: AuditDb, access_log) -> None:
    before = access_log.batches
    indexes = await asyncio.gather(*(access_log.append(event()) for _ in range(700)))
    assert len(set(indexes)) == 700
    assert sorted(indexes) == list(range(min(indexes), min(indexes) + 700))
    # Batching happened (no one-transaction-per-entry), and max_batch was respected.
    assert 11 <= access_log.batches - before < 700
    conn = await db.superuser()
    try:
        size, _ = await check_tree(conn)
        assert size >= 700
    finally:
        await conn.close()


async def test_two_sequencers_in_one_process_take_turns(db: AuditDb, pool) -> None:
    """The one-statement path is taken only while a sequencer was the last to append,
    and a batch laid out on top of one still in flight is written only if the head it
    was laid out on is still the head, size AND root: another sequencer may well have
    appended exactly as many entries meanwhile (this test found that). Otherwise the
    statement writes nothing and the locked path takes over. Either way: one tree."""
    first, second = AccessLog(pool, max_batch=16), AccessLog(pool, max_batch=16)
    await first.start()
    await second.start()
    try:
        for log in (first, second):
            await log.append(event())
            await log.append(event())
        assert first.fast_batches >= 1 and second.fast_batches >= 1
        for _ in range(5):
            results = await asyncio.gather(
                *(log.append(event()) for _ in range(300) for log in (first, second))
            )
            assert len(set(results)) == 600
        assert first.batches - first.fast_batches >= 2  # it lost the head at least once
    finally:
        await first.stop()
        await second.stop()
    conn = await db.superuser()
    try:
        await check_tree(conn)
    finally:
        await conn.close()


async def test_entry_is_stored_as_leaf_and_salted_body(db: AuditDb, access_log) -> None:
    actor, record = uuid.uuid4(), uuid.uuid4()
    index = await access_log.append(
        event(actor, record, criteria=("birth_name",), action="record.search")
    )
    conn = await db.superuser()
    try:
        row = await conn.fetchrow(
            "SELECT e.leaf, b.salt, b.body::text AS body, b.at FROM audit_entries e "
            "JOIN audit_bodies b USING (idx) WHERE idx = $1",
            index,
        )
    finally:
        await conn.close()
    leaf = parse_leaf(bytes(row["leaf"]))
    assert leaf.index == index
    assert leaf.at == row["at"]
    import hashlib

    assert hashlib.sha256(bytes(row["salt"]) + canonical_body(row["body"])).digest() == (
        leaf.body_hash
    )
    body = json.loads(row["body"])
    assert body["v"] == 1
    assert body["actor_id"] == str(actor)
    assert body["record_ids"] == [str(record)]
    assert body["criteria"] == ["birth_name"]
    assert body["action"] == "record.search"


async def test_append_many_commits_together_with_consecutive_indexes(access_log) -> None:
    others = [asyncio.ensure_future(access_log.append(event())) for _ in range(100)]
    group = await access_log.append_many([event() for _ in range(150)])
    await asyncio.gather(*others)
    assert group == list(range(group[0], group[0] + 150))


@pytest.mark.parametrize(
    "bad",
    [
        {"action": "Record Read"},
        {"action": "read"},
        {"outcome": "maybe"},
        {"role": "Counsellor"},
        {"purpose_detail": "line\nbreak"},
        {"fields": ("birth_name", "Jean Dupont")},
        {"criteria": ("1 80 01 75 123 456 78",)},
        {"request_id": "x"},
        {"record_ids": ("3f1c0c4e-0000-0000-0000-000000000000",)},
    ],
)
async def test_values_are_refused_before_anything_is_stored(access_log, bad) -> None:
    with pytest.raises(InvalidAccessEvent) as info:
        await access_log.append(event(**bad))
    # The error names the member, never the content.
    for value in bad.values():
        assert str(value) not in str(info.value)


async def test_append_before_start_or_after_stop_fails_closed(pool) -> None:
    log = AccessLog(pool)
    with pytest.raises(AuditUnavailable):
        await log.append(event())
    await log.start()
    assert await log.append(event()) >= 0
    await log.stop()
    with pytest.raises(AuditUnavailable):
        await log.append(event())


async def test_refuses_to_start_without_durable_commits(db: AuditDb) -> None:
    pool = await db.pool(server_settings={"synchronous_commit": "off"})
    try:
        with pytest.raises(ConfigurationError):
            await AccessLog(pool).start()
    finally:
        await pool.close()


# --- several processes, one tree --------------------------------------------------------------
_WRITER = """
import asyncio, json, sys, time, uuid
import asyncpg
from vault_service.audit.log import AccessEvent, AccessLog

async def main(dsn, count, writers, start_at):
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    log = AccessLog(pool, max_batch=32)
    await log.start()
    while time.time() < start_at:
        await asyncio.sleep(0.005)
    out = []
    async def writer():
        for _ in range(count // writers):
            out.append(await log.append(AccessEvent(
                action="record.read", outcome="allowed", actor_id=uuid.uuid4(),
                role="counsellor", structure_id=None, record_ids=(uuid.uuid4(),))))
    await asyncio.gather(*(writer() for _ in range(writers)))
    await log.stop()
    await pool.close()
    print(json.dumps({"indexes": out, "batches": log.batches}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
"""


async def test_two_processes_append_one_tree_without_gap_or_duplicate(stack: Stack) -> None:
    database = await new_database(stack)
    try:
        start_at = time.time() + 1.5  # both interpreters up and connected before it
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _WRITER,
                database.dsn(),
                "1500",
                "30",
                str(start_at),
                stdout=asyncio.subprocess.PIPE,
                cwd=REPO,
            )
            for _ in range(2)
        ]
        outputs = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        results = [json.loads(out) for out, _ in outputs]
        first, second = (set(r["indexes"]) for r in results)
        assert len(first) == len(second) == 1500
        assert not first & second
        assert first | second == set(range(3000))
        # They really interleaved: each process's batches fall between the other's.
        assert min(first) < max(second) and min(second) < max(first)
        assert all(r["batches"] < 1500 for r in results)
        conn = await database.superuser()
        try:
            size, _ = await check_tree(conn)
        finally:
            await conn.close()
        assert size == 3000
    finally:
        await drop_database(database)


# --- fail closed ---------------------------------------------------------------------------------
async def test_locked_tree_fails_closed_then_recovers(db: AuditDb, pool) -> None:
    log = AccessLog(pool, lock_timeout=0.3)
    await log.start()
    try:
        blocker = await db.superuser()
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE audit_tree_state IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                with pytest.raises(AuditUnavailable):
                    await log.append(event())
                assert time.monotonic() - started < 3
        finally:
            await blocker.close()
        assert await log.append(event()) >= 0  # the log works again once unblocked
    finally:
        await log.stop()
    conn = await db.superuser()
    try:
        await check_tree(conn)
    finally:
        await conn.close()


async def test_read_only_database_fails_closed(stack: Stack) -> None:
    database = await new_database(stack)
    try:
        owner = await asyncpg.connect(database.dsn("vault_service_owner"))
        try:
            await owner.execute(
                f'ALTER DATABASE "{database.name}" SET default_transaction_read_only = on'
            )
        finally:
            await owner.close()
        pool = await database.pool()
        log = AccessLog(pool, lock_timeout=1.0)
        await log.start()
        try:
            results = await asyncio.gather(
                *(log.append(event()) for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, AuditUnavailable) for r in results)
        finally:
            await log.stop()
            await pool.close()
        conn = await database.superuser()
        try:
            assert await conn.fetchval("SELECT count(*) FROM audit_entries") == 0
        finally:
            await conn.close()
    finally:
        await drop_database(database)


# --- database hardening ----------------------------------------------------------------------
_TRIGGER = "append-only|only grow|retention job"


async def test_privileges_and_triggers(db: AuditDb, access_log) -> None:
    index = await access_log.append(event())
    app = await asyncpg.connect(db.dsn("vault_service_app"))
    auditor = await asyncpg.connect(db.dsn("vault_service_auditor"))
    retention = await asyncpg.connect(db.dsn("vault_service_retention"))
    owner = await asyncpg.connect(db.dsn("vault_service_owner"))
    superuser = await db.superuser()
    try:
        for conn in (app, auditor, retention):
            for statement in (
                "UPDATE audit_entries SET leaf = leaf WHERE idx = $1",
                "DELETE FROM audit_entries WHERE idx = $1",
                "DELETE FROM audit_tiles WHERE idx = $1",
                "DELETE FROM audit_checkpoints WHERE size = $1",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement, index)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("TRUNCATE audit_entries")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("UPDATE audit_bodies SET body = body WHERE idx = $1", index)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DELETE FROM audit_bodies WHERE idx = $1", index)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auditor.execute(
                "INSERT INTO audit_checkpoints (size, root, key_version, note) "
                "VALUES (999999, sha256(''::bytea), 1, 'x')"
            )
        assert await auditor.fetchval("SELECT count(*) FROM audit_bodies") > 0
        # Retention may delete bodies, but the trigger keeps recent ones.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=_TRIGGER):
            await retention.execute("DELETE FROM audit_bodies WHERE idx = $1", index)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await retention.execute("UPDATE audit_bodies SET at = at WHERE idx = $1", index)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await retention.fetch("SELECT body FROM audit_bodies LIMIT 1")
        # Owner and superuser are stopped by the triggers (speed bumps, not guarantees).
        for conn in (owner, superuser):
            for statement in (
                "UPDATE audit_entries SET leaf = leaf WHERE idx = $1",
                "DELETE FROM audit_entries WHERE idx = $1",
                "UPDATE audit_bodies SET body = body WHERE idx = $1",
                "DELETE FROM audit_bodies WHERE idx = $1",
                "UPDATE audit_tree_state SET size = 0 WHERE id = 1 AND $1::bigint >= 0",
                "UPDATE audit_tiles SET hashes = sha256(''::bytea) WHERE idx = 0 AND $1::bigint >= 0",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match=_TRIGGER):
                    await conn.execute(statement, index)
            for table in ("audit_entries", "audit_bodies", "audit_tiles", "audit_tree_state"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match=_TRIGGER):
                    await conn.execute(f"TRUNCATE {table} CASCADE")
        # ...even in replica mode, which silences ordinary triggers.
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=_TRIGGER):
                await superuser.execute("DELETE FROM audit_entries WHERE idx = $1", index)
        enabled = await superuser.fetch(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal "
            "AND tgrelid::regclass::text LIKE 'audit_%'"
        )
        # Ten on the tree's tables, two on the pending queue (no UPDATE, no TRUNCATE),
        # two on the quarantine (no UPDATE or DELETE, no TRUNCATE).
        assert len(enabled) == 14
        assert {r["tgenabled"] for r in enabled} == {b"A"}
    finally:
        for conn in (app, auditor, retention, owner, superuser):
            await conn.close()


# --- checkpoints -------------------------------------------------------------------------------
async def test_checkpoint_leader_publishes_signed_consistent_checkpoints(
    stack: Stack, db: AuditDb, pool, access_log
) -> None:
    kms = VaultKms(stack.settings().vault)
    other_pool = await db.pool()
    first = CheckpointPublisher(pool, kms, ORIGIN, interval_seconds=0.05)
    second = CheckpointPublisher(other_pool, kms, ORIGIN, interval_seconds=0.05)
    try:
        await access_log.append(event())
        assert await first.try_lead()
        assert not await second.try_lead()  # one leader per database
        note = await first.publish_once()
        assert note is not None
        assert await first.publish_once() is None  # the tree did not grow
        keys = await load_key_set(kms, ORIGIN)
        checkpoint = parse_checkpoint(verify_note(note, keys.verifiers()))
        conn = await db.superuser()
        try:
            size, root = await check_tree(conn)
        finally:
            await conn.close()
        assert (checkpoint.size, checkpoint.root) == (size, root)
        assert await second.latest() == note

        # The background task publishes as the tree grows; on stop the leader resigns
        # and the other publisher can take over.
        await first.start()
        await access_log.append(event())
        for _ in range(100):
            latest = await first.latest()
            if latest and parse_checkpoint(verify_note(latest, keys.verifiers())).size > size:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the leader did not publish")
        await first.stop()
        assert await second.try_lead()
    finally:
        await first.stop()
        await second.stop()
        await other_pool.close()
        kms.close()


async def test_key_rotation_keeps_old_checkpoints_verifiable(
    stack: Stack, db: AuditDb, pool, access_log, tmp_path: Path
) -> None:
    kms = VaultKms(stack.settings().vault)
    publisher = CheckpointPublisher(pool, kms, ORIGIN)
    proofs = AuditProofs(pool, kms, ORIGIN)
    try:
        await access_log.append(event())
        old_note = await publisher.publish_once()
        assert old_note is not None
        stack.bao.client().secrets.transit.rotate_key(name=CHECKPOINT_KEY)
        await access_log.append(event())
        new_note = await (await _fresh(publisher)).publish_once()
        assert new_note is not None
        keys = await proofs.keys()
        assert len(keys.keys) >= 2
        old_id = old_note.rsplit(" ", 1)[1]
        new_id = new_note.rsplit(" ", 1)[1]
        assert old_id[:6] != new_id[:6]  # another key id (first 4 bytes of the signature)
        import msgspec

        (tmp_path / "keys.json").write_bytes(msgspec.json.encode(keys))
        for name, note in (("old", old_note), ("new", new_note)):
            (tmp_path / f"{name}.txt").write_text(note)
            report = verify.run(keys=tmp_path / "keys.json", checkpoint=tmp_path / f"{name}.txt")
            assert report.passed, report.failures
    finally:
        kms.close()


async def _fresh(publisher: CheckpointPublisher) -> CheckpointPublisher:
    await publisher.key_set(refresh=True)  # the rotation is seen at once, not in a minute
    return publisher


# --- retention -----------------------------------------------------------------------------------
async def test_retention_prunes_old_bodies_keeps_the_tree_and_logs_itself(
    db: AuditDb, pool, access_log
) -> None:
    forty_days_ago = time.time_ns() // 1000 - 40 * 86_400_000_000
    old_log = AccessLog(pool, clock=lambda: forty_days_ago)
    await old_log.start()
    try:
        old = await old_log.append_many([event() for _ in range(5)])
    finally:
        await old_log.stop()
    recent = await access_log.append(event())

    retention = await asyncpg.connect(db.dsn("vault_service_retention"))
    try:
        with pytest.raises(InvalidParameter):
            await prune(retention, datetime.timedelta(days=1))
        count = await prune(retention, datetime.timedelta(days=35))
    finally:
        await retention.close()
    assert count >= 5

    conn = await db.superuser()
    try:
        remaining = {r["idx"] for r in await conn.fetch("SELECT idx FROM audit_bodies")}
        assert not set(old) & remaining
        assert recent in remaining
        size, _ = await check_tree(conn)  # leaves and tree untouched
        logged = await conn.fetchval(
            "SELECT body::text FROM audit_bodies WHERE body ->> 'action' = 'audit.pruned' "
            "ORDER BY idx DESC LIMIT 1"
        )
    finally:
        await conn.close()
    body = json.loads(logged)
    assert body["role"] == "retention"
    assert body["purpose_detail"].startswith(f"{count} bodies before ")

    # Pruned entries stay verifiable: the bundle shows them without body or salt.
    proofs = AuditProofs(pool, None, ORIGIN)
    bundle = await proofs.bundle(old[0], old[-1] + 1, size)
    assert all(e.salt is None and bytes(e.body) == b"null" for e in bundle.entries)
