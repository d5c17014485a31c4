"""Alerts reach a webhook receiver, signed as Standard Webhooks says, retried after a
failure, and never carrying a personal value."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time
import uuid
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import Stack, World, load_fixture
from vault_service.app import create_app

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    fail_once_for = ""  # the account whose first alert delivery is answered 503

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        body = self.rfile.read(int(self.headers["content-length"]))
        account = json.loads(body)["data"]["account_id"]
        if account and account == _Receiver.fail_once_for:
            _Receiver.fail_once_for = ""
            self.send_response(503)
        else:
            _Receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_alerts_are_delivered_signed_and_retried(
    stack: Stack, world: World, tmp_path: Path
) -> None:
    key = secrets.token_bytes(32)
    secret = tmp_path / "webhook.secret"
    secret.write_text("whsec_" + base64.b64encode(key).decode())
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    app = create_app(
        stack.settings(
            alert_webhook_url=url,
            alert_webhook_secret_file=str(secret),
            budget_counsellor_hour=1,
        )
    )
    try:
        async with AsyncTestClient(app, base_url="http://testserver.local") as api:
            c = await world.counsellor()
            _Receiver.fail_once_for = str(c.id)
            ids = [
                (await api.post("/v1/records", json=FULL, headers=c.headers())).json()["id"]
                for _ in range(2)
            ]
            assert (await api.get(f"/v1/records/{ids[0]}", headers=c.headers())).status_code == 200
            r = await api.get(f"/v1/records/{ids[1]}", headers=c.headers())
            assert r.status_code == 429  # the first refusal of the hour: an alert
            deadline = time.monotonic() + 15
            mine = []
            while time.monotonic() < deadline and not mine:
                await asyncio.sleep(0.2)
                mine = [
                    (h, b)
                    for h, b in _Receiver.received
                    if json.loads(b)["data"]["account_id"] == str(c.id)
                ]
            assert mine, "no delivery after a failed first attempt"
    finally:
        server.shutdown()
    headers, body = mine[0]
    # Verified exactly as a receiver would, with the Standard Webhooks recipe.
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    payload = json.loads(body)
    assert payload["type"] == "alert.raised"
    assert payload["data"]["kind"] == "budget.exceeded"
    assert headers["webhook-id"] == "msg_" + uuid.UUID(payload["data"]["id"]).hex
    for value in (FULL["birth_name"], FULL["nir"], FULL["email"]):
        assert value not in body.decode()
    attempts = await world.owner.fetchval(
        "SELECT attempts FROM alert_deliveries WHERE alert_id = $1",
        uuid.UUID(payload["data"]["id"]),
    )
    assert attempts == 2  # refused once by the receiver, then delivered
    with contextlib.suppress(Exception):
        server.server_close()


def test_a_webhook_needs_https_and_its_secret(stack: Stack) -> None:
    from vault_service.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        stack.settings(
            alert_webhook_url="http://alerts.example/hook", alert_webhook_secret_file="/x"
        )
    with pytest.raises(ConfigurationError):
        stack.settings(alert_webhook_url="https://alerts.example/hook")


async def test_a_receiver_that_answers_a_byte_at_a_time_is_cut_off(
    stack: Stack, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read within the socket time-out, the whole never ending: the attempt fails
    at the delivery deadline, is retried later, and no second POST piles up meanwhile."""
    import socket

    from vault_service.alerts import webhook

    monkeypatch.setattr(webhook, "POST_DEADLINE", 1.0)
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[float] = []
    stop = threading.Event()

    def drip() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            connections.append(time.monotonic())
            with conn:
                while not stop.is_set():
                    try:
                        conn.sendall(b"H")
                    except OSError:
                        break
                    time.sleep(0.3)

    threading.Thread(target=drip, daemon=True).start()
    secret = tmp_path / "webhook.secret"
    secret.write_text("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    app = create_app(
        stack.settings(
            alert_webhook_url=f"http://127.0.0.1:{listener.getsockname()[1]}/hook",
            alert_webhook_secret_file=str(secret),
            budget_counsellor_hour=1,
        )
    )
    try:
        async with AsyncTestClient(app, base_url="http://testserver.local") as api:
            c = await world.counsellor()
            ids = [
                (await api.post("/v1/records", json=FULL, headers=c.headers())).json()["id"]
                for _ in range(2)
            ]
            await api.get(f"/v1/records/{ids[0]}", headers=c.headers())
            assert (await api.get(f"/v1/records/{ids[1]}", headers=c.headers())).status_code == 429
            alert_id = await world.owner.fetchval(
                "SELECT id FROM alerts WHERE account_id = $1", c.id
            )
            attempts = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not attempts:
                await asyncio.sleep(0.2)
                attempts = await world.owner.fetchval(
                    "SELECT attempts FROM alert_deliveries WHERE alert_id = $1", alert_id
                )
            # Failed at the deadline and rescheduled, not delivered.
            assert attempts == 1
            state = await world.owner.fetchval(
                "SELECT state FROM alert_deliveries WHERE alert_id = $1", alert_id
            )
            assert state == "pending"
            # While that thread still hangs on the receiver, no other POST starts.
            await asyncio.sleep(2.5)
            assert len(connections) == 1
    finally:
        stop.set()
        listener.close()
