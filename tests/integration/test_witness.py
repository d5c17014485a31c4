"""A witness run as its operator would (`vault-service witness keygen|serve`, its own
key and state file), cosigning the checkpoints the service publishes; auditors who
require cosignatures (`audit verify --witness-key`) refuse a checkpoint without them."""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.conftest import Stack
from tests.integration.test_audit_log import drop_database, event, new_database
from vault_service.alerts.store import Alerts
from vault_service.audit.checkpoints import CheckpointPublisher
from vault_service.audit.log import AccessLog
from vault_service.audit.note import format_checkpoint, sign_note
from vault_service.audit.proofs import AuditProofs, load_key_set
from vault_service.audit.witness import parse_cosigner_key, valid_cosigners
from vault_service.dev import embedded as devstack
from vault_service.kms import VaultKms
from vault_service.kms.vault import CHECKPOINT_KEY

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault_service.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def _witness(
    key: Path, state: Path, logs: list[str], port: int, name: str = "dpo.test/w1"
) -> Iterator[str]:
    args = ["witness", "serve", "--name", name, "--key-file", str(key)]
    args += ["--state", str(state), "--listen", f"127.0.0.1:{port}"]
    for vkey in logs:
        args += ["--log", vkey]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vault_service.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _post(url: str, body: str) -> int:
    request = urllib.request.Request(f"{url}/add-checkpoint", data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_checkpoints_are_cosigned_by_an_outside_witness(stack: Stack, tmp_path: Path) -> None:
    db = await new_database(stack)
    pool = await db.pool()
    kms = VaultKms(stack.settings().vault)
    log = AccessLog(pool, max_batch=64)
    await log.start()
    origin = f"vault-service.test/witnessed-{uuid.uuid4().hex[:8]}"
    try:
        made = _cli(
            "witness", "keygen", "--name", "dpo.test/w1", "--key-file", str(tmp_path / "w.pem")
        )
        assert made.returncode == 0, made.stderr
        witness_vkey = made.stdout.strip()
        log_vkeys = (await load_key_set(kms, origin)).verifier_keys()
        port = devstack.free_port()
        state = tmp_path / "witness-state.json"
        proofs = AuditProofs(pool, kms, origin)

        def publisher() -> CheckpointPublisher:
            return CheckpointPublisher(
                pool,
                kms,
                origin,
                on_alert=Alerts(pool).critical,
                witnesses=[f"http://127.0.0.1:{port}|{witness_vkey}"],
            )

        with _witness(tmp_path / "w.pem", state, log_vkeys, port) as url:
            await log.append_many([event() for _ in range(20)])
            started = time.monotonic()
            note = await publisher().publish_once()
            assert note is not None
            assert time.monotonic() - started < 2  # within 2 s, witness included
            witness = parse_cosigner_key(witness_vkey)
            assert valid_cosigners(note, [witness]) == {"dpo.test/w1"}
            # What auditors download is the cosigned note.
            _, served = await proofs.checkpoint()
            assert served == note
            (tmp_path / "c.txt").write_text(served)
            (tmp_path / "keys.json").write_bytes(msgspec.json.encode(await proofs.keys()))
            base = ["audit", "verify", "--keys", str(tmp_path / "keys.json")]
            base += ["--checkpoint", str(tmp_path / "c.txt")]
            ok = _cli(*base, "--witness-key", witness_vkey)
            assert ok.returncode == 0, ok.stderr
            assert "cosigned by 1 witness(es): dpo.test/w1" in ok.stdout
            refused = _cli(*base, "--witness-key", witness_vkey, "--min-witnesses", "2")
            assert refused.returncode == 1
            assert "UNWITNESSED" in refused.stderr

            # A checkpoint the log signed but that does not extend what the witness
            # cosigned: refused, nothing cosigned, the witness's state unchanged.
            forged = format_checkpoint(origin, 25, b"\x07" * 32)
            keys = await load_key_set(kms, origin)
            version = keys.latest_version
            signature = await kms.sign(CHECKPOINT_KEY, forged.encode(), version)
            forged_note = sign_note(forged, origin, keys.public_keys[version], lambda _m: signature)
            proof_line = base64.b64encode(b"\x01" * 32).decode()
            status = _post(url, f"old 20\n{proof_line}\n\n{forged_note}")
            assert status == 422
            assert '"size": 20' in state.read_text()

        # The witness restarts from its state file; a new publisher (which does not
        # know what the witness cosigned) learns it from the 409 and sends the proof.
        await log.append_many([event() for _ in range(7)])
        with _witness(tmp_path / "w.pem", state, log_vkeys, port):
            note = await publisher().publish_once()
            assert note is not None
            assert valid_cosigners(note, [parse_cosigner_key(witness_vkey)]) == {"dpo.test/w1"}
            assert '"size": 27' in state.read_text()

        # The witness is down: the checkpoint is still published, without its line.
        await log.append_many([event() for _ in range(3)])
        note = await publisher().publish_once()
        assert note is not None
        assert valid_cosigners(note, [parse_cosigner_key(witness_vkey)]) == set()
    finally:
        await log.stop()
        await pool.close()
        kms.close()
        await drop_database(db)


async def test_two_witnesses_cosign_within_two_seconds(stack: Stack, tmp_path: Path) -> None:
    db = await new_database(stack)
    pool = await db.pool()
    kms = VaultKms(stack.settings().vault)
    log = AccessLog(pool, max_batch=64)
    await log.start()
    origin = f"vault-service.test/two-witnesses-{uuid.uuid4().hex[:8]}"
    try:
        log_vkeys = (await load_key_set(kms, origin)).verifier_keys()
        vkeys, ports = [], []
        for name in ("w1", "w2"):
            made = _cli("witness", "keygen", "--name", f"dpo.test/{name}",
                        "--key-file", str(tmp_path / f"{name}.pem"))  # fmt: skip
            assert made.returncode == 0, made.stderr
            vkeys.append(made.stdout.strip())
            ports.append(devstack.free_port())
        with (
            _witness(tmp_path / "w1.pem", tmp_path / "s1.json", log_vkeys, ports[0], "dpo.test/w1"),
            _witness(tmp_path / "w2.pem", tmp_path / "s2.json", log_vkeys, ports[1], "dpo.test/w2"),
        ):
            publisher = CheckpointPublisher(
                pool,
                kms,
                origin,
                witnesses=[f"http://127.0.0.1:{p}|{k}" for p, k in zip(ports, vkeys, strict=True)],
            )
            for batch in (20, 5):
                await log.append_many([event() for _ in range(batch)])
                started = time.monotonic()
                note = await publisher.publish_once()
                elapsed = time.monotonic() - started
                assert note is not None and elapsed < 2, elapsed
                cosigners = [parse_cosigner_key(k) for k in vkeys]
                assert valid_cosigners(note, cosigners) == {"dpo.test/w1", "dpo.test/w2"}
    finally:
        await log.stop()
        await pool.close()
        kms.close()
        await drop_database(db)
