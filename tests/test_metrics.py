"""Metrics helpers used on the receive path."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from bridge.metrics import Metrics


def test_child_is_the_labelled_series_and_counts_into_it() -> None:
    """metrics.child(m, ...) is m.labels(...): the same series, created on first use, counted once."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    child = metrics.child(metrics.events, "alertmanager", "Critical")
    assert child is metrics.events.labels("alertmanager", "Critical")
    assert metrics.child(metrics.events, "alertmanager", "Critical") is child
    child.inc(3)
    metrics.child(metrics.suppressed, "sentry").inc()  # a series that did not exist yet
    sample = registry.get_sample_value
    assert sample("flashduty_bridge_events_total", {"source": "alertmanager", "status": "Critical"}) == 3
    assert sample("flashduty_bridge_events_suppressed_total", {"source": "sentry"}) == 1
    assert metrics.child(metrics.requests, "alertmanager", "accepted") is not metrics.child(
        metrics.alerts, "alertmanager", "accepted"
    )
