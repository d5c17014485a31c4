"""AES-256-GCM envelopes for fields and for wrapped record keys.

Format v1 of every blob: version byte 0x01 || 12-byte random nonce || ciphertext||tag.
The associated data binds a field's ciphertext to its record id, its field path and
the version of the record key it was sealed under, so a ciphertext copied to another record or
another field, or replayed after a re-encryption, fails to authenticate instead of
decrypting to somebody else's value.

Random 96-bit nonces: each record key seals a few dozen values in its life (every
update re-seals only the changed fields), far below the 2^32 messages per key that
NIST SP 800-38D allows for random nonces.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterable, Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.errors import DecryptionFailed

FORMAT_V1: Final = 0x01
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32
_FIELD_AAD: Final = b"vault-service/field/v1\x00"
_RECORD_KEY_AAD: Final = b"vault-service/record-key/v1\x00"
_INTEGRITY_AAD: Final = b"vault-service/record-integrity/v1\x00"


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def field_aad_prefix(record_id: uuid.UUID, key_version: int) -> bytes:
    """The part of a field's AAD shared by every field of one record.

    The record key's version is bound here; the branch key that wraps the record key
    is bound in the record key's own AAD (record_key_aad), so moving a youth to
    another structure rewraps one key and re-seals no field."""
    return _FIELD_AAD + record_id.bytes + struct.pack(">I", key_version)


def field_aad(record_id: uuid.UUID, path: str, key_version: int) -> bytes:
    return field_aad_prefix(record_id, key_version) + path.encode("utf-8")


def record_integrity_aad(
    record_id: uuid.UUID,
    version: int,
    structure_id: uuid.UUID,
    referent_id: uuid.UUID,
    key_version: int,
    content: bytes,
) -> bytes:
    """What a record's integrity tag binds (records/sealing.py): the row's identity, its
    version, who holds it, the key version, and every sealed and clear field (their
    encoding, `content`). A database writer who swaps in an older ciphertext, edits a clear field or
    moves the youth to another referent changes it, and cannot make a new tag without
    the record key."""
    return b"".join(
        (
            _INTEGRITY_AAD,
            record_id.bytes,
            struct.pack(">Q", version),
            structure_id.bytes,
            referent_id.bytes,
            struct.pack(">I", key_version),
            content,
        )
    )


def record_key_aad(record_id: uuid.UUID, structure_id: uuid.UUID, branch_version: int) -> bytes:
    return b"".join(
        (_RECORD_KEY_AAD, record_id.bytes, structure_id.bytes, struct.pack(">I", branch_version))
    )


_V1: Final = bytes((FORMAT_V1,))


def seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return _V1 + nonce + aead.encrypt(nonce, plaintext, aad)


def seal_fields(aead: AESGCM, prefix: bytes, plaintexts: Mapping[str, bytes]) -> dict[str, bytes]:
    """Seal several fields of one record (the create and import hot path): the shared AAD
    prefix built once, the field paths' encodings cached, and every nonce drawn from one
    read of the OS's CSPRNG (each nonce is still 96 random bits of its own; one read
    instead of one system call a field). Blobs as `seal` makes them."""
    count = len(plaintexts)
    if not count:
        return {}
    nonces = os.urandom(NONCE_BYTES * count)
    encrypt = aead.encrypt
    encoded = _ENCODED_NAMES
    out = {}
    at = 0
    for name, plaintext in plaintexts.items():
        path = encoded.get(name)
        if path is None:
            path = name.encode("utf-8")
            if len(encoded) < 4096:  # field paths: a small, fixed vocabulary
                encoded[name] = path
        nonce = nonces[at : at + NONCE_BYTES]
        at += NONCE_BYTES
        out[name] = _V1 + nonce + encrypt(nonce, plaintext, prefix + path)
    return out


def open_(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    """Authenticate and decrypt, or raise DecryptionFailed; never returns unverified bytes."""
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != FORMAT_V1:
        raise DecryptionFailed()
    try:
        return aead.decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], aad)
    except InvalidTag:
        raise DecryptionFailed() from None


_ENCODED_NAMES: dict[str, bytes] = {}


def open_fields(
    aead: AESGCM, prefix: bytes, blobs: Mapping[str, bytes], names: Iterable[str]
) -> dict[str, bytes]:
    """Open several fields of one record (the read hot path: one loop, no re-derivation
    of the shared AAD prefix). Any failure fails the whole record."""
    out = {}
    decrypt = aead.decrypt
    encoded = _ENCODED_NAMES
    try:
        for name in names:
            blob = blobs[name]
            if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != FORMAT_V1:
                raise DecryptionFailed()
            path = encoded.get(name)
            if path is None:
                path = name.encode("utf-8")
                if len(encoded) < 4096:  # field paths: a small, fixed vocabulary
                    encoded[name] = path
            out[name] = decrypt(blob[1:13], blob[13:], prefix + path)
    except (InvalidTag, IndexError, KeyError):
        raise DecryptionFailed() from None
    return out
