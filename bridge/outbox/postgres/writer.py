"""Group commit for the PostgreSQL outbox: the puts and acks of one moment, one transaction.

Every ``put`` (a webhook request's events) and ``delivered`` (an ack) joins a queue; one
task commits what is queued in one transaction on one connection, and whatever arrives
meanwhile goes into the next: under load a transaction carries many requests and acks, so
the round trips per event fall as the load rises. A transaction:

1. ``BEGIN`` and the advisory locks of every key in the batch, ascending (one round trip);
2. for the puts: the keys' accepted states, then one statement inserting what
   :func:`bridge.outbox.policy.admit` decided (events, key states, new heads);
3. for the acks: one statement (``outbox_delivered``) marking the events delivered (the trail keeps them,
   with their attempts) and advancing their heads
   (a batch of acks alone is just that statement, committed on its own);
4. ``NOTIFY`` (when events were added, so idle replicas wake) and ``COMMIT``; a batch with
   puts commits with ``synchronous_commit = on``: when ``put`` returns, the events are durable.
   A batch of acks alone does not wait for the WAL flush (see the backend).

A deadlock cannot happen between two of these (locks are taken at once, in order); a
serialisation failure or deadlock reported anyway is retried once. Any other failure rolls
the whole transaction back and every caller in it hears about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bridge.outbox import policy
from bridge.outbox.model import NewEvent
from bridge.outbox.postgres import queries
from bridge.outbox.postgres.queries import Conn

log = logging.getLogger("bridge.outbox")

#: SQLSTATEs worth one more try: serialization_failure, deadlock_detected.
RETRYABLE = frozenset({"40001", "40P01"})


@dataclass(slots=True)
class _Write:
    future: asyncio.Future[Any]
    #: A put: one request's events.
    events: Sequence[NewEvent] = ()
    #: A put: the inbound request's id, for the trail.
    request_id: str | None = None
    #: An ack: the delivered event, its key, its attempt's trail step and Flashduty's request_id.
    ack: queries.Ack | None = None

    @property
    def keys(self) -> list[tuple[str, str]]:
        if self.ack is not None:
            return [self.ack[1]]
        return [(e.destination, e.alert_key) for e in self.events]


@dataclass(slots=True)
class Outcome:
    """What one group transaction did, for the outbox's bookkeeping."""

    admission: policy.Admission | None = None
    delivered: int = 0
    results: list[Any] = field(default_factory=list)


class GroupWriter:
    """Queues puts and acks and commits them together, one transaction at a time."""

    def __init__(
        self,
        acquire: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
        admit: Callable[[Conn, Sequence[queries.Request], float], Awaitable[policy.Admission]],
        committed: Callable[[Outcome], None],
        now: Callable[[], float],
    ) -> None:
        self._acquire = acquire
        self._admit = admit
        self._committed = committed
        self._now = now
        self._queued: list[_Write] = []
        self._running = False

    async def put(self, events: Sequence[NewEvent], request_id: str | None = None) -> list[bool] | None:
        result: list[bool] | None = await self._enqueue(_Write(self._future(), events=events, request_id=request_id))
        return result

    async def delivered(self, ack: queries.Ack) -> None:
        await self._enqueue(_Write(self._future(), ack=ack))

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, write: _Write) -> Any:
        self._queued.append(write)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await write.future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let this loop iteration's other requests and acks join
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    outcome = await self._commit(batch)
                except Exception as exc:
                    for write in batch:
                        if not write.future.done():
                            write.future.set_exception(exc)
                    continue
                self._committed(outcome)
                for write, result in zip(batch, outcome.results, strict=True):
                    if not write.future.done():  # its caller may have been cancelled
                        write.future.set_result(result)
        finally:
            self._running = False

    async def _commit(self, batch: list[_Write]) -> Outcome:
        async with self._acquire() as conn:
            for attempt in (1, 2):
                try:
                    return await self._transaction(conn, batch)
                except asyncpg.PostgresError as exc:
                    await _rollback(conn)
                    if attempt == 2 or getattr(exc, "sqlstate", None) not in RETRYABLE:
                        raise
                    log.info("outbox transaction retried after %s", exc.sqlstate)
                except BaseException:
                    await _rollback(conn)
                    raise
        raise AssertionError("unreachable")

    async def _transaction(self, conn: Conn, batch: list[_Write]) -> Outcome:
        now = self._now()
        puts = [(write.events, write.request_id) for write in batch if write.ack is None]
        acks = [write.ack for write in batch if write.ack is not None]
        if not puts:  # acks alone: one statement, committed on its own (not waiting for the WAL flush)
            delivered = await queries.delivered(conn, acks, now)
            return Outcome(delivered=delivered, results=[None] * len(batch))
        # Only a batch that accepts events from senders waits for the WAL flush at COMMIT.
        await conn.execute(queries.lock_statement((key for write in batch for key in write.keys), durable=bool(puts)))
        outcome = Outcome()
        if puts:
            outcome.admission = await self._admit(conn, puts, now)
        if acks:
            outcome.delivered = await queries.delivered(conn, acks, now)
        added = outcome.admission is not None and outcome.admission.added > 0
        await conn.execute(f"NOTIFY {queries.CHANNEL}; COMMIT" if added else "COMMIT")
        results = iter(outcome.admission.results if outcome.admission is not None else [])
        outcome.results = [None if write.ack is not None else next(results) for write in batch]
        return outcome


async def _rollback(conn: Conn) -> None:
    if not conn.is_closed() and conn.is_in_transaction():
        with contextlib.suppress(Exception):
            await conn.execute("ROLLBACK")
