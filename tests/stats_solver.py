"""An attacker's linear solver over one published statistics table.

From the cells of an answer (every cell and margin, `*` for a summed dimension, a
structure with its region), it writes every published additive relation (the cells
of a line add up to their margin), and for each suppressed cell asks linear
programming for the least and the greatest value it can take. Zeros are always
published, so the attacker knows every suppressed count is at least 1 (a bound of 0
would miss tables that only that knowledge gives away, as a review found). A
suppressed count that the published ones give away has min = max.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linprog

TOTAL = "*"


def _up(columns: Sequence[str], key: tuple[str, ...], dim: str) -> tuple[str, ...] | None:
    """The margin a cell adds up to along `dim`: one level up, or None at the top."""
    i = columns.index(dim)
    if key[i] == TOTAL:
        return None
    out = list(key)
    if dim == "structure":
        out[i] = TOTAL  # a structure adds up to its region (the region column stays)
    elif dim == "region" and "structure" in columns:
        if key[columns.index("structure")] != TOTAL:
            return None  # a structure's cell moves up along `structure`, not here
        out[i] = TOTAL
    else:
        out[i] = TOTAL
    return tuple(out)


def bounds(
    columns: Sequence[str], cells: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, ...], tuple[float, float]]:
    """(min, max) of every suppressed cell, keyed by its values in `columns`."""
    value = {tuple(str(c[d]) for d in columns): c["count"] for c in cells}
    unknown = [k for k, v in value.items() if v is None]
    index = {k: i for i, k in enumerate(unknown)}
    lines: dict[tuple[str, tuple[str, ...]], list[tuple[str, ...]]] = {}
    for key in value:
        for dim in columns:
            margin = _up(columns, key, dim)
            if margin is not None:
                lines.setdefault((dim, margin), []).append(key)
    rows, rhs = [], []
    for (_, margin), members in lines.items():
        assert margin in value, f"a margin is missing from the answer: {margin}"
        row = np.zeros(len(unknown))
        b = 0.0
        for key in members:
            if value[key] is None:
                row[index[key]] += 1
            else:
                b -= value[key]
        if value[margin] is None:
            row[index[margin]] -= 1
        else:
            b += value[margin]
        if row.any():
            rows.append(row)
            rhs.append(b)
        else:
            assert b == 0, f"the published cells of a line do not add up: {margin}"
    out: dict[tuple[str, ...], tuple[float, float]] = {}
    if not unknown:
        return out
    a_eq, b_eq = np.array(rows), np.array(rhs)
    for key, i in index.items():
        c = np.zeros(len(unknown))
        c[i] = 1
        low = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=(1, None), method="highs")
        high = linprog(-c, A_eq=a_eq, b_eq=b_eq, bounds=(1, None), method="highs")
        assert low.status == 0, "the published table is inconsistent"
        out[key] = (low.fun, float("inf") if high.status == 3 else -high.fun)
    return out


def joint_pins(
    tables: Mapping[str, tuple[Sequence[str], Sequence[tuple[Sequence[str], int | None]]]],
    values: Mapping[str, Sequence[str]],
    region_of: Mapping[str, str],
    width: int = 1,
) -> list[tuple[str, tuple[str, ...], float, float]]:
    """The attacker who downloads every table of a year and solves them together
    (written apart from the service's own check, vault_service/stats/joint.py): one
    unknown per finest count (month x structure x programme x situation x age band x
    sex, at least 0), every published cell and margin an equation, every suppressed
    one at least 1; for each suppressed cell, its least and greatest value. Returns
    the cells whose range holds fewer than `width` + 1 whole numbers (1: a single
    value, pinned). Dense: small grids only."""
    dims = ("month", "structure", "programme", "situation", "age_band", "sex")
    shape = [len(values[d]) for d in dims]
    grid = np.indices(shape).reshape(len(dims), -1)
    index = {d: {v: i for i, v in enumerate(values[d])} for d in dims}
    region_of_code = np.array([region_of[s] for s in values["structure"]])
    rows = []
    for name, (columns, cells) in tables.items():
        for vals, count in cells:
            mask = np.ones(grid.shape[1], dtype=bool)
            for column, v in zip(columns, vals, strict=True):
                if v == TOTAL:
                    continue
                if column == "region":
                    mask &= region_of_code[grid[1]] == v
                else:
                    d = dims.index(column)
                    mask &= grid[d] == index[column][v]
            rows.append((name, tuple(vals), mask, count))
    zero = np.zeros(grid.shape[1], dtype=bool)
    for *_, mask, count in rows:
        if count == 0:
            zero |= mask
    live = np.flatnonzero(~zero)
    eq = [(mask[live], count) for *_, mask, count in rows if count]
    hidden = [(name, vals, mask[live]) for name, vals, mask, count in rows if count is None]
    a_eq = np.array([m for m, _ in eq], dtype=float) if eq else None
    b_eq = np.array([c for _, c in eq], dtype=float) if eq else None
    a_ub = -np.array([m for *_, m in hidden], dtype=float) if hidden else None
    b_ub = -np.ones(len(hidden)) if hidden else None
    pinned = []
    seen: set[bytes] = set()
    for name, vals, mask in hidden:
        if mask.tobytes() in seen:
            continue
        seen.add(mask.tobytes())
        c = mask.astype(float)
        kw: dict[str, Any] = {
            "A_ub": a_ub, "b_ub": b_ub, "A_eq": a_eq, "b_eq": b_eq,
            "bounds": (0, None), "method": "highs",
        }  # fmt: skip
        low, high = linprog(c, **kw), linprog(-c, **kw)
        lo = low.fun if low.status == 0 else float("-inf")
        hi = -high.fun if high.status == 0 else float("inf")
        if np.isfinite(hi) and np.floor(hi + 1e-7) - np.ceil(lo - 1e-7) < width:
            pinned.append((name, vals, lo, hi))
    return pinned
