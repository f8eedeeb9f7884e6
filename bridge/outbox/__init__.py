"""The outbox: durable storage of accepted events, and the only place that retries and orders.

Callers (the app, the dispatcher, the admin API, the ``deadletter`` CLI) use the
:class:`Outbox` protocol and get one from :func:`open_outbox`, which picks the backend
from the config; they never name a backend.

* ``protocol``: the :class:`Outbox` interface and the contract every backend keeps.
* ``model``: the plain data it takes and returns, and its errors.
* ``policy``: the rules (priority, suppression, coalescing, expiry, replay) as plain functions.
* ``health``: storage failures, and whether the outbox is fit for traffic.
* ``trail``: what happened to each event (attempts, endings), its retention, as plain data and rules.
* ``factory``: backend selection. ``sqlite``: the embedded backend.
* ``dispatcher`` runs the delivery workers; ``pacing`` holds the rate limiter and circuit breaker.

Ordering contract: per ``(destination, alert_key)`` events are delivered strictly in
the order they were committed. Only the oldest pending event of a key can be
claimed, and it stays the oldest until it is delivered or dead-lettered, across
retries and restarts.
"""

from __future__ import annotations

from bridge.outbox.factory import backend_name, create_outbox, open_outbox
from bridge.outbox.health import StorageHealth
from bridge.outbox.model import (
    DEAD_LETTER_FIELDS,
    Claimed,
    ClaimResult,
    DeadLetterFilter,
    NewEvent,
    OpenRefused,
    OutboxClosed,
    OutboxFull,
    OutboxInUse,
    OutboxStats,
    OutboxUnavailable,
    OutboxUnusable,
    ReplayResult,
)
from bridge.outbox.protocol import Outbox
from bridge.outbox.trail import Attempt, Retention, TrailEvent, TrailFilter

__all__ = [
    "DEAD_LETTER_FIELDS",
    "Attempt",
    "ClaimResult",
    "Claimed",
    "DeadLetterFilter",
    "NewEvent",
    "OpenRefused",
    "Outbox",
    "OutboxClosed",
    "OutboxFull",
    "OutboxInUse",
    "OutboxStats",
    "OutboxUnavailable",
    "OutboxUnusable",
    "ReplayResult",
    "Retention",
    "StorageHealth",
    "TrailEvent",
    "TrailFilter",
    "backend_name",
    "create_outbox",
    "open_outbox",
]
