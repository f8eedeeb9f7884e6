"""Workers that deliver the outbox: the only place that retries and paces.

One feeder task claims due events per destination (each the oldest pending event
of its key; backlogs drain Ok first, then Critical, Warning, Info) and runs at most
``workers`` attempts at once. Before claiming, it asks the destination's
:class:`~bridge.outbox.pacing.RateLimiter` and
:class:`~bridge.outbox.pacing.CircuitBreaker` how many attempts may start. An
attempt's :class:`Outcome` decides:

* ok → the event leaves the queue (the trail keeps it as delivered) and its key's next event may go;
* retry → it stays at the head of its key and is tried again after a capped
  exponential backoff with jitter, or after ``Retry-After`` when that is longer;
  a 429 also pauses the whole destination (the limit is per integration key);
* give up → it becomes a dead letter, kept with the Flashduty request_id, code and
  message, logged and counted. It no longer blocks its key. A wrong integration key
  (:attr:`Reason.BAD_KEY`) parks every event of its destination: that is said once at
  ERROR per destination (again only after a success or a reload), not once per event.

``attempts`` counts every attempt an event ever had, across replays, so "attempt 3" in
the log is the third request Flashduty saw for that event.

A lane with room in its rate limit and a closed circuit also leases up to ``workers`` events ahead of its
free workers: a worker that frees up starts the next one at once instead of
waiting for a claim to commit, and claims and acks share fewer, larger transactions (measured on a backlog
drain: about 15% less CPU per event and a third more events/s). Leased events are heads of their keys like
any claimed ones, so order holds; an event higher in priority that arrives meanwhile waits behind at most
those. One held for half its lease (its lane was paused meanwhile) is not sent: the lease could run out on
the wire and the event be claimed twice. It is left to its lease and claimed again after it. Stopping leaves them
leased until the outbox closes (PostgreSQL ends a closing replica's leases; SQLite clears them when it opens);
a killed process's leases run out, as those of its attempts in flight do.

When the outbox is shared by several processes (PostgreSQL), so is pacing: claims go through
the outbox's ``rate_limits``, which leases only as many events as the destination's one rate
limit grants (every replica draws on it), and a 429's pause is recorded there for every
replica. The lane's own limiter still runs: it never admits more than the shared one. The
outbox calls ``wake`` when another replica commits events (``subscribe``).

A claim is a lease of ``lease_seconds``: longer than any attempt (an attempt ends within
the destination's timeout), so a lease only runs out when its process died, and then the
key goes to another worker or replica without ever overtaking an attempt still on the wire.

Storage failures (a full disk, I/O errors, a lost database) pause delivery, not the
process: the outbox records them in its ``health`` (the bridge is not ready while one
lasts), and each pass first probes the storage with a durable write; after a probe and
a whole pass succeed, the outbox is healthy again. The gauges (pending, oldest age, dead
letters) are refreshed after every pass, failed or not, so they keep telling the truth
while writes fail; each refresh also prunes the trail (``Outbox.prune_trail``) to its retention and forgets
idle keys (``Outbox.forget_idle_keys``).

Every attempt becomes an :class:`~bridge.outbox.trail.Attempt` (time, outcome, HTTP status,
Flashduty request_id, code, latency), recorded with the ``delivered`` / ``retry_later`` /
``dead`` call it leads to, in the same transaction.

The clock and the random source are injected, so pacing and backoff are testable
without waiting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from bridge.config import DeliveryConfig, RateLimitConfig
from bridge.destinations import INVALID_INTEGRATION_KEY, Destination, Outcome, Reason, Verdict
from bridge.metrics import Metrics
from bridge.outbox.model import Claimed, OutboxUnavailable
from bridge.outbox.pacing import CircuitBreaker, CircuitState, RateLimiter
from bridge.outbox.protocol import Outbox
from bridge.outbox.trail import PRUNE_BATCH, Attempt

log = logging.getLogger("bridge.outbox")

#: How long a claimed event is reserved for its worker, by default; longer than any single attempt.
LEASE_SECONDS = 300.0
#: Added to twice the attempt timeout to make a lease (see ``lease_for``).
LEASE_MARGIN = 10.0
#: Upper bound on idle sleeps, so stats stay fresh and a lost wake-up costs at most this.
IDLE_POLL_SECONDS = 1.0
#: Pause after a 429 without Retry-After.
DEFAULT_429_PAUSE = 1.0
#: How often the gauges are refreshed, and the outbox scanned for destinations without a lane.
STATS_INTERVAL = 1.0
UNKNOWN_SCAN_INTERVAL = 5.0
#: Destination name used for events whose destination is no longer configured.
UNKNOWN_DESTINATION = "unknown_destination"
#: Most trail batches pruned per stats refresh (each its own short transaction).
MAX_PRUNE_BATCHES = 50


def lease_for(attempt_timeout: float) -> float:
    """A lease that outlasts any attempt (each ends within ``attempt_timeout``) with room for its bookkeeping.

    Short enough that a killed replica's keys are taken over within seconds, not minutes.
    """
    return 2 * attempt_timeout + LEASE_MARGIN


def backoff_delay(attempt: int, config: DeliveryConfig, rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1-based): ``min(max, initial·2^(n-1))``, up to 25% earlier.

    The jitter only shortens the delay, so ``backoff_max`` is a true upper bound and
    events that reached the cap still spread out instead of retrying in lockstep.
    """
    base: float = min(config.backoff_max, config.backoff_initial * 2.0 ** min(attempt - 1, 32))
    return base * (0.75 + 0.25 * rand())


@dataclass
class _Lane:
    """Pacing state of one destination."""

    destination: Destination
    limiter: RateLimiter
    circuit: CircuitBreaker
    limits: RateLimitConfig
    #: Flashduty refused this destination's key and no success (or reload) has happened since.
    key_rejected: bool = False
    #: Headroom the shared rate limit reported at its last reservation (None: in-process pacing).
    shared_headroom: dict[str, int] | None = None
    #: The last attempt that failed (for the console's overview), or None.
    last_error: Attempt | None = None
    #: Events leased ahead of free workers (with the time they were claimed), oldest first; see ``_ahead``.
    ready: collections.deque[tuple[float, Claimed]] = field(default_factory=collections.deque)


class Dispatcher:
    """Runs delivery for every destination out of one outbox."""

    def __init__(
        self,
        outbox: Outbox,
        destinations: Mapping[str, Destination],
        metrics: Metrics,
        config: DeliveryConfig,
        rate_limits: Mapping[str, RateLimitConfig] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        stats_interval: float = STATS_INTERVAL,
        scan_interval: float = UNKNOWN_SCAN_INTERVAL,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.outbox = outbox
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        self.config = config
        self._clock = clock
        self._rand = rand
        self._wake = asyncio.Event()
        self._stopping = False
        self._feeder: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        #: Attempts on the wire; a worker is free again once its answer is in, while its outcome is
        #: being recorded, so the next claim can join that record's transaction.
        self._sending = 0
        self._stats_interval, self._scan_interval = stats_interval, scan_interval
        self._stats_due = 0.0
        self._scan_due = 0.0
        self._orphans: list[str] = []
        #: Events leased ahead and then held for half their lease (a paused lane): left to be claimed again.
        self.forgotten_ahead = 0
        #: Asked about a destination with events but no lane before they are parked: True when it added the
        #: lane (a passthrough key another replica sharing the outbox remembered).
        self.adopt: Callable[[str], Awaitable[bool]] | None = None
        self.lanes: dict[str, _Lane] = {}
        self.add_destinations(destinations, rate_limits or {})

    def add_destinations(
        self, destinations: Mapping[str, Destination], rate_limits: Mapping[str, RateLimitConfig]
    ) -> None:
        """Add destinations, or replace them keeping their pacing state (reload).

        Destinations not named here keep their lanes: events already queued for them
        are still delivered with the settings they were routed with.
        """
        for name, destination in destinations.items():
            limits = rate_limits.get(name, RateLimitConfig())
            lane = self.lanes.get(name)
            if lane is None:
                circuit = self.config.circuit
                self.lanes[name] = _Lane(
                    destination,
                    RateLimiter(limits.per_second, limits.per_minute),
                    CircuitBreaker(circuit.failures, circuit.cooldown, circuit.max_cooldown),
                    limits,
                )
                self.metrics.init_destination(name)
            else:
                lane.destination = destination
                lane.limits = limits
                lane.limiter.resize(limits.per_second, limits.per_minute)
                lane.key_rejected = False  # a reload may have fixed the key: say it again if not

    @property
    def held_ahead(self) -> int:
        """Events leased ahead of free workers and not started yet."""
        return sum(len(lane.ready) for lane in self.lanes.values())

    @property
    def running(self) -> bool:
        return self._feeder is not None and not self._feeder.done()

    def circuits(self) -> dict[str, str]:
        """Circuit state per destination, for readiness output."""
        return {name: lane.circuit.state.value for name, lane in self.lanes.items()}

    def start(self) -> None:
        self.outbox.subscribe(self.wake)
        self._feeder = asyncio.get_running_loop().create_task(self._feed(), name="outbox-feeder")

    def wake(self) -> None:
        """New events were committed: look for work now instead of at the next poll."""
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Stop claiming, let in-flight attempts finish (up to ``timeout``), leave the rest queued."""
        self._stopping = True
        self._wake.set()
        if self._feeder is not None:
            await self._feeder
        if self._inflight:
            log.info("waiting up to %.0fs for %d delivery attempts in flight", timeout, len(self._inflight))
            _, pending = await asyncio.wait(self._inflight, timeout=timeout)
            for task in pending:
                task.cancel()  # its lease is cleared when the outbox is opened again
            if pending:
                log.warning("stopped %d delivery attempts still running after %.0fs", len(pending), timeout)
                await asyncio.gather(*pending, return_exceptions=True)

    async def _feed(self) -> None:
        while not self._stopping:
            wake_at: float | None
            try:
                wake_at = await self._pass()
            except OutboxUnavailable:
                # Recorded (and logged once per streak) by the outbox's health; try again shortly.
                wake_at = self._clock() + IDLE_POLL_SECONDS
            except Exception:
                log.exception("delivery loop error; retrying in %.0fs", IDLE_POLL_SECONDS)
                wake_at = self._clock() + IDLE_POLL_SECONDS
            # After every pass, failed or not: the gauges must not freeze while storage fails.
            if self._clock() >= self._stats_due:
                self._stats_due = self._clock() + self._stats_interval
                await self._refresh_stats()
            if wake_at is not None:
                # Lanes held back (429 pause, full window, open circuit) set wake_at from their own
                # schedule, never from a backlog that is due but may not be sent: no busy polling.
                await self._idle(max(0.0, wake_at - self._clock()))

    async def _pass(self) -> float | None:
        """One pass over the lanes, after proving a failing storage works again; when to wake (None: now)."""
        health = self.outbox.health
        failures = health.failures
        if health.problem is not None:
            await self.outbox.probe()  # raises while storage still cannot take a durable write
        wake_at = await self._feed_once()
        # A probe and a whole pass of claims went through, and nothing failed meanwhile.
        health.recovered(failures)
        return wake_at

    async def _feed_once(self) -> float | None:
        """Claim and start what may go now; when to look again (None: at once, more may be due)."""
        started_any = False
        wake_at = self._clock() + IDLE_POLL_SECONDS
        for name in await self._destinations():
            free = self.config.workers - self._sending
            if free <= 0:
                break
            lane = self.lanes.get(name)
            if lane is None and self.adopt is not None and await self.adopt(name):
                lane = self.lanes.get(name)  # another replica's destination (a passthrough key): deliver it
            if lane is None:
                parked = await self._park_unknown(name, free)
                if parked:
                    wake_at = self._clock()  # the rest of that backlog can be parked right away
                else:
                    self._orphans.remove(name)
                continue
            now = self._clock()
            budget = min(free, lane.limiter.available(now))
            allowance = lane.circuit.allowance(now)
            if allowance is not None:
                budget = min(budget, allowance)
            if budget <= 0:
                if lane.circuit.probing:
                    continue  # the probe's end wakes the feeder
                later = (
                    lane.circuit.open_until if lane.circuit.state is CircuitState.OPEN else lane.limiter.next_free(now)
                )
                wake_at = min(wake_at, max(later, now + 0.001))
                continue
            shared = self.outbox.rate_limits
            started = self._start_ready(lane, budget, now)
            started_any |= started > 0
            budget -= started
            ahead = self._ahead(lane, budget, now)
            if budget <= 0 and ahead <= 0:
                continue
            if shared is None:
                claim = await self.outbox.claim(name, budget + ahead, self.lease_seconds)
            else:
                # Every replica draws on the same limit: the claim leases only what it grants.
                limits = lane.limits
                claim, reservation = await shared.claim(
                    name, budget + ahead, self.lease_seconds, limits.per_second, limits.per_minute
                )
                lane.shared_headroom = reservation.headroom
            if claim.next_due is not None:
                # Nothing more is due for this lane now: wake when its next event is.
                wake_at = min(wake_at, claim.next_due)
            if claim.coalesced:
                self.metrics.coalesced.labels(name).inc(claim.coalesced)
            for event in claim.expired:
                self.metrics.dead_lettered.labels(name, "expired").inc()
                log.error(
                    "dead letter: %s %s to %s expired after %.0fs",
                    event.event_status,
                    event.alert_key,
                    name,
                    self.config.retry_horizon,
                )
            # Up to the budget start now; the rest is leased ahead: the next free worker takes it without a claim.
            lane.ready.extend((now, event) for event in claim.events)
            started_any |= self._start_ready(lane, budget, now) > 0
        if started_any and self._sending < self.config.workers:
            return None  # there may be more due right away
        return wake_at

    def _start_ready(self, lane: _Lane, budget: int, now: float) -> int:
        """Start up to ``budget`` of the lane's leased events, oldest first (how many); forget those held for half
        their lease.

        An event held that long (the lane was paced or its circuit opened meanwhile) is not sent: its lease
        may run out while it is on the wire, and then a new claim could send it a second time. It stays
        leased in the outbox until its lease ends, and is claimed again then.
        """
        ready = lane.ready
        while ready and now - ready[0][0] > self.lease_seconds / 2:
            ready.popleft()
            self.forgotten_ahead += 1
        started = 0
        while ready and started < budget:
            _, event = ready.popleft()
            started += 1
            lane.limiter.reserve()
            lane.circuit.started()
            self._spawn(lane, event)
        return started

    def _ahead(self, lane: _Lane, budget: int, now: float) -> int:
        """How many events to lease beyond ``budget``, for workers that free up before the next claim commits.

        Only while nothing holds the lane back (circuit closed, rate limit with room for them). With a shared
        rate limit, the claim draws on it for these too: early, never more than it grants, and one forgotten
        (see ``_start_ready``) leaves its share unused rather than sent twice.
        """
        if lane.circuit.state is not CircuitState.CLOSED:
            return 0
        room = lane.limiter.available(now) - max(budget, 0)
        return max(0, min(self.config.workers - len(lane.ready), room))

    async def _destinations(self) -> list[str]:
        """Destinations to look at: every lane, plus (rarely) ones only the outbox knows.

        Asking the outbox for its destinations scans every key with pending events, which
        is fine now and then but not on every pass over a large backlog.
        """
        if self._clock() >= self._scan_due:
            self._scan_due = self._clock() + self._scan_interval
            self._orphans = [name for name in await self.outbox.destinations() if name not in self.lanes]
        return [*self.lanes, *self._orphans]

    def _spawn(self, lane: _Lane, event: Claimed) -> None:
        self._sending += 1
        task = asyncio.get_running_loop().create_task(self._deliver(lane, event))
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    async def _park_unknown(self, name: str, limit: int) -> int:
        """Events stored for a destination this config no longer has: keep them visible, never drop them."""
        # No coalescing here: every event of a retired destination stays visible.
        claim = await self.outbox.claim(name, limit, self.lease_seconds, coalesce=False)
        for event in claim.events:
            await self.outbox.dead(event.id, UNKNOWN_DESTINATION, f"no destination {name!r} in the config", None)
            self.metrics.dead_lettered.labels(name, UNKNOWN_DESTINATION).inc()
            log.error("dead letter: %s %s for unknown destination %s", event.event_status, event.alert_key, name)
        return len(claim.events)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free and the key's next event may now be due

    async def _idle(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=min(seconds, IDLE_POLL_SECONDS))
        self._wake.clear()

    async def _refresh_stats(self) -> None:
        now = self._clock()
        for name, lane in self.lanes.items():
            lane.circuit.allowance(now)  # let an expired cool-down show as half-open
            self.metrics.circuit_open.labels(name).set(0 if lane.circuit.state is CircuitState.CLOSED else 1)
            headroom = lane.shared_headroom if lane.shared_headroom is not None else lane.limiter.headroom(now)
            for window, left in headroom.items():
                self.metrics.rate_limit_headroom.labels(name, window).set(left)
        try:
            stats = await self.outbox.stats()
            await self._prune()
        except OutboxUnavailable:
            return  # recorded by the outbox's health; the gauges keep their last known values
        self.metrics.outbox_depth.set(stats.pending)
        self.metrics.dead_letters.set(stats.dead)
        oldest = stats.oldest_pending_created_at
        self.metrics.outbox_oldest_age.set(max(0.0, now - oldest) if oldest is not None else 0.0)

    async def _prune(self) -> None:
        """Keep the trail within its retention (full batches mean more is due, up to a bound per refresh),
        and sweep one slice of the key states for keys that are idle for good."""
        for _ in range(MAX_PRUNE_BATCHES):
            if await self.outbox.prune_trail() < PRUNE_BATCH:
                break
        await self.outbox.forget_idle_keys()

    async def _deliver(self, lane: _Lane, event: Claimed) -> None:
        try:
            await self._attempt(lane, event)
        except OutboxUnavailable as exc:
            # The storage failed (recorded in its health); the lease expires and the event is tried
            # again, so the worst case is a duplicate delivery, never a lost event.
            log.warning("recording the delivery of %r failed: %s", event, exc)
        except Exception:
            # Recording the outcome failed (disk, I/O); the lease expires and the event is tried
            # again, so the worst case is a duplicate delivery, never a lost event.
            log.exception("recording the delivery of %r failed", event)

    async def _attempt(self, lane: _Lane, event: Claimed) -> None:
        destination = lane.destination
        started, at = time.perf_counter(), self._clock()
        try:
            outcome = await destination.send(event.body)
        finally:
            # Counted until answered: Flashduty saw it arrive by now, however slow the way there was.
            lane.limiter.stamp(self._clock())
            # The worker is free: the feeder's next claim is queued behind this outcome's record (the
            # outbox commits in arrival order, so it sees this key's next event), often in one transaction.
            self._sending -= 1
            self._wake.set()
        took = time.perf_counter() - started
        metrics = self.metrics
        metrics.child(metrics.attempt_duration, destination.name).observe(took)
        metrics.child(metrics.attempts, destination.name, outcome.verdict.value, outcome.code).inc()
        self._pace(lane, outcome)
        shared = self.outbox.rate_limits
        if shared is not None and outcome.reason is Reason.RATE_LIMITED:
            # Every replica sends to this integration key: all of them pause.
            await shared.pause(destination.name, lane.limiter.paused_until)
        attempt = Attempt(
            at,
            outcome.verdict.value,
            outcome.reason.value,
            outcome.code,
            took,
            outcome.status,
            outcome.request_id,
            outcome.message,
        )
        if outcome.verdict is not Verdict.OK:
            lane.last_error = attempt
        await self._record(lane, event, outcome, attempt)

    def _pace(self, lane: _Lane, outcome: Outcome) -> None:
        """Feed the outcome to the destination's limiter and circuit breaker."""
        now = self._clock()
        if outcome.reason is Reason.RATE_LIMITED:
            pause = min(outcome.retry_after or DEFAULT_429_PAUSE, self.config.retry_after_max)
            lane.limiter.pause(now + pause)
            self.metrics.rate_limited.labels(lane.destination.name).inc()
            lane.circuit.neutral()
        elif outcome.verdict is Verdict.RETRY:
            if lane.circuit.failed(now):
                log.warning(
                    "circuit for %s opened after %d failures; probing again in %.0fs",
                    lane.destination.name,
                    lane.circuit.failures,
                    lane.circuit.cooldown,
                )
        else:
            if lane.circuit.state is not CircuitState.CLOSED:
                log.info("circuit for %s closed: it answers again", lane.destination.name)
            lane.circuit.succeeded()

    async def _record(self, lane: _Lane, event: Claimed, outcome: Outcome, record: Attempt) -> None:
        destination, attempt = lane.destination.name, event.attempts + 1
        if outcome.verdict is Verdict.OK:
            await self.outbox.delivered(event.id, record)
            latency = self.metrics.child(self.metrics.delivery_latency, destination)
            latency.observe(max(0.0, self._clock() - event.created_at))
            log.info(
                "delivered %s %s to %s (attempt %d, request_id %s)",
                event.event_status,
                event.alert_key,
                destination,
                attempt,
                outcome.request_id,
            )
            if lane.key_rejected:
                lane.key_rejected = False
                log.info(
                    "Flashduty accepts the integration key of destination %s again; events parked meanwhile"
                    " wait as dead letters: flashduty-bridge deadletter replay --code %s --destination %s",
                    destination,
                    INVALID_INTEGRATION_KEY,
                    destination,
                )
        elif outcome.verdict is Verdict.RETRY:
            delay = backoff_delay(attempt, self.config, self._rand)
            if outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, self.config.retry_after_max))
            await self.outbox.retry_later(event.id, self._clock() + delay, outcome.code, outcome.message, record)
            log.warning(
                "attempt %d for %s %s to %s failed (%s): %s; retrying in %.1fs",
                attempt,
                event.event_status,
                event.alert_key,
                destination,
                _why(outcome),
                outcome.message,
                delay,
            )
        else:
            await self.outbox.dead(event.id, outcome.code, outcome.message, outcome.request_id, record)
            self.metrics.dead_lettered.labels(destination, outcome.code).inc()
            if outcome.reason is Reason.BAD_KEY and not lane.key_rejected:
                lane.key_rejected = True
                log.error(
                    "destination %s: Flashduty does not accept its integration key (%s, request_id %s: %s);"
                    " every event for it becomes a dead letter with code %s until the key is fixed."
                    " Fix the key, reload, then: flashduty-bridge deadletter replay --code %s --destination %s",
                    destination,
                    _why(outcome),
                    outcome.request_id,
                    outcome.message,
                    INVALID_INTEGRATION_KEY,
                    INVALID_INTEGRATION_KEY,
                    destination,
                )
            # One ERROR per wrong key (above), not one per event it parks.
            level = logging.INFO if outcome.reason is Reason.BAD_KEY else logging.ERROR
            log.log(
                level,
                "dead letter: %s %s to %s after attempt %d (%s, request_id %s): %s",
                event.event_status,
                event.alert_key,
                destination,
                attempt,
                _why(outcome),
                outcome.request_id,
                outcome.message,
            )


def _why(outcome: Outcome) -> str:
    """The code of a failed attempt, with its HTTP status unless the message starts with it.

    ``InternalError, HTTP 500``; ``network``; ``http_5xx`` (its message reads ``HTTP 502: ...``).
    """
    if outcome.status is None or outcome.message.startswith(f"HTTP {outcome.status}"):
        return outcome.code
    return f"{outcome.code}, HTTP {outcome.status}"
