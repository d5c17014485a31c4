"""Tampering as a PostgreSQL superuser, caught by the offline verifier holding an
earlier checkpoint (and, where it can, by the checkpoint publisher refusing to sign).

Each test gets a database of its own: tampering is irreversible."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec
import pytest

from tests.conftest import Stack
from tests.integration.test_audit_log import AuditDb, drop_database, event, new_database
from tests.unit.test_tiles import expected_tiles
from vault_service.alerts.store import Alerts
from vault_service.audit import verify
from vault_service.audit.checkpoints import CheckpointPublisher, CheckpointRefused
from vault_service.audit.log import AccessLog
from vault_service.audit.merkle import root_from_leaf_hashes
from vault_service.audit.proofs import AuditProofs
from vault_service.kms import VaultKms
from vault_service.kms.vault import ANCHOR_MOUNT, ANCHOR_PATH

pytestmark = pytest.mark.integration
ORIGIN = "vault-service.test/tamper"
SIZE = 300


@dataclass
class Scene:
    db: AuditDb
    log: AccessLog
    publisher: CheckpointPublisher
    proofs: AuditProofs
    superuser: asyncpg.Connection
    files: Path
    stack: Stack
    origin: str

    def save(self, name: str, value: object) -> Path:
        path = self.files / name
        if isinstance(value, str):
            path.write_text(value, encoding="utf-8")
        else:
            path.write_bytes(msgspec.json.encode(value))
        return path

    async def download_checkpoint(self, name: str) -> Path:
        _, note = await self.proofs.checkpoint()
        return self.save(name, note)

    async def download_bundle(self, name: str, start: int = 0, end: int | None = None) -> Path:
        return self.save(name, await self.proofs.bundle(start, end))

    def verify(self, checkpoint: Path, **files: list[Path]) -> verify.Report:
        return verify.run(
            keys=self.files / "keys.json",
            checkpoint=checkpoint,
            state=self.files / "state.json",
            **files,  # type: ignore[arg-type]
        )

    async def forge_tree(self) -> None:
        """What a careful attacker does after editing entries: recompute every tile
        and the tree head so that the database is self-consistent again."""
        su = self.superuser
        rows = await su.fetch("SELECT leaf_hash FROM audit_entries ORDER BY idx")
        hashes = [bytes(r["leaf_hash"]) for r in rows]
        async with su.transaction():
            await su.execute("ALTER TABLE audit_tiles DISABLE TRIGGER audit_tiles_guard")
            await su.execute("ALTER TABLE audit_tree_state DISABLE TRIGGER audit_tree_state_guard")
            await su.execute("DELETE FROM audit_tiles")
            await su.executemany(
                "INSERT INTO audit_tiles (level, idx, hashes) VALUES ($1, $2, $3)",
                [(level, idx, data) for (level, idx), data in expected_tiles(hashes).items()],
            )
            await su.execute(
                "UPDATE audit_tree_state SET size = $1, root = $2",
                len(hashes),
                root_from_leaf_hashes(hashes),
            )
            await su.execute("ALTER TABLE audit_tiles ENABLE ALWAYS TRIGGER audit_tiles_guard")
            await su.execute(
                "ALTER TABLE audit_tree_state ENABLE ALWAYS TRIGGER audit_tree_state_guard"
            )

    async def restart_log(self) -> None:
        """A restart of the service after the forgery (a running sequencer keeps the
        right edge of the tree it last wrote in memory, and would write on the genuine
        edge, which the publisher would then refuse as a root mismatch)."""
        await self.log.stop()
        self.log = AccessLog(self.log._pool, max_batch=64)
        await self.log.start()

    def forget_anchor(self) -> None:
        """An attacker who also holds Vault credentials able to write the anchor (the
        service's own, say) rolls it back too: only the auditors' copies remain."""
        client = self.stack.bao.client()
        current = client.secrets.kv.v2.read_secret_version(
            path=ANCHOR_PATH, mount_point=ANCHOR_MOUNT, raise_on_deleted_version=True
        )["data"]["data"]
        current.pop(self.origin, None)
        client.secrets.kv.v2.create_or_update_secret(
            path=ANCHOR_PATH, secret=current, mount_point=ANCHOR_MOUNT
        )

    async def erase_checkpoints(self) -> None:
        """...and removes the checkpoints the service could compare against."""
        su = self.superuser
        async with su.transaction():
            await su.execute(
                "ALTER TABLE audit_checkpoints DISABLE TRIGGER audit_checkpoints_no_change"
            )
            await su.execute("DELETE FROM audit_checkpoints")
            await su.execute(
                "ALTER TABLE audit_checkpoints ENABLE ALWAYS TRIGGER audit_checkpoints_no_change"
            )


@pytest.fixture
async def scene(stack: Stack, tmp_path: Path) -> AsyncIterator[Scene]:
    db = await new_database(stack)
    pool = await db.pool()
    kms = VaultKms(stack.settings().vault)
    log = AccessLog(pool, max_batch=64)
    await log.start()
    superuser = await db.superuser()
    # A log of its own for each test (a new database): its own anchor in OpenBao.
    origin = f"{ORIGIN}-{uuid.uuid4().hex[:8]}"
    scene = Scene(
        db=db,
        log=log,
        publisher=CheckpointPublisher(pool, kms, origin, on_alert=Alerts(pool).critical),
        proofs=AuditProofs(pool, kms, origin),
        superuser=superuser,
        files=tmp_path,
        stack=stack,
        origin=origin,
    )
    try:
        # The auditor's earlier visit: a verified checkpoint of SIZE entries, remembered.
        await log.append_many([event() for _ in range(SIZE)])
        assert await scene.publisher.publish_once() is not None
        scene.save("keys.json", await scene.proofs.keys())
        first = await scene.download_checkpoint("c1.txt")
        bundle = await scene.download_bundle("b1.json")
        report = scene.verify(first, bundles=[bundle])
        assert report.passed, report.failures
        assert (tmp_path / "state.json").exists()
        yield scene
    finally:
        await scene.log.stop()
        await superuser.close()
        await pool.close()
        kms.close()
        await drop_database(db)


async def test_untampered_log_verifies_across_checkpoints(scene: Scene, capsys) -> None:
    await scene.log.append_many([event() for _ in range(50)])
    assert await scene.publisher.publish_once() is not None
    second = await scene.download_checkpoint("c2.txt")
    consistency = scene.save("k.json", await scene.proofs.consistency(SIZE))
    bundles = [
        await scene.download_bundle("b2a.json", 0, 123),
        await scene.download_bundle("b2b.json", 123, 350),
    ]
    inclusion = scene.save("i.json", await scene.proofs.inclusion(7))
    code = verify.main(
        [
            "--keys",
            str(scene.files / "keys.json"),
            "--checkpoint",
            str(second),
            "--state",
            str(scene.files / "state.json"),
            "--consistency",
            str(consistency),
            "--bundle",
            str(bundles[0]),
            "--bundle",
            str(bundles[1]),
            "--inclusion",
            str(inclusion),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "verified" in out.out
    state = msgspec.json.decode((scene.files / "state.json").read_bytes())
    assert state["size"] == SIZE + 50


async def test_changed_body_is_reported(scene: Scene, capsys) -> None:
    su = scene.superuser
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await su.execute("UPDATE audit_bodies SET body = body WHERE idx = 42")
    # The superuser silences the trigger and erases a record from entry 42's body.
    await su.execute("ALTER TABLE audit_bodies DISABLE TRIGGER audit_bodies_guard")
    await su.execute(
        "UPDATE audit_bodies SET body = jsonb_set(body, '{record_ids}', '[]') WHERE idx = 42"
    )
    checkpoint = await scene.download_checkpoint("c.txt")
    bundle = await scene.download_bundle("b.json")
    inclusion = scene.save("i.json", await scene.proofs.inclusion(42))
    report = scene.verify(checkpoint, bundles=[bundle], inclusions=[inclusion])
    assert not report.passed
    assert any("TAMPERED: entry 42" in f for f in report.failures[:1]), report.failures
    assert any("i.json" in f and "entry 42" in f for f in report.failures)
    assert len(report.failures) == 2  # nothing else is blamed

    code = verify.main(
        [
            "--keys",
            str(scene.files / "keys.json"),
            "--checkpoint",
            str(checkpoint),
            "--bundle",
            str(bundle),
        ]
    )
    assert code == 1
    assert "TAMPERED: entry 42" in capsys.readouterr().err


async def test_changed_leaf_is_reported(scene: Scene) -> None:
    su = scene.superuser
    # Entry 100's leaf now commits to another body (the hash column follows, to pass
    # the table's own check).
    await su.execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_no_change")
    await su.execute(
        "UPDATE audit_entries SET leaf = overlay(leaf PLACING sha256('forged'::bytea) FROM 18), "
        "leaf_hash = sha256('\\x00'::bytea || overlay(leaf PLACING sha256('forged'::bytea) FROM 18)) "
        "WHERE idx = 100"
    )
    checkpoint = await scene.download_checkpoint("c.txt")
    report = scene.verify(checkpoint, bundles=[await scene.download_bundle("b.json")])
    assert any("TAMPERED: entry 100" in f for f in report.failures), report.failures
    assert any("MISMATCH" in f for f in report.failures), report.failures

    # A careful attacker also rewrites tiles and head: the service refuses to sign it.
    await scene.forge_tree()
    await scene.restart_log()
    await scene.log.append_many([event() for _ in range(10)])
    with pytest.raises(CheckpointRefused):
        await scene.publisher.publish_once()
    # Having erased the checkpoints, still no signature: the anchor outside the
    # database remembers the head the service signed.
    await scene.erase_checkpoints()
    with pytest.raises(CheckpointRefused, match="inconsistent_with_anchor"):
        await scene.publisher.publish_once()
    # With Vault write access as well, the attacker gets a signature, which the
    # auditor's earlier checkpoint still exposes.
    scene.forget_anchor()
    assert await scene.publisher.publish_once() is not None
    forged = await scene.download_checkpoint("forged.txt")
    consistency = scene.save("k.json", await scene.proofs.consistency(SIZE))
    report = scene.verify(forged, consistency=[consistency])
    assert not report.passed
    assert any(f.startswith("INCONSISTENT") for f in report.failures), report.failures


async def test_deleted_and_reappended_entries_are_reported(scene: Scene) -> None:
    su = scene.superuser
    # Remove the last 10 entries (say, the scraping) and rebuild the tree without them.
    async with su.transaction():
        await su.execute("ALTER TABLE audit_bodies DISABLE TRIGGER audit_bodies_guard")
        await su.execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_no_change")
        await su.execute("DELETE FROM audit_bodies WHERE idx >= $1", SIZE - 10)
        await su.execute("DELETE FROM audit_entries WHERE idx >= $1", SIZE - 10)
        await su.execute("ALTER TABLE audit_bodies ENABLE ALWAYS TRIGGER audit_bodies_guard")
        await su.execute("ALTER TABLE audit_entries ENABLE ALWAYS TRIGGER audit_entries_no_change")
    await scene.forge_tree()
    await scene.restart_log()
    # New, innocent-looking entries fill the gap and more.
    await scene.log.append_many([event() for _ in range(25)])

    # The latest checkpoint is still the auditor's: the rebuilt entries do not match it.
    with pytest.raises(CheckpointRefused):
        await scene.publisher.publish_once()
    checkpoint = await scene.download_checkpoint("c.txt")
    report = scene.verify(checkpoint, bundles=[await scene.download_bundle("b.json", 0, SIZE)])
    assert any(f.startswith("MISMATCH") for f in report.failures), report.failures

    # With the checkpoints erased, the anchor still refuses the rewritten tree...
    await scene.erase_checkpoints()
    with pytest.raises(CheckpointRefused, match="inconsistent_with_anchor"):
        await scene.publisher.publish_once()
    with pytest.raises(CheckpointRefused, match="inconsistent_with_anchor"):
        await scene.publisher.publish_once()  # every round, until an operator acts
    # Each refusal is a critical alert, once per reason.
    alerts = await scene.superuser.fetch(
        "SELECT severity, details ->> 'reason' AS reason FROM alerts"
        " WHERE kind = 'audit.checkpoint_refused' ORDER BY raised_at"
    )
    assert [(a["severity"], a["reason"]) for a in alerts] == [
        ("critical", "inconsistent_with_previous_checkpoint"),
        ("critical", "inconsistent_with_anchor"),
    ]
    # ...and with the anchor rolled back too, the service signs the new tree; the
    # auditor's state (the checkpoint of size SIZE) proves history was rewritten,
    # from a bundle alone...
    scene.forget_anchor()
    assert await scene.publisher.publish_once() is not None
    forged = await scene.download_checkpoint("forged.txt")
    bundle = await scene.download_bundle("all.json")
    report = scene.verify(forged, bundles=[bundle])
    assert any(f.startswith("INCONSISTENT") for f in report.failures), report.failures
    # ...or from a consistency proof.
    consistency = scene.save("k.json", await scene.proofs.consistency(SIZE))
    report = scene.verify(forged, consistency=[consistency])
    assert any(f.startswith("INCONSISTENT") for f in report.failures), report.failures
    # The state file was not advanced past the fork.
    state = msgspec.json.decode((scene.files / "state.json").read_bytes())
    assert state["size"] == SIZE
    # A verifier with no earlier checkpoint would accept the forged tree: that is why
    # auditors keep state (the signed checkpoints are the guarantee, not the database).
    (scene.files / "state.json").unlink()
    assert scene.verify(forged, bundles=[bundle]).passed


async def test_reports_flag_bodies_that_do_not_match_their_leaves(scene: Scene) -> None:
    """Issue 10: reports read bodies; a body edited with triggers disabled, and a body
    forged for an entry whose own was pruned, must not flow into a GDPR notice."""
    import datetime

    actor, victim, decoy = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await scene.log.append_many([event(actor, victim) for _ in range(3)])
    su = scene.superuser
    first = await su.fetchval(
        "SELECT min(idx) FROM audit_bodies WHERE body ->> 'actor_id' = $1", str(actor)
    )
    # Edit: the first read now names another youth.
    await su.execute("ALTER TABLE audit_bodies DISABLE TRIGGER audit_bodies_guard")
    await su.execute(
        "UPDATE audit_bodies SET body = jsonb_set(body, '{record_ids}', $2::jsonb) WHERE idx = $1",
        first,
        f'["{decoy}"]',
    )
    # Forge: entry 5's body pruned, then another put in its place (the salt included).
    await su.execute("DELETE FROM audit_bodies WHERE idx = 5")
    await su.execute("ALTER TABLE audit_bodies ENABLE ALWAYS TRIGGER audit_bodies_guard")
    forged = await su.fetchval("SELECT body::text FROM audit_bodies WHERE idx = $1", first + 1)
    await su.execute(
        "INSERT INTO audit_bodies (idx, at, salt, body) VALUES (5, ($1::jsonb ->> 'at')::timestamptz,"
        " sha256('x'::bytea), $1::jsonb)",
        forged,
    )

    page = await scene.proofs.events(
        record_id=None, actor_id=actor, action=None, since=None, until=None, cursor=None,
        limit=100,
    )  # fmt: skip
    marks = {item["index"]: item["verified"] for item in page.items}
    assert marks[first] is False and marks[5] is False
    assert [v for i, v in marks.items() if i not in (first, 5)] == [True, True]
    subject = await scene.proofs.subject(decoy, None, 100)
    assert [(i["index"], i["verified"]) for i in subject.items] == [(first, False)]

    now = datetime.datetime.now(datetime.UTC)
    report = await scene.proofs.breach_impact(
        actor, now - datetime.timedelta(days=1), now + datetime.timedelta(days=1), None, 100
    )
    assert report.complete is False
    assert report.unverified_entries == sorted([first, 5])
    assert report.unverified_count == 2
