"""C2SP signed notes (https://c2sp.org/signed-note) and checkpoints
(https://c2sp.org/tlog-checkpoint), Ed25519 only.

Why this format: it is what the transparency-log ecosystem (Go checksum database,
Sigstore, witnesses) signs and verifies, so an auditor can check our checkpoints
with off-the-shelf tools, and it is plain text an operator can read.

Why so strict: a note's text must be ignored unless a trusted signature verifies,
and every byte of the text is what is signed, so anything that two parsers could
read differently (non-canonical base64, control characters, leading zeros in a size,
a trailing line without newline) is refused rather than normalised.

Signing never sees a private key: the caller passes a `sign` callable, which in
production asks Vault transit, so the key stays in Vault.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vault_service.audit.merkle import HASH_SIZE
from vault_service.errors import ConfigurationError, VaultServiceError

__all__ = [
    "ED25519_SIGNATURE_TYPE",
    "Checkpoint",
    "NoteError",
    "NoteVerifier",
    "ed25519_key_id",
    "format_checkpoint",
    "parse_checkpoint",
    "parse_verifier_key",
    "sign_note",
    "verifier_key_string",
    "verifier_map",
    "verify_note",
]

ED25519_SIGNATURE_TYPE = 0x01
_PUBLIC_KEY_SIZE = 32
_SIGNATURE_SIZE = 64
_KEY_ID_SIZE = 4
_MAX_UINT64 = (1 << 64) - 1
# The spec asks verifiers to cap signatures (at no fewer than 16) so that a huge note
# cannot make us spend unbounded time; 100 matches golang.org/x/mod/sumdb/note. The
# byte cap leaves room for 16 post-quantum signatures (~5 kB each) and then some.
_MAX_SIGNATURES = 100
_MAX_NOTE_BYTES = 1 << 20

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_KEY_HASH = re.compile(r"[0-9a-f]{8}")


class NoteError(VaultServiceError):
    """A note or checkpoint is malformed or carries no verifying trusted signature.

    One class for every failure, for the same reason as MerkleError: the caller needs
    "do not trust this", and the detail is for operators."""

    status = 400
    code = "invalid_note"
    title = "The signed note is malformed or not signed by a trusted key"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: who (origin), how many entries (size), and their Merkle root.

    Extension lines are kept, not dropped, because they are part of what was signed.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def _valid_name(name: str) -> bool:
    # Names sit between spaces on a signature line and before "+" in a verifier key;
    # allowing either character would make those lines ambiguous.
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() for c in name)
        and _CONTROL.search(name) is None
        and "\x7f" not in name
        and _encodable(name)
    )


def _encodable(text: str) -> bool:
    # A Python str may hold lone surrogates, which are not UTF-8 and so cannot be
    # what anyone signed.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise NoteError(f"{what} is not text")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"{what} is not valid UTF-8") from None
    if len(raw) > _MAX_NOTE_BYTES:
        raise NoteError(f"{what} is too large")
    if _CONTROL.search(text):
        raise NoteError(f"{what} contains a control character")
    return raw


def _b64decode(text: str, what: str) -> bytes:
    """Standard base64, canonical only: two encodings of one value would let a
    signed line be rewritten without touching what it means."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def ed25519_key_id(name: str, public_key: bytes) -> int:
    """Key id per signed-note: SHA-256(name || 0x0A || 0x01 || public key)[:4] as a
    big-endian uint32. Binding the name and algorithm in means the same key under
    another name or algorithm gets another id."""
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise NoteError("an Ed25519 public key is 32 bytes")
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + public_key
    ).digest()
    return int.from_bytes(digest[:_KEY_ID_SIZE], "big")


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted Ed25519 key: signatures are matched to it by (name, key_id)."""

    name: str
    key_id: int
    public_key: bytes

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> NoteVerifier:
        if not _valid_name(name):
            raise NoteError("invalid key name")
        return cls(name=name, key_id=ed25519_key_id(name, public_key), public_key=public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != _SIGNATURE_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def verifier_map(*verifiers: NoteVerifier) -> dict[tuple[str, int], NoteVerifier]:
    """Index trusted keys the way `verify_note` looks them up.

    Two different keys with the same (name, id) would make a signature ambiguous, so
    that is a configuration error, not something to resolve by picking one."""
    result: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        key = (verifier.name, verifier.key_id)
        if key in result and result[key] != verifier:
            raise ConfigurationError("two trusted note keys share a name and key id")
        result[key] = verifier
    return result


def verifier_key_string(name: str, public_key: bytes) -> str:
    """The standard `name+hex8+base64(0x01 || key)` verifier key, as printed by Go's
    note package and accepted by witnesses and auditors' tools."""
    verifier = NoteVerifier.from_public_key(name, public_key)
    key_data = base64.b64encode(bytes([ED25519_SIGNATURE_TYPE]) + public_key).decode("ascii")
    return f"{name}+{verifier.key_id:08x}+{key_data}"


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse a verifier key and check that its id really is that name's and key's:
    a mismatched id would make every signature from the key silently unknown."""
    if not isinstance(vkey, str):
        raise NoteError("a verifier key is text")
    # Names cannot contain "+", but base64 can, so only the first two count.
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise NoteError("a verifier key is name+id+key")
    name, key_hash, key_data = parts
    if not _valid_name(name):
        raise NoteError("invalid key name in verifier key")
    if not _KEY_HASH.fullmatch(key_hash):
        raise NoteError("a verifier key id is 8 lowercase hex digits")
    raw = _b64decode(key_data, "the verifier key")
    if len(raw) != 1 + _PUBLIC_KEY_SIZE or raw[0] != ED25519_SIGNATURE_TYPE:
        raise NoteError("only Ed25519 verifier keys are supported")
    verifier = NoteVerifier.from_public_key(name, raw[1:])
    if verifier.key_id != int(key_hash, 16):
        raise NoteError("the verifier key id does not match its name and key")
    return verifier


def sign_note(body: str, name: str, public_key: bytes, sign: Callable[[bytes], bytes]) -> str:
    """Sign `body` with an Ed25519 key held elsewhere (Vault transit in production).

    The signature is verified against `public_key` before the note is returned:
    a transit key rotated without updating the published key would otherwise give
    checkpoints nobody can verify, which we would only learn from an auditor.
    """
    raw = _check_text(body, "the note text")
    if not body.endswith("\n"):
        raise NoteError("the note text must end with a newline")
    verifier = NoteVerifier.from_public_key(name, public_key)
    signature = sign(raw)
    if not isinstance(signature, bytes) or not verifier.verify(raw, signature):
        raise ConfigurationError("the note signer does not match the configured public key")
    encoded = base64.b64encode(verifier.key_id.to_bytes(_KEY_ID_SIZE, "big") + signature)
    return f"{body}\n{_SIGNATURE_PREFIX}{name} {encoded.decode('ascii')}\n"


def verify_note(note: str, verifiers: Mapping[tuple[str, int], NoteVerifier]) -> str:
    """Return the text of `note` if at least one trusted key signed it.

    Follows the signed-note rules: signatures from unknown keys are ignored (they may
    be witnesses' cosignatures), but a known key's signature that fails to verify, or
    a known key signing twice, rejects the whole note: either means tampering.
    """
    _check_text(note, "the note")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no signature block")
    text, signatures = note[: split + 1], note[split + 2 :]
    if not signatures.endswith("\n"):
        raise NoteError("the note does not end with a newline")
    message = text.encode("utf-8")

    lines = signatures[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise NoteError("the note has too many signatures")
    verified: set[tuple[str, int]] = set()
    for line in lines:
        if not line.startswith(_SIGNATURE_PREFIX):
            raise NoteError("malformed signature line")
        name, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
        if not _valid_name(name) or not encoded:
            raise NoteError("malformed signature line")
        raw = _b64decode(encoded, "a signature")
        if len(raw) <= _KEY_ID_SIZE:
            raise NoteError("a signature is too short")
        key = (name, int.from_bytes(raw[:_KEY_ID_SIZE], "big"))
        verifier = verifiers.get(key)
        if verifier is None:
            continue
        if (verifier.name, verifier.key_id) != key:
            raise ConfigurationError("a trusted note key is filed under another name or id")
        if key in verified:
            raise NoteError("a trusted key signed the note twice")
        if not verifier.verify(message, raw[_KEY_ID_SIZE:]):
            raise NoteError("a trusted key's signature does not verify")
        verified.add(key)
    if not verified:
        raise NoteError("no trusted key signed the note")
    return text


def format_checkpoint(origin: str, size: int, root: bytes) -> str:
    """Checkpoint note text. The origin doubles as our key name (the spec asks the
    log's key name to match it), so it is held to the key-name rules here."""
    if not _valid_name(origin):
        raise NoteError("invalid checkpoint origin")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_UINT64:
        raise NoteError("the checkpoint size is not an unsigned 64-bit integer")
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        raise NoteError("the checkpoint root is not a 32-byte hash")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n"


def parse_checkpoint(body: str) -> Checkpoint:
    """Parse verified note text (the output of `verify_note`) as a checkpoint.

    Accepts any non-empty origin (clients must not assume its format) and non-empty
    extension lines, and nothing else: the size in canonical decimal within uint64,
    the root a canonical base64 32-byte hash.
    """
    _check_text(body, "the checkpoint")
    if not body.endswith("\n"):
        raise NoteError("the checkpoint must end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise NoteError("a checkpoint is origin, size, root and non-empty extensions")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > _MAX_UINT64:
        raise NoteError("the checkpoint size is not a canonical decimal uint64")
    root = _b64decode(root_text, "the checkpoint root")
    if len(root) != HASH_SIZE:
        raise NoteError("the checkpoint root is not a 32-byte hash")
    return Checkpoint(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))
