"""The shared outbox: one PostgreSQL database, any number of bridge replicas.

Selected by ``storage.dsn`` or ``storage.dsn_file``. Every replica keeps the guarantees of a
single bridge, across all of them:

* **200 after COMMIT.** A transaction that accepts events (a put) runs with ``synchronous_commit
  = on`` (set by the bridge whatever the server's default): ``put`` returns once the commit is
  flushed (and on a synchronous standby, where one is configured). So do probes, replays and
  purges. Bookkeeping (claims, acks, retries, dead letters, rate-limit reservations) commits
  with ``synchronous_commit = off``, the connections' default: it does not wait for the WAL
  flush, since a database crash can only lose an ack or a lease of its last fraction of a
  second, which means one more delivery, never a lost or reordered event (SQLite's outbox makes
  the same trade with ``synchronous=NORMAL``). A later durable commit flushes them all.
* **Per-key FIFO.** Ids follow commit order within a key (its advisory lock is held from before
  the insert until the commit); only a key's head can be claimed; claims are leases taken with
  ``FOR UPDATE SKIP LOCKED`` and ``leased_until``, so a killed replica's keys go to the others
  once its leases run out (see :mod:`~bridge.outbox.postgres.queries`).
* **Suppression and coalescing.** The suppression check and the insert are one step per key
  (under the same lock), so the same alert from two Alertmanager peers at two replicas is
  stored once; the rules are :mod:`bridge.outbox.policy`'s.
* **One rate limit.** :attr:`PostgresOutbox.rate_limits` keeps each destination's send log and
  429 pause in the database (:class:`PostgresRateLimits`).
* **Wake-ups.** A commit that adds events sends ``NOTIFY``; each replica listens on its own
  connection and wakes its dispatcher, whose one-second poll stays as the safety net.
* **Gauges agree.** ``stats`` counts in the database; no replica keeps its own pending count.
  ``max_pending`` is checked against the last count (at most a second old) plus this
  replica's own changes since, so replicas together may overshoot it by what the others
  accepted within that second.

**Time** is the database's: the offset between this process's clock and the server's is
measured at open and with every ``stats``, and every time the outbox stores (due times,
leases, ``created_at``) is on the server's clock, so replicas with skewed clocks agree on
leases. Callers keep using their own clock: ``retry_later``'s ``at`` and ``next_due`` are
converted at the edge. A test can inject ``clock`` instead (then it is used as it is).

**The trail** (:mod:`bridge.outbox.trail`) is kept as on SQLite: every put event gets a row (suppressed
repeats as ``suppressed``), finished events stay with their steps until ``prune_trail`` deletes them past
the :class:`~bridge.outbox.trail.Retention`. Claims still read only pending rows (partial indexes); a
trail read is one statement, which holds up no writer (MVCC). Every replica prunes; each deletes only
the rows it locked (``SKIP LOCKED``), so concurrent prunes neither collide nor count twice.

**Faults.** A database that does not answer at ``open`` is an :class:`OpenRefused` naming the
database without its password (``serve`` exits 74). While running, every failed operation
is recorded in ``health`` (not ready, intake 503) and raised as :class:`OutboxUnavailable`;
the pool replaces broken connections, so the delivery loop's probe finds the database again
without a restart. The DSN's password is registered with the log filter at construction and
never appears in ``location``, errors or metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import asyncpg

from bridge import logs
from bridge.outbox import policy
from bridge.outbox.health import StorageHealth
from bridge.outbox.model import (
    Claimed,
    ClaimResult,
    DeadLetterFilter,
    NewEvent,
    OpenRefused,
    OutboxClosed,
    OutboxFull,
    OutboxStats,
    OutboxUnavailable,
    ReplayResult,
)
from bridge.outbox.pacing import MINUTE_MARGIN, SHARED_SECOND_MARGIN, Reservation
from bridge.outbox.postgres import queries
from bridge.outbox.postgres.dsn import display, secrets
from bridge.outbox.postgres.queries import Conn
from bridge.outbox.postgres.schema import migrate
from bridge.outbox.postgres.writer import GroupWriter, Outcome
from bridge.outbox.trail import Attempt, Retention, TrailEvent, TrailFilter, attempt_step, step

T = TypeVar("T")

log = logging.getLogger("bridge.outbox")

#: How long ``open`` keeps trying to reach the database before it gives up.
CONNECT_SECONDS = 5.0
#: Upper bound on any one statement: a database that hangs fails the request (503), not the bridge.
COMMAND_TIMEOUT = 10.0
#: Connections per replica: the group writer, the listener, claims and reads of the workers.
POOL_SIZE = 6
#: A passthrough key saved or used (events stored for it) by any replica this recently is not forgotten.
PASSTHROUGH_GRACE = 60.0
#: Every pooled connection's settings. Bookkeeping does not wait for the WAL flush (puts turn it on: see
#: queries.lock_statement). The outbox's statements are index lookups and ordered index scans; without
#: bitmap scans the planner keeps choosing them when a table grew faster than its statistics (a storm
#: filling a fresh outbox), instead of reading and sorting every head for each claim.
SESSION_SETTINGS = {"synchronous_commit": "off", "enable_bitmapscan": "off", "application_name": "flashduty-bridge"}
#: Errors that mean the database cannot do this now (connection lost, server shutting down, timeout).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


def replica_name() -> str:
    """Who holds a lease, for operators reading ``outbox_heads``: host (the pod's name) and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class PostgresOutbox:
    """The outbox in a PostgreSQL database, shared by every replica pointed at it."""

    def __init__(
        self,
        dsn: str,
        *,
        max_pending: int,
        max_age: float | None = None,
        refresh_interval: float = 0.0,
        retention: Retention | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._dsn = dsn
        self.retention = retention or Retention()
        logs.add_secrets(secrets(dsn))
        self._location = display(dsn)
        self.max_pending = max_pending
        self.max_age = max_age
        self.refresh_interval = refresh_interval
        #: Where this replica's sweep of idle key states goes on from.
        self._forget_from = ("", "")
        #: None: the database's clock (this process's, corrected by the measured offset).
        self._fixed_clock = clock
        self._offset = 0.0
        self.health = StorageHealth(clock or time.time)
        self.replica = f"{replica_name()}:{uuid.uuid4().hex[:6]}"
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._wakers: list[Callable[[], None]] = []
        self._closed = False
        #: Pending events at the last count, and this replica's changes since.
        self._pending = 0
        #: Keys of the events this replica claimed, for the ack's key lock.
        self._claimed: dict[int, tuple[str, str]] = {}
        self._writer = GroupWriter(self._connection, self._admit, self._committed, self._now)
        self._rate_limits = PostgresRateLimits(self)
        #: Round trips to the database so far (each statement or simple query: one).
        self.round_trips = 0

    @property
    def location(self) -> str:
        return self._location

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    @property
    def rate_limits(self) -> PostgresRateLimits:
        return self._rate_limits

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._wakers.append(wake)

    # -- time ----------------------------------------------------------------------------

    def _now(self) -> float:
        """Now, on the database's clock (or the injected one)."""
        if self._fixed_clock is not None:
            return self._fixed_clock()
        return time.time() + self._offset

    def _local(self, db_time: float) -> float:
        """A database time on this process's clock (what callers compare with)."""
        return db_time if self._fixed_clock is not None else db_time - self._offset

    def _db(self, local_time: float) -> float:
        return local_time if self._fixed_clock is not None else local_time + self._offset

    def _measured(self, db_now: float, sent: float, received: float) -> None:
        if self._fixed_clock is None:
            self._offset = db_now - (sent + received) / 2

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=POOL_SIZE,
                    command_timeout=COMMAND_TIMEOUT,
                    timeout=CONNECT_SECONDS,
                    reset=_reset,
                    server_settings=SESSION_SETTINGS,
                )
                break
            except DATABASE_ERRORS as exc:
                if time.monotonic() >= deadline or not _transient(exc):
                    raise OpenRefused(f"outbox {self._location} cannot be opened: {describe(exc)}") from None
                await asyncio.sleep(0.5)
            except ValueError as exc:  # an unparsable DSN: never echoed
                reason = f"invalid DSN ({type(exc).__name__})"
                raise OpenRefused(f"outbox {self._location} cannot be opened: {reason}") from None
        try:
            async with pool.acquire() as conn:
                version = await migrate(conn, self._location)
                if version == 0:
                    log.info("outbox %s: created its tables", self._location)
                sent = time.time()
                pending, _, _, db_now = await queries.stats(conn)
                self._measured(db_now, sent, time.time())
                self._pending = pending
            self._listener = await self._listen()
        except OpenRefused:
            await pool.close()
            raise
        except DATABASE_ERRORS as exc:
            await pool.close()
            raise OpenRefused(f"outbox {self._location} cannot be opened: {describe(exc)}") from None
        self._pool = pool
        self._closed = False

    async def close(self) -> None:
        """Give this replica's leases back (its attempts have ended or were cancelled: other replicas may take
        the keys at once), then disconnect."""
        if self._pool is not None:
            try:
                async with self._connection() as conn:
                    await queries.release_leases(conn, self.replica)
            except DATABASE_ERRORS as exc:
                log.warning("outbox %s: leases not released at close (%s); they expire", self._location, describe(exc))
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(*DATABASE_ERRORS):
                await listener.close(timeout=2)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except DATABASE_ERRORS:
                pool.terminate()
        self._closed = True

    async def _listen(self) -> asyncpg.Connection[asyncpg.Record] | None:
        """A connection of its own that LISTENs for commits of other replicas (None: could not connect)."""
        try:
            conn = await asyncpg.connect(self._dsn, timeout=CONNECT_SECONDS, command_timeout=COMMAND_TIMEOUT)
            await conn.add_listener(queries.CHANNEL, self._notified)
        except DATABASE_ERRORS as exc:
            log.warning(
                "outbox %s: cannot listen for other replicas' commits (%s); polling", self._location, describe(exc)
            )
            return None
        return conn

    def _notified(self, *_: Any) -> None:
        for wake in self._wakers:
            wake()

    async def _keep_listening(self) -> None:
        """Reconnect the listener after the database came back (called with every stats refresh)."""
        if self._pool is not None and (self._listener is None or self._listener.is_closed()):
            self._listener = await self._listen()
            if self._listener is not None:
                self._notified()  # commits may have happened while nobody listened

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        pool = self._pool
        if pool is None:
            raise OutboxClosed("outbox is not open")
        async with pool.acquire() as conn:
            yield cast(Conn, _Counted(conn, self))

    async def _run(self, operation: str, work: Callable[[Conn], Awaitable[T]]) -> T:
        """``work`` on a pooled connection; a database failure is recorded and raised as OutboxUnavailable."""
        try:
            async with self._connection() as conn:
                return await work(conn)
        except OutboxClosed:
            raise
        except DATABASE_ERRORS as exc:
            raise self._failed(operation, exc) from None

    def _failed(self, operation: str, exc: BaseException) -> OutboxUnavailable:
        reason = describe(exc)
        self.health.failed(operation, reason)
        return OutboxUnavailable(f"outbox {operation} failed: {reason}")

    async def _keyed(
        self,
        operation: str,
        keys: Sequence[tuple[str, str]],
        work: Callable[[Conn], Awaitable[T]],
        *,
        durable: bool = False,
    ) -> T:
        """``work`` in one transaction holding the advisory locks of ``keys`` (``durable``: a synchronous commit)."""

        async def transaction(conn: Conn) -> T:
            await conn.execute(queries.lock_statement(keys, durable=durable))
            try:
                result = await work(conn)
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.is_closed() and conn.is_in_transaction():
                    with contextlib.suppress(*DATABASE_ERRORS):
                        await conn.execute("ROLLBACK")
                raise
            return result

        return await self._run(operation, transaction)

    async def probe(self) -> None:
        """A durable write, as a put makes: the database takes synchronous commits again."""
        now = self._now()
        await self._keyed("probe", [], lambda conn: queries.heartbeat(conn, now), durable=True)

    # -- intake --------------------------------------------------------------------------

    async def put(self, events: Sequence[NewEvent], *, request_id: str | None = None) -> list[bool]:
        if not events:
            return []
        if self._pool is None:
            raise OutboxClosed("outbox is not open")
        try:
            stored = await self._writer.put(events, request_id)
        except (OutboxClosed, OutboxFull):
            raise
        except DATABASE_ERRORS as exc:
            raise self._failed("put", exc) from None
        if stored is None:
            raise OutboxFull(f"outbox holds {self.max_pending} pending events")
        return stored

    async def _admit(self, conn: Conn, requests: Sequence[queries.Request], now: float) -> policy.Admission:
        return await queries.insert(
            conn,
            requests,
            now,
            pending=self._pending,
            max_pending=self.max_pending,
            refresh_interval=self.refresh_interval,
        )

    def _committed(self, outcome: Outcome) -> None:
        if outcome.admission is not None:
            self._pending += outcome.admission.added
        self._pending -= outcome.delivered

    async def save_passthrough_key(self, destination: str, integration_key: str) -> None:
        now = self._now()
        await self._run("put", lambda conn: queries.save_passthrough_key(conn, destination, integration_key, now))

    async def forget_passthrough_key(self, destination: str) -> bool:
        """Forget a URL key with nothing stored for it, unless a replica saved it or stored events for it
        within ``PASSTHROUGH_GRACE`` seconds: another replica may be about to put events for it."""
        now = self._now()
        return await self._run(
            "record", lambda conn: queries.forget_passthrough_key(conn, destination, now, PASSTHROUGH_GRACE)
        )

    async def passthrough_keys(self) -> dict[str, str]:
        return await self._run("read", queries.passthrough_keys)

    # -- delivery ------------------------------------------------------------------------

    async def destinations(self) -> list[str]:
        return await self._run("read", queries.destinations)

    async def claim(self, destination: str, limit: int, lease_seconds: float, *, coalesce: bool = True) -> ClaimResult:
        result, _ = await self._claim(destination, limit, lease_seconds, coalesce, None)
        return result

    async def _claim(
        self,
        destination: str,
        limit: int,
        lease_seconds: float,
        coalesce: bool,
        pacing: tuple[int, int] | None,
    ) -> tuple[ClaimResult, Reservation | None]:
        """Claim (within the shared rate limit, with ``pacing``: per second, per minute); see ``Outbox.claim``."""
        events: list[Claimed] = []
        expired: list[Claimed] = []
        coalesced = 0
        next_due: float | None = None
        granted = 0
        reservation: Reservation | None = None
        headroom: dict[str, int] = {}
        last_free = 0.0
        windows = PostgresRateLimits.windows
        paced = None if pacing is None else (*pacing, *windows)
        while len(events) < limit:
            now, want = self._now(), limit - len(events)

            def lease(conn: Conn, now: float = now, want: int = want) -> Awaitable[queries.ClaimRows]:
                return queries.claim(conn, destination, now, want, lease_seconds, self.replica, coalesce, paced)

            rows, next_due, (found, grant, free_at, used_second, used_minute) = await self._run("claim", lease)
            granted += grant
            if pacing is not None:
                headroom = {"second": pacing[0] - used_second, "minute": pacing[1] - used_minute}
                last_free = free_at
                if grant < found and next_due is not None:
                    next_due = max(next_due, free_at)  # due heads wait for the rate limit, not for their time
            cleanup: list[tuple[Claimed, bool]] = []  # (head, expired: else superseded)
            for event, next_status in rows:
                if policy.is_expired(event.created_at, now, self.max_age):
                    cleanup.append((event, True))
                elif coalesce and policy.superseded_by(event.event_status, next_status):
                    cleanup.append((event, False))
                else:
                    self._claimed[event.id] = (event.destination, event.alert_key)
                    events.append(event)
            if not cleanup:
                break  # fewer due than asked (or all taken): the next due time came with this claim
            done = await self._clean_up(cleanup, now)
            expired += [event for event, was_expired in done if was_expired]
            coalesced += sum(1 for _, was_expired in done if not was_expired)
            if pacing is not None:
                # Those were counted as sends but will not be sent: give them back to every replica.
                unsent = len(cleanup)
                headroom = {window: left + unsent for window, left in headroom.items()}

                def give_back(conn: Conn, now: float = now, unsent: int = unsent) -> Awaitable[None]:
                    return queries.release(conn, destination, now, unsent)

                await self._run("claim", give_back)
                granted -= unsent
        if pacing is not None:
            reservation = Reservation(granted, self._local(last_free), headroom)
        due = None if len(events) >= limit or next_due is None else self._local(next_due)
        result = ClaimResult([self._to_local(e) for e in events], coalesced, [self._to_local(e) for e in expired], due)
        return result, reservation

    def _to_local(self, event: Claimed) -> Claimed:
        if self._fixed_clock is not None:
            return event
        return Claimed(
            event.id,
            event.destination,
            event.alert_key,
            event.event_status,
            event.body,
            event.attempts,
            self._local(event.created_at),
        )

    async def _clean_up(self, heads: list[tuple[Claimed, bool]], now: float) -> list[tuple[Claimed, bool]]:
        """Park expired heads and drop superseded ones (leased by this claim), each key under its lock."""
        assert self.max_age is not None or all(not was_expired for _, was_expired in heads)

        async def work(conn: Conn) -> list[tuple[Claimed, bool]]:
            done = []
            for event, was_expired in heads:
                if was_expired:
                    assert self.max_age is not None
                    message = policy.expiry_message(self.max_age)
                    note = step(policy.EXPIRED, self._local(now), message=message)
                    changed = await queries.park(
                        conn, event.id, policy.EXPIRED, message, None, now, note, attempted=False
                    )
                else:
                    changed = await queries.coalesce_head(conn, event, now, self._local(now))
                if changed:
                    done.append((event, was_expired))
            return done

        done = await self._keyed("claim", [(e.destination, e.alert_key) for e, _ in heads], work)
        self._pending -= len(done)
        return done

    async def delivered(self, event_id: int, attempt: Attempt | None = None) -> None:
        key = self._claimed.pop(event_id, None)
        if key is None:
            key = await self._run("record", lambda conn: queries.key_of(conn, event_id))
            if key is None:
                return
        if self._pool is None:
            raise OutboxClosed("outbox is not open")
        try:
            note = None if attempt is None else attempt_step(attempt)
            await self._writer.delivered((event_id, key, note, None if attempt is None else attempt.request_id))
        except OutboxClosed:
            raise
        except DATABASE_ERRORS as exc:
            raise self._failed("record", exc) from None

    async def retry_later(
        self, event_id: int, at: float, code: str, error: str, attempt: Attempt | None = None
    ) -> None:
        self._claimed.pop(event_id, None)
        due = self._db(at)
        note = None if attempt is None else attempt_step(attempt)
        await self._run("record", lambda conn: queries.retry_later(conn, event_id, due, code, error, note))

    async def dead(
        self, event_id: int, code: str, error: str, request_id: str | None, attempt: Attempt | None = None
    ) -> None:
        key = self._claimed.pop(event_id, None)
        if key is None:
            key = await self._run("record", lambda conn: queries.key_of(conn, event_id))
            if key is None:
                return
        now = self._now()
        if attempt is not None:
            note = attempt_step(attempt)
        else:
            note = step("parked", self._local(now), code=code, message=error)
        parked = await self._keyed(
            "record", [key], lambda conn: queries.park(conn, event_id, code, error, request_id, now, note)
        )
        self._pending -= int(parked)

    async def next_due(self, destination: str | None = None) -> float | None:
        due = await self._run("read", lambda conn: queries.next_due(conn, destination))
        return None if due is None else self._local(due)

    async def stats(self) -> OutboxStats:
        async def work(conn: Conn) -> tuple[int, int, float | None, float, float, float]:
            sent = time.time()
            result = await queries.stats(conn)
            return (*result, sent, time.time())

        pending, dead, oldest, db_now, sent, received = await self._run("read", work)
        self._measured(db_now, sent, received)
        self._pending = pending
        with contextlib.suppress(*DATABASE_ERRORS):
            await self._keep_listening()
        return OutboxStats(pending, dead, None if oldest is None else self._local(oldest))

    async def stats_by_destination(self) -> dict[str, OutboxStats]:
        rows = await self._run("read", queries.stats_by_destination)
        return {
            destination: OutboxStats(pending, dead, None if oldest is None else self._local(oldest))
            for destination, pending, dead, oldest in rows
        }

    # -- the trail ----------------------------------------------------------------------

    async def trail(self, where: TrailFilter) -> list[TrailEvent]:
        if where.since is not None:
            where = dataclasses.replace(where, since=self._db(where.since))
        found = await self._run("read", lambda conn: queries.trail_events(conn, where))
        return [self._trail_local(event) for event in found]

    async def trail_event(self, event_id: int) -> TrailEvent | None:
        found = await self._run("read", lambda conn: queries.trail_event(conn, event_id))
        return None if found is None else self._trail_local(found)

    def _trail_local(self, event: TrailEvent) -> TrailEvent:
        """An event's times on this process's clock, as callers see them (its steps are recorded on it)."""
        if self._fixed_clock is not None:
            return event
        return dataclasses.replace(
            event,
            created_at=self._local(event.created_at),
            finished_at=None if event.finished_at is None else self._local(event.finished_at),
            dead_at=None if event.dead_at is None else self._local(event.dead_at),
        )

    async def prune_trail(self) -> int:
        now = self._now()
        return await self._run("record", lambda conn: queries.prune_trail(conn, now, self.retention))

    async def forget_idle_keys(self) -> int:
        """One slice of this replica's sweep (each replica sweeps on its own; deletes are idempotent)."""
        now, after = self._now(), self._forget_from
        deleted, following = await self._run(
            "record", lambda conn: queries.forget_idle_keys(conn, after, now, self.refresh_interval)
        )
        self._forget_from = following or ("", "")
        return deleted

    # -- dead letters --------------------------------------------------------------------

    async def dead_letters(self, where: DeadLetterFilter) -> list[dict[str, Any]]:
        now = self._now()
        letters = await self._run("read", lambda conn: queries.dead_letters(conn, where, now))
        for letter in letters:
            for name in ("created_at", "dead_at"):
                if letter[name] is not None:
                    letter[name] = self._local(letter[name])
        return letters

    async def replay(self, where: DeadLetterFilter, force: bool = False) -> ReplayResult:
        now = self._now()
        keys = await self._run("admin", lambda conn: queries.dead_keys(conn, where, now))
        if not keys:
            return ReplayResult([], [], [])
        at = self._local(now)
        result = await self._keyed(
            "admin", keys, lambda conn: queries.replay(conn, now, where, force, at), durable=True
        )
        self._pending += len(result.replayed)
        if result.replayed:
            self._notified()
        return result

    async def purge(self, where: DeadLetterFilter) -> int:
        now = self._now()
        at = self._local(now)
        return await self._keyed("admin", [], lambda conn: queries.purge(conn, where, now, at), durable=True)


class PostgresRateLimits:
    """Each destination's rate limit and 429 pause, kept in the database for every replica.

    A paced claim is one round trip: the claim statement locks the due heads, asks
    ``outbox_reserve`` (the destination's advisory lock serialises all replicas; the send log in
    ``outbox_rate_sends`` is counted over the same sliding windows as
    :class:`~bridge.outbox.pacing.RateLimiter`'s, the second one 1.2 s long, see
    ``SHARED_SECOND_MARGIN``) for a send per head, and leases only the heads granted.
    """

    windows = (1.0 + SHARED_SECOND_MARGIN, 60.0 + MINUTE_MARGIN)

    def __init__(self, outbox: PostgresOutbox) -> None:
        self._outbox = outbox

    async def claim(
        self, destination: str, limit: int, lease_seconds: float, per_second: int, per_minute: int
    ) -> tuple[ClaimResult, Reservation]:
        result, reservation = await self._outbox._claim(
            destination, limit, lease_seconds, True, (per_second, per_minute)
        )
        assert reservation is not None
        return result, reservation

    async def pause(self, destination: str, until: float) -> None:
        box = self._outbox
        at = box._db(until)
        await box._run("record", lambda conn: queries.pause(conn, destination, at))


class _Counted:
    """A connection that counts its round trips into the outbox's ``round_trips``."""

    def __init__(self, conn: Conn, outbox: PostgresOutbox) -> None:
        self._conn = conn
        self._outbox = outbox

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._conn, name)
        if name in ("execute", "fetch", "fetchrow", "fetchval", "executemany"):

            async def counted(*args: Any, **kwargs: Any) -> Any:
                self._outbox.round_trips += 1
                return await attribute(*args, **kwargs)

            return counted
        return attribute


async def _reset(conn: Conn) -> None:
    """What a connection needs when it goes back to the pool: no open transaction (no other session state is
    kept: locks are transaction-scoped and LISTEN has a connection of its own), so no round trip otherwise."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _transient(exc: BaseException) -> bool:
    """Worth another try at start: the server is not there yet, or is starting or shutting down."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    return getattr(exc, "sqlstate", "") in ("57P03", "57P01", "08006", "08001", "08004")


def describe(exc: BaseException) -> str:
    """One line about a database error, never containing the DSN."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{name}: {text}" if text else name
