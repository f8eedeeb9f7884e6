"""End to end: a real Alertmanager → the bridge → the emulator.

Alerts are posted to Alertmanager's own v2 API; Alertmanager groups them and sends
its webhook to the bridge. Needs the Debian package ``prometheus-alertmanager``
(``.ci/run`` installs it). Without it the test is skipped, unless
``BRIDGE_REQUIRE_ALERTMANAGER=1`` (set by CI) makes that a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.sources.alertmanager import fingerprint
from tests.conftest import TEST_KEY, Bridge, Emulator, wait_for
from tests.support.alertmanager import Alertmanager, alertmanager_binary
from tests.test_delivery import sequence_per_key


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[[str], Alertmanager]]:
    if alertmanager_binary() is None:
        message = "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)"
        if os.environ.get("BRIDGE_REQUIRE_ALERTMANAGER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    started: list[Alertmanager] = []

    def make(webhook_url: str) -> Alertmanager:
        am = Alertmanager(tmp_path / f"am-{len(started)}", webhook_url, group_wait="500ms", group_interval="1s")
        started.append(am)
        am.start()
        return am

    yield make
    for am in started:
        am.stop()


def test_alerts_through_real_alertmanager_arrive_once_each_and_resolve_under_the_same_key(
    emulator: Emulator, make_bridge: Callable[..., Bridge], alertmanager_factory: Callable[[str], Alertmanager]
) -> None:
    """Three alerts in two groups arrive as three events; their resolution arrives as Ok under the same keys."""
    bridge = make_bridge(emulator)
    am = alertmanager_factory(f"{bridge.url}/alertmanager")
    alerts: list[dict[str, Any]] = [
        {
            "labels": {"alertname": "HighCPU", "instance": "web-1", "severity": "critical"},
            "annotations": {"summary": "CPU > 90% on web-1", "runbook_url": "https://runbooks.local/cpu"},
        },
        {
            "labels": {"alertname": "HighCPU", "instance": "web-2", "severity": "warning"},
            "annotations": {"summary": "CPU > 80% on web-2"},
        },
        {
            "labels": {"alertname": "DiskFull", "instance": "db-1", "severity": "info", "service": "db"},
            "annotations": {"description": "disk 95% full"},
        },
    ]
    posted = [am.fire(a["labels"], a["annotations"]) for a in alerts]
    keys = {f"alertmanager:{fingerprint(a['labels'])}": a for a in alerts}

    firing = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) >= 3 and b, timeout=30, what="3 events")
    assert len(firing) == 3
    by_key = {b["alert_key"]: b for b in firing}
    assert set(by_key) == set(keys)
    statuses = {key: by_key[key]["event_status"] for key in keys}
    assert sorted(statuses.values()) == ["Critical", "Info", "Warning"]
    disk = next(b for b in firing if b["labels"]["alertname"] == "DiskFull")
    assert disk["labels"]["service"] == "db"  # UTF-8 names need Alertmanager 0.28+; see test_app
    assert disk["description"].startswith("disk 95% full")

    for alert in posted:
        am.resolve(alert)
    everything = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) >= 6 and b, timeout=30, what="3 Ok")
    per_key = sequence_per_key(everything)
    for key in keys:
        assert per_key[key][0] != "Ok"
        assert per_key[key][-1] == "Ok", per_key
        assert per_key[key].count("Ok") == 1
    assert bridge.metric("flashduty_bridge_requests_total", source="alertmanager", outcome="accepted") >= 2
    assert bridge.metric("flashduty_bridge_dead_lettered_total") == 0  # a counter: never stale
