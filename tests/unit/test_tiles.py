"""Tile storage: paths per c2sp.org/tlog-tiles, the incremental appender against a
from-scratch recomputation, and proofs served from tiles."""

from __future__ import annotations

import random

import pytest

from vault_service.audit.merkle import (
    NodeReader,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from vault_service.audit.tiles import (
    TILE_WIDTH,
    TileBuilder,
    TileError,
    TileReader,
    tile_path,
    tile_width,
)
from vault_service.errors import InvalidParameter


class MemoryStore:
    """TileStore over a dict, standing in for the tile table; counts reads."""

    def __init__(self) -> None:
        self.tiles: dict[tuple[int, int], bytes] = {}
        self.reads = 0

    def get(self, level: int, index: int) -> bytes | None:
        self.reads += 1
        return self.tiles.get((level, index))


def leaves_for(n: int, seed: int = 0) -> list[bytes]:
    return [leaf_hash(f"tile entry {seed} {i}".encode()) for i in range(n)]


def expected_tiles(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    """Every tile of the tree, recomputed from scratch from the spec's definition:
    tile (l, n) hash i is MTH(D[(256n + i) * 256**l : (256n + i + 1) * 256**l])."""
    tiles: dict[tuple[int, int], bytes] = {}
    size = len(leaves)
    level = 0
    while size >> (8 * level):
        span = TILE_WIDTH**level
        count = size // span
        hashes = [root_from_leaf_hashes(leaves[i * span : (i + 1) * span]) for i in range(count)]
        for n in range(0, count, TILE_WIDTH):
            tiles[(level, n // TILE_WIDTH)] = b"".join(hashes[n : n + TILE_WIDTH])
        level += 1
    return tiles


def tile_levels(size: int) -> int:
    levels = 0
    while size >> (8 * levels):
        levels += 1
    return levels


def build(leaves: list[bytes], batches: list[int]) -> MemoryStore:
    store = MemoryStore()
    size = 0
    for count in batches:
        result = TileBuilder(size, store).append(leaves[size : size + count])
        size += count
        store.tiles.update(result.tiles)
        assert result.size == size
        assert result.root == root_from_leaf_hashes(leaves[:size])
    return store


# --- paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "index", "width", "path"),
    [
        # The spec's example: index 1234067 is x001/x234/067.
        (0, 1234067, 256, "tile/0/x001/x234/067"),
        (1, 1234067, 256, "tile/1/x001/x234/067"),
        (0, 0, 256, "tile/0/000"),
        (0, 999, 256, "tile/0/999"),
        (0, 1000, 256, "tile/0/x001/000"),
        (3, 1000000, 256, "tile/3/x001/x000/000"),
        (63, 5, 256, "tile/63/005"),
        # The spec's tree of 70,000: partial tiles carry .p/<W>.
        (0, 273, 112, "tile/0/273.p/112"),
        (1, 1, 17, "tile/1/001.p/17"),
        (2, 0, 1, "tile/2/000.p/1"),
        (0, 1234067, 255, "tile/0/x001/x234/067.p/255"),
    ],
)
def test_tile_path(level: int, index: int, width: int, path: str) -> None:
    assert tile_path(level, index, width) == path


def test_tile_path_defaults_to_full_tile() -> None:
    assert tile_path(0, 7) == "tile/0/007"


@pytest.mark.parametrize(
    ("level", "index", "width"), [(-1, 0, 256), (64, 0, 256), (0, -1, 256), (0, 0, 0), (0, 0, 257)]
)
def test_tile_path_refuses_out_of_range(level: int, index: int, width: int) -> None:
    with pytest.raises(InvalidParameter):
        tile_path(level, index, width)


def test_tile_width_matches_spec_examples() -> None:
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial
    # level 0 tile of width 112, one full level 1 tile, one partial level 1 tile of
    # width 17, and one partial level 2 tile of width 1."
    assert all(tile_width(0, n, 70_000) == 256 for n in range(273))
    assert tile_width(0, 273, 70_000) == 112
    assert tile_width(0, 274, 70_000) == 0
    assert tile_width(1, 0, 70_000) == 256
    assert tile_width(1, 1, 70_000) == 17
    assert tile_width(2, 0, 70_000) == 1
    assert tile_width(3, 0, 70_000) == 0
    # "a tree of size 256 will be represented by a full level 0 tile and a partial
    # level 1 tile of width 1."
    assert tile_width(0, 0, 256) == 256
    assert tile_width(1, 0, 256) == 1
    assert tile_width(0, 1, 256) == 0


# --- the appender --------------------------------------------------------------------


def test_one_at_a_time_up_to_1100() -> None:
    leaves = leaves_for(1100)
    store = MemoryStore()
    builder = TileBuilder(0, store)
    for size in range(1, 1101):
        store.reads = 0
        result = builder.append([leaves[size - 1]])
        store.tiles.update(result.tiles)
        assert result.size == builder.size == size
        assert result.root == root_from_leaf_hashes(leaves[:size]), size
        # Only the right edge is read and written: one tile per level, plus the
        # root's reads, which the builder serves from what it just wrote.
        assert len(result.tiles) <= tile_levels(size)
        assert store.reads <= 2 * tile_levels(size)
        if size in (1, 255, 256, 257, 511, 512, 1024, 1100):
            assert store.tiles == expected_tiles(leaves[:size]), size


@pytest.mark.parametrize("size", [*range(1, 70), 255, 256, 257, 300, 512, 513, 1100])
def test_single_batch_of_each_size(size: int) -> None:
    leaves = leaves_for(size, seed=size)
    store = build(leaves, [size])
    assert store.tiles == expected_tiles(leaves)


@pytest.mark.parametrize("seed", range(8))
def test_random_batch_splits(seed: int) -> None:
    rng = random.Random(seed)
    total = rng.randrange(1000, 5000)
    leaves = leaves_for(total, seed=seed)
    batches: list[int] = []
    while sum(batches) < total:
        batches.append(min(total - sum(batches), rng.choice([0, 1, 2, 7, 255, 256, 257, 700])))
    store = MemoryStore()
    size = 0
    for count in batches:
        levels_after = tile_levels(size + count)
        result = TileBuilder(size, store).append(leaves[size : size + count])
        store.tiles.update(result.tiles)
        size += count
        assert result.root == root_from_leaf_hashes(leaves[:size])
        # O(log n + N/256) rows per batch.
        assert len(result.tiles) <= 2 * levels_after + count // 255 + 1
    assert store.tiles == expected_tiles(leaves)


def test_spec_tree_of_70000_has_the_spec_tiles() -> None:
    leaves = leaves_for(70_000, seed=7)
    rng = random.Random(70_000)
    batches = []
    remaining = 70_000
    while remaining:
        batch = min(remaining, rng.randrange(1, 5000))
        batches.append(batch)
        remaining -= batch
    store = build(leaves, batches)
    widths = {key: len(data) // 32 for key, data in store.tiles.items()}
    assert sorted(k for k, w in widths.items() if k[0] == 0 and w == 256) == [
        (0, n) for n in range(273)
    ]
    assert widths[(0, 273)] == 112
    assert widths[(1, 0)] == 256
    assert widths[(1, 1)] == 17
    assert widths[(2, 0)] == 1
    assert len(widths) == 273 + 1 + 2 + 1
    assert all(w == tile_width(level, n, 70_000) for (level, n), w in widths.items())


def test_builder_keeps_its_own_output_between_appends() -> None:
    # Two appends in one transaction, before any tile is written to the store.
    leaves = leaves_for(600)
    store = MemoryStore()
    builder = TileBuilder(0, store)
    first = builder.append(leaves[:300])
    second = builder.append(leaves[300:])
    assert second.root == root_from_leaf_hashes(leaves)
    store.tiles.update(first.tiles)
    store.tiles.update(second.tiles)
    assert store.tiles == expected_tiles(leaves)


def test_empty_append_changes_nothing() -> None:
    leaves = leaves_for(300)
    store = build(leaves, [300])
    result = TileBuilder(300, store).append([])
    assert result.tiles == {}
    assert result.root == root_from_leaf_hashes(leaves)
    assert TileBuilder(0, MemoryStore()).append([]).root == root_from_leaf_hashes([])


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33])
def test_builder_refuses_bad_leaf_hashes(bad: bytes) -> None:
    with pytest.raises(InvalidParameter):
        TileBuilder(0, MemoryStore()).append([leaf_hash(b"a"), bad])


def test_builder_refuses_a_stale_size() -> None:
    leaves = leaves_for(300)
    store = build(leaves, [300])
    # Another sequencer already appended: the partial tile is wider than size says.
    with pytest.raises(TileError):
        TileBuilder(299, store).append([leaf_hash(b"fork")])
    # And narrower (lost or corrupted row).
    with pytest.raises(TileError):
        TileBuilder(301, store).append([leaf_hash(b"gap")])


def test_builder_refuses_a_negative_size() -> None:
    with pytest.raises(InvalidParameter):
        TileBuilder(-1, MemoryStore())


# --- proofs from tiles ----------------------------------------------------------------


def test_tile_reader_is_a_node_reader() -> None:
    reader: NodeReader = TileReader(MemoryStore())
    assert hasattr(reader, "node")


def test_proofs_from_tiles_verify_for_current_and_older_sizes() -> None:
    rng = random.Random(4242)
    total = 70_000
    leaves = leaves_for(total, seed=11)
    store = build(leaves, [30_000, 40_000])
    sizes = sorted(
        {rng.randrange(1, total + 1) for _ in range(12)} | {1, 255, 256, 257, 65_536, total}
    )
    roots = {n: root_from_leaf_hashes(leaves[:n]) for n in sizes}
    levels = tile_levels(total)
    for size in sizes:
        assert root(size, TileReader(store)) == roots[size]
        for _ in range(10):
            index = rng.randrange(size)
            reader = TileReader(store)
            proof = inclusion_proof(index, size, reader)
            verify_inclusion(leaves[index], index, size, proof, roots[size])
            assert reader.reads <= 2 * levels + 1
        for size1 in sizes:
            if size1 > size:
                break
            reader = TileReader(store)
            proof = consistency_proof(size1, size, reader)
            verify_consistency(size1, size, roots[size1], roots[size], proof)
            assert reader.reads <= 2 * levels + 1


def test_exhaustive_proofs_from_tiles_around_the_first_tile_boundary() -> None:
    leaves = leaves_for(520, seed=5)
    store = build(leaves, [1] * 520)
    roots = [root_from_leaf_hashes(leaves[:n]) for n in range(521)]
    for size in (*range(253, 260), 511, 512, 513, 520):
        for index in range(size):
            proof = inclusion_proof(index, size, TileReader(store))
            verify_inclusion(leaves[index], index, size, proof, roots[size])
        for size1 in range(1, size + 1):
            proof = consistency_proof(size1, size, TileReader(store))
            verify_consistency(size1, size, roots[size1], roots[size], proof)


def test_reader_reports_missing_and_corrupt_tiles() -> None:
    leaves = leaves_for(300)
    store = build(leaves, [300])
    del store.tiles[(0, 1)]
    with pytest.raises(TileError):
        inclusion_proof(299, 300, TileReader(store))

    store = build(leaves, [300])
    store.tiles[(0, 1)] = store.tiles[(0, 1)][:-1]  # not a multiple of 32 bytes
    with pytest.raises(TileError):
        inclusion_proof(299, 300, TileReader(store))

    store = build(leaves, [300])
    store.tiles[(0, 1)] = store.tiles[(0, 1)][:-32]  # narrower than size 300 needs
    with pytest.raises(TileError):
        inclusion_proof(298, 300, TileReader(store))  # needs leaf 299 as a sibling

    store = build(leaves, [300])
    store.tiles[(0, 0)] += b"\x00" * 32  # wider than a full tile
    with pytest.raises(TileError):
        inclusion_proof(0, 300, TileReader(store))


def test_reader_caches_tiles_within_a_proof() -> None:
    leaves = leaves_for(256 * 3)
    store = build(leaves, [256 * 3])
    reader = TileReader(store)
    store.reads = 0
    inclusion_proof(5, 256 * 3, reader)
    # Eight levels inside tile (0, 0) plus the level-1 tile: two reads, not nine.
    assert store.reads == reader.reads == 2
