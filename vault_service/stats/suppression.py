"""Small-cell suppression of a count table and all its margins: pure, no I/O.

A table is a grid over axes; each axis has levels from the finest asked for up to
its total (`*`), e.g. structure -> region -> total, or sex -> total. The published
answer is every cell at every combination of levels (the table, its margins at
every order, its regional subtotals, the grand total), each either its count or
suppressed.

Primary suppression: every cell with 0 < count < k. Zeros are published, so every
hidden count is known to be at least 1: a line whose margin is published must hide
k youth or more in all (else its hidden cells are bounded too tightly; two cells
hiding 2 youth are 1 and 1).

Complementary suppression, one layer at a time, from the coarsest combination of
levels to the finest: a combination's pattern is decided once every coarser one is
fixed, and is never changed afterwards. Within a combination, each *line* (the
cells that differ along one axis and roll up to one cell of the next coarser level,
their *margin*) must not hold exactly one unknown among its cells and its margin:
while one does, its smallest non-zero published cell that another line does not
give away is suppressed, until nothing changes (suppressions only grow, so it
ends). Zeros are never suppressed: a hidden zero under a published zero margin is
pinned by non-negativity, and with every hidden count above zero, a count the
equations leave free can move both ways, so the exact check below is exact for a
solver that knows counts are non-negative too. The exact check: the linear system
of the combination and of the coarser ones it adds up to must leave every hidden
cell free (outside the support of its null space, `_determined`); while one is
determined, one more cell of a line touching it is hidden (the finest
combination's check is over the whole answer). When no cell can be (a line whose
only candidates are given away elsewhere, a determined cell no line of the
combination touches), the table is refused (`StatsUnprotectable`).

Why layers: the pattern of a combination depends only on the data of that
combination and the coarser ones, so a query over fewer dimensions (or over region
instead of structure) publishes exactly the cells and suppressions that a query
over more dimensions shows in its margins. The answers to every query over a
subset of a query's dimensions add nothing to that query's own answer, and a
linear solver over one answer (tests/integration/test_stats.py) speaks for that
whole family. See docs/statistics.md for what is not guaranteed: queries over
unrelated dimension sets together, and differences between periods.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy.optimize import linprog

from vault_service.errors import StatsUnprotectable

__all__ = ["TOTAL", "Axis", "Cell", "Unprotectable", "protect"]

TOTAL: Final = "*"


@dataclass(frozen=True, slots=True)
class Axis:
    """One grouped dimension: its values per level, finest first, the last level
    being the total alone; `parents[l]` maps a value of level l to level l + 1."""

    names: tuple[str, ...]  # the output column of each level but the total
    levels: tuple[tuple[str, ...], ...]
    parents: tuple[Mapping[str, str], ...]

    @staticmethod
    def flat(name: str, values: Sequence[str]) -> Axis:
        return Axis((name,), (tuple(values), (TOTAL,)), (dict.fromkeys(values, TOTAL),))

    @staticmethod
    def nested(names: tuple[str, str], values: Sequence[str], parent: Mapping[str, str]) -> Axis:
        """Two levels below the total (structures within regions)."""
        groups = tuple(sorted({parent[v] for v in values}))
        return Axis(
            names,
            (tuple(values), groups, (TOTAL,)),
            ({v: parent[v] for v in values}, dict.fromkeys(groups, TOTAL)),
        )

    @property
    def top(self) -> int:
        return len(self.levels) - 1

    def up(self, value: str, level: int, to: int) -> str:
        for lv in range(level, to):
            value = self.parents[lv][value]
        return value


Unprotectable = StatsUnprotectable


Coord = tuple[str, ...]
Combo = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Cell:
    levels: Combo
    coord: Coord
    count: int | None  # None: suppressed


def _combos(axes: Sequence[Axis]) -> list[Combo]:
    """Every combination of levels, coarsest first (most levels at their total)."""
    combos = list(itertools.product(*(range(a.top + 1) for a in axes)))
    return sorted(combos, key=lambda c: (-sum(c), c))


def _grid(axes: Sequence[Axis], combo: Combo) -> Iterator[Coord]:
    return itertools.product(*(a.levels[lv] for a, lv in zip(axes, combo, strict=True)))


def protect(axes: Sequence[Axis], counts: Mapping[Coord, int], k: int) -> list[Cell]:
    """Every cell of every combination of levels (the finest first), with its count
    or None when suppressed. `counts` are the finest cells (absent means zero)."""
    combos = _combos(axes)
    tables: dict[Combo, dict[Coord, int]] = {}
    for combo in combos:
        tables[combo] = dict.fromkeys(_grid(axes, combo), 0)
    for coord, n in counts.items():
        if n <= 0:
            continue
        for combo in combos:
            up = tuple(a.up(v, 0, lv) for a, v, lv in zip(axes, coord, combo, strict=True))
            tables[combo][up] += n
    hidden: dict[Combo, set[Coord]] = {}
    lines_of: dict[Combo, list[_Line]] = {}
    for combo in combos:  # coarsest first: its margins are fixed already
        table = tables[combo]
        lines = lines_of[combo] = _lines(axes, combo, table)
        of: dict[Coord, list[_Line]] = {}
        for line in lines:
            for c in line[0]:
                of.setdefault(c, []).append(line)
        mine = {c for c, n in table.items() if 0 < n < k}
        hidden[combo] = mine
        _complement(table, hidden, lines, of, mine, k)
        # The exact check looks at this combination and the coarser ones it adds up
        # to, nothing else: the same in every query that shows this combination.
        above = [c for c in lines_of if all(a >= b for a, b in zip(c, combo, strict=True))]
        _repair(combo, tables, hidden, lines, of, above, lines_of, k)
    # No check of the whole answer is left to make: the finest combination adds up
    # to every other, so its check above was over the whole answer already.
    out: list[Cell] = []
    for combo in sorted(combos, key=lambda c: (sum(c), c)):
        for coord, n in tables[combo].items():
            out.append(Cell(combo, coord, None if coord in hidden[combo] else n))
    return out


_Line = tuple[list[Coord], Combo, Coord]
MAX_HIDDEN: Final = 4000
"""Hidden cells above which the exact check is not run and the table is refused."""


def _repair(
    combo: Combo,
    tables: Mapping[Combo, Mapping[Coord, int]],
    hidden: dict[Combo, set[Coord]],
    lines: Sequence[_Line],
    of: Mapping[Coord, list[_Line]],
    above: Sequence[Combo],
    lines_of: Mapping[Combo, list[_Line]],
    k: int,
) -> None:
    """Hide more of this combination while the linear system of everything
    published so far (this combination and the coarser ones) still determines a
    hidden cell: one more cell in a line of this combination that touches it."""
    mine = hidden[combo]
    table = tables[combo]
    while True:
        determined = _determined(above, lines_of, hidden, tables)
        if not determined:
            return
        where, cell = determined[0]
        touching = (
            of.get(cell, [])
            if where == combo
            else [line for line in lines if (line[1], line[2]) == (where, cell)]
        )
        for line in touching:
            try:
                mine.add(_pick(line, table, mine, hidden, of))
                break
            except Unprotectable:
                continue
        else:
            raise Unprotectable()
        # The new complement may leave a line with a single unknown again.
        _complement(table, hidden, lines, of, mine, k)


def _lines(axes: Sequence[Axis], combo: Combo, table: Mapping[Coord, int]) -> list[_Line]:
    """Each group of cells along one axis, with the coarser cell they add up to."""
    lines: list[_Line] = []
    for i, axis in enumerate(axes):
        if combo[i] == axis.top:
            continue
        coarser = (*combo[:i], combo[i] + 1, *combo[i + 1 :])
        groups: dict[Coord, list[Coord]] = {}
        for coord in table:
            margin = (*coord[:i], axis.parents[combo[i]][coord[i]], *coord[i + 1 :])
            groups.setdefault(margin, []).append(coord)
        lines.extend((cells, coarser, margin) for margin, cells in groups.items())
    return lines


def _complement(
    table: Mapping[Coord, int],
    hidden: Mapping[Combo, set[Coord]],
    lines: Sequence[_Line],
    of: Mapping[Coord, list[_Line]],
    mine: set[Coord],
    k: int,
) -> None:
    """Complements added to `mine` (this combination's hidden cells, the coarser
    ones being fixed) until no line has exactly one unknown, and no line whose
    margin is published hides less than k youth in all: zeros being published, every
    hidden count is known to be at least 1, so hidden cells of a line summing to 2
    over two cells would be 1 and 1 (review finding); with a hidden mass of k or more,
    each hidden count of the line ranges over at least k - (hidden cells) + 1 values."""
    changed = True
    while changed:
        changed = False
        for line in lines:
            cells = line[0]
            margin_hidden = line[2] in hidden[line[1]]
            mass = [table[c] for c in cells if c in mine]
            unknown = len(mass) + int(margin_hidden)
            if unknown == 1 or (mass and not margin_hidden and sum(mass) < k):
                mine.add(_pick(line, table, mine, hidden, of))
                changed = True


def _pick(
    line: _Line,
    table: Mapping[Coord, int],
    mine: set[Coord],
    hidden: Mapping[Combo, set[Coord]],
    of: Mapping[Coord, list[_Line]],
) -> Coord:
    """The smallest non-zero published cell of `line` that hiding would hide: not
    one that another line (all its other cells published zeros, its margin
    published) gives away. Zeros are never hidden: a hidden zero is pinned by
    non-negativity as soon as a published zero margin sums over it."""

    def pinned(c: Coord) -> bool:
        return any(
            other[2] not in hidden[other[1]]
            and all(o == c or (o not in mine and table[o] == 0) for o in other[0])
            for other in of[c]
        )

    pick = [c for c in line[0] if c not in mine and table[c] > 0 and not pinned(c)]
    if not pick:
        raise Unprotectable()
    return min(pick, key=lambda c: (table[c], c))


def _determined(
    combos: Sequence[Combo],
    lines_of: Mapping[Combo, list[_Line]],
    hidden: Mapping[Combo, set[Coord]],
    tables: Mapping[Combo, Mapping[Coord, int]],
) -> list[tuple[Combo, Coord]]:
    """Hidden cells that the published cells and margins give away, knowing (zeros
    being published) that every hidden count is at least 1.

    A hidden count of exactly 1 is at its known floor: it is safe when some change
    keeping the equations raises it without lowering another count of 1
    (`_can_grow`); the counts of 1 that cannot grow are given away, and held fixed.
    Every other hidden count is safe when the equations leave it free among the
    counts that can move (those of 2 or more, and the counts of 1 that can grow: the
    support of that null space), since a change along the cone's direction then
    moves it while every count stays at least 1. Anything else is given away
    (`_repair` hides more)."""
    index: dict[tuple[Combo, Coord], int] = {}
    for combo in combos:
        for c in sorted(hidden[combo]):
            index[(combo, c)] = len(index)
    if not index:
        return []
    rows: list[list[tuple[int, float]]] = []
    system = [(combo, line) for combo in combos for line in lines_of[combo]]
    for combo, (cells, coarser, margin) in system:
        row = [(index[(combo, c)], 1.0) for c in cells if (combo, c) in index]
        if (coarser, margin) in index:
            row.append((index[(coarser, margin)], -1.0))
        if row:
            rows.append(row)
    if not rows:
        return []
    if len(index) > MAX_HIDDEN:
        raise Unprotectable()
    matrix = np.zeros((len(rows), len(index)))
    for r, row in enumerate(rows):
        for j, v in row:
            matrix[r, j] = v
    names = list(index)
    ones = [j for j, (combo, c) in enumerate(names) if tables[combo][c] <= 1]
    grow = _can_grow(matrix, ones)
    fixed = set(ones) - grow
    kept = [j for j in range(len(names)) if j not in fixed]
    part = matrix[:, kept]
    # The null space of A is that of the small symmetric AᵀA (unknowns squared):
    # its eigenvectors whose eigenvalues are zero. Entries are small integers, so a
    # relative tolerance far above rounding and far below any real eigenvalue holds.
    values, vectors = np.linalg.eigh(part.T @ part)
    null = vectors[:, values <= 1e-9 * max(1.0, float(values[-1]))]
    free = np.abs(null).max(axis=1) if null.shape[1] else np.zeros(len(kept))
    given = {kept[i] for i in range(len(kept)) if free[i] < 1e-9}
    given |= fixed
    return [names[j] for j in sorted(given)]


def _can_grow(matrix: np.ndarray, ones: Sequence[int]) -> set[int]:
    """Of the hidden counts of 1 (at their known floor), those that some change of
    the hidden counts keeping every published equation can raise without lowering
    another count of 1. The changes form a cone; one linear program finds every
    count of 1 it can raise: change v (Av = 0, v >= 0 on the counts of 1, free
    elsewhere, scaled at will) and t_i <= min(v_i, 1) for each count of 1, maximising
    the sum of t; the cone being convex and scale-free, each t_i reaches 1 exactly
    when some change raises count i."""
    if not ones:
        return set()
    rows, n, m = matrix.shape[0], matrix.shape[1], len(ones)
    a_eq = np.hstack((matrix, np.zeros((rows, m))))
    a_ub = np.zeros((m, n + m))
    for i, j in enumerate(ones):
        a_ub[i, n + i] = 1.0
        a_ub[i, j] = -1.0
    bounds: list[tuple[float | None, float | None]] = [(None, None)] * n + [(0.0, 1.0)] * m
    for j in ones:
        bounds[j] = (0.0, None)
    found = linprog(
        np.concatenate((np.zeros(n), -np.ones(m))),
        A_ub=a_ub,
        b_ub=np.zeros(m),
        A_eq=a_eq,
        b_eq=np.zeros(rows),
        bounds=bounds,
        method="highs",
    )
    if found.status != 0:
        raise Unprotectable()
    return {j for i, j in enumerate(ones) if found.x[n + i] > 0.5}
