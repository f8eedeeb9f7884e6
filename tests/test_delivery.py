"""Delivery through the real processes when Flashduty misbehaves, and when the bridge dies.

The emulator plays Flashduty: down (nothing listening), answering scripted errors,
rate limiting. The bridge is killed with SIGKILL and restarted on the same outbox.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import TEST_KEY, Bridge, Emulator, start_emulator, wait_for
from tests.support.procs import free_port
from tests.test_app import alert, webhook

MakeBridge = Callable[..., Bridge]


def sequence_per_key(bodies: list[dict[str, Any]]) -> dict[str, list[str]]:
    per_key: dict[str, list[str]] = defaultdict(list)
    for body in bodies:
        per_key[body["alert_key"]].append(body["event_status"])
    return dict(per_key)


def flap(bridge: Bridge, instances: int, rounds: int) -> dict[str, list[str]]:
    """Post firing then resolved for each instance, ``rounds`` times; return what each key must receive."""
    sent: dict[str, list[str]] = defaultdict(list)
    for _ in range(rounds):
        for status in ("firing", "resolved"):
            alerts = [
                alert({"alertname": "Flap", "instance": f"node-{i}", "severity": "critical"}, status=status)
                for i in range(instances)
            ]
            response = bridge.post("/alertmanager", webhook(*alerts, status=status))
            assert response.status_code == 200, response.text
            for item in alerts:
                sent[f"alertmanager:{item['fingerprint']}"].append("Critical" if status == "firing" else "Ok")
    return dict(sent)


def test_invalid_parameter_is_not_retried_and_becomes_a_visible_dead_letter(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """A 400 InvalidParameter is answered once, parked with request_id and message, and does not block its key."""
    emulator.fault({"status": 400, "code": "InvalidParameter", "message": "title_rule is bad"})
    bridge = make_bridge(emulator)
    firing = alert({"alertname": "Rejected", "instance": "a"})
    assert bridge.post("/alertmanager", webhook(firing)).status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 1, what="dead letter")
    assert (
        bridge.post(
            "/alertmanager", webhook({**firing, "status": "resolved", "endsAt": "2026-11-26T10:05:00Z"})
        ).status_code
        == 200
    )
    bodies = wait_for(lambda: emulator.bodies(TEST_KEY), what="the Ok after the dead letter")
    assert [b["event_status"] for b in bodies] == ["Ok"]
    statuses = [r["status"] for r in emulator.requests()]
    assert statuses == [400, 200], statuses  # the rejected event was sent exactly once
    letters = bridge.dead_letters()
    assert len(letters) == 1
    assert letters[0]["last_code"] == "InvalidParameter"
    assert letters[0]["last_error"] == "title_rule is bad"
    assert letters[0]["request_id"]
    assert letters[0]["alert_key"] == f"alertmanager:{firing['fingerprint']}"
    assert (
        bridge.metric(
            "flashduty_bridge_delivery_attempts_total",
            destination="default",
            outcome="give_up",
            code="InvalidParameter",
        )
        == 1
    )
    assert bridge.metric("flashduty_bridge_dead_lettered_total", destination="default", code="InvalidParameter") == 1
    assert "dead letter" in bridge.log()


def test_error_object_inside_a_200_is_a_failure_not_a_delivery(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """A 2xx carrying error NoLicense is parked as a dead letter, not counted as delivered."""
    emulator.fault({"status": 200, "code": "NoLicense", "message": "no licence"})
    bridge = make_bridge(emulator)
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "Lic"}))).status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 1, what="dead letter")
    assert emulator.bodies(TEST_KEY) == []
    assert bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="ok") == 0


def test_503_and_unparsable_502_are_retried_until_delivered(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """Server errors, including a proxy's HTML 502, are retried with backoff and the event arrives once."""
    emulator.fault(
        {"status": 503, "code": "InternalError"},
        {"status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
        {"status": 500, "code": "InternalError"},
    )
    bridge = make_bridge(emulator)
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "Retry"}))).status_code == 200
    bodies = wait_for(lambda: emulator.bodies(TEST_KEY), what="delivery after retries")
    assert len(bodies) == 1
    assert [r["status"] for r in emulator.requests()] == [503, 502, 500, 200]
    assert bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="retry") == 3
    assert bridge.metric("flashduty_bridge_dead_lettered_total") == 0  # a counter: never stale


def test_429_is_retried_after_retry_after(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """A 429 RequestTooFrequently with Retry-After: 1 is retried no sooner than it says (backoff is 50-200ms)."""
    emulator.fault({"status": 429, "code": "RequestTooFrequently", "retry_after": 1})
    bridge = make_bridge(emulator)
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "Limited"}))).status_code == 200
    wait_for(lambda: emulator.bodies(TEST_KEY), what="delivery after 429")
    assert [r["status"] for r in emulator.requests()] == [429, 200]
    assert "retrying in 1.0s" in bridge.log()
    assert bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="retry", code="RequestTooFrequently") == 1


def test_emulator_rate_limit_is_survived_without_loss(tmp_path: Path, make_bridge: MakeBridge) -> None:
    """Against a 5/s limit, 30 alerts all arrive; the 429s are retried, none is parked."""
    emulator = start_emulator(tmp_path, "--per-second", "5", "--per-minute", "1000")
    try:
        bridge = make_bridge(emulator)
        alerts = [alert({"alertname": "Storm", "instance": f"n{i}"}) for i in range(30)]
        assert bridge.post("/alertmanager", webhook(*alerts)).status_code == 200
        bodies = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) == 30 and b, timeout=30, what="30 events")
        assert {b["alert_key"] for b in bodies} == {f"alertmanager:{a['fingerprint']}" for a in alerts}
        assert any(r["status"] == 429 for r in emulator.requests())
        assert bridge.metric("flashduty_bridge_dead_lettered_total") == 0  # a counter: never stale
    finally:
        emulator.proc.stop()


def test_kill_9_while_flashduty_is_down_loses_nothing_and_keeps_per_key_order(
    tmp_path: Path, make_bridge: MakeBridge
) -> None:
    """Events accepted while Flashduty is unreachable survive SIGKILL and arrive in per-key order."""
    port = free_port()  # nothing listens here yet: connection refused
    bridge = make_bridge(f"http://127.0.0.1:{port}/event/push/alert/standard")
    sent = flap(bridge, instances=5, rounds=3)
    wait_for(lambda: bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="retry", code="network") >= 3)
    wait_for(lambda: bridge.metric("flashduty_bridge_outbox_pending") == 30, what="gauge refresh")
    assert bridge.proc is not None
    bridge.proc.kill9()

    emulator = start_emulator(tmp_path, port=port)
    try:
        bridge.start()
        bodies = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) >= 30 and b, timeout=30, what="backlog")
        assert len(bodies) == 30
        assert sequence_per_key(bodies) == sent
        wait_for(lambda: bridge.metric("flashduty_bridge_outbox_pending") == 0, what="empty outbox")
    finally:
        emulator.proc.stop()


def test_kill_9_with_attempts_in_flight_keeps_order_and_loses_nothing(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """SIGKILL while slow attempts are in flight: after restart every event arrives once, in per-key order."""
    emulator.fault(*[{"status": 503, "code": "InternalError", "delay_ms": 500}] * 3)
    bridge = make_bridge(emulator, delivery={"workers": 3})
    sent = flap(bridge, instances=4, rounds=2)
    wait_for(lambda: len(emulator.requests()) >= 1, what="an attempt in flight")
    assert bridge.proc is not None
    bridge.proc.kill9()
    bridge.start()
    total = sum(len(v) for v in sent.values())
    bodies = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) >= total and b, timeout=30, what="all events")
    assert len(bodies) == total
    assert sequence_per_key(bodies) == sent
    wait_for(lambda: bridge.metric("flashduty_bridge_outbox_pending") == 0, what="empty outbox")


def test_sigterm_exits_0_and_leaves_undelivered_events_queued(tmp_path: Path, make_bridge: MakeBridge) -> None:
    """SIGTERM stops the bridge with exit code 0; what was not delivered is delivered after restart."""
    port = free_port()
    bridge = make_bridge(f"http://127.0.0.1:{port}/event/push/alert/standard")
    sent = flap(bridge, instances=2, rounds=1)
    assert bridge.proc is not None
    bridge.proc.signal(signal.SIGTERM)
    assert bridge.proc.wait(timeout=20) == 0
    assert "shut down cleanly" in bridge.log()
    emulator = start_emulator(tmp_path, port=port)
    try:
        bridge.start()
        bodies = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) >= 4 and b, what="queued events")
        assert sequence_per_key(bodies) == sent
    finally:
        emulator.proc.stop()


def test_second_bridge_on_the_same_outbox_refuses_to_start(tmp_path: Path, make_bridge: MakeBridge) -> None:
    """Two processes on one outbox would break per-key order, so the second one fails at startup."""
    first = make_bridge()
    second = Bridge(first.config_path, free_port(), tmp_path / "second.log")
    try:
        second.start()
        raise AssertionError("second bridge started")
    except RuntimeError as exc:
        assert "in use by another bridge process" in str(exc)
    finally:
        second.stop()
