"""Query parameters and page cursors, shared by every route that pages or counts.

One codec, strict both ways: a cursor is accepted only in the exact form this
service emits (unpadded URL-safe base64 of a fixed-size value, canonical round
trip), and an integer only as plain ASCII digits. Anything else is a 400
`invalid_parameter` whose detail names the parameter, never its value.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from typing import Final, overload

from vault_service.errors import InvalidParameter

__all__ = [
    "BIGINT_MAX",
    "decode_index_cursor",
    "decode_uuid_cursor",
    "encode_index_cursor",
    "encode_uuid_cursor",
    "query_int",
]

# What PostgreSQL's bigint holds: a larger number could only fail further down.
BIGINT_MAX: Final = 2**63 - 1
# Longer than any integer we accept: refused before int() sees it (int() of a few
# thousand digits raises, and accepts "²", "+1", " 1" and "1_000").
_MAX_DIGITS: Final = 19
_UUID_CURSOR_LEN: Final = 22  # 16 bytes, unpadded base64
_INDEX_CURSOR_LEN: Final = 11  # 8 bytes, unpadded base64


@overload
def query_int(
    params: Mapping[str, str], name: str, *, default: int, minimum: int, maximum: int
) -> int: ...
@overload
def query_int(
    params: Mapping[str, str], name: str, *, default: None, minimum: int, maximum: int
) -> int | None: ...
def query_int(
    params: Mapping[str, str], name: str, *, default: int | None, minimum: int, maximum: int
) -> int | None:
    """`params[name]` as an integer in [minimum, maximum], `default` when absent.

    ASCII digits only: `str.isdigit` alone also accepts superscripts and other
    Unicode digits that `int()` then refuses (or reads as another number)."""
    raw = params.get(name)
    if raw is None:
        return default
    if not (0 < len(raw) <= _MAX_DIGITS and raw.isascii() and raw.isdigit()):
        raise InvalidParameter(f"{name} must be an integer between {minimum} and {maximum}")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise InvalidParameter(f"{name} must be an integer between {minimum} and {maximum}")
    return value


def _unbase64(cursor: str, length: int) -> bytes:
    if len(cursor) != length:
        raise InvalidParameter("cursor is not valid")
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, binascii.Error):
        raise InvalidParameter("cursor is not valid") from None


def encode_uuid_cursor(value: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(value.bytes).rstrip(b"=").decode("ascii")


def decode_uuid_cursor(cursor: str | None) -> uuid.UUID:
    """The nil UUID (before every id) when no cursor was given; an empty one is refused."""
    if cursor is None:
        return uuid.UUID(int=0)
    raw = _unbase64(cursor, _UUID_CURSOR_LEN)
    if len(raw) != 16:
        raise InvalidParameter("cursor is not valid")
    value = uuid.UUID(bytes=raw)
    # The decoder skips characters outside the alphabet: only our own output passes.
    if encode_uuid_cursor(value) != cursor:
        raise InvalidParameter("cursor is not valid")
    return value


def encode_index_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(index.to_bytes(8, "big")).rstrip(b"=").decode("ascii")


def decode_index_cursor(cursor: str | None) -> int:
    """-1 (before the first entry) when no cursor was given; an empty one is refused."""
    if cursor is None:
        return -1
    raw = _unbase64(cursor, _INDEX_CURSOR_LEN)
    if len(raw) != 8:
        raise InvalidParameter("cursor is not valid")
    index = int.from_bytes(raw, "big")
    if index > BIGINT_MAX or encode_index_cursor(index) != cursor:
        raise InvalidParameter("cursor is not valid")
    return index
