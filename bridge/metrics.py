"""Every metric the bridge exports, built against an injected registry.

Production passes a fresh ``CollectorRegistry`` owned by the app (so tests and
multiple apps in one process never share series). Label values come from closed
sets; label combinations that matter at zero are created up front so that
``rate()`` and absent-series alerts work from the first scrape.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from bridge import __version__
from bridge.destinations import INVALID_INTEGRATION_KEY
from bridge.outbox.health import OPERATIONS as STORAGE_OPERATIONS

PREFIX = "flashduty_bridge"

SOURCES = ("alertmanager", "grafana", "standard")
REQUEST_OUTCOMES = ("accepted", "invalid", "too_large", "unavailable", "unauthorized", "not_forwarded", "over_budget")
#: Why a worker process was replaced (bridge.workers).
WORKER_RESTART_REASONS = ("budget", "memory", "recycled", "crashed")
#: Why the HTTP server answered or closed a connection before the app saw the request (bridge.server).
HTTP_REFUSED_REASONS = (
    *("headers_too_large", "too_many_headers", "header_timeout", "body_timeout", "too_many_connections"),
)
EVENT_STATUSES = ("Critical", "Warning", "Info", "Ok")
ATTEMPT_OUTCOMES = ("ok", "retry", "give_up")
TRUNCATED_FIELDS = ("title_rule", "description", "alert_key", "label_key", "label_value", "images")
LABEL_DROP_REASONS = ("limit", "rule")
LABEL_RENAME_REASONS = ("sanitised", "collision")

M = TypeVar("M", bound=MetricWrapperBase)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The bridge's metrics; one instance per app, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[Hashable, ...], MetricWrapperBase] = {}
        p = PREFIX
        self.info = Info(f"{p}_build", "Version of the running bridge.", registry=registry)
        self.info.info({"version": __version__})
        self.dry_run = Gauge(f"{p}_dry_run", "1 when no integration key is set and nothing is sent.", registry=registry)
        self.requests = Counter(
            f"{p}_requests_total", "Webhook requests by source and outcome.", ["source", "outcome"], registry=registry
        )
        self.alerts = Counter(
            f"{p}_alerts_received_total",
            "Alerts in webhook requests by source and outcome (accepted = committed to the outbox).",
            ["source", "outcome"],
            registry=registry,
        )
        self.events = Counter(
            f"{p}_events_total",
            "Events committed to the outbox by source and status.",
            ["source", "status"],
            registry=registry,
        )
        self.attempts = Counter(
            f"{p}_delivery_attempts_total",
            "Delivery attempts by destination, outcome (ok, retry, give_up) and Flashduty error code.",
            ["destination", "outcome", "code"],
            registry=registry,
        )
        self.attempt_duration = Histogram(
            f"{p}_delivery_attempt_duration_seconds",
            "Duration of one request to the destination.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.delivery_latency = Histogram(
            f"{p}_delivery_latency_seconds",
            "Time from acceptance (200 to the sender) to successful delivery, retries included.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.outbox_depth = Gauge(f"{p}_outbox_pending", "Events waiting for delivery.", registry=registry)
        self.outbox_oldest_age = Gauge(
            f"{p}_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when empty).",
            registry=registry,
        )
        self.dead_letters = Gauge(
            f"{p}_dead_letters",
            "Events parked as dead letters (rejected for good), kept for replay.",
            registry=registry,
        )
        self.dead_lettered = Counter(
            f"{p}_dead_lettered_total",
            "Events that became dead letters, by destination and Flashduty error code.",
            ["destination", "code"],
            registry=registry,
        )
        self.suppressed = Counter(
            f"{p}_events_suppressed_total",
            "Events not queued because they repeat the last one of their key within refresh_interval.",
            ["source"],
            registry=registry,
        )
        self.coalesced = Counter(
            f"{p}_events_coalesced_total",
            "Queued firing events skipped because a newer firing state of the same key was queued behind them.",
            ["destination"],
            registry=registry,
        )
        self.rate_limited = Counter(
            f"{p}_rate_limited_total",
            "429 answers from the destination (each pauses the destination).",
            ["destination"],
            registry=registry,
        )
        self.rate_limit_headroom = Gauge(
            f"{p}_rate_limit_headroom",
            "Requests the client-side rate limiter still allows in its window (second, minute).",
            ["destination", "window"],
            registry=registry,
        )
        self.circuit_open = Gauge(
            f"{p}_circuit_open",
            "1 while the destination's circuit breaker is open or probing (half-open).",
            ["destination"],
            registry=registry,
        )
        self.replayed = Counter(
            f"{p}_dead_letters_replayed_total", "Dead letters queued again by an operator.", registry=registry
        )
        self.unrouted = Counter(
            f"{p}_alerts_unrouted_total",
            "Alerts sent nowhere, by source and reason (dropped_by_route, no_route).",
            ["source", "reason"],
            registry=registry,
        )
        self.reloads = Counter(
            f"{p}_config_reloads_total", "Configuration reloads by result.", ["result"], registry=registry
        )
        self.reload_success = Gauge(
            f"{p}_config_last_reload_successful",
            "1 if the last reload succeeded (or none was tried).",
            registry=registry,
        )
        self.reload_time = Gauge(
            f"{p}_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded.",
            registry=registry,
        )
        self.template_errors = Counter(
            f"{p}_template_errors_total",
            "Template fields that failed to render (the event went out with a fallback), by source and field.",
            ["source", "field"],
            registry=registry,
        )
        self.auth_failures = Counter(
            f"{p}_auth_failures_total",
            "Requests refused by inbound authentication, by source and reason.",
            ["source", "reason"],
            registry=registry,
        )
        self.not_forwarded = Counter(
            f"{p}_alerts_not_forwarded_total",
            "Valid alerts deliberately not forwarded (e.g. legacy Grafana paused/pending), by source and reason.",
            ["source", "reason"],
            registry=registry,
        )
        self.truncations = Counter(
            f"{p}_truncations_total",
            "Values shortened to fit a Flashduty limit, by field.",
            ["field"],
            registry=registry,
        )
        self.labels_dropped = Counter(
            f"{p}_labels_dropped_total", "Labels left out of an event, by reason.", ["reason"], registry=registry
        )
        self.labels_renamed = Counter(
            f"{p}_label_keys_rewritten_total",
            "Label keys rewritten to Flashduty's naming rules (sanitised) or to avoid a clash (collision).",
            ["reason"],
            registry=registry,
        )
        self.passthrough_keys = Gauge(
            f"{p}_passthrough_keys",
            "Destinations made for integration keys given in senders' URLs (?integration_key=), in use now.",
            registry=registry,
        )
        self.passthrough_refused = Counter(
            f"{p}_passthrough_refused_total",
            "Requests with a new ?integration_key= refused (503) because passthrough_max_keys are in use.",
            ["reason"],
            registry=registry,
        )
        self.passthrough_refused.labels("limit")
        self.storage_errors = Counter(
            f"{p}_storage_errors_total",
            "Outbox storage failures (disk full, I/O error, corruption, database lost), by operation.",
            ["operation"],
            registry=registry,
        )
        for operation in STORAGE_OPERATIONS:
            self.storage_errors.labels(operation)
        self.worker_restarts = Counter(
            f"{p}_worker_restarts_total",
            "Worker processes replaced, by reason (budget: a request used limits.request_cpu; memory: it needed"
            " more than limits.worker_memory; recycled: it grew and gave its memory back; crashed).",
            ["reason"],
            registry=registry,
        )
        for reason in WORKER_RESTART_REASONS:
            self.worker_restarts.labels(reason)
        self.http_refused = Counter(
            f"{p}_http_refused_total",
            "Requests and connections the HTTP server refused before the app saw them (431, 408, 503), by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in HTTP_REFUSED_REASONS:
            self.http_refused.labels(reason)
        for source in SOURCES:
            for outcome in REQUEST_OUTCOMES:
                self.requests.labels(source, outcome)
            for outcome in ("accepted", "unavailable"):
                self.alerts.labels(source, outcome)
            for status in EVENT_STATUSES:
                self.events.labels(source, status)
            self.suppressed.labels(source)
            for reason in ("dropped_by_route", "no_route"):
                self.unrouted.labels(source, reason)
        for name in TRUNCATED_FIELDS:
            self.truncations.labels(name)
        for reason in LABEL_DROP_REASONS:
            self.labels_dropped.labels(reason)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for reason in LABEL_RENAME_REASONS:
            self.labels_renamed.labels(reason)

    def child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)``, remembered: the receive path counts several series per request.

        ``labels()`` validates and locks on every call (~1 µs); a series, once created, is the
        same object for the life of the metric (the bridge never removes series).
        """
        key = (metric, *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found  # type: ignore[return-value]  # stored under this metric: its own child type

    def forget_destination(self, destination: str) -> None:
        """Remove every series of ``destination`` (a retired passthrough key leaves no series behind)."""
        per_destination: tuple[tuple[MetricWrapperBase, tuple[str, ...]], ...] = (
            (self.attempts, ("destination", "outcome", "code")),
            (self.attempt_duration, ("destination",)),
            (self.delivery_latency, ("destination",)),
            (self.coalesced, ("destination",)),
            (self.rate_limited, ("destination",)),
            (self.circuit_open, ("destination",)),
            (self.rate_limit_headroom, ("destination", "window")),
            (self.dead_lettered, ("destination", "code")),
        )
        for metric, names in per_destination:
            found = {
                tuple(sample.labels[name] for name in names)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels.get("destination") == destination
            }
            for values in found:
                metric.remove(*values)
                self._children.pop((metric, *values), None)

    def init_destination(self, destination: str) -> None:
        """Create the per-destination series at zero."""
        for outcome in ATTEMPT_OUTCOMES:
            self.attempts.labels(destination, outcome, "none")
        # A wrong key is the commonest misconfiguration: its series exist before the first one,
        # so that increase() in an alert rule sees it.
        self.attempts.labels(destination, "give_up", INVALID_INTEGRATION_KEY)
        self.dead_lettered.labels(destination, INVALID_INTEGRATION_KEY)
        self.attempt_duration.labels(destination)
        self.delivery_latency.labels(destination)
        self.coalesced.labels(destination)
        self.rate_limited.labels(destination)
        self.circuit_open.labels(destination).set(0)
