"""The SQLite outbox's statements: one method per operation, on a connection the caller holds.

Writes run inside a transaction the caller opened (see :mod:`~bridge.outbox.sqlite.writer`)
and get the transaction's clock reading; what to store comes from
:mod:`bridge.outbox.policy`. :class:`Queries` also keeps the number of pending events,
which only this process changes (it holds the directory lock): a write adjusts it as it
goes, and the writer puts it back when the transaction rolls back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from bridge.outbox import policy, trail
from bridge.outbox.model import (
    DEAD_LETTER_FIELDS,
    Claimed,
    ClaimResult,
    DeadLetterFilter,
    NewEvent,
    OutboxStats,
    ReplayResult,
)
from bridge.outbox.sqlite.schema import PRIORITY_SQL
from bridge.outbox.trail import Retention, TrailEvent, TrailFilter

#: Keys per ``IN (...)`` list, well under SQLite's limit on bound parameters.
KEYS_PER_QUERY = 500
#: What a probe writes: a storage that takes this much again is worth trying a request on.
PROBE_BYTES = 16384
#: ``trail.append_step`` in SQL: ``steps`` with the step bound as ``?1`` appended (NULL: unchanged).
#: An event's first step (most are delivered at their first attempt) is written as text: ``?1`` is
#: ``trail.step``'s compact JSON, which ``json()`` would give back unchanged, and parsing ``steps``
#: and ``?1`` through the JSON functions costs about a fifth of a delivered event's UPDATE.
APPEND_STEP = (
    "CASE WHEN ?1 IS NULL THEN steps WHEN steps = '[]' THEN '[' || ?1 || ']'"
    f" WHEN json_array_length(steps) < {trail.MAX_STEPS} THEN json_insert(steps, '$[#]', json(?1))"
    " ELSE json_replace(steps, '$[#-1]', json(?1)) END"
)
#: Ids a trail scan without an alert_key reads per slice (one short read on the outbox thread).
TRAIL_SLICE = 4000

# The statements of delivery, which runs several per event on the event loop: built once, not per call.

#: Due heads of a destination (``?1``, at ``?2``), best first, up to ``?3``; each with, when ``?4``
#: (coalescing), the id of the next pending event of its key (NULL: none), the one that may supersede it.
CLAIM = (
    "SELECT e.id, e.destination, e.alert_key, e.event_status, e.body, e.attempts, e.created_at,"
    " CASE WHEN ?4 THEN (SELECT n.id FROM events n WHERE n.destination = e.destination"
    " AND n.alert_key = e.alert_key AND n.state = 'pending' AND n.id > e.id ORDER BY n.id LIMIT 1) END"
    " FROM heads h JOIN events e ON e.id = h.event_id"
    " WHERE h.destination = ?1 AND h.next_attempt_at <= ?2 AND h.lease_until <= ?2"
    " ORDER BY h.priority, h.event_id LIMIT ?3"
)
LEASE = "UPDATE heads SET lease_until = ? WHERE destination = ? AND alert_key = ?"
COALESCE = f"UPDATE events SET state = '{trail.COALESCED}', finished_at = ?2, steps = {APPEND_STEP} WHERE id = ?3"
#: The head of key (``?4``, ``?5``) is event ``?1`` now, of priority ``?2``, due at ``?3``.
MOVE_HEAD = (
    "UPDATE heads SET event_id = ?1, priority = ?2, next_attempt_at = ?3, lease_until = 0"
    " WHERE destination = ?4 AND alert_key = ?5"
)
#: The key (``?1``, ``?2``) has no pending event left: its head goes.
DROP_HEAD = (
    "DELETE FROM heads WHERE destination = ?1 AND alert_key = ?2 AND NOT EXISTS"
    " (SELECT 1 FROM events WHERE destination = ?1 AND alert_key = ?2 AND state = 'pending')"
)
#: The key (``?1``, ``?2``) has pending events: its head is the oldest, due at ``?3``.
ADVANCE_HEAD = (
    "UPDATE heads SET (event_id, priority, next_attempt_at, lease_until) ="
    f" (SELECT id, {PRIORITY_SQL}, ?3, 0 FROM events WHERE destination = ?1 AND alert_key = ?2 AND state = 'pending'"
    " ORDER BY id LIMIT 1) WHERE destination = ?1 AND alert_key = ?2"
)
KEY_OF = "SELECT destination, alert_key FROM events WHERE id = ? AND state = 'pending'"
#: Event ``?4`` is delivered (``?1``: the attempt's step, ``?3``: Flashduty's request_id).
DELIVERED = (
    f"UPDATE events SET state = '{trail.DELIVERED}', finished_at = ?2, attempts = attempts + 1,"
    f" request_id = ?3, steps = {APPEND_STEP} WHERE id = ?4"
)
DELIVERED_STATE = (
    "INSERT INTO key_state (destination, alert_key, delivered_id, delivered_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO UPDATE SET delivered_id = excluded.delivered_id, delivered_at = excluded.delivered_at"
)
#: Event ``?7`` is a dead letter (``?1``: its step).
PARK = (
    "UPDATE events SET state = 'dead', attempts = attempts + ?2, last_code = ?3, last_error = ?4,"
    f" request_id = ?5, dead_at = ?6, steps = {APPEND_STEP} WHERE id = ?7"
)
#: A request with several events: their trail rows name it.
Request = tuple[Sequence[NewEvent], str | None]


class Queries:
    """Every statement of the SQLite outbox, and its count of pending events."""

    def __init__(
        self,
        *,
        max_pending: int,
        max_age: float | None,
        refresh_interval: float,
        clock: Callable[[], float],
        retention: Retention | None = None,
    ) -> None:
        self.max_pending = max_pending
        self.max_age = max_age
        self.refresh_interval = refresh_interval
        #: Where the sweep of ``forget_idle_keys`` goes on from (in memory: a restart sweeps from the start).
        self.forget_from = ("", "")
        self.retention = retention or Retention()
        self._clock = clock
        self.pending = 0

    # -- intake ------------------------------------------------------------------------

    def insert(self, db: sqlite3.Connection, requests: list[Request], now: float) -> list[list[bool] | None]:
        """Insert several requests' events in one pass; per request, what was stored (None: no room).

        :func:`policy.admit` decides; the statements run once per batch (``executemany``), not
        once per event. A suppressed repeat is inserted as ``suppressed`` (finished), for the trail.
        """
        states = self._accepted_states(db, {(e.destination, e.alert_key) for events, _ in requests for e in events})
        admission = policy.admit(
            [events for events, _ in requests],
            states,
            pending=self.pending,
            max_pending=self.max_pending,
            refresh_interval=self.refresh_interval,
            now=now,
        )
        self.pending += admission.added
        # Stored and suppressed events in commit order, one statement: ids follow that order.
        rows = [
            (e.destination, e.alert_key, e.source, e.event_status, e.body, now, now, request_id)
            + (("pending", None) if kept else (trail.SUPPRESSED, now))
            for (events, request_id), stored in zip(requests, admission.results, strict=True)
            if stored is not None
            for e, kept in zip(events, stored, strict=True)
        ]
        if not rows:
            return admission.results
        (newest,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        if admission.accepted:
            db.executemany(
                "INSERT INTO key_state (destination, alert_key, accepted_digest, accepted_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET accepted_digest = excluded.accepted_digest,"
                " accepted_at = excluded.accepted_at",
                [(*key, digest, now) for key, digest in admission.accepted.items()],
            )
        db.executemany(
            "INSERT INTO events (destination, alert_key, source, event_status, body, created_at, next_attempt_at,"
            " inbound_request, state, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if admission.added:
            # AUTOINCREMENT ids only grow, so the new events are those above the old maximum. In id
            # order, the first new pending event of a key without pending events becomes its head.
            db.execute(
                "INSERT OR IGNORE INTO heads (destination, alert_key, event_id, priority, next_attempt_at)"
                f" SELECT destination, alert_key, id, {PRIORITY_SQL}, ? FROM events"
                " WHERE id > ? AND state = 'pending' ORDER BY id",
                (now, newest),
            )
        return admission.results

    def _accepted_states(self, db: sqlite3.Connection, keys: set[policy.Key]) -> dict[policy.Key, policy.AcceptedState]:
        """``(digest, accepted_at)`` of the last accepted event, for each of ``keys`` that has one."""
        by_destination: dict[str, list[str]] = {}
        for destination, alert_key in keys:
            by_destination.setdefault(destination, []).append(alert_key)
        states: dict[policy.Key, policy.AcceptedState] = {}
        for destination, alert_keys in by_destination.items():
            for start in range(0, len(alert_keys), KEYS_PER_QUERY):
                chunk = alert_keys[start : start + KEYS_PER_QUERY]
                for alert_key, digest, at in db.execute(
                    "SELECT alert_key, accepted_digest, accepted_at FROM key_state"
                    f" WHERE destination = ? AND alert_key IN ({', '.join('?' * len(chunk))})",
                    (destination, *chunk),
                ):
                    states[(destination, alert_key)] = (digest, at)
        return states

    @staticmethod
    def save_passthrough_key(db: sqlite3.Connection, destination: str, integration_key: str) -> None:
        db.execute("INSERT OR IGNORE INTO passthrough_keys VALUES (?, ?)", (destination, integration_key))

    @staticmethod
    def forget_passthrough_key(db: sqlite3.Connection, destination: str) -> bool:
        cursor = db.execute(
            "DELETE FROM passthrough_keys WHERE destination = ?"
            " AND NOT EXISTS (SELECT 1 FROM heads WHERE destination = ?)"
            " AND NOT EXISTS (SELECT 1 FROM events WHERE state = 'dead' AND destination = ?)",
            (destination, destination, destination),
        )
        return cursor.rowcount > 0

    @staticmethod
    def passthrough_keys(db: sqlite3.Connection) -> dict[str, str]:
        return {row[0]: row[1] for row in db.execute("SELECT * FROM passthrough_keys").fetchall()}

    @staticmethod
    def heartbeat(db: sqlite3.Connection, now: float) -> None:
        """The probe's write: one row of ``PROBE_BYTES``, rewritten each time (a few pages, not one)."""
        db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (repr(now).ljust(PROBE_BYTES),))

    # -- delivery ----------------------------------------------------------------------

    @staticmethod
    def destinations(db: sqlite3.Connection) -> list[str]:
        # One index seek per destination, instead of reading every head (DISTINCT would).
        found: list[str] = []
        after = ""
        while row := db.execute(
            "SELECT destination FROM heads WHERE destination > ? ORDER BY destination LIMIT 1", (after,)
        ).fetchone():
            after = row[0]
            found.append(after)
        return found

    def claim(
        self,
        db: sqlite3.Connection,
        now: float,
        destination: str,
        limit: int,
        lease_seconds: float,
        *,
        coalesce: bool,
    ) -> ClaimResult:
        events: list[Claimed] = []
        expired: list[Claimed] = []
        coalesced = 0
        while len(events) < limit:
            wanted = limit - len(events)
            rows = db.execute(CLAIM, (destination, now, wanted, coalesce)).fetchall()
            leased: list[tuple[float, str, str]] = []
            advanced = False  # a key's head moved to its next event, which is due now: look again
            for *fields, following in rows:
                event = Claimed(*fields)
                if self.max_age is not None and policy.is_expired(event.created_at, now, self.max_age):
                    message = policy.expiry_message(self.max_age)
                    note = trail.step(policy.EXPIRED, now, message=message)
                    self.park(db, event.id, policy.EXPIRED, message, None, now, note, attempted=False)
                    expired.append(event)
                    advanced = True
                    continue
                # Only a firing head can be superseded (an Ok never is): only then read the next one's status.
                if following is not None and event.event_status != "Ok":
                    (status,) = db.execute("SELECT event_status FROM events WHERE id = ?", (following,)).fetchone()
                    if policy.superseded_by(event.event_status, status):
                        # A newer firing state of the same key is queued behind this one: send that instead.
                        db.execute(COALESCE, (trail.step(trail.COALESCED, now, by=following), now, event.id))
                        self.pending -= 1
                        # ``following`` is the key's oldest pending event now: it becomes the head, due at once.
                        db.execute(
                            MOVE_HEAD,
                            (following, policy.priority(status), now, event.destination, event.alert_key),
                        )
                        coalesced += 1
                        advanced = True
                        continue
                leased.append((now + lease_seconds, event.destination, event.alert_key))
                events.append(event)
            # Before the next look: a leased head is no longer due.
            db.executemany(LEASE, leased)
            if len(rows) < wanted and not advanced:
                break  # every due head was read, and none became due meanwhile
        next_due = self.next_due(db, destination) if len(events) < limit else None
        return ClaimResult(events, coalesced, expired, next_due)

    @staticmethod
    def _key_of(db: sqlite3.Connection, event_id: int) -> tuple[str, str] | None:
        # A SELECT, not UPDATE ... RETURNING: SQLite runs RETURNING through its trigger machinery,
        # which costs more than this lookup by primary key (measured: 19.9 against 15.3 µs per ack).
        row = db.execute(KEY_OF, (event_id,)).fetchone()
        return (row[0], row[1]) if row else None

    @staticmethod
    def _advance(db: sqlite3.Connection, destination: str, alert_key: str, now: float) -> None:
        """Make the key's oldest pending event its head (the old head is no longer pending), or drop the head.

        Most keys have nothing queued behind the event that left: the head goes in one statement,
        and only when one is left does the head move to it.
        """
        if db.execute(DROP_HEAD, (destination, alert_key)).rowcount == 0:
            db.execute(ADVANCE_HEAD, (destination, alert_key, now))

    def delivered(self, db: sqlite3.Connection, now: float, event_id: int, attempt: trail.Attempt | None) -> None:
        key = self._key_of(db, event_id)
        if key is None:
            return  # no longer pending (parked, or delivered already): nothing to record
        db.execute(
            DELIVERED,
            (
                None if attempt is None else trail.attempt_step(attempt),
                now,
                None if attempt is None else attempt.request_id,
                event_id,
            ),
        )
        self.pending -= 1
        db.execute(DELIVERED_STATE, (*key, event_id, now))
        self._advance(db, *key, now)

    @staticmethod
    def retry_later(
        db: sqlite3.Connection, event_id: int, at: float, code: str, error: str, attempt: trail.Attempt | None
    ) -> None:
        db.execute(
            f"UPDATE events SET attempts = attempts + 1, last_code = ?2, last_error = ?3, steps = {APPEND_STEP}"
            " WHERE id = ?4 AND state = 'pending'",
            (None if attempt is None else trail.attempt_step(attempt), code, error, event_id),
        )
        db.execute(
            "UPDATE heads SET next_attempt_at = ?, lease_until = 0 WHERE event_id = ?"
            " AND (destination, alert_key) = (SELECT destination, alert_key FROM events WHERE id = ?)",
            (at, event_id, event_id),
        )

    def park(
        self,
        db: sqlite3.Connection,
        event_id: int,
        code: str,
        error: str,
        request_id: str | None,
        now: float,
        note: str,
        *,
        attempted: bool = True,
    ) -> None:
        """Make a pending event a dead letter and let its key's next event go; ``note`` is its step."""
        key = self._key_of(db, event_id)
        if key is None:
            return
        db.execute(PARK, (note, int(attempted), code, error, request_id, now, event_id))
        self.pending -= 1
        self._advance(db, *key, now)

    def next_due(self, db: sqlite3.Connection, destination: str | None) -> float | None:
        if destination is None:
            due = [when for name in self.destinations(db) if (when := self.next_due(db, name)) is not None]
            return min(due, default=None)
        # The expression matches the heads_due index exactly, so this is one index lookup.
        row = db.execute(
            "SELECT MIN(MAX(next_attempt_at, lease_until)) FROM heads WHERE destination = ?", (destination,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def stats(self, db: sqlite3.Connection) -> tuple[int, int, float | None]:
        """(pending, dead, oldest pending created_at)."""
        oldest = db.execute(
            "SELECT created_at FROM events WHERE id = (SELECT MIN(id) FROM events WHERE state = 'pending')"
        ).fetchone()
        dead: int = db.execute("SELECT COUNT(*) FROM events WHERE state = 'dead'").fetchone()[0]
        return self.pending, dead, oldest[0] if oldest else None

    @staticmethod
    def stats_by_destination(db: sqlite3.Connection) -> dict[str, OutboxStats]:
        pending = db.execute(
            "SELECT destination, COUNT(*), MIN(id) FROM events WHERE state = 'pending' GROUP BY destination"
        ).fetchall()
        dead = dict(
            db.execute("SELECT destination, COUNT(*) FROM events WHERE state = 'dead' GROUP BY destination").fetchall()
        )
        found: dict[str, OutboxStats] = {}
        for destination, count, oldest_id in pending:
            (oldest,) = db.execute("SELECT created_at FROM events WHERE id = ?", (oldest_id,)).fetchone()
            found[destination] = OutboxStats(count, dead.pop(destination, 0), oldest)
        for destination, count in dead.items():
            found[destination] = OutboxStats(0, count, None)
        return found

    # -- dead letters ------------------------------------------------------------------

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

    def dead_letters(self, db: sqlite3.Connection, where: DeadLetterFilter) -> list[dict[str, Any]]:
        condition, args = self._dead_where(where)
        cursor = db.execute(
            f"SELECT {', '.join(DEAD_LETTER_FIELDS)} FROM events WHERE {condition} ORDER BY id LIMIT ?",
            (*args, where.limit),
        )
        return [dict(zip(DEAD_LETTER_FIELDS, row, strict=True)) for row in cursor.fetchall()]

    def replay(self, db: sqlite3.Connection, now: float, where: DeadLetterFilter, force: bool) -> ReplayResult:
        condition, args = self._dead_where(where)
        rows = db.execute(
            f"SELECT id, destination, alert_key, event_status FROM events WHERE {condition} ORDER BY id LIMIT ?",
            (*args, where.limit),
        ).fetchall()
        result = ReplayResult([], [], [])
        for event_id, destination, alert_key, status in rows:
            head = db.execute(
                "SELECT event_id, lease_until FROM heads WHERE destination = ? AND alert_key = ?",
                (destination, alert_key),
            ).fetchone()
            state = db.execute(
                "SELECT delivered_id FROM key_state WHERE destination = ? AND alert_key = ?",
                (destination, alert_key),
            ).fetchone()
            verdict = policy.replay_verdict(
                event_id,
                head=None if head is None else (head[0], head[1]),
                delivered_id=None if state is None else state[0],
                now=now,
                force=force,
            )
            if policy.held_back(verdict, event_id, result):
                continue
            # attempts keeps counting: the history of what Flashduty was sent stays true.
            db.execute(
                f"UPDATE events SET state = 'pending', dead_at = NULL, steps = {APPEND_STEP} WHERE id = ?2",
                (trail.step(trail.REPLAYED, now, forced=force), event_id),
            )
            self.pending += 1
            # The replayed event is older than anything pending for its key, or it is alone.
            db.execute(
                "INSERT INTO heads (destination, alert_key, event_id, priority, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET event_id = excluded.event_id,"
                " priority = excluded.priority, next_attempt_at = excluded.next_attempt_at, lease_until = 0"
                " WHERE excluded.event_id < heads.event_id",
                (destination, alert_key, event_id, policy.priority(status), now),
            )
            result.replayed.append(event_id)
        return result

    def purge(self, db: sqlite3.Connection, now: float, where: DeadLetterFilter) -> int:
        """Dead letters leave the outbox for good; the trail keeps them as ``purged`` until its retention ends."""
        condition, args = self._dead_where(where)
        ids = [
            row[0]
            for row in db.execute(f"SELECT id FROM events WHERE {condition} ORDER BY id LIMIT ?", (*args, where.limit))
        ]
        note = trail.step(trail.PURGED, now)
        db.executemany(
            f"UPDATE events SET state = '{trail.PURGED}', finished_at = ?2, steps = {APPEND_STEP} WHERE id = ?3",
            [(note, now, i) for i in ids],
        )
        return len(ids)

    # -- the trail ---------------------------------------------------------------------

    def forget_idle_keys(self, db: sqlite3.Connection, now: float) -> int:
        """The next slice of the sweep over ``key_state`` (in key order, from where the last one ended):
        delete the states :func:`policy.forgettable` allows, checked in this transaction."""
        rows = db.execute(
            "SELECT destination, alert_key, accepted_at FROM key_state WHERE (destination, alert_key) > (?, ?)"
            " ORDER BY destination, alert_key LIMIT ?",
            (*self.forget_from, policy.FORGET_BATCH),
        ).fetchall()
        self.forget_from = ("", "") if len(rows) < policy.FORGET_BATCH else (rows[-1][0], rows[-1][1])
        gone = []
        for destination, alert_key, accepted_at in rows:
            if not policy.forgettable(accepted_at, now, self.refresh_interval, outstanding=False):
                continue
            outstanding = db.execute(
                "SELECT EXISTS (SELECT 1 FROM heads WHERE destination = ?1 AND alert_key = ?2)"
                " OR EXISTS (SELECT 1 FROM events WHERE alert_key = ?2 AND destination = ?1 AND state = 'dead')",
                (destination, alert_key),
            ).fetchone()[0]
            if not outstanding:
                gone.append((destination, alert_key))
        db.executemany("DELETE FROM key_state WHERE destination = ? AND alert_key = ?", gone)
        return len(gone)

    def prune_trail(self, db: sqlite3.Connection, now: float) -> int:
        """Delete up to ``trail.PRUNE_BATCH`` finished events past the retention, oldest first."""
        query = "SELECT id, finished_at FROM events WHERE finished_at IS NOT NULL ORDER BY id LIMIT ?"
        (newest,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        # Most calls find nothing due: look at the oldest finished event before reading a batch.
        if not trail.prunable(db.execute(query, (1,)).fetchall(), newest_id=newest, now=now, retention=self.retention):
            return 0
        oldest = db.execute(query, (trail.PRUNE_BATCH,)).fetchall()
        ids = trail.prunable(oldest, newest_id=newest, now=now, retention=self.retention)
        db.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    @staticmethod
    def trail_bounds(db: sqlite3.Connection, since: float | None) -> tuple[int, int]:
        """``(low, high)``: the ids a trail scan covers, ``low`` the first that arrived at or after ``since``.

        Ids follow commit order and so, but for clock steps, arrival time: a binary search over
        the primary key finds ``low`` in a few lookups instead of a scan.
        """
        low, high = db.execute("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM events").fetchone()
        if since is None or high == 0:
            return low, high
        first, last = low, high + 1
        while first < last:
            middle = (first + last) // 2
            row = db.execute(
                "SELECT id, created_at FROM events WHERE id >= ? ORDER BY id LIMIT 1", (middle,)
            ).fetchone()
            if row is None or row[1] >= since:
                last = middle
            else:
                first = row[0] + 1
        return first, high

    @staticmethod
    def trail_slice(db: sqlite3.Connection, where: TrailFilter, low: int, high: int, limit: int) -> list[TrailEvent]:
        """Events matching ``where`` with ids in ``[low, high]``, newest first, up to ``limit``."""
        clauses = ["id BETWEEN ? AND ?"]
        args: list[Any] = [low, high]
        for column, value in (
            ("alert_key", where.alert_key),
            ("destination", where.destination),
            ("event_status", where.event_status),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if where.outcome == trail.REPLAYED:
            clauses.append('instr(steps, \'"kind":"replayed"\') > 0')
        elif where.outcome is not None:
            clauses.append("state = ?")
            args.append(where.outcome)
        if where.since is not None:
            clauses.append("created_at >= ?")
            args.append(where.since)
        for name, value in where.labels:
            clauses.append("json_extract(body, ?) = ?")
            args += [trail.label_path(name), value]
        rows = db.execute(
            f"SELECT {', '.join(trail.ROW_FIELDS)} FROM events WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [trail.event_from_row(row) for row in rows]

    @staticmethod
    def trail_event(db: sqlite3.Connection, event_id: int) -> TrailEvent | None:
        row = db.execute(f"SELECT {', '.join(trail.ROW_FIELDS)} FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else trail.event_from_row(row)
