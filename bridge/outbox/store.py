"""Outbox storage: the :class:`Outbox` interface and its SQLite implementation.

SQLite runs in WAL mode with ``synchronous=FULL``: when :meth:`SqliteOutbox.put`
returns, the events are on disk and survive ``kill -9`` and power loss. All
database work happens on one dedicated thread; concurrent ``put`` calls that
arrive while a commit is running are committed together in the next transaction
(group commit), so one fsync serves many webhook requests.

A lock file next to the database stops a second bridge process from using the
same outbox, which would break the per-key order.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order; per-key FIFO follows it
    destination     TEXT    NOT NULL,
    alert_key       TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    event_status    TEXT    NOT NULL,
    body            TEXT    NOT NULL,                   -- the JSON sent to Flashduty
    state           TEXT    NOT NULL DEFAULT 'pending', -- pending | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,                   -- wall clock, Unix seconds
    next_attempt_at REAL    NOT NULL,
    lease_until     REAL    NOT NULL DEFAULT 0,         -- claimed by a worker until then
    last_code       TEXT,
    last_error      TEXT,
    request_id      TEXT,
    dead_at         REAL
);
CREATE INDEX IF NOT EXISTS events_pending_by_key ON events (destination, alert_key, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS events_dead ON events (dead_at) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


#: The oldest pending event of every (destination, alert_key): the only claimable ones.
_HEADS = "SELECT MIN(id) AS id FROM events WHERE state = 'pending' GROUP BY destination, alert_key"


class OutboxUnavailable(Exception):
    """The outbox cannot take events now (not open, disk full, I/O error): answer 503."""


class OutboxFull(OutboxUnavailable):
    """The outbox holds ``max_pending`` events already: answer 503 so the sender retries."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to commit; ``body`` is the exact JSON to send."""

    destination: str
    alert_key: str
    source: str
    event_status: str
    body: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """The oldest pending event of its key, leased to one worker."""

    id: int
    destination: str
    alert_key: str
    event_status: str
    body: str
    attempts: int
    created_at: float

    def __repr__(self) -> str:
        return f"Claimed(#{self.id} {self.event_status} key={self.alert_key} attempts={self.attempts})"


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    dead: int
    oldest_pending_created_at: float | None


class Outbox(Protocol):
    """What the request handler and the dispatcher need from durable storage."""

    async def put(self, events: Sequence[NewEvent]) -> None:
        """Commit all events durably, in order, or none (raise :class:`OutboxUnavailable`)."""

    async def claim(self, limit: int, lease_seconds: float) -> list[Claimed]:
        """Lease up to ``limit`` due events, each the oldest pending event of its key."""

    async def delivered(self, event_id: int) -> None:
        """The destination accepted the event: forget it."""

    async def retry_later(self, event_id: int, at: float, code: str, error: str) -> None:
        """Keep the event at the head of its key; try again at ``at`` (Unix seconds)."""

    async def dead(self, event_id: int, code: str, error: str, request_id: str | None) -> None:
        """Park the event as a dead letter, kept with the reason for replay."""

    async def next_due(self) -> float | None:
        """When the next claimable event is due (Unix seconds), or None when nothing waits."""

    async def stats(self) -> OutboxStats: ...

    async def close(self) -> None: ...


class SqliteOutbox:
    """The embedded outbox: one SQLite file under ``storage.path``."""

    def __init__(self, directory: Path, *, max_pending: int, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.path = directory / "outbox.sqlite3"
        self.max_pending = max_pending
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._pending = 0
        # Group commit: puts waiting for the next transaction, and whether one is running.
        self._queued: list[tuple[Sequence[NewEvent], asyncio.Future[None]]] = []
        self._committing = False

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "outbox.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxUnavailable(f"{self.path} is in use by another bridge process") from None
        self._lock_fd = fd
        try:
            self._db = self._connect()
        except BaseException:
            self._close()
            raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),))
        elif int(row[0]) > _SCHEMA_VERSION:
            raise OutboxUnavailable(f"{self.path} has schema {row[0]}, newer than this bridge ({_SCHEMA_VERSION})")
        # Leases belong to workers of a previous process, which is gone (we hold the lock).
        db.execute("UPDATE events SET lease_until = 0 WHERE lease_until > 0")
        self._pending = db.execute("SELECT COUNT(*) FROM events WHERE state = 'pending'").fetchone()[0]

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, func, *args)
        except RuntimeError as exc:  # executor shut down
            raise OutboxUnavailable("outbox is closed") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxUnavailable("outbox is not open")
        return self._db

    # -- receive path ----------------------------------------------------------------------

    async def put(self, events: Sequence[NewEvent]) -> None:
        if not events:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((events, future))
        if not self._committing:
            self._committing = True
            asyncio.get_running_loop().create_task(self._commit_queued())
        await future

    async def _commit_queued(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    accepted = await self._run(self._insert, [events for events, _ in batch])
                except Exception as exc:  # every waiter must hear about it, whatever it is
                    failure = (
                        exc if isinstance(exc, OutboxUnavailable) else OutboxUnavailable(f"outbox write failed: {exc}")
                    )
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(failure)
                    continue
                for (_, future), ok in zip(batch, accepted, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(None)
                    else:
                        future.set_exception(OutboxFull(f"outbox holds {self.max_pending} pending events"))
        finally:
            self._committing = False

    def _insert(self, requests: list[Sequence[NewEvent]]) -> list[bool]:
        """Insert several requests' events in one transaction; each request all or nothing."""
        db = self._conn()
        now = self._clock()
        accepted = []
        pending = self._pending
        rows = []
        for events in requests:
            if pending + len(events) > self.max_pending:
                accepted.append(False)
                continue
            accepted.append(True)
            pending += len(events)
            rows += [(e.destination, e.alert_key, e.source, e.event_status, e.body, now, now) for e in events]
        if rows:
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "INSERT INTO events (destination, alert_key, source, event_status, body, created_at,"
                    " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise OutboxUnavailable(f"outbox write failed: {exc}") from exc
        self._pending = pending
        return accepted

    # -- delivery path ---------------------------------------------------------------------

    async def claim(self, limit: int, lease_seconds: float) -> list[Claimed]:
        return await self._run(self._claim, limit, lease_seconds)

    def _claim(self, limit: int, lease_seconds: float) -> list[Claimed]:
        db = self._conn()
        now = self._clock()
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                f"""
                SELECT e.id, e.destination, e.alert_key, e.event_status, e.body, e.attempts, e.created_at
                FROM events e JOIN ({_HEADS}) head ON head.id = e.id
                WHERE e.next_attempt_at <= ? AND e.lease_until <= ?
                ORDER BY e.id
                LIMIT ?
                """,
                (now, now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE events SET lease_until = ? WHERE id = ?", [(now + lease_seconds, row[0]) for row in rows]
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [Claimed(*row) for row in rows]

    async def delivered(self, event_id: int) -> None:
        await self._run(self._delivered, event_id)

    def _delivered(self, event_id: int) -> None:
        cursor = self._conn().execute("DELETE FROM events WHERE id = ? AND state = 'pending'", (event_id,))
        self._pending -= cursor.rowcount

    async def retry_later(self, event_id: int, at: float, code: str, error: str) -> None:
        await self._run(self._retry_later, event_id, at, code, error)

    def _retry_later(self, event_id: int, at: float, code: str, error: str) -> None:
        self._conn().execute(
            "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, lease_until = 0, last_code = ?,"
            " last_error = ? WHERE id = ?",
            (at, code, error, event_id),
        )

    async def dead(self, event_id: int, code: str, error: str, request_id: str | None) -> None:
        await self._run(self._dead, event_id, code, error, request_id)

    def _dead(self, event_id: int, code: str, error: str, request_id: str | None) -> None:
        cursor = self._conn().execute(
            "UPDATE events SET state = 'dead', attempts = attempts + 1, lease_until = 0, last_code = ?,"
            " last_error = ?, request_id = ?, dead_at = ? WHERE id = ? AND state = 'pending'",
            (code, error, request_id, self._clock(), event_id),
        )
        self._pending -= cursor.rowcount

    async def stats(self) -> OutboxStats:
        return await self._run(self._stats)

    def _stats(self) -> OutboxStats:
        db = self._conn()
        oldest = db.execute("SELECT MIN(created_at) FROM events WHERE state = 'pending'").fetchone()[0]
        dead = db.execute("SELECT COUNT(*) FROM events WHERE state = 'dead'").fetchone()[0]
        return OutboxStats(pending=self._pending, dead=dead, oldest_pending_created_at=oldest)

    async def next_due(self) -> float | None:
        return await self._run(self._next_due)

    def _next_due(self) -> float | None:
        row = (
            self._conn()
            .execute(
                "SELECT MIN(MAX(e.next_attempt_at, e.lease_until))"
                f" FROM events e JOIN ({_HEADS}) head ON head.id = e.id"
            )
            .fetchone()
        )
        return None if row[0] is None else float(row[0])

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters with their reason, for the operator."""
        return await self._run(self._dead_letters, limit)

    def _dead_letters(self, limit: int) -> list[dict[str, Any]]:
        cursor = self._conn().execute(
            "SELECT id, destination, alert_key, source, event_status, body, attempts, created_at, dead_at,"
            " last_code, last_error, request_id FROM events WHERE state = 'dead' ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
