"""The :class:`Outbox` interface: everything the app, the dispatcher, the admin API and the
``deadletter`` CLI may ask of durable storage. Callers hold an ``Outbox`` from
:func:`bridge.outbox.open_outbox` and never name a backend.

Contract every backend keeps (``tests/test_outbox.py`` runs against each one):

* ``put`` returns only after the events are committed durably (fsync or a synchronous
  commit): that is what a 200 to the sender means.
* Per ``(destination, alert_key)`` events are delivered strictly in commit order: only
  the oldest pending event of a key (its head) can be claimed, and it stays the head
  until it is delivered or dead-lettered, across retries, restarts and replays.
* A claim is a lease: a claimed head is invisible to other claims until ``delivered``,
  ``retry_later`` or ``dead`` settles it, or until the lease runs out (the worker died).
* The rules of :mod:`bridge.outbox.policy` (priority, suppression, coalescing, expiry,
  replay) decide; the backend only stores their answers.
* Several processes may share one storage (PostgreSQL): then all of the above holds across
  them, and ``rate_limits`` is the one rate limit they share.
* Storage failures raise :class:`~bridge.outbox.model.OutboxUnavailable` and are recorded in
  ``health``; nothing is half-committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bridge.outbox.health import StorageHealth
from bridge.outbox.model import ClaimResult, DeadLetterFilter, NewEvent, OutboxStats, ReplayResult
from bridge.outbox.pacing import SharedRateLimits


class Outbox(Protocol):
    """What the request handler, the dispatcher and the operator need from durable storage."""

    #: Storage failures seen by this outbox, and whether it is fit for traffic now.
    health: StorageHealth

    @property
    def location(self) -> str:
        """Where the events live, for logs and errors (a file path, or a DSN without its password)."""

    @property
    def is_open(self) -> bool: ...

    @property
    def rate_limits(self) -> SharedRateLimits | None:
        """The rate limits shared by every process on this storage, or None: each process paces alone."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process commits events (nothing to do for a single-process backend)."""

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Check the storage, create or migrate its schema, and take it for this process.

        Raises :class:`~bridge.outbox.model.OpenRefused` (one line naming the storage and
        what to do) when starting on it could lose or reorder events.
        """

    async def close(self) -> None:
        """Release the storage; pending events stay for the next ``open``. Safe to call twice."""

    async def probe(self) -> None:
        """Commit a small durable write, to learn whether storage takes writes again (raises if not)."""

    # -- intake ------------------------------------------------------------------------

    async def put(self, events: Sequence[NewEvent]) -> list[bool]:
        """Commit all events durably, in order, or none (raise :class:`OutboxUnavailable`).

        Returns, per event, whether it was stored (False: suppressed as an unchanged repeat).
        Raises :class:`OutboxFull` when the request does not fit under ``max_pending``.
        """

    async def save_passthrough_key(self, destination: str, integration_key: str) -> None:
        """Remember a key from a sender's URL, so its queued events can be delivered after a restart."""

    async def forget_passthrough_key(self, destination: str) -> bool:
        """Forget a URL key unless events are stored for it (pending, or dead letters); True if forgotten."""

    async def passthrough_keys(self) -> dict[str, str]:
        """Every remembered passthrough key, by destination name."""

    # -- delivery ----------------------------------------------------------------------

    async def destinations(self) -> list[str]:
        """Destinations that have pending events."""

    async def claim(self, destination: str, limit: int, lease_seconds: float, *, coalesce: bool = True) -> ClaimResult:
        """Lease up to ``limit`` due events of ``destination``, each the oldest pending of its key.

        With ``coalesce``, a firing head followed by a newer firing event of its key is skipped.
        Heads past ``max_age`` become ``expired`` dead letters on the way.
        """

    async def delivered(self, event_id: int) -> None:
        """The destination accepted the event: forget it, and let its key's next event go."""

    async def retry_later(self, event_id: int, at: float, code: str, error: str) -> None:
        """Keep the event at the head of its key; try again at ``at`` (Unix seconds)."""

    async def dead(self, event_id: int, code: str, error: str, request_id: str | None) -> None:
        """Park the event as a dead letter, kept with the reason for replay."""

    async def next_due(self, destination: str | None = None) -> float | None:
        """When the next claimable event (of ``destination``, or any) is due, or None when nothing waits."""

    async def stats(self) -> OutboxStats:
        """Pending and dead counts, and when the oldest pending event was accepted."""

    # -- dead letters ------------------------------------------------------------------

    async def dead_letters(self, where: DeadLetterFilter) -> list[dict[str, Any]]:
        """Dead letters matching ``where``, oldest first, with the fields of ``DEAD_LETTER_FIELDS``."""

    async def replay(self, where: DeadLetterFilter, force: bool = False) -> ReplayResult:
        """Queue dead letters again, in their original per-key order (see ``policy.replay_verdict``).

        A replayed event is due at once and keeps its ``attempts``: they count every attempt it ever had.
        """

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete dead letters for good; returns how many."""
