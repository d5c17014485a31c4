"""Signed checkpoints of the access log, published by one leader among the replicas.

Every replica runs a `CheckpointPublisher`; the one holding a PostgreSQL advisory
lock (on a connection it keeps for as long as it leads) publishes. Every few
seconds, if the tree grew, it signs a C2SP checkpoint (origin, size, base64 root)
with the Ed25519 transit key in Vault (`CHECKPOINT_KEY`, its latest version; the key
id is the signed-note id of that version's public key) and stores it.

Before signing, the leader checks what it is about to vouch for: the root in the
tree-state row must be the root recomputed from the tiles, and the new tree must be
consistent (RFC 9162 consistency proof, from the tiles) with the last checkpoint
whose signature verifies, and with the anchor: the last (size, root) this log's
signers signed, kept outside PostgreSQL, in OpenBao (KV version 2, check-and-set,
kms/vault.py). An owner or superuser who rewrites entries, tiles and tree head
consistently and deletes the newer checkpoint rows still meets the anchor. Any
failed check signs nothing and raises a critical alert (once per reason and
process); no checkpoint appears until an operator has looked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import metrics

from vault_service.audit import repository as sql
from vault_service.audit.merkle import MerkleError, verify_consistency
from vault_service.audit.note import (
    NoteError,
    format_checkpoint,
    parse_checkpoint,
    sign_note,
    verify_note,
)
from vault_service.audit.proofs import (
    DEFAULT_ORIGIN,
    SigningKeySet,
    TileFetcher,
    load_key_set,
    tree_root_from_tiles,
)
from vault_service.audit.tiles import TileError
from vault_service.audit.witness import CosignatureVerifier, parse_cosigner_key
from vault_service.errors import ConfigurationError, KmsUnavailable, VaultServiceError
from vault_service.kms.vault import CHECKPOINT_KEY, VaultKms
from vault_service.leadership import Leadership
from vault_service.outbound import DIRECT_OPENER

__all__ = ["DEFAULT_ORIGIN", "CheckpointPublisher", "CheckpointRefused", "SigningKeySet"]

log = structlog.get_logger(__name__)
_meter = metrics.get_meter("vault_service.audit")
_published = _meter.create_counter(
    "vault_service.audit.checkpoints", description="checkpoints published"
)
_refused = _meter.create_counter(
    "vault_service.audit.checkpoints_refused",
    description="checkpoints not signed because the stored tree failed a check",
)

_KEY_CACHE_SECONDS: Final = 60.0

Connection = asyncpg.Connection | PoolConnectionProxy
# Raises a critical alert of a kind, with its details (ids and codes only): the alert
# store's, given by the composition root. The log knows nothing of alerts beyond it.
AlertSink = Callable[[str, Mapping[str, int | str]], Awaitable[object]]


class CheckpointRefused(VaultServiceError):
    """The stored tree failed a check; nothing was signed. The detail is a fixed
    reason code for operators (never data)."""

    code = "checkpoint_refused"
    title = "The access-log tree failed verification; no checkpoint was signed"


class CheckpointPublisher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        kms: VaultKms,
        origin: str = DEFAULT_ORIGIN,
        interval_seconds: float = 5.0,
        on_alert: AlertSink | None = None,
        witnesses: Sequence[str] = (),
    ) -> None:
        # Fail at start-up on an origin that cannot be a note key name.
        format_checkpoint(origin, 0, b"\x00" * 32)
        self._pool = pool
        self._kms = kms
        self._origin = origin
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._lead = Leadership(pool, sql.CHECKPOINT_LOCK_ID, "checkpoint_leader_elected")
        self._keys: SigningKeySet | None = None
        self._keys_at = 0.0
        # One publication at a time: the leader's connection serves one query at once,
        # and a tool calling publish_once must not interleave with the schedule.
        self._publishing = asyncio.Lock()
        self._on_alert = on_alert
        self._alerted: set[str] = set()
        self._witnesses = [_Peer.parse(w) for w in witnesses]

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def is_leader(self) -> bool:
        return self._lead.leading

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="checkpoint-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._resign()

    async def latest(self) -> str | None:
        """The latest stored checkpoint note, whoever published it."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(sql.SELECT_LATEST_CHECKPOINT)
        return None if row is None else str(row["note"])

    async def key_set(self, *, refresh: bool = False) -> SigningKeySet:
        now = time.monotonic()
        if refresh or self._keys is None or now - self._keys_at > _KEY_CACHE_SECONDS:
            self._keys = await load_key_set(self._kms, self._origin)
            self._keys_at = now
        return self._keys

    # --- leadership ----------------------------------------------------------------
    async def try_lead(self) -> bool:
        """Take the leader lock if it is free; keep its connection while leading."""
        return await self._lead.try_lead()

    async def _resign(self) -> None:
        async with self._publishing:
            await self._lead.resign()

    async def _run(self) -> None:
        while True:
            try:
                if await self.try_lead():
                    await self.publish_once()
            except asyncio.CancelledError:
                raise
            except CheckpointRefused:
                pass  # logged where it was decided; try again next round
            except VaultServiceError as exc:
                log.warning("checkpoint_round_failed", error_type=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - the publisher must outlive any failure
                # Most likely the leader connection is gone: give up leadership (the
                # session lock dies with it) and compete again next round.
                log.warning("checkpoint_round_failed", error_type=type(exc).__name__)
                try:
                    await self._resign()
                except Exception as resign_exc:  # noqa: BLE001 - keep the loop alive
                    log.warning("checkpoint_resign_failed", error_type=type(resign_exc).__name__)
            await asyncio.sleep(self._interval)

    # --- publishing ----------------------------------------------------------------
    async def publish_once(self) -> str | None:
        """Publish a checkpoint if the tree grew since the latest one; returns the
        new note, or None if there was nothing to publish. Leaders call it on their
        schedule; tests and tools may call it directly (the table's key on size keeps
        two concurrent callers from storing two checkpoints of one size)."""
        async with self._publishing:
            leader = self._lead.connection
            if leader is not None:
                return await self._publish(leader)
            async with self._pool.acquire() as conn:
                return await self._publish(conn)

    async def _refuse(self, reason: str) -> CheckpointRefused:
        _refused.add(1, {"reason": reason})
        log.error("audit_checkpoint_refused", reason=reason)
        if self._on_alert is not None and reason not in self._alerted:
            # A critical alert, once per reason in this process: each round refuses
            # again until an operator has looked.
            try:
                await self._on_alert("audit.checkpoint_refused", {"reason": reason})
                self._alerted.add(reason)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                log.error("audit_checkpoint_alert_failed", reason=reason)
        return CheckpointRefused(reason)

    async def _publish(self, conn: Connection) -> str | None:
        state = await conn.fetchrow(sql.SELECT_TREE)
        if state is None:
            raise await self._refuse("tree_state_missing")
        size, stored_root = int(state["size"]), bytes(state["root"])
        previous = await conn.fetchrow(sql.SELECT_LATEST_CHECKPOINT)
        if size == 0 or (previous is not None and int(previous["size"]) >= size):
            if previous is not None and int(previous["size"]) > size:
                raise await self._refuse("tree_shrank")
            return None
        keys = await self.key_set()
        fetcher = TileFetcher(conn)
        try:
            root = await tree_root_from_tiles(fetcher, size)
        except TileError:
            raise await self._refuse("tiles_inconsistent") from None
        if root != stored_root:
            raise await self._refuse("root_mismatch")
        if previous is not None:
            await self._check_consistent(fetcher, keys, str(previous["note"]), size, root)
        anchors = await self._kms.read_anchors()
        await self._check_anchor(fetcher, anchors.heads.get(self._origin), size, root)
        # The anchor moves before anything is signed: a checkpoint that exists is always
        # one the anchor knows (else deleting its row would let a rewrite through). A
        # failed or lost write signs nothing; the next round reads the anchor again.
        if anchors.heads.get(self._origin) != (size, root) and not await self._kms.write_anchor(
            anchors, self._origin, size, root
        ):
            raise await self._refuse("anchor_moved")

        body = format_checkpoint(self._origin, size, root)
        message = body.encode("utf-8")
        version = keys.latest_version
        signature = await self._kms.sign(CHECKPOINT_KEY, message, version)

        def signer(raw: bytes) -> bytes:
            if raw != message:
                raise ConfigurationError("the note to sign changed")
            return signature

        try:
            note = sign_note(body, self._origin, keys.public_keys[version], signer)
        except ConfigurationError:
            # The key rotated since we cached it: refresh once and let the next round sign.
            await self.key_set(refresh=True)
            raise KmsUnavailable("checkpoint key changed; retrying next round") from None
        note = await self._cosigned(fetcher, note, size)
        await conn.execute(sql.INSERT_CHECKPOINT, size, root, version, note)
        _published.add(1)
        log.info("audit_checkpoint_published", size=size, key_version=version)
        return note

    async def _check_consistent(
        self, fetcher: TileFetcher, keys: SigningKeySet, note: str, size: int, root: bytes
    ) -> None:
        try:
            previous = parse_checkpoint(verify_note(note, keys.verifiers()))
        except NoteError:
            raise await self._refuse("previous_checkpoint_unverifiable") from None
        if previous.origin != self._origin:
            raise await self._refuse("previous_checkpoint_origin")
        try:
            proof = await fetcher.consistency_proof(previous.size, size)
            verify_consistency(previous.size, size, previous.root, root, proof)
        except (MerkleError, TileError):
            raise await self._refuse("inconsistent_with_previous_checkpoint") from None

    async def _check_anchor(
        self, fetcher: TileFetcher, head: tuple[int, bytes] | None, size: int, root: bytes
    ) -> None:
        """The tree must extend the last head signed, as the anchor outside the
        database remembers it (None: this log has signed nothing yet)."""
        if head is None:
            return
        anchored_size, anchored_root = head
        if anchored_size > size:
            raise await self._refuse("tree_behind_anchor")
        if anchored_size == size:
            if anchored_root != root:
                raise await self._refuse("fork_at_anchor")
            return
        try:
            proof = await fetcher.consistency_proof(anchored_size, size)
            verify_consistency(anchored_size, size, anchored_root, root, proof)
        except (MerkleError, TileError):
            raise await self._refuse("inconsistent_with_anchor") from None

    # --- witnesses -----------------------------------------------------------------
    async def _cosigned(self, fetcher: TileFetcher, note: str, size: int) -> str:
        """The note with the cosignatures of the witnesses that gave one (asked
        together, each within its time-out). A witness that cannot be reached leaves
        the checkpoint without its line; one that refuses (an inconsistent or
        unverifiable checkpoint, by its own state) raises a critical alert."""
        if not self._witnesses:
            return note
        lines = await asyncio.gather(*(self._ask(p, fetcher, note, size) for p in self._witnesses))
        return note + "".join(line for line in lines if line)

    async def _ask(self, peer: _Peer, fetcher: TileFetcher, note: str, size: int) -> str | None:
        body = note[: note.rfind("\n\n") + 1]
        for _ in range(2):  # a second time after a 409 told us its size
            old = min(peer.cosigned, size)
            try:
                proof = await fetcher.consistency_proof(old, size) if 0 < old < size else []
            except (MerkleError, TileError):
                return None
            request = f"old {old}\n" + "".join(
                base64.b64encode(h).decode("ascii") + "\n" for h in proof
            )
            status, answer = await asyncio.to_thread(
                _post, peer.url, (request + "\n" + note).encode("utf-8")
            )
            if status == 200:
                for line in answer.splitlines():
                    try:
                        if peer.verifier.timestamp_of(body, line) is not None:
                            peer.cosigned = size
                            return line + "\n"
                    except NoteError:
                        break
                log.warning("audit_witness_bad_answer", witness=peer.verifier.name)
                return None
            if status == 409 and answer.strip().isdigit():
                peer.cosigned = int(answer.strip())
                continue
            if status in (403, 404, 422, 400):
                await self._refused_by(peer, status)
            else:
                log.warning("audit_witness_unreachable", witness=peer.verifier.name)
            return None
        return None

    async def _refused_by(self, peer: _Peer, status: int) -> None:
        reason = f"witness_refused_{status}"
        log.error("audit_witness_refused", witness=peer.verifier.name, status=status)
        if self._on_alert is None or reason in self._alerted:
            return
        try:
            await self._on_alert(
                "audit.witness_refused", {"witness": peer.verifier.name, "status": status}
            )
            self._alerted.add(reason)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            log.error("audit_checkpoint_alert_failed", reason=reason)


@dataclass
class _Peer:
    url: str
    verifier: CosignatureVerifier
    cosigned: int = 0  # the last size it cosigned, as far as we know (a 409 corrects it)

    @classmethod
    def parse(cls, entry: str) -> _Peer:
        url, _, vkey = entry.partition("|")
        return cls(url.rstrip("/") + "/add-checkpoint", parse_cosigner_key(vkey))


def _post(url: str, body: bytes) -> tuple[int, str]:
    """POST to a witness: (status, body text); (0, "") when it cannot be reached."""
    request = urllib.request.Request(  # noqa: S310 - URL checked in settings  # nosec B310
        url, data=body, method="POST", headers={"content-type": "text/plain"}
    )
    try:
        with DIRECT_OPENER.open(request, timeout=WITNESS_TIMEOUT) as response:
            return int(response.status), response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(4096).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, ""


WITNESS_TIMEOUT: Final = 1.5
