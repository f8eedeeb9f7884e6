"""The in-flight body budget (how many bytes of request bodies the server holds at once), and the
:class:`Isolation` that carries it and the worker pool for a running bridge.

Every request reserves its body's size before the body is read (all of it at once when the
sender declared a Content-Length, chunk by chunk otherwise) and gives it back when the answer is
out. A request that does not fit waits up to ``wait`` seconds, first come first served, then
gets :class:`NoRoom` (503: Alertmanager and Grafana retry). So however many senders post at
once, the bodies held, and what the pipeline builds from them, stay within a bound the pod's
memory limit was sized for (README "Limits").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass

from bridge.config import LimitsConfig
from bridge.workers import Pool


class NoRoom(Exception):
    """No room for this body within the wait: answer 503."""


class InFlight:
    """A byte budget shared by all requests, with a fair (FIFO) wait for room."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def reservation(self) -> Reservation:
        return Reservation(self)

    async def _take(self, size: int) -> None:
        if size > self.limit:
            raise NoRoom(f"a body of {size} bytes is more than limits.max_inflight_bytes ({self.limit})")
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # granted just as the wait ended: give it back
                self._give(size)
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise NoRoom(
                    f"{self.used} bytes of request bodies are in flight and this one did not fit within"
                    f" {self.wait:g} s (limits.max_inflight_bytes, limits.queue_wait); retry"
                ) from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _give(self, size: int) -> None:
        self.used -= size
        while self._waiters:
            size_waiting, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.used + size_waiting > self.limit:
                break  # first come, first served: later (smaller) bodies do not overtake
            self._waiters.popleft()
            self.used += size_waiting
            waiter.set_result(None)


class Reservation:
    """One request's share of the budget; grows as its body does, released once (idempotent)."""

    def __init__(self, budget: InFlight) -> None:
        self.budget = budget
        self.size = 0

    async def grow_to(self, size: int) -> None:
        """Hold at least ``size`` bytes (waits, or raises NoRoom)."""
        if size > self.size:
            await self.budget._take(size - self.size)
            self.size = size

    def release(self) -> None:
        if self.size:
            size, self.size = self.size, 0
            self.budget._give(size)


@dataclass
class Isolation:
    """A running bridge's request limits (read at start): the in-flight budget and the worker pool."""

    limits: LimitsConfig
    inflight: InFlight
    pool: Pool

    @classmethod
    def create(cls, limits: LimitsConfig) -> Isolation:
        pool = Pool(
            limits.workers,
            queue=limits.queue,
            wait=limits.queue_wait,
            cpu_seconds=limits.request_cpu,
            worker_memory=limits.worker_memory,
        )
        return cls(limits, InFlight(limits.max_inflight_bytes, limits.queue_wait), pool)
