"""Case records: decode and validate, decide access, seal or open, store.

The layers, each calling only the one below: `access` decides who sees what of a
row, `sealing` holds the cryptography, `repository` runs every statement. HTTP
concerns (ETags, cursors, query parameters) stay in the routes.
"""

from __future__ import annotations

import datetime
import hmac
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.access.budgets import Charge
from vault_service.access.recording import WriteLog
from vault_service.auth.permissions import Purpose
from vault_service.auth.principal import Principal
from vault_service.crypto.keys import KeyHierarchy
from vault_service.errors import (
    DecryptionFailed,
    IdempotencyKeyReused,
    InternalError,
    InvalidBody,
    InvalidParameter,
    NotFound,
    PreconditionFailed,
    RecordIntegrityFailed,
    invalid_body,
)
from vault_service.records import access
from vault_service.records.access import View
from vault_service.records.repository import IdempotencyRace, RecordRepository
from vault_service.records.retention import RetentionRule
from vault_service.records.schema import RecordSchema
from vault_service.records.sealing import RowState, Sealer

__all__ = ["Created", "Page", "RecordDocument", "RecordService", "SealedNew", "View"]

_json_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Created:
    record_id: uuid.UUID
    version: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class SealedNew:
    """A new record as it is stored (`RecordService.seal_new`), not yet written."""

    record_id: uuid.UUID
    structure_id: uuid.UUID
    referent_id: uuid.UUID
    branch_key_version: int
    record_key: bytes
    sealed: bytes
    clear: str
    index_names: list[str]
    index_digests: list[bytes]
    index_national: list[bool]
    retain_until: datetime.date | None


@dataclass(frozen=True, slots=True)
class RecordDocument:
    record_id: uuid.UUID
    version: int
    view: View
    body: bytes
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """Masked summaries; `next_after` is the id to page on from, None on the last page
    (the route turns it into a cursor)."""

    items: list[dict[str, Any]]
    next_after: uuid.UUID | None
    record_ids: tuple[uuid.UUID, ...]


HoneytokenHook = Callable[[Principal, uuid.UUID], Awaitable[None]]
"""Called when a request names a honeytoken (the bulk-read defence suspends)."""


class RecordService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keys: KeyHierarchy,
        schema: RecordSchema,
        *,
        search_page_max: int,
        caseload_page_max: int,
        on_honeytoken: HoneytokenHook | None = None,
        is_canary: Callable[[uuid.UUID], bool] | None = None,
        retention: RetentionRule | None = None,
        on_integrity_failure: HoneytokenHook | None = None,
    ) -> None:
        # Built here so every caller keeps constructing the service as before; the
        # custody service shares these two rather than anything of this class.
        self.repository = self._repo = RecordRepository(pool)
        self.sealer = self._sealer = Sealer(keys, schema)
        self._schema = schema
        self._create = msgspec.json.Decoder(schema.create_type)
        self._patch = msgspec.json.Decoder(schema.patch_type)
        self._on_honeytoken = on_honeytoken
        self._on_integrity_failure = on_integrity_failure
        self.is_canary: Callable[[uuid.UUID], bool] = is_canary or _never
        """Whether an id is a honeytoken's (records/honeytokens.py `Canaries.named`)."""
        self._search_page_max = search_page_max
        self._caseload_page_max = caseload_page_max
        self._retention = retention or RetentionRule()

    # --- decoding -------------------------------------------------------------------------
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

    async def integrity_failed(self, principal: Principal, record_id: uuid.UUID) -> None:
        """A record failed its integrity check: the defence raises the alert; the caller
        then lets RecordIntegrityFailed answer the request (nothing served)."""
        if self._on_integrity_failure is not None:
            await self._on_integrity_failure(principal, record_id)

    async def honeytoken_touched(self, principal: Principal, record_id: uuid.UUID) -> None:
        """A request named a honeytoken: the defence acts, then the caller answers as
        for a record it may not see (the canary stays indistinguishable)."""
        if self._on_honeytoken is not None:
            await self._on_honeytoken(principal, record_id)

    def validate_create(self, body: bytes) -> dict[str, Any]:
        """The values of a create body, validated exactly as `POST /v1/records` does
        (InvalidBody otherwise): what a bulk import checks each line with."""
        return self._decode_create(body)

    async def seal_new(
        self,
        structure_id: uuid.UUID,
        referent_id: uuid.UUID,
        values: Mapping[str, Any],
        record_id: uuid.UUID,
    ) -> SealedNew:
        """A new record in its stored form: its own record key under the structure's
        active branch key, every encrypted field sealed, its blind indexes, its
        integrity tag and its last readable day. The one path of every create (the
        API's, the canaries', a bulk import's); InvalidBody when an indexed value
        cannot be normalised."""
        record_key, wrapped, branch_version = await self._sealer.new_record_key(
            structure_id, record_id
        )
        sealed, clear = self._sealer.split(values, record_key, record_id)
        names, digests = await self._sealer.index_values(structure_id, values, self._schema.indexed)
        sealed_bytes, clear_text = self._sealer.pack(
            sealed, clear, record_key, RowState(record_id, 1, structure_id, referent_id, 1)
        )
        return SealedNew(
            record_id,
            structure_id,
            referent_id,
            branch_version,
            wrapped,
            sealed_bytes,
            clear_text,
            names,
            digests,
            self._sealer.national_flags(names),
            self._retention.retain_until(values),
        )

    # --- operations -----------------------------------------------------------------------
    async def create(
        self,
        principal: Principal,
        body: bytes,
        idempotency_key: str | None,
        log: WriteLog,
        *,
        record_id: uuid.UUID | None = None,
    ) -> Created:
        assert principal.structure_id is not None
        values = self._decode_create(body)
        request_digest = None
        if idempotency_key is not None:
            request_digest = await self._sealer.request_digest(body)
            existing = await self._repo.idempotency(principal.account_id, idempotency_key)
            if existing is not None:
                return _replay(existing, request_digest)

        # Chosen by the caller only for a canary, registered before it exists.
        new = await self.seal_new(
            principal.structure_id, principal.account_id, values, record_id or uuid.uuid4()
        )
        record_id = new.record_id
        try:
            # The record and its access-log entry commit together or not at all.
            row = await self._repo.create(
                record_id=record_id,
                structure_id=new.structure_id,
                referent_id=new.referent_id,
                branch_key_version=new.branch_key_version,
                record_key=new.record_key,
                sealed=new.sealed,
                clear=new.clear,
                index_names=new.index_names,
                index_digests=new.index_digests,
                index_national=new.index_national,
                idempotency_key=idempotency_key,
                request_digest=request_digest,
                entry=log.statement_entry(record_ids=(record_id,)),
                retain_until=new.retain_until,
            )
        except IdempotencyRace:
            # A concurrent retry with the same key won; nothing of ours was written.
            assert idempotency_key is not None
            assert request_digest is not None
            existing = await self._repo.idempotency(principal.account_id, idempotency_key)
            if existing is None:
                raise InternalError() from None
            return _replay(existing, request_digest)
        log.accepted(row)
        return Created(record_id, int(row["version"]), replayed=False)

    async def read(
        self, principal: Principal, record_id: uuid.UUID, purpose: Purpose | None = None
    ) -> RecordDocument:
        if self.is_canary(record_id):
            # Named, whatever exists: only a copy of the database knows the id.
            await self.honeytoken_touched(principal, record_id)
            raise NotFound()
        row = await self._repo.fetch(record_id, principal.account_id)
        view = None if row is None else access.decide(principal, row, purpose)
        if row is None or view is None:
            raise NotFound()
        try:
            return self._document(row, view, await self._sealer.record_key(row))
        except (RecordIntegrityFailed, DecryptionFailed):
            await self.integrity_failed(principal, record_id)
            raise

    def _document(self, row: asyncpg.Record, view: View, record_key: AESGCM) -> RecordDocument:
        if view is View.FULL:
            record = self._sealer.full(row, record_key)
        else:
            record = self._sealer.masked(row, record_key)
        document = self._meta(row, view)
        document["record"] = record
        return RecordDocument(
            row["id"], int(row["version"]), view, _json_encoder.encode(document), tuple(record)
        )

    async def update(
        self,
        principal: Principal,
        record_id: uuid.UUID,
        expected_version: int,
        body: bytes,
        log: WriteLog,
    ) -> RecordDocument:
        """Apply the patch and return the full record as it now is; the write, its
        access-log entry and the record budget it draws on (the response carries the
        record) commit together: over budget, nothing is written."""
        changes = self._decode_patch(body)
        if self.is_canary(record_id):
            await self.honeytoken_touched(principal, record_id)
            raise NotFound()
        async with self._repo.transaction() as conn:
            row = await self._repo.fetch_for_update(conn, record_id, principal.account_id)
            if row is None or not access.may_write(principal, row):
                raise NotFound()
            if row["version"] != expected_version:
                raise PreconditionFailed()
            record_key = await self._sealer.record_key(row)
            # A row someone else wrote is never re-sealed as ours.
            try:
                self._sealer.check_integrity(row, record_key)
            except RecordIntegrityFailed:
                await self.integrity_failed(principal, record_id)
                raise
            sealed, clear = self._sealer.stored(row)
            present = {k: v for k, v in changes.items() if v is not None}
            new_sealed, new_clear = self._sealer.split(
                present, record_key, record_id, row["key_version"]
            )
            for name, value in changes.items():
                if value is None:
                    sealed.pop(name, None)
                    clear.pop(name, None)
            sealed.update(new_sealed)
            clear.update(new_clear)
            touched = [p for p in self._schema.indexed if p.name in changes]
            names, digests = await self._sealer.index_values(row["structure_id"], present, touched)
            sealed_bytes, clear_text = self._sealer.pack(
                sealed,
                clear,
                record_key,
                RowState(
                    record_id,
                    expected_version + 1,
                    row["structure_id"],
                    row["referent_id"],
                    int(row["key_version"]),
                ),
            )
            updated = await self._repo.update(
                conn, record_id, sealed_bytes, clear_text, expected_version
            )
            if updated is None:
                raise PreconditionFailed()
            if _DATING_FIELDS.intersection(changes):
                dating = self._sealer.decrypt_values(
                    row, record_key, _DATING_FIELDS.difference(changes)
                )
                dating.update({k: v for k, v in present.items() if k in _DATING_FIELDS})
                await self._repo.set_retain_until(
                    conn, record_id, self._retention.retain_until(dating)
                )
            if touched:
                await self._repo.replace_indexes(
                    conn,
                    record_id,
                    row["structure_id"],
                    [p.index.name for p in touched if p.index],
                    names,
                    digests,
                    self._sealer.national_flags(names),
                )
            fresh = await self._repo.fetch_for_update(conn, record_id, principal.account_id)
            assert fresh is not None  # locked by this transaction since the first read
            document = self._document(fresh, View.FULL, record_key)
            await log.within(conn, Charge.FULL, record_ids=(record_id,), fields=document.fields)
        return document

    async def search(
        self,
        principal: Principal,
        criteria: Mapping[str, str],
        after: uuid.UUID | None,
        limit: int,
        *,
        restricted: bool = False,
    ) -> Page:
        """Equality search, after the record id `after` (None: from the start);
        `restricted` indexes (the NIR) only through their own route."""
        if not criteria:
            raise InvalidParameter("give at least one search criterion")
        structure_id, referent = access.list_scope(principal)
        names, digests = await self._sealer.criteria_digests(
            structure_id, criteria, restricted=restricted
        )
        limit = min(limit, self._search_page_max)
        rows, canaries = await self._visible(
            lambda start: self._repo.search_page(
                names, digests, structure_id, referent, start, limit + 1
            ),
            after,
            limit,
        )
        if canaries and _IDENTIFYING.intersection(criteria):
            # Found by a value that identifies one person (a NIR, an e-mail, a phone,
            # a France Travail id): whoever searched holds the canary's data, a copy of
            # the database or an export. A common name or a birth date can meet a
            # canary by chance: it is only left out of the page.
            for canary in canaries:
                await self.honeytoken_touched(principal, canary)
            raise NotFound()
        return await self._page(principal, rows, limit)

    async def date_undated(
        self, batch_size: int, log: Callable[[list[uuid.UUID]], Awaitable[None]]
    ) -> int:
        """Compute and store the last readable day of the records written before the
        service kept it, decrypting their birth date and programme once; `log(ids)`
        records each batch decrypted (before its days are stored). How many dated."""
        after, dated = _BEFORE_ALL, 0
        while True:
            rows = await self._repo.undated(after, batch_size)
            if not rows:
                return dated
            await log([r["id"] for r in rows])
            days = []
            for row in rows:
                values = self._sealer.decrypt_values(
                    row, await self._sealer.record_key(row), _DATING_FIELDS
                )
                days.append(self._retention.retain_until(values))
            await self._repo.date_undated([r["id"] for r in rows], days)
            dated += sum(1 for d in days if d is not None)
            after = rows[-1]["id"]

    async def caseload(self, principal: Principal, after: uuid.UUID | None, limit: int) -> Page:
        structure_id, referent = access.list_scope(principal)
        limit = min(limit, self._caseload_page_max)
        rows, _ = await self._visible(
            lambda start: self._repo.caseload_page(structure_id, referent, start, limit + 1),
            after,
            limit,
        )
        return await self._page(principal, rows, limit)

    async def _visible(
        self,
        fetch: Callable[[uuid.UUID], Awaitable[list[asyncpg.Record]]],
        after: uuid.UUID | None,
        limit: int,
    ) -> tuple[list[asyncpg.Record], list[uuid.UUID]]:
        """Up to `limit` + 1 rows that are not canaries, and the canaries met on the
        way. Canaries are left out before the page is cut, and the query runs again
        past them when they made it short: a cursor only ever carries the id of a row
        that was shown (a canary's id in a cursor would tell a supervisor which
        records to avoid)."""
        shown: list[asyncpg.Record] = []
        canaries: list[uuid.UUID] = []
        start = after or _BEFORE_ALL
        while True:
            rows = await fetch(start)
            for row in rows:
                if self.is_canary(row["id"]):
                    canaries.append(row["id"])
                else:
                    shown.append(row)
            if len(shown) > limit or len(rows) <= limit:
                return shown, canaries
            start = rows[-1]["id"]

    async def _page(self, principal: Principal, rows: list[asyncpg.Record], limit: int) -> Page:
        """Masked summaries of up to `limit` rows; the query asked for one more, whose
        presence alone says that there is a next page."""
        more = len(rows) > limit
        rows = rows[:limit]  # no canary among them (`_visible`)
        items = []
        for row in rows:
            record_key = await self._sealer.record_key(row)
            summary = {"id": row["id"], "referent_id": row["referent_id"]}
            try:
                summary.update(self._sealer.masked(row, record_key))
            except RecordIntegrityFailed:
                await self.integrity_failed(principal, row["id"])
                raise
            items.append(summary)
        next_after = rows[-1]["id"] if more and rows else None
        return Page(items, next_after, tuple(r["id"] for r in rows))


# The fields the last readable day is computed from (records/retention.py).
_DATING_FIELDS = frozenset({"birth_date", "programme"})

# Search criteria whose values identify one person: a canary found by one of them was
# looked for with its data in hand.
_IDENTIFYING = frozenset({"nir", "email", "phone", "ft_id"})


def _never(_record_id: uuid.UUID) -> bool:
    return False


# Before every record id: ids are compared as UUIDs, and none is the nil UUID.
_BEFORE_ALL = uuid.UUID(int=0)


def _replay(existing: asyncpg.Record, request_digest: bytes) -> Created:
    if not hmac.compare_digest(existing["request_digest"], request_digest):
        raise IdempotencyKeyReused()
    return Created(existing["record_id"], 0, replayed=True)


def _present(value: msgspec.Struct) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(value).items() if v is not msgspec.UNSET}
