"""The plain data every outbox backend takes and returns, and the errors it raises.

Nothing here knows about a database: the app, the dispatcher, the admin API and the
``deadletter`` CLI speak only these types, so a backend can be swapped behind them.

Errors, from the caller's point of view:

* :class:`OutboxUnavailable`: storage cannot do this now (closed, disk full, I/O
  error, connection lost). The intake answers 503, the delivery loop retries.
* :class:`OutboxFull`: ``max_pending`` events wait already; 503 as well, but storage is fine.
* :class:`OpenRefused` (raised by ``open`` only): starting on this storage could lose or
  reorder events; its message is one line naming the storage and what to do.
  :class:`OutboxInUse` and :class:`OutboxUnusable` say which case it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class OutboxUnavailable(Exception):
    """The outbox cannot take events now (not open, disk full, I/O error): answer 503."""


class OutboxClosed(OutboxUnavailable):
    """The outbox is not open (not yet, or no longer): not a storage failure."""


class OutboxFull(OutboxUnavailable):
    """The outbox holds ``max_pending`` events already: answer 503 so the sender retries."""


class OpenRefused(OutboxUnavailable):
    """The outbox could not be opened (permissions, I/O error, disk full); the message says what to do."""


class OutboxInUse(OpenRefused):
    """Another bridge process holds this outbox; two writers would break the per-key order."""


class OutboxUnusable(OpenRefused):
    """What is stored there is not a healthy outbox this bridge can use.

    Damaged (corrupt or truncated pages), emptied or deleted after it held events,
    not an outbox at all (a foreign file or database), or written by a newer bridge.
    """


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to commit; ``body`` is the exact JSON to send.

    ``digest`` identifies what the event says (status, title, description, labels);
    an event whose digest equals the last accepted one of its key within the
    refresh interval is suppressed. Empty: never suppressed.
    """

    destination: str
    alert_key: str
    source: str
    event_status: str
    body: str
    digest: str = ""


@dataclass(frozen=True, slots=True)
class Claimed:
    """The oldest pending event of its key, leased to one worker."""

    id: int
    destination: str
    alert_key: str
    event_status: str
    body: str
    attempts: int
    created_at: float

    def __repr__(self) -> str:
        return f"Claimed(#{self.id} {self.event_status} key={self.alert_key} attempts={self.attempts})"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """Claimed events, plus what the claim cleaned up on the way (for metrics)."""

    events: list[Claimed] = field(default_factory=list)
    coalesced: int = 0  # intermediate firing states superseded by a newer one of the same key
    expired: list[Claimed] = field(default_factory=list)  # pending longer than max_age: now dead letters
    #: When fewer than asked were claimed: when the destination's next event is due (None: nothing waits).
    next_due: float | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    dead: int
    oldest_pending_created_at: float | None


#: The fields of one dead letter, as ``dead_letters`` returns them (the admin API's JSON).
DEAD_LETTER_FIELDS = (
    "id",
    "destination",
    "alert_key",
    "source",
    "event_status",
    "body",
    "attempts",
    "created_at",
    "dead_at",
    "last_code",
    "last_error",
    "request_id",
)


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to; every given criterion must match."""

    ids: tuple[int, ...] = ()
    destination: str | None = None
    code: str | None = None
    older_than: float | None = None  # seconds since the event became a dead letter
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: list[int]
    #: Not replayed: a newer event of the same key was delivered since, so the old one
    #: would reopen or overwrite a newer state.
    superseded: list[int]
    #: Not replayed now: a newer event of the same key is being delivered; try again.
    in_flight: list[int] = field(default_factory=list)
