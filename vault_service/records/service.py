"""Case records: validate, encrypt, index, authorise, decrypt.

Object access (the OWASP API1 failure) is decided here, for every record, from
the database row and the principal, never from anything the client sends:
- a counsellor sees the full record of the youth they are referent of;
- a supervisor sees a masked view of the youth of their own structure;
- anything else answers 404 exactly like a record that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import hmac
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Final

import asyncpg
import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.auth.permissions import Purpose, Role
from vault_service.auth.principal import Principal
from vault_service.crypto import aead
from vault_service.crypto import blind_index as bi
from vault_service.crypto.keys import KeyHierarchy
from vault_service.errors import (
    DecryptionFailed,
    IdempotencyKeyReused,
    InvalidBody,
    InvalidParameter,
    NotFound,
    PreconditionFailed,
    invalid_body,
)
from vault_service.records import repository as sql
from vault_service.records.schema import FieldPlan, RecordSchema

_IDEMPOTENCY_LABEL: Final = b"vault-service/idempotency/v1"
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
_json_encoder = msgspec.json.Encoder()


class View(enum.StrEnum):
    FULL = "full"
    MASKED = "masked"


@dataclass(frozen=True, slots=True)
class Created:
    record_id: uuid.UUID
    version: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class RecordDocument:
    record_id: uuid.UUID
    version: int
    body: bytes
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    record_ids: tuple[uuid.UUID, ...]


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        # A weak tag never satisfies If-Match (RFC 9110 13.1.1): compare strongly.
        return -1
    try:
        return int(value.strip('"'))
    except ValueError:
        return -1


def encode_cursor(record_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(record_id.bytes).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str | None) -> uuid.UUID:
    if not cursor:
        return uuid.UUID(int=0)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (ValueError, binascii.Error):
        raise InvalidParameter("cursor is not valid") from None


class RecordService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keys: KeyHierarchy,
        schema: RecordSchema,
        *,
        search_page_max: int,
        caseload_page_max: int,
    ) -> None:
        self.pool = self._pool = pool
        self.keys = self._keys = keys
        self.schema = self._schema = schema
        self._create = msgspec.json.Decoder(schema.create_type)
        self._patch = msgspec.json.Decoder(schema.patch_type)
        self._search_page_max = search_page_max
        self._caseload_page_max = caseload_page_max
        self._masked_fields = tuple(f for f in schema.fields.values() if f.mask is not None)
        self._known = frozenset(schema.fields)
        self._national = frozenset(
            p.index.name for p in schema.indexed if p.index is not None and p.index.national
        )

    # --- helpers ---------------------------------------------------------------------
    def _decode_create(self, body: bytes) -> dict[str, Any]:
        try:
            value = self._create.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise invalid_body(exc) from None
        return _present(value)

    def _decode_patch(self, body: bytes) -> dict[str, Any]:
        try:
            value = self._patch.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise invalid_body(exc) from None
        changes = _present(value)
        if not changes:
            raise InvalidBody("the patch changes nothing")
        return changes

    @staticmethod
    def _seal(record_key: AESGCM, record_id: uuid.UUID, name: str, value: Any) -> bytes:
        aad = aead.field_aad(record_id, name, 1)
        return aead.seal(record_key, _json_encoder.encode(value), aad)

    def _split(
        self,
        values: Mapping[str, Any],
        record_key: AESGCM,
        record_id: uuid.UUID,
    ) -> tuple[dict[str, bytes], dict[str, Any]]:
        sealed: dict[str, bytes] = {}
        clear: dict[str, Any] = {}
        for name, value in values.items():
            plan = self._schema.fields[name]
            if plan.encrypted:
                sealed[name] = self._seal(record_key, record_id, name, value)
            else:
                clear[name] = value
        return sealed, clear

    async def index_rows(
        self, structure_id: uuid.UUID, values: Mapping[str, Any], plans: Iterable[FieldPlan]
    ) -> tuple[list[str], list[bytes]]:
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

    async def _index_key(self, name: str, national: bool, structure_id: uuid.UUID) -> bytes:
        label = bi.key_label(name, None if national else structure_id)
        return await self._keys.derived_key(national, label)

    async def _record_key(self, row: asyncpg.Record) -> AESGCM:
        branch = await self._keys.branch_key(row["structure_id"], row["branch_key_version"])
        return self._keys.open_record_key(branch, row["id"], row["record_key"])

    @staticmethod
    def _view(principal: Principal, row: asyncpg.Record, purpose: Purpose | None) -> View | None:
        """What the caller may see of this record, from the row and nothing the client says.

        Caseload (referent or live assignment): full. Supervisor of the record's
        structure: masked. A live break-the-glass grant: full, and only when the
        request states `break_glass` as its purpose, so every such read is marked."""
        if (
            principal.role == Role.COUNSELLOR
            and row["structure_id"] == principal.structure_id
            and (row["referent_id"] == principal.account_id or row["assigned"])
        ):
            return View.FULL
        if row["glass"] and purpose is Purpose.BREAK_GLASS:
            return View.FULL
        if principal.role == Role.SUPERVISOR and row["structure_id"] == principal.structure_id:
            return View.MASKED
        return None

    def _open_fields(
        self, row: asyncpg.Record, record_key: AESGCM, names: Iterable[str] | None = None
    ) -> dict[str, bytes]:
        sealed = _msgpack_decoder.decode(row["sealed"])
        wanted = list(sealed) if names is None else [n for n in names if n in sealed]
        if not self._known.issuperset(wanted):
            raise DecryptionFailed()  # a field the schema does not know: tampered row
        prefix = aead.field_aad_prefix(row["id"], row["key_version"])
        return aead.open_fields(record_key, prefix, sealed, wanted)

    def decrypt_values(
        self, row: asyncpg.Record, record_key: AESGCM, names: Iterable[str]
    ) -> dict[str, Any]:
        """Decoded values of some fields (for re-indexing), never returned to a client."""
        opened = self._open_fields(row, record_key, names)
        return {name: msgspec.json.decode(value) for name, value in opened.items()}

    @staticmethod
    def _meta(row: asyncpg.Record, view: View) -> dict[str, Any]:
        return {
            "id": row["id"],
            "structure_id": row["structure_id"],
            "referent_id": row["referent_id"],
            "version": row["version"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "view": view,
        }

    def _masked(self, row: asyncpg.Record, record_key: AESGCM) -> dict[str, Any]:
        wanted = [f.name for f in self._masked_fields if f.encrypted]
        opened = self._open_fields(row, record_key, wanted)
        clear = _clear(row)
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

    # --- operations --------------------------------------------------------------------
    async def create(
        self, principal: Principal, body: bytes, idempotency_key: str | None
    ) -> Created:
        assert principal.structure_id is not None
        values = self._decode_create(body)
        request_digest = None
        if idempotency_key is not None:
            idem_key = await self._keys.derived_key(False, _IDEMPOTENCY_LABEL)
            request_digest = hmac.new(idem_key, body, sha256).digest()
            async with self._pool.acquire() as conn:
                existing = await conn.fetchrow(
                    sql.SELECT_IDEMPOTENCY, principal.account_id, idempotency_key
                )
            if existing is not None:
                return self._replay(existing, request_digest)

        structure_id = principal.structure_id
        record_id = uuid.uuid4()
        branch = await self._keys.active_branch_key(structure_id)
        record_key, wrapped = self._keys.new_record_key(branch, record_id)
        sealed, clear = self._split(values, record_key, record_id)
        names, digests = await self.index_rows(structure_id, values, self._schema.indexed)
        try:
            async with self._pool.acquire() as conn:
                version = await conn.fetchval(
                    sql.INSERT_RECORD,
                    record_id,
                    structure_id,
                    principal.account_id,
                    branch.version,
                    wrapped,
                    _msgpack_encoder.encode(sealed),
                    _json_encoder.encode(clear).decode(),
                    names,
                    digests,
                    [n in self._national for n in names],
                    idempotency_key,
                    request_digest,
                )
        except asyncpg.UniqueViolationError:
            # A concurrent retry with the same key won the race; our statement wrote
            # nothing (one statement, all or nothing).
            if request_digest is None:
                raise
            async with self._pool.acquire() as conn:
                existing = await conn.fetchrow(
                    sql.SELECT_IDEMPOTENCY, principal.account_id, idempotency_key
                )
            if existing is None:
                raise
            return self._replay(existing, request_digest)
        return Created(record_id, int(version), replayed=False)

    @staticmethod
    def _replay(existing: asyncpg.Record, request_digest: bytes) -> Created:
        if not hmac.compare_digest(existing["request_digest"], request_digest):
            raise IdempotencyKeyReused()
        return Created(existing["record_id"], 0, replayed=True)

    async def read(
        self, principal: Principal, record_id: uuid.UUID, purpose: Purpose | None = None
    ) -> RecordDocument:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(sql.SELECT_RECORD, record_id, principal.account_id)
        view = None if row is None else self._view(principal, row, purpose)
        if row is None or view is None:
            raise NotFound()
        record_key = await self._record_key(row)
        if view is View.FULL:
            opened = self._open_fields(row, record_key)
            clear = _clear(row)
            record: dict[str, Any] = {name: msgspec.Raw(pt) for name, pt in opened.items()}
            record.update(clear)
        else:
            record = self._masked(row, record_key)
        document = self._meta(row, view)
        document["record"] = record
        return RecordDocument(
            row["id"], int(row["version"]), _json_encoder.encode(document), tuple(record)
        )

    async def update(
        self, principal: Principal, record_id: uuid.UUID, expected_version: int, body: bytes
    ) -> RecordDocument:
        changes = self._decode_patch(body)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(sql.SELECT_RECORD_FOR_UPDATE, record_id, principal.account_id)
            # Writes are for the caseload only: break-the-glass reads, it never writes.
            if row is None or self._view(principal, row, None) is not View.FULL:
                raise NotFound()
            if row["version"] != expected_version:
                raise PreconditionFailed()
            record_key = await self._record_key(row)
            sealed = _msgpack_decoder.decode(row["sealed"])
            clear = _clear(row)
            present = {k: v for k, v in changes.items() if v is not None}
            new_sealed, new_clear = self._split(present, record_key, record_id)
            for name, value in changes.items():
                if value is None:
                    sealed.pop(name, None)
                    clear.pop(name, None)
            sealed.update(new_sealed)
            clear.update(new_clear)
            touched = [p for p in self._schema.indexed if p.name in changes]
            names, digests = await self.index_rows(row["structure_id"], present, touched)
            updated = await conn.fetchrow(
                sql.UPDATE_RECORD,
                record_id,
                _msgpack_encoder.encode(sealed),
                _json_encoder.encode(clear).decode(),
                expected_version,
            )
            if updated is None:
                raise PreconditionFailed()
            if touched:
                await conn.execute(
                    sql.DELETE_INDEX, record_id, [p.index.name for p in touched if p.index]
                )
                await conn.execute(
                    sql.INSERT_INDEX,
                    record_id,
                    row["structure_id"],
                    names,
                    digests,
                    [n in self._national for n in names],
                )
        return await self.read(principal, record_id)

    def _scope(self, principal: Principal) -> tuple[uuid.UUID, uuid.UUID | None]:
        """(structure, referent or None) that bound what a list or search may return."""
        if principal.structure_id is None:
            raise NotFound()
        referent = principal.account_id if principal.role == Role.COUNSELLOR else None
        return principal.structure_id, referent

    async def search(
        self,
        principal: Principal,
        criteria: Mapping[str, str],
        cursor: str | None,
        limit: int,
        *,
        restricted: bool = False,
    ) -> Page:
        """Equality search; `restricted` indexes (the NIR) only through their own route."""
        if not criteria:
            raise InvalidParameter("give at least one search criterion")
        structure_id, referent = self._scope(principal)
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
        return await self._page(
            sql.SEARCH,
            (names, digests, len(set(names)), structure_id, referent),
            cursor,
            min(limit, self._search_page_max),
        )

    async def caseload(self, principal: Principal, cursor: str | None, limit: int) -> Page:
        structure_id, referent = self._scope(principal)
        return await self._page(
            sql.CASELOAD, (structure_id, referent), cursor, min(limit, self._caseload_page_max)
        )

    async def _page(
        self, query: str, args: tuple[Any, ...], cursor: str | None, limit: int
    ) -> Page:
        after = decode_cursor(cursor)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(query, *args, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        items = []
        for row in rows:
            record_key = await self._record_key(row)
            summary = {"id": row["id"], "referent_id": row["referent_id"]}
            summary.update(self._masked(row, record_key))
            items.append(summary)
        body = {
            "items": items,
            "next_cursor": encode_cursor(rows[-1]["id"]) if more and rows else None,
        }
        return Page(_json_encoder.encode(body), tuple(r["id"] for r in rows))


def _present(value: msgspec.Struct) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(value).items() if v is not msgspec.UNSET}


def _clear(row: asyncpg.Record) -> dict[str, Any]:
    # asyncpg hands jsonb over as text unless a codec is set; we keep it text.
    decoded: dict[str, Any] = msgspec.json.decode(row["clear"])
    return decoded


def _initial(value: Any) -> str:
    text = str(value).strip()
    return (text[:1].upper() + ".") if text else ""
