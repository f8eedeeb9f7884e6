"""Pacing per destination: Flashduty's rate limits, and a circuit breaker.

Flashduty allows 100 requests/s and 1000 requests/min per integration key, and
answers 429 beyond either. :class:`RateLimiter` keeps a log of send times and
admits a request only while both windows have room, so in steady state the bridge
never provokes a 429. A request is *reserved* when it is admitted and counts as in
the window from then on; it is *stamped* when its answer came back, and stays in the
window until a window's length after that. Flashduty counts arrivals, and a request
arrives somewhere between being sent and being answered: counting it until its
answer keeps two arrivals a window apart however long a request takes to get there
(a cold connection on a busy machine took over 100 ms). The windows are a little
longer than a second and a minute still (``SECOND_MARGIN``, ``MINUTE_MARGIN``).

:class:`CircuitBreaker` stops hammering a destination that keeps failing: after
``threshold`` consecutive retryable failures it opens for a cool-down (doubling up
to a cap), then lets one probe through (half-open); a success closes it.

Both take the time as an argument, so tests drive them with a fake clock.

:class:`SharedRateLimits` is the same limit kept in storage that several bridge processes
share (the PostgreSQL outbox offers one): the dispatcher claims events through it, each
claim granted only as many sends as the windows allow, and records a 429's pause there, so
every replica together stays within one integration key's limit. Its windows have a wider
margin (``SHARED_SECOND_MARGIN``): a send is recorded when it is claimed, a moment before it
leaves.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from bridge.outbox.model import ClaimResult

#: Seconds added to each window: 1.1 s and 61 s instead of 1 s and 60 s.
SECOND_MARGIN = 0.1
MINUTE_MARGIN = 1.0
_EPSILON = 1e-6
#: The shared limiter's second window: 1.2 s (a send is counted when it is claimed, a moment before it leaves;
#: the replicas' clocks agree with the database's to a round trip).
SHARED_SECOND_MARGIN = 0.2


@dataclass(frozen=True, slots=True)
class Reservation:
    """What the shared rate limit granted with a claim (times on the caller's clock)."""

    #: Sends granted, one per claimed event.
    granted: int
    #: When fewer were granted than events were due: the earliest time another may start.
    next_free: float
    #: Requests left in each window after this grant, for metrics.
    headroom: dict[str, int] = field(default_factory=dict)


class SharedRateLimits(Protocol):
    """One destination's rate limit and 429 pause, shared by every process that uses the same storage."""

    async def claim(
        self, destination: str, limit: int, lease_seconds: float, per_second: int, per_minute: int
    ) -> tuple[ClaimResult, Reservation]:
        """``Outbox.claim``, leasing only as many due events as both windows allow now (none while a 429
        pause lasts), each counted as a send, in one step."""

    async def pause(self, destination: str, until: float) -> None:
        """Flashduty said 429: no replica sends to this destination before ``until``."""


class RateLimiter:
    """Sliding-window admission for one integration key (both windows must have room).

    Each window keeps its own log of send times, trimmed as the window slides and never
    longer than its limit (older sends cannot matter once the window is full), so
    admission costs the same at 100 events/s as at 5,000.
    """

    def __init__(self, per_second: int, per_minute: int) -> None:
        self._reserved = 0  # admitted, not sent yet: they count against both windows
        self._paused_until = 0.0
        self._logs: tuple[deque[float], ...] = ()
        self.resize(per_second, per_minute)

    def resize(self, per_second: int, per_minute: int) -> None:
        """New limits (reload), keeping the log of what was sent."""
        self.windows = ((1.0 + SECOND_MARGIN, per_second), (60.0 + MINUTE_MARGIN, per_minute))
        kept = max(self._logs, key=len, default=deque())  # the minute log holds every recent send
        self._logs = tuple(deque(kept, maxlen=limit) for _, limit in self.windows)

    def _in_windows(self, now: float) -> tuple[deque[float], ...]:
        """Each window's sends, with those that left the window dropped."""
        for (length, _), log in zip(self.windows, self._logs, strict=True):
            while log and log[0] <= now - length:
                log.popleft()
        return self._logs

    def available(self, now: float) -> int:
        """How many requests may start now."""
        if now < self._paused_until:
            return 0
        logs = zip(self.windows, self._in_windows(now), strict=True)
        return max(0, min(limit - len(log) - self._reserved for (_, limit), log in logs))

    def next_free(self, now: float) -> float:
        """The earliest time a request may start (``now`` if one may start now)."""
        ready = max(now, self._paused_until)
        for (length, limit), log in zip(self.windows, self._in_windows(now), strict=True):
            room = limit - self._reserved
            if room <= 0:
                return max(ready, now + length)  # in flight: each answer wakes the feeder, or look again then
            if len(log) >= room:
                # Room appears when the oldest request that fills the window leaves it (a hair after,
                # so float rounding in ``now - length`` cannot leave it counted at that instant).
                ready = max(ready, log[len(log) - room] + length + _EPSILON)
        return ready

    def reserve(self) -> None:
        """A request was admitted; it counts as in flight until :meth:`stamp` records when its answer came."""
        self._reserved += 1

    def stamp(self, now: float) -> None:
        """The reserved request was answered now (it arrived by then): it stays in the windows from ``now``."""
        self._reserved = max(0, self._reserved - 1)
        for log in self._logs:
            log.append(now)

    def take(self, now: float) -> None:
        """Admit, send and be answered at once (reserve and stamp)."""
        self.reserve()
        self.stamp(now)

    def pause(self, until: float) -> None:
        """Flashduty said 429: send nothing to this key before ``until``."""
        self._paused_until = max(self._paused_until, until)

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def headroom(self, now: float) -> dict[str, int]:
        """Requests left in each window now, for metrics."""
        (_, per_second), (_, per_minute) = self.windows
        second, minute = self._in_windows(now)
        used_second, used_minute = len(second) + self._reserved, len(minute) + self._reserved
        return {"second": per_second - used_second, "minute": per_minute - used_minute}


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stop sending to a destination that keeps failing; probe until it recovers."""

    def __init__(self, threshold: int, cooldown: float, max_cooldown: float) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.cooldown = cooldown
        self.open_until = 0.0
        self.probing = False

    def allowance(self, now: float) -> int | None:
        """How many attempts may start now: None for no limit, 0 while open, 1 to probe."""
        if self.state is CircuitState.OPEN and now >= self.open_until:
            self.state = CircuitState.HALF_OPEN
        if self.state is CircuitState.CLOSED:
            return None
        if self.state is CircuitState.OPEN or self.probing:
            return 0
        return 1

    def started(self) -> None:
        if self.state is CircuitState.HALF_OPEN:
            self.probing = True

    def succeeded(self) -> None:
        self.state, self.failures, self.cooldown, self.probing = CircuitState.CLOSED, 0, self.base_cooldown, False

    def failed(self, now: float) -> bool:
        """Record a retryable failure; True when this opened the circuit."""
        self.failures += 1
        was_half_open = self.state is CircuitState.HALF_OPEN
        self.probing = False
        if was_half_open or (self.state is CircuitState.CLOSED and self.failures >= self.threshold):
            if was_half_open:
                self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self.state = CircuitState.OPEN
            self.open_until = now + self.cooldown
            return not was_half_open
        return False

    def neutral(self) -> None:
        """An attempt ended without telling whether the destination is healthy (e.g. rejected)."""
        self.probing = False
