"""The access-log entry format, version 1: pure, importable without a database.

The offline verifier (`audit verify`, run by auditors away from the service) needs
exactly this and nothing of the server: no asyncpg, no OpenTelemetry.

- the *body* is the queryable JSON of the event (ids and codes, never a value), its
  canonical bytes being msgspec's JSON encoding of `EntryBody` (members in declaration
  order, no whitespace);
- the *leaf* is 49 bytes, `0x01 || uint64 index || int64 microseconds since the epoch
  || SHA-256(salt || canonical body)`, all big-endian; its Merkle hash is
  SHA-256(0x00 || leaf) (RFC 9162).

Bodies come in two versions under the same leaf: version 2 adds one member, `count`,
last, for an entry that stands for several identical events (refusals of requests
that carried no verified actor, counted per client and window: access/anonymous.py;
the honeytokens one admin planted in one structure, which the entry must not name:
records/honeytokens.py); version 1 is every other body and has no `count` (it stands
for one event).

The leaf commits to a *salted* hash of the body so that the body (and its salt) can
be pruned at the end of its retention while the tree stays verifiable, and so that
the hash left behind cannot be used to confirm a guess ("did account A read record R
at time T?"): bodies are low-entropy, the 32-byte salt is not.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from vault_service.audit.merkle import HASH_SIZE
from vault_service.errors import VaultServiceError

__all__ = [
    "ENTRY_VERSION",
    "LEAF_SIZE",
    "SALT_SIZE",
    "AccessEvent",
    "EntryBody",
    "InvalidAccessEvent",
    "Leaf",
    "Prepared",
    "body_hash",
    "canonical_body",
    "encode_body",
    "encode_leaf",
    "new_salt",
    "parse_leaf",
    "parse_time",
    "prepare",
    "prepare_stored",
    "wall_clock_us",
]

ENTRY_VERSION: Final = 1
LEAF_SIZE: Final = 1 + 8 + 8 + HASH_SIZE
SALT_SIZE: Final = 32
_LEAF_HEAD = struct.Struct(">BQq")
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MAX_RECORD_IDS: Final = 10_000
_MAX_FIELDS: Final = 500
_MAX_COUNT: Final = 1 << 40


class InvalidAccessEvent(VaultServiceError):
    """An event that the log refuses to store: a caller bug (a value where an id or
    code belongs). Fails the request like any other audit failure: no entry, no data."""

    code = "invalid_access_event"
    title = "The access-log entry is malformed"


class AccessEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One access, allowed or refused. Ids and codes only: never a name, a NIR, a
    field value or a token. `fields` are field *paths* returned, `criteria` are search
    criterion *names*; `client_fingerprint` is a salted hash computed by the caller."""

    action: str
    outcome: Literal["allowed", "refused"]
    actor_id: uuid.UUID | None
    role: str | None
    structure_id: uuid.UUID | None
    record_ids: tuple[uuid.UUID, ...] = ()
    fields: tuple[str, ...] = ()
    purpose: str | None = None
    purpose_detail: str | None = None
    refusal_code: str | None = None
    request_id: str | None = None
    token_jti: uuid.UUID | None = None
    client_fingerprint: str | None = None
    criteria: tuple[str, ...] = ()
    count: int = 1
    """How many identical events this entry stands for (an aggregate of refusals)."""


class EntryBody(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """The stored and hashed body, format version 1 or 2. The declaration order IS the
    canonical member order: reorder nothing, add members only in a new version.
    UUIDs are kept as their canonical lower-case text so that decoding and encoding
    again is the identity on canonical bytes. Only `count` has a default, so only it
    is ever omitted: a version 1 body has none, a version 2 body has one above 1."""

    v: int
    at: str
    action: str
    outcome: str
    actor_id: str | None
    role: str | None
    structure_id: str | None
    record_ids: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str | None
    purpose_detail: str | None
    refusal_code: str | None
    request_id: str | None
    token_jti: str | None
    client_fingerprint: str | None
    criteria: tuple[str, ...]
    count: int = 1

    def __post_init__(self) -> None:
        if self.v != _version_of(self.count):
            raise ValueError("body version and count disagree")


def _version_of(count: int) -> int:
    return ENTRY_VERSION if count == 1 else 2


_body_encoder = msgspec.json.Encoder()
_body_decoder = msgspec.json.Decoder(EntryBody)


def canonical_body(data: bytes | str) -> bytes:
    """Canonical bytes of a body given as any JSON text of it (jsonb output, a
    reformatted file): decode into `EntryBody` and encode again."""
    return _body_encoder.encode(_body_decoder.decode(data))


def body_hash(salt: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(salt + canonical).digest()


@dataclass(frozen=True, slots=True)
class Leaf:
    index: int
    at_us: int
    body_hash: bytes

    @property
    def at(self) -> datetime.datetime:
        return _EPOCH + datetime.timedelta(microseconds=self.at_us)


def encode_leaf(index: int, at_us: int, digest: bytes) -> bytes:
    return _LEAF_HEAD.pack(ENTRY_VERSION, index, at_us) + digest


def parse_leaf(leaf: bytes) -> Leaf:
    """Parse a version-1 leaf; raises ValueError for any other length or version."""
    if len(leaf) != LEAF_SIZE or leaf[0] != ENTRY_VERSION:
        raise ValueError("not a version 1 access-log leaf")
    _, index, at_us = _LEAF_HEAD.unpack_from(leaf)
    return Leaf(index=index, at_us=at_us, body_hash=leaf[17:])


_last_second: tuple[int, str] = (-1, "")


def format_time(at_us: int) -> str:
    """RFC 3339 UTC with microseconds, as in the body. The second's text is cached:
    a busy log formats the same second thousands of times."""
    global _last_second  # noqa: PLW0603 - a one-entry cache, racy only in harmless ways
    seconds, micros = divmod(at_us, 1_000_000)
    cached_second, text = _last_second
    if cached_second != seconds:
        moment = _EPOCH + datetime.timedelta(seconds=seconds)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (seconds, text)
    return f"{text}.{micros:06d}Z"


# --- validation: ids and codes only ---------------------------------------------------
_ACTION = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}")
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_FIELD = re.compile(r"[a-z0-9_]{1,64}(\[\]|\.[a-z0-9_*]{1,64}|\[[0-9]{1,4}\]){0,8}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{8,64}")
_FINGERPRINT = re.compile(r"[A-Za-z0-9_=+/:-]{8,128}")
# The X-Purpose-Detail header's own rule (auth/guards.py): short plain text, stated by
# the caller as a reason. It is kept in the prunable body, never in the leaf.
_DETAIL = re.compile(r"[\w .,;:'()/-]{1,200}")
# Codes, actions and field paths come from a small vocabulary: remember the ones that
# passed (bounded, so that varied input cannot grow it) and skip their regex.
_KNOWN_MAX: Final = 4096
_known: dict[re.Pattern[str], set[str]] = {p: set() for p in (_ACTION, _CODE, _FIELD)}
_known_fields: set[tuple[str, ...]] = set()


def _check(pattern: re.Pattern[str], value: str | None, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        # The message names the member, never its content.
        raise InvalidAccessEvent(f"access-log entry: invalid {what}")


def _check_code(pattern: re.Pattern[str], value: str | None, what: str) -> None:
    if value is None:
        return
    known = _known[pattern]
    if value in known:
        return
    _check(pattern, value, what)
    if len(known) < _KNOWN_MAX:
        known.add(value)


def _validate(event: AccessEvent) -> None:
    if not isinstance(event, AccessEvent):
        raise InvalidAccessEvent("access-log entry: not an AccessEvent")
    _check_code(_ACTION, event.action, "action")
    if event.outcome not in ("allowed", "refused"):
        raise InvalidAccessEvent("access-log entry: invalid outcome")
    _check_code(_CODE, event.role, "role")
    _check_code(_CODE, event.purpose, "purpose")
    _check(_DETAIL, event.purpose_detail, "purpose_detail")
    _check_code(_CODE, event.refusal_code, "refusal_code")
    _check(_REQUEST_ID, event.request_id, "request_id")
    _check(_FINGERPRINT, event.client_fingerprint, "client_fingerprint")
    if type(event.count) is not int or not 1 <= event.count <= _MAX_COUNT:
        raise InvalidAccessEvent("access-log entry: invalid count")
    if len(event.record_ids) > _MAX_RECORD_IDS or len(event.fields) > _MAX_FIELDS:
        raise InvalidAccessEvent("access-log entry: too many record ids or fields")
    # Field lists repeat (a record's fields, a view's): a list that passed once is known.
    fields = event.fields
    if fields not in _known_fields:
        for path in fields:
            _check_code(_FIELD, path, "field path")
        if len(_known_fields) < _KNOWN_MAX:
            _known_fields.add(fields)
    for name in event.criteria:
        _check_code(_CODE, name, "criterion name")
    # asyncpg hands out its own subclass of uuid.UUID, whose text is the same.
    for value in (event.actor_id, event.structure_id, event.token_jti, *event.record_ids):
        if value is not None and not isinstance(value, uuid.UUID):
            raise InvalidAccessEvent("access-log entry: an id is not a UUID")


def _str_or_none(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Prepared:
    """An event ready for the sequencer: everything but its index, computed by the
    caller's task so that the writer's critical section stays short."""

    at_us: int
    salt: bytes
    body: str
    body_hash: bytes
    # Set when the entry comes from the pending queue (sequenced, not yet in the tree):
    # the row that integration deletes in the transaction that appends the leaf.
    pending_id: int | None = None


_SALTS_PER_READ: Final = 256
_salts = bytearray()


def new_salt() -> bytes:
    """32 bytes from the OS CSPRNG, read 8 KiB at a time: one getrandom() call per
    salt costs more than the rest of an entry on some virtual machines."""
    global _salts  # noqa: PLW0603 - a module-level buffer of OS randomness
    if not _salts:
        _salts = bytearray(os.urandom(SALT_SIZE * _SALTS_PER_READ))
    salt = bytes(_salts[-SALT_SIZE:])
    del _salts[-SALT_SIZE:]
    return salt


def encode_body(event: AccessEvent, at_us: int) -> bytes:
    """Validate an event and return the canonical bytes of its body."""
    _validate(event)
    role, purpose = event.role, event.purpose
    body = EntryBody(
        v=_version_of(event.count),
        at=format_time(at_us),
        action=event.action,
        outcome=event.outcome,
        actor_id=_str_or_none(event.actor_id),
        # str() turns a StrEnum (Role, Purpose) into its plain value.
        role=None if role is None else str(role),
        structure_id=_str_or_none(event.structure_id),
        record_ids=tuple(map(str, event.record_ids)),
        fields=event.fields,
        purpose=None if purpose is None else str(purpose),
        purpose_detail=event.purpose_detail,
        refusal_code=event.refusal_code,
        request_id=event.request_id,
        token_jti=_str_or_none(event.token_jti),
        client_fingerprint=event.client_fingerprint,
        criteria=event.criteria,
        count=event.count,
    )
    return _body_encoder.encode(body)


def prepare(event: AccessEvent, at_us: int) -> Prepared:
    canonical = encode_body(event, at_us)
    salt = new_salt()
    return Prepared(
        at_us=at_us,
        salt=salt,
        body=canonical.decode("utf-8"),
        body_hash=hashlib.sha256(salt + canonical).digest(),
    )


_AT = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{6})Z")


def parse_time(text: str) -> int:
    """Microseconds since the epoch of a body's `at` (the format of `format_time`)."""
    if _AT.fullmatch(text) is None:
        raise ValueError("not an access-log time")
    # fromisoformat is C code (strptime was a fifth of the integrator's time); the
    # pattern above already holds the text to the one format we write.
    moment = datetime.datetime.fromisoformat(text)
    return (moment - _EPOCH) // _MICROSECOND


_MICROSECOND: Final = datetime.timedelta(microseconds=1)


def prepare_stored(pending_id: int, salt: bytes, body: str) -> Prepared:
    """An entry as the pending queue holds it, ready for the tree: its body made
    canonical (the queue may hold any JSON text of it: a refusal is rewritten by the
    database) and checked against the format, its time read from the body."""
    if len(salt) != SALT_SIZE:
        raise ValueError("a pending entry has a salt of the wrong size")
    try:
        decoded = _body_decoder.decode(body)
    except msgspec.DecodeError:
        # Including a version that disagrees with `count` (EntryBody.__post_init__).
        raise InvalidAccessEvent("a pending entry is not a version 1 or 2 body") from None
    if decoded.v not in (1, 2):
        raise InvalidAccessEvent("a pending entry is not a version 1 or 2 body")
    canonical = _body_encoder.encode(decoded)
    return Prepared(
        at_us=parse_time(decoded.at),
        salt=salt,
        body=canonical.decode("utf-8"),
        body_hash=hashlib.sha256(salt + canonical).digest(),
        pending_id=pending_id,
    )


def wall_clock_us() -> int:
    return time.time_ns() // 1000
