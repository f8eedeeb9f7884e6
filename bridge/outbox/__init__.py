"""The outbox: durable storage of accepted events, and the only place that retries and orders.

``store`` defines the small interface the dispatcher needs (:class:`Outbox`) and its
embedded SQLite implementation; a shared PostgreSQL outbox for several replicas can
implement the same interface (claims are leases, so replicas never deliver the same
key at once). ``dispatcher`` runs the workers.

Ordering contract: per ``(destination, alert_key)`` events are delivered strictly in
the order they were committed. Only the oldest pending event of a key can be
claimed, and it stays the oldest until it is delivered or dead-lettered, across
retries and restarts.
"""

from __future__ import annotations

from bridge.outbox.store import (
    Claimed,
    NewEvent,
    Outbox,
    OutboxFull,
    OutboxStats,
    OutboxUnavailable,
    SqliteOutbox,
)

__all__ = ["Claimed", "NewEvent", "Outbox", "OutboxFull", "OutboxStats", "OutboxUnavailable", "SqliteOutbox"]
