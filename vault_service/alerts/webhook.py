"""Alerts POSTed to a webhook, signed as the Standard Webhooks specification says.

One leader among the replicas (leadership.py) sends every alert that committed
and is not yet delivered, oldest first, with retries and exponential back-off; nothing
here runs on a request. Headers `webhook-id` (the alert id), `webhook-timestamp` (Unix
seconds) and `webhook-signature` (`v1,` and the base64 HMAC-SHA256, under the decoded
`whsec_` secret, of `id.timestamp.body`). The body holds ids, codes and counts only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Final

import asyncpg
import msgspec
import structlog

from vault_service.errors import ConfigurationError
from vault_service.leadership import LeaderLoop, Leadership
from vault_service.outbound import DIRECT_OPENER

__all__ = ["WebhookSender", "load_secret", "sign"]

log = structlog.get_logger(__name__)
alerts_log = structlog.get_logger("vault_service.alerts")
WEBHOOK_LOCK_ID: Final = 0x7661756C74_05
MAX_ATTEMPTS: Final = 8
POST_DEADLINE = 10.0
"""Seconds one delivery may take in all. The socket time-out bounds each read, not a
receiver that answers a byte at a time: past this, the attempt counts as failed and
no other POST starts while that one's thread still hangs."""
_encoder = msgspec.json.Encoder()

DUE: Final = """
SELECT a.id, a.raised_at, a.severity, a.kind, a.account_id, a.structure_id,
       a.details::text AS details, coalesce(d.attempts, 0) AS attempts
FROM alerts a
LEFT JOIN alert_deliveries d ON d.alert_id = a.id
WHERE d.alert_id IS NULL OR (d.state = 'pending' AND d.next_attempt_at <= now())
ORDER BY a.raised_at, a.id
LIMIT $1
"""
RECORD: Final = """
INSERT INTO alert_deliveries (alert_id, attempts, next_attempt_at, delivered_at, state)
VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5)
ON CONFLICT (alert_id) DO UPDATE SET attempts = EXCLUDED.attempts,
    next_attempt_at = EXCLUDED.next_attempt_at, delivered_at = EXCLUDED.delivered_at,
    state = EXCLUDED.state
"""


def load_secret(path: str) -> bytes:
    """The key of a `whsec_<base64>` secret kept in a file (never in the environment)."""
    try:
        text = open(path, encoding="ascii").read().strip()  # noqa: SIM115 - one read
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except (OSError, ValueError):
        raise ConfigurationError("the webhook secret file is unreadable or malformed") from None
    if len(key) < 24:
        raise ConfigurationError("the webhook secret is shorter than 24 bytes")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookSender:
    def __init__(self, pool: asyncpg.Pool, url: str, key: bytes, *, interval: float = 1.0) -> None:
        self._pool = pool
        self._url = url
        self._key = key
        self._hung: asyncio.Future[bool] | None = None
        self._lead = Leadership(pool, WEBHOOK_LOCK_ID, "webhook_leader_elected")
        self._loop = LeaderLoop(
            self._lead,
            self.deliver_due,
            interval=interval,
            name="alert-webhook",
            failed_event="webhook_round_failed",
        )

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self._lead.resign()

    async def deliver_due(self) -> int:
        """Send what is due; returns how many were delivered."""
        conn = self._lead.connection
        if conn is None or (self._hung is not None and not self._hung.done()):
            return 0
        delivered = 0
        for alert in await conn.fetch(DUE, 50):
            attempts = int(alert["attempts"]) + 1
            ok = await self._post_within_deadline(_payload(alert))
            if ok:
                await conn.execute(RECORD, alert["id"], attempts, 0.0, _now(), "delivered")
                delivered += 1
                continue
            # Never given up (a critical alert must arrive, however late): the wait
            # grows to an hour, and the operator hears of a delivery that keeps failing.
            backoff = float(min(2 ** min(attempts - 1, 12), 3600))
            await conn.execute(RECORD, alert["id"], attempts, backoff, None, "pending")
            if attempts == MAX_ATTEMPTS:
                alerts_log.error("webhook_delivery_failing", alert=True, alert_id=str(alert["id"]))
        return delivered

    async def _post_within_deadline(self, payload: tuple[str, bytes]) -> bool:
        """POST on a daemon thread of its own (not the loop's executor, which a hung
        receiver would keep the process from shutting down on)."""
        loop = asyncio.get_running_loop()
        posting: asyncio.Future[bool] = loop.create_future()

        def run() -> None:
            ok = self._post(payload)
            with contextlib.suppress(RuntimeError):  # the loop may be gone by then
                loop.call_soon_threadsafe(_settle, posting, ok)

        threading.Thread(target=run, name="alert-webhook-post", daemon=True).start()
        try:
            return await asyncio.wait_for(asyncio.shield(posting), POST_DEADLINE)
        except TimeoutError:
            self._hung = posting
            log.warning("webhook_post_failed", error_type="DeadlineExceeded")
            return False

    def _post(self, payload: tuple[str, bytes]) -> bool:
        message_id, body = payload
        timestamp = int(time.time())
        request = urllib.request.Request(  # noqa: S310 - the URL is checked in settings  # nosec B310
            self._url,
            data=body,
            method="POST",
            headers={
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self._key, message_id, timestamp, body),
            },
        )
        try:
            with DIRECT_OPENER.open(request, timeout=5) as response:
                return bool(200 <= response.status < 300)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            log.warning("webhook_post_failed", error_type=type(exc).__name__)
            return False


def _payload(alert: asyncpg.Record) -> tuple[str, bytes]:
    data: dict[str, Any] = {
        "id": str(alert["id"]),
        "kind": alert["kind"],
        "severity": alert["severity"],
        "account_id": str(alert["account_id"]) if alert["account_id"] else None,
        "structure_id": str(alert["structure_id"]) if alert["structure_id"] else None,
        "details": msgspec.Raw(alert["details"].encode()),
        "raised_at": alert["raised_at"],
    }
    body = _encoder.encode({"type": "alert.raised", "data": data})
    return f"msg_{uuid.UUID(str(alert['id'])).hex}", body


def _settle(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
