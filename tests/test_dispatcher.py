"""The dispatcher delivers the outbox in per-key order, backs off, honours Retry-After and dead-letters.

The outbox is a real SQLite file under ``tmp_path``; the destination is a scripted fake that records
every call. The clock is fake: tests advance it and call ``wake()`` instead of waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.config import DeliveryConfig
from bridge.destinations import Outcome, Reason, Verdict
from bridge.metrics import Metrics
from bridge.outbox import NewEvent, SqliteOutbox
from bridge.outbox.dispatcher import Dispatcher, backoff_delay
from tests.support.clock import FakeClock

DEST = "flashduty"
OK = Outcome(Verdict.OK, Reason.DELIVERED, request_id="req-ok")


def retry(code: str = "InternalError", retry_after: float | None = None) -> Outcome:
    return Outcome(
        Verdict.RETRY, Reason.SERVER_ERROR, code=code, message="try later", status=500, retry_after=retry_after
    )


class ScriptedDestination:
    """A Destination whose outcomes are scripted per body (consumed in order, then OK); it records every call."""

    def __init__(
        self, name: str = DEST, script: dict[str, list[Outcome]] | None = None, gate: asyncio.Event | None = None
    ) -> None:
        self.name = name
        self.script = {body: list(outcomes) for body, outcomes in (script or {}).items()}
        self.gate = gate
        self.calls: list[str] = []
        self.active = 0
        self.max_active = 0

    async def send(self, body: str) -> Outcome:
        self.calls.append(body)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            queue = self.script.get(body)
            return queue.pop(0) if queue else OK
        finally:
            self.active -= 1


@dataclass
class Harness:
    clock: FakeClock
    registry: CollectorRegistry
    metrics: Metrics
    outbox: SqliteOutbox
    directory: Path
    dispatchers: list[Dispatcher]

    def dispatcher(self, destination: ScriptedDestination, rand: float = 1.0, **config: Any) -> Dispatcher:
        """Start a dispatcher over the outbox with the fake clock and a fixed random value."""
        dispatcher = Dispatcher(
            self.outbox,
            {destination.name: destination},
            self.metrics,
            DeliveryConfig(**config),
            clock=self.clock,
            rand=lambda: rand,
        )
        dispatcher.start()
        self.dispatchers.append(dispatcher)
        return dispatcher

    async def put(self, *events: tuple[str, str], destination: str = DEST) -> None:
        """Commit ``(alert_key, body)`` events in one request."""
        await self.outbox.put(
            [
                NewEvent(destination, key, "alertmanager", "Ok" if body.startswith("ok") else "Critical", body)
                for key, body in events
            ]
        )

    def rows(self) -> dict[str, dict[str, Any]]:
        """Stored events by body, read with a separate plain sqlite3 connection."""
        db = sqlite3.connect(self.outbox.path)
        try:
            db.row_factory = sqlite3.Row
            return {row["body"]: dict(row) for row in db.execute("SELECT * FROM events ORDER BY id")}
        finally:
            db.close()

    async def attempt_recorded(self, body: str, attempt: int) -> dict[str, Any]:
        """Wait until ``attempt`` failed attempts of ``body`` are stored; return its row."""
        await until(lambda: self.rows().get(body, {}).get("attempts") == attempt, f"attempt {attempt} of {body}")
        return self.rows()[body]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    clock = FakeClock()
    registry = CollectorRegistry()
    directory = tmp_path / "outbox"
    outbox = SqliteOutbox(directory, max_pending=1000, clock=clock)
    await outbox.open()
    harness = Harness(clock, registry, Metrics(registry), outbox, directory, [])
    yield harness
    for dispatcher in harness.dispatchers:
        await dispatcher.stop(timeout=5)
    if outbox.is_open:
        await outbox.close()


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after 5 s."""

    async def poll() -> None:
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), 5)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def settle(dispatcher: Dispatcher) -> None:
    """Wake the feeder and let it run a few loop turns (no assertion depends on how long this takes)."""
    for _ in range(3):
        dispatcher.wake()
        await asyncio.sleep(0.02)


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
    await settle(dispatcher)  # the Ok is due, but must stay blocked behind the firing event
    assert destination.calls == ["firing"]

    h.clock.advance(10)
    dispatcher.wake()
    await until(lambda: h.rows() == {}, "both events to be delivered")
    assert destination.calls == ["firing", "firing", "ok-resolved"]


async def test_other_keys_are_delivered_while_one_key_backs_off(h: Harness) -> None:
    """A key waiting for its retry does not hold up events of other keys, old or newly committed."""
    await h.put(("k1", "a1"), ("k2", "b"), ("k1", "a2"))
    destination = ScriptedDestination(script={"a1": [retry()]})
    dispatcher = h.dispatcher(destination, backoff_initial=60)

    await until(lambda: set(h.rows()) == {"a1", "a2"}, "b to be delivered")
    await h.put(("k3", "c"))
    dispatcher.wake()
    await until(lambda: set(h.rows()) == {"a1", "a2"}, "c to be delivered")
    await until(lambda: "c" in destination.calls, "c to be sent")

    assert destination.calls.count("a1") == 1
    assert "a2" not in destination.calls
    stored = h.rows()["a1"]
    assert stored["attempts"] == 1
    assert stored["next_attempt_at"] == pytest.approx(h.clock.now + 60)


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
        due = (await h.attempt_recorded("x", attempt))["next_attempt_at"]
        delays.append(due - h.clock.now)
        h.clock.now = due
        dispatcher.wake()
    await until(lambda: h.rows() == {}, "the sixth attempt to succeed")

    assert delays == pytest.approx([2, 4, 8, 8, 8])
    assert destination.calls == ["x"] * 6


async def test_retry_after_longer_than_backoff_is_honoured_and_capped(h: Harness) -> None:
    """A Retry-After beyond the backoff sets the delay, capped at retry_after_max; a shorter one is ignored."""
    script = {"x": [retry("RequestTooFrequently", retry_after=20), retry("RequestTooFrequently", retry_after=1e6)]}
    script["x"].append(retry("RequestTooFrequently", retry_after=0.5))
    destination = ScriptedDestination(script=script)
    await h.put(("k", "x"))
    dispatcher = h.dispatcher(destination, rand=1.0, backoff_initial=1, backoff_max=60, retry_after_max=30)

    delays = []
    for attempt in (1, 2, 3):
        due = (await h.attempt_recorded("x", attempt))["next_attempt_at"]
        delays.append(due - h.clock.now)
        h.clock.now = due
        dispatcher.wake()
    await until(lambda: h.rows() == {}, "the last attempt to succeed")

    # attempt 1: Retry-After 20 > backoff 1; attempt 2: 1e6 capped to 30; attempt 3: backoff 4 > Retry-After 0.5
    assert delays == pytest.approx([20, 30, 4])


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

    (letter,) = await h.outbox.dead_letters()
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


async def test_attempts_are_counted_by_destination_outcome_and_code(h: Harness) -> None:
    """flashduty_bridge_delivery_attempts_total counts every attempt under its destination, outcome and code."""
    attempts = "flashduty_bridge_delivery_attempts_total"
    destination = ScriptedDestination(script={"x": [retry("InternalError"), retry("RequestTooFrequently")]})
    dispatcher = h.dispatcher(destination, backoff_initial=1)
    for outcome in ("ok", "retry", "give_up"):  # created at zero up front
        assert h.sample(attempts, destination=DEST, outcome=outcome, code="none") == 0

    await h.put(("k", "x"))
    dispatcher.wake()
    for attempt in (1, 2):
        h.clock.now = (await h.attempt_recorded("x", attempt))["next_attempt_at"]
        dispatcher.wake()
    await until(lambda: h.rows() == {}, "delivery")

    assert h.sample(attempts, destination=DEST, outcome="retry", code="InternalError") == 1
    assert h.sample(attempts, destination=DEST, outcome="retry", code="RequestTooFrequently") == 1
    assert h.sample(attempts, destination=DEST, outcome="ok", code="none") == 1
    assert h.sample(attempts, destination=DEST, outcome="give_up", code="none") == 0
    assert h.sample("flashduty_bridge_delivery_attempt_duration_seconds_count", destination=DEST) == 3


# -- stop, unknown destinations, concurrency ---------------------------------------------------------


async def test_stop_waits_for_the_inflight_attempt_and_leaves_the_rest_queued(h: Harness) -> None:
    """stop() lets the running attempt finish and record its outcome, and claims nothing more."""
    gate = asyncio.Event()
    destination = ScriptedDestination(gate=gate)
    await h.put(("k1", "inflight"), ("k2", "queued-1"), ("k1", "queued-2"))
    dispatcher = h.dispatcher(destination, workers=1)
    await until(lambda: destination.active == 1, "the first attempt to start")

    stopping = asyncio.create_task(dispatcher.stop(timeout=30))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # still waiting for the attempt

    gate.set()
    await asyncio.wait_for(stopping, 5)
    assert not dispatcher.running
    assert destination.calls == ["inflight"]
    await h.outbox.close()

    reopened = SqliteOutbox(h.directory, max_pending=1000, clock=h.clock)
    await reopened.open()
    try:
        assert (await reopened.stats()).pending == 2
        assert [c.body for c in await reopened.claim(10, 30)] == ["queued-1", "queued-2"]
    finally:
        await reopened.close()


async def test_stop_cancels_attempts_that_outlast_the_timeout_and_keeps_their_events(h: Harness) -> None:
    """An attempt still running at the stop timeout is cancelled and its event is claimable after a reopen."""
    destination = ScriptedDestination(gate=asyncio.Event())  # never opened
    await h.put(("k", "stuck"))
    dispatcher = h.dispatcher(destination, workers=1)
    await until(lambda: destination.active == 1, "the attempt to start")

    await asyncio.wait_for(dispatcher.stop(timeout=0.05), 5)
    assert destination.active == 0
    await h.outbox.close()

    reopened = SqliteOutbox(h.directory, max_pending=1000, clock=h.clock)
    await reopened.open()
    try:
        assert [c.body for c in await reopened.claim(10, 30)] == ["stuck"]
    finally:
        await reopened.close()


async def test_event_for_an_unknown_destination_becomes_a_dead_letter(h: Harness) -> None:
    """Events stored for a destination the config no longer has are dead-lettered, not dropped and not blocking."""
    await h.put(("k", "orphan-1"), ("k", "orphan-2"), destination="retired")
    await h.put(("k", "kept"))
    destination = ScriptedDestination()
    h.dispatcher(destination)

    await until(lambda: len(h.rows()) == 2 and all(r["state"] == "dead" for r in h.rows().values()), "dead letters")

    letters = await h.outbox.dead_letters()
    assert sorted((d["body"], d["destination"], d["last_code"]) for d in letters) == [
        ("orphan-1", "retired", "unknown_destination"),
        ("orphan-2", "retired", "unknown_destination"),
    ]
    assert destination.calls == ["kept"]
    assert h.sample("flashduty_bridge_dead_lettered_total", destination="retired", code="unknown_destination") == 2


async def test_workers_limit_caps_concurrent_attempts(h: Harness) -> None:
    """No more than ``workers`` attempts run at once, even when more keys are due."""
    gate = asyncio.Event()
    destination = ScriptedDestination(gate=gate)
    await h.put(*((f"k{i}", f"e{i}") for i in range(5)))
    dispatcher = h.dispatcher(destination, workers=2)

    await until(lambda: destination.active == 2, "two attempts to start")
    await settle(dispatcher)
    assert destination.calls == ["e0", "e1"]

    gate.set()
    await until(lambda: h.rows() == {}, "all events to be delivered")
    assert destination.max_active == 2
    assert sorted(destination.calls) == [f"e{i}" for i in range(5)]
