"""Offline verifier of the access log: `vault-service audit verify`.

Works from files an auditor downloaded from the auditor API, with no database and no
service, and trusts nothing in them but signatures by pinned keys:

    vault-service audit verify --keys keys.json --checkpoint checkpoint.txt \\
        [--state state.json] [--consistency c.json ...] [--bundle b.json ...] \\
        [--inclusion i.json ...]

1. the checkpoint's signature is checked against the pinned verifier keys
   (`GET /v1/audit/keys`, or a text file of `name+id+key` lines);
2. with `--state`, the checkpoint verified last time must be consistent with the new
   one: equal roots at equal sizes, else a consistency proof (`--consistency`, from
   `GET /v1/audit/proofs/consistency`) or a bundle that spans the old size. On success
   the state file is advanced to the new checkpoint;
3. each bundle (`GET /v1/audit/bundles`) is rebuilt: every body must hash to what its
   leaf commits to, leaves must be numbered consecutively, and the frontier + leaves
   + consistency path must give the signed root: nothing added, removed or changed;
4. each inclusion proof (`GET /v1/audit/proofs/inclusion`) must lead its entry to the
   signed root.

Exit status: 0 when everything verifies, 1 when something does not (each failure is
printed), 2 when an input cannot be read. File formats: schemas/checkpoint.md.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from vault_service.audit.entry import LEAF_SIZE, canonical_body
from vault_service.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleError,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from vault_service.audit.note import (
    Checkpoint,
    NoteError,
    NoteVerifier,
    parse_checkpoint,
    parse_verifier_key,
    verifier_map,
    verify_note,
)
from vault_service.audit.witness import parse_cosigner_key, valid_cosigners
from vault_service.errors import ConfigurationError

__all__ = [
    "BUNDLE_FORMAT",
    "CONSISTENCY_FORMAT",
    "INCLUSION_FORMAT",
    "KEYS_FORMAT",
    "MAX_BUNDLE_ENTRIES",
    "STATE_FORMAT",
    "Bundle",
    "BundleEntry",
    "BundleOutcome",
    "CompactRange",
    "ConsistencyProofFile",
    "InclusionProofFile",
    "KeysFile",
    "Report",
    "VerifierState",
    "check_bundle",
    "frontier_positions",
    "load_state",
    "main",
    "run",
    "save_state",
]

BUNDLE_FORMAT: Final = "vault-service/audit-bundle/v1"
INCLUSION_FORMAT: Final = "vault-service/audit-inclusion/v1"
CONSISTENCY_FORMAT: Final = "vault-service/audit-consistency/v1"
REPORT_PROOFS_FORMAT: Final = "vault-service/audit-report-proofs/v1"
KEYS_FORMAT: Final = "vault-service/audit-keys/v1"
STATE_FORMAT: Final = "vault-service/audit-verifier-state/v1"
MAX_BUNDLE_ENTRIES: Final = 10_000
_MAX_FILE_BYTES: Final = 256 * 1024 * 1024
_MAX_REPORTED: Final = 20  # per bundle: enough to locate tampering, not a flood
_NULL: Final = b"null"
_sha256 = hashlib.sha256
_T = TypeVar("_T")
_LEAF_HEAD = struct.Struct(">BQ")  # version 1, index: the first 9 bytes of a leaf


# --- file formats (the auditor API serves exactly these) ---------------------------------
class _File(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class BundleEntry(_File):
    index: int
    leaf: bytes
    # Both null once the body was pruned by retention; the leaf stays.
    salt: bytes | None = None
    body: msgspec.Raw = msgspec.Raw(_NULL)


class Bundle(_File):
    """Entries [start, end) of the tree of `tree_size` leaves, with what is needed to
    rebuild that tree's root from them: `frontier`, the complete subtrees covering
    [0, start) (largest first), and `consistency`, an RFC 9162 consistency proof from
    `end` to `tree_size` (empty when they are equal)."""

    format: str
    origin: str
    tree_size: int
    start: int
    end: int
    frontier: list[bytes]
    consistency: list[bytes]
    entries: list[BundleEntry]


class InclusionProofFile(_File):
    format: str
    origin: str
    index: int
    tree_size: int
    leaf: bytes
    proof: list[bytes]
    salt: bytes | None = None
    body: msgspec.Raw = msgspec.Raw(_NULL)


class ReportProofsFile(_File):
    """A report's entries with their inclusion proofs (`/reports/breach-impact/proofs`)."""

    format: str
    origin: str
    actor_id: str
    since: str
    until: str
    checkpoint: str
    tree_size: int
    entries: list[InclusionProofFile]


class ConsistencyProofFile(_File):
    format: str
    origin: str
    first: int = msgspec.field(name="from")
    second: int = msgspec.field(name="to")
    proof: list[bytes]


class KeysFile(_File):
    format: str
    origin: str
    latest_version: int
    keys: list[str]


class VerifierState(_File):
    """What the verifier remembers between runs: the last checkpoint it verified."""

    format: str
    origin: str
    size: int
    root: bytes
    checkpoint: str


# --- rebuilding roots from a frontier and leaves -------------------------------------------
def frontier_positions(size: int) -> list[tuple[int, int]]:
    """(level, index) of the maximal complete subtrees covering leaves [0, size),
    largest first: one per 1 bit of `size` (RFC 9162 trees split at powers of two)."""
    nodes = []
    position = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if (size >> level) & 1:
            nodes.append((level, position >> level))
            position += 1 << level
    return nodes


class CompactRange:
    """The frontier of a tree of `size` leaves, to which leaves can be appended and
    from which the root is folded; what an append-only log's verifier keeps."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        levels = [level for level, _ in frontier_positions(size)]
        if len(hashes) != len(levels):
            raise MerkleError("the frontier has the wrong number of hashes")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise MerkleError("a frontier hash is not 32 bytes")
        self.size = size
        self._stack: list[tuple[int, bytes]] = list(zip(levels, hashes, strict=True))

    def _push(self, level: int, digest: bytes) -> None:
        stack = self._stack
        while stack and stack[-1][0] == level:
            digest = node_hash(stack.pop()[1], digest)
            level += 1
        stack.append((level, digest))

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append leaves, hashing each aligned power-of-two run at once (the fast,
        list-based `root_from_leaf_hashes`), so the per-leaf cost is one hash."""
        position, count = 0, len(leaf_hashes)
        while position < count:
            size = self.size
            aligned = (size & -size).bit_length() - 1 if size else 64
            level = min(aligned, (count - position).bit_length() - 1)
            width = 1 << level
            chunk = leaf_hashes[position : position + width]
            self._push(level, chunk[0] if width == 1 else root_from_leaf_hashes(chunk))
            self.size += width
            position += width

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        result = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            result = node_hash(left, result)
        return result


# --- the verifier ---------------------------------------------------------------------------
class InputError(Exception):
    """A file could not be read or parsed: exit status 2, not a verification failure."""


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None

    def fail(self, message: str) -> None:
        self.failures.append(message)

    @property
    def passed(self) -> bool:
        return not self.failures and self.checkpoint is not None


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise InputError(f"{path}: file too large")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def _decode(path: Path, kind: type[_T], expected_format: str) -> _T:
    try:
        value = msgspec.json.decode(_read(path), type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InputError(f"{path}: not a valid {expected_format} file ({exc})") from None
    if getattr(value, "format", None) != expected_format:
        raise InputError(f"{path}: not a {expected_format} file")
    return value


def load_keys(path: Path) -> dict[tuple[str, int], NoteVerifier]:
    raw = _read(path)
    try:
        if raw.lstrip().startswith(b"{"):
            lines = _decode(path, KeysFile, KEYS_FORMAT).keys
        else:
            text = raw.decode("utf-8")
            lines = [line.strip() for line in text.splitlines()]
            lines = [line for line in lines if line and not line.startswith("#")]
        verifiers = [parse_verifier_key(line) for line in lines]
        if not verifiers:
            raise InputError(f"{path}: no verifier key")
        return verifier_map(*verifiers)
    except (NoteError, ConfigurationError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid verifier key ({exc})") from None


def _body_matches(salt: bytes | None, body: msgspec.Raw, committed: bytes) -> bool | None:
    """True if the body hashes to `committed`, None if it was pruned (no salt, no body),
    False otherwise. The bytes as served are tried first (the API serves canonical
    bytes); a reformatted file is canonicalised and tried again."""
    raw = bytes(body)
    if salt is None:
        return None if raw == _NULL else False
    if raw == _NULL or len(salt) != 32:
        return False
    digest = _sha256(salt)
    digest.update(raw)
    if hmac.compare_digest(digest.digest(), committed):
        return True
    try:
        canonical = canonical_body(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False
    return canonical != raw and hmac.compare_digest(_sha256(salt + canonical).digest(), committed)


@dataclass
class BundleOutcome:
    """What checking one bundle found; merged into the report by the caller (possibly
    in another process, hence plain data)."""

    ok: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    links_previous: bool = False


def check_bundle(
    name: str,
    bundle: Bundle,
    origin: str,
    roots: dict[int, bytes],
    previous: tuple[int, bytes] | None,
) -> BundleOutcome:
    """Check one bundle against the verified roots (`roots`: size -> root) and, if it
    spans it, against the previously verified tree (`previous`)."""
    outcome = BundleOutcome()
    fail = outcome.failures.append
    if bundle.origin != origin:
        fail(f"{name}: bundle of another log ({bundle.origin})")
        return outcome
    tree_root = roots.get(bundle.tree_size)
    if tree_root is None:
        fail(f"{name}: bundle for tree size {bundle.tree_size}, not a verified checkpoint")
        return outcome
    start, end, entries = bundle.start, bundle.end, bundle.entries
    if not 0 <= start <= end <= bundle.tree_size or end - start != len(entries):
        fail(f"{name}: bundle range [{start}, {end}) is malformed")
        return outcome
    try:
        compact = CompactRange(start, bundle.frontier)
    except MerkleError:
        fail(f"{name}: bundle frontier is malformed")
        return outcome

    hashes, problems, pruned = _check_entries(name, start, entries, fail)

    # The root at the previously verified size, if this bundle spans it: a rewrite of
    # history before that size shows up here even without a consistency proof.
    if previous is not None and start < previous[0] <= end:
        split = previous[0] - start
        compact.extend(hashes[:split])
        hashes = hashes[split:]
        if hmac.compare_digest(compact.root(), previous[1]):
            outcome.links_previous = True
        else:
            fail(
                f"INCONSISTENT: {name}: entries up to {previous[0]} no longer give the root "
                "of the checkpoint verified earlier: history was rewritten"
            )
    compact.extend(hashes)
    if not _rebuilds(compact.root(), end, bundle.tree_size, tree_root, bundle.consistency):
        fail(
            f"MISMATCH: {name}: entries [{start}, {end}) do not rebuild the signed root "
            f"of tree size {bundle.tree_size}: entries were changed, removed or added"
        )
        return outcome
    if problems == 0:
        outcome.ok.append(
            f"bundle [{start}, {end}) of tree {bundle.tree_size}: {len(entries)} entries "
            f"verified ({pruned} with pruned bodies)"
        )
    return outcome


def _check_entries(
    name: str, start: int, entries: Sequence[BundleEntry], fail: Callable[[str], None]
) -> tuple[list[bytes], int, int]:
    """Check each entry against its leaf; returns the leaf hashes (of every entry, good
    or bad, so that the root check still runs), problems and pruned bodies. This is
    the verifier's hot loop: keep it flat."""
    hashes: list[bytes] = []
    append = hashes.append
    problems = 0
    pruned = 0
    sha = _sha256
    head = _LEAF_HEAD.pack
    for expected, entry in enumerate(entries, start):
        leaf = entry.leaf
        salt = entry.salt
        append(sha(b"\x00" + leaf).digest())
        # The common case first, without a call: a version 1 leaf numbered as expected,
        # whose salted body hashes to what it commits to. (Plain ==: every value here
        # is public, there is no secret to time.)
        if (
            salt is not None
            and entry.index == expected
            and len(leaf) == LEAF_SIZE
            and leaf[:9] == head(1, expected)
        ):
            digest = sha(salt)
            digest.update(entry.body)
            if digest.digest() == leaf[17:]:
                continue
        problem = None
        if entry.index != expected:
            problem = f"entry {expected}: numbered {entry.index}"
        elif len(leaf) != LEAF_SIZE or leaf[0] != 1:
            problem = f"entry {expected}: leaf is not a version 1 leaf"
        elif int.from_bytes(leaf[1:9], "big") != expected:
            problem = f"entry {expected}: leaf carries another index"
        else:
            matched = _body_matches(salt, entry.body, leaf[17:])
            if matched is None:
                pruned += 1
            elif not matched:
                problem = (
                    f"TAMPERED: entry {expected}: body does not match the hash its leaf commits to"
                )
        if problem is not None:
            problems += 1
            if problems <= _MAX_REPORTED:
                fail(f"{name}: {problem}")
    if problems > _MAX_REPORTED:
        fail(f"{name}: {problems - _MAX_REPORTED} more entries failed")
    return hashes, problems, pruned


def _check_bundle_file(
    path: Path, origin: str, roots: dict[int, bytes], previous: tuple[int, bytes] | None
) -> BundleOutcome | str:
    """check_bundle on a file, for a worker process: an unreadable input comes back as
    its message (exceptions do not travel well between processes)."""
    try:
        bundle = _decode(path, Bundle, BUNDLE_FORMAT)
    except InputError as exc:
        return str(exc)
    return check_bundle(str(path), bundle, origin, roots, previous)


class _Verifier:
    def __init__(self, report: Report, checkpoint: Checkpoint) -> None:
        self.report = report
        self.checkpoint = checkpoint
        self.roots: dict[int, bytes] = {checkpoint.size: checkpoint.root}
        self.previous: tuple[int, bytes] | None = None
        self.linked = True

    def set_previous(self, size: int, root: bytes) -> None:
        """The checkpoint verified last time; the new one must extend it."""
        current = self.checkpoint
        self.previous = (size, root)
        if size == current.size:
            if not hmac.compare_digest(root, current.root):
                self.report.fail(
                    f"FORK: the checkpoint of size {size} has another root than the one "
                    "verified earlier at the same size: the log was rewritten"
                )
            return
        self.roots[size] = root
        self.linked = False

    def consistency(self, name: str, proof: ConsistencyProofFile) -> None:
        if proof.origin != self.checkpoint.origin:
            self.report.fail(f"{name}: consistency proof of another log ({proof.origin})")
            return
        first, second = self.roots.get(proof.first), self.roots.get(proof.second)
        if first is None or second is None:
            self.report.fail(
                f"{name}: consistency proof {proof.first} -> {proof.second} does not link "
                "checkpoints known to this run"
            )
            return
        try:
            verify_consistency(proof.first, proof.second, first, second, proof.proof)
        except MerkleError:
            self.report.fail(
                f"INCONSISTENT: {name}: the tree of size {proof.second} does not extend the "
                f"tree of size {proof.first}: history was rewritten"
            )
            return
        self._mark_linked(proof.first, proof.second)
        self.report.ok.append(f"consistent: {proof.first} -> {proof.second}")

    def _mark_linked(self, first: int, second: int) -> None:
        if self.previous is not None and {first, second} == {
            self.previous[0],
            self.checkpoint.size,
        }:
            self.linked = True

    def bundle(self, name: str, bundle: Bundle) -> None:
        self.merge(check_bundle(name, bundle, self.checkpoint.origin, self.roots, self.previous))

    def merge(self, outcome: BundleOutcome) -> None:
        self.report.ok.extend(outcome.ok)
        self.report.failures.extend(outcome.failures)
        if outcome.links_previous and self.previous is not None:
            self._mark_linked(self.previous[0], self.checkpoint.size)

    def inclusion(self, name: str, proof: InclusionProofFile) -> None:
        fail = self.report.fail
        if proof.origin != self.checkpoint.origin:
            fail(f"{name}: inclusion proof of another log ({proof.origin})")
            return
        tree_root = self.roots.get(proof.tree_size)
        if tree_root is None:
            fail(f"{name}: inclusion proof for tree size {proof.tree_size}, not verified")
            return
        leaf = proof.leaf
        if len(leaf) != LEAF_SIZE or leaf[0] != 1:
            fail(f"{name}: leaf is not a version 1 leaf")
            return
        if int.from_bytes(leaf[1:9], "big") != proof.index:
            fail(f"{name}: leaf carries another index than {proof.index}")
            return
        if _body_matches(proof.salt, proof.body, leaf[17:]) is False:
            fail(f"TAMPERED: {name}: entry {proof.index}: body does not match its leaf")
            return
        try:
            verify_inclusion(
                _sha256(b"\x00" + leaf).digest(),
                proof.index,
                proof.tree_size,
                proof.proof,
                tree_root,
            )
        except MerkleError:
            fail(f"MISMATCH: {name}: entry {proof.index} is not in the signed tree")
            return
        self.report.ok.append(f"entry {proof.index} included in tree {proof.tree_size}")


def _rebuilds(
    rebuilt: bytes, end: int, tree_size: int, tree_root: bytes, path: Sequence[bytes]
) -> bool:
    """Whether the root rebuilt at `end` is the signed root of `tree_size`, directly or
    through the consistency path."""
    if end == tree_size:
        return not path and hmac.compare_digest(rebuilt, tree_root)
    try:
        verify_consistency(end, tree_size, rebuilt, tree_root, path)
    except MerkleError:
        return False
    return True


def load_state(path: Path, verifiers: dict[tuple[str, int], NoteVerifier]) -> VerifierState:
    state = _decode(path, VerifierState, STATE_FORMAT)
    # The state file is ours, but re-checking its signature costs nothing and catches a
    # state file edited by hand.
    try:
        checkpoint = parse_checkpoint(verify_note(state.checkpoint, verifiers))
    except NoteError as exc:
        raise InputError(f"{path}: the saved checkpoint does not verify ({exc})") from None
    if (checkpoint.size, checkpoint.root, checkpoint.origin) != (
        state.size,
        state.root,
        state.origin,
    ):
        raise InputError(f"{path}: the state does not match its saved checkpoint")
    return state


def save_state(path: Path, checkpoint: Checkpoint, note: str) -> None:
    state = VerifierState(
        format=STATE_FORMAT,
        origin=checkpoint.origin,
        size=checkpoint.size,
        root=checkpoint.root,
        checkpoint=note,
    )
    data = msgspec.json.format(msgspec.json.encode(state), indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic replace: a crash mid-write must not leave a state that fails to load.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(
    *,
    keys: Path,
    checkpoint: Path,
    state: Path | None = None,
    consistency: Sequence[Path] = (),
    bundles: Sequence[Path] = (),
    inclusions: Sequence[Path] = (),
    jobs: int = 1,
    report_proofs: Sequence[Path] = (),
    witness_keys: Sequence[str] = (),
    min_witnesses: int = 0,
) -> Report:
    """Verify; raises InputError for unreadable inputs. Updates `state` only when every
    check passed and the new checkpoint is not older than the saved one. `jobs` > 1
    checks bundles in that many processes (each bundle stands on its own)."""
    report = Report()
    verifiers = load_keys(keys)
    try:
        note = _read(checkpoint).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{checkpoint}: not UTF-8 text") from None
    try:
        current = parse_checkpoint(verify_note(note, verifiers))
    except NoteError as exc:
        report.fail(f"BAD SIGNATURE: {checkpoint}: the checkpoint does not verify ({exc})")
        return report
    report.checkpoint = current
    report.ok.append(f"checkpoint {current.origin} size {current.size}: signature verified")
    if witness_keys or min_witnesses:
        try:
            witnesses = [parse_cosigner_key(k) for k in witness_keys]
        except NoteError as exc:
            raise InputError(f"--witness-key: {exc}") from None
        try:
            cosigned = valid_cosigners(note, witnesses)
        except NoteError as exc:
            report.fail(f"BAD COSIGNATURE: {checkpoint}: {exc}")
            return report
        if len(cosigned) < min_witnesses:
            report.fail(
                f"UNWITNESSED: {checkpoint}: {len(cosigned)} of the required {min_witnesses} "
                "witnesses cosigned it"
            )
            return report
        report.ok.append(f"cosigned by {len(cosigned)} witness(es): {', '.join(sorted(cosigned))}")
    verifier = _Verifier(report, current)

    saved: VerifierState | None = None
    if state is not None and state.exists():
        saved = load_state(state, verifiers)
        if saved.origin != current.origin:
            report.fail(f"{state}: the saved checkpoint is of another log ({saved.origin})")
            return report
        verifier.set_previous(saved.size, saved.root)

    for path in consistency:
        verifier.consistency(str(path), _decode(path, ConsistencyProofFile, CONSISTENCY_FORMAT))
    if jobs > 1 and len(bundles) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(bundles))) as pool:
            outcomes = pool.map(
                _check_bundle_file,
                bundles,
                repeat(current.origin),
                repeat(verifier.roots),
                repeat(verifier.previous),
            )
            for outcome in outcomes:
                if isinstance(outcome, str):
                    raise InputError(outcome)
                verifier.merge(outcome)
    else:
        for path in bundles:
            verifier.bundle(str(path), _decode(path, Bundle, BUNDLE_FORMAT))
    for path in inclusions:
        verifier.inclusion(str(path), _decode(path, InclusionProofFile, INCLUSION_FORMAT))
    for path in report_proofs:
        report_file = _decode(path, ReportProofsFile, REPORT_PROOFS_FORMAT)
        for entry in report_file.entries:
            verifier.inclusion(f"{path}#{entry.index}", entry)
        report.ok.append(f"{path}: {len(report_file.entries)} report entries checked")

    if not verifier.linked and saved is not None:
        report.fail(
            f"UNLINKED: nothing proves that the checkpoint of size {current.size} extends the "
            f"one verified earlier (size {saved.size}); pass --consistency from "
            f"/v1/audit/proofs/consistency?from={min(saved.size, current.size)}"
            f"&to={max(saved.size, current.size)}"
        )
    if report.passed and state is not None and (saved is None or current.size >= saved.size):
        save_state(state, current, note)
        report.ok.append(f"state saved: {state} at size {current.size}")
    return report


def build_parser(prog: str = "vault-service audit verify") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Verify the access log offline from downloaded files."
    )
    parser.add_argument("--keys", type=Path, required=True, help="pinned verifier keys")
    parser.add_argument("--checkpoint", type=Path, required=True, help="signed checkpoint")
    parser.add_argument("--state", type=Path, help="last verified checkpoint (read, advanced)")
    parser.add_argument("--consistency", type=Path, action="append", default=[])
    parser.add_argument("--bundle", type=Path, action="append", default=[])
    parser.add_argument("--inclusion", type=Path, action="append", default=[])
    parser.add_argument(
        "--report-proofs",
        type=Path,
        action="append",
        default=[],
        help="a report's inclusion proofs (/v1/audit/reports/breach-impact/proofs)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes checking bundles in parallel (default: one per CPU)",
    )
    parser.add_argument(
        "--witness-key",
        action="append",
        default=[],
        help="a witness's verifier key (repeat for each witness trusted)",
    )
    parser.add_argument(
        "--min-witnesses",
        type=int,
        default=None,
        help="cosignatures required from those witnesses (default: 1 when keys are given)",
    )
    parser.add_argument("--quiet", action="store_true", help="print failures only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(
            keys=args.keys,
            checkpoint=args.checkpoint,
            state=args.state,
            consistency=args.consistency,
            bundles=args.bundle,
            inclusions=args.inclusion,
            report_proofs=args.report_proofs,
            jobs=max(1, args.jobs),
            witness_keys=args.witness_key,
            min_witnesses=(
                args.min_witnesses
                if args.min_witnesses is not None
                else (1 if args.witness_key else 0)
            ),
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for line in report.ok:
            print(f"ok: {line}")
    for line in report.failures:
        print(f"FAILED: {line}", file=sys.stderr)
    if report.passed:
        print("verified")
        return 0
    print(f"verification failed: {len(report.failures)} problem(s)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
