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
