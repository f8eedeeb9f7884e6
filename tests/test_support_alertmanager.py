"""The Alertmanager test helper drives the real binary end to end.

A tiny stdlib HTTP server stands in for the bridge: it records every webhook
Alertmanager sends. The test fires two alerts of one group, waits for the
grouped firing notification, resolves both and waits for the resolved one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.alertmanager import Alertmanager, alertmanager_binary
from tests.support.procs import LOOPBACK, free_port

TOKEN = "test-token-123"
FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class Received:
    """One webhook request as the receiver saw it."""

    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Thread-safe record of the webhooks delivered to the in-test server."""

    url: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: list[Received] = field(default_factory=list)

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)


def _handler_for(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # name fixed by http.server
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with receiver.lock:
                receiver.received.append(Received(dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
            pass  # keep pytest output clean

    return Handler


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    port = free_port()
    receiver = WebhookReceiver(url=f"http://{LOOPBACK}:{port}/alertmanager")
    server = ThreadingHTTPServer((LOOPBACK, port), _handler_for(receiver))
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: WebhookReceiver) -> Iterator[Alertmanager]:
    if alertmanager_binary() is None:
        pytest.skip("Alertmanager binary (prometheus-alertmanager or alertmanager) not on PATH")
    am = Alertmanager(tmp_path / "am", webhook.url, bearer_token=TOKEN)
    try:
        am.start()
        yield am
    finally:
        am.stop()


def wait_for(what: str, find: Callable[[], Received | None], am: Alertmanager, timeout: float = 20.0) -> Received:
    """Poll ``find`` until it returns a webhook; fail with Alertmanager's log after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        time.sleep(0.1)
    pytest.fail(f"no webhook {what} within {timeout}s; Alertmanager log:\n{am.output()}")


def test_fire_and_resolve_reach_webhook(alertmanager: Alertmanager, webhook: WebhookReceiver) -> None:
    name = "BridgeHelperTest"
    first = alertmanager.fire({"alertname": name, "instance": "a:9100"}, {"summary": "a down"})
    second = alertmanager.fire({"alertname": name, "instance": "b:9100"}, {"summary": "b down"})
    instances = {"a:9100", "b:9100"}

    def firing() -> Received | None:
        for item in webhook.snapshot():
            alerts = item.body.get("alerts", [])
            if item.body.get("version") == "4" and {a["labels"]["instance"] for a in alerts} == instances:
                return item
        return None

    fired = wait_for("with both firing alerts", firing, alertmanager)
    assert fired.body["status"] == "firing"
    assert fired.body["receiver"] == "bridge"
    assert fired.body["groupLabels"] == {"alertname": name}
    assert fired.headers.get("Authorization") == f"Bearer {TOKEN}"
    for alert in fired.body["alerts"]:
        assert alert["status"] == "firing"
        assert FINGERPRINT.match(alert["fingerprint"]), alert["fingerprint"]
    fingerprints = {a["fingerprint"] for a in fired.body["alerts"]}
    assert len(fingerprints) == 2

    already_seen = len(webhook.snapshot())
    alertmanager.resolve(first)
    alertmanager.resolve(second)

    def resolved() -> Received | None:
        for item in webhook.snapshot()[already_seen:]:
            statuses = {a["fingerprint"]: a["status"] for a in item.body.get("alerts", [])}
            if all(statuses.get(fp) == "resolved" for fp in fingerprints):
                return item
        return None

    done = wait_for("with both alerts resolved", resolved, alertmanager)
    assert done.body["version"] == "4"
    assert done.body["status"] == "resolved"
    assert done.body["externalURL"] == alertmanager.url
    posted = {a["labels"]["instance"]: a for a in (first, second)}
    for alert in done.body["alerts"]:
        # startsAt is kept; Go trims trailing zeros of the fraction, so compare instants.
        want = posted[alert["labels"]["instance"]]
        assert _instant(alert["startsAt"]) == _instant(want["startsAt"])
        assert _instant(alert["endsAt"]) <= datetime.now(UTC)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
