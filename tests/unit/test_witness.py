"""The witness's add-checkpoint rules (C2SP tlog-witness) and the cosignature format
(C2SP tlog-cosignature/v1), on trees built here and a log key of the test's own."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault_service.audit import witness as w
from vault_service.audit.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes
from vault_service.audit.note import (
    NoteError,
    NoteVerifier,
    format_checkpoint,
    sign_note,
)

ORIGIN = "vault-service.test/witnessed"


class _Tree:
    def __init__(self, n: int, salt: bytes = b"") -> None:
        self.hashes = [leaf_hash(salt + i.to_bytes(8, "big")) for i in range(n)]

    def node(self, level: int, index: int) -> bytes:
        return root_from_leaf_hashes(self.hashes[index << level : (index + 1) << level])

    def root(self, size: int) -> bytes:
        return root_from_leaf_hashes(self.hashes[:size])


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def witness(tmp_path: Path, log_key: Ed25519PrivateKey) -> w.Witness:
    log = NoteVerifier.from_public_key(ORIGIN, _raw(log_key))
    return w.Witness("dpo.test/w1", Ed25519PrivateKey.generate(), {ORIGIN: [log]}, tmp_path / "s")


def _note(key: Ed25519PrivateKey, size: int, root: bytes) -> str:
    return sign_note(format_checkpoint(ORIGIN, size, root), ORIGIN, _raw(key), key.sign)


def _request(old: int, proof: list[bytes], note: str) -> bytes:
    lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    return f"old {old}\n{lines}\n{note}".encode()


def test_a_consistent_history_is_cosigned_and_remembered(
    witness: w.Witness, log_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    tree = _Tree(40)
    first = _note(log_key, 10, tree.root(10))
    answer = witness.add_checkpoint(_request(0, [], first))
    assert answer.status == 200
    line = answer.body.decode()
    assert line.startswith("\u2014 dpo.test/w1 ") and line.endswith("\n")
    cosigner = w.verifier_of("dpo.test/w1", witness.key)
    assert w.valid_cosigners(first + line, [cosigner]) == {"dpo.test/w1"}
    # The signed message, byte for byte: header, time line, then the note body.
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == w.cosigner_key_id("dpo.test/w1", cosigner.public_key).to_bytes(4, "big")
    timestamp = int.from_bytes(raw[4:12], "big")
    body = first[: first.rfind("\n\n") + 1]
    witness.key.public_key().verify(
        raw[12:], f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()
    )
    # The next checkpoint, with its proof from 10.
    second = _note(log_key, 40, tree.root(40))
    proof = consistency_proof(10, 40, tree)
    assert witness.add_checkpoint(_request(10, proof, second)).status == 200
    assert json.loads((tmp_path / "s").read_text())[ORIGIN]["size"] == 40
    # A restarted witness (same state file) knows where it was: 409 with its size.
    again = w.Witness("dpo.test/w1", witness.key, witness_logs(log_key), tmp_path / "s")
    stale = again.add_checkpoint(_request(10, proof, second))
    assert (stale.status, stale.body, stale.content_type) == (409, b"40\n", "text/x.tlog.size")


def witness_logs(key: Ed25519PrivateKey) -> dict[str, list[NoteVerifier]]:
    return {ORIGIN: [NoteVerifier.from_public_key(ORIGIN, _raw(key))]}


def test_a_rewritten_history_a_rollback_and_a_forged_signature_are_refused(
    witness: w.Witness, log_key: Ed25519PrivateKey
) -> None:
    tree, forged = _Tree(40), _Tree(40, salt=b"forged")
    assert witness.add_checkpoint(_request(0, [], _note(log_key, 20, tree.root(20)))).status == 200
    # Another history of 40 leaves: no proof from the 20 it cosigned can link them.
    other = _note(log_key, 40, forged.root(40))
    answer = witness.add_checkpoint(_request(20, consistency_proof(20, 40, forged), other))
    assert answer.status == 422
    # The same size with another root.
    assert (
        witness.add_checkpoint(_request(20, [], _note(log_key, 20, forged.root(20)))).status == 422
    )
    # A rollback: an older size than it cosigned.
    rollback = witness.add_checkpoint(_request(10, [], _note(log_key, 10, tree.root(10))))
    assert rollback.status == 409
    # Signed by a key that is not the log's, or by no known key.
    stranger = Ed25519PrivateKey.generate()
    assert (
        witness.add_checkpoint(_request(20, [], _note(stranger, 20, tree.root(20)))).status == 403
    )
    # Unknown log, malformed requests, proofs from the empty tree.
    alien = sign_note(
        format_checkpoint("elsewhere.test/log", 1, tree.root(1)), "elsewhere.test/log",
        _raw(log_key), log_key.sign,
    )  # fmt: skip
    assert witness.add_checkpoint(_request(0, [], alien)).status == 404
    assert witness.add_checkpoint(b"old x\n\n" + other.encode()).status == 400
    assert witness.add_checkpoint(_request(50, [], _note(log_key, 40, tree.root(40)))).status == 400


def test_the_first_submission_carries_no_proof(log_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    fresh = w.Witness(
        "dpo.test/w2", Ed25519PrivateKey.generate(), witness_logs(log_key), tmp_path / "t"
    )
    tree = _Tree(8)
    answer = fresh.add_checkpoint(_request(0, [tree.hashes[0]], _note(log_key, 8, tree.root(8))))
    assert answer.status == 422
    assert not (tmp_path / "t").exists()  # nothing persisted for a refusal


def test_verifier_keys_and_bad_cosignatures() -> None:
    key = Ed25519PrivateKey.generate()
    cosigner = w.verifier_of("dpo.test/w1", key)
    assert w.parse_cosigner_key(cosigner.vkey) == cosigner
    with pytest.raises(NoteError):
        w.parse_cosigner_key(cosigner.vkey.replace("dpo.test/w1", "dpo.test/w9"))
    body = format_checkpoint(ORIGIN, 1, _Tree(1).root(1))
    line = w.cosign(key, "dpo.test/w1", body, 1_700_000_000).rstrip("\n")
    tampered = body.replace("\n1\n", "\n2\n")
    with pytest.raises(NoteError):
        cosigner.timestamp_of(tampered, line)
    assert cosigner.timestamp_of(body, line) == 1_700_000_000
    other = w.verifier_of("dpo.test/w2", Ed25519PrivateKey.generate())
    assert other.timestamp_of(body, line) is None  # another witness's line: ignored
