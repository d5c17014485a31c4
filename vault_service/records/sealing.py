"""The cryptography of one record, driven by the schema's per-field plan.

Record keys (new, opened, rewrapped under another structure's branch key), sealing
values into the stored form (`sealed` msgpack of AES-GCM blobs, `clear` JSON text),
opening fields into the full or the masked view, and the blind-index digests of
values and search criteria. Shared by the record and custody services; it never
talks to PostgreSQL (the key hierarchy loads branch keys itself).
"""

from __future__ import annotations

import datetime
import hmac
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Final

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.crypto import aead
from vault_service.crypto import blind_index as bi
from vault_service.crypto.keys import KeyHierarchy
from vault_service.errors import (
    DecryptionFailed,
    InvalidBody,
    InvalidParameter,
    RecordIntegrityFailed,
)
from vault_service.records.access import AccessFacts
from vault_service.records.schema import FieldPlan, RecordSchema

_IDEMPOTENCY_LABEL: Final = b"vault-service/idempotency/v1"
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
_json_encoder = msgspec.json.Encoder()

# A stored row as the sealer reads it (an asyncpg Record): `id`, `structure_id`,
# `branch_key_version`, `record_key`, `key_version`, `sealed`, `clear`.
StoredRow = AccessFacts


class Sealer:
    __slots__ = (
        "_encrypted",
        "_keys",
        "_known",
        "_masked_fields",
        "_masked_sealed",
        "_national",
        "_schema",
    )

    def __init__(self, keys: KeyHierarchy, schema: RecordSchema) -> None:
        self._keys = keys
        self._schema = schema
        self._masked_fields = tuple(f for f in schema.fields.values() if f.mask is not None)
        self._masked_sealed = tuple(f.name for f in self._masked_fields if f.encrypted)
        self._known = frozenset(schema.fields)
        self._encrypted = frozenset(f.name for f in schema.fields.values() if f.encrypted)
        self._national = frozenset(
            p.index.name for p in schema.indexed if p.index is not None and p.index.national
        )

    @property
    def schema(self) -> RecordSchema:
        return self._schema

    # --- record keys ----------------------------------------------------------------------
    async def record_key(self, row: StoredRow) -> AESGCM:
        # Unwrapped from the row just read, never cached: an erased record's key
        # (records/retention.py) exists nowhere once its row is gone.
        branch = await self._keys.branch_key(row["structure_id"], row["branch_key_version"])
        return self._keys.open_record_key(branch, row["id"], row["record_key"])

    async def new_record_key(
        self, structure_id: uuid.UUID, record_id: uuid.UUID
    ) -> tuple[AESGCM, bytes, int]:
        """(record key, its wrapped form, the branch key version that wraps it)."""
        branch = await self._keys.active_branch_key(structure_id)
        record_key, wrapped = self._keys.new_record_key(branch, record_id)
        return record_key, wrapped, branch.version

    async def rewrap_record_key(
        self, row: StoredRow, target_structure: uuid.UUID
    ) -> tuple[AESGCM, bytes, int]:
        """(the record key, rewrapped under the target structure's active branch key,
        that branch key's version): moving a youth rewraps one key, nothing else."""
        source = await self._keys.branch_key(row["structure_id"], row["branch_key_version"])
        target = await self._keys.active_branch_key(target_structure)
        rewrapped = self._keys.rewrap_record_key(source, target, row["id"], row["record_key"])
        record_key = self._keys.open_record_key(source, row["id"], row["record_key"])
        return record_key, rewrapped, target.version

    # --- sealing --------------------------------------------------------------------------
    def split(
        self,
        values: Mapping[str, Any],
        record_key: AESGCM,
        record_id: uuid.UUID,
        key_version: int = 1,
    ) -> tuple[dict[str, bytes], dict[str, Any]]:
        """(sealed blobs of the encrypted fields, plain values of the others), bound to
        the record key's version (a re-encrypted record is past version 1)."""
        plaintexts: dict[str, bytes] = {}
        clear: dict[str, Any] = {}
        encrypted, encode = self._encrypted, _json_encoder.encode
        for name, value in values.items():
            if name in encrypted:
                plaintexts[name] = encode(value)
            elif name in self._known:
                clear[name] = value
            else:
                raise KeyError(name)  # as the schema lookup did: no unknown field stored
        prefix = aead.field_aad_prefix(record_id, key_version)
        return aead.seal_fields(record_key, prefix, plaintexts), clear

    @staticmethod
    def pack(
        sealed: Mapping[str, bytes],
        clear: Mapping[str, Any],
        record_key: AESGCM,
        at: RowState,
    ) -> tuple[bytes, str]:
        """The stored form of both halves (the `sealed` and `clear` columns), the sealed
        half carrying the record's integrity tag for the row as it will be (`at`)."""
        fields = {k: v for k, v in sealed.items() if k != INTEGRITY_FIELD}
        fields[INTEGRITY_FIELD] = aead.seal(record_key, b"", _integrity_aad(at, fields, clear))
        return _msgpack_encoder.encode(fields), _json_encoder.encode(clear).decode()

    @staticmethod
    def check_integrity(
        row: StoredRow, record_key: AESGCM, sealed: Mapping[str, bytes] | None = None
    ) -> None:
        """RecordIntegrityFailed unless the row is, as a whole, what the service wrote
        (a row without a tag included: removing it is no way around the check)."""
        fields = _msgpack_decoder.decode(row["sealed"]) if sealed is None else sealed
        tag = fields.get(INTEGRITY_FIELD)
        if tag is None:
            raise RecordIntegrityFailed()
        at = RowState(
            row["id"], int(row["version"]), row["structure_id"], row["referent_id"],
            int(row["key_version"]),
        )  # fmt: skip
        try:
            aead.open_(record_key, tag, _integrity_aad(at, fields, clear_values(row)))
        except DecryptionFailed:
            raise RecordIntegrityFailed() from None

    @staticmethod
    def stored(row: StoredRow) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Both halves of a row as stored, still sealed: what a patch starts from."""
        return _msgpack_decoder.decode(row["sealed"]), clear_values(row)

    # --- opening --------------------------------------------------------------------------
    def open_fields(
        self, row: StoredRow, record_key: AESGCM, names: Iterable[str] | None = None
    ) -> dict[str, bytes]:
        """JSON plaintext of the sealed fields (all, or those of `names` present)."""
        sealed = _msgpack_decoder.decode(row["sealed"])
        wanted = (
            [n for n in sealed if n != INTEGRITY_FIELD]
            if names is None
            else [n for n in names if n in sealed]
        )
        if not self._known.issuperset(wanted):
            raise DecryptionFailed()  # a field the schema does not know: tampered row
        prefix = aead.field_aad_prefix(row["id"], row["key_version"])
        opened = aead.open_fields(record_key, prefix, sealed, wanted)
        # Each field authenticated on its own; now the record as a whole.
        self.check_integrity(row, record_key, sealed)
        return opened

    def full(self, row: StoredRow, record_key: AESGCM) -> dict[str, Any]:
        """Every field, the sealed ones as raw JSON (never decoded, re-encoded as is)."""
        opened = self.open_fields(row, record_key)
        record: dict[str, Any] = {name: msgspec.Raw(pt) for name, pt in opened.items()}
        record.update(clear_values(row))
        return record

    def masked(self, row: StoredRow, record_key: AESGCM) -> dict[str, Any]:
        """The schema's masked view: clear fields, initials, birth year."""
        opened = self.open_fields(row, record_key, self._masked_sealed)
        clear = clear_values(row)
        out: dict[str, Any] = {}
        for plan in self._masked_fields:
            if plan.mask == "clear":
                if plan.name in clear:
                    out[plan.name] = clear[plan.name]
                continue
            if plan.name not in opened:
                continue
            value = msgspec.json.decode(opened[plan.name])
            if plan.mask == "initial":
                out[plan.name] = (
                    [_initial(v) for v in value] if isinstance(value, list) else _initial(value)
                )
            elif plan.mask == "year":
                out[plan.name + "_year"] = int(str(value)[:4])
        return out

    def decrypt_values(
        self, row: StoredRow, record_key: AESGCM, names: Iterable[str]
    ) -> dict[str, Any]:
        """Decoded values of some fields (for re-indexing), never returned to a client."""
        opened = self.open_fields(row, record_key, names)
        return {name: msgspec.json.decode(value) for name, value in opened.items()}

    # --- blind indexes --------------------------------------------------------------------
    async def index_values(
        self, structure_id: uuid.UUID, values: Mapping[str, Any], plans: Iterable[FieldPlan]
    ) -> tuple[list[str], list[bytes]]:
        """(index names, digests) of the values of the indexed fields in `plans`."""
        names: list[str] = []
        digests: list[bytes] = []
        for plan in plans:
            spec = plan.index
            assert spec is not None
            value = values.get(plan.name)
            if value is None or value is msgspec.UNSET:
                continue
            items = value if isinstance(value, list) else [value]
            key = await self._index_key(spec.name, spec.national, structure_id)
            normalise = bi.NORMALISERS[spec.normalise]
            for item in items:
                text = item.isoformat() if isinstance(item, datetime.date) else str(item)
                try:
                    normalised = normalise(text)
                except bi.NormalisationError:
                    raise InvalidBody(f"`{plan.name}` cannot be normalised") from None
                names.append(spec.name)
                digests.append(bi.digest(key, normalised))
        return names, digests

    async def criteria_digests(
        self, structure_id: uuid.UUID, criteria: Mapping[str, str], *, restricted: bool
    ) -> tuple[list[str], list[bytes]]:
        """(index names, digests) of search criteria; `restricted` indexes (the NIR)
        answer only a restricted search, and the others only an ordinary one."""
        names: list[str] = []
        digests: list[bytes] = []
        for name, value in criteria.items():
            plan = self._schema.search_index(name)
            if plan is None or plan.index is None or plan.index.restricted != restricted:
                raise InvalidParameter("unknown search criterion")
            spec = plan.index
            normalised = bi.NORMALISERS[spec.normalise](value)
            key = await self._index_key(spec.name, spec.national, structure_id)
            names.append(spec.name)
            digests.append(bi.digest(key, normalised))
        return names, digests

    def national_flags(self, names: Iterable[str]) -> list[bool]:
        """National indexes are stored without a structure: one NIR, one youth."""
        return [n in self._national for n in names]

    async def _index_key(self, name: str, national: bool, structure_id: uuid.UUID) -> bytes:
        label = bi.key_label(name, None if national else structure_id)
        return await self._keys.derived_key(national, label)

    # --- idempotency ----------------------------------------------------------------------
    async def derived_key(self, label: bytes) -> bytes:
        """A keyed-digest key derived inside Vault under the structure-scoped index root,
        as the blind-index keys are (a bulk import's legacy-id digests)."""
        return await self._keys.derived_key(False, label)

    async def request_digest(self, body: bytes) -> bytes:
        """Keyed digest of a request body: a replay is recognised without storing it."""
        key = await self._keys.derived_key(False, _IDEMPOTENCY_LABEL)
        return hmac.new(key, body, sha256).digest()


INTEGRITY_FIELD: Final = ""
"""The entry of the `sealed` map that holds the record's integrity tag (no field has an
empty name): an AES-GCM tag, under the record key, over nothing, with the row's
identity, version, holder, key version and content digest as AAD."""
_sorted_json = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class RowState:
    """What the integrity tag binds besides the fields: the row as it will be stored."""

    record_id: uuid.UUID
    version: int
    structure_id: uuid.UUID
    referent_id: uuid.UUID
    key_version: int


def _integrity_aad(at: RowState, sealed: Mapping[str, bytes], clear: Mapping[str, Any]) -> bytes:
    # The fields in their stored order (the write fixes it; a reordered map fails)
    # and the clear values as sorted JSON go into the tag's associated data as they
    # are: GHASH over a few kilobytes costs less than hashing them first.
    pairs = [(name, blob) for name, blob in sealed.items() if name != INTEGRITY_FIELD]
    content = _msgpack_encoder.encode(pairs) + b"\x00clear\x00" + _sorted_json.encode(clear)
    return aead.record_integrity_aad(
        at.record_id, at.version, at.structure_id, at.referent_id, at.key_version, content
    )


def clear_values(row: StoredRow) -> dict[str, Any]:
    # asyncpg hands jsonb over as text unless a codec is set; we keep it text.
    decoded: dict[str, Any] = msgspec.json.decode(row["clear"])
    return decoded


def _initial(value: Any) -> str:
    text = str(value).strip()
    return (text[:1].upper() + ".") if text else ""
