"""``flashduty-bridge trail ALERT_KEY``: what happened to an alert, from the real bridge and from its stopped outbox.

One key goes through three endings against the real bridge and ``emulate``: delivered, suppressed as a repeat,
dead-lettered (the emulator answers a wrong-key error). The command tells all three, with Flashduty's request
ids, over the admin API (``--url``) and, once the bridge is stopped, from its outbox (``--config``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bridge import timeline
from tests.conftest import ADMIN_TOKEN, Bridge, Emulator, wait_for
from tests.test_app import alert, webhook
from tests.test_cli import run_bridge

MakeBridge = Callable[..., Bridge]


def test_trail_answers_what_happened_to_an_alert_key(emulator: Emulator, make_bridge: MakeBridge) -> None:
    bridge = make_bridge(emulator)
    firing = webhook(alert({"alertname": "DiskFull", "instance": "db-1", "severity": "critical"}))
    first = bridge.post("/alertmanager", firing).json()
    (key,) = first["data"]["alert_keys"]
    wait_for(lambda: emulator.events(), what="the first event to be delivered")
    repeat = bridge.post("/alertmanager", firing).json()
    assert repeat["data"]["suppressed"] == 1
    emulator.fault({"code": "InvalidParameter", "message": "integration_key is not a valid one"})
    resolved = webhook(
        alert({"alertname": "DiskFull", "instance": "db-1", "severity": "critical"}, status="resolved"),
        status="resolved",
    )
    last = bridge.post("/alertmanager", resolved).json()
    wait_for(lambda: bridge.dead_letters(), what="the resolution to become a dead letter")

    online = run_bridge("trail", key, "--url", bridge.url, env={"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert online.returncode == 0, online.stderr
    text = online.stdout
    assert f"alert_key {key}: 3 event(s), newest first" in text
    (delivered_request,) = [r["request_id"] for r in bridge.admin("GET", "/events").json()["data"]["events"][-1:]]
    lines = text.splitlines()
    assert lines[2].startswith("#3  Ok") and "DEAD LETTER" in lines[2]
    assert f"accepted, request {last['request_id']}" in text
    assert "attempt 1: give_up 400 InvalidIntegrationKey" in text
    assert "suppressed (repeat)" in text and f"accepted, request {repeat['request_id']}" in text
    assert f"attempt 1: ok 200  request_id {delivered_request}" in text
    assert ADMIN_TOKEN not in text

    bridge.stop()
    offline = run_bridge("trail", key, "--config", str(bridge.config_path), "--json")
    assert offline.returncode == 0, offline.stderr
    events: list[dict[str, Any]] = json.loads(offline.stdout)["events"]
    assert [e["outcome"] for e in events] == ["dead", "suppressed", "delivered"]
    assert events[2]["request_id"] == delivered_request


def test_trail_without_a_token_says_so_and_exits_2() -> None:
    result = run_bridge("trail", "k", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "no admin token" in result.stderr


def test_the_timeline_of_no_events_says_why_there_may_be_none() -> None:
    assert "past storage.history" in timeline.render("k", [])
