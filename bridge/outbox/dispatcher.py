"""Workers that deliver the outbox: the only place that retries.

One feeder task claims due events (each the oldest pending event of its key) and
runs at most ``workers`` attempts at once. An attempt's :class:`Outcome` decides:

* ok → the event is deleted;
* retry → it stays at the head of its key and is tried again after a capped
  exponential backoff with jitter, or after ``Retry-After`` when that is longer;
* give up → it becomes a dead letter, kept with the Flashduty request_id, code and
  message, logged and counted. It no longer blocks its key.

The clock, the sleep and the random source are injected, so backoff is testable
without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping

from bridge.config import DeliveryConfig
from bridge.destinations import Destination, Outcome, Verdict
from bridge.metrics import Metrics
from bridge.outbox.store import Claimed, Outbox

log = logging.getLogger("bridge.outbox")

#: How long a claimed event is reserved for its worker; longer than any single attempt.
LEASE_SECONDS = 300.0
#: Upper bound on idle sleeps, so stats stay fresh and a lost wake-up costs at most this.
IDLE_POLL_SECONDS = 1.0


def backoff_delay(attempt: int, config: DeliveryConfig, rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1-based): ``min(max, initial·2^(n-1))``, up to 25% earlier.

    The jitter only shortens the delay, so ``backoff_max`` is a true upper bound and
    events that reached the cap still spread out instead of retrying in lockstep.
    """
    base: float = min(config.backoff_max, config.backoff_initial * 2.0 ** min(attempt - 1, 32))
    return base * (0.75 + 0.25 * rand())


class Dispatcher:
    """Runs delivery for every destination out of one outbox."""

    def __init__(
        self,
        outbox: Outbox,
        destinations: Mapping[str, Destination],
        metrics: Metrics,
        config: DeliveryConfig,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = outbox
        self.destinations = destinations
        self.metrics = metrics
        self.config = config
        self._clock = clock
        self._rand = rand
        self._wake = asyncio.Event()
        self._stopping = False
        self._feeder: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        for name in destinations:
            metrics.init_destination(name)

    @property
    def running(self) -> bool:
        return self._feeder is not None and not self._feeder.done()

    def start(self) -> None:
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
            _, pending = await asyncio.wait(self._inflight, timeout=timeout)
            for task in pending:
                task.cancel()  # its lease is cleared when the outbox is opened again
            if pending:
                log.warning("stopped %d delivery attempts still running after %.0fs", len(pending), timeout)
                await asyncio.gather(*pending, return_exceptions=True)

    async def _feed(self) -> None:
        while not self._stopping:
            try:
                await self._feed_once()
            except Exception:
                # The outbox failed (disk, I/O): keep the process alive, try again shortly.
                log.exception("delivery loop error; retrying in %.0fs", IDLE_POLL_SECONDS)
                await self._idle(IDLE_POLL_SECONDS)

    async def _feed_once(self) -> None:
        free = self.config.workers - len(self._inflight)
        claimed = await self.outbox.claim(free, LEASE_SECONDS) if free > 0 else []
        for event in claimed:
            task = asyncio.get_running_loop().create_task(self._deliver(event))
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        await self._refresh_stats()
        if claimed and len(self._inflight) < self.config.workers:
            return  # there may be more due right away
        wait = IDLE_POLL_SECONDS
        if len(self._inflight) < self.config.workers:
            next_due = await self.outbox.next_due()
            if next_due is not None:
                wait = min(wait, max(0.0, next_due - self._clock()))
        await self._idle(wait)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free and the key's next event may now be due

    async def _idle(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _refresh_stats(self) -> None:
        stats = await self.outbox.stats()
        self.metrics.outbox_depth.set(stats.pending)
        self.metrics.dead_letters.set(stats.dead)
        oldest = stats.oldest_pending_created_at
        self.metrics.outbox_oldest_age.set(max(0.0, self._clock() - oldest) if oldest is not None else 0.0)

    async def _deliver(self, event: Claimed) -> None:
        try:
            await self._attempt(event)
        except Exception:
            # Recording the outcome failed (disk, I/O); the lease expires and the event is tried
            # again, so the worst case is a duplicate delivery, never a lost event.
            log.exception("recording the delivery of %r failed", event)

    async def _attempt(self, event: Claimed) -> None:
        destination = self.destinations.get(event.destination)
        if destination is None:
            # Stored for a destination this config no longer has: keep it visible, never drop it.
            await self.outbox.dead(event.id, "unknown_destination", f"no destination {event.destination!r}", None)
            self.metrics.dead_lettered.labels(event.destination, "unknown_destination").inc()
            return
        started = time.perf_counter()
        outcome = await destination.send(event.body)
        self.metrics.attempt_duration.labels(destination.name).observe(time.perf_counter() - started)
        self.metrics.attempts.labels(destination.name, outcome.verdict.value, outcome.code).inc()
        await self._record(event, destination.name, outcome)

    async def _record(self, event: Claimed, destination: str, outcome: Outcome) -> None:
        attempt = event.attempts + 1
        if outcome.verdict is Verdict.OK:
            await self.outbox.delivered(event.id)
            self.metrics.delivery_latency.labels(destination).observe(max(0.0, self._clock() - event.created_at))
            log.info(
                "delivered %s %s to %s (attempt %d, request_id %s)",
                event.event_status,
                event.alert_key,
                destination,
                attempt,
                outcome.request_id,
            )
        elif outcome.verdict is Verdict.RETRY:
            delay = backoff_delay(attempt, self.config, self._rand)
            if outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, self.config.retry_after_max))
            await self.outbox.retry_later(event.id, self._clock() + delay, outcome.code, outcome.message)
            log.warning(
                "attempt %d for %s %s to %s failed (%s, %s): %s; retrying in %.1fs",
                attempt,
                event.event_status,
                event.alert_key,
                destination,
                outcome.reason.value,
                outcome.code,
                outcome.message,
                delay,
            )
        else:
            await self.outbox.dead(event.id, outcome.code, outcome.message, outcome.request_id)
            self.metrics.dead_lettered.labels(destination, outcome.code).inc()
            log.error(
                "dead letter: %s %s to %s rejected (%s, %s, request_id %s): %s",
                event.event_status,
                event.alert_key,
                destination,
                outcome.reason.value,
                outcome.code,
                outcome.request_id,
                outcome.message,
            )
