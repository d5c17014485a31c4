"""Query parameters, path ids and page cursors, shared by every route that takes them.

One parser (`Query`) and one codec, strict both ways: a query names each parameter
once, from the route's list, with a value no longer than the route's cap; a cursor is
accepted only in the exact form this service emits (unpadded URL-safe base64 of a
fixed-size value, canonical round trip), an integer only as plain ASCII digits, a
UUID only in canonical form and a time only with its zone. Anything else is a 400
`invalid_parameter` whose detail names the parameter, never its value.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Set
from typing import Final, overload

from vault_service.errors import InvalidParameter

__all__ = [
    "BIGINT_MAX",
    "Query",
    "decode_index_cursor",
    "decode_uuid_cursor",
    "encode_index_cursor",
    "encode_uuid_cursor",
    "parse_uuid",
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


def parse_uuid(raw: str, what: str) -> uuid.UUID:
    """A UUID in canonical form (`uuid.UUID` alone also takes braces, `urn:uuid:`
    and missing hyphens: one id, one spelling)."""
    try:
        value = uuid.UUID(raw)
    except ValueError:
        raise InvalidParameter(f"{what} must be a UUID") from None
    if str(value) != raw.lower():
        raise InvalidParameter(f"{what} must be a UUID in canonical form")
    return value


class _Required:
    """The default of a parameter that has none: absent is refused like invalid."""


_REQUIRED: Final = _Required()
_UNKNOWN: Final = "unknown query parameter"


class Query(Mapping[str, str]):
    """A query string read strictly, and the typed values of its parameters.

    Each name at most once (a repeated one could be read one way here and another
    way by a proxy or a log), each value at most `max_length` characters (the
    route's cap), and, when `allowed` is given, no name outside it. The first
    parameter that breaks a rule is refused, the rules taken in that order.
    `items` are the decoded pairs in request order (Litestar's
    `request.query_params.multi_items()`)."""

    __slots__ = ("_values",)

    def __init__(
        self,
        items: Iterable[tuple[str, str]],
        *,
        max_length: int,
        allowed: Collection[str] | None = None,
    ) -> None:
        values: dict[str, str] = {}
        for name, value in items:
            if allowed is not None and name not in allowed:
                raise InvalidParameter(_UNKNOWN)
            if name in values:
                raise InvalidParameter("a query parameter is repeated")
            if len(value) > max_length:
                raise InvalidParameter("a query parameter is too long")
            values[name] = value
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def only(self, allowed: Set[str]) -> None:
        """Refuses a name outside `allowed` once every parameter passed the other
        rules: for a route whose names are checked after the query is read (the
        record routes, where a repeated or too long value is named first)."""
        if not self._values.keys() <= allowed:
            raise InvalidParameter(_UNKNOWN)

    @overload
    def get_int(
        self, name: str, *, default: int, minimum: int = 0, maximum: int = BIGINT_MAX
    ) -> int: ...
    @overload
    def get_int(
        self, name: str, *, default: None = None, minimum: int = 0, maximum: int = BIGINT_MAX
    ) -> int | None: ...
    def get_int(
        self,
        name: str,
        *,
        default: int | None = None,
        minimum: int = 0,
        maximum: int = BIGINT_MAX,
    ) -> int | None:
        """An integer in [minimum, maximum] (by default what a bigint holds, never
        negative: tree sizes and entry indexes), `default` when absent."""
        return query_int(self._values, name, default=default, minimum=minimum, maximum=maximum)

    def require_int(self, name: str, *, minimum: int = 0, maximum: int = BIGINT_MAX) -> int:
        value = self.get_int(name, minimum=minimum, maximum=maximum)
        if value is None:
            raise InvalidParameter(f"{name} is required")
        return value

    def get_limit(self, default: int, maximum: int) -> int:
        """`limit`: a page of at least one item, at most `maximum`."""
        return self.get_int("limit", default=default, minimum=1, maximum=maximum)

    def get_uuid(self, name: str) -> uuid.UUID | None:
        raw = self._values.get(name)
        return None if raw is None else parse_uuid(raw, name)

    def get_uuid_cursor(self) -> uuid.UUID | None:
        """The id a page starts after (`cursor`), None from the start."""
        cursor = self._values.get("cursor")
        return None if cursor is None else decode_uuid_cursor(cursor)

    def get_time(self, name: str) -> datetime.datetime | None:
        """An ISO 8601 date-time with its time zone: a naive one would be read in
        whatever zone the server runs in."""
        raw = self._values.get(name)
        if raw is None:
            return None
        try:
            value = datetime.datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidParameter(f"{name} must be an ISO 8601 date-time") from None
        if value.tzinfo is None:
            raise InvalidParameter(f"{name} must carry a time zone (e.g. Z)")
        return value

    @overload
    def get_choice(self, name: str, options: tuple[str, ...]) -> str: ...
    @overload
    def get_choice(self, name: str, options: tuple[str, ...], default: str) -> str: ...
    @overload
    def get_choice(self, name: str, options: tuple[str, ...], default: None) -> str | None: ...
    def get_choice(
        self, name: str, options: tuple[str, ...], default: str | _Required | None = _REQUIRED
    ) -> str | None:
        """One of `options`; `default` when absent, and without one the parameter is
        required (absent is refused with the same sentence as a wrong value)."""
        raw = self._values.get(name)
        if raw is None:
            if not isinstance(default, _Required):
                return default
        elif raw in options:
            return raw
        listed = " or ".join((", ".join(options[:-1]), options[-1])) if options[:-1] else options[0]
        raise InvalidParameter(f"{name} must be {listed}")
