"""The offline verifier on files: no database, no service, a local Ed25519 key."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vault_service.audit import verify
from vault_service.audit.entry import AccessEvent, canonical_body, encode_leaf
from vault_service.audit.entry import prepare as _prepare
from vault_service.audit.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    root_from_leaf_hashes,
)
from vault_service.audit.note import format_checkpoint, sign_note, verifier_key_string
from vault_service.audit.tiles import TileBuilder, TileReader
from vault_service.audit.verify import (
    BUNDLE_FORMAT,
    CONSISTENCY_FORMAT,
    INCLUSION_FORMAT,
    KEYS_FORMAT,
    Bundle,
    BundleEntry,
    CompactRange,
    ConsistencyProofFile,
    InclusionProofFile,
    KeysFile,
    frontier_positions,
)

ORIGIN = "vault-service.test/offline"


class Store:
    def __init__(self) -> None:
        self.tiles: dict[tuple[int, int], bytes] = {}

    def get(self, level: int, index: int) -> bytes | None:
        return self.tiles.get((level, index))


class SyntheticLog:
    """Entries made by the service's own entry code, tiles by its TileBuilder, notes
    signed by a local key: what the API would serve, without the API."""

    def __init__(self, directory: Path, key: Ed25519PrivateKey | None = None) -> None:
        self.dir = directory
        self.key = key or Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.store = Store()
        self.entries: list[BundleEntry] = []
        self.hashes: list[bytes] = []

    def append(self, count: int) -> None:
        leaves = []
        for _ in range(count):
            index = len(self.entries)
            prepared = _prepare(
                AccessEvent(
                    action="record.read",
                    outcome="allowed",
                    actor_id=uuid.uuid4(),
                    role="counsellor",
                    structure_id=uuid.uuid4(),
                    record_ids=(uuid.uuid4(),),
                    fields=("birth_name",),
                ),
                1_700_000_000_000_000 + index,
            )
            leaf = encode_leaf(index, prepared.at_us, prepared.body_hash)
            self.entries.append(
                BundleEntry(
                    index=index,
                    leaf=leaf,
                    salt=prepared.salt,
                    body=msgspec.Raw(prepared.body.encode()),
                )
            )
            leaves.append(leaf_hash(leaf))
        result = TileBuilder(len(self.hashes), self.store).append(leaves)
        self.store.tiles.update(result.tiles)
        self.hashes.extend(leaves)

    @property
    def size(self) -> int:
        return len(self.hashes)

    def reader(self) -> TileReader:
        return TileReader(self.store)

    def save(self, name: str, value: object) -> Path:
        path = self.dir / name
        if isinstance(value, str):
            path.write_text(value, encoding="utf-8")
        elif isinstance(value, bytes):
            path.write_bytes(value)
        else:
            path.write_bytes(msgspec.json.encode(value))
        return path

    def keys(self, name: str = "keys.json", *extra: bytes) -> Path:
        keys = [verifier_key_string(ORIGIN, k) for k in (self.public, *extra)]
        return self.save(
            name, KeysFile(format=KEYS_FORMAT, origin=ORIGIN, latest_version=1, keys=keys)
        )

    def checkpoint(self, name: str, size: int | None = None) -> Path:
        size = self.size if size is None else size
        body = format_checkpoint(ORIGIN, size, root(size, self.reader()))
        return self.save(name, sign_note(body, ORIGIN, self.public, self.key.sign))

    def bundle(self, name: str, start: int, end: int, size: int | None = None) -> Path:
        size = self.size if size is None else size
        reader = self.reader()
        return self.save(
            name,
            Bundle(
                format=BUNDLE_FORMAT,
                origin=ORIGIN,
                tree_size=size,
                start=start,
                end=end,
                frontier=[reader.node(level, i) for level, i in frontier_positions(start)],
                consistency=consistency_proof(end, size, reader) if 0 < end < size else [],
                entries=self.entries[start:end],
            ),
        )

    def inclusion(self, name: str, index: int, size: int | None = None) -> Path:
        size = self.size if size is None else size
        entry = self.entries[index]
        return self.save(
            name,
            InclusionProofFile(
                format=INCLUSION_FORMAT,
                origin=ORIGIN,
                index=index,
                tree_size=size,
                leaf=entry.leaf,
                salt=entry.salt,
                body=entry.body,
                proof=inclusion_proof(index, size, self.reader()),
            ),
        )

    def consistency(self, name: str, first: int, second: int) -> Path:
        return self.save(
            name,
            ConsistencyProofFile(
                format=CONSISTENCY_FORMAT,
                origin=ORIGIN,
                first=first,
                second=second,
                proof=consistency_proof(first, second, self.reader()),
            ),
        )


@pytest.fixture
def log(tmp_path: Path) -> SyntheticLog:
    synthetic = SyntheticLog(tmp_path)
    synthetic.append(1000)
    return synthetic


def run(log: SyntheticLog, checkpoint: Path, state: bool = False, **files) -> verify.Report:
    return verify.run(
        keys=log.dir / "keys.json",
        checkpoint=checkpoint,
        state=log.dir / "state.json" if state else None,
        **files,
    )


# --- compact ranges -------------------------------------------------------------------------
def test_compact_range_rebuilds_every_root_from_any_frontier() -> None:
    rng = random.Random(4)
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(700)]
    for _ in range(200):
        start = rng.randrange(0, 700)
        end = rng.randrange(start, 701)
        frontier = [
            root_from_leaf_hashes(hashes[i << level : (i + 1) << level])
            for level, i in frontier_positions(start)
        ]
        compact = CompactRange(start, frontier)
        compact.extend(hashes[start:end])
        assert compact.root() == root_from_leaf_hashes(hashes[:end])


def test_compact_range_refuses_malformed_frontiers() -> None:
    from vault_service.audit.merkle import MerkleError

    with pytest.raises(MerkleError):
        CompactRange(5, [bytes(32)])  # 5 = 4 + 1 needs two hashes
    with pytest.raises(MerkleError):
        CompactRange(4, [bytes(31)])


# --- happy paths -----------------------------------------------------------------------------
def test_whole_log_in_bundles_with_inclusions_and_state(log: SyntheticLog, capsys) -> None:
    keys = log.keys()
    checkpoint = log.checkpoint("c1.txt")
    files = [log.bundle("a.json", 0, 300), log.bundle("b.json", 300, 1000)]
    code = verify.main(
        [
            "--keys",
            str(keys),
            "--checkpoint",
            str(checkpoint),
            "--state",
            str(log.dir / "s.json"),
            "--bundle",
            str(files[0]),
            "--bundle",
            str(files[1]),
            "--inclusion",
            str(log.inclusion("i.json", 517)),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "bundle [0, 300) of tree 1000: 300 entries verified" in out
    assert "entry 517 included in tree 1000" in out
    assert (log.dir / "s.json").exists()

    log.append(234)
    second = log.checkpoint("c2.txt")
    consistency = log.consistency("k.json", 1000, 1234)
    args = ["--keys", str(keys), "--state", str(log.dir / "s.json")]
    assert verify.main([*args, "--checkpoint", str(second), "--consistency", str(consistency)]) == 0
    state = msgspec.json.decode((log.dir / "s.json").read_bytes())
    assert state["size"] == 1234
    # The same checkpoint again: nothing to link, still fine.
    assert verify.main([*args, "--checkpoint", str(second)]) == 0


def test_bundle_of_an_older_tree_and_a_middle_range(log: SyntheticLog) -> None:
    log.keys()
    checkpoint = log.checkpoint("c.txt")
    middle = log.bundle("m.json", 257, 513)  # consistency path from 513 to 1000
    assert run(log, checkpoint, bundles=[middle]).passed


def test_a_bundle_spanning_the_old_size_links_the_state(log: SyntheticLog) -> None:
    log.keys()
    assert run(log, log.checkpoint("c1.txt"), state=True).passed
    log.append(100)
    report = run(
        log, log.checkpoint("c2.txt"), state=True, bundles=[log.bundle("b.json", 990, 1100)]
    )
    assert report.passed, report.failures


def test_pruned_bodies_still_verify(log: SyntheticLog) -> None:
    log.keys()
    for i in range(10, 20):
        log.entries[i] = BundleEntry(index=i, leaf=log.entries[i].leaf)
    report = run(log, log.checkpoint("c.txt"), bundles=[log.bundle("b.json", 0, 100)])
    assert report.passed
    assert "(10 with pruned bodies)" in report.ok[-1]


def test_reformatted_files_still_verify(log: SyntheticLog) -> None:
    log.keys()
    checkpoint = log.checkpoint("c.txt")
    path = log.bundle("b.json", 0, 50)
    path.write_bytes(msgspec.json.format(path.read_bytes(), indent=4))
    assert run(log, checkpoint, bundles=[path]).passed


def test_keys_as_text_lines(log: SyntheticLog) -> None:
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    log.save(
        "keys.json",
        "# pinned on 2025-01-01\n"
        + verifier_key_string(ORIGIN, other)
        + "\n"
        + verifier_key_string(ORIGIN, log.public)
        + "\n",
    )
    assert run(log, log.checkpoint("c.txt")).passed


# --- failures --------------------------------------------------------------------------------
def test_checkpoint_not_signed_by_a_pinned_key(log: SyntheticLog, capsys) -> None:
    impostor = SyntheticLog(log.dir)
    impostor.append(10)
    log.keys()
    forged = impostor.checkpoint("forged.txt")
    assert verify.main(["--keys", str(log.dir / "keys.json"), "--checkpoint", str(forged)]) == 1
    assert "BAD SIGNATURE" in capsys.readouterr().err
    text = log.checkpoint("c.txt").read_text()
    altered = log.save("altered.txt", text.replace("\n1000\n", "\n999\n", 1))
    assert not run(log, altered).passed


def test_changed_body_is_reported_with_its_index(log: SyntheticLog) -> None:
    log.keys()
    entry = log.entries[42]
    log.entries[42] = BundleEntry(
        index=42,
        leaf=entry.leaf,
        salt=entry.salt,
        body=msgspec.Raw(bytes(entry.body).replace(b'"allowed"', b'"refused"')),
    )
    report = run(
        log,
        log.checkpoint("c.txt"),
        bundles=[log.bundle("b.json", 0, 1000)],
        inclusions=[log.inclusion("i.json", 42)],
    )
    assert report.failures[0] == (
        f"{log.dir / 'b.json'}: TAMPERED: entry 42: body does not match the hash its leaf "
        "commits to"
    )
    assert "TAMPERED" in report.failures[1] and "entry 42" in report.failures[1]
    assert len(report.failures) == 2


def test_body_dropped_but_salt_kept_is_not_a_pruning(log: SyntheticLog) -> None:
    log.keys()
    entry = log.entries[5]
    log.entries[5] = BundleEntry(index=5, leaf=entry.leaf, salt=entry.salt)
    report = run(log, log.checkpoint("c.txt"), bundles=[log.bundle("b.json", 0, 10)])
    assert any("TAMPERED: entry 5" in f for f in report.failures)


@pytest.mark.parametrize("change", ["swap", "drop", "renumber", "leaf", "insert"])
def test_entries_changed_removed_or_added_are_reported(log: SyntheticLog, change) -> None:
    log.keys()
    checkpoint = log.checkpoint("c.txt")
    bundle = msgspec.json.decode(log.bundle("b.json", 0, 1000).read_bytes(), type=Bundle)
    entries = list(bundle.entries)
    if change == "swap":
        entries[10], entries[11] = entries[11], entries[10]
    elif change == "drop":
        del entries[500]
        bundle.end -= 1
    elif change == "renumber":
        entries[7] = BundleEntry(index=8, leaf=entries[7].leaf, salt=entries[7].salt)
    elif change == "leaf":
        leaf = bytearray(entries[99].leaf)
        leaf[-1] ^= 1
        entries[99] = BundleEntry(index=99, leaf=bytes(leaf))  # body pruned to hide it
    else:
        entries.insert(999, BundleEntry(index=999, leaf=encode_leaf(999, 0, bytes(32))))
        entries = entries[:1000]
    bundle.entries = entries
    path = log.save("b.json", bundle)
    report = run(log, checkpoint, bundles=[path])
    assert not report.passed
    if change == "renumber":  # the leaves are intact; the numbering is the lie
        assert report.failures == [f"{path}: entry 7: numbered 8"]
    else:
        assert any(f.startswith(f"MISMATCH: {path}") for f in report.failures)


def test_fork_at_the_same_size_and_rewritten_history(tmp_path: Path) -> None:
    honest = SyntheticLog(tmp_path)
    honest.append(500)
    honest.keys()
    assert run(honest, honest.checkpoint("c1.txt"), state=True).passed
    # Same key (a compromised signer, or the service fed a rewritten database), other tree.
    forked = SyntheticLog(tmp_path, honest.key)
    forked.append(500)
    report = run(forked, forked.checkpoint("fork.txt"), state=True)
    assert any(f.startswith("FORK") for f in report.failures)
    forked.append(100)
    grown = forked.checkpoint("fork2.txt")
    report = run(forked, grown, state=True, consistency=[forked.consistency("k.json", 500, 600)])
    assert any(f.startswith("INCONSISTENT") for f in report.failures)
    report = run(forked, grown, state=True, bundles=[forked.bundle("b.json", 400, 600)])
    assert any(f.startswith("INCONSISTENT") for f in report.failures)
    report = run(forked, grown, state=True)
    assert any(f.startswith("UNLINKED") for f in report.failures)
    state = msgspec.json.decode((tmp_path / "state.json").read_bytes())
    assert state["size"] == 500  # never advanced past a failure


def test_an_older_checkpoint_is_accepted_only_when_consistent(log: SyntheticLog) -> None:
    log.keys()
    old = log.checkpoint("old.txt", 600)
    assert run(log, log.checkpoint("c.txt"), state=True).passed
    report = run(log, old, state=True, consistency=[log.consistency("k.json", 600, 1000)])
    assert report.passed, report.failures
    state = msgspec.json.decode((log.dir / "state.json").read_bytes())
    assert state["size"] == 1000  # kept the newer one


def test_proofs_for_unverified_sizes_are_refused(log: SyntheticLog) -> None:
    log.keys()
    checkpoint = log.checkpoint("c.txt")
    report = run(
        log,
        checkpoint,
        bundles=[log.bundle("b.json", 0, 10, 900)],
        inclusions=[log.inclusion("i.json", 3, 900)],
    )
    assert len(report.failures) == 2
    assert all("not a verified checkpoint" in f or "not verified" in f for f in report.failures)


def test_wrong_inclusion_proofs(log: SyntheticLog) -> None:
    log.keys()
    checkpoint = log.checkpoint("c.txt")
    proof = msgspec.json.decode(log.inclusion("i.json", 3).read_bytes(), type=InclusionProofFile)
    proof.index = 4
    report = run(log, checkpoint, inclusions=[log.save("i.json", proof)])
    assert any("another index" in f for f in report.failures)
    proof.index = 3
    proof.proof = proof.proof[:-1]
    report = run(log, checkpoint, inclusions=[log.save("i.json", proof)])
    assert any(f.startswith("MISMATCH") for f in report.failures)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b'{"format": "something/else"}', b"\xff\xfe", b'{"format": 1}'],
)
def test_unreadable_inputs_exit_2(log: SyntheticLog, content: bytes, capsys) -> None:
    keys = log.keys()
    checkpoint = log.checkpoint("c.txt")
    bad = log.save("bad.json", content)
    assert (
        verify.main(["--keys", str(keys), "--checkpoint", str(checkpoint), "--bundle", str(bad)])
        == 2
    )
    assert "error:" in capsys.readouterr().err
    assert verify.main(["--keys", str(bad), "--checkpoint", str(checkpoint)]) == 2
    missing = log.dir / "missing.txt"
    assert verify.main(["--keys", str(keys), "--checkpoint", str(missing)]) == 2


# --- the entry format as published in schemas/ ----------------------------------------------
def test_entry_bodies_match_the_published_schema() -> None:
    import json

    import jsonschema

    from vault_service.audit.log import EntryBody

    schema_path = Path(__file__).resolve().parents[2] / "schemas" / "access_log_entry.schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert list(schema["x-member-order"]) == list(EntryBody.__struct_fields__)
    # Every member but `count`, which only version 2 bodies carry.
    assert set(schema["required"]) == set(EntryBody.__struct_fields__) - {"count"}
    validator = jsonschema.Draft202012Validator(schema)
    for event in (
        AccessEvent(action="record.read", outcome="allowed", actor_id=uuid.uuid4(),
                    role="counsellor", structure_id=uuid.uuid4(), record_ids=(uuid.uuid4(),),
                    fields=("birth_name", "addresses[].city"), purpose="follow_up",
                    purpose_detail="rendez-vous du 12/03", request_id="abcdefgh-1234",
                    token_jti=uuid.uuid4(), client_fingerprint="sha256:abcdef0123"),
        AccessEvent(action="record.search", outcome="refused", actor_id=None, role=None,
                    structure_id=None, refusal_code="budget_exceeded",
                    criteria=("birth_name", "birth_date")),
        AccessEvent(action="record.read", outcome="refused", actor_id=None, role=None,
                    structure_id=None, refusal_code="token_missing",
                    client_fingerprint="abcdef0123456789", count=4_000),
    ):  # fmt: skip
        body = json.loads(_prepare(event, 1_700_000_000_123_456).body)
        validator.validate(body)
        members = schema["x-member-order"]
        assert list(body) == (members if event.count > 1 else members[:-1])
        assert body["v"] == (2 if event.count > 1 else 1)
        assert body["at"] == "2023-11-14T22:13:20.123456Z"
    # A version 1 body with a count, or a version 2 body without one, is not valid.
    one = json.loads(_prepare(AccessEvent(action="record.read", outcome="refused",
                     actor_id=None, role=None, structure_id=None), 1).body)  # fmt: skip
    assert not validator.is_valid({**one, "count": 3})
    assert not validator.is_valid({**one, "v": 2})
    with pytest.raises(msgspec.ValidationError):
        canonical_body(json.dumps({**one, "count": 3}))


def test_parallel_and_serial_checks_agree(log: SyntheticLog) -> None:
    log.keys()
    assert run(log, log.checkpoint("c1.txt"), state=True).passed
    log.append(500)
    entry = log.entries[1234]
    log.entries[1234] = BundleEntry(
        index=1234,
        leaf=entry.leaf,
        salt=entry.salt,
        body=msgspec.Raw(bytes(entry.body).replace(b"record.read", b"record.open")),
    )
    checkpoint = log.checkpoint("c2.txt")
    bundles = [log.bundle(f"b{i}.json", i, min(i + 400, 1500)) for i in range(0, 1500, 400)]
    serial = run(log, checkpoint, state=True, bundles=bundles)
    parallel = verify.run(
        keys=log.dir / "keys.json",
        checkpoint=checkpoint,
        state=log.dir / "state.json",
        bundles=bundles,
        jobs=2,
    )
    assert serial.failures == parallel.failures
    assert serial.ok == parallel.ok
    assert any("TAMPERED: entry 1234" in f for f in parallel.failures)
    # The bundle [800, 1200) spans the saved size 1000 and links it.
    assert not any(f.startswith("UNLINKED") for f in parallel.failures)
