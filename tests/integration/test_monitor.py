"""`vault-service audit monitor` following a real service process: quiet while the
log grows consistently, an alert when what it saw and what it is shown disagree (a
rollback, a fork), state never advanced past one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Stack, World, serve_processes
from vault_service.audit.note import format_checkpoint, parse_checkpoint, sign_note
from vault_service.audit.proofs import load_key_set
from vault_service.audit.verify import save_state
from vault_service.auth.permissions import Role
from vault_service.kms import VaultKms
from vault_service.kms.vault import CHECKPOINT_KEY

pytestmark = pytest.mark.integration


def _monitor(base: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "vault_service.cli", "audit", "monitor", "--once",
            "--url", base, "--keys", str(tmp / "keys.json"), "--state", str(tmp / "state.json"),
            "--token-file", str(tmp / "token"),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def _signed(stack: Stack, origin: str, size: int, root: bytes) -> str:
    """A checkpoint the log's real key signed (what a forked log would show)."""
    kms = VaultKms(stack.settings().vault)
    try:
        keys = await load_key_set(kms, origin)
        body = format_checkpoint(origin, size, root)
        signature = await kms.sign(CHECKPOINT_KEY, body.encode(), keys.latest_version)
        return sign_note(body, origin, keys.public_keys[keys.latest_version], lambda _m: signature)
    finally:
        kms.close()


async def test_the_monitor_follows_the_log_and_alerts_on_a_fork_or_rollback(
    stack: Stack, world: World, tmp_path: Path
) -> None:
    auditor = await world.account(Role.AUDITOR, None, ttl=900)
    counsellor = await world.counsellor()
    (tmp_path / "token").write_text(auditor.token)
    async with serve_processes(stack, 1, checkpoint_interval_seconds=0.5) as served:
        http, base = served.http, served.bases[0]
        audit = auditor.headers(purpose="audit")
        r = await http.get(f"{base}/v1/audit/keys", headers=audit)
        assert r.status_code == 200, r.text
        (tmp_path / "keys.json").write_bytes(r.content)

        async def grown_checkpoint(than: int) -> tuple[str, int]:
            for _ in range(100):
                await http.get(f"{base}/v1/caseload", headers=counsellor.headers())
                r = await http.get(f"{base}/v1/audit/checkpoint", headers=audit)
                if r.status_code == 200:
                    size = int(r.text.split("\n")[1])
                    if size > than:
                        return r.text, size
                await asyncio.sleep(0.2)
            raise AssertionError("no new checkpoint")

        _, first = await grown_checkpoint(0)
        done = _monitor(base, tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stderr.splitlines()[-1])["event"] == "first"
        note, second = await grown_checkpoint(first)
        done = _monitor(base, tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stderr.splitlines()[-1])["event"] == "ok"
        saved = json.loads((tmp_path / "state.json").read_text())
        assert saved["size"] >= second

        # It had seen a larger tree (signed by the log's own key): now a rollback.
        current = parse_checkpoint(note.split("\n\n")[0] + "\n")
        ahead = await _signed(stack, current.origin, saved["size"] + 1000, b"\x05" * 32)
        save_state(tmp_path / "state.json", parse_checkpoint(ahead.split("\n\n")[0] + "\n"), ahead)
        done = _monitor(base, tmp_path)
        assert done.returncode == 1
        alert = json.loads(done.stderr.splitlines()[-1])
        assert (alert["event"], alert["alert"], alert["severity"]) == (
            "audit.rollback", True, "critical"
        )  # fmt: skip
        # Another history at a size it had seen: a fork, however the log grew since.
        other = await _signed(stack, current.origin, current.size, b"\x06" * 32)
        save_state(tmp_path / "state.json", parse_checkpoint(other.split("\n\n")[0] + "\n"), other)
        done = _monitor(base, tmp_path)
        assert done.returncode == 1
        assert json.loads(done.stderr.splitlines()[-1])["event"] == "audit.fork"
        # The state was not advanced past the fork.
        assert json.loads((tmp_path / "state.json").read_text())["checkpoint"] == other
