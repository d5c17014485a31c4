"""Statistics: the tables of a closed year, computed once, and the queries over them.

Dimensions: `month` (of entry: the record's creation), `structure` (with its region
as the level above), `region`, `programme` (programme_kind), `situation` (kind of
the situation in effect at the end of the month of entry, `none` without one),
`age_band` (age at entry) and `sex`. A table holds every cell of the grid (zeros
included) and every margin, each with its count or null when suppressed
(suppression.py); nothing else.

The period is one calendar year, once it has closed: the one grid of periods, so
that no two answers overlap without being one the margin of the other (two periods
ending a month apart would give that month, whose small cells no one checked). At
the first rebuild after a year closes, every table of that year is computed
(`build_tables`, one per grouping of one to three dimensions) and sealed for good
(refresh.py); a query reads one, never computes.
"""

from __future__ import annotations

import csv
import datetime
import io
import itertools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.crypto import aead
from vault_service.errors import InvalidParameter, StatsNotSealed, StatsUnprotectable
from vault_service.kms import VaultKms
from vault_service.records.schema import RecordSchema
from vault_service.stats import repository as sql
from vault_service.stats.joint import OverBudget, given_away, shows
from vault_service.stats.suppression import TOTAL, Axis, Cell, protect

__all__ = [
    "AGE_BANDS",
    "DIMENSIONS",
    "GROUPINGS",
    "NO_PROGRAMME",
    "NO_SITUATION",
    "UNKNOWN",
    "Counts",
    "StatsQuery",
    "StatsService",
    "StatsTable",
    "build_tables",
    "flat_axes",
    "parse_query",
    "table_aad",
]

DIMENSIONS: Final = ("month", "structure", "region", "programme", "situation", "age_band", "sex")
"""Every dimension, in the one order tables are computed and shown in (the pattern
of suppressions must not depend on the order a caller lists them in)."""
MAX_DIMENSIONS: Final = 3
MAX_CELLS: Final = 20_000
AGE_BANDS: Final = ("under_16", "16_17", "18_21", "22_25", "26_plus", "unknown")
NO_SITUATION: Final = "none"
NO_PROGRAMME: Final = "none"
UNKNOWN: Final = "unknown"
GROUPINGS: Final = tuple(
    g
    for n in range(1, MAX_DIMENSIONS + 1)
    for g in itertools.combinations(DIMENSIONS, n)
    if not ("structure" in g and "region" in g)
)
"""Every grouping an analyst may ask for, each a table sealed with its year."""
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

Counts = Mapping[tuple[datetime.date, str, str, str, str, str], int]
"""One year's counts by (month, structure id, programme, situation, age band, sex)."""


@dataclass(frozen=True, slots=True)
class StatsQuery:
    group_by: tuple[str, ...]  # in DIMENSIONS order
    year: int

    @property
    def since(self) -> datetime.date:
        return datetime.date(self.year, 1, 1)

    @property
    def until(self) -> datetime.date:
        """The first day of the last month."""
        return datetime.date(self.year, 12, 1)

    @property
    def criteria(self) -> tuple[str, ...]:
        """The query in the access log's criterion alphabet: dimensions and months."""
        return (
            *(f"group_by_{d}" for d in self.group_by),
            f"since_{self.since:%Y_%m}",
            f"until_{self.until:%Y_%m}",
        )


def _month(raw: str, name: str) -> datetime.date:
    m = _MONTH.match(raw)
    if m is None or not 1970 <= int(m[1]) <= 2100:
        raise InvalidParameter(f"{name} must be a month, YYYY-MM, from 1970 to 2100")
    return datetime.date(int(m[1]), int(m[2]), 1)


def parse_query(params: Mapping[str, str], today: datetime.date) -> StatsQuery:
    """Strict: known dimensions only, each once, at most three; the period is one
    closed calendar year, `since` its January and `until` its December (either one
    alone names the year; neither: the last closed year)."""
    raw = params.get("group_by")
    if not raw:
        raise InvalidParameter("group_by is required (comma-separated dimensions)")
    names = raw.split(",")
    if any(n not in DIMENSIONS for n in names):
        raise InvalidParameter("group_by: not one of the dimensions")
    if len(set(names)) != len(names):
        raise InvalidParameter("group_by: a dimension is repeated")
    if len(names) > MAX_DIMENSIONS:
        raise InvalidParameter(f"group_by: at most {MAX_DIMENSIONS} dimensions")
    if "structure" in names and "region" in names:
        raise InvalidParameter("group_by: structure already brings its region")
    since = _month(params["since"], "since") if "since" in params else None
    until = _month(params["until"], "until") if "until" in params else None
    if since is not None and since.month != 1:
        raise InvalidParameter("the period is a calendar year: since is a January")
    if until is not None and until.month != 12:
        raise InvalidParameter("the period is a calendar year: until is a December")
    if since is not None and until is not None and since.year != until.year:
        raise InvalidParameter("the period is one calendar year: since and until in the same")
    year = (since or until or datetime.date(today.year - 1, 1, 1)).year
    # Closed years only: an open year changes at every rebuild, and two answers an
    # hour apart would give the youth who arrived in between (review).
    if year >= today.year:
        raise InvalidParameter("the year must be closed (before this one)")
    return StatsQuery(tuple(d for d in DIMENSIONS if d in names), year)


@dataclass(frozen=True, slots=True)
class StatsTable:
    query: StatsQuery
    columns: tuple[str, ...]  # output columns (structure brings region)
    k: int
    sealed_at: datetime.datetime
    rows: Sequence[tuple[tuple[str, ...], int | None]]

    def document(self) -> dict[str, Any]:
        return {
            "group_by": list(self.query.group_by),
            "since": f"{self.query.since:%Y-%m}",
            "until": f"{self.query.until:%Y-%m}",
            "k": self.k,
            "sealed_at": self.sealed_at.isoformat(),
            "total": TOTAL,
            "cells": [
                {**dict(zip(self.columns, values, strict=True)), "count": count}
                for values, count in self.rows
            ],
        }

    def to_csv(self) -> str:
        """RFC 4180 text: one line per cell, `count` empty and `suppressed` true when
        suppressed (a region's name is the one free text: quoted as needed)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow((*self.columns, "count", "suppressed"))
        for values, count in self.rows:
            shown = "" if count is None else str(count)
            writer.writerow((*map(_cell, values), shown, "true" if count is None else "false"))
        return out.getvalue()


def _cell(value: str) -> str:
    """A spreadsheet never reads a region's name as a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _enum(schema: RecordSchema, *path: str) -> tuple[str, ...]:
    node: Any = schema.raw["properties"]
    for step in path:
        node = node[step]
    return tuple(str(v) for v in node["enum"])


def flat_axes(schema: RecordSchema) -> dict[str, tuple[str, ...]]:
    """The values of every dimension that is a fixed list (from the record schema)."""
    return {
        "programme": (*_enum(schema, "programme_kind"), NO_PROGRAMME),
        "situation": (*_enum(schema, "situations", "items", "properties", "kind"), NO_SITUATION),
        "age_band": AGE_BANDS,
        "sex": (*_enum(schema, "sex"), UNKNOWN),
    }


class _Sealed(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A table as kept: its output columns and rows (values then count, null when
    suppressed), or why it is refused (`unprotectable`, `too_large`)."""

    refused: str | None
    columns: list[str]
    rows: list[tuple[list[str], int | None]]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Sealed).decode


def table_aad(year: int, group_by: str, k: int) -> bytes:
    """Binds a sealed table to its year, its grouping and the k it was suppressed
    with: one cannot be served as another, nor under another k (review)."""
    return b"vault-service/stats-table/v1\x00" + f"{year}\x00{group_by}\x00{k}".encode()


def _grid_of(
    group_by: Sequence[str],
    year: int,
    region_of: Mapping[str, str],
    flat: Mapping[str, tuple[str, ...]],
) -> tuple[list[Axis], list[str]]:
    axes: list[Axis] = []
    columns: list[str] = []
    for d in group_by:
        if d == "month":
            axes.append(Axis.flat(d, [f"{year:04d}-{m:02d}" for m in range(1, 13)]))
        elif d == "structure":
            axes.append(Axis.nested(("structure", "region"), list(region_of), region_of))
        elif d == "region":
            axes.append(Axis.flat(d, sorted(set(region_of.values()))))
        else:
            axes.append(Axis.flat(d, flat[d]))
        columns.extend(axes[-1].names)
    return axes, columns


_POSITION: Final = {"month": 0, "structure": 1, "programme": 2, "situation": 3, "age_band": 4}


def build_tables(
    year: int,
    counts: Counts,
    region_of: Mapping[str, str],
    flat: Mapping[str, tuple[str, ...]],
    k: int,
    audit_seconds: float = 600.0,
) -> dict[str, bytes]:
    """Every table of one year, suppressed, checked together (joint.py) and encoded
    (to be sealed): CPU only, run off the event loop. Each grouping's counts are
    summed from the year's counts."""
    tables: dict[tuple[str, ...], _Sealed] = {}
    truth: dict[tuple[str, ...], dict[tuple[str, ...], int]] = {}
    for group_by in GROUPINGS:
        axes, columns = _grid_of(group_by, year, region_of, flat)
        cells_wanted = 1
        for axis in axes:
            cells_wanted *= len(axis.levels[0])
        if cells_wanted > MAX_CELLS:
            tables[group_by] = _Sealed("too_large", columns, [])
            continue
        grouped: dict[tuple[str, ...], int] = {}
        for key, n in counts.items():
            coord = tuple(
                f"{key[0]:%Y-%m}"
                if d == "month"
                else region_of[key[1]]
                if d == "region"
                else str(key[_POSITION.get(d, 5)])
                for d in group_by
            )
            grouped[coord] = grouped.get(coord, 0) + n
        truth[group_by] = grouped
        try:
            cells = protect(axes, grouped, k)
        except StatsUnprotectable:
            tables[group_by] = _Sealed("unprotectable", columns, [])
            continue
        rows = [_row(axes, c) for c in cells]
        tables[group_by] = _Sealed(None, columns, [(list(v), n) for v, n in rows])
    _check_together(
        tables, truth, year, region_of, flat, time.monotonic() + audit_seconds, (k + 1) // 2
    )
    return {",".join(g): _encode(t) for g, t in tables.items()}


def _finest(table: _Sealed) -> dict[tuple[str, ...], int | None]:
    """A table's finest cells (no `*`), by grouped values (a structure without its
    region column)."""
    keep = [
        i
        for i, c in enumerate(table.columns)
        if not (c == "region" and "structure" in table.columns)
    ]
    return {tuple(values[i] for i in keep): n for values, n in table.rows if TOTAL not in values}


def _check_together(
    tables: dict[tuple[str, ...], _Sealed],
    truth: Mapping[tuple[str, ...], Mapping[tuple[str, ...], int]],
    year: int,
    region_of: Mapping[str, str],
    flat: Mapping[str, tuple[str, ...]],
    deadline: float,
    width: int,
) -> None:
    """Refuse tables until the published set, solved together, narrows no
    suppressed cell to fewer than `width` + 1 values (joint.py); past the deadline
    or too large to check, refuse every table with a suppressed cell."""
    values = {
        "month": [f"{year:04d}-{m:02d}" for m in range(1, 13)],
        "structure": list(region_of),
        **{d: list(flat[d]) for d in ("programme", "situation", "age_band", "sex")},
    }
    total: int | None = None  # the grand total, as published (None: suppressed)
    for table in tables.values():
        if table.refused is None:
            total = next(n for v, n in table.rows if all(x == TOTAL for x in v))
            break
    truth = {**truth, (): {(): sum(truth[("sex",)].values())}}

    def refuse(group_by: tuple[str, ...]) -> None:
        for g, t in tables.items():
            if t.refused is None and shows(g, group_by):
                tables[g] = _Sealed("unprotectable", t.columns, [])

    free: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    while True:
        published = {g: _finest(t) for g, t in tables.items() if t.refused is None}
        try:
            found = given_away(values, region_of, published, truth, total, deadline, free, width)
        except OverBudget:  # fail closed: nothing suppressed is published
            for g, t in tables.items():
                if t.refused is None and any(n is None for _, n in t.rows):
                    tables[g] = _Sealed("unprotectable", t.columns, [])
            return
        if found is None:
            return
        pinned = found[0]
        refuse([g for g in published if shows(g, pinned)][-1])


_CACHE_MAX: Final = 256
_CACHE_ROWS_MAX: Final = 1_000_000
"""Cells kept across all cached tables (a few hundred bytes each) before starting over."""


class StatsService:
    """Queries over sealed tables: one row read, opened with the year's key (unwrapped
    by Vault), decoded; kept in memory afterwards (a sealed table never changes)."""

    def __init__(self, pool: asyncpg.Pool, kms: VaultKms, k: int) -> None:
        self._pool = pool
        self._kms = kms
        self.k = k
        self._cache: dict[tuple[int, tuple[str, ...]], StatsTable] = {}
        self._cached_rows = 0

    async def table(self, query: StatsQuery) -> StatsTable:
        key = (query.year, query.group_by)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        group_by = ",".join(query.group_by)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(sql.TABLE, query.year, group_by)
        if row is None:
            raise StatsNotSealed()
        if int(row["k"]) < self.k:
            # Sealed under a smaller k than the one configured now: not served
            # (fail closed); docs/statistics.md says how an operator deals with it.
            raise StatsUnprotectable()
        data_key = await self._kms.unwrap_key(str(row["wrapped_key"]))
        # A body that does not authenticate was written by someone holding the
        # database: DecryptionFailed, nothing served.
        plain = aead.open_(
            AESGCM(data_key), bytes(row["body"]), table_aad(query.year, group_by, int(row["k"]))
        )
        sealed = _decode(plain)
        if sealed.refused == "unprotectable":
            raise StatsUnprotectable()
        if sealed.refused is not None:
            raise InvalidParameter(f"the table would have more than {MAX_CELLS} cells")
        table = StatsTable(
            query,
            tuple(sealed.columns),
            int(row["k"]),
            row["sealed_at"],
            [(tuple(values), n) for values, n in sealed.rows],
        )
        self._cached_rows += len(table.rows)
        if len(self._cache) >= _CACHE_MAX or self._cached_rows > _CACHE_ROWS_MAX:
            self._cache.clear()
            self._cached_rows = len(table.rows)
        self._cache[key] = table
        return table


def _row(axes: Sequence[Axis], cell: Cell) -> tuple[tuple[str, ...], int | None]:
    """A cell's values in the output columns: a nested axis shows both levels (a
    structure and its region; a region subtotal with `*` for the structure)."""
    values: list[str] = []
    for axis, level, value in zip(axes, cell.levels, cell.coord, strict=True):
        if len(axis.names) == 1:
            values.append(value)
            continue
        # structure level: the structure and its region; region level: `*` and the
        # region; the total: `*` twice.
        if level == 0:
            values.extend((value, axis.parents[0][value]))
        elif level == 1:
            values.extend((TOTAL, value))
        else:
            values.extend((TOTAL, TOTAL))
    return tuple(values), cell.count
