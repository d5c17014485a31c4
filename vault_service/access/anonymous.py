"""Refusals of requests that carried no verified actor, counted instead of logged one
by one.

A request with no token, a malformed one, or one whose signature or lifetime does not
verify names nobody: its entry could only say "someone, from this client, was refused
this action". One permanent Merkle entry per such request let anyone grow the log at
the rate they can send requests (14,152 anonymous requests in five seconds added
14,171 entries) and compete with the reads of counsellors for the log's writer.

So they are counted in memory, per (client fingerprint, action, refusal code), and
every `window` seconds each count becomes one entry (body version 2, with `count`).
At most `max_keys` distinct keys are kept per window; the rest of the window's
refusals are counted under the same action and code with no fingerprint. A window's
entries are made durable through the sequencer like any other refusal, off the
request path: a flood costs the counting of a dictionary, not a commit.

A crashed process loses at most one window of these counts; they name no one, return
nothing to anyone and change no state. Refusals of a token that verified (revoked,
suspended account, stale role) carry the actor and are logged one by one as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog

from vault_service.access.sequencer import Sequencer
from vault_service.audit.entry import AccessEvent
from vault_service.errors import VaultServiceError

__all__ = ["AnonymousRefusals"]

log = structlog.get_logger(__name__)
_Key = tuple[str | None, str, str]
_MAX_COUNT: Final = 1 << 40


class AnonymousRefusals:
    def __init__(self, sequencer: Sequencer, *, window: float, max_keys: int) -> None:
        self._sequencer = sequencer
        self._window = window
        self._max_keys = max_keys
        self._counts: dict[_Key, int] = {}
        self._flushing = 0
        self._task: asyncio.Task[None] | None = None

    def count(self, fingerprint: str, action: str, code: str) -> None:
        """Count one refusal; never waits, never fails the request."""
        counts = self._counts
        key: _Key = (fingerprint, action, code)
        if key not in counts and len(counts) >= self._max_keys:
            key = (None, action, code)  # past the cap: counted, not told apart
        counts[key] = min(counts.get(key, 0) + 1, _MAX_COUNT)

    @property
    def pending(self) -> int:
        """Refusals counted and not yet durable in the log."""
        return sum(self._counts.values()) + self._flushing

    async def flush(self) -> int:
        """Make the counts so far durable, one entry per key; returns the entries made.
        Counts whose entry could not be made are kept for the next window."""
        counts, self._counts = self._counts, {}
        if not counts:
            return 0
        events = [
            AccessEvent(
                action=action,
                outcome="refused",
                actor_id=None,
                role=None,
                structure_id=None,
                refusal_code=code,
                client_fingerprint=fingerprint,
                count=n,
            )
            for (fingerprint, action, code), n in counts.items()
        ]
        self._flushing += sum(counts.values())
        try:
            results = await asyncio.gather(
                *(self._sequencer.commit(e) for e in events), return_exceptions=True
            )
        finally:
            self._flushing -= sum(counts.values())
        made = 0
        for (key, n), result in zip(counts.items(), results, strict=True):
            if isinstance(result, BaseException):
                # Not lost: back into the next window, past the cap folded as `count`
                # folds them (a long log outage must not grow this without bound).
                back: _Key = key
                if back not in self._counts and len(self._counts) >= self._max_keys:
                    back = (None, key[1], key[2])
                self._counts[back] = min(self._counts.get(back, 0) + n, _MAX_COUNT)
                continue
            made += 1
        if made < len(events):
            log.error("anonymous_refusals_not_logged", entries=len(events) - made)
        return made

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._window)
            try:
                await self.flush()
            except VaultServiceError:
                log.error("anonymous_refusals_flush_failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="anonymous-refusals")

    async def stop(self) -> None:
        """Stop the timer and log what was counted (called before the sequencer stops)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
