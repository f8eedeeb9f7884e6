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
* The trail (:mod:`bridge.outbox.trail`): every event put gets a trail row, suppressed repeats
  included, with an id in commit order; an attempt record is written in the same transaction
  as the ``delivered`` / ``retry_later`` / ``dead`` it led to; finished events are kept under
  the backend's :class:`~bridge.outbox.trail.Retention` and removed by ``prune_trail``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bridge.outbox.health import StorageHealth
from bridge.outbox.model import ClaimResult, DeadLetterFilter, NewEvent, OutboxStats, ReplayResult
from bridge.outbox.pacing import SharedRateLimits
from bridge.outbox.trail import Attempt, TrailEvent, TrailFilter


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

    async def put(self, events: Sequence[NewEvent], *, request_id: str | None = None) -> list[bool]:
        """Commit all events durably, in order, or none (raise :class:`OutboxUnavailable`).

        Returns, per event, whether it was stored (False: suppressed as an unchanged repeat).
        Raises :class:`OutboxFull` when the request does not fit under ``max_pending``.
        Every event, stored or suppressed, gets a trail row naming ``request_id`` (the
        inbound request's, as the sender was answered).
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

    async def delivered(self, event_id: int, attempt: Attempt | None = None) -> None:
        """The destination accepted the event: it leaves the queue (the trail keeps it as delivered),
        and its key's next event may go. ``attempt`` is recorded in the same transaction."""

    async def retry_later(
        self, event_id: int, at: float, code: str, error: str, attempt: Attempt | None = None
    ) -> None:
        """Keep the event at the head of its key; try again at ``at`` (Unix seconds); record ``attempt``."""

    async def dead(
        self, event_id: int, code: str, error: str, request_id: str | None, attempt: Attempt | None = None
    ) -> None:
        """Park the event as a dead letter, kept with the reason for replay; record ``attempt``
        (without one, a ``parked`` step with ``code`` and ``error``)."""

    async def next_due(self, destination: str | None = None) -> float | None:
        """When the next claimable event (of ``destination``, or any) is due, or None when nothing waits."""

    async def stats(self) -> OutboxStats:
        """Pending and dead counts, and when the oldest pending event was accepted."""

    async def stats_by_destination(self) -> dict[str, OutboxStats]:
        """``stats`` per destination that has pending or dead events."""

    # -- dead letters ------------------------------------------------------------------

    async def dead_letters(self, where: DeadLetterFilter) -> list[dict[str, Any]]:
        """Dead letters matching ``where``, oldest first, with the fields of ``DEAD_LETTER_FIELDS``."""

    async def replay(self, where: DeadLetterFilter, force: bool = False) -> ReplayResult:
        """Queue dead letters again, in their original per-key order (see ``policy.replay_verdict``).

        A replayed event is due at once and keeps its ``attempts``: they count every attempt it ever had.
        """

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete dead letters for good (the trail keeps them as ``purged``); returns how many."""

    # -- the trail ---------------------------------------------------------------------

    async def trail(self, where: TrailFilter) -> list[TrailEvent]:
        """Events matching ``where`` (any outcome), newest first, up to ``where.limit``.

        A scan over many events reads them in short slices, so it never holds up intake.
        """

    async def trail_event(self, event_id: int) -> TrailEvent | None:
        """One event of the trail, or None when it is unknown or pruned."""

    async def forget_idle_keys(self) -> int:
        """Look at the next :data:`~bridge.outbox.policy.FORGET_BATCH` key states of a sweep over all of
        them and delete those :func:`~bridge.outbox.policy.forgettable`; returns how many."""

    async def prune_trail(self) -> int:
        """Delete up to :data:`~bridge.outbox.trail.PRUNE_BATCH` finished events past the retention
        (see :func:`~bridge.outbox.trail.prunable`); returns how many."""
