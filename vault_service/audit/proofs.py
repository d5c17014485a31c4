"""Proofs, bundles and reports over the stored access log.

Proofs are computed from tiles (vault_service.audit.tiles): a proof needs O(log n)
complete-subtree hashes, which live in at most two tiles per 8 tree levels. The pure
proof code reads nodes synchronously, so each request runs it twice: once against a
stand-in reader that only records which tiles the nodes live in, then, after one
query fetches exactly those tiles, for real. One database round trip for the tiles
of a proof, whatever the tree size.

Everything served here is checkable offline by vault_service.audit.verify against a
signed checkpoint; nothing here needs to be trusted.
"""

from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import hmac
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from vault_service.audit import repository as sql
from vault_service.audit.log import LEAF_SIZE, canonical_body
from vault_service.audit.merkle import NodeReader, consistency_proof, inclusion_proof, root
from vault_service.audit.note import (
    NoteVerifier,
    format_checkpoint,
    verifier_key_string,
    verifier_map,
)
from vault_service.audit.tiles import TILE_HEIGHT, TILE_WIDTH, TileReader
from vault_service.audit.verify import (
    BUNDLE_FORMAT,
    CONSISTENCY_FORMAT,
    INCLUSION_FORMAT,
    KEYS_FORMAT,
    MAX_BUNDLE_ENTRIES,
    REPORT_PROOFS_FORMAT,
    Bundle,
    BundleEntry,
    ConsistencyProofFile,
    InclusionProofFile,
    KeysFile,
    frontier_positions,
)
from vault_service.errors import ConfigurationError, InvalidParameter, NotFound
from vault_service.kms.vault import CHECKPOINT_KEY, VaultKms
from vault_service.paging import (
    decode_index_cursor,
    decode_uuid_cursor,
    encode_index_cursor,
    encode_uuid_cursor,
)

__all__ = [
    "DEFAULT_ORIGIN",
    "AuditProofs",
    "BreachImpactPage",
    "EventsPage",
    "SigningKeySet",
    "TileFetcher",
    "decode_index_cursor",
    "encode_index_cursor",
    "load_key_set",
    "tree_root_from_tiles",
]

DEFAULT_ORIGIN: Final = "vault-service.example/access-log"
_KEYS_CACHE_SECONDS: Final = 60.0
Connection = asyncpg.Connection | PoolConnectionProxy
_T = TypeVar("_T")
_NULL_BODY: Final = msgspec.Raw(b"null")
_json = msgspec.json.Decoder()


# --- tiles from the database -------------------------------------------------------------
class _PlanningReader:
    """A NodeReader that answers every node with zeros and remembers which tile each
    node lives in: proof code run against it names the tiles it needs, without
    hashing anything."""

    def __init__(self) -> None:
        self.wanted: set[tuple[int, int]] = set()

    def node(self, level: int, index: int) -> bytes:
        tile_level, height = divmod(level, TILE_HEIGHT)
        self.wanted.add((tile_level, (index << height) // TILE_WIDTH))
        return bytes(32)


class _DictStore:
    def __init__(self, tiles: Mapping[tuple[int, int], bytes]) -> None:
        self._tiles = tiles

    def get(self, level: int, index: int) -> bytes | None:
        return self._tiles.get((level, index))


class TileFetcher:
    """Runs pure proof code against the tile table with one query per computation."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._tiles: dict[tuple[int, int], bytes] = {}

    async def compute(self, fn: Callable[[NodeReader], _T]) -> _T:
        """`fn` over the stored tiles. `fn` must only ask for complete subtrees of the
        tree it works on (the proof functions do); stored rows may be wider than that
        tree needs, which is harmless because a stored hash never changes."""
        planner = _PlanningReader()
        fn(planner)
        missing = sorted(planner.wanted - self._tiles.keys())
        if missing:
            rows = await self._conn.fetch(
                sql.SELECT_TILES, [k[0] for k in missing], [k[1] for k in missing]
            )
            for row in rows:
                self._tiles[(row["level"], row["idx"])] = bytes(row["hashes"])
        return fn(TileReader(_DictStore(self._tiles)))

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return await self.compute(lambda r: consistency_proof(size1, size2, r))


async def tree_root_from_tiles(fetcher: TileFetcher, size: int) -> bytes:
    return await fetcher.compute(lambda r: root(size, r))


# --- checkpoint keys ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SigningKeySet:
    """The checkpoint key's live versions as note verifiers, and the latest one."""

    origin: str
    latest_version: int
    public_keys: dict[int, bytes]

    def verifiers(self) -> dict[tuple[str, int], NoteVerifier]:
        return verifier_map(
            *(NoteVerifier.from_public_key(self.origin, k) for k in self.public_keys.values())
        )

    def verifier_keys(self) -> list[str]:
        """Standard `name+id+key` strings, oldest version first: every version that can
        still verify, so checkpoints signed before a rotation stay checkable."""
        return [
            verifier_key_string(self.origin, self.public_keys[v]) for v in sorted(self.public_keys)
        ]


async def load_key_set(kms: VaultKms, origin: str) -> SigningKeySet:
    latest, keys = await kms.public_keys(CHECKPOINT_KEY)
    if latest not in keys:
        raise ConfigurationError("the checkpoint key's latest version has no public key")
    return SigningKeySet(origin=origin, latest_version=latest, public_keys=keys)


# --- response shapes --------------------------------------------------------------------------
class EventsPage(msgspec.Struct, kw_only=True):
    items: list[dict[str, Any]]
    next_cursor: str | None


class VolumeRow(msgspec.Struct, kw_only=True):
    day: datetime.datetime
    key: str | None  # the actor's or structure's id; None for anonymous refusals
    entries: int
    records: int


class VolumePage(msgspec.Struct, kw_only=True):
    by: str
    since: datetime.datetime
    until: datetime.datetime
    rows: list[VolumeRow]
    truncated: bool


class ImpactedRecord(msgspec.Struct, kw_only=True):
    record_id: uuid.UUID
    accesses: int
    first_at: datetime.datetime
    last_at: datetime.datetime
    actions: list[str]
    fields: list[str]


class BreachImpactPage(msgspec.Struct, kw_only=True):
    actor_id: uuid.UUID
    since: datetime.datetime
    until: datetime.datetime
    tree_size: int
    entries: int
    refused: int
    # Bodies older than this were pruned by retention: a window starting earlier may
    # be incomplete, and the report says so rather than look complete.
    retained_since: datetime.datetime | None
    complete: bool
    # Entries of the window whose body does not match its leaf (tampered bodies): their
    # leaf indexes (the first 100) and how many.
    unverified_entries: list[int]
    unverified_count: int
    records: list[ImpactedRecord]
    next_cursor: str | None


MAX_REPORT_PROOFS: Final = 10_000


class ReportProofs(msgspec.Struct, kw_only=True):
    """Every entry of a breach-impact window with its inclusion proof in the latest
    checkpoint, and that checkpoint: verified offline by `audit verify
    --checkpoint <this checkpoint> --report-proofs <this file>`."""

    format: str
    origin: str
    actor_id: uuid.UUID
    since: datetime.datetime
    until: datetime.datetime
    checkpoint: str
    tree_size: int
    entries: list[InclusionProofFile]


class SubjectPage(msgspec.Struct, kw_only=True):
    record_id: uuid.UUID
    items: list[dict[str, Any]]
    next_cursor: str | None


_MAX_UNVERIFIED: Final = 100


def body_matches_leaf(salt: bytes, body: str, leaf: bytes) -> bool:
    """Whether a stored body is the one its leaf commits to: SHA-256(salt || canonical
    body) against the leaf's last 32 bytes. A body edited, or inserted for an entry
    whose own was pruned, by whoever can write the table does not match."""
    try:
        canonical = canonical_body(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False
    return len(leaf) == LEAF_SIZE and hmac.compare_digest(
        hashlib.sha256(bytes(salt) + canonical).digest(), bytes(leaf)[LEAF_SIZE - 32 :]
    )


def _event_item(row: asyncpg.Record) -> dict[str, Any]:
    """An entry as auditors get it, with `verified`: its body matches its leaf. A body
    that does not is still shown (it is evidence), marked false."""
    body = str(row["body"])
    decoded = _json.decode(body)
    item: dict[str, Any] = {"index": int(row["idx"])}
    if isinstance(decoded, dict):
        item.update(decoded)
    item["verified"] = body_matches_leaf(row["salt"], body, row["leaf"])
    return item


def _text(value: uuid.UUID | None) -> str | None:
    # Bodies hold ids as canonical lower-case text; compare them as such.
    return None if value is None else str(value)


def _next_index_cursor(rows: list[asyncpg.Record], limit: int) -> str | None:
    # One row more than the page was asked for: there is a next page.
    return encode_index_cursor(int(rows[limit - 1]["idx"])) if len(rows) > limit else None


def _served_body(text: str | None) -> msgspec.Raw:
    """The body as canonical bytes, which the verifier hashes as is. A stored body that
    no longer fits the format (tampered) is served as stored, never repaired: the
    verifier must see it fail."""
    if text is None:
        return _NULL_BODY
    try:
        return msgspec.Raw(canonical_body(text))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return msgspec.Raw(text.encode("utf-8"))


# --- the service ------------------------------------------------------------------------------
class AuditProofs:
    """Read side of the access log for the auditor API (and tools)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        kms: VaultKms | None = None,
        origin: str = DEFAULT_ORIGIN,
        *,
        events_page_max: int = 1000,
        report_page_max: int = 10_000,
    ) -> None:
        format_checkpoint(origin, 0, bytes(32))  # an origin that cannot be a key name fails here
        self._pool = pool
        self._kms = kms
        self._keys: tuple[float, KeysFile] | None = None
        self.origin = origin
        self.events_page_max = events_page_max
        self.report_page_max = report_page_max

    async def tree_head(self) -> tuple[int, bytes]:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(sql.SELECT_TREE)
        if row is None:
            raise NotFound("the access log has no tree")
        return int(row["size"]), bytes(row["root"])

    async def checkpoint(self, size: int | None = None) -> tuple[int, str]:
        async with self._pool.acquire() as conn:
            if size is None:
                row = await conn.fetchrow(sql.SELECT_LATEST_CHECKPOINT)
            else:
                row = await conn.fetchrow(sql.SELECT_CHECKPOINT, size)
        if row is None:
            raise NotFound("no checkpoint has been published for this size yet")
        return int(row["size"]), str(row["note"])

    async def keys(self) -> KeysFile:
        """Verifier keys of every live version, read from Vault at most once a minute."""
        if self._kms is None:
            raise ConfigurationError("the audit service has no key service")
        now = time.monotonic()
        if self._keys is None or now - self._keys[0] > _KEYS_CACHE_SECONDS:
            keys = await load_key_set(self._kms, self.origin)
            self._keys = (
                now,
                KeysFile(
                    format=KEYS_FORMAT,
                    origin=self.origin,
                    latest_version=keys.latest_version,
                    keys=keys.verifier_keys(),
                ),
            )
        return self._keys[1]

    async def _resolve_size(self, conn: Connection, size: int | None) -> int:
        """`size` if the tree has reached it, else 400; no size: the latest checkpoint's
        (what an auditor can check the answer against)."""
        if size is None:
            row = await conn.fetchrow(sql.SELECT_LATEST_CHECKPOINT)
            if row is None:
                raise NotFound("no checkpoint has been published yet; pass size")
            return int(row["size"])
        state = await conn.fetchrow(sql.SELECT_TREE)
        if state is None or size > int(state["size"]):
            raise InvalidParameter("size is beyond the current tree size")
        return size

    async def inclusion(self, index: int, size: int | None = None) -> InclusionProofFile:
        # Two round trips whatever the tree size: the entry with the head, then tiles.
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(sql.SELECT_ENTRY_AND_HEAD, index)
            if row is None:
                raise NotFound("the access log has no tree")
            if size is None:
                if row["checkpoint_size"] is None:
                    raise NotFound("no checkpoint has been published yet; pass size")
                tree_size = int(row["checkpoint_size"])
            elif size > int(row["tree_size"]):
                raise InvalidParameter("size is beyond the current tree size")
            else:
                tree_size = size
            if not 0 <= index < tree_size:
                raise InvalidParameter("index must be smaller than size")
            if row["leaf"] is None:
                raise NotFound("no entry with this index")
            proof = await TileFetcher(conn).compute(lambda r: inclusion_proof(index, tree_size, r))
        return InclusionProofFile(
            format=INCLUSION_FORMAT,
            origin=self.origin,
            index=index,
            tree_size=tree_size,
            leaf=bytes(row["leaf"]),
            salt=None if row["salt"] is None else bytes(row["salt"]),
            body=_served_body(row["body"]),
            proof=proof,
        )

    async def consistency(self, first: int, second: int | None = None) -> ConsistencyProofFile:
        async with self._pool.acquire() as conn:
            tree_size = await self._resolve_size(conn, second)
            if not 0 < first <= tree_size:
                raise InvalidParameter("from must be between 1 and to")
            proof = await TileFetcher(conn).consistency_proof(first, tree_size)
        return ConsistencyProofFile(
            format=CONSISTENCY_FORMAT,
            origin=self.origin,
            first=first,
            second=tree_size,
            proof=proof,
        )

    async def bundle(self, start: int, end: int | None, size: int | None = None) -> Bundle:
        async with self._pool.acquire() as conn:
            tree_size = await self._resolve_size(conn, size)
            stop = min(start + MAX_BUNDLE_ENTRIES, tree_size) if end is None else end
            if not 0 <= start <= stop <= tree_size:
                raise InvalidParameter("need 0 <= start <= end <= size")
            if stop - start > MAX_BUNDLE_ENTRIES:
                raise InvalidParameter(f"a bundle holds at most {MAX_BUNDLE_ENTRIES} entries")
            positions = frontier_positions(start)
            fetcher = TileFetcher(conn)
            frontier = await fetcher.compute(
                lambda r: [r.node(level, index) for level, index in positions]
            )
            path = await fetcher.consistency_proof(stop, tree_size) if 0 < stop < tree_size else []
            rows = await conn.fetch(sql.SELECT_ENTRY_RANGE, start, stop)
        entries = [
            BundleEntry(
                index=int(r["idx"]),
                leaf=bytes(r["leaf"]),
                salt=None if r["salt"] is None else bytes(r["salt"]),
                body=_served_body(r["body"]),
            )
            for r in rows
        ]
        return Bundle(
            format=BUNDLE_FORMAT,
            origin=self.origin,
            tree_size=tree_size,
            start=start,
            end=stop,
            frontier=frontier,
            consistency=path,
            entries=entries,
        )

    async def events(
        self,
        *,
        record_id: uuid.UUID | None,
        actor_id: uuid.UUID | None,
        action: str | None,
        since: datetime.datetime | None,
        until: datetime.datetime | None,
        cursor: str | None,
        limit: int,
        structure_id: uuid.UUID | None = None,
    ) -> EventsPage:
        after = decode_index_cursor(cursor)
        limit = min(limit, self.events_page_max)
        # The most selective filter given leads, on its own index.
        if record_id is not None:
            query = sql.EVENTS_BY_RECORD
        elif actor_id is not None:
            query = sql.EVENTS_BY_ACTOR
        elif structure_id is not None:
            query = sql.EVENTS_BY_STRUCTURE
        elif action is not None:
            query = sql.EVENTS_BY_ACTION
        else:
            query = sql.EVENTS_ALL
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                query,
                _text(record_id),
                _text(actor_id),
                action,
                since,
                until,
                after,
                limit + 1,
                _text(structure_id),
            )
        items = [_event_item(r) for r in rows[:limit]]
        return EventsPage(items=items, next_cursor=_next_index_cursor(rows, limit))

    async def volume(
        self, by: str, since: datetime.datetime, until: datetime.datetime, limit: int
    ) -> VolumePage:
        """Entries and records named per UTC day and per actor or structure: counts and
        ids only. More groups than `limit` answer the first `limit`, marked truncated."""
        query = sql.VOLUME_BY_ACTOR if by == "actor" else sql.VOLUME_BY_STRUCTURE
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(query, since, until, limit + 1)
        return VolumePage(
            by=by,
            since=since,
            until=until,
            rows=[
                VolumeRow(
                    day=r["day"], key=r["key"], entries=int(r["entries"]), records=int(r["records"])
                )
                for r in rows[:limit]
            ],
            truncated=len(rows) > limit,
        )

    async def subject(self, record_id: uuid.UUID, cursor: str | None, limit: int) -> SubjectPage:
        after = decode_index_cursor(cursor)
        limit = min(limit, self.events_page_max)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql.SUBJECT_EVENTS, str(record_id), after, limit + 1)
        items = [_event_item(r) for r in rows[:limit]]
        return SubjectPage(
            record_id=record_id, items=items, next_cursor=_next_index_cursor(rows, limit)
        )

    async def breach_impact(
        self,
        actor_id: uuid.UUID,
        since: datetime.datetime,
        until: datetime.datetime,
        cursor: str | None,
        limit: int,
    ) -> BreachImpactPage:
        if until <= since:
            raise InvalidParameter("until must be after since")
        after = decode_uuid_cursor(cursor)
        limit = min(limit, self.report_page_max)
        # One snapshot: the records, the totals and the tree size agree.
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            state = await conn.fetchrow(sql.SELECT_TREE)
            actor = str(actor_id)
            totals = await conn.fetchrow(sql.BREACH_IMPACT_TOTALS, actor, since, until)
            oldest = await conn.fetchval(sql.OLDEST_BODY)
            rows = await conn.fetch(sql.BREACH_IMPACT, actor, since, until, after, limit + 1)
            checked = await conn.fetch(sql.BREACH_IMPACT_ENTRIES, actor, since, until)
        unverified = sorted(
            int(r["idx"]) for r in checked if not body_matches_leaf(r["salt"], r["body"], r["leaf"])
        )
        records = [
            ImpactedRecord(
                record_id=r["record_id"],
                accesses=int(r["accesses"]),
                first_at=r["first_at"],
                last_at=r["last_at"],
                actions=list(r["actions"]),
                fields=list(r["fields"]),
            )
            for r in rows[:limit]
        ]
        next_cursor = (
            encode_uuid_cursor(records[-1].record_id) if len(rows) > limit and records else None
        )
        return BreachImpactPage(
            actor_id=actor_id,
            since=since,
            until=until,
            tree_size=int(state["size"]) if state is not None else 0,
            entries=int(totals["entries"]) if totals is not None else 0,
            refused=int(totals["refused"]) if totals is not None else 0,
            retained_since=oldest,
            # A body that does not match its leaf makes the report untrustworthy as a
            # whole: it says so, and which entries, rather than look complete.
            complete=(oldest is None or since >= oldest) and not unverified,
            unverified_entries=unverified[:_MAX_UNVERIFIED],
            unverified_count=len(unverified),
            records=records,
            next_cursor=next_cursor,
        )

    async def report_proofs(
        self, actor_id: uuid.UUID, since: datetime.datetime, until: datetime.datetime
    ) -> ReportProofs:
        """The inclusion proofs of a breach-impact window's entries in the latest
        checkpoint (entries after it wait for the next one); refused above
        MAX_REPORT_PROOFS entries (narrow the window)."""
        if until <= since:
            raise InvalidParameter("until must be after since")
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            latest = await conn.fetchrow(sql.SELECT_LATEST_CHECKPOINT)
            if latest is None:
                raise NotFound("no checkpoint has been published yet")
            size = int(latest["size"])
            rows = await conn.fetch(
                sql.REPORT_ENTRIES, str(actor_id), since, until, size, MAX_REPORT_PROOFS + 1
            )
            if len(rows) > MAX_REPORT_PROOFS:
                raise InvalidParameter(
                    f"more than {MAX_REPORT_PROOFS} entries: narrow since and until"
                )
            fetcher = TileFetcher(conn)
            entries = []
            for r in rows:
                index = int(r["idx"])
                proof = await fetcher.compute(functools.partial(inclusion_proof, index, size))
                entries.append(
                    InclusionProofFile(
                        format=INCLUSION_FORMAT,
                        origin=self.origin,
                        index=index,
                        tree_size=size,
                        leaf=bytes(r["leaf"]),
                        salt=None if r["salt"] is None else bytes(r["salt"]),
                        body=_served_body(r["body"]),
                        proof=proof,
                    )
                )
        return ReportProofs(
            format=REPORT_PROOFS_FORMAT,
            origin=self.origin,
            actor_id=actor_id,
            since=since,
            until=until,
            checkpoint=str(latest["note"]),
            tree_size=size,
            entries=entries,
        )

    async def breach_impact_csv(self, first: BreachImpactPage) -> AsyncIterator[bytes]:
        """Every impacted record, one CSV row each, for a notification campaign, from
        the first page the caller fetched (so that errors surface before the response
        starts) on; paged so that no connection is held while the client reads."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(["record_id", "accesses", "first_at", "last_at", "actions", "fields"])
        page = first
        while True:
            for record in page.records:
                writer.writerow(
                    [
                        str(record.record_id),
                        record.accesses,
                        record.first_at.isoformat(),
                        record.last_at.isoformat(),
                        ";".join(record.actions),
                        ";".join(record.fields),
                    ]
                )
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
            if page.next_cursor is None:
                return
            page = await self.breach_impact(
                first.actor_id, first.since, first.until, page.next_cursor, self.report_page_max
            )
