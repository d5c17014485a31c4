"""Statistics queries: a grouping and a period in, a protected table of counts out.

Dimensions: `month` (of entry: the record's creation), `structure` (with its region
as the level above), `region`, `programme` (programme_kind), `situation` (kind of
the most recent situation, `none` without one), `age_band` (age at entry) and
`sex`. A table holds every cell of the grid (zeros included) and every margin, each
with its count or null when suppressed (suppression.py); nothing else.
"""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from vault_service.errors import InvalidParameter
from vault_service.records.schema import RecordSchema
from vault_service.stats import repository as sql
from vault_service.stats.refresh import AGE_BANDS, NO_PROGRAMME, NO_SITUATION, UNKNOWN
from vault_service.stats.suppression import TOTAL, Axis, Cell, protect

__all__ = ["DIMENSIONS", "StatsQuery", "StatsService", "StatsTable", "parse_query"]

DIMENSIONS: Final = ("month", "structure", "region", "programme", "situation", "age_band", "sex")
"""Every dimension, in the one order tables are computed and shown in (the pattern
of suppressions must not depend on the order a caller lists them in)."""
MAX_DIMENSIONS: Final = 3
MAX_MONTHS: Final = 36
MAX_CELLS: Final = 20_000
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True, slots=True)
class StatsQuery:
    group_by: tuple[str, ...]  # in DIMENSIONS order
    since: datetime.date  # first day of the first month
    until: datetime.date  # first day of the last month

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


def _months(since: datetime.date, until: datetime.date) -> list[datetime.date]:
    out, at = [], since
    while at <= until:
        out.append(at)
        at = datetime.date(at.year + at.month // 12, at.month % 12 + 1, 1)
    return out


def parse_query(params: Mapping[str, str], today: datetime.date) -> StatsQuery:
    """Strict: known dimensions only, each once, at most three; months as YYYY-MM;
    the period defaults to the twelve months ending with the current one."""
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
    # Closed months only: a month still open changes at every rebuild, and two
    # answers an hour apart would give the youth who arrived in between (review).
    current = today.replace(day=1)
    closed = datetime.date(current.year - (current.month == 1), (current.month - 2) % 12 + 1, 1)
    until = _month(params["until"], "until") if "until" in params else closed
    if until > closed:
        raise InvalidParameter("until must be a closed month (before this one)")
    if "since" in params:
        since = _month(params["since"], "since")
    else:
        since = datetime.date(until.year - 1 + (until.month == 12), until.month % 12 + 1, 1)
    if since > until:
        raise InvalidParameter("since must not be after until")
    if len(_months(since, until)) > MAX_MONTHS:
        raise InvalidParameter(f"the period is at most {MAX_MONTHS} months")
    group_by = tuple(d for d in DIMENSIONS if d in names)
    return StatsQuery(group_by, since, until)


@dataclass(frozen=True, slots=True)
class StatsTable:
    query: StatsQuery
    columns: tuple[str, ...]  # output columns (structure brings region)
    k: int
    refreshed_at: datetime.datetime | None
    rows: list[tuple[tuple[str, ...], int | None]]

    def document(self) -> dict[str, Any]:
        return {
            "group_by": list(self.query.group_by),
            "since": f"{self.query.since:%Y-%m}",
            "until": f"{self.query.until:%Y-%m}",
            "k": self.k,
            "refreshed_at": self.refreshed_at.isoformat() if self.refreshed_at else None,
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


_CACHE_MAX: Final = 256
_CACHE_ROWS_MAX: Final = 1_000_000
"""Cells kept across all cached tables (a few hundred bytes each) before starting over."""


class StatsService:
    """Tables are computed once per aggregate: an answer depends only on the query,
    the rebuild it reads (its `refreshed_at`) and the structures (the grid and the
    regions), so it is kept until any of them changes."""

    def __init__(self, pool: asyncpg.Pool, schema: RecordSchema, k: int) -> None:
        self._pool = pool
        self.k = k
        self._cache: dict[tuple[object, ...], StatsTable] = {}
        self._computing = asyncio.Semaphore(1)
        self._cached_rows = 0
        self._flat: dict[str, tuple[str, ...]] = {
            "programme": (*_enum(schema, "programme_kind"), NO_PROGRAMME),
            "situation": (
                *_enum(schema, "situations", "items", "properties", "kind"),
                NO_SITUATION,
            ),
            "age_band": AGE_BANDS,
            "sex": (*_enum(schema, "sex"), UNKNOWN),
        }

    async def table(self, query: StatsQuery) -> StatsTable:
        grouped = [d in query.group_by for d in ("month", "structure", "region")]
        grouped += [d in query.group_by for d in ("programme", "situation", "age_band", "sex")]
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            # One snapshot: the counts are those of the rebuild named.
            refreshed_at = await conn.fetchval(sql.LAST_REFRESH)
            structures = await conn.fetch(sql.STRUCTURES)
            region_of = {str(r["id"]): str(r["region"]) for r in structures}
            key = (query, refreshed_at, tuple(region_of.items()))
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            rows = await conn.fetch(sql.COUNTS, query.since, query.until, *grouped)
        axes: list[Axis] = []
        columns: list[str] = []
        for d in query.group_by:
            if d == "month":
                axes.append(Axis.flat(d, [f"{m:%Y-%m}" for m in _months(query.since, query.until)]))
            elif d == "structure":
                axes.append(Axis.nested(("structure", "region"), list(region_of), region_of))
            elif d == "region":
                axes.append(Axis.flat(d, sorted(set(region_of.values()))))
            else:
                axes.append(Axis.flat(d, self._flat[d]))
            columns.extend(axes[-1].names)
        cells_wanted = 1
        for axis in axes:
            cells_wanted *= len(axis.levels[0])
        if cells_wanted > MAX_CELLS:
            raise InvalidParameter(f"the table would have more than {MAX_CELLS} cells")
        counts: dict[tuple[str, ...], int] = {}
        for r in rows:
            counts[tuple(str(r[d]) for d in query.group_by)] = int(r["n"])
        # Off the event loop (a large sparse table takes a second of CPU), one at a
        # time per process so that analysts cannot take every core (review finding).
        async with self._computing:
            cells = await asyncio.to_thread(protect, axes, counts, self.k)
        table = StatsTable(
            query, tuple(columns), self.k, refreshed_at, [_row(axes, c) for c in cells]
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
