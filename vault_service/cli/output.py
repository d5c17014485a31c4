"""What every command prints: JSON on stdout, and on failure one line on stderr that
names the failing component and the exception's class, never its text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final

__all__ = ["failure_line", "print_json"]


def print_json(value: Any) -> int:
    print(json.dumps(value, indent=2, default=str))
    return 0


# Where an unexpected failure came from, by the modules its traceback passed through.
_SOURCES: Final = (
    (("asyncpg",), "database_unavailable", "PostgreSQL could not be reached or refused"),
    (("hvac", "requests", "urllib3"), "kms_unavailable", "Vault could not be reached or refused"),
)


def _modules(exc: BaseException) -> Iterator[str]:
    """The modules of every frame of `exc`, its causes and, for a group, its members."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            yield str(tb.tb_frame.f_globals.get("__name__", ""))
            tb = tb.tb_next
        yield type(current).__module__
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def failure_line(exc: BaseException) -> str:
    """One line naming the failing component and the exception's class, never its
    text: a connection error's message can hold a host, a DSN, even a password."""
    kind = type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.isalnum():
        kind += f", SQLSTATE {sqlstate}"
    modules = {m.split(".")[0] for m in _modules(exc)}
    for roots, code, sentence in _SOURCES:
        if modules.intersection(roots):
            return f"{code}: {sentence} ({kind})"
    return f"internal_error: the command failed ({kind})"
