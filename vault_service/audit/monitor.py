"""`vault-service audit monitor`: a process of its own, with its own state file and no
database access, that follows the log's checkpoints and alerts on a fork or a
rollback.

Every `--interval` seconds it fetches the latest checkpoint from the service (an
auditor token read from `--token-file` at each poll, so that whoever runs it can
renew the token), checks the log's signature against the pinned keys (the same
`keys.json` as `audit verify`), and compares it with the last checkpoint it saved:

- a smaller tree than the one seen: `audit.rollback`;
- the same size with another root, or a larger tree with no valid consistency proof
  from the one seen (`/v1/audit/proofs/consistency`): `audit.fork`;
- a signature that does not verify: `audit.bad_checkpoint`.

An alert is one JSON line on stderr (`"alert": true`, critical, sizes and the origin
only), and the saved state is not advanced past it: the fork stays visible on every
poll until someone looks. The state file is the verifier's (`audit verify --state`),
so an auditor can start from a monitor's state and the other way round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from vault_service.audit.merkle import MerkleError, verify_consistency
from vault_service.audit.note import NoteError, parse_checkpoint, verify_note
from vault_service.audit.verify import (
    CONSISTENCY_FORMAT,
    ConsistencyProofFile,
    InputError,
    load_keys,
    load_state,
    save_state,
)

__all__ = ["Finding", "check_once", "main"]

_MAX_ANSWER: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "ok", "first", "audit.rollback", "audit.fork", "audit.bad_checkpoint"
    seen_size: int | None = None
    saved_size: int | None = None

    @property
    def alert(self) -> bool:
        return self.kind.startswith("audit.")


def _get(url: str, token: str) -> bytes:
    request = urllib.request.Request(  # noqa: S310 - the operator's http(s) URL, scheme checked in main  # nosec B310
        url, headers={"Authorization": f"Bearer {token}", "X-Purpose": "audit"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - as above  # nosec B310
        return bytes(response.read(_MAX_ANSWER))


def check_once(base: str, token: str, keys: Path, state: Path) -> Finding:
    """One poll. Raises InputError (unreadable keys or state) or OSError (the service
    cannot be reached); both are the operator's to fix, not alerts."""
    verifiers = load_keys(keys)
    note = _get(f"{base}/v1/audit/checkpoint", token).decode("utf-8")
    try:
        current = parse_checkpoint(verify_note(note, verifiers))
    except NoteError:
        return Finding("audit.bad_checkpoint")
    if not state.exists():
        save_state(state, current, note)
        return Finding("first", current.size)
    saved = load_state(state, verifiers)
    if saved.origin != current.origin:
        raise InputError(f"{state}: the saved checkpoint is of another log")
    if current.size < saved.size:
        return Finding("audit.rollback", current.size, saved.size)
    if current.size == saved.size:
        if current.root != saved.root:
            return Finding("audit.fork", current.size, saved.size)
        return Finding("ok", current.size, saved.size)
    query = urllib.parse.urlencode({"from": saved.size, "to": current.size})
    raw = _get(f"{base}/v1/audit/proofs/consistency?{query}", token)
    try:
        proof = msgspec.json.decode(raw, type=ConsistencyProofFile)
        verify_consistency(saved.size, current.size, saved.root, current.root, proof.proof)
    except (msgspec.ValidationError, msgspec.DecodeError, MerkleError):
        return Finding("audit.fork", current.size, saved.size)
    if proof.format != CONSISTENCY_FORMAT:
        return Finding("audit.fork", current.size, saved.size)
    save_state(state, current, note)
    return Finding("ok", current.size, saved.size)


def _report(finding: Finding, origin_hint: str) -> None:
    line = {"event": finding.kind, "seen_size": finding.seen_size, "saved_size": finding.saved_size}
    if finding.alert:
        line |= {"alert": True, "severity": "critical", "log": origin_hint}
    print(json.dumps(line), file=sys.stderr, flush=True)


def build_parser(prog: str = "vault-service audit monitor") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Follow the log; alert on a fork.")
    parser.add_argument("--url", required=True, help="the service's base URL")
    parser.add_argument("--keys", type=Path, required=True, help="pinned verifier keys")
    parser.add_argument("--state", type=Path, required=True, help="last checkpoint seen")
    parser.add_argument("--token-file", type=Path, required=True, help="an auditor token")
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--once", action="store_true", help="one poll; exit 1 on an alert")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = args.url.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("https", "http"):
        # urllib also opens file: and ftp: URLs; a monitor only ever speaks HTTP(S).
        print("error: --url must be an http(s) URL", file=sys.stderr)
        return 2
    while True:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
            finding = check_once(base, token, args.keys, args.state)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (OSError, urllib.error.URLError) as exc:
            # Unreachable is not a fork: say so, and try again.
            print(
                json.dumps({"event": "unreachable", "error": type(exc).__name__}), file=sys.stderr
            )
            if args.once:
                return 2
            time.sleep(args.interval)
            continue
        _report(finding, base)
        if args.once:
            return 1 if finding.alert else 0
        time.sleep(args.interval)
