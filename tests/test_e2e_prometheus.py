"""End to end with the real tools: Prometheus → Alertmanager → the bridge → the emulator.

Prometheus evaluates alerting rules on ``vector(1)`` (they fire at once), sends them to
a real Alertmanager, whose webhook goes to the bridge, which delivers to the emulator.
The rules start silent (nothing may fire before Prometheus has discovered
Alertmanager), are switched to firing, then back to silent; each switch rewrites the
rule file with the same rules (names and labels) and reloads Prometheus. After the
second switch the alerts resolve, and each key must end with exactly one Ok after its
firing event(s).

The same Prometheus scrapes the bridge (job "flashduty-bridge", as the ServiceMonitor
does) and loads the shipped PrometheusRule and the dashboard's queries: they must
evaluate against the live bridge without errors.

Needs Debian's ``prometheus`` and ``prometheus-alertmanager`` (``.ci/run`` installs
both). Without them the test is skipped, unless ``BRIDGE_REQUIRE_PROMETHEUS=1`` /
``BRIDGE_REQUIRE_ALERTMANAGER=1`` (set by CI) make that a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.sources.alertmanager import fingerprint
from tests.conftest import TEST_KEY, Bridge, Emulator, wait_for
from tests.support import artefacts
from tests.support.alertmanager import Alertmanager, alertmanager_binary
from tests.support.procs import LOOPBACK
from tests.support.prometheus import Prometheus, prometheus_binary
from tests.test_delivery import sequence_per_key

#: name, expression, labels. Each rule fires from its first evaluation; the last one
#: returns two series, so one rule gives two alerts in one Alertmanager group.
RULES: list[tuple[str, str, dict[str, str]]] = [
    ("E2EDiskFull", "vector(1)", {"severity": "critical", "instance": "db-1", "service": "db"}),
    ("E2EHighLatency", "vector(1)", {"severity": "warning", "service": "api"}),
    (
        "E2EShardLag",
        'label_replace(vector(1), "shard", "a", "", "") or label_replace(vector(1), "shard", "b", "", "")',
        {"severity": "info"},
    ),
]
SERIES_LABELS = {"E2EShardLag": [{"shard": "a"}, {"shard": "b"}]}
EXPECTED_STATUS = {"critical": "Critical", "warning": "Warning", "info": "Info"}


def rule_file(firing: bool) -> str:
    """The test's rules; when not ``firing``, the same rules (names, labels) return nothing."""
    rules = [
        {
            "alert": name,
            "expr": expr if firing else f"({expr}) == 0",
            "labels": labels,
            "annotations": {"summary": f"{name} from the end-to-end test"},
        }
        for name, expr, labels in RULES
    ]
    return yaml.safe_dump({"groups": [{"name": "e2e", "rules": rules}]}, sort_keys=False)


def expected_alerts() -> dict[str, dict[str, str]]:
    """alert_key → the alert's labels as Alertmanager sees them."""
    alerts = {}
    for name, _, labels in RULES:
        for extra in SERIES_LABELS.get(name, [{}]):
            full = {"alertname": name, **labels, **extra}
            alerts[f"alertmanager:{fingerprint(full)}"] = full
    return alerts


def require(binary: str | None, env: str, package: str) -> None:
    if binary is None:
        message = f"{package} is not installed (apt-get install --no-install-recommends {package})"
        if os.environ.get(env) == "1":
            pytest.fail(f"{message}; {env}=1 requires it")
        pytest.skip(message)


@pytest.fixture
def started(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Processes started by the test, stopped by PID at the end (logs printed on failure)."""
    require(prometheus_binary(), "BRIDGE_REQUIRE_PROMETHEUS", "prometheus")
    require(alertmanager_binary(), "BRIDGE_REQUIRE_ALERTMANAGER", "prometheus-alertmanager")
    procs: list[Any] = []
    yield procs
    for proc in reversed(procs):
        proc.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in procs:
            print(f"--- {type(proc).__name__} ---\n{proc.output()[-4000:]}")


def test_prometheus_alerts_reach_flashduty_through_alertmanager_and_the_bridge_then_resolve(
    tmp_path: Path, emulator: Emulator, make_bridge: Callable[..., Bridge], started: list[Any]
) -> None:
    bridge = make_bridge(emulator)
    am = Alertmanager(tmp_path / "am", f"{bridge.url}/alertmanager", group_wait="500ms", group_interval="1s")
    started.append(am)
    am.start()

    e2e_rules = tmp_path / "e2e-rules.yml"
    e2e_rules.write_text(rule_file(firing=False))
    shipped_rules = artefacts.write_rule_file(tmp_path / "bridge-rules.yml")
    prometheus = Prometheus(
        tmp_path / "prometheus",
        rule_files=[e2e_rules, shipped_rules],
        scrape_targets={"flashduty-bridge": f"{LOOPBACK}:{bridge.port}"},
        alertmanager=f"{LOOPBACK}:{am.port}",
    )
    started.append(prometheus)
    prometheus.start()

    expected = expected_alerts()
    assert len(expected) == 4
    wait_for(prometheus.alertmanagers, timeout=20, what="Prometheus to discover Alertmanager")
    e2e_rules.write_text(rule_file(firing=True))
    prometheus.reload()

    def firing_keys() -> set[str] | None:
        keys = {body["alert_key"] for body in emulator.bodies(TEST_KEY)}
        return keys if keys >= set(expected) else None

    wait_for(firing_keys, timeout=30, what="a firing event for each of the 4 alerts")
    firing = emulator.bodies(TEST_KEY)
    assert {body["alert_key"] for body in firing} == set(expected), "only the test's alerts reach Flashduty"
    for body in firing:
        labels = expected[body["alert_key"]]
        assert body["event_status"] == EXPECTED_STATUS[labels["severity"]]
        assert body["title_rule"] == f"{labels['alertname']}: {labels['alertname']} from the end-to-end test"
        for name, value in labels.items():
            assert body["labels"][name] == value
        assert f"Source: http://{LOOPBACK}:{prometheus.port}/" in body["description"]  # Prometheus' generatorURL

    # Same rules, no series: Prometheus resolves the alerts and tells Alertmanager.
    e2e_rules.write_text(rule_file(firing=False))
    prometheus.reload()

    def all_resolved() -> dict[str, list[str]] | None:
        per_key = sequence_per_key(emulator.bodies(TEST_KEY))
        return per_key if all(per_key.get(key, [])[-1:] == ["Ok"] for key in expected) else None

    per_key = wait_for(all_resolved, timeout=30, what="Ok for each of the 4 alerts")
    for key, labels in expected.items():
        sequence = per_key[key]
        assert sequence.count("Ok") == 1, (key, sequence)
        firing_part = sequence[:-1]
        assert firing_part and set(firing_part) == {EXPECTED_STATUS[labels["severity"]]}, (key, sequence)

    # The bridge's own numbers agree with what Flashduty (the emulator) holds.
    def delivered_matches() -> bool:
        held = len(emulator.events(TEST_KEY))
        return bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="ok") == held

    wait_for(delivered_matches, timeout=10, what="delivery_attempts_total{outcome=ok} == events held")
    held = len(emulator.events(TEST_KEY))
    assert bridge.metric("flashduty_bridge_events_total") == held
    assert bridge.metric("flashduty_bridge_events_total", status="Ok") == len(expected)
    assert bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="give_up") == 0
    wait_for(
        lambda: bridge.metric("flashduty_bridge_outbox_pending") == 0, what="the pending gauge (refreshed each second)"
    )
    assert bridge.metric("flashduty_bridge_dead_lettered_total") == 0  # a counter: never stale
    assert bridge.metric("flashduty_bridge_requests_total", outcome="accepted") >= 2
    assert bridge.metric("flashduty_bridge_requests_total", outcome="invalid") == 0

    # Prometheus scraped the bridge, evaluated the shipped rules without error, and none
    # of them fires on this healthy bridge.
    assert [s["value"][1] for s in prometheus.query('up{job="flashduty-bridge"}')] == ["1"]
    shipped = {rule["alert"] for group in artefacts.rule_groups() for rule in group["rules"]}

    def shipped_rules_evaluated() -> list[dict[str, Any]] | None:
        rules = [rule for rule in prometheus.rules() if rule["name"] in shipped]
        done = len(rules) == len(shipped) and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
        return rules if done else None

    rules = wait_for(shipped_rules_evaluated, timeout=10, what="the shipped rules to be evaluated")
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
    assert [r["name"] for r in rules if r["state"] == "firing"] == []

    # Every dashboard query evaluates; the ones on counters the test moved have data.
    for where, expr in artefacts.dashboard_queries():
        try:
            prometheus.query(artefacts.substitute_variables(expr))
        except RuntimeError as exc:
            raise AssertionError(f"dashboard {where}: {exc}") from None
    accepted = prometheus.query(
        'flashduty_bridge_delivery_attempts_total{job="flashduty-bridge", outcome="ok", code="none"}'
    )
    assert accepted and float(accepted[0]["value"][1]) > 0
