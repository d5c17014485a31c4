"""`vault-service import FILE --structure-map MAP`: a legacy export moved in.

Input: JSON Lines, one youth a line: `{"legacy_id", "structure", "referent", "record"}`
where `record` is a case record as `POST /v1/records` takes it. Each line is checked
by the API's own decoder (`RecordService.validate_create`) and sealed by the API's own
path (`RecordService.seal_new`: its record key under its structure's branch key, every
encrypted field, its blind indexes, its integrity tag), in this process or in worker
processes (sealers.py); nothing here encrypts.

Lines are grouped by structure; each batch of one structure is one statement on the
admin's login (vs_import_batch, migration 0016): the records, their indexes, the
ledger rows and the batch's access-log entry (`record.import`, the ids created)
commit together or not at all. The ledger holds HMAC(source, legacy id) under a
Vault-derived key: a rerun, or `--resume` after a crash, skips every line a committed
batch holds, and a database copy does not name the old system's ids.

Refusals are reported by line number and stable code, never by value: the console,
the logs and the report file never hold a field of a line.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Annotated, Any, Final, TextIO

import msgspec
import structlog

from vault_service.errors import BadRequest, Conflict
from vault_service.imports.repository import ImportRepository
from vault_service.imports.sealers import InProcess, LineSealer
from vault_service.progress import Pace, RotationProgress
from vault_service.records.service import RecordService, SealedNew

log = structlog.get_logger(__name__)

LEGACY_LABEL: Final = b"vault-service/import-legacy/v1"
"""The derivation label of the legacy-id key (derived inside Vault like the blind-index
keys, under the structure-scoped root)."""

# Stable refusal codes of a line, beside the API's own `invalid_body` (a record that
# `POST /v1/records` would refuse, an indexed value that cannot be normalised included).
LINE_INVALID: Final = "import_line_invalid"
STRUCTURE_UNKNOWN: Final = "import_structure_unknown"
DUPLICATE: Final = "import_duplicate_legacy_id"

SourceName = Annotated[str, msgspec.Meta(pattern="^[a-z0-9][a-z0-9_.-]{0,63}$")]
# The queue's stand-in in a dry run, which creates no queue account.
_NO_ACCOUNT: Final = uuid.UUID(int=0)


class InvalidStructureMap(BadRequest):
    code = "import_map_invalid"
    title = "The structure map is invalid"


class ImportUnfinished(Conflict):
    code = "import_unfinished"
    title = "An import of this source is unfinished"


class ImportInProgress(Conflict):
    code = "import_in_progress"
    title = "An import of this source is running elsewhere"


class Line(msgspec.Struct, forbid_unknown_fields=True):
    legacy_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    structure: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    record: msgspec.Raw
    referent: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None


class StructureMap(msgspec.Struct, forbid_unknown_fields=True):
    """The operator's map: legacy structure code -> the service's structure code; legacy
    referent reference -> account id, and/or the issuer whose linked subjects are the
    legacy references (accounts linked with `accounts link`)."""

    structures: dict[str, str]
    source: SourceName | None = None
    referents: dict[str, uuid.UUID] = msgspec.field(default_factory=dict)
    referent_issuer: Annotated[str, msgspec.Meta(max_length=300)] | None = None


_line_decoder = msgspec.json.Decoder(Line)


def load_map(path: Path) -> StructureMap:
    try:
        return msgspec.json.decode(path.read_bytes(), type=StructureMap)
    except OSError:
        raise InvalidStructureMap("the structure map cannot be read") from None
    except (msgspec.ValidationError, msgspec.DecodeError):
        # msgspec's message may quote a value of the file: not echoed.
        raise InvalidStructureMap(
            "the structure map is not a JSON object of the documented shape"
        ) from None


@dataclass
class ImportReport:
    source: str
    dry_run: bool
    run_id: uuid.UUID | None = None
    resumed: bool = False
    read: int = 0
    imported: int = 0
    skipped: int = 0
    queued: int = 0
    batches: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    queues: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "run_id": None if self.run_id is None else str(self.run_id),
            "resumed": self.resumed,
            "read": self.read,
            "imported": self.imported,
            "skipped": self.skipped,
            "queued": self.queued,
            "refused": sum(self.refused.values()),
            "refused_by_code": dict(sorted(self.refused.items())),
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.imported / self.seconds) if self.seconds else 0,
            "queue_accounts": {str(s): str(a) for s, a in self.queues.items()},
            "refusals": [{"line": n, "code": c} for n, c in self.refusals],
        }


@dataclass(slots=True)
class _Pending:
    line: int
    digest: bytes
    record: bytes  # the line's `record`, checked when its batch is sealed
    referent: uuid.UUID | None


class Importer:
    def __init__(
        self,
        records: RecordService,
        repo: ImportRepository,
        smap: StructureMap,
        *,
        source: str,
        batch_size: int,
        dry_run: bool,
        resume: bool,
        sealer: LineSealer | None = None,
        max_rate: float = 0.0,
        progress: TextIO | None = None,
    ) -> None:
        """`max_rate`: records a second at most (0: as fast as it goes), so that a
        service that serves meanwhile keeps its reads."""
        self._records = records
        self._sealer = sealer or InProcess(records)
        self._pace = Pace(max_rate)
        self._repo = repo
        self._map = smap
        self._source = source
        self._batch_size = batch_size
        self._dry_run = dry_run
        self._resume = resume
        self._progress = progress
        self._report = ImportReport(source, dry_run)
        self._buffers: dict[uuid.UUID, list[_Pending]] = {}
        self._writing: asyncio.Task[None] | None = None
        self._key = b""
        self._bar: RotationProgress  # set for the run

    async def run(self, path: Path) -> ImportReport:
        if not await self._repo.try_lock(self._source):
            raise ImportInProgress("another import of this source is running; this one did nothing")
        try:
            return await self._run(path)
        finally:
            await self._repo.unlock(self._source)

    async def _run(self, path: Path) -> ImportReport:
        started = time.monotonic()
        report = self._report
        structures = await self._structures()
        referents = await self._referents()
        open_run = await self._repo.open_run(self._source)
        if open_run is not None and not self._resume:
            raise ImportUnfinished(
                "an earlier import of this source did not finish: rerun with --resume "
                "(finished batches are not redone)"
            )
        self._key = await self._records.sealer.derived_key(LEGACY_LABEL)
        total = _count_lines(path)
        if not self._dry_run:
            if open_run is not None:
                report.run_id, report.resumed = open_run, True
            else:
                report.run_id = uuid.uuid4()
                await self._repo.start(report.run_id, self._source)
        log.info(
            "import_started",
            source=self._source,
            run_id=str(report.run_id),
            lines=total,
            dry_run=self._dry_run,
            resumed=report.resumed,
        )
        seen: set[bytes] = set()
        with RotationProgress("import", total, stream=self._progress, rate=True) as bar:
            self._bar = bar
            for number, raw in _lines(path):
                report.read += 1
                await self._take(number, raw, structures, referents, seen)
            for structure_id, buffer in list(self._buffers.items()):
                await self._flush(structure_id, buffer)
            self._buffers.clear()
            await self._written()
        report.seconds = time.monotonic() - started
        if report.run_id is not None:
            await self._repo.finish(
                report.run_id, report.read, report.imported, report.skipped, report.refused
            )
        log.info(
            "import_finished",
            source=self._source,
            run_id=str(report.run_id),
            dry_run=self._dry_run,
            read=report.read,
            imported=report.imported,
            skipped=report.skipped,
            queued=report.queued,
            refused=sum(report.refused.values()),
            refused_by_code=dict(report.refused),
        )
        return report

    async def _take(
        self,
        number: int,
        raw: bytes,
        structures: dict[str, uuid.UUID],
        referents: dict[str, tuple[uuid.UUID, uuid.UUID]],
        seen: set[bytes],
    ) -> None:
        """One line checked and buffered with its structure's (a full buffer flushed),
        or refused with its code."""
        try:
            line = _line_decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            self._refuse(number, LINE_INVALID)
            return
        structure_id = structures.get(line.structure)
        if structure_id is None:
            self._refuse(number, STRUCTURE_UNKNOWN)
            return
        digest = self._digest(line.legacy_id)
        if digest in seen:
            self._refuse(number, DUPLICATE)
            return
        seen.add(digest)
        referent = None
        if line.referent is not None:
            held = referents.get(line.referent)
            if held is not None and held[1] == structure_id:
                referent = held[0]
        buffer = self._buffers.setdefault(structure_id, [])
        buffer.append(_Pending(number, digest, bytes(line.record), referent))
        if len(buffer) >= self._batch_size:
            await self._flush(structure_id, self._buffers.pop(structure_id))

    # --- resolution ------------------------------------------------------------------------
    async def _structures(self) -> dict[str, uuid.UUID]:
        wanted = set(self._map.structures.values())
        found = await self._repo.structures(sorted(wanted))
        missing = wanted.difference(found)
        if missing:
            raise InvalidStructureMap(
                f"{len(missing)} structure code(s) of the map name no structure of the service"
            )
        return {legacy: found[code] for legacy, code in self._map.structures.items()}

    async def _referents(self) -> dict[str, tuple[uuid.UUID, uuid.UUID]]:
        """Legacy reference -> (active counsellor, their structure). A reference that is
        not here, or whose counsellor belongs to another structure than the line's,
        sends the record to its structure's queue."""
        held: dict[str, tuple[uuid.UUID, uuid.UUID]] = {}
        if self._map.referent_issuer is not None:
            held.update(await self._repo.linked_counsellors(self._map.referent_issuer))
        active = await self._repo.counsellors(sorted(set(self._map.referents.values())))
        for ref, account in self._map.referents.items():
            if account in active:
                held[ref] = (account, active[account])
        return held

    async def _queue(self, structure_id: uuid.UUID) -> uuid.UUID:
        queue = self._report.queues.get(structure_id)
        if queue is None:
            found = await self._repo.queue_account(structure_id, create=not self._dry_run)
            queue = self._report.queues[structure_id] = found or _NO_ACCOUNT
        return queue

    def _digest(self, legacy_id: str) -> bytes:
        message = self._source.encode() + b"\x00" + legacy_id.encode()
        return hmac.new(self._key, message, sha256).digest()

    def _refuse(self, line: int, code: str) -> None:
        self._report.refused[code] += 1
        self._report.refusals.append((line, code))
        log.info("import_line_refused", source=self._source, line=line, code=code)
        self._bar.advance(1)

    # --- batches ---------------------------------------------------------------------------
    async def _flush(self, structure_id: uuid.UUID, items: list[_Pending]) -> None:
        report = self._report
        present = await self._repo.present(self._source, [p.digest for p in items])
        todo = [p for p in items if p.digest not in present]
        report.skipped += len(items) - len(todo)
        work = [
            (uuid.uuid4(), p.referent or await self._queue(structure_id), p.record) for p in todo
        ]
        fresh: list[tuple[_Pending, SealedNew]] = []
        refused = 0
        for p, outcome in zip(todo, await self._sealer.seal(structure_id, work), strict=True):
            if isinstance(outcome, str):
                refused += 1
                self._refuse(p.line, outcome)
            else:
                fresh.append((p, outcome))
        self._bar.advance(len(items) - refused)  # refusals advanced it already
        await self._pace.after(len(work))
        if not fresh:
            return
        queued = sum(1 for p, _ in fresh if p.referent is None)
        if self._dry_run:
            report.imported += len(fresh)
            report.queued += queued
            report.batches += 1
            return
        # The previous batch was writing while this one was sealed; one write at a time
        # keeps the batches' entries in the order of the batches.
        await self._written()
        assert report.run_id is not None
        args = _batch_args(report.run_id, self._source, structure_id, fresh)
        self._writing = asyncio.create_task(self._write(args, len(fresh), queued))
        await asyncio.sleep(0)  # let the statement leave now

    async def _write(self, args: Sequence[Any], created: int, queued: int) -> None:
        await self._repo.write_batch(*args)
        self._report.imported += created
        self._report.queued += queued
        self._report.batches += 1

    async def _written(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing


def _batch_args(
    run_id: uuid.UUID,
    source: str,
    structure_id: uuid.UUID,
    fresh: Sequence[tuple[_Pending, SealedNew]],
) -> list[Any]:
    index_of: list[int] = []
    names: list[str] = []
    digests: list[bytes] = []
    national: list[bool] = []
    for k, (_, s) in enumerate(fresh, start=1):
        index_of.extend([k] * len(s.index_names))
        names.extend(s.index_names)
        digests.extend(s.index_digests)
        national.extend(s.index_national)
    return [
        run_id,
        source,
        structure_id,
        [s.record_id for _, s in fresh],
        [s.referent_id for _, s in fresh],
        [s.branch_key_version for _, s in fresh],
        [s.record_key for _, s in fresh],
        [s.sealed for _, s in fresh],
        [s.clear for _, s in fresh],
        [s.retain_until for _, s in fresh],
        [p.digest for p, _ in fresh],
        index_of,
        names,
        digests,
        national,
    ]


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw
