"""The dispatcher delivers the outbox in per-key order and by priority, backs off, honours Retry-After, paces each
destination (rate limit, 429 pause, circuit breaker) and dead-letters.

The outbox is real, on every backend of ``tests.support.outboxes.BACKENDS``; storage failures are injected at
its interface, as the outbox reports them (recorded in its health, raised as OutboxUnavailable) — a real full
disk is in ``test_serve_storage.py``. The destination is a scripted fake that records every call and the
fake-clock time it was made. The clock is fake: tests advance it and call ``wake()`` instead of waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.config import CircuitConfig, DeliveryConfig, RateLimitConfig
from bridge.destinations import INVALID_INTEGRATION_KEY, Outcome, Reason, Verdict
from bridge.metrics import Metrics
from bridge.outbox import (
    Attempt,
    ClaimResult,
    DeadLetterFilter,
    NewEvent,
    Outbox,
    OutboxStats,
    OutboxUnavailable,
    TrailFilter,
)
from bridge.outbox.dispatcher import IDLE_POLL_SECONDS, LEASE_SECONDS, Dispatcher, backoff_delay
from bridge.outbox.pacing import Reservation, SharedRateLimits
from tests.support.clock import FakeClock
from tests.support.outboxes import OutboxBackend

DEST = "flashduty"
OK = Outcome(Verdict.OK, Reason.DELIVERED, request_id="req-ok")
#: Large enough that no test opens the circuit by accident.
NO_CIRCUIT = CircuitConfig(failures=1000)
#: Bounded waits: no test waits longer than this for anything.
WAIT_SECONDS = 5.0


def retry(code: str = "InternalError", retry_after: float | None = None) -> Outcome:
    return Outcome(
        Verdict.RETRY, Reason.SERVER_ERROR, code=code, message="try later", status=500, retry_after=retry_after
    )


def rate_limited(retry_after: float | None) -> Outcome:
    return Outcome(
        Verdict.RETRY,
        Reason.RATE_LIMITED,
        code="RequestTooFrequently",
        message="slow down",
        status=429,
        retry_after=retry_after,
    )


def status_of(body: str) -> str:
    """The event status a test body stands for, by its prefix (``ok``, ``info``, ``warn``; Critical otherwise)."""
    for prefix, status in (("ok", "Ok"), ("info", "Info"), ("warn", "Warning")):
        if body.startswith(prefix):
            return status
    return "Critical"


class ScriptedDestination:
    """A Destination whose outcomes are scripted per body (consumed in order, then OK).

    It records every call with the fake-clock time it was made; ``gates`` hold chosen bodies until released.
    """

    def __init__(
        self,
        name: str = DEST,
        script: dict[str, list[Outcome]] | None = None,
        gate: asyncio.Event | None = None,
        clock: FakeClock | None = None,
        gates: dict[str, asyncio.Event] | None = None,
    ) -> None:
        self.name = name
        self.script = {body: list(outcomes) for body, outcomes in (script or {}).items()}
        self.gate = gate
        self.gates = gates or {}
        self.clock = clock
        self.calls: list[str] = []
        self.times: list[float] = []
        self.active = 0
        self.max_active = 0

    async def send(self, body: str) -> Outcome:
        self.calls.append(body)
        self.times.append(self.clock.now if self.clock is not None else 0.0)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if body in self.gates:
                await self.gates[body].wait()
            queue = self.script.get(body)
            return queue.pop(0) if queue else OK
        finally:
            self.active -= 1


class CountingOutbox:
    """A real outbox, counting feeder passes and claimed events, and failing on request as storage does.

    A feeder pass asks for ``destinations()`` first and refreshes ``stats()`` last, so the two counters tell
    how many passes have started and how many have finished. Operations named in ``failing`` (``claim``,
    ``record``, ``probe``) fail as they do on a full disk: recorded in the outbox's health, raised as
    OutboxUnavailable. Everything else goes to the real outbox.
    """

    def __init__(self, inner: Outbox) -> None:
        self.inner = inner
        self.passes = 0
        self.finished = 0
        self.claimed = 0
        self.forgotten = 0
        self.failing: set[str] = set()
        #: Called once at the next claim: something else failing meanwhile (say, a put).
        self.during_claim: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _storage(self, operation: str) -> None:
        if operation in self.failing:
            error = "database or disk is full"
            self.inner.health.failed(operation, error)
            raise OutboxUnavailable(f"outbox write failed: {error}")

    async def destinations(self) -> list[str]:
        self.passes += 1
        return await self.inner.destinations()

    async def stats(self) -> OutboxStats:
        result = await self.inner.stats()
        self.finished += 1
        return result

    async def claim(self, destination: str, limit: int, lease_seconds: float, *, coalesce: bool = True) -> ClaimResult:
        return await self._claimed(self.inner.claim(destination, limit, lease_seconds, coalesce=coalesce))

    async def _claimed(self, claiming: Awaitable[ClaimResult]) -> ClaimResult:
        try:
            self._storage("claim")
            if self.during_claim is not None:
                hook, self.during_claim = self.during_claim, None
                hook()
        except BaseException:
            claiming.close()  # type: ignore[attr-defined]  # a coroutine never awaited
            raise
        result = await claiming
        self.claimed += len(result.events)
        return result

    @property
    def rate_limits(self) -> CountingRateLimits | None:
        """A shared rate limit claims too (PostgreSQL): counted and failing like ``claim``."""
        shared = self.inner.rate_limits
        return None if shared is None else CountingRateLimits(self, shared)

    async def probe(self) -> None:
        self._storage("probe")
        await self.inner.probe()

    async def delivered(self, event_id: int, attempt: Attempt | None = None) -> None:
        self._storage("record")
        await self.inner.delivered(event_id, attempt)

    async def forget_idle_keys(self) -> int:
        forgotten = await self.inner.forget_idle_keys()
        self.forgotten += forgotten
        return forgotten


class CountingRateLimits:
    """The shared rate limit of a CountingOutbox's outbox, its claims counted by the CountingOutbox."""

    def __init__(self, outer: CountingOutbox, shared: SharedRateLimits) -> None:
        self.outer = outer
        self.shared = shared
        self.windows = getattr(shared, "windows", None)

    async def claim(
        self, destination: str, limit: int, lease_seconds: float, per_second: int, per_minute: int
    ) -> tuple[ClaimResult, Reservation]:
        granted: list[Reservation] = []

        async def claiming() -> ClaimResult:
            result, reservation = await self.shared.claim(destination, limit, lease_seconds, per_second, per_minute)
            granted.append(reservation)
            return result

        result = await self.outer._claimed(claiming())
        return result, granted[0]

    async def pause(self, destination: str, until: float) -> None:
        await self.shared.pause(destination, until)


@dataclass
class Harness:
    clock: FakeClock
    registry: CollectorRegistry
    metrics: Metrics
    outbox: CountingOutbox
    backend: OutboxBackend
    dispatchers: list[Dispatcher]

    def dispatcher(
        self,
        destination: ScriptedDestination,
        rand: float = 1.0,
        rate_limits: Mapping[str, RateLimitConfig] | None = None,
        **config: Any,
    ) -> Dispatcher:
        """Start a dispatcher over the outbox with the fake clock and a fixed random value."""
        config.setdefault("circuit", NO_CIRCUIT)
        dispatcher = Dispatcher(
            self.outbox,  # type: ignore[arg-type]  # an Outbox by delegation
            {destination.name: destination},
            self.metrics,
            DeliveryConfig(**config),
            rate_limits,
            clock=self.clock,
            rand=lambda: rand,
            stats_interval=0.0,  # every pass refreshes stats and scans destinations: the pass counter
            scan_interval=0.0,  # of CountingOutbox relies on it
        )
        dispatcher.start()
        self.dispatchers.append(dispatcher)
        return dispatcher

    async def put(self, *events: tuple[str, str], destination: str = DEST) -> None:
        """Commit ``(alert_key, body)`` events in one request; the status follows the body (see ``status_of``)."""
        await self.outbox.put(
            [NewEvent(destination, key, "alertmanager", status_of(body), body) for key, body in events]
        )

    def rows(self) -> dict[str, dict[str, Any]]:
        """Stored events by body, read independently of the outbox."""
        return {row["body"]: row for row in self.backend.events()}

    async def attempt_recorded(self, body: str, attempt: int) -> dict[str, Any]:
        """Wait until ``attempt`` failed attempts of ``body`` are stored; return its row."""
        await until(lambda: self.rows().get(body, {}).get("attempts") == attempt, f"attempt {attempt} of {body}")
        return self.rows()[body]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    async def run_clock(
        self,
        dispatcher: Dispatcher,
        destination: ScriptedDestination,
        done: Callable[[], bool],
        step: float,
        what: str,
        max_steps: int = 2000,
    ) -> None:
        """Advance the fake clock by ``step`` and wake the dispatcher, over and over, until ``done()`` (bounded).

        The clock moves again only after a whole feeder pass has run at the current fake time and every claimed
        event has reached the destination (or waits, leased ahead, for a free worker; or was held too long and
        left to be claimed again), so each event is sent at the fake time it became sendable, however slow the
        machine is.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        steps = 0
        started = self.outbox.passes
        while not done():
            if loop.time() > deadline or steps >= max_steps:
                pytest.fail(f"timed out waiting for {what} (fake clock at {self.clock.now})")
            sent_or_held = len(destination.calls) + dispatcher.held_ahead + dispatcher.forgotten_ahead
            if self.outbox.finished > started and self.outbox.claimed == sent_or_held:
                self.clock.advance(step)
                steps += 1
                started = self.outbox.passes  # the next pass to finish must start after this advance
            dispatcher.wake()
            await asyncio.sleep(0.001)


@pytest.fixture
async def h(backend: OutboxBackend) -> AsyncIterator[Harness]:
    clock = FakeClock()
    registry = CollectorRegistry()
    outbox = CountingOutbox(backend.make(max_pending=1000, max_age=3600, clock=clock))
    await outbox.open()
    harness = Harness(clock, registry, Metrics(registry), outbox, backend, [])
    yield harness
    for dispatcher in harness.dispatchers:
        await dispatcher.stop(timeout=WAIT_SECONDS)
    await outbox.close()


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after WAIT_SECONDS."""

    async def poll() -> None:
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), WAIT_SECONDS)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def settle(h: Harness, dispatcher: Dispatcher, destination: ScriptedDestination, passes: int = 2) -> None:
    """Wake the feeder until ``passes`` whole passes that began after this call have finished, and every event
    they claimed has reached the destination (or waits, leased ahead, for a free worker): whatever the feeder
    would do now, it has done.

    A signal, not a sleep: ``CountingOutbox`` counts passes started and finished (the harness refreshes stats
    and scans destinations on every pass), and claimed events against the destination's calls.
    """
    target = h.outbox.passes + passes

    def done() -> bool:
        dispatcher.wake()
        sent_or_held = len(destination.calls) + dispatcher.held_ahead + dispatcher.forgotten_ahead
        return h.outbox.finished >= target and h.outbox.claimed == sent_or_held

    await until(done, f"{passes} feeder passes")


def record_idles(dispatcher: Dispatcher) -> list[tuple[float, bool]]:
    """Record every sleep the feeder asks for: (seconds, whether a wake-up was already pending)."""
    idles: list[tuple[float, bool]] = []
    sleep = dispatcher._idle

    async def idle(seconds: float) -> None:
        idles.append((seconds, dispatcher._wake.is_set()))
        await sleep(seconds)

    dispatcher._idle = idle  # type: ignore[method-assign]
    return idles


async def next_sleep(dispatcher: Dispatcher, idles: list[tuple[float, bool]]) -> float:
    """Wake the feeder once; the sleep it asks for after a whole pass that began after the wake-up."""
    mark = len(idles)
    dispatcher.wake()
    await until(lambda: any(not pending for _, pending in idles[mark:]), "the feeder to go back to sleep")
    return next(seconds for seconds, pending in idles[mark:] if not pending)


def max_in_any_window(times: list[float], length: float) -> int:
    """The largest number of ``times`` (sorted) in any half-open window ``(t - length, t]``."""
    best, first = 0, 0
    for last, now in enumerate(times):
        while times[first] <= now - length + 1e-9:
            first += 1
        best = max(best, last - first + 1)
    return best


# -- delivery ----------------------------------------------------------------------------------


async def test_events_are_delivered_and_deleted(h: Harness) -> None:
    """Every committed event is sent once and then removed from the outbox."""
    await h.put(("k1", "a"), ("k2", "b"), ("k3", "c"))
    destination = ScriptedDestination()
    h.dispatcher(destination)

    await until(lambda: len(destination.calls) == 3, "three sends")
    await until(lambda: h.rows() == {}, "the outbox to empty")

    assert destination.calls == ["a", "b", "c"]
    assert (await h.outbox.stats()).pending == 0
    assert h.sample("flashduty_bridge_delivery_attempts_total", destination=DEST, outcome="ok", code="none") == 3
    assert h.sample("flashduty_bridge_delivery_latency_seconds_count", destination=DEST) == 3


async def test_a_retried_firing_event_is_never_overtaken_by_the_ok_of_its_key(h: Harness) -> None:
    """When the firing event is retried, the Ok of the same key waits behind it: send order firing, firing, Ok."""
    await h.put(("k", "firing"), ("k", "ok-resolved"))
    destination = ScriptedDestination(script={"firing": [retry()]})
    dispatcher = h.dispatcher(destination, backoff_initial=10)

    await h.attempt_recorded("firing", 1)
    await settle(h, dispatcher, destination)  # the Ok is due, but must stay blocked behind the firing event
    assert destination.calls == ["firing"]

    h.clock.advance(10)
    dispatcher.wake()
    await until(lambda: h.rows() == {}, "both events to be delivered")
    assert destination.calls == ["firing", "firing", "ok-resolved"]


async def test_other_keys_are_delivered_while_one_key_backs_off(h: Harness) -> None:
    """A key waiting for its retry does not hold up events of other keys, old or newly committed."""
    await h.put(("k1", "a1"), ("k2", "b"), ("k1", "ok-a2"))
    destination = ScriptedDestination(script={"a1": [retry()]})
    dispatcher = h.dispatcher(destination, backoff_initial=60)

    await until(lambda: set(h.rows()) == {"a1", "ok-a2"}, "b to be delivered")
    await h.put(("k3", "c"))
    dispatcher.wake()
    await until(lambda: "c" in destination.calls, "c to be sent")
    await until(lambda: set(h.rows()) == {"a1", "ok-a2"}, "c to be delivered")

    assert destination.calls.count("a1") == 1
    assert "ok-a2" not in destination.calls
    stored = h.rows()["a1"]
    assert stored["attempts"] == 1
    assert stored["last_code"] == "InternalError"


async def test_backlog_drains_ok_first_then_critical_then_info(h: Harness) -> None:
    """With Info, Critical and Ok heads waiting, one worker sends the Ok, then the Critical, then the Info."""
    await h.put(("k1", "info-1"), ("k2", "critical-1"), ("k3", "ok-1"), ("k4", "warn-1"), ("k5", "ok-2"))
    destination = ScriptedDestination()
    h.dispatcher(destination, workers=1)

    await until(lambda: h.rows() == {}, "the backlog to drain")

    assert destination.calls == ["ok-1", "ok-2", "critical-1", "warn-1", "info-1"]


async def test_superseded_firing_states_are_skipped_and_counted_as_coalesced(h: Harness) -> None:
    """F1, F2, F3, Ok of one key: only F3 and the Ok are sent, and events_coalesced_total counts the two skipped."""
    await h.put(("k", "f1"), ("k", "warn-f2"), ("k", "f3"), ("k", "ok"))
    destination = ScriptedDestination()
    h.dispatcher(destination)

    await until(lambda: h.rows() == {}, "the key to drain")

    assert destination.calls == ["f3", "ok"]
    assert h.sample("flashduty_bridge_events_coalesced_total", destination=DEST) == 2
    assert (await h.outbox.stats()).dead == 0


async def test_events_past_the_outbox_max_age_are_dead_lettered_as_expired(h: Harness) -> None:
    """An event pending longer than max_age is not sent; it is counted under code "expired" and its key moves on."""
    await h.put(("k", "stale"), ("j", "stale-too"))
    h.clock.advance(3000)
    await h.put(("k", "ok-fresh"))
    h.clock.advance(601)  # the first two are 3601 s old, past max_age 3600
    destination = ScriptedDestination()
    h.dispatcher(destination)

    await until(lambda: "ok-fresh" not in h.rows(), "the fresh event to be delivered")

    assert destination.calls == ["ok-fresh"]
    assert h.sample("flashduty_bridge_dead_lettered_total", destination=DEST, code="expired") == 2
    letters = await h.outbox.dead_letters(DeadLetterFilter(code="expired"))
    assert sorted(letter["body"] for letter in letters) == ["stale", "stale-too"]
    await until(lambda: h.sample("flashduty_bridge_dead_letters") == 2, "the dead letter gauge")


# -- backoff and Retry-After ---------------------------------------------------------------------


def test_backoff_delay_grows_exponentially_and_is_capped() -> None:
    """backoff_delay doubles per attempt from backoff_initial up to backoff_max, jittered up to 25% earlier."""
    config = DeliveryConfig(backoff_initial=1, backoff_max=60)

    assert [backoff_delay(n, config, lambda: 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(n, config, lambda: 0.0) for n in (1, 3, 7, 8)] == [0.75, 3.0, 45.0, 45.0]
    assert [backoff_delay(n, config, lambda: 0.5) for n in (1, 3)] == [0.875, 3.5]
    assert backoff_delay(10_000, config, lambda: 1.0) == 60  # no overflow for huge attempt numbers


def test_backoff_delay_never_exceeds_backoff_max() -> None:
    """Whatever the jitter, no retry waits longer than backoff_max."""
    config = DeliveryConfig(backoff_initial=1, backoff_max=60)

    assert max(backoff_delay(n, config, lambda: 1.0) for n in range(1, 12)) <= 60


async def test_stored_next_attempt_follows_the_capped_exponential_backoff(h: Harness) -> None:
    """Each failed attempt schedules the next one backoff_delay(n) later on the injected clock."""
    destination = ScriptedDestination(script={"x": [retry()] * 5})
    await h.put(("k", "x"))
    dispatcher = h.dispatcher(destination, rand=1.0, backoff_initial=2, backoff_max=8)

    delays = []
    for attempt in range(1, 6):
        due = await head_due(h, "x", attempt)
        delays.append(due - h.clock.now)
        h.clock.now = due
        dispatcher.wake()
    await until(lambda: h.rows() == {}, "the sixth attempt to succeed")

    assert delays == pytest.approx([2, 4, 8, 8, 8])
    assert destination.calls == ["x"] * 6


async def head_due(h: Harness, body: str, attempt: int) -> float:
    """Wait until ``attempt`` failed attempts of ``body`` are stored; return when its key's head is due again.

    Only for tests with a single pending key: then the outbox's next due time is that head's.
    """
    await h.attempt_recorded(body, attempt)
    due = await h.outbox.next_due()
    assert due is not None
    return due


async def test_retry_after_longer_than_backoff_is_honoured_and_capped(h: Harness) -> None:
    """A Retry-After beyond the backoff sets the delay, capped at retry_after_max; a shorter one is ignored."""
    script = {"x": [retry("InternalError", retry_after=20), retry("InternalError", retry_after=1e6)]}
    script["x"].append(retry("InternalError", retry_after=0.5))
    destination = ScriptedDestination(script=script)
    await h.put(("k", "x"))
    dispatcher = h.dispatcher(destination, rand=1.0, backoff_initial=1, backoff_max=60, retry_after_max=30)

    delays = []
    for attempt in (1, 2, 3):
        due = await head_due(h, "x", attempt)
        delays.append(due - h.clock.now)
        h.clock.now = due
        dispatcher.wake()
    await until(lambda: h.rows() == {}, "the last attempt to succeed")

    # attempt 1: Retry-After 20 > backoff 1; attempt 2: 1e6 capped to 30; attempt 3: backoff 4 > Retry-After 0.5
    assert delays == pytest.approx([20, 30, 4])


# -- pacing: rate limit, 429, circuit breaker ------------------------------------------------------------


async def test_sends_never_exceed_the_rate_limit_on_the_fake_clock(h: Harness) -> None:
    """With per_second=5, 20 due events go out in bursts of at most 5 per limiter window (and per Flashduty second)."""
    await h.put(*((f"k{i}", f"e{i}") for i in range(20)))
    destination = ScriptedDestination(clock=h.clock)
    dispatcher = h.dispatcher(destination, rate_limits={DEST: RateLimitConfig(per_second=5, per_minute=1000)})
    (second, _), _ = dispatcher.lanes[DEST].limiter.windows
    shared = h.outbox.rate_limits
    if shared is not None:  # a rate limit shared by replicas has the wider window: it decides
        (second, _) = shared.windows

    await h.run_clock(dispatcher, destination, lambda: len(destination.calls) == 20, step=0.05, what="20 sends")

    times = destination.times
    assert sorted(destination.calls) == sorted(f"e{i}" for i in range(20))
    assert times == sorted(times)
    assert max_in_any_window(times, second) <= 5
    assert max_in_any_window(times, 1.0) <= 5
    assert all(b - a >= second - 1e-9 for a, b in zip(times, times[5:], strict=False))
    # Not over-cautious either: four bursts, each as soon as the window allows (to one clock step).
    assert times[-1] - times[0] <= 3 * (second + 0.05) + 1e-6
    await until(lambda: h.rows() == {}, "all deliveries to be recorded")


async def test_rate_limit_headroom_gauge_follows_the_sends(h: Harness) -> None:
    """rate_limit_headroom shows the requests left in each window after a burst."""
    await h.put(*((f"k{i}", f"e{i}") for i in range(3)))
    destination = ScriptedDestination(clock=h.clock)
    dispatcher = h.dispatcher(destination, rate_limits={DEST: RateLimitConfig(per_second=5, per_minute=50)})

    await until(lambda: h.rows() == {}, "three deliveries")
    await settle(h, dispatcher, destination)

    assert h.sample("flashduty_bridge_rate_limit_headroom", destination=DEST, window="second") == 2
    assert h.sample("flashduty_bridge_rate_limit_headroom", destination=DEST, window="minute") == 47


async def test_a_429_pauses_the_whole_destination_until_retry_after(h: Harness) -> None:
    """RATE_LIMITED with retry_after=3 stops every send to the destination for 3 s and counts rate_limited_total."""
    await h.put(("k1", "first"), ("k2", "second"), ("k3", "third"))
    destination = ScriptedDestination(script={"first": [rate_limited(retry_after=3)]}, clock=h.clock)
    # One failure would open the circuit, so this also shows a 429 does not count as a failure.
    dispatcher = h.dispatcher(
        destination, workers=1, backoff_initial=1, circuit=CircuitConfig(failures=1, cooldown=100)
    )
    await h.attempt_recorded("first", 1)
    paused_at = h.clock.now

    await h.run_clock(
        dispatcher, destination, lambda: h.rows() == {}, step=0.25, what="the backlog to drain after the pause"
    )

    assert destination.calls[0] == "first"
    assert sorted(destination.calls[1:]) == ["first", "second", "third"]
    assert all(t >= paused_at + 3 for t in destination.times[1:]), destination.times
    assert destination.times[1] <= paused_at + 3 + 0.25 + 1e-9  # and sending resumes as soon as the pause ends
    assert h.sample("flashduty_bridge_rate_limited_total", destination=DEST) == 1
    assert (
        h.sample(
            "flashduty_bridge_delivery_attempts_total", destination=DEST, outcome="retry", code="RequestTooFrequently"
        )
        == 1
    )
    assert dispatcher.circuits() == {DEST: "closed"}
    assert h.sample("flashduty_bridge_circuit_open", destination=DEST) == 0


async def test_a_429_without_retry_after_pauses_for_a_default_second(h: Harness) -> None:
    """A 429 with no Retry-After still pauses the destination, for DEFAULT_429_PAUSE (1 s)."""
    await h.put(("k1", "first"), ("k2", "second"))
    destination = ScriptedDestination(script={"first": [rate_limited(retry_after=None)]}, clock=h.clock)
    dispatcher = h.dispatcher(destination, workers=1, backoff_initial=30)
    await h.attempt_recorded("first", 1)
    paused_at = h.clock.now

    await h.run_clock(dispatcher, destination, lambda: "second" in destination.calls, step=0.1, what="the second send")

    assert destination.times[1] >= paused_at + 1.0 - 1e-9
    assert destination.times[1] <= paused_at + 1.1 + 1e-9


async def test_circuit_opens_after_consecutive_failures_then_one_probe_closes_it(h: Harness) -> None:
    """3 retryable failures open the circuit: nothing is sent until the cool-down, then one probe, then the backlog."""
    failing = [f"fail-{i}" for i in range(3)]
    backlog = [f"later-{i}" for i in range(5)]
    await h.put(*((f"key-{body}", body) for body in failing + backlog))
    probe_gate = asyncio.Event()
    destination = ScriptedDestination(
        script={body: [retry()] for body in failing}, clock=h.clock, gates={"later-0": probe_gate}
    )
    dispatcher = h.dispatcher(
        destination, workers=3, backoff_initial=1000, circuit=CircuitConfig(failures=3, cooldown=10, max_cooldown=40)
    )

    await until(lambda: h.sample("flashduty_bridge_circuit_open", destination=DEST) == 1, "the circuit to open")
    opened_at = h.clock.now
    assert destination.calls == failing
    assert dispatcher.circuits() == {DEST: "open"}

    # Nothing goes out during the cool-down, however often the dispatcher is woken.
    h.clock.now = opened_at + 9.9
    await settle(h, dispatcher, destination)
    assert destination.calls == failing

    # After it, exactly one probe, though three workers are free and five events are due.
    h.clock.now = opened_at + 10
    dispatcher.wake()
    await until(lambda: destination.active == 1, "the probe to start")
    await settle(h, dispatcher, destination)
    assert destination.calls == [*failing, "later-0"]
    assert dispatcher.circuits() == {DEST: "half_open"}
    assert h.sample("flashduty_bridge_circuit_open", destination=DEST) == 1

    probe_gate.set()  # the probe succeeds: the circuit closes and the backlog drains
    await until(lambda: set(h.rows()) == set(failing), "the backlog to drain")
    assert sorted(destination.calls[3:]) == backlog
    assert dispatcher.circuits() == {DEST: "closed"}
    await settle(h, dispatcher, destination)
    assert h.sample("flashduty_bridge_circuit_open", destination=DEST) == 0


async def test_failed_probe_reopens_the_circuit_for_a_doubled_cooldown(h: Harness) -> None:
    """When the probe fails too, the next probe waits twice the cool-down."""
    await h.put(*((f"k{i}", f"e{i}") for i in range(4)))
    destination = ScriptedDestination(script={f"e{i}": [retry()] for i in range(3)}, clock=h.clock)
    dispatcher = h.dispatcher(
        destination, workers=1, backoff_initial=1000, circuit=CircuitConfig(failures=2, cooldown=10, max_cooldown=40)
    )
    await until(lambda: dispatcher.circuits() == {DEST: "open"} and len(destination.calls) == 2, "the circuit to open")
    opened_at = h.clock.now

    h.clock.now = opened_at + 10
    dispatcher.wake()
    await until(lambda: len(destination.calls) == 3, "the first probe")
    await h.attempt_recorded("e2", 1)
    assert dispatcher.circuits() == {DEST: "open"}

    h.clock.now = opened_at + 10 + 19.9
    await settle(h, dispatcher, destination)
    assert len(destination.calls) == 3
    h.clock.now = opened_at + 10 + 20
    dispatcher.wake()
    await until(lambda: h.rows().keys() == {"e0", "e1", "e2"}, "the second probe to succeed")
    assert destination.calls == ["e0", "e1", "e2", "e3"]
    assert dispatcher.circuits() == {DEST: "closed"}


async def test_a_rejected_event_resets_the_circuit_failure_count(h: Harness) -> None:
    """A GIVE_UP answer proves the destination is up: failures before it do not add up with failures after it."""
    rejected = Outcome(Verdict.GIVE_UP, Reason.REJECTED, code="InvalidParameter", message="bad", status=400)
    await h.put(("k1", "f1"), ("k2", "bad"), ("k3", "f2"), ("k4", "after"))
    destination = ScriptedDestination(script={"f1": [retry()], "bad": [rejected], "f2": [retry()]})
    dispatcher = h.dispatcher(destination, workers=1, backoff_initial=1000, circuit=CircuitConfig(failures=2))

    await until(lambda: "after" in destination.calls, "every event to be tried")
    assert dispatcher.circuits() == {DEST: "closed"}


@pytest.mark.parametrize("held_by", ["429 pause", "open circuit"])
async def test_feeder_sleeps_while_the_destination_is_held_back(h: Harness, held_by: str) -> None:
    """While the only destination may not be sent to, the feeder sleeps until the next poll instead of polling
    the outbox in a loop (the fake clock is frozen: nothing becomes due sooner)."""
    await h.put(("k1", "first"), ("k2", "waiting"))
    outcome = rate_limited(retry_after=60) if held_by == "429 pause" else retry()
    destination = ScriptedDestination(script={"first": [outcome]})
    dispatcher = h.dispatcher(
        destination, workers=1, backoff_initial=1000, circuit=CircuitConfig(failures=1, cooldown=60)
    )
    idles = record_idles(dispatcher)
    await h.attempt_recorded("first", 1)

    assert await next_sleep(dispatcher, idles) == pytest.approx(IDLE_POLL_SECONDS)
    assert destination.calls == ["first"]


async def test_feeder_sleeps_while_a_half_open_probe_is_in_flight(h: Harness) -> None:
    """While the single probe of a half-open circuit runs, the feeder sleeps though workers are free and events due."""
    await h.put(("k0", "fail-0"), ("k1", "fail-1"), ("k2", "probe"), ("k3", "waiting"))
    gate = asyncio.Event()
    destination = ScriptedDestination(script={"fail-0": [retry()], "fail-1": [retry()]}, gates={"probe": gate})
    dispatcher = h.dispatcher(
        destination, workers=2, backoff_initial=1000, circuit=CircuitConfig(failures=2, cooldown=10)
    )
    idles = record_idles(dispatcher)
    try:
        await h.attempt_recorded("fail-1", 1)
        await until(lambda: dispatcher.circuits() == {DEST: "open"}, "the circuit to open")
        h.clock.advance(10)
        dispatcher.wake()
        await until(lambda: destination.active == 1, "the probe to start")

        assert await next_sleep(dispatcher, idles) == pytest.approx(IDLE_POLL_SECONDS)
        assert destination.calls == ["fail-0", "fail-1", "probe"]
    finally:
        gate.set()


# -- give up, metrics -----------------------------------------------------------------------------


async def test_give_up_makes_a_dead_letter_with_reason_and_counts_it(h: Harness) -> None:
    """A GIVE_UP outcome parks the event with request_id, code and message, counts it, and unblocks the key."""
    rejected = Outcome(
        Verdict.GIVE_UP,
        Reason.REJECTED,
        code="InvalidParameter",
        message="title_rule is required",
        request_id="req-dead",
        status=400,
    )
    destination = ScriptedDestination(script={"bad": [rejected]})
    await h.put(("k", "bad"), ("k", "ok-after"))
    h.dispatcher(destination)

    await until(lambda: list(h.rows()) == ["bad"], "the next event of the key to be delivered")

    (letter,) = await h.outbox.dead_letters(DeadLetterFilter())
    assert letter["body"] == "bad"
    assert (letter["request_id"], letter["last_code"], letter["last_error"]) == (
        "req-dead",
        "InvalidParameter",
        "title_rule is required",
    )
    assert destination.calls == ["bad", "ok-after"]
    assert h.sample("flashduty_bridge_dead_lettered_total", destination=DEST, code="InvalidParameter") == 1
    assert (
        h.sample(
            "flashduty_bridge_delivery_attempts_total", destination=DEST, outcome="give_up", code="InvalidParameter"
        )
        == 1
    )
    assert (await h.outbox.stats()).dead == 1


def bad_key(request_id: str = "req-key") -> Outcome:
    return Outcome(
        Verdict.GIVE_UP,
        Reason.BAD_KEY,
        code=INVALID_INTEGRATION_KEY,
        message="integration_key is not a valid one (Flashduty code InvalidParameter)",
        request_id=request_id,
        status=400,
    )


def dispatcher_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bridge.outbox" and r.levelno >= logging.ERROR]


async def test_a_wrong_key_is_one_error_per_destination_not_one_per_event(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Every event to a destination with a wrong key is parked (code InvalidIntegrationKey), but only the first
    says so at ERROR, naming the destination and the fix; a success ends the episode, so the next one is logged."""
    caplog.set_level(logging.INFO, logger="bridge.outbox")
    await h.put(*((f"k{i}", f"e{i}") for i in range(5)))
    destination = ScriptedDestination(script={f"e{i}": [bad_key(f"req-{i}")] for i in range(5)})
    dispatcher = h.dispatcher(destination, workers=1)
    await until(lambda: h.rows() and all(row["state"] == "dead" for row in h.rows().values()), "five dead letters")

    (error,) = dispatcher_errors(caplog)
    assert "destination flashduty" in error and "InvalidIntegrationKey" in error
    assert "deadletter replay --code InvalidIntegrationKey --destination flashduty" in error
    letters = await h.outbox.dead_letters(DeadLetterFilter(code=INVALID_INTEGRATION_KEY))
    assert [letter["body"] for letter in letters] == [f"e{i}" for i in range(5)]
    assert h.sample("flashduty_bridge_dead_lettered_total", destination=DEST, code=INVALID_INTEGRATION_KEY) == 5

    # The key is fixed: a delivery succeeds (logged), and a later wrong key is a new episode with its own ERROR.
    await h.put(("k9", "fine"))
    dispatcher.wake()
    await until(lambda: "fine" in destination.calls and "fine" not in h.rows(), "the delivery with a good key")
    # Logged once the delivery is recorded, which the row's state may show a moment before.
    await until(
        lambda: any(
            "accepts the integration key of destination flashduty again" in r.getMessage() for r in caplog.records
        ),
        "the key to be logged as accepted again",
    )
    destination.script["broken-again"] = [bad_key()]
    await h.put(("k10", "broken-again"))
    dispatcher.wake()
    await until(lambda: len(dispatcher_errors(caplog)) == 2, "the second episode's error")


async def test_the_bad_key_series_exist_at_zero_for_every_destination(h: Harness) -> None:
    """increase() sees the first wrong-key dead letter only if its series existed before it: created up front."""
    h.metrics.init_destination("db")
    assert h.sample("flashduty_bridge_dead_lettered_total", destination="db", code=INVALID_INTEGRATION_KEY) == 0
    attempts = "flashduty_bridge_delivery_attempts_total"
    assert h.sample(attempts, destination="db", outcome="give_up", code=INVALID_INTEGRATION_KEY) == 0


DOUBLED_WORD = re.compile(r"\b(\w+)\W+\1\b", re.IGNORECASE)


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(Verdict.RETRY, Reason.NETWORK, "network", "ConnectError: refused"),
        Outcome(Verdict.RETRY, Reason.TIMEOUT, "timeout", "ReadTimeout: no complete answer within 3s"),
        Outcome(Verdict.RETRY, Reason.SERVER_ERROR, "InternalError", "oops", "req-1", 500),
        Outcome(Verdict.RETRY, Reason.RATE_LIMITED, "http_429", "HTTP 429: slow", None, 429),
        Outcome(Verdict.GIVE_UP, Reason.REJECTED, "InvalidParameter", "title_rule: required", "req-2", 400),
        Outcome(Verdict.GIVE_UP, Reason.BAD_RESPONSE, "bad_response", "HTTP 200: <html>", None, 200),
    ],
    ids=lambda outcome: outcome.code,
)
async def test_delivery_log_lines_say_each_thing_once(
    h: Harness, caplog: pytest.LogCaptureFixture, outcome: Outcome
) -> None:
    """No "(network, network)" or "rejected (rejected, ...": the code is said once, with the HTTP status if any."""
    caplog.set_level(logging.INFO, logger="bridge.outbox")
    await h.put(("k", "x"))
    destination = ScriptedDestination(script={"x": [outcome]})
    h.dispatcher(destination, backoff_initial=1000)
    await until(lambda: any(outcome.code in r.getMessage() for r in caplog.records), "the attempt's log line")
    (line,) = [r.getMessage() for r in caplog.records if outcome.code in r.getMessage()]
    assert not DOUBLED_WORD.search(line), line
    assert line.count(outcome.code) == 1, line
    if outcome.status is not None:
        assert f"HTTP {outcome.status}" in line, line  # in the code part or the message


async def test_a_replayed_event_logs_its_real_attempt_number(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Replay does not erase history: the delivery after a replay is logged as the event's second attempt."""
    caplog.set_level(logging.INFO, logger="bridge.outbox")
    rejected = Outcome(Verdict.GIVE_UP, Reason.AUTH, code="Unauthorized", message="revoked", status=401)
    await h.put(("k", "x"))
    destination = ScriptedDestination(script={"x": [rejected]})
    h.dispatcher(destination)
    await until(lambda: h.rows().get("x", {}).get("state") == "dead", "the dead letter")
    result = await h.outbox.replay(DeadLetterFilter())
    assert result.replayed and (await h.outbox.dead_letters(DeadLetterFilter())) == []
    h.dispatchers[0].wake()
    # The log line follows the ack's commit (a shared database shows the commit first): wait for the line.
    await until(lambda: any(r.getMessage().startswith("delivered") for r in caplog.records), "the replayed delivery")
    assert h.rows() == {}
    (delivered,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("delivered")]
    assert "(attempt 2," in delivered, delivered


async def test_attempts_are_counted_by_destination_outcome_and_code(h: Harness) -> None:
    """flashduty_bridge_delivery_attempts_total counts every attempt under its destination, outcome and code."""
    attempts = "flashduty_bridge_delivery_attempts_total"
    destination = ScriptedDestination(script={"x": [retry("InternalError"), retry("ServiceUnavailable")]})
    dispatcher = h.dispatcher(destination, backoff_initial=1)
    for outcome in ("ok", "retry", "give_up"):  # created at zero up front
        assert h.sample(attempts, destination=DEST, outcome=outcome, code="none") == 0
    for name in ("events_coalesced_total", "rate_limited_total", "circuit_open"):
        assert h.sample(f"flashduty_bridge_{name}", destination=DEST) == 0

    await h.put(("k", "x"))
    dispatcher.wake()
    for attempt in (1, 2):
        h.clock.now = await head_due(h, "x", attempt)
        dispatcher.wake()
    await until(lambda: h.rows() == {}, "delivery")

    assert h.sample(attempts, destination=DEST, outcome="retry", code="InternalError") == 1
    assert h.sample(attempts, destination=DEST, outcome="retry", code="ServiceUnavailable") == 1
    assert h.sample(attempts, destination=DEST, outcome="ok", code="none") == 1
    assert h.sample(attempts, destination=DEST, outcome="give_up", code="none") == 0
    assert h.sample("flashduty_bridge_delivery_attempt_duration_seconds_count", destination=DEST) == 3


async def test_outbox_gauges_follow_the_backlog(h: Harness) -> None:
    """outbox_pending and outbox_oldest_pending_age_seconds report the backlog on the fake clock."""
    gate = asyncio.Event()
    await h.put(("k1", "a"), ("k2", "b"))
    h.clock.advance(42)
    destination = ScriptedDestination(gate=gate)
    dispatcher = h.dispatcher(destination)

    await until(lambda: h.sample("flashduty_bridge_outbox_pending") == 2, "the pending gauge")
    assert h.sample("flashduty_bridge_outbox_oldest_pending_age_seconds") == 42
    gate.set()
    await until(lambda: h.rows() == {}, "delivery")
    await settle(h, dispatcher, destination)
    assert h.sample("flashduty_bridge_outbox_pending") == 0
    assert h.sample("flashduty_bridge_outbox_oldest_pending_age_seconds") == 0


# -- storage failures ----------------------------------------------------------------------------------


async def test_gauges_keep_refreshing_while_claims_fail(h: Harness) -> None:
    """With every claim failing (a full disk), pending and oldest age still tell the truth and keep moving.

    Regression: the refresh came after the claims in a pass, so a pass that failed at its claim never
    refreshed them; a bridge restarted on a full disk showed 0 pending with 50 waiting, forever.
    """
    await h.put(*((f"k{i}", f"e{i}") for i in range(50)))
    h.clock.advance(42)
    h.outbox.failing = {"claim", "probe"}
    destination = ScriptedDestination()
    dispatcher = h.dispatcher(destination)

    await until(lambda: h.sample("flashduty_bridge_outbox_pending") == 50, "the pending gauge")
    await until(lambda: h.sample("flashduty_bridge_outbox_oldest_pending_age_seconds") == 42, "the age gauge")
    h.clock.advance(10)
    dispatcher.wake()
    await until(lambda: h.sample("flashduty_bridge_outbox_oldest_pending_age_seconds") == 52, "the age to move on")

    assert destination.calls == []
    assert h.outbox.health.problem is not None
    assert "database or disk is full" in h.outbox.health.problem


async def test_a_storage_failure_lasts_until_a_probe_and_a_whole_pass_succeed(h: Harness) -> None:
    """Failing claims make the outbox unhealthy; it stays so while the probe fails, and recovers, delivering, after."""
    await h.put(("k1", "a"), ("k2", "b"))
    h.outbox.failing = {"claim", "probe"}
    destination = ScriptedDestination()
    dispatcher = h.dispatcher(destination)
    await until(lambda: h.outbox.health.problem is not None, "the claim failure to be recorded")

    h.outbox.failing = {"probe"}  # claims would work now, but the storage has not proved it takes writes
    passes = h.outbox.finished
    await until(lambda: h.outbox.finished > passes + 2, "a few more passes")
    assert h.outbox.health.problem is not None
    assert destination.calls == []

    h.outbox.failing = set()
    dispatcher.wake()
    await until(lambda: h.rows() == {}, "the backlog to be delivered")
    assert h.outbox.health.problem is None
    assert sorted(destination.calls) == ["a", "b"]


async def test_a_failure_during_a_pass_is_not_cleared_by_that_pass(h: Harness) -> None:
    """A put failing while a pass runs keeps the outbox unhealthy: only a later probe and pass may clear it."""
    await h.put(("k", "e"))
    h.outbox.failing = {"probe"}
    h.outbox.during_claim = lambda: h.outbox.inner.health.failed("put", "database or disk is full")
    destination = ScriptedDestination()
    dispatcher = h.dispatcher(destination)
    await until(lambda: h.rows() == {}, "the event to be delivered")
    passes = h.outbox.finished
    await until(lambda: h.outbox.finished > passes + 2, "a few more passes")
    await settle(h, dispatcher, destination)

    assert h.outbox.health.problem == "probe failed: database or disk is full"  # the next passes probed


async def test_an_ack_that_cannot_be_recorded_keeps_the_event_for_another_attempt(h: Harness) -> None:
    """The destination took the event but the ack failed: it stays leased, is sent again after the lease, never lost."""
    await h.put(("k", "once-more"))
    failures: list[str] = []
    h.outbox.health.listener = failures.append
    h.outbox.failing = {"record"}
    destination = ScriptedDestination()
    dispatcher = h.dispatcher(destination)
    await until(lambda: failures == ["record"], "the failed ack to be recorded")
    h.outbox.failing = set()
    await settle(h, dispatcher, destination)
    assert destination.calls == ["once-more"]  # leased: not sent again before the lease runs out
    assert set(h.rows()) == {"once-more"}

    h.clock.advance(LEASE_SECONDS)
    dispatcher.wake()
    await until(lambda: h.rows() == {}, "the second attempt to be recorded")
    assert destination.calls == ["once-more", "once-more"]
    assert h.outbox.health.problem is None


# -- stop, unknown destinations, concurrency ---------------------------------------------------------


async def test_stop_waits_for_the_inflight_attempt_and_leaves_the_rest_queued(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() lets the running attempt finish and record its outcome, and claims nothing more."""
    gate = asyncio.Event()
    destination = ScriptedDestination(gate=gate)
    await h.put(("k1", "inflight"), ("k2", "queued-1"), ("k1", "ok-queued-2"))
    dispatcher = h.dispatcher(destination, workers=1)
    await until(lambda: destination.active == 1, "the first attempt to start")

    caplog.set_level(logging.INFO, logger="bridge.outbox")
    stopping = asyncio.create_task(dispatcher.stop(timeout=30))
    await until(lambda: any("in flight" in r.getMessage() for r in caplog.records), "stop() to wait for the attempt")
    assert not stopping.done()  # still waiting for the attempt

    gate.set()
    await asyncio.wait_for(stopping, WAIT_SECONDS)
    assert not dispatcher.running
    assert destination.calls == ["inflight"]
    await h.outbox.close()

    reopened = h.backend.make(max_pending=1000, clock=h.clock)
    await reopened.open()
    try:
        assert (await reopened.stats()).pending == 2
        assert [c.body for c in (await reopened.claim(DEST, 10, 30)).events] == ["ok-queued-2", "queued-1"]
    finally:
        await reopened.close()


async def test_stop_cancels_attempts_that_outlast_the_timeout_and_keeps_their_events(h: Harness) -> None:
    """An attempt still running at the stop timeout is cancelled and its event is claimable after a reopen."""
    destination = ScriptedDestination(gate=asyncio.Event())  # never opened
    await h.put(("k", "stuck"))
    dispatcher = h.dispatcher(destination, workers=1)
    await until(lambda: destination.active == 1, "the attempt to start")

    await asyncio.wait_for(dispatcher.stop(timeout=0.05), WAIT_SECONDS)
    assert destination.active == 0
    await h.outbox.close()

    reopened = h.backend.make(max_pending=1000, clock=h.clock)
    await reopened.open()
    try:
        assert [c.body for c in (await reopened.claim(DEST, 10, 30)).events] == ["stuck"]
    finally:
        await reopened.close()


async def test_event_for_an_unknown_destination_becomes_a_dead_letter(h: Harness) -> None:
    """Events stored for a destination the config no longer has are dead-lettered, not dropped and not blocking."""
    await h.put(("k1", "orphan-1"), ("k2", "orphan-2"), ("k1", "ok-orphan-3"), destination="retired")
    await h.put(("k", "kept"))
    destination = ScriptedDestination()
    h.dispatcher(destination)

    await until(lambda: len(h.rows()) == 3 and all(r["state"] == "dead" for r in h.rows().values()), "dead letters")

    letters = await h.outbox.dead_letters(DeadLetterFilter())
    assert sorted((d["body"], d["destination"], d["last_code"]) for d in letters) == [
        ("ok-orphan-3", "retired", "unknown_destination"),
        ("orphan-1", "retired", "unknown_destination"),
        ("orphan-2", "retired", "unknown_destination"),
    ]
    assert destination.calls == ["kept"]
    assert h.sample("flashduty_bridge_dead_lettered_total", destination="retired", code="unknown_destination") == 3
    assert await h.outbox.destinations() == []


async def test_every_event_for_an_unknown_destination_is_kept_as_a_dead_letter(h: Harness) -> None:
    """Two firing events of one key for a retired destination both stay visible as dead letters."""
    await h.put(("k", "orphan-1"), ("k", "orphan-2"), destination="retired")
    destination = ScriptedDestination()
    h.dispatcher(destination)

    await until(lambda: all(r["state"] == "dead" for r in h.rows().values()), "dead letters")

    letters = await h.outbox.dead_letters(DeadLetterFilter())
    assert sorted(d["body"] for d in letters) == ["orphan-1", "orphan-2"]


async def test_a_retired_destinations_backlog_is_parked_without_waiting_for_idle_polls(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All queued events of one key for a retired destination become dead letters without relying on the idle poll."""
    monkeypatch.setattr("bridge.outbox.dispatcher.IDLE_POLL_SECONDS", 60.0)  # only real wake-ups make progress
    await h.put(("k", "ok-1"), ("k", "ok-2"), ("k", "ok-3"), destination="retired")
    h.dispatcher(ScriptedDestination())

    # The count follows the commit (a shared database shows the row first): wait for both.
    await until(
        lambda: (
            h.sample("flashduty_bridge_dead_lettered_total", destination="retired", code="unknown_destination") == 3
        ),
        "three dead letters counted",
    )
    assert [r["state"] for r in h.rows().values()] == ["dead"] * 3


async def test_workers_limit_caps_concurrent_attempts(h: Harness) -> None:
    """No more than ``workers`` attempts run at once, even when more keys are due."""
    gate = asyncio.Event()
    destination = ScriptedDestination(gate=gate)
    await h.put(*((f"k{i}", f"e{i}") for i in range(5)))
    dispatcher = h.dispatcher(destination, workers=2)

    await until(lambda: destination.active == 2, "two attempts to start")
    await settle(h, dispatcher, destination)
    assert destination.calls == ["e0", "e1"]

    gate.set()
    await until(lambda: h.rows() == {}, "all events to be delivered")
    assert destination.max_active == 2
    assert sorted(destination.calls) == [f"e{i}" for i in range(5)]
    assert await h.outbox.stats() == OutboxStats(pending=0, dead=0, oldest_pending_created_at=None)


async def test_busy_workers_have_the_next_events_leased_ahead_each_sent_once(h: Harness) -> None:
    """While every worker is busy, the lane leases as many events again, so a worker that frees up starts the next
    one without waiting for a claim to commit; each event still goes out exactly once, one attempt per key."""
    ahead = 2
    gate = asyncio.Event()
    destination = ScriptedDestination(gate=gate)
    await h.put(*((f"k{i}", f"e{i}") for i in range(7)))
    dispatcher = h.dispatcher(destination, workers=2)

    await until(lambda: destination.active == 2, "two attempts to start")
    await settle(h, dispatcher, destination)
    assert destination.calls == ["e0", "e1"]
    assert dispatcher.held_ahead == ahead
    assert h.outbox.claimed == 2 + ahead  # leased: no other claim can take those keys meanwhile

    gate.set()
    await until(lambda: h.rows() == {}, "all events to be delivered")
    assert sorted(destination.calls) == [f"e{i}" for i in range(7)]
    assert destination.max_active == 2
    assert dispatcher.held_ahead == 0


async def test_events_leased_ahead_and_held_for_half_their_lease_are_claimed_again_not_sent_twice(
    h: Harness,
) -> None:
    """A 429 pauses the lane for longer than half a lease: the event leased ahead is not sent on a lease that may
    run out on the wire; it is left to its lease and claimed again, and goes out once."""
    await h.put(("k1", "first"), ("k2", "second"), ("k3", "third"))
    destination = ScriptedDestination(script={"first": [rate_limited(retry_after=200)]}, clock=h.clock)
    dispatcher = h.dispatcher(destination, workers=1, backoff_initial=1)
    leased_at = h.clock.now
    await h.attempt_recorded("first", 1)
    ahead = 1
    assert dispatcher.held_ahead == ahead  # "second", leased ahead before the 429 came

    await h.run_clock(dispatcher, destination, lambda: h.rows() == {}, step=5, what="the backlog to drain")

    assert destination.calls[0] == "first"
    assert sorted(destination.calls[1:]) == ["first", "second", "third"]  # each once after the pause
    if ahead:  # not sent on the lease taken 200 s before; claimed again once it ran out
        assert destination.times[destination.calls.index("second")] >= leased_at + LEASE_SECONDS
    assert dispatcher.forgotten_ahead == ahead


async def test_default_dispatcher_scans_the_outbox_for_destinations_only_now_and_then(backend: OutboxBackend) -> None:
    """With the default intervals, idle passes do not rescan every key nor recount the outbox each time."""
    clock = FakeClock()
    outbox = CountingOutbox(backend.make(max_pending=10, clock=clock))
    await outbox.open()
    dispatcher = Dispatcher(outbox, {}, Metrics(CollectorRegistry()), DeliveryConfig(), {}, clock=clock)  # type: ignore[arg-type]
    idles = record_idles(dispatcher)
    dispatcher.start()
    try:
        for _ in range(20):  # 20 whole passes, each woken up
            await next_sleep(dispatcher, idles)
        assert outbox.passes == 1  # scanned once; the fake clock never moved 5 s
        assert outbox.finished == 1
        clock.advance(6)
        await next_sleep(dispatcher, idles)
        assert outbox.passes == 2 and outbox.finished == 2
    finally:
        await dispatcher.stop(timeout=1)
        await outbox.close()


# -- the trail ----------------------------------------------------------------------------------------


async def test_every_attempt_is_recorded_in_the_trail_from_its_outcome(h: Harness) -> None:
    """Each attempt's outcome, code, HTTP status and Flashduty request id reach the event's trail, in order; the
    lane remembers its last failure for the console."""
    rejected = Outcome(Verdict.GIVE_UP, Reason.REJECTED, "InvalidParameter", "bad title", "req-dead", 400)
    destination = ScriptedDestination(script={"x": [retry()], "bad": [rejected]}, clock=h.clock)
    await h.put(("k", "x"), ("j", "bad"))
    dispatcher = h.dispatcher(destination, backoff_initial=10)
    await h.attempt_recorded("x", 1)
    h.clock.advance(10)
    dispatcher.wake()
    await until(lambda: list(h.rows()) == ["bad"], "x to be delivered and bad to be a dead letter")

    delivered, dead = sorted(await h.outbox.trail(TrailFilter()), key=lambda e: e.alert_key != "k")
    assert [(s["outcome"], s["code"], s["status"], s["request_id"], s["at"]) for s in delivered.steps] == [
        ("retry", "InternalError", 500, None, 1000.0),
        ("ok", "none", None, "req-ok", 1010.0),
    ]
    assert all(s["latency_ms"] >= 0 for s in delivered.steps)
    assert (delivered.outcome, delivered.request_id) == ("delivered", "req-ok")
    assert [(s["outcome"], s["code"], s["status"], s["message"]) for s in dead.steps] == [
        ("give_up", "InvalidParameter", 400, "bad title")
    ]
    last = dispatcher.lanes[DEST].last_error  # whichever of the two failures finished last; not the later success
    assert last is not None and (last.at, last.code) in ((1000.0, "InvalidParameter"), (1000.0, "InternalError"))


async def test_the_delivery_loop_forgets_the_state_of_keys_idle_for_good(h: Harness) -> None:
    """Two keys delivered and idle: a later pass of the loop sweeps their states away (which keys may go is
    the outbox contract's test)."""
    await h.put(("k1", "a"), ("k2", "b"))
    dispatcher = h.dispatcher(ScriptedDestination())
    await until(lambda: h.rows() == {}, "both to be delivered")
    h.clock.advance(3600)
    dispatcher.wake()
    await until(lambda: h.outbox.forgotten == 2, "the idle keys to be forgotten")


async def test_the_delivery_loop_prunes_the_trail_past_its_retention(h: Harness) -> None:
    """Delivered events stay in the trail for max_age (24 h by default); the loop removes them afterwards."""
    await h.put(("k1", "a"), ("k2", "b"))
    dispatcher = h.dispatcher(ScriptedDestination())
    await until(lambda: h.rows() == {}, "both to be delivered")
    assert len(await h.outbox.trail(TrailFilter())) == 2

    h.clock.advance(24 * 3600 + 1)
    dispatcher.wake()

    async def pruned() -> bool:
        return await h.outbox.trail(TrailFilter()) == []

    await until(pruned, "the trail to be pruned")
