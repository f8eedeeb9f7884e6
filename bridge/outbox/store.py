"""Outbox storage: the :class:`Outbox` interface and its SQLite implementation.

SQLite runs in WAL mode. Commits that accept events run with ``synchronous=FULL``:
when :meth:`SqliteOutbox.put` returns, the events are on disk and survive ``kill -9``
and power loss. Bookkeeping after delivery (acks, leases, retry times) commits with
``synchronous=NORMAL``: it survives ``kill -9`` too, and the next FULL commit makes it
durable; a power cut can only lose such an ack, which means one more delivery of an
already delivered event (at least once), never a lost one.

Every write (puts from webhook requests, the dispatcher's claims and acks) joins
one queue, flushed at the end of the event-loop iteration that queued it; whatever
arrives while a transaction runs is committed together in the next one (group
commit), so one transaction and at most one fsync serve many requests and many
deliveries. A batch with events to accept commits on a dedicated thread, because
an fsync must never stall the event loop, and so does every read. A batch of
claims and acks alone fsyncs nothing: when the connection is free it commits
right on the event loop, which costs less than handing it to the thread (a
thread switch and GIL contention on every delivery). Automatic WAL checkpoints
are off for that reason (they fsync inside the commit that triggers them); the
thread checkpoints every ``CHECKPOINT_CHANGES`` changed rows instead.

Tables:

* ``events``: every accepted event (pending, or dead with its reason). Delivered
  events are deleted.
* ``heads``: one row per ``(destination, alert_key)`` with pending events, naming
  the oldest one. Only heads can be claimed, which is what makes delivery per key
  strictly FIFO; claims scan heads (keys), never the whole backlog.
* ``key_state``: per key, the digest of the last accepted event (to suppress
  unchanged repeats) and the id of the last delivered one (so a replayed dead
  letter never goes out after a newer event of its key).

A lock file next to the database stops a second bridge process from using the
same outbox, which would break the per-key order.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

log = logging.getLogger("bridge.outbox")

_SCHEMA_VERSION = 2
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
    next_attempt_at REAL    NOT NULL,                   -- (schema 1; heads hold it now)
    lease_until     REAL    NOT NULL DEFAULT 0,         -- (schema 1; heads hold it now)
    last_code       TEXT,
    last_error      TEXT,
    request_id      TEXT,
    dead_at         REAL
);
CREATE INDEX IF NOT EXISTS events_pending_by_key ON events (destination, alert_key, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS events_dead ON events (id) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_SCHEMA_2 = """
CREATE INDEX IF NOT EXISTS events_pending ON events (id) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS heads (
    destination     TEXT    NOT NULL,
    alert_key       TEXT    NOT NULL,
    event_id        INTEGER NOT NULL,   -- the oldest pending event of the key
    priority        INTEGER NOT NULL,   -- of that event: see PRIORITY
    next_attempt_at REAL    NOT NULL,
    lease_until     REAL    NOT NULL DEFAULT 0,
    PRIMARY KEY (destination, alert_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS heads_by_priority ON heads (destination, priority, event_id);
-- When each destination's next head is due: a lookup, not a scan of a large backlog's heads.
CREATE INDEX IF NOT EXISTS heads_due ON heads (destination, MAX(next_attempt_at, lease_until));
CREATE TABLE IF NOT EXISTS passthrough_keys (   -- keys that arrived in a sender's URL
    destination     TEXT    PRIMARY KEY,
    integration_key TEXT    NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_state (
    destination     TEXT    NOT NULL,
    alert_key       TEXT    NOT NULL,
    accepted_digest TEXT,
    accepted_at     REAL,
    delivered_id    INTEGER,
    delivered_at    REAL,
    PRIMARY KEY (destination, alert_key)
) WITHOUT ROWID;
"""

#: Backlogs drain resolutions first, then by severity: an Ok closes an incident someone is
#: looking at, and a Critical matters more than an Info.
PRIORITY = {"Ok": 0, "Critical": 1, "Warning": 2, "Info": 3}
_LOWEST = 4
_PRIORITY_SQL = f"CASE event_status {' '.join(f'WHEN {s!r} THEN {p}' for s, p in PRIORITY.items())} ELSE {_LOWEST} END"
#: Keys per ``IN (...)`` list, well under SQLite's limit on bound parameters.
_KEYS_PER_QUERY = 500
#: Rows changed between WAL checkpoints (SQLite's automatic checkpoint is about 1,000 pages).
CHECKPOINT_CHANGES = 5000


class OutboxUnavailable(Exception):
    """The outbox cannot take events now (not open, disk full, I/O error): answer 503."""


class OutboxFull(OutboxUnavailable):
    """The outbox holds ``max_pending`` events already: answer 503 so the sender retries."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to commit; ``body`` is the exact JSON to send.

    ``digest`` identifies what the event says (status, title, description, labels);
    an event whose digest equals the last accepted one of its key within the
    refresh interval is suppressed. Empty: never suppressed.
    """

    destination: str
    alert_key: str
    source: str
    event_status: str
    body: str
    digest: str = ""


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
class ClaimResult:
    """Claimed events, plus what the claim cleaned up on the way (for metrics)."""

    events: list[Claimed] = field(default_factory=list)
    coalesced: int = 0  # intermediate firing states superseded by a newer one of the same key
    expired: list[Claimed] = field(default_factory=list)  # pending longer than max_age: now dead letters
    #: When fewer than asked were claimed: when the destination's next event is due (None: nothing waits).
    next_due: float | None = None


@dataclass(frozen=True, slots=True)
class _Write:
    """One caller's work in the next group transaction, and where its result goes."""

    work: Callable[[sqlite3.Connection, float], Any] | None  # (connection, the transaction's clock reading)
    future: asyncio.Future[Any]
    #: A put (``work`` is None): the events of one request, inserted together with the puts next to it.
    events: Sequence[NewEvent] = ()

    @property
    def durable(self) -> bool:
        """Only puts accept events from senders, so only they need their commit fsynced."""
        return self.work is None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    dead: int
    oldest_pending_created_at: float | None


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to; every given criterion must match."""

    ids: tuple[int, ...] = ()
    destination: str | None = None
    code: str | None = None
    older_than: float | None = None  # seconds since the event became a dead letter
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: list[int]
    #: Not replayed: a newer event of the same key was delivered since, so the old one
    #: would reopen or overwrite a newer state.
    superseded: list[int]
    #: Not replayed now: a newer event of the same key is being delivered; try again.
    in_flight: list[int] = field(default_factory=list)


class Outbox(Protocol):
    """What the request handler, the dispatcher and the operator need from durable storage."""

    async def put(self, events: Sequence[NewEvent]) -> list[bool]:
        """Commit all events durably, in order, or none (raise :class:`OutboxUnavailable`).

        Returns, per event, whether it was stored (False: suppressed as an unchanged repeat).
        """

    async def destinations(self) -> list[str]:
        """Destinations that have pending events."""

    async def claim(self, destination: str, limit: int, lease_seconds: float, *, coalesce: bool = True) -> ClaimResult:
        """Lease up to ``limit`` due events of ``destination``, each the oldest pending of its key.

        With ``coalesce``, a firing head followed by a newer firing event of its key is skipped.
        """

    async def delivered(self, event_id: int) -> None:
        """The destination accepted the event: forget it, and let its key's next event go."""

    async def retry_later(self, event_id: int, at: float, code: str, error: str) -> None:
        """Keep the event at the head of its key; try again at ``at`` (Unix seconds)."""

    async def dead(self, event_id: int, code: str, error: str, request_id: str | None) -> None:
        """Park the event as a dead letter, kept with the reason for replay."""

    async def next_due(self, destination: str | None = None) -> float | None:
        """When the next claimable event (of ``destination``, or any) is due, or None when nothing waits."""

    async def stats(self) -> OutboxStats: ...

    async def dead_letters(self, where: DeadLetterFilter) -> list[dict[str, Any]]: ...

    async def replay(self, where: DeadLetterFilter, force: bool = False) -> ReplayResult: ...

    async def purge(self, where: DeadLetterFilter) -> int: ...

    async def close(self) -> None: ...


class SqliteOutbox:
    """The embedded outbox: one SQLite file under ``storage.path``."""

    def __init__(
        self,
        directory: Path,
        *,
        max_pending: int,
        max_age: float | None = None,
        refresh_interval: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.path = directory / "outbox.sqlite3"
        self.max_pending = max_pending
        self.max_age = max_age
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._pending = 0
        # Group commit: writes waiting for the next transaction, and whether one is running.
        self._queued: list[_Write] = []
        self._committing = False
        # Held by whoever uses the connection: the outbox thread, or the event loop for an inline write.
        self._db_lock = threading.Lock()
        self._checkpointed_at = 0  # the connection's total_changes at the last checkpoint
        self._checkpointing = False

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
        db.execute("PRAGMA synchronous=NORMAL")  # FULL for the commits that accept events
        db.execute("PRAGMA wal_autocheckpoint=0")  # the outbox thread checkpoints, never the event loop
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        version = int(row[0]) if row else None
        if version is not None and version > _SCHEMA_VERSION:
            raise OutboxUnavailable(f"{self.path} has schema {version}, newer than this bridge ({_SCHEMA_VERSION})")
        db.executescript(_SCHEMA_2)  # idempotent; executescript commits, so it runs before BEGIN
        db.execute("BEGIN IMMEDIATE")
        if version == 1:
            # Schema 1 kept the schedule on events; build the heads from it.
            db.execute(
                "INSERT OR IGNORE INTO heads (destination, alert_key, event_id, priority, next_attempt_at)"
                f" SELECT e.destination, e.alert_key, e.id, {_PRIORITY_SQL}, e.next_attempt_at FROM events e"
                " JOIN (SELECT MIN(id) AS id FROM events WHERE state = 'pending' GROUP BY destination, alert_key) h"
                " ON h.id = e.id"
            )
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),))
        # Leases belong to workers of a previous process, which is gone (we hold the lock).
        db.execute("UPDATE heads SET lease_until = 0 WHERE lease_until > 0")
        db.execute("COMMIT")
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
        """Run ``func`` on the outbox thread, holding the connection."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._locked, func, *args)
        except RuntimeError as exc:  # executor shut down
            raise OutboxUnavailable("outbox is closed") from exc

    def _locked(self, func: Callable[..., T], *args: Any) -> T:
        with self._db_lock:
            return func(*args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxUnavailable("outbox is not open")
        return self._db

    def _transaction(self, work: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run ``work`` in one transaction; ``durable`` fsyncs the commit (events accepted from a sender)."""
        db = self._conn()
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        try:
            return self._in_transaction(db, work)
        finally:
            if durable:
                db.execute("PRAGMA synchronous=NORMAL")

    def _in_transaction(self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise OutboxUnavailable(f"outbox write failed: {exc}") from exc
            raise
        return result

    # -- receive path ----------------------------------------------------------------------

    async def put(self, events: Sequence[NewEvent]) -> list[bool]:
        if not events:
            return []

        stored: list[bool] | None = await self._enqueue(None, events)
        if stored is None:
            raise OutboxFull(f"outbox holds {self.max_pending} pending events")
        return stored

    async def _write(self, work: Callable[[sqlite3.Connection, float], T]) -> T:
        """Run bookkeeping ``work`` (claims, acks: nothing to fsync) in the next group transaction.

        ``work`` gets the connection and the clock, read once per transaction.

        Everything queued while a transaction runs goes into the next one, in arrival order, so
        each work sees the effects of the works queued before it. A failure rolls back the whole
        transaction and every caller in it hears about it.
        """
        return await self._enqueue(work)  # type: ignore[no-any-return]

    async def _enqueue(
        self, work: Callable[[sqlite3.Connection, float], Any] | None, events: Sequence[NewEvent] = ()
    ) -> Any:
        write = _Write(work, asyncio.get_running_loop().create_future(), events)
        self._queued.append(write)
        if not self._committing:
            self._committing = True
            # After the callbacks already due in this loop iteration, which may queue more
            # (deliveries finishing together, requests arriving together).
            asyncio.get_running_loop().call_soon(self._flush)
        return await write.future

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
                    outcome: list[Any] | Exception = await self._run(self._commit, batch)
                except Exception as exc:
                    outcome = exc
                self._settle(batch, outcome)
        finally:
            self._committing = False
        self._checkpoint_soon()

    @staticmethod
    def _settle(batch: list[_Write], outcome: list[Any] | Exception) -> None:
        """Give every caller in ``batch`` its result, or the failure: every one of them must hear."""
        if isinstance(outcome, Exception):
            failure = (
                outcome
                if isinstance(outcome, OutboxUnavailable)
                else OutboxUnavailable(f"outbox write failed: {outcome}")
            )
            for write in batch:
                if not write.future.done():
                    write.future.set_exception(failure)
            return
        for write, result in zip(batch, outcome, strict=True):
            if not write.future.done():  # its caller may have been cancelled
                write.future.set_result(result)

    def _checkpoint_soon(self) -> None:
        """Checkpoint the WAL on the outbox thread once enough has changed since the last time."""
        db = self._db
        if db is None or self._checkpointing or db.total_changes - self._checkpointed_at < CHECKPOINT_CHANGES:
            return
        self._checkpointing = True
        asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        def checkpoint() -> None:
            db = self._conn()
            self._checkpointed_at = db.total_changes
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

        try:
            await self._run(checkpoint)
        except OutboxUnavailable:
            pass  # closed meanwhile: closing checkpoints the WAL itself
        except Exception:  # I/O trouble: the next commit will say so too
            log.warning("outbox WAL checkpoint failed", exc_info=True)
        finally:
            self._checkpointing = False

    def _commit(self, batch: list[_Write]) -> list[Any]:
        pending, now = self._pending, self._clock()

        def work(db: sqlite3.Connection) -> list[Any]:
            results: list[Any] = []
            start = 0
            while start < len(batch):
                if batch[start].work is None:  # a run of puts: one pass over all their events
                    end = start
                    while end < len(batch) and batch[end].work is None:
                        end += 1
                    results += self._insert(db, [write.events for write in batch[start:end]], now)
                    start = end
                else:
                    results.append(batch[start].work(db, now))  # type: ignore[misc]
                    start += 1
            return results

        try:
            return self._transaction(work, durable=any(write.durable for write in batch))
        except BaseException:
            self._pending = pending  # the works counted changes that were rolled back
            raise

    def _insert(
        self, db: sqlite3.Connection, requests: list[Sequence[NewEvent]], now: float
    ) -> list[list[bool] | None]:
        """Insert several requests' events in one pass; per request, what was stored (None: no room).

        Each request is all or nothing against ``max_pending``. An event whose digest equals the
        last accepted one of its key within ``refresh_interval`` is suppressed (False); every
        stored event, digest or not, becomes what the next one of its key is compared with. The
        statements run once per batch (``executemany``), not once per event.
        """
        states = self._accepted_states(db, {(e.destination, e.alert_key) for events in requests for e in events})
        results: list[list[bool] | None] = []
        rows: list[tuple[Any, ...]] = []
        accepted: dict[tuple[str, str], str] = {}  # key -> digest of its newest stored event
        for events in requests:
            if self._pending + len(events) > self.max_pending:
                results.append(None)
                continue
            stored = []
            for event in events:
                key = (event.destination, event.alert_key)
                state = states.get(key)
                repeat = (
                    bool(event.digest)
                    and state is not None
                    and state[0] == event.digest
                    and now - state[1] < self.refresh_interval
                )
                stored.append(not repeat)
                if not repeat:
                    states[key] = (event.digest, now)
                    accepted[key] = event.digest
                    rows.append((*key, event.source, event.event_status, event.body, now, now))
            self._pending += sum(stored)
            results.append(stored)
        if rows:
            (newest,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
            db.executemany(
                "INSERT INTO key_state (destination, alert_key, accepted_digest, accepted_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET accepted_digest = excluded.accepted_digest,"
                " accepted_at = excluded.accepted_at",
                [(*key, digest, now) for key, digest in accepted.items()],
            )
            db.executemany(
                "INSERT INTO events (destination, alert_key, source, event_status, body, created_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            # AUTOINCREMENT ids only grow, so the new events are those above the old maximum. In id
            # order, the first new event of a key without pending events becomes its head.
            db.execute(
                "INSERT OR IGNORE INTO heads (destination, alert_key, event_id, priority, next_attempt_at)"
                f" SELECT destination, alert_key, id, {_PRIORITY_SQL}, ? FROM events WHERE id > ? ORDER BY id",
                (now, newest),
            )
        return results

    def _accepted_states(self, db: sqlite3.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """``(digest, accepted_at)`` of the last accepted event, for each of ``keys`` that has one."""
        by_destination: dict[str, list[str]] = {}
        for destination, alert_key in keys:
            by_destination.setdefault(destination, []).append(alert_key)
        states: dict[tuple[str, str], Any] = {}
        for destination, alert_keys in by_destination.items():
            for start in range(0, len(alert_keys), _KEYS_PER_QUERY):
                chunk = alert_keys[start : start + _KEYS_PER_QUERY]
                for alert_key, digest, at in db.execute(
                    "SELECT alert_key, accepted_digest, accepted_at FROM key_state"
                    f" WHERE destination = ? AND alert_key IN ({', '.join('?' * len(chunk))})",
                    (destination, *chunk),
                ):
                    states[(destination, alert_key)] = (digest, at)
        return states

    async def save_passthrough_key(self, destination: str, integration_key: str) -> None:
        """Remember a key from a sender's URL, so its queued events can be delivered after a restart."""
        await self._run(
            lambda: self._conn().execute(
                "INSERT OR IGNORE INTO passthrough_keys VALUES (?, ?)", (destination, integration_key)
            )
        )

    async def forget_passthrough_key(self, destination: str) -> bool:
        """Forget a URL key unless events are stored for it (pending, or dead letters); True if forgotten."""

        def work(db: sqlite3.Connection, now: float) -> bool:
            cursor = db.execute(
                "DELETE FROM passthrough_keys WHERE destination = ?"
                " AND NOT EXISTS (SELECT 1 FROM heads WHERE destination = ?)"
                " AND NOT EXISTS (SELECT 1 FROM events WHERE state = 'dead' AND destination = ?)",
                (destination, destination, destination),
            )
            return cursor.rowcount > 0

        return await self._write(work)

    async def passthrough_keys(self) -> dict[str, str]:
        rows = await self._run(lambda: self._conn().execute("SELECT * FROM passthrough_keys").fetchall())
        return {row[0]: row[1] for row in rows}

    # -- delivery path ---------------------------------------------------------------------

    async def destinations(self) -> list[str]:
        return await self._run(self._destinations)

    def _destinations(self) -> list[str]:
        # One index seek per destination, instead of reading every head (DISTINCT would).
        found: list[str] = []
        after = ""
        while (
            row := self._conn()
            .execute("SELECT destination FROM heads WHERE destination > ? ORDER BY destination LIMIT 1", (after,))
            .fetchone()
        ):
            after = row[0]
            found.append(after)
        return found

    async def claim(self, destination: str, limit: int, lease_seconds: float, *, coalesce: bool = True) -> ClaimResult:
        def work(db: sqlite3.Connection, now: float) -> ClaimResult:
            result = ClaimResult()
            coalesced = 0
            while len(result.events) < limit:
                rows = db.execute(
                    "SELECT e.id, e.destination, e.alert_key, e.event_status, e.body, e.attempts, e.created_at"
                    " FROM heads h JOIN events e ON e.id = h.event_id"
                    " WHERE h.destination = ? AND h.next_attempt_at <= ? AND h.lease_until <= ?"
                    " ORDER BY h.priority, h.event_id LIMIT ?",
                    (destination, now, now, limit - len(result.events)),
                ).fetchall()
                if not rows:
                    break
                for row in rows:
                    event = Claimed(*row)
                    if self.max_age is not None and now - event.created_at > self.max_age:
                        message = f"undelivered after {self.max_age:.0f}s"
                        self._park(db, event.id, "expired", message, None, now, attempted=False)
                        result.expired.append(event)
                        continue
                    if coalesce and event.event_status != "Ok" and self._next_is_firing(db, event):
                        # A newer firing state of the same key is queued behind this one: send
                        # that instead. Ok events are never superseded, so none is ever lost.
                        db.execute("DELETE FROM events WHERE id = ?", (event.id,))
                        self._pending -= 1
                        self._advance(db, event.destination, event.alert_key, now)
                        coalesced += 1
                        continue
                    db.execute(
                        "UPDATE heads SET lease_until = ? WHERE destination = ? AND alert_key = ?",
                        (now + lease_seconds, event.destination, event.alert_key),
                    )
                    result.events.append(event)
            next_due = self._next_due(destination) if len(result.events) < limit else None
            return ClaimResult(result.events, coalesced, result.expired, next_due)

        return await self._write(work)

    def _next_is_firing(self, db: sqlite3.Connection, event: Claimed) -> bool:
        row = db.execute(
            "SELECT event_status FROM events WHERE destination = ? AND alert_key = ? AND state = 'pending' AND id > ?"
            " ORDER BY id LIMIT 1",
            (event.destination, event.alert_key, event.id),
        ).fetchone()
        return row is not None and row[0] != "Ok"

    def _advance(self, db: sqlite3.Connection, destination: str, alert_key: str, now: float) -> None:
        """Make the key's oldest pending event its head (the old head is no longer pending), or drop the head."""
        row = db.execute(
            "SELECT id, event_status FROM events WHERE destination = ? AND alert_key = ? AND state = 'pending'"
            " ORDER BY id LIMIT 1",
            (destination, alert_key),
        ).fetchone()
        if row is None:
            db.execute("DELETE FROM heads WHERE destination = ? AND alert_key = ?", (destination, alert_key))
        else:
            db.execute(
                "UPDATE heads SET event_id = ?, priority = ?, next_attempt_at = ?, lease_until = 0"
                " WHERE destination = ? AND alert_key = ?",
                (row[0], PRIORITY.get(row[1], _LOWEST), now, destination, alert_key),
            )

    def _key_of(self, db: sqlite3.Connection, event_id: int) -> tuple[str, str] | None:
        row = db.execute(
            "SELECT destination, alert_key FROM events WHERE id = ? AND state = 'pending'", (event_id,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    async def delivered(self, event_id: int) -> None:
        def work(db: sqlite3.Connection, now: float) -> None:
            key = self._key_of(db, event_id)
            if key is None:
                return
            db.execute("DELETE FROM events WHERE id = ?", (event_id,))
            self._pending -= 1
            db.execute(
                "INSERT INTO key_state (destination, alert_key, delivered_id, delivered_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET delivered_id = excluded.delivered_id, delivered_at = excluded.delivered_at",
                (*key, event_id, now),
            )
            self._advance(db, *key, now)

        await self._write(work)

    async def retry_later(self, event_id: int, at: float, code: str, error: str) -> None:
        def work(db: sqlite3.Connection, now: float) -> None:
            db.execute(
                "UPDATE events SET attempts = attempts + 1, last_code = ?, last_error = ? WHERE id = ?",
                (code, error, event_id),
            )
            db.execute(
                "UPDATE heads SET next_attempt_at = ?, lease_until = 0 WHERE event_id = ?"
                " AND (destination, alert_key) = (SELECT destination, alert_key FROM events WHERE id = ?)",
                (at, event_id, event_id),
            )

        await self._write(work)

    async def dead(self, event_id: int, code: str, error: str, request_id: str | None) -> None:
        await self._write(lambda db, now: self._park(db, event_id, code, error, request_id, now))

    def _park(
        self,
        db: sqlite3.Connection,
        event_id: int,
        code: str,
        error: str,
        request_id: str | None,
        now: float,
        *,
        attempted: bool = True,
    ) -> None:
        key = self._key_of(db, event_id)
        if key is None:
            return
        db.execute(
            "UPDATE events SET state = 'dead', attempts = attempts + ?, last_code = ?, last_error = ?,"
            " request_id = ?, dead_at = ? WHERE id = ?",
            (int(attempted), code, error, request_id, now, event_id),
        )
        self._pending -= 1
        self._advance(db, *key, now)

    async def next_due(self, destination: str | None = None) -> float | None:
        return await self._run(self._next_due, destination)

    def _next_due(self, destination: str | None) -> float | None:
        if destination is None:
            due = [when for name in self._destinations() if (when := self._next_due(name)) is not None]
            return min(due, default=None)
        # The expression matches the heads_due index exactly, so this is one index lookup.
        row = (
            self._conn()
            .execute("SELECT MIN(MAX(next_attempt_at, lease_until)) FROM heads WHERE destination = ?", (destination,))
            .fetchone()
        )
        return None if row[0] is None else float(row[0])

    async def stats(self) -> OutboxStats:
        return await self._run(self._stats)

    def _stats(self) -> OutboxStats:
        db = self._conn()
        oldest = db.execute(
            "SELECT created_at FROM events WHERE id = (SELECT MIN(id) FROM events WHERE state = 'pending')"
        ).fetchone()
        dead = db.execute("SELECT COUNT(*) FROM events WHERE state = 'dead'").fetchone()[0]
        return OutboxStats(pending=self._pending, dead=dead, oldest_pending_created_at=oldest[0] if oldest else None)

    # -- dead letters ---------------------------------------------------------------------

    def _dead_where(self, where: DeadLetterFilter) -> tuple[str, list[Any]]:
        clauses: list[str] = ["state = 'dead'"]
        args: list[Any] = []
        if where.ids:
            clauses.append(f"id IN ({', '.join('?' * len(where.ids))})")
            args += list(where.ids)
        if where.destination is not None:
            clauses.append("destination = ?")
            args.append(where.destination)
        if where.code is not None:
            clauses.append("last_code = ?")
            args.append(where.code)
        if where.older_than is not None:
            clauses.append("dead_at <= ?")
            args.append(self._clock() - where.older_than)
        return " AND ".join(clauses), args

    async def dead_letters(self, where: DeadLetterFilter) -> list[dict[str, Any]]:
        """Dead letters matching ``where``, oldest first, with their reason."""
        return await self._run(self._dead_letters, where)

    def _dead_letters(self, where: DeadLetterFilter) -> list[dict[str, Any]]:
        condition, args = self._dead_where(where)
        cursor = self._conn().execute(
            "SELECT id, destination, alert_key, source, event_status, body, attempts, created_at, dead_at,"
            f" last_code, last_error, request_id FROM events WHERE {condition} ORDER BY id LIMIT ?",
            (*args, where.limit),
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def replay(self, where: DeadLetterFilter, force: bool = False) -> ReplayResult:
        """Queue dead letters again, in their original per-key order.

        A dead letter whose key has had a newer event delivered since is left parked
        (``superseded``) unless ``force``: sending it now would put an old state back.
        """
        return await self._run(self._replay, where, force)

    def _replay(self, where: DeadLetterFilter, force: bool) -> ReplayResult:
        now = self._clock()

        def work(db: sqlite3.Connection) -> ReplayResult:
            condition, args = self._dead_where(where)
            rows = db.execute(
                f"SELECT id, destination, alert_key, event_status FROM events WHERE {condition} ORDER BY id LIMIT ?",
                (*args, where.limit),
            ).fetchall()
            replayed, superseded, in_flight = [], [], []
            for event_id, destination, alert_key, status in rows:
                head = db.execute(
                    "SELECT event_id, lease_until FROM heads WHERE destination = ? AND alert_key = ?",
                    (destination, alert_key),
                ).fetchone()
                if head is not None and head[0] > event_id and head[1] > now:
                    # A newer event of the key is on the wire: it can no longer be overtaken.
                    in_flight.append(event_id)
                    continue
                state = db.execute(
                    "SELECT delivered_id FROM key_state WHERE destination = ? AND alert_key = ?",
                    (destination, alert_key),
                ).fetchone()
                if not force and state is not None and state[0] is not None and state[0] > event_id:
                    superseded.append(event_id)
                    continue
                db.execute(
                    "UPDATE events SET state = 'pending', attempts = 0, dead_at = NULL WHERE id = ?", (event_id,)
                )
                self._pending += 1
                # The replayed event is older than anything pending for its key, or it is alone.
                db.execute(
                    "INSERT INTO heads (destination, alert_key, event_id, priority, next_attempt_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET event_id = excluded.event_id,"
                    " priority = excluded.priority, next_attempt_at = excluded.next_attempt_at, lease_until = 0"
                    " WHERE excluded.event_id < heads.event_id",
                    (destination, alert_key, event_id, PRIORITY.get(status, _LOWEST), now),
                )
                replayed.append(event_id)
            return ReplayResult(replayed, superseded, in_flight)

        return self._transaction(work)

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete dead letters for good; returns how many."""
        return await self._run(self._purge, where)

    def _purge(self, where: DeadLetterFilter) -> int:
        condition, args = self._dead_where(where)

        def work(db: sqlite3.Connection) -> int:
            ids = [
                row[0]
                for row in db.execute(
                    f"SELECT id FROM events WHERE {condition} ORDER BY id LIMIT ?", (*args, where.limit)
                )
            ]
            db.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in ids])
            return len(ids)

        return self._transaction(work)
