"""Where a read's CPU goes: py-spy raw samples of the service, split into a few layers.

    python -m bench.profile_split bench/results/profile.txt

Each sample (one stack) is counted once, in the layer of its deepest frame that belongs
to one of these (reading from the leaf up), so the shares add up to 100%. Every thread
of the worker process counts (granian's own threads, which have no Python frame, go to
the server); samples idle in the selector or waiting on a condition are left out:

- access log and budgets: `vault_service/audit/` or `vault_service/access/`
- record read: `vault_service/records/` or `vault_service/crypto/`
- authentication: `vault_service/auth/`
- framework: Litestar, msgspec encoders called by it, our telemetry/gate layer
- server and event loop: everything else (granian, asyncio, asyncpg's protocol callbacks)
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("access log and budgets", ("vault_service/audit/", "vault_service/access/")),
    ("record read (query, decryption)", ("vault_service/records/", "vault_service/crypto/")),
    ("authentication", ("vault_service/auth/",)),
    ("framework (routing, middleware, responses)", ("litestar/", "vault_service/")),
)
# Our ASGI layers wrap every request: they are framework cost, whichever package holds them.
FRAMEWORK_FRAMES = ("RefusalRecorder", "TelemetryMiddleware", "BearerAuthMiddleware", "RequestGate")
OTHER = "server and event loop"
_IDLE = ("selectors.py", "Condition.wait", "futures/thread.py", "queue.py")


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        if any(f in frame for f in FRAMEWORK_FRAMES):
            return LAYERS[-1][0]
        for name, needles in LAYERS:
            if any(n in frame for n in needles):
                return name
    return OTHER


def split(lines: list[str]) -> Counter[str]:
    shares: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        # Only the worker process that serves requests (granian's child: the second
        # frame names it), with its native threads; idle waits are not work.
        if len(frames) < 2 or not frames[1].startswith("process "):
            continue
        if any(idle in frames[-1] for idle in _IDLE):
            continue
        shares[_layer(frames)] += int(count)
    return shares


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/profile.txt")
    shares = split(path.read_text().splitlines())
    total = sum(shares.values()) or 1
    for name, _ in (*LAYERS, (OTHER, ())):
        print(f"{name:45}{100 * shares[name] / total:6.1f}%")
    print(f"{'samples':45}{total:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
