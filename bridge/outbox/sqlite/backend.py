"""The embedded outbox: one SQLite file, ``outbox.sqlite3``, under ``storage.path``.

SQLite runs in WAL mode. Commits that accept events run with ``synchronous=FULL``:
when :meth:`SqliteOutbox.put` returns, the events are on disk and survive ``kill -9``
and power loss (see :mod:`~bridge.outbox.sqlite.writer` for group commit and what
bookkeeping commits promise). One process per file: ``outbox.lock`` next to it stops a
second bridge, which would break the per-key order, and ``open`` refuses a damaged,
emptied or foreign file (see :mod:`~bridge.outbox.sqlite.integrity`).

This class wires the pieces together: the lock and checks at ``open``, the schema
(:mod:`~bridge.outbox.sqlite.schema`), the statements (:mod:`~bridge.outbox.sqlite.queries`)
and the group-commit writer. Reads and dead-letter operations run on the outbox thread.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bridge.outbox.health import StorageHealth
from bridge.outbox.model import (
    ClaimResult,
    DeadLetterFilter,
    NewEvent,
    OpenRefused,
    OutboxFull,
    OutboxStats,
    OutboxUnavailable,
    ReplayResult,
)
from bridge.outbox.sqlite.integrity import DirectoryLock, check_database, check_file, damaged, is_damage
from bridge.outbox.sqlite.queries import TRAIL_SLICE, Queries
from bridge.outbox.sqlite.schema import prepare
from bridge.outbox.sqlite.writer import GroupWriter
from bridge.outbox.trail import Attempt, Retention, TrailEvent, TrailFilter, attempt_step, step

T = TypeVar("T")

FILENAME = "outbox.sqlite3"


class SqliteOutbox:
    """The embedded outbox: one SQLite file under ``storage.path``."""

    def __init__(
        self,
        directory: Path,
        *,
        max_pending: int,
        max_age: float | None = None,
        refresh_interval: float = 0.0,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.path = directory / FILENAME
        self.max_pending = max_pending
        self._clock = clock
        self.health = StorageHealth(clock)
        self._db: sqlite3.Connection | None = None
        self._lock = DirectoryLock(directory)
        self._queries = Queries(
            max_pending=max_pending,
            max_age=max_age,
            refresh_interval=refresh_interval,
            clock=clock,
            retention=retention,
        )
        self._writer = GroupWriter(lambda: self._db, self._queries, self.health, clock, path=self.path)
        self._closed = False

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def rate_limits(self) -> None:
        """One process per file: the dispatcher's own rate limiter is the whole truth."""
        return None

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Only this process writes the file, and it wakes its dispatcher itself."""

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        await self._writer.run(self._open)

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(self.path)
        except OSError as exc:
            raise OpenRefused(f"outbox {self.path} cannot be opened: {exc.strerror or exc}") from None
        try:
            check_file(self.path, self._lock)
            self._db = self._connect()
            self._lock.write(self._lock.outbox_since or time.time())
        except BaseException:
            self._close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise OpenRefused(f"outbox {self.path} cannot be opened: {exc}") from None
        try:
            check_database(db, self.path)
            self._queries.pending = prepare(db, self.path)
        except sqlite3.Error as exc:
            db.close()
            if is_damage(exc):
                raise damaged(self.path, str(exc)) from None
            raise OpenRefused(f"outbox {self.path} cannot be opened: {exc}") from None
        except BaseException:
            db.close()
            raise
        return db

    async def close(self) -> None:
        if self._closed:
            return
        await self._writer.run(self._close)
        self._closed = True
        self._writer.shutdown()

    def _close(self) -> None:
        self._writer.close_checkpoints()  # first: the main connection must be the last to close
        if self._db is not None:
            self._db.close()
            self._db = None
        self._lock.release()

    async def probe(self) -> None:
        await self._writer.write("probe", self._queries.heartbeat)

    async def _read(self, operation: str, func: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``func`` on the outbox thread; a storage failure is recorded and raised as OutboxUnavailable."""

        def read() -> T:
            return func(self._writer.conn())

        try:
            return await self._writer.run(read)
        except sqlite3.Error as exc:
            self.health.failed(operation, exc)
            raise OutboxUnavailable(f"outbox {operation} failed: {exc}") from exc

    async def _admin(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in its own transaction on the outbox thread (dead-letter operations)."""
        try:
            return await self._writer.run(self._writer.transaction, work)
        except OutboxUnavailable as exc:
            if isinstance(exc.__cause__, sqlite3.Error):
                self.health.failed("admin", exc.__cause__)
            raise

    # -- intake ------------------------------------------------------------------------

    async def put(self, events: Sequence[NewEvent], *, request_id: str | None = None) -> list[bool]:
        if not events:
            return []
        stored = await self._writer.put(events, request_id)
        if stored is None:
            raise OutboxFull(f"outbox holds {self.max_pending} pending events")
        return stored

    async def save_passthrough_key(self, destination: str, integration_key: str) -> None:
        """Remember a key from a sender's URL, so its queued events can be delivered after a restart.

        It commits without an fsync of its own: the put that follows fsyncs the WAL, this row included.
        """
        await self._read("put", lambda db: self._queries.save_passthrough_key(db, destination, integration_key))

    async def forget_passthrough_key(self, destination: str) -> bool:
        forgotten: bool = await self._writer.write(
            "record", lambda db, now: self._queries.forget_passthrough_key(db, destination)
        )
        return forgotten

    async def passthrough_keys(self) -> dict[str, str]:
        return await self._read("read", self._queries.passthrough_keys)

    # -- delivery ----------------------------------------------------------------------

    async def destinations(self) -> list[str]:
        return await self._read("read", self._queries.destinations)

    async def claim(self, destination: str, limit: int, lease_seconds: float, *, coalesce: bool = True) -> ClaimResult:
        def work(db: sqlite3.Connection, now: float) -> ClaimResult:
            return self._queries.claim(db, now, destination, limit, lease_seconds, coalesce=coalesce)

        result: ClaimResult = await self._writer.write("claim", work)
        return result

    async def delivered(self, event_id: int, attempt: Attempt | None = None) -> None:
        await self._writer.write("record", lambda db, now: self._queries.delivered(db, now, event_id, attempt))

    async def retry_later(
        self, event_id: int, at: float, code: str, error: str, attempt: Attempt | None = None
    ) -> None:
        def work(db: sqlite3.Connection, now: float) -> None:
            self._queries.retry_later(db, event_id, at, code, error, attempt)

        await self._writer.write("record", work)

    async def dead(
        self, event_id: int, code: str, error: str, request_id: str | None, attempt: Attempt | None = None
    ) -> None:
        def work(db: sqlite3.Connection, now: float) -> None:
            note = attempt_step(attempt) if attempt is not None else step("parked", now, code=code, message=error)
            self._queries.park(db, event_id, code, error, request_id, now, note)

        await self._writer.write("record", work)

    async def next_due(self, destination: str | None = None) -> float | None:
        return await self._read("read", lambda db: self._queries.next_due(db, destination))

    async def stats(self) -> OutboxStats:
        pending, dead, oldest = await self._read("read", self._queries.stats)
        return OutboxStats(pending=pending, dead=dead, oldest_pending_created_at=oldest)

    async def stats_by_destination(self) -> dict[str, OutboxStats]:
        return await self._read("read", self._queries.stats_by_destination)

    # -- dead letters ------------------------------------------------------------------

    async def dead_letters(self, where: DeadLetterFilter) -> list[dict[str, Any]]:
        """Dead letters matching ``where``, oldest first, with their reason."""
        return await self._read("read", lambda db: self._queries.dead_letters(db, where))

    async def replay(self, where: DeadLetterFilter, force: bool = False) -> ReplayResult:
        """Queue dead letters again, in their original per-key order.

        A dead letter whose key has had a newer event delivered since is left parked
        (``superseded``) unless ``force``: sending it now would put an old state back.
        """
        now = self._clock()
        return await self._admin(lambda db: self._queries.replay(db, now, where, force))

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete dead letters for good; returns how many."""
        now = self._clock()
        return await self._admin(lambda db: self._queries.purge(db, now, where))

    # -- the trail ---------------------------------------------------------------------

    async def trail(self, where: TrailFilter) -> list[TrailEvent]:
        """Newest first. With an ``alert_key`` one indexed read; without, slices of ``TRAIL_SLICE`` ids,
        each its own read, so puts and acks commit in between."""
        low, high = await self._read("read", lambda db: self._queries.trail_bounds(db, where.since))
        if where.before_id is not None:
            high = min(high, where.before_id - 1)
        found: list[TrailEvent] = []
        while high >= low and len(found) < where.limit:
            start = low if where.alert_key is not None else max(low, high - TRAIL_SLICE + 1)
            found += await self._read("read", functools.partial(self._trail_slice, where, start, high, len(found)))
            high = start - 1
        return found

    def _trail_slice(
        self, where: TrailFilter, low: int, high: int, found: int, db: sqlite3.Connection
    ) -> list[TrailEvent]:
        return self._queries.trail_slice(db, where, low, high, where.limit - found)

    async def trail_event(self, event_id: int) -> TrailEvent | None:
        return await self._read("read", lambda db: self._queries.trail_event(db, event_id))

    async def forget_idle_keys(self) -> int:
        now = self._clock()
        return await self._admin(lambda db: self._queries.forget_idle_keys(db, now))

    async def prune_trail(self) -> int:
        """On the outbox thread, in a transaction of its own: a batch of deletes stays off the event loop."""
        now = self._clock()
        return await self._admin(lambda db: self._queries.prune_trail(db, now))
