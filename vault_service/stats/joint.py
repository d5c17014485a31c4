"""The joint check of one year's tables: what an analyst learns from all of them.

Each table is protected on its own (suppression.py), and a table and its margins
(the tables over fewer of its dimensions) agree; but an analyst may download every
table of a year (57, within one hour's budget) and solve them together. A review
showed two tables sharing a margin (`programme,situation` and
`situation,age_band,sex`) each leaving a hidden count a range, [4, 9] and [2, 4],
together exactly 4. So, once a year's tables are computed, the set about to be
published is checked as one: the attacker's linear programme over the year's finest
counts (month x structure x programme x situation x age band x sex, each at least
0), every published cell an equation, every suppressed one at least 1 (zeros are
published), and for each suppressed cell its least and greatest value. A cell whose
range holds fewer than two whole numbers is given away: the finest table that shows
it is refused (with every table that shows that one's cells as margins), and the
check runs again, until nothing is given away.

Fail closed: when the programme is too large or the check runs out of time
(`stats_audit_seconds`), every table with a suppressed cell is refused, so that
what is published hides nothing one could solve for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, csr_matrix

__all__ = ["FINE", "OverBudget", "Published", "given_away", "shows"]

FINE: Final = ("month", "structure", "programme", "situation", "age_band", "sex")
MAX_LIVE: Final = 400_000
"""Finest cells left free above which the check is not tried."""

Published = Mapping[tuple[str, ...], Mapping[tuple[str, ...], int | None]]
"""Per grouping (dimensions in DIMENSIONS order), its finest cells: their values
(a structure's id, not its region) and count, None when suppressed."""


def shows(table: Sequence[str], other: Sequence[str]) -> bool:
    """Whether `table` shows `other`'s cells (as its own or among its margins): every
    dimension of `other` is one of `table`'s, a region being shown by structures."""
    return all(d in table or (d == "region" and "structure" in table) for d in other)


class OverBudget(Exception):
    """The check is too large to run, or ran out of time: refuse instead."""


Cell = tuple[tuple[str, ...], tuple[str, ...]]


def given_away(
    values: Mapping[str, Sequence[str]],
    region_of: Mapping[str, str],
    published: Published,
    truth: Mapping[tuple[str, ...], Mapping[tuple[str, ...], int]],
    total: int | None,
    deadline: float,
    free: set[Cell],
    width: int,
) -> Cell | None:
    """The first suppressed cell (grouping, values) the published cells narrow to a
    range of fewer than `width` + 1 whole numbers, or None. `truth` holds the true
    counts of the suppressed cells; `free` the cells already shown wide enough
    (refusing tables only loosens the system, so they stay so), grown in place.
    Raises OverBudget."""
    if not published:
        return None
    problem = _Problem(values, region_of, published, total)
    pending = [c for c in problem.targets if c not in free]
    if not pending:
        return None
    true = np.array([truth[g][v] for g, v in pending], dtype=float)
    rows = [problem.targets[c] for c in pending]
    # Each cell's least and greatest value seen at a solution so far (its true count
    # is one); a cell is shown wide enough once they are `width` apart. Programmes
    # pushing every pending cell up, then down, at once settle most; then one cell
    # at a time.
    high, low = true.copy(), true.copy()

    def wide(i: int) -> bool:
        if math.isinf(high[i]):
            return True
        return bool(math.floor(high[i] + 1e-6) - math.ceil(low[i] - 1e-6) >= width)

    left = list(range(len(pending)))
    for sign in (-1.0, 1.0):  # up, then down
        while len(left) > 1:
            _in_time(deadline)
            chosen = problem.cells[[rows[i] for i in left]]
            x = problem.solve(sign * np.asarray(chosen.sum(axis=0)).ravel(), deadline)
            if x is None:
                break
            reached = chosen @ x
            for i, v in zip(left, reached, strict=True):
                high[i], low[i] = max(high[i], v), min(low[i], v)
            shown = {i for i in left if wide(i)}
            if not shown:
                break
            free.update(pending[i] for i in shown)
            left = [i for i in left if i not in shown]
    for i in left:
        for sign in (-1.0, 1.0):
            _in_time(deadline)
            objective = problem.cells[rows[i]].toarray().ravel()
            x = problem.solve(sign * objective, deadline)
            if x is None:  # unbounded above: as wide as can be
                high[i] = math.inf
            else:
                v = float(objective @ x)
                high[i], low[i] = max(high[i], v), min(low[i], v)
            if wide(i):
                break
        if not wide(i):
            return pending[i]
        free.add(pending[i])
    return None


def _in_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise OverBudget()


class _Problem:
    """The attacker's system over the year's finest counts not pinned to zero."""

    def __init__(
        self,
        values: Mapping[str, Sequence[str]],
        region_of: Mapping[str, str],
        published: Published,
        total: int | None,
    ) -> None:
        regions = sorted(set(region_of.values()))
        self._region_code = np.array([regions.index(region_of[s]) for s in values["structure"]])
        index = {d: {v: i for i, v in enumerate(values[d])} for d in FINE}
        index["region"] = {v: i for i, v in enumerate(regions)}
        self._sizes = {d: len(values[d]) for d in FINE} | {"region": len(regions)}
        status, counts = self._grids(published, index)
        grid = self._live(values, status)
        live = grid.shape[1]
        eq: list[tuple[np.ndarray, np.ndarray]] = []
        b_eq: list[np.ndarray] = []
        hidden: list[tuple[np.ndarray, np.ndarray]] = []
        self.targets: dict[Cell, int] = {}
        n_eq = n_hidden = 0
        columns = np.arange(live)
        for group_by, st in status.items():
            flat = np.ravel_multi_index(self._project(group_by, grid), st.shape)
            kind = st.reshape(-1)[flat]
            mask = kind == 1
            cells, rows = np.unique(flat[mask], return_inverse=True)
            eq.append((rows + n_eq, columns[mask]))
            b_eq.append(counts[group_by].reshape(-1)[cells])
            n_eq += len(cells)
            mask = kind == 2
            cells, rows = np.unique(flat[mask], return_inverse=True)
            hidden.append((rows + n_hidden, columns[mask]))
            for c in cells:
                where = np.unravel_index(int(c), st.shape)
                names = tuple(
                    regions[int(i)] if d == "region" else values[d][int(i)]
                    for d, i in zip(group_by, where, strict=True)
                )
                self.targets[(group_by, names)] = n_hidden
                n_hidden += 1
        if total is not None:
            eq.append((np.zeros(live, dtype=np.int64) + n_eq, columns))
            b_eq.append(np.array([total]))
            n_eq += 1
        else:  # the grand total suppressed (under k): a cell to protect like any other
            hidden.append((np.zeros(live, dtype=np.int64) + n_hidden, columns))
            self.targets[((), ())] = n_hidden
            n_hidden += 1
        self._a_eq = _matrix(eq, n_eq, live) if n_eq else None
        self._b_eq = np.concatenate(b_eq) if n_eq else None
        self.cells = _matrix(hidden, n_hidden, live)
        self._a_ub = -self.cells if n_hidden else None
        self._b_ub = -np.ones(n_hidden) if n_hidden else None

    def _live(
        self, values: Mapping[str, Sequence[str]], status: Mapping[tuple[str, ...], np.ndarray]
    ) -> np.ndarray:
        """The finest cells an attacker cannot set to zero: the product of each
        dimension's values not published as zero, less every cell under a published
        zero; as codes, one row per dimension."""
        keep = []
        for d in FINE:
            one = status.get((d,))
            keep.append(np.arange(len(values[d])) if one is None else np.flatnonzero(one))
        if math.prod(len(k) for k in keep) > MAX_LIVE * 8:
            raise OverBudget()
        grid = np.stack([g.ravel() for g in np.meshgrid(*keep, indexing="ij")])
        for group_by, st in status.items():
            grid = grid[:, st[self._project(group_by, grid)] != 0]
        if grid.shape[1] > MAX_LIVE:
            raise OverBudget()
        return grid

    def _grids(
        self, published: Published, index: Mapping[str, Mapping[str, int]]
    ) -> tuple[dict[tuple[str, ...], np.ndarray], dict[tuple[str, ...], np.ndarray]]:
        """Each grouping's finest cells: status (0 published zero, 1 published count,
        2 hidden) and count."""
        status: dict[tuple[str, ...], np.ndarray] = {}
        counts: dict[tuple[str, ...], np.ndarray] = {}
        for group_by, shown in published.items():
            shape = tuple(self._sizes[d] for d in group_by)
            st, ct = np.zeros(shape, dtype=np.int8), np.zeros(shape, dtype=np.int64)
            for coord, n in shown.items():
                at = tuple(index[d][v] for d, v in zip(group_by, coord, strict=True))
                st[at] = 2 if n is None else int(n > 0)
                ct[at] = n or 0
            status[group_by], counts[group_by] = st, ct
        return status, counts

    def _project(self, group_by: tuple[str, ...], cells: np.ndarray) -> tuple[np.ndarray, ...]:
        structure = FINE.index("structure")
        return tuple(
            self._region_code[cells[structure]] if d == "region" else cells[FINE.index(d)]
            for d in group_by
        )

    def solve(self, objective: np.ndarray, deadline: float) -> np.ndarray | None:
        """A point minimising `objective`, or None when there is none (unbounded).
        One solve may not outlast the deadline either (HiGHS's own time limit: a
        large year's single programme ran past it otherwise, second review)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise OverBudget()
        found = linprog(
            objective,
            A_ub=self._a_ub,
            b_ub=self._b_ub,
            A_eq=self._a_eq,
            b_eq=self._b_eq,
            bounds=(0, None),
            method="highs",
            options={"time_limit": left},
        )
        if found.status == 1:  # iteration or time limit reached
            raise OverBudget()
        return np.asarray(found.x) if found.status == 0 else None


def _matrix(parts: list[tuple[np.ndarray, np.ndarray]], n_rows: int, n_cols: int) -> csr_matrix:
    if not parts:
        return csr_matrix((n_rows, n_cols))
    r = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    return coo_matrix((np.ones(len(r)), (r, c)), shape=(n_rows, n_cols)).tocsr()
