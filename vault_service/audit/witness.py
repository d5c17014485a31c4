"""Witnessing the access log: C2SP tlog-cosignature/v1 (Ed25519) and tlog-witness.

A witness is run by someone outside the service (a DPO, a supervisory body), on its
own machine, with its own key and state file (`vault-service witness serve`). It
knows the log's public key; for each checkpoint the log submits (`add-checkpoint`,
with a consistency proof from the last size the witness cosigned), it verifies the
log's signature and the proof against what it saw before, persists the new size and
root, and returns its cosignature. A log that rewrote history cannot get a
cosignature for it, and auditors who require cosignatures (`audit verify
--witness-key ... --min-witnesses N`) refuse a checkpoint without them.

Formats, byte for byte as C2SP says:

- a cosignature line is `— <name> base64(key id || timestamp || signature)`, the key id
  `SHA-256(name || 0x0A || 0x04 || public key)[:4]`, the timestamp a big-endian u64;
- the signed message is `cosignature/v1\\ntime <timestamp>\\n` followed by the
  checkpoint body (with its final newline, without signature lines);
- a verifier key is `name+<key id hex>+base64(0x04 || public key)`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import http.server
import json
import os
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vault_service.audit.merkle import HASH_SIZE, MerkleError, verify_consistency
from vault_service.audit.note import (
    NoteError,
    NoteVerifier,
    parse_checkpoint,
    parse_verifier_key,
    verify_note,
)
from vault_service.errors import ConfigurationError

__all__ = [
    "CosignatureVerifier",
    "Witness",
    "cosign",
    "parse_cosigner_key",
    "valid_cosigners",
]

COSIGNATURE_TYPE: Final = 0x04
_PREFIX: Final = "\u2014 "
_HEADER: Final = "cosignature/v1\n"
_MAX_BODY: Final = 64 * 1024
_MAX_PROOF: Final = 63
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


def cosigner_key_id(name: str, public_key: bytes) -> int:
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([COSIGNATURE_TYPE]) + public_key
    ).digest()
    return int.from_bytes(digest[:4], "big")


def _message(body: str, timestamp: int) -> bytes:
    return f"{_HEADER}time {timestamp}\n".encode() + body.encode("utf-8")


@dataclass(frozen=True, slots=True)
class CosignatureVerifier:
    name: str
    public_key: bytes

    @property
    def key_id(self) -> int:
        return cosigner_key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        data = base64.b64encode(bytes([COSIGNATURE_TYPE]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{data}"

    def timestamp_of(self, body: str, line: str) -> int | None:
        """The timestamp of `line` if it is this cosigner's valid cosignature of `body`
        (None: another key's line); NoteError if it is this key's and does not verify."""
        if not line.startswith(_PREFIX):
            return None
        name, _, encoded = line[len(_PREFIX) :].partition(" ")
        if name != self.name:
            return None
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 4 + 8 + 64 or int.from_bytes(raw[:4], "big") != self.key_id:
            return None
        (timestamp,) = struct.unpack(">Q", raw[4:12])
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                raw[12:], _message(body, timestamp)
            )
        except (InvalidSignature, ValueError):
            raise NoteError("a witness's cosignature does not verify") from None
        return int(timestamp)


def parse_cosigner_key(vkey: str) -> CosignatureVerifier:
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError("a witness key is name+id+key")
    name, key_hash, data = parts
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError("a witness key is not base64") from None
    if len(raw) != 33 or raw[0] != COSIGNATURE_TYPE:
        raise NoteError("only Ed25519 cosignature/v1 witness keys are supported")
    verifier = CosignatureVerifier(name, raw[1:])
    if f"{verifier.key_id:08x}" != key_hash:
        raise NoteError("the witness key id does not match its name and key")
    return verifier


def cosign(key: Ed25519PrivateKey, name: str, body: str, timestamp: int) -> str:
    """One cosignature line (with its newline) over a checkpoint body."""
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signature = key.sign(_message(body, timestamp))
    raw = cosigner_key_id(name, public).to_bytes(4, "big") + struct.pack(">Q", timestamp)
    return f"{_PREFIX}{name} {base64.b64encode(raw + signature).decode('ascii')}\n"


def split_note(note: str) -> tuple[str, list[str]]:
    """(body with its final newline, signature lines without theirs)."""
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no signature block")
    return note[: split + 1], note[split + 2 :].rstrip("\n").split("\n")


def valid_cosigners(note: str, witnesses: Sequence[CosignatureVerifier]) -> set[str]:
    """Names of the witnesses whose valid cosignature the note carries."""
    body, lines = split_note(note)
    found: set[str] = set()
    for witness in witnesses:
        for line in lines:
            if witness.timestamp_of(body, line) is not None:
                found.add(witness.name)
    return found


# --- the witness ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


class Witness:
    """The add-checkpoint state machine over a JSON state file ({origin: {size, root}}),
    checked and persisted under one lock (C2SP: atomically, or a slower request could
    roll the state back)."""

    def __init__(
        self,
        name: str,
        key: Ed25519PrivateKey,
        logs: Mapping[str, Sequence[NoteVerifier]],
        state: Path,
    ) -> None:
        self.name = name
        self.key = key
        # Each log's keys (a log may have several versions that still verify).
        self._logs = {
            origin: {(v.name, v.key_id): v for v in keys} for origin, keys in logs.items()
        }
        self._state = state
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, object]]:
        if not self._state.exists():
            return {}
        data = json.loads(self._state.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ConfigurationError("the witness state file is not a JSON object")
        return data

    def _save(self, data: dict[str, dict[str, object]]) -> None:
        tmp = self._state.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state)

    def add_checkpoint(self, request: bytes) -> Answer:
        if len(request) > _MAX_BODY:
            return Answer(413, b"request too large\n")
        parsed = _parse_request(request)
        if parsed is None:
            return Answer(400, b"malformed request\n")
        old, proof, note = parsed
        origin = note.split("\n", 1)[0]
        verifiers = self._logs.get(origin)
        if verifiers is None:
            return Answer(404, b"unknown log\n")
        try:
            checkpoint = parse_checkpoint(verify_note(note, verifiers))
        except NoteError:
            return Answer(403, b"the log's signature does not verify\n")
        if old > checkpoint.size:
            return Answer(400, b"old size above the checkpoint size\n")
        with self._lock:
            data = self._load()
            seen = data.get(origin, {})
            seen_size = int(seen.get("size", 0))  # type: ignore[call-overload]
            if old != seen_size:
                return Answer(409, f"{seen_size}\n".encode(), "text/x.tlog.size")
            if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
                return Answer(422, b"an empty tree has the empty root\n")
            if old == 0:
                if proof:
                    return Answer(422, b"no proof from the empty tree\n")
            elif old == checkpoint.size:
                seen_root = base64.b64decode(str(seen.get("root", "")))
                if seen_root != checkpoint.root:
                    return Answer(422, b"same size, another root\n")
            else:
                try:
                    seen_root = base64.b64decode(str(seen.get("root", "")))
                    verify_consistency(old, checkpoint.size, seen_root, checkpoint.root, proof)
                except (MerkleError, ValueError):
                    return Answer(422, b"inconsistent with the checkpoint cosigned before\n")
            data[origin] = {
                "size": checkpoint.size,
                "root": base64.b64encode(checkpoint.root).decode("ascii"),
            }
            self._save(data)
        body = note[: note.rfind("\n\n") + 1]
        return Answer(200, cosign(self.key, self.name, body, int(time.time())).encode("utf-8"))


def _parse_request(request: bytes) -> tuple[int, list[bytes], str] | None:
    """(old size, consistency proof, checkpoint note) of an add-checkpoint body."""
    try:
        head, sep, note = request.decode("utf-8").partition("\n\n")
        lines = head.split("\n")
        old_text = lines[0].removeprefix("old ")
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    except (UnicodeDecodeError, ValueError, binascii.Error):
        return None
    if (
        not sep
        or not lines[0].startswith("old ")
        or not old_text.isdigit()
        or str(int(old_text)) != old_text
        or len(proof) > _MAX_PROOF
        or any(len(h) != HASH_SIZE for h in proof)
    ):
        return None
    return int(old_text), proof, note


def serve(witness: Witness, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server answering POST /add-checkpoint (caller runs serve_forever)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if self.path.rstrip("/") != "/add-checkpoint":
                answer = Answer(404, b"not found\n")
            elif length > _MAX_BODY:
                answer = Answer(413, b"request too large\n")
            else:
                answer = witness.add_checkpoint(self.rfile.read(length))
            self.send_response(answer.status)
            self.send_header("content-type", answer.content_type)
            self.send_header("content-length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.timeout = 10
    return server


def generate_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError("the witness key is not an Ed25519 key")
    return key


def verifier_of(name: str, key: Ed25519PrivateKey) -> CosignatureVerifier:
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return CosignatureVerifier(name, public)


# --- command line: run by the witness's operator, with no database and no Vault -------
def build_parser(prog: str = "vault-service witness") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="A C2SP tlog witness.")
    sub = parser.add_subparsers(dest="action", required=True)
    keygen = sub.add_parser("keygen", help="make a key; print its verifier key")
    keygen.add_argument("--name", required=True, help="the witness's name, e.g. dpo.example/w1")
    keygen.add_argument("--key-file", type=Path, required=True)
    run = sub.add_parser("serve", help="cosign the checkpoints of the logs given")
    run.add_argument("--name", required=True)
    run.add_argument("--key-file", type=Path, required=True)
    run.add_argument("--state", type=Path, required=True, help="JSON state file (kept)")
    run.add_argument(
        "--log", action="append", required=True, help="a log's verifier key (its origin)"
    )
    run.add_argument("--listen", default="127.0.0.1:7380", help="host:port")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "keygen":
            key = generate_key(args.key_file)
            print(verifier_of(args.name, key).vkey)
            return 0
        logs: dict[str, list[NoteVerifier]] = {}
        for vkey in args.log:
            verifier = parse_verifier_key(vkey)
            logs.setdefault(verifier.name, []).append(verifier)
        witness = Witness(args.name, load_key(args.key_file), logs, args.state)
        host, _, port = args.listen.rpartition(":")
        server = serve(witness, host or "127.0.0.1", int(port))
    except (NoteError, ConfigurationError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"witness {args.name} on {args.listen}: {verifier_of(args.name, witness.key).vkey}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
