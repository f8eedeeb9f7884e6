"""Group commit for the SQLite outbox: many requests and deliveries, one transaction, one fsync.

Every write (puts from webhook requests, the dispatcher's claims and acks) joins one
queue, flushed at the end of the event-loop iteration that queued it (a queue of claims and
acks alone one iteration later, so that the claim a finished attempt makes room for joins
its ack); whatever arrives
while a transaction runs is committed together in the next one, in arrival order, so
each write sees the effects of those queued before it. A failure rolls back the whole
transaction and every caller in it hears about it.

Durability: a batch that accepts events from senders (a put) or probes the storage
commits with ``synchronous=FULL`` on the outbox thread, because an fsync must never
stall the event loop; so does every read. A batch of claims and acks alone fsyncs
nothing (``synchronous=NORMAL``: it survives ``kill -9``; a power cut can only lose an
ack, which means one more delivery, never a lost event): when the connection is free
it commits right on the event loop, which costs less than handing it to the thread (a
thread switch and GIL contention on every delivery). Automatic WAL checkpoints are off
for that reason (they fsync inside the commit that triggers them); a checkpoint thread
checkpoints every ``CHECKPOINT_CHANGES`` changed rows instead, on a connection of its own
(``PASSIVE``: it waits for no reader or writer), so a checkpoint copying the WAL and fsyncing
the file never holds up the commits queued behind it.

Every storage failure is recorded in the outbox's :class:`~bridge.outbox.health.StorageHealth`
and reaches the caller as :class:`~bridge.outbox.model.OutboxUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from bridge.outbox.health import StorageHealth
from bridge.outbox.model import NewEvent, OutboxClosed, OutboxUnavailable
from bridge.outbox.sqlite.queries import Queries

T = TypeVar("T")

log = logging.getLogger("bridge.outbox")

#: Rows changed between WAL checkpoints (SQLite's automatic checkpoint is about 1,000 pages).
CHECKPOINT_CHANGES = 5000
#: Loop iterations a batch of bookkeeping alone (claims, acks) waits for more to join it: a worker's
#: answer frees it at once, and the feeder's claim that follows comes one iteration after its ack.
BOOKKEEPING_ITERATIONS = 1


def checkpoint_wal(db: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the database file, as far as no reader needs it (never waits)."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")


#: ``put`` and ``probe`` fsync their commit; ``claim`` and ``record`` (acks, retries, dead letters) do not.
Operation = Literal["put", "probe", "claim", "record"]
#: Bookkeeping work: gets the connection and the transaction's clock reading.
Work = Callable[[sqlite3.Connection, float], Any]


@dataclass(frozen=True, slots=True)
class _Write:
    """One caller's work in the next group transaction, and where its result goes."""

    operation: Operation
    future: asyncio.Future[Any]
    work: Work | None = None
    #: A put: the events of one request, inserted together with the puts next to it.
    events: Sequence[NewEvent] = ()
    #: A put: the inbound request's id, for the trail.
    request_id: str | None = None

    @property
    def durable(self) -> bool:
        """Puts accept events from senders, and a probe stands for a put: their commit is fsynced."""
        return self.operation in ("put", "probe")


class GroupWriter:
    """Owns the connection's use: the outbox thread, the write queue and the checkpoints."""

    def __init__(
        self,
        connection: Callable[[], sqlite3.Connection | None],
        queries: Queries,
        health: StorageHealth,
        clock: Callable[[], float] = time.time,
        path: Path | None = None,
    ) -> None:
        self._connection = connection
        self._path = path  # the database file, for the checkpoint connection (None: checkpoint on the main one)
        self._queries = queries
        self._health = health
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        # Held by whoever uses the connection: the outbox thread, or the event loop for an inline write.
        self._db_lock = threading.Lock()
        # Group commit: writes waiting for the next transaction, and whether one is running.
        self._queued: list[_Write] = []
        self._committing = False
        self._checkpointed_at = 0  # the connection's total_changes at the last checkpoint
        self._checkpointing = False
        self._checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-checkpoint")
        self._checkpoint_db: sqlite3.Connection | None = None

    # -- the connection and the outbox thread ---------------------------------------------

    def conn(self) -> sqlite3.Connection:
        db = self._connection()
        if db is None:
            raise OutboxClosed("outbox is not open")
        return db

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` on the outbox thread, holding the connection."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._locked, func, *args)
        except RuntimeError as exc:  # executor shut down
            raise OutboxClosed("outbox is closed") from exc

    def _locked(self, func: Callable[..., T], *args: Any) -> T:
        with self._db_lock:
            return func(*args)

    def shutdown(self) -> None:
        self.close_checkpoints()
        self._executor.shutdown(wait=True)

    def close_checkpoints(self) -> None:
        """Wait for a running checkpoint and close its connection; call before closing the main one,
        so that the main connection is the last and its close checkpoints and removes the WAL."""
        self._checkpoints.shutdown(wait=True)
        if self._checkpoint_db is not None:
            self._checkpoint_db.close()
            self._checkpoint_db = None

    def transaction(self, work: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run ``work`` in one transaction; ``durable`` fsyncs the commit (events accepted from a sender).

        On failure the pending count goes back to what it was: the work counted changes that were rolled back.
        """
        db = self.conn()
        pending = self._queries.pending
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        try:
            return self._in_transaction(db, work)
        except BaseException:
            self._queries.pending = pending
            raise
        finally:
            if durable:
                db.execute("PRAGMA synchronous=NORMAL")

    @staticmethod
    def _in_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            db.execute("BEGIN IMMEDIATE")
            result = work(db)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise OutboxUnavailable(f"outbox write failed: {exc}") from exc
            raise
        return result

    # -- group commit --------------------------------------------------------------------

    async def put(self, events: Sequence[NewEvent], request_id: str | None = None) -> list[bool] | None:
        """Commit one request's events with the puts next to it; None: no room under max_pending."""
        write = _Write("put", self._future(), events=events, request_id=request_id)
        result: list[bool] | None = await self._enqueue(write)
        return result

    async def write(self, operation: Operation, work: Work) -> Any:
        """Run bookkeeping ``work`` (claims, acks: nothing to fsync) in the next group transaction."""
        return await self._enqueue(_Write(operation, self._future(), work=work))

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, write: _Write) -> Any:
        self._queued.append(write)
        if not self._committing:
            self._committing = True
            # After the callbacks already due in this loop iteration, which may queue more
            # (deliveries finishing together, requests arriving together); bookkeeping a little later.
            asyncio.get_running_loop().call_soon(self._flush_later, 0 if write.durable else BOOKKEEPING_ITERATIONS)
        return await write.future

    def _flush_later(self, iterations: int) -> None:
        """Flush after ``iterations`` more loop iterations, or at once when a put is waiting."""
        if iterations > 0 and not any(write.durable for write in self._queued):
            asyncio.get_running_loop().call_soon(self._flush_later, iterations - 1)
        else:
            self._flush()

    def _flush(self) -> None:
        """Commit what is queued: right here when none of it fsyncs and the connection is free, else on the thread."""
        if any(write.durable for write in self._queued) or not self._db_lock.acquire(blocking=False):
            asyncio.get_running_loop().create_task(self._commit_queued())
            return
        batch, self._queued = self._queued, []
        try:
            outcome: list[Any] | Exception = self._commit(batch)
        except Exception as exc:
            outcome = exc
        finally:
            self._db_lock.release()
            self._committing = False
        self._settle(batch, outcome)
        self._checkpoint_soon()

    async def _commit_queued(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    outcome: list[Any] | Exception = await self.run(self._commit, batch)
                except Exception as exc:
                    outcome = exc
                self._settle(batch, outcome)
        finally:
            self._committing = False
        self._checkpoint_soon()

    def _settle(self, batch: list[_Write], outcome: list[Any] | Exception) -> None:
        """Give every caller in ``batch`` its result, or the failure: every one of them must hear."""
        if isinstance(outcome, Exception):
            failure = (
                outcome
                if isinstance(outcome, OutboxUnavailable)
                else OutboxUnavailable(f"outbox write failed: {outcome}")
            )
            if not isinstance(failure, OutboxClosed):
                cause = failure.__cause__ if isinstance(failure.__cause__, sqlite3.Error) else failure
                for operation in dict.fromkeys(write.operation for write in batch):
                    self._health.failed(operation, cause)
            for write in batch:
                if not write.future.done():
                    write.future.set_exception(failure)
            return
        for write, result in zip(batch, outcome, strict=True):
            if not write.future.done():  # its caller may have been cancelled
                write.future.set_result(result)

    def _commit(self, batch: list[_Write]) -> list[Any]:
        now = self._clock()

        def work(db: sqlite3.Connection) -> list[Any]:
            results: list[Any] = []
            start = 0
            while start < len(batch):
                if batch[start].operation == "put":  # a run of puts: one pass over all their events
                    end = start
                    while end < len(batch) and batch[end].operation == "put":
                        end += 1
                    results += self._queries.insert(db, [(w.events, w.request_id) for w in batch[start:end]], now)
                    start = end
                else:
                    results.append(batch[start].work(db, now))  # type: ignore[misc]
                    start += 1
            return results

        return self.transaction(work, durable=any(write.durable for write in batch))

    # -- checkpoints ---------------------------------------------------------------------

    def _checkpoint_soon(self) -> None:
        """Checkpoint the WAL on the checkpoint thread once enough has changed since the last time."""
        db = self._connection()
        if db is None or self._checkpointing or db.total_changes - self._checkpointed_at < CHECKPOINT_CHANGES:
            return
        self._checkpointing = True
        self._checkpointed_at = db.total_changes
        asyncio.get_running_loop().create_task(self._checkpoint())

    def _checkpoint_on_own_connection(self) -> None:
        if self._checkpoint_db is None:
            assert self._path is not None
            self._checkpoint_db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        checkpoint_wal(self._checkpoint_db)

    async def _checkpoint(self) -> None:
        try:
            if self._path is None:
                await self.run(lambda: checkpoint_wal(self.conn()))
            else:
                await asyncio.get_running_loop().run_in_executor(self._checkpoints, self._checkpoint_on_own_connection)
                # The copy and its fsync are done; a checkpoint on the main connection, with nothing
                # left to copy, lets its next write start the WAL over instead of growing it.
                await self.run(lambda: checkpoint_wal(self.conn()))
        except (OutboxUnavailable, RuntimeError):
            pass  # closed meanwhile (RuntimeError: the executor is shut down): closing checkpoints the WAL itself
        except Exception as exc:  # I/O trouble (a full disk): counted; the next commit will say so too
            self._health.noted("checkpoint", exc)
        finally:
            self._checkpointing = False
