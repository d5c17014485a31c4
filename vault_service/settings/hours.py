"""Working hours, as an operator writes them: `mon-fri 07:00-20:00`.

Days are English three-letter names, single (`sat`), ranges (`mon-fri`) or lists of
either (`mon-thu,sat`); hours are a half-open local interval `HH:MM-HH:MM` within one
day (`24:00` ends at midnight: `mon-sun 00:00-24:00` is always). The time zone is
separate (a structure's own, or the service's), so that one schedule serves Paris and
Saint-Denis de La Réunion alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["WorkingHours", "parse_working_hours"]

_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FORM = re.compile(r"([a-z,-]{3,64}) ([0-2][0-9]):([0-5][0-9])-([0-2][0-9]):([0-5][0-9])")


@dataclass(frozen=True, slots=True)
class WorkingHours:
    days: tuple[int, ...]  # ISO weekdays, Monday = 1
    start: str  # "HH:MM", as PostgreSQL's time reads it ("24:00" included)
    end: str


def _day(name: str) -> int:
    try:
        return _DAYS.index(name) + 1
    except ValueError:
        raise ValueError("working hours: unknown day") from None


def parse_working_hours(text: str) -> WorkingHours:
    """Parse `DAYS HH:MM-HH:MM`; ValueError (naming the part, not echoing it) if not."""
    match = _FORM.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError("working hours: expected e.g. 'mon-fri 07:00-20:00'")
    days: set[int] = set()
    for part in match[1].split(","):
        first, _, last = part.partition("-")
        low, high = _day(first), _day(last or first)
        if high < low:
            raise ValueError("working hours: a day range runs backwards")
        days.update(range(low, high + 1))
    start, end = (int(match[i]) * 60 + int(match[i + 1]) for i in (2, 4))
    if start > 23 * 60 + 59 or end > 24 * 60:
        raise ValueError("working hours: an hour is out of the day")
    if not start < end:
        raise ValueError("working hours: the day ends before it starts")
    return WorkingHours(tuple(sorted(days)), _text(start), _text(end))


def _text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
