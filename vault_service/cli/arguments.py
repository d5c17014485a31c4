"""Argument types shared by the command groups: each refuses what it cannot parse
with one short sentence (argparse prints it, with the usage, and exits 2)."""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Callable

__all__ = ["batch_size", "bounded", "parse_ttl", "uuid_arg", "workers"]

_TTL = re.compile(r"^(\d+)([smh]?)$")


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("TTL is like 900, 15m or 1h")
    value = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if not 60 <= value <= 3600:
        raise argparse.ArgumentTypeError("TTL must be between 1 minute and 1 hour")
    return value


def uuid_arg(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a UUID") from None


def batch_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError("a batch is 1 to 10000 rows")
    return int(text)


def workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError("1 to 64 processes")
    return int(text)


def bounded(limit: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not 0 < len(text) <= limit or not text.isprintable():
            raise argparse.ArgumentTypeError(f"1 to {limit} printable characters")
        return text

    return parse
