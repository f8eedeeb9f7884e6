"""The outbox's rules as plain functions on plain data, shared by every backend.

A backend reads what a rule needs (the last accepted digest of some keys, a head's
lease, the last delivered id of a key), asks the rule, and writes the answer in its
own transaction. The rules never touch storage, so two backends cannot disagree on
them, and they are tested without one.

* **Priority**: backlogs drain resolutions first, then by severity.
* **Admission**: a request is stored whole or refused whole against ``max_pending``;
  an event that repeats the last accepted one of its key (same digest) within
  ``refresh_interval`` is suppressed.
* **Coalescing**: a firing head with a newer firing event of its key right behind it
  is skipped; an ``Ok`` is never skipped, nor skips anything.
* **Expiry**: a head pending longer than ``max_age`` becomes an ``expired`` dead letter.
* **Replay**: a dead letter goes back only if no newer event of its key was delivered
  since (unless forced) and none is on the wire now (never, even forced).
* **Forgetting**: a key's state (last accepted digest, last delivered id) goes once nothing
  of the key is pending or dead and its last accepted event can suppress no repeat.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bridge.outbox.model import NewEvent, ReplayResult

#: Backlogs drain resolutions first, then by severity: an Ok closes an incident someone is
#: looking at, and a Critical matters more than an Info.
PRIORITY = {"Ok": 0, "Critical": 1, "Warning": 2, "Info": 3}
LOWEST_PRIORITY = 4
#: The dead-letter code of an event that stayed pending longer than ``max_age``.
EXPIRED = "expired"

Key = tuple[str, str]  # (destination, alert_key): the unit of ordering
#: Per key, the digest of the last accepted event and when it was accepted.
AcceptedState = tuple[str | None, float | None]


def priority(event_status: str) -> int:
    """Claim rank of a head with this status (lower goes first)."""
    return PRIORITY.get(event_status, LOWEST_PRIORITY)


def is_repeat(event: NewEvent, state: AcceptedState | None, now: float, refresh_interval: float) -> bool:
    """``event`` says what its key's last accepted event said, and that one is younger than ``refresh_interval``."""
    if not event.digest or state is None:
        return False
    digest, accepted_at = state
    return digest == event.digest and accepted_at is not None and now - accepted_at < refresh_interval


def forgettable(accepted_at: float | None, now: float, refresh_interval: float, *, outstanding: bool) -> bool:
    """Whether a key's state can be deleted: no event of the key is ``outstanding`` (pending or dead), and
    its last accepted event is past ``refresh_interval``, so it would suppress nothing.

    The last delivered id only matters to replay, which needs a dead letter of the key; with none
    pending or dead, every later event of the key is newer than anything delivered, so nothing is
    lost. Without this, the state of every key ever seen stays for good.
    """
    return not outstanding and (accepted_at is None or now - accepted_at >= refresh_interval)


#: Key states a backend looks at per ``forget_idle_keys`` call (a slice of a sweep over all of them).
FORGET_BATCH = 500


@dataclass(slots=True)
class Admission:
    """What to store of several requests committed together."""

    #: Per request: per event, stored (True) or suppressed as a repeat (False); None: refused (no room).
    results: list[list[bool] | None] = field(default_factory=list)
    #: The events to insert, in commit order.
    stored: list[NewEvent] = field(default_factory=list)
    #: Per key with a stored event: the digest of its newest one (what the next is compared with).
    accepted: dict[Key, str] = field(default_factory=dict)

    @property
    def added(self) -> int:
        return len(self.stored)


def admit(
    requests: Sequence[Sequence[NewEvent]],
    states: Mapping[Key, AcceptedState],
    *,
    pending: int,
    max_pending: int,
    refresh_interval: float,
    now: float,
) -> Admission:
    """Decide, request by request in order, what is stored, suppressed or refused.

    Each request is all or nothing against ``max_pending`` (counting every event it
    carries, suppressed or not). Every stored event, digest or not, becomes what the
    next one of its key is compared with, within this batch too.
    """
    known = dict(states)
    admission = Admission()
    for events in requests:
        if pending + len(events) > max_pending:
            admission.results.append(None)
            continue
        stored = []
        for event in events:
            key = (event.destination, event.alert_key)
            repeat = is_repeat(event, known.get(key), now, refresh_interval)
            stored.append(not repeat)
            if not repeat:
                known[key] = (event.digest, now)
                admission.accepted[key] = event.digest
                admission.stored.append(event)
        pending += sum(stored)
        admission.results.append(stored)
    return admission


def is_expired(created_at: float, now: float, max_age: float | None) -> bool:
    """Pending strictly longer than ``max_age`` (None: nothing expires)."""
    return max_age is not None and now - created_at > max_age


def expiry_message(max_age: float) -> str:
    return f"undelivered after {max_age:.0f}s"


def superseded_by(head_status: str, next_status: str | None) -> bool:
    """A firing head is skipped when the next pending event of its key is firing too.

    Ok events are never superseded and never supersede, so no resolution is ever lost.
    """
    return head_status != "Ok" and next_status is not None and next_status != "Ok"


class ReplayVerdict(enum.Enum):
    REPLAY = "replayed"
    SUPERSEDED = "superseded"
    IN_FLIGHT = "in_flight"


def replay_verdict(
    event_id: int,
    *,
    head: tuple[int, float] | None,
    delivered_id: int | None,
    now: float,
    force: bool,
) -> ReplayVerdict:
    """May dead letter ``event_id`` go back into its key's queue now?

    ``head`` is its key's current head (event id, lease end), ``delivered_id`` the newest
    event of the key delivered so far. Ids follow commit order.
    """
    head_id, lease_until = head if head is not None else (None, 0.0)
    if head_id is not None and head_id > event_id and lease_until > now:
        return ReplayVerdict.IN_FLIGHT  # a newer event of the key is on the wire: it can no longer be overtaken
    if not force and delivered_id is not None and delivered_id > event_id:
        return ReplayVerdict.SUPERSEDED
    return ReplayVerdict.REPLAY


def held_back(verdict: ReplayVerdict, event_id: int, result: ReplayResult) -> bool:
    """Whether ``verdict`` keeps dead letter ``event_id`` parked; if so, ``result`` says why."""
    if verdict is ReplayVerdict.IN_FLIGHT:
        result.in_flight.append(event_id)
    elif verdict is ReplayVerdict.SUPERSEDED:
        result.superseded.append(event_id)
    else:
        return False
    return True
