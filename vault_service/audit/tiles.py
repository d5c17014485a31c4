"""Complete-subtree storage of the access-log tree in the C2SP tlog-tiles layout.

Why tiles: a proof needs O(log n) subtree hashes, and a sequencer appending a batch
must touch as few rows as possible inside its transaction. Storing every node would
cost a row per node; storing only leaves would make proofs O(n). Tiles of height 8
(https://c2sp.org/tlog-tiles) keep one row per 256 hashes, make a proof cost one or
two tile reads per 8 tree levels, and let the same rows be served verbatim to
tlog-tiles clients later.

Layout: tile (L, N) holds the hashes of the Merkle level-8L nodes 256N .. 256N+255,
concatenated; the rightmost tile of a level may be partial (fewer than 256 hashes)
and is rewritten in place as the tree grows. A partial tile is never hashed into the
level above: only complete subtrees are ever stored, so a stored hash never changes
once written, and proofs for older tree sizes read the same rows as new ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vault_service.audit.merkle import HASH_SIZE, root, root_from_leaf_hashes
from vault_service.errors import InvalidParameter, VaultServiceError

__all__ = [
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "AppendResult",
    "TileBuilder",
    "TileError",
    "TileReader",
    "TileStore",
    "tile_path",
    "tile_width",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
_FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE
_MAX_LEVEL = 63  # tlog-tiles: <L> is between 0 and 63


class TileError(VaultServiceError):
    """The tile store contradicts the tree size it was used with: a missing, short,
    oversized or ragged tile. This is a server fault (storage corruption or a
    concurrent append), never the client's, so it keeps the base 500 code and the
    operator sees the detail, not the client."""


class TileStore(Protocol):
    """Read side of the tile table, full or partial tiles alike.

    `get` returns the concatenated hashes of tile (level, index) as stored, or None if
    there is no such row. One row per (level, index): a partial tile is overwritten by
    its wider or full successor.
    """

    def get(self, level: int, index: int) -> bytes | None: ...


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """tlog-tiles resource path `tile/<L>/<N>[.p/<W>]`.

    N is written in zero-padded 3-digit groups, all but the last prefixed with `x`,
    so a static file tree never has a name that is both a file and a directory.
    """
    if not 0 <= level <= _MAX_LEVEL:
        raise InvalidParameter("tile level must be between 0 and 63")
    if index < 0:
        raise InvalidParameter("tile index must not be negative")
    if not 1 <= width <= TILE_WIDTH:
        raise InvalidParameter("tile width must be between 1 and 256")
    encoded = f"{index % 1000:03d}"
    rest = index // 1000
    while rest > 0:
        encoded = f"x{rest % 1000:03d}/{encoded}"
        rest //= 1000
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{encoded}{suffix}"


def tile_width(level: int, index: int, size: int) -> int:
    """Number of hashes tile (level, index) holds in the tree of `size` leaves: 256 for
    a full tile, 1..255 for the partial one, 0 if the tile does not exist yet.

    A server needs it to serve `.p/<W>` paths for a checkpoint's size from rows that
    may already be wider (the tree keeps growing after a checkpoint is signed).
    """
    nodes = size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, nodes - index * TILE_WIDTH))


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def _check_tile(level: int, index: int, data: bytes) -> None:
    if len(data) % HASH_SIZE or not 0 < len(data) <= _FULL_TILE_BYTES:
        raise TileError(f"tile {level}/{index} has an invalid length {len(data)}")


class TileReader:
    """`NodeReader` over a `TileStore`.

    Nodes at Merkle levels that are multiples of 8 are read directly; the 7 levels in
    between are recomputed from (at most 128 hashes of) the tile below, which is the
    price tlog-tiles pays for storing 1/256 as many rows. Tiles are cached because one
    proof hits the same tile for up to 8 consecutive levels. The cache is never
    invalidated, which is sound because a stored hash never changes (a cached partial
    tile too narrow for a later request is simply read again), but it only grows:
    make one reader per request.
    """

    def __init__(self, store: TileStore) -> None:
        self._store = store
        self._cache: dict[tuple[int, int], bytes] = {}
        self.reads = 0
        """Store reads so far; exposed so tests and metrics can check O(log n)."""

    def _tile(self, level: int, index: int, needed: int) -> bytes:
        key = (level, index)
        data = self._cache.get(key)
        if data is None or len(data) < needed * HASH_SIZE:
            self.reads += 1
            data = self._store.get(level, index)
            if data is None:
                raise TileError(f"tile {level}/{index} is missing")
            _check_tile(level, index, data)
            if len(data) < needed * HASH_SIZE:
                raise TileError(f"tile {level}/{index} is narrower than the tree needs")
            self._cache[key] = data
        return data

    def node(self, level: int, index: int) -> bytes:
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height  # index of the first level-8L node under this node
        tile_index, offset = divmod(first, TILE_WIDTH)
        count = 1 << height
        data = self._tile(tile_level, tile_index, offset + count)
        if count == 1:
            return data[offset * HASH_SIZE : (offset + 1) * HASH_SIZE]
        return root_from_leaf_hashes(
            _split(data[offset * HASH_SIZE : (offset + count) * HASH_SIZE])
        )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What a sequencer writes in its transaction: the new tree head and the tiles to
    upsert (keyed by (level, index); the bytes are the whole tile, full or partial)."""

    size: int
    root: bytes
    tiles: dict[tuple[int, int], bytes]


class _Overlay:
    """The store as it will be once `tiles` are written, so the new root can be read
    through the same code path as any proof, before anything is committed."""

    def __init__(self, store: TileStore, tiles: dict[tuple[int, int], bytes]) -> None:
        self._store = store
        self._tiles = tiles

    def get(self, level: int, index: int) -> bytes | None:
        data = self._tiles.get((level, index))
        return data if data is not None else self._store.get(level, index)


class TileBuilder:
    """Incremental appender for a sequencer.

    An append of N leaves reads only the right edge (one partial tile per level),
    and emits the tiles it changed: O(log n + N/256) rows. The builder does not lock
    anything: appends to one log must be serialised by the caller (for example by
    locking the tree-head row in the same transaction), because two builders started
    from the same size would each produce a valid but different tree. A partial tile
    whose width disagrees with the given size is refused for the same reason.

    Several appends on one builder are fine before the tiles are written: the builder
    reads its own earlier output first. Make one per transaction, as it keeps every
    tile it emitted.
    """

    def __init__(self, size: int, store: TileStore) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidParameter("tree size must be a non-negative integer")
        self._size = size
        self._written: dict[tuple[int, int], bytes] = {}
        self._store = _Overlay(store, self._written)

    @property
    def size(self) -> int:
        return self._size

    def _right_edge(self, level: int, nodes_before: int) -> bytes:
        """Existing hashes of the partial tile that the append continues, checked
        against the tree size so a stale size cannot silently overwrite history."""
        width = nodes_before % TILE_WIDTH
        if width == 0:
            return b""
        index = nodes_before // TILE_WIDTH
        data = self._store.get(level, index)
        if data is None or len(data) != width * HASH_SIZE:
            raise TileError(f"tile {level}/{index} does not match the tree size")
        return data

    def append(self, leaf_hashes: Sequence[bytes]) -> AppendResult:
        hashes = list(leaf_hashes)
        if any(not isinstance(h, bytes) or len(h) != HASH_SIZE for h in hashes):
            raise InvalidParameter("every leaf hash must be 32 bytes")
        old_size = self._size
        new_size = old_size + len(hashes)
        tiles: dict[tuple[int, int], bytes] = {}

        level = 0
        new_nodes = hashes  # newly complete nodes at Merkle level 8 * level
        while new_nodes:
            nodes_before = old_size >> (TILE_HEIGHT * level)
            first_tile = nodes_before // TILE_WIDTH
            buffer = self._right_edge(level, nodes_before) + b"".join(new_nodes)
            completed: list[bytes] = []
            for offset in range(0, len(buffer), _FULL_TILE_BYTES):
                data = buffer[offset : offset + _FULL_TILE_BYTES]
                tiles[(level, first_tile + offset // _FULL_TILE_BYTES)] = data
                if len(data) == _FULL_TILE_BYTES:
                    # Only a full tile becomes a node of the level above.
                    completed.append(root_from_leaf_hashes(_split(data)))
            new_nodes = completed
            level += 1

        self._written.update(tiles)
        self._size = new_size
        new_root = root(new_size, TileReader(self._store))
        return AppendResult(size=new_size, root=new_root, tiles=tiles)
