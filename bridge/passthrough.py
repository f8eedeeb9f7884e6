"""Destinations for integration keys that arrive in senders' URLs (``?integration_key=K``): capped, retired when idle.

Each key given in a URL becomes a destination (a delivery lane, metric series and a stored
row, so its events survive a restart). Anyone who can reach the bridge could otherwise make
as many as they like, so:

* **auth first**: a key is only looked at after the source's own authentication passed
  (:mod:`bridge.receive`), and only once the body mapped to events;
* **a cap**: at most ``passthrough_max_keys`` keys at once. A new key over the cap is refused
  with **503** and ``Retry-After``: the sender did nothing wrong and a retry can succeed once an
  idle key retires, and Alertmanager retries a 5xx but drops a 4xx for good (an alert lost);
  keys already in use keep working. Refusals are counted
  (``flashduty_bridge_passthrough_refused_total``); keys in use are a gauge;
* **retirement**: a key unused for ``passthrough_retire_after`` with nothing stored for it
  (no pending event and no dead letter: a dead letter keeps its key so it can be replayed)
  loses its row, lane, metric series and log redaction. Retirement is checked now and then on
  the passthrough path and whenever a new key would exceed the cap, never by a timer.

Races: admitting a known key is synchronous. Creating or retiring one holds a lock, and a
key being retired is marked so that a request for it waits and then creates it afresh, so
no event is ever stored for a destination that has just lost its lane.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bridge import logs
from bridge.config import Config, RateLimitConfig
from bridge.destinations import Destination
from bridge.metrics import Metrics
from bridge.routing import passthrough_destination

log = logging.getLogger("bridge.passthrough")

#: How often, at most, the passthrough path looks for idle keys (besides at the cap).
SWEEP_EVERY_SECONDS = 60.0


class KeyStore(Protocol):
    """Where keys are remembered (the outbox)."""

    async def save_passthrough_key(self, destination: str, integration_key: str) -> None: ...

    async def forget_passthrough_key(self, destination: str) -> bool: ...

    async def passthrough_keys(self) -> dict[str, str]: ...


class Lanes(Protocol):
    """What delivers to destinations (the dispatcher)."""

    lanes: dict[str, Any]

    def add_destinations(
        self, destinations: dict[str, Destination], rate_limits: dict[str, RateLimitConfig]
    ) -> None: ...


class PassthroughRefused(Exception):
    """A new key would exceed ``passthrough_max_keys``; ``retry_after`` is when one may retire."""

    def __init__(self, in_use: int, limit: int, retry_after: int) -> None:
        super().__init__(
            f"passthrough keys at their limit: {in_use} in use (passthrough_max_keys: {limit}); a new key is"
            " taken once an idle one retires (passthrough_retire_after), or name it in destinations"
        )
        self.retry_after = retry_after


@dataclass(slots=True)
class _Key:
    key: str
    last_used: float
    #: Requests between admit() and release(): their events may not be stored yet.
    busy: int = 0


class PassthroughKeys:
    """The passthrough destinations of one running bridge."""

    def __init__(
        self,
        store: KeyStore,
        lanes: Lanes,
        metrics: Metrics,
        config: Callable[[], Config],
        destination: Callable[[str, str], Destination],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store, self._lanes, self._metrics = store, lanes, metrics
        self._config, self._destination, self._clock = config, destination, clock
        self._keys: dict[str, _Key] = {}
        self._retiring: set[str] = set()
        self._lock = asyncio.Lock()
        self._next_sweep = clock() + SWEEP_EVERY_SECONDS

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def restore(self, remembered: dict[str, str]) -> None:
        """Keys stored by an earlier run: their lanes again (events may be queued), idle from now."""
        now = self._clock()
        logs.add_secrets(remembered.values())
        for name, key in remembered.items():
            self._add_lane(name, key)
            self._keys[name] = _Key(key, now)
        self._metrics.passthrough_keys.set(len(self._keys))

    async def adopt(self, name: str) -> bool:
        """A destination with stored events but no lane here: a key another replica (sharing a PostgreSQL
        outbox) took from a URL. Its lane is added when the store remembers it; True if so."""
        if name in self._keys:
            return True
        key = (await self._store.passthrough_keys()).get(name)
        if key is None:
            return False
        self.restore({name: key})
        log.info("passthrough destination %s taken over from the shared outbox", name)
        return True

    async def admit(self, key: str) -> str:
        """The destination for ``key``, created on first use; raises :class:`PassthroughRefused` over the cap.

        Every successful admit must be followed by :meth:`release` once the request's events
        are stored (or were not).
        """
        now = self._clock()
        if now >= self._next_sweep and not self._lock.locked():
            self._next_sweep = now + SWEEP_EVERY_SECONDS
            async with self._lock:
                await self._retire_idle(now)
        name = passthrough_destination(key)
        entry = self._keys.get(name)
        if entry is None or name in self._retiring:
            async with self._lock:
                entry = self._keys.get(name)
                if entry is None:
                    entry = await self._create(name, key, now)
        entry.busy += 1
        entry.last_used = now
        return name

    def release(self, name: str) -> None:
        entry = self._keys.get(name)
        if entry is not None:
            entry.busy -= 1
            entry.last_used = self._clock()

    async def _create(self, name: str, key: str, now: float) -> _Key:
        limit = self._config().passthrough_max_keys
        if len(self._keys) >= limit:
            await self._retire_idle(now)
        if len(self._keys) >= limit:
            self._metrics.passthrough_refused.labels("limit").inc()
            raise PassthroughRefused(len(self._keys), limit, self._retry_after(now))
        logs.add_secrets([key])
        # Stored before any event for it is committed, so a restart can still deliver them.
        await self._store.save_passthrough_key(name, key)
        self._add_lane(name, key)
        entry = self._keys[name] = _Key(key, now)
        self._metrics.passthrough_keys.set(len(self._keys))
        log.info("passthrough destination %s created (%d of %d in use)", name, len(self._keys), limit)
        return entry

    def _add_lane(self, name: str, key: str) -> None:
        self._lanes.add_destinations({name: self._destination(name, key)}, {name: self._config().flashduty.rate_limit})

    def _idle(self, now: float) -> list[str]:
        after = self._config().passthrough_retire_after
        return [name for name, entry in self._keys.items() if entry.busy == 0 and now - entry.last_used >= after]

    def _retry_after(self, now: float) -> int:
        after = self._config().passthrough_retire_after
        waits = [entry.last_used + after - now for entry in self._keys.values() if entry.busy == 0]
        return max(1, math.ceil(min(waits, default=after)))

    async def _retire_idle(self, now: float) -> None:
        """Retire every idle key with nothing stored for it (the caller holds the lock)."""
        for name in self._idle(now):
            self._retiring.add(name)
            try:
                forgotten = await self._store.forget_passthrough_key(name)
            finally:
                self._retiring.discard(name)
            entry = self._keys.get(name)
            if not forgotten or entry is None:
                continue  # events are stored for it (pending, or dead letters to replay): it stays
            if entry.busy:  # admit() waits while a key retires; should one get through, keep it stored
                await self._store.save_passthrough_key(name, entry.key)
                continue
            del self._keys[name]
            self._lanes.lanes.pop(name, None)
            self._metrics.forget_destination(name)
            logs.remove_secrets([entry.key])
            log.info("passthrough destination %s retired after %.0fs unused", name, now - entry.last_used)
        self._metrics.passthrough_keys.set(len(self._keys))
