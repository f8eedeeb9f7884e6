"""The PostgreSQL outbox's statements: one function per operation, on a connection the caller holds.

Set-based: a batch of requests, or of acks, is one statement per step, whatever its size
(arrays passed with ``unnest``), so round trips per event fall as load rises. What to store
comes from :mod:`bridge.outbox.policy`, exactly as for SQLite.

Locking, the one rule that keeps per-key order and suppression right across replicas: every
transaction that adds events to a key, or moves its head, first takes that key's advisory
lock (:func:`key_lock`, ``pg_advisory_xact_lock``), all of them at once in ascending order
(:func:`lock_statement`), so two such transactions never deadlock. Claims never wait: they
lease heads with ``FOR UPDATE SKIP LOCKED``; a head a claim must clean up (expired, or
superseded) is handled afterwards in a keyed transaction of its own.

The trail: rows are never deleted on the way (a delivered, suppressed, coalesced or purged event is
updated to that state, its step appended with :data:`APPEND_STEP`, ``trail.append_step`` in SQL);
only :func:`prune_trail` deletes, by :func:`bridge.outbox.trail.prunable`. The step records and the
rules come from :mod:`bridge.outbox.trail`, as for SQLite.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bridge.outbox import policy, trail
from bridge.outbox.model import DEAD_LETTER_FIELDS, Claimed, DeadLetterFilter, NewEvent, ReplayResult
from bridge.outbox.postgres.schema import PRIORITY_SQL, append_step
from bridge.outbox.trail import Retention, TrailEvent, TrailFilter

#: A connection of its own, or one lent by the pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

#: What a probe writes: a database that takes this much again is worth trying a request on.
PROBE_BYTES = 16384
#: The channel a commit that adds events notifies; idle replicas listen on it.
CHANNEL = "flashduty_bridge_outbox"
#: One request's events and its inbound request id (their trail rows name it).
Request = tuple[Sequence[NewEvent], str | None]
#: ``steps`` with the step bound as ``$1`` appended (NULL: unchanged): ``trail.append_step``.
APPEND_STEP = append_step("steps", "$1::text")


def key_lock(destination: str, alert_key: str) -> int:
    """The advisory-lock key of ``(destination, alert_key)``: a signed 64-bit hash (collisions only serialise)."""
    digest = hashlib.blake2b(f"{destination}\x00{alert_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_statement(keys: Iterable[tuple[str, str]], *, durable: bool = False) -> str:
    """``BEGIN`` and the advisory locks of ``keys``, ascending (no deadlock between two such transactions).

    ``durable``: this transaction accepts events from senders, so its COMMIT waits for the WAL flush
    (``synchronous_commit = on``); the connections' default is ``off``, for bookkeeping (see the backend).
    One round trip: the lock keys are integers computed here, so they are literals, safely; one array
    literal, not one call per key, since a select list holds at most 1,664 entries and a group
    transaction may lock many thousands of keys.
    """
    statements = ["BEGIN"]
    if durable:
        statements.append("SET LOCAL synchronous_commit = on")
    locks = sorted({key_lock(*key) for key in keys})
    if locks:
        # unnest returns the elements in array order: the locks are taken ascending.
        array = "{" + ",".join(str(lock) for lock in locks) + "}"
        statements.append(f"SELECT count(pg_advisory_xact_lock(k)) FROM unnest('{array}'::bigint[]) AS k")
    return "; ".join(statements)


# -- intake ------------------------------------------------------------------------------

_STATES = """
SELECT s.destination, s.alert_key, s.accepted_digest, s.accepted_at
FROM unnest($1::text[], $2::text[]) AS k(destination, alert_key)
JOIN outbox_key_state s ON s.destination = k.destination AND s.alert_key = k.alert_key
"""

_INSERT = f"""
WITH accepted AS (
    INSERT INTO outbox_key_state AS s (destination, alert_key, accepted_digest, accepted_at)
    SELECT destination, alert_key, digest, $1 FROM unnest($2::text[], $3::text[], $4::text[])
        AS a(destination, alert_key, digest)
    ON CONFLICT (destination, alert_key)
    DO UPDATE SET accepted_digest = excluded.accepted_digest, accepted_at = excluded.accepted_at
), added AS (  -- stored and suppressed events, in commit order: ids follow it
    INSERT INTO outbox_events (destination, alert_key, source, event_status, body, created_at, inbound_request,
                               state, finished_at)
    SELECT destination, alert_key, source, event_status, body, $1, inbound_request,
           CASE WHEN kept THEN 'pending' ELSE '{trail.SUPPRESSED}' END, CASE WHEN kept THEN NULL ELSE $1 END
    FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::boolean[])
        WITH ORDINALITY AS e(destination, alert_key, source, event_status, body, inbound_request, kept, n)
    ORDER BY n
    RETURNING id, destination, alert_key, event_status, state
), used AS (  -- a passthrough key in use at any replica is not retired by another
    UPDATE outbox_passthrough_keys SET used_at = $1 WHERE destination IN (SELECT destination FROM added)
)
INSERT INTO outbox_heads (destination, alert_key, event_id, priority, next_attempt_at)
SELECT DISTINCT ON (destination, alert_key) destination, alert_key, id, {PRIORITY_SQL}, $1
FROM added WHERE state = 'pending' ORDER BY destination, alert_key, id
ON CONFLICT (destination, alert_key) DO NOTHING
"""


async def insert(
    conn: Conn,
    requests: Sequence[Request],
    now: float,
    *,
    pending: int,
    max_pending: int,
    refresh_interval: float,
) -> policy.Admission:
    """Admit and insert several requests' events, inside a transaction holding their keys' locks.

    A suppressed repeat is inserted too, as ``suppressed`` (finished), for the trail."""
    keys = list({(e.destination, e.alert_key) for events, _ in requests for e in events})
    rows = await conn.fetch(_STATES, [k[0] for k in keys], [k[1] for k in keys])
    states = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    admission = policy.admit(
        [events for events, _ in requests],
        states,
        pending=pending,
        max_pending=max_pending,
        refresh_interval=refresh_interval,
        now=now,
    )
    rows_in = [
        (e, request_id, kept)
        for (events, request_id), stored in zip(requests, admission.results, strict=True)
        if stored is not None
        for e, kept in zip(events, stored, strict=True)
    ]
    if rows_in:
        accepted = list(admission.accepted.items())
        await conn.execute(
            _INSERT,
            now,
            [key[0] for key, _ in accepted],
            [key[1] for key, _ in accepted],
            [digest for _, digest in accepted],
            [e.destination for e, _, _ in rows_in],
            [e.alert_key for e, _, _ in rows_in],
            [e.source for e, _, _ in rows_in],
            [e.event_status for e, _, _ in rows_in],
            [e.body for e, _, _ in rows_in],
            [request_id for _, request_id, _ in rows_in],
            [kept for _, _, kept in rows_in],
        )
    return admission


async def save_passthrough_key(conn: Conn, destination: str, integration_key: str, now: float) -> None:
    await conn.execute(
        "INSERT INTO outbox_passthrough_keys VALUES ($1, $2, $3)"
        " ON CONFLICT (destination) DO UPDATE SET used_at = excluded.used_at",
        destination,
        integration_key,
        now,
    )


async def forget_passthrough_key(conn: Conn, destination: str, now: float, grace: float) -> bool:
    """Forget a key with nothing stored for it that no replica saved or used within ``grace`` seconds."""
    status = await conn.execute(
        "DELETE FROM outbox_passthrough_keys WHERE destination = $1 AND used_at < $2"
        " AND NOT EXISTS (SELECT 1 FROM outbox_heads WHERE destination = $1)"
        " AND NOT EXISTS (SELECT 1 FROM outbox_events WHERE state = 'dead' AND destination = $1)",
        destination,
        now - grace,
    )
    return str(status) == "DELETE 1"


async def passthrough_keys(conn: Conn) -> dict[str, str]:
    return {r[0]: r[1] for r in await conn.fetch("SELECT destination, integration_key FROM outbox_passthrough_keys")}


async def heartbeat(conn: Conn, now: float) -> None:
    """The probe's write, committed synchronously like a put."""
    await conn.execute(
        "INSERT INTO outbox_meta VALUES ('probe', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        repr(now).ljust(PROBE_BYTES),
    )


# -- delivery ----------------------------------------------------------------------------

_DESTINATIONS = """
WITH RECURSIVE d AS (
    (SELECT destination FROM outbox_heads ORDER BY destination LIMIT 1)
    UNION ALL
    SELECT (SELECT h.destination FROM outbox_heads h WHERE h.destination > d.destination
            ORDER BY h.destination LIMIT 1)
    FROM d WHERE d.destination IS NOT NULL
)
SELECT destination FROM d WHERE destination IS NOT NULL
"""


async def destinations(conn: Conn) -> list[str]:
    """One index seek per destination (a loose index scan), not a read of every head."""
    return [r[0] for r in await conn.fetch(_DESTINATIONS)]


#: Lease up to $3 due heads of destination $1 at time $2 for $4 seconds, to replica $5, within the shared
#: rate limit ($7 per second, $8 per minute, windows $9 and $10 long): the due heads are locked first
#: (``FOR UPDATE SKIP LOCKED``), ``outbox_reserve`` grants sends for as many of them as the limit allows,
#: and only those are leased. Each event comes with the status of the next pending event of its key (for
#: coalescing, if $6; not needed after an Ok). A last row (part 1) carries the grant, and when the
#: destination's next head is due: the soonest of the heads not leased here (read through the heads_due
#: index, at most $3 + 1 of them) and of the leases taken here.
CLAIM = """
WITH due AS MATERIALIZED (
    SELECT destination, alert_key, priority, event_id FROM outbox_heads
    WHERE destination = $1 AND next_attempt_at <= $2 AND leased_until <= $2
    ORDER BY priority, event_id LIMIT $3
    FOR UPDATE SKIP LOCKED
), granted AS MATERIALIZED (  -- no pacing ($7 null): every due head
    SELECT * FROM outbox_reserve($1, (SELECT count(*)::integer FROM due), $7, $8, $2, $9, $10) WHERE $7 IS NOT NULL
    UNION ALL
    SELECT (SELECT count(*)::integer FROM due), $2, 0, 0 WHERE $7 IS NULL
), chosen AS (
    SELECT destination, alert_key FROM due ORDER BY priority, event_id LIMIT (SELECT granted FROM granted)
), leased AS (
    UPDATE outbox_heads h SET leased_until = $2 + $4, leased_by = $5
    FROM chosen WHERE h.destination = chosen.destination AND h.alert_key = chosen.alert_key
    RETURNING h.event_id, h.priority
), soonest AS (
    SELECT h.destination, h.alert_key, greatest(h.next_attempt_at, h.leased_until) AS at FROM outbox_heads h
    WHERE h.destination = $1 ORDER BY greatest(h.next_attempt_at, h.leased_until) LIMIT $3 + 1
)
SELECT 0 AS part, leased.priority, leased.event_id,
       e.id, e.destination, e.alert_key, e.event_status, e.body, e.attempts, e.created_at,
       CASE WHEN $6 AND e.event_status <> 'Ok' THEN (
           SELECT n.event_status FROM outbox_events n
           WHERE n.destination = e.destination AND n.alert_key = e.alert_key AND n.state = 'pending' AND n.id > e.id
           ORDER BY n.id LIMIT 1
       ) END AS next_status,
       NULL::double precision AS next_due, NULL::integer, NULL::integer, NULL::double precision, NULL::integer,
       NULL::integer
FROM leased JOIN outbox_events e ON e.id = leased.event_id
UNION ALL
SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       least(
           (SELECT min(s.at) FROM soonest s WHERE NOT EXISTS (
               SELECT 1 FROM chosen c WHERE c.destination = s.destination AND c.alert_key = s.alert_key)),
           (SELECT $2 + $4 FROM leased LIMIT 1)
       ),
       (SELECT count(*)::integer FROM due), g.granted, g.next_free, g.used_second, g.used_minute
FROM granted g
ORDER BY part, priority, event_id
"""

#: Per claim: the heads and their next statuses; the claim's next due time; and the grant: (due heads found,
#: sends granted, when the next may go, sends in the second and minute windows).
ClaimRows = tuple[list[tuple[Claimed, str | None]], float | None, tuple[int, int, float, int, int]]


async def claim(
    conn: Conn,
    destination: str,
    now: float,
    limit: int,
    lease_seconds: float,
    replica: str,
    coalesce: bool,
    pacing: tuple[int, int, float, float] | None,
) -> ClaimRows:
    """Lease due heads (within the shared rate limit, with ``pacing``): one statement, committed on its own."""
    pacing = pacing or (None, None, None, None)  # type: ignore[assignment]
    assert pacing is not None
    rows = await conn.fetch(CLAIM, destination, now, limit, lease_seconds, replica, coalesce, *pacing)
    *events, last = rows
    grant = (int(last[12]), int(last[13]), float(last[14]), int(last[15]), int(last[16]))
    return [(Claimed(*row[3:10]), row[10]) for row in events], last[11], grant


#: Per key of $1/$2: its oldest pending event becomes its head (due at $3, not leased), or the head goes.
_ADVANCE = f"""
WITH k AS (
    SELECT k.destination, k.alert_key, n.id, n.event_status
    FROM unnest($1::text[], $2::text[]) AS k(destination, alert_key)
    LEFT JOIN LATERAL (
        SELECT e.id, e.event_status FROM outbox_events e
        WHERE e.destination = k.destination AND e.alert_key = k.alert_key AND e.state = 'pending'
        ORDER BY e.id LIMIT 1
    ) n ON true
), gone AS (
    DELETE FROM outbox_heads h USING k
    WHERE k.id IS NULL AND h.destination = k.destination AND h.alert_key = k.alert_key
)
UPDATE outbox_heads h
SET event_id = k.id, priority = {PRIORITY_SQL.replace("event_status", "k.event_status")}, next_attempt_at = $3,
    leased_until = 0, leased_by = NULL
FROM k WHERE k.id IS NOT NULL AND h.destination = k.destination AND h.alert_key = k.alert_key
"""


async def advance(conn: Conn, keys: Sequence[tuple[str, str]], now: float) -> None:
    """Make each key's oldest pending event its head, or drop the head (the caller holds the keys' locks)."""
    if keys:
        await conn.execute(_ADVANCE, [k[0] for k in keys], [k[1] for k in keys], now)


#: An ack: the delivered event, its key, and its attempt (a trail step, and Flashduty's request_id), if any.
Ack = tuple[int, tuple[str, str], str | None, str | None]


async def delivered(conn: Conn, acks: Sequence[Ack], now: float) -> int:
    """Mark events delivered (the trail keeps them), record their attempts, and let their keys' next events go
    (``outbox_delivered``: one round trip, which takes the keys' locks itself); returns how many were pending."""
    locks = sorted({key_lock(*ack[1]) for ack in acks})
    return int(
        await conn.fetchval(
            "SELECT outbox_delivered($1, $2, $3, $4, $5)",
            [ack[0] for ack in acks],
            locks,
            now,
            [ack[2] for ack in acks],
            [ack[3] for ack in acks],
        )
    )


async def retry_later(conn: Conn, event_id: int, at: float, code: str, error: str, note: str | None) -> None:
    """Keep the (leased) head, due again at ``at``, its attempt (``note``) recorded: one statement, no key lock
    (only its lease holder moves it)."""
    await conn.execute(
        "WITH e AS (UPDATE outbox_events SET attempts = attempts + 1, last_code = $3, last_error = $4,"
        f" steps = {APPEND_STEP} WHERE id = $2 AND state = 'pending' RETURNING destination, alert_key)"
        " UPDATE outbox_heads h SET next_attempt_at = $5, leased_until = 0, leased_by = NULL"
        " FROM e WHERE h.destination = e.destination AND h.alert_key = e.alert_key AND h.event_id = $2",
        note,
        event_id,
        code,
        error,
        at,
    )


async def release_leases(conn: Conn, replica: str) -> None:
    """Every lease ``replica`` holds ends now (it stops; its attempts are over)."""
    await conn.execute(
        "UPDATE outbox_heads SET leased_until = 0, leased_by = NULL WHERE leased_by = $1 AND leased_until > 0", replica
    )


async def key_of(conn: Conn, event_id: int) -> tuple[str, str] | None:
    row = await conn.fetchrow(
        "SELECT destination, alert_key FROM outbox_events WHERE id = $1 AND state = 'pending'", event_id
    )
    return None if row is None else (row[0], row[1])


async def park(
    conn: Conn,
    event_id: int,
    code: str,
    error: str,
    request_id: str | None,
    now: float,
    note: str,
    *,
    attempted: bool = True,
) -> bool:
    """Make a pending event a dead letter, ``note`` its step, and let its key's next event go (the caller holds
    the key's lock)."""
    row = await conn.fetchrow(
        "UPDATE outbox_events SET state = 'dead', attempts = attempts + $3, last_code = $4, last_error = $5,"
        f" request_id = $6, dead_at = $7, steps = {APPEND_STEP} WHERE id = $2 AND state = 'pending'"
        " RETURNING destination, alert_key",
        note,
        event_id,
        int(attempted),
        code,
        error,
        request_id,
        now,
    )
    if row is None:
        return False
    await advance(conn, [(row[0], row[1])], now)
    return True


async def coalesce_head(conn: Conn, event: Claimed, now: float, at: float) -> bool:
    """Finish a superseded firing head as ``coalesced`` (by the pending event right behind it) and advance its
    key (the caller holds the key's lock); ``at``: ``now`` on the callers' clock, for the step."""
    following = await conn.fetchval(
        "SELECT id FROM outbox_events WHERE destination = $1 AND alert_key = $2 AND state = 'pending' AND id > $3"
        " ORDER BY id LIMIT 1",
        event.destination,
        event.alert_key,
        event.id,
    )
    if following is None:
        return False
    status = await conn.execute(
        f"UPDATE outbox_events SET state = '{trail.COALESCED}', finished_at = $3, steps = {APPEND_STEP}"
        " WHERE id = $2 AND state = 'pending'",
        trail.step(trail.COALESCED, at, by=following),
        event.id,
        now,
    )
    if status != "UPDATE 1":
        return False
    await advance(conn, [(event.destination, event.alert_key)], now)
    return True


async def next_due(conn: Conn, destination: str | None) -> float | None:
    if destination is None:
        value = await conn.fetchval(
            f"SELECT min((SELECT min(greatest(h.next_attempt_at, h.leased_until)) FROM outbox_heads h"
            f" WHERE h.destination = d.destination)) FROM ({_DESTINATIONS}) d"
        )
    else:
        # The expression matches the outbox_heads_due index: one index lookup.
        value = await conn.fetchval(
            "SELECT min(greatest(next_attempt_at, leased_until)) FROM outbox_heads WHERE destination = $1",
            destination,
        )
    return None if value is None else float(value)


#: (pending, dead, oldest pending created_at, the database's clock).
STATS = """
SELECT (SELECT count(*) FROM outbox_events WHERE state = 'pending'),
       (SELECT count(*) FROM outbox_events WHERE state = 'dead'),
       (SELECT created_at FROM outbox_events WHERE state = 'pending' ORDER BY id LIMIT 1),
       extract(epoch FROM clock_timestamp())::double precision
"""
#: Per destination with pending or dead events: two reads of pending and dead rows, never of the trail's finished ones.
STATS_BY_DESTINATION = """
WITH p AS (SELECT destination, count(*) AS n, (array_agg(created_at ORDER BY id))[1] AS oldest
           FROM outbox_events WHERE state = 'pending' GROUP BY destination),
     d AS (SELECT destination, count(*) AS n FROM outbox_events WHERE state = 'dead' GROUP BY destination)
SELECT destination, coalesce(p.n, 0), coalesce(d.n, 0), p.oldest FROM p FULL JOIN d USING (destination)
ORDER BY destination
"""


async def stats(conn: Conn) -> tuple[int, int, float | None, float]:
    """(pending, dead, oldest pending created_at, the database's clock) in one round trip."""
    row = await conn.fetchrow(STATS)
    assert row is not None
    return int(row[0]), int(row[1]), row[2], float(row[3])


async def stats_by_destination(conn: Conn) -> list[tuple[str, int, int, float | None]]:
    """Per destination with pending or dead events: (destination, pending, dead, oldest pending created_at)."""
    rows = await conn.fetch(STATS_BY_DESTINATION)
    return [(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]


# -- forgetting idle keys ----------------------------------------------------------------


async def forget_idle_keys(
    conn: Conn, after: tuple[str, str], now: float, refresh_interval: float
) -> tuple[int, tuple[str, str] | None]:
    """The slice of the key-state sweep after ``after``: delete what :func:`policy.forgettable` allows.

    Returns (deleted, where the next slice starts; None: the sweep is over). The rule picks the
    candidates; the DELETE checks again, in its own statement, that each is still idle (its
    ``accepted_at`` unchanged, no head, no dead letter), so a put or a dead letter committed by
    another replica in between keeps its key.
    """
    rows = await conn.fetch(
        "SELECT destination, alert_key, accepted_at FROM outbox_key_state WHERE (destination, alert_key) > ($1, $2)"
        " ORDER BY destination, alert_key LIMIT $3",
        *after,
        policy.FORGET_BATCH,
    )
    following = (rows[-1][0], rows[-1][1]) if len(rows) == policy.FORGET_BATCH else None
    candidates = [r for r in rows if policy.forgettable(r[2], now, refresh_interval, outstanding=False)]
    if not candidates:
        return 0, following
    deleted = await conn.fetch(
        "DELETE FROM outbox_key_state s USING unnest($1::text[], $2::text[], $3::float8[]) AS c(d, k, at)"
        " WHERE s.destination = c.d AND s.alert_key = c.k AND s.accepted_at IS NOT DISTINCT FROM c.at"
        " AND NOT EXISTS (SELECT 1 FROM outbox_heads h WHERE h.destination = c.d AND h.alert_key = c.k)"
        " AND NOT EXISTS (SELECT 1 FROM outbox_events e"
        "                 WHERE e.destination = c.d AND e.alert_key = c.k AND e.state = 'dead')"
        " RETURNING 1",
        [r[0] for r in candidates],
        [r[1] for r in candidates],
        [r[2] for r in candidates],
    )
    return len(deleted), following


# -- dead letters ------------------------------------------------------------------------


def _dead_where(where: DeadLetterFilter, now: float) -> tuple[str, list[Any]]:
    clauses = ["state = 'dead'"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if where.ids:
        clauses.append(f"id = ANY({arg(list(where.ids))}::bigint[])")
    if where.destination is not None:
        clauses.append(f"destination = {arg(where.destination)}")
    if where.code is not None:
        clauses.append(f"last_code = {arg(where.code)}")
    if where.older_than is not None:
        clauses.append(f"dead_at <= {arg(now - where.older_than)}")
    return " AND ".join(clauses), args


async def dead_letters(conn: Conn, where: DeadLetterFilter, now: float) -> list[dict[str, Any]]:
    condition, args = _dead_where(where, now)
    rows = await conn.fetch(
        f"SELECT {', '.join(DEAD_LETTER_FIELDS)} FROM outbox_events WHERE {condition}"
        f" ORDER BY id LIMIT ${len(args) + 1}",
        *args,
        where.limit,
    )
    return [dict(zip(DEAD_LETTER_FIELDS, row, strict=True)) for row in rows]


async def dead_keys(conn: Conn, where: DeadLetterFilter, now: float) -> list[tuple[str, str]]:
    """The keys of the dead letters ``where`` selects (to lock them before a replay)."""
    condition, args = _dead_where(where, now)
    rows = await conn.fetch(
        f"SELECT DISTINCT destination, alert_key FROM (SELECT destination, alert_key FROM outbox_events"
        f" WHERE {condition} ORDER BY id LIMIT ${len(args) + 1}) d",
        *args,
        where.limit,
    )
    return [(r[0], r[1]) for r in rows]


async def replay(conn: Conn, now: float, where: DeadLetterFilter, force: bool, at: float) -> ReplayResult:
    """Queue dead letters again in their original per-key order (the caller holds their keys' locks); ``at``:
    ``now`` on the callers' clock, for the steps."""
    condition, args = _dead_where(where, now)
    rows = await conn.fetch(
        f"SELECT id, destination, alert_key, event_status FROM outbox_events WHERE {condition}"
        f" ORDER BY id LIMIT ${len(args) + 1}",
        *args,
        where.limit,
    )
    result = ReplayResult([], [], [])
    for event_id, destination, alert_key, status in rows:
        head = await conn.fetchrow(
            "SELECT event_id, leased_until FROM outbox_heads WHERE destination = $1 AND alert_key = $2",
            destination,
            alert_key,
        )
        delivered_id = await conn.fetchval(
            "SELECT delivered_id FROM outbox_key_state WHERE destination = $1 AND alert_key = $2",
            destination,
            alert_key,
        )
        verdict = policy.replay_verdict(
            event_id,
            head=None if head is None else (head[0], head[1]),
            delivered_id=delivered_id,
            now=now,
            force=force,
        )
        if policy.held_back(verdict, event_id, result):
            continue
        # attempts keeps counting: the history of what Flashduty was sent stays true.
        await conn.execute(
            f"UPDATE outbox_events SET state = 'pending', dead_at = NULL, steps = {APPEND_STEP} WHERE id = $2",
            trail.step(trail.REPLAYED, at, forced=force),
            event_id,
        )
        # The replayed event is older than anything pending for its key, or it is alone.
        await conn.execute(
            "INSERT INTO outbox_heads AS h (destination, alert_key, event_id, priority, next_attempt_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (destination, alert_key) DO UPDATE"
            " SET event_id = excluded.event_id, priority = excluded.priority,"
            " next_attempt_at = excluded.next_attempt_at, leased_until = 0, leased_by = NULL"
            " WHERE excluded.event_id < h.event_id",
            destination,
            alert_key,
            event_id,
            policy.priority(status),
            now,
        )
        result.replayed.append(event_id)
    return result


async def purge(conn: Conn, where: DeadLetterFilter, now: float, at: float) -> int:
    """Dead letters leave the outbox for good; the trail keeps them as ``purged`` until its retention ends
    (``at``: ``now`` on the callers' clock, for the step)."""
    condition, args = _dead_where(where, now)
    note, finished, limit = f"${len(args) + 1}", f"${len(args) + 2}", f"${len(args) + 3}"
    rows = await conn.fetch(
        f"UPDATE outbox_events SET state = '{trail.PURGED}', finished_at = {finished},"
        f" steps = {append_step('steps', note + '::text')} WHERE id IN (SELECT id FROM outbox_events"
        f" WHERE {condition} ORDER BY id LIMIT {limit}) AND state = 'dead' RETURNING id",
        *args,
        trail.step(trail.PURGED, at),
        now,
        where.limit,
    )
    return len(rows)


# -- the shared rate limit ---------------------------------------------------------------


async def release(conn: Conn, destination: str, at: float, count: int) -> None:
    """Give back ``count`` sends granted at ``at`` that will not be sent (their heads expired or were superseded)."""
    await conn.execute(
        "UPDATE outbox_rate_sends SET n = greatest(0, n - $3) WHERE destination = $1 AND slot = floor($2 * 100)",
        destination,
        at,
        count,
    )


async def pause(conn: Conn, destination: str, until: float) -> None:
    await conn.execute(
        "INSERT INTO outbox_pacing AS p VALUES ($1, $2) ON CONFLICT (destination)"
        " DO UPDATE SET paused_until = greatest(p.paused_until, excluded.paused_until)",
        destination,
        until,
    )


# -- the trail ---------------------------------------------------------------------------

#: The oldest finished event, and the newest id: whether a prune has anything to do (an index lookup each).
_PRUNE_PROBE = """
SELECT (SELECT coalesce(max(id), 0) FROM outbox_events),
       (SELECT id FROM outbox_events WHERE finished_at IS NOT NULL ORDER BY id LIMIT 1),
       (SELECT finished_at FROM outbox_events WHERE finished_at IS NOT NULL ORDER BY id LIMIT 1)
"""


async def prune_trail(conn: Conn, now: float, retention: Retention) -> int:
    """Delete up to ``trail.PRUNE_BATCH`` finished events past the retention, oldest first.

    Replicas prune at once safely: each locks the batch it read (``FOR UPDATE SKIP LOCKED``), so two never
    delete, or count, the same event; an event another replica holds is left to it.
    """
    probe = await conn.fetchrow(_PRUNE_PROBE)
    assert probe is not None
    newest, oldest_id, oldest_at = probe
    # Most calls find nothing due: look at the oldest finished event before reading a batch.
    if oldest_id is None or not trail.prunable(
        [(oldest_id, oldest_at)], newest_id=newest, now=now, retention=retention
    ):
        return 0
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT id, finished_at FROM outbox_events WHERE finished_at IS NOT NULL ORDER BY id LIMIT $1"
            " FOR UPDATE SKIP LOCKED",
            trail.PRUNE_BATCH,
        )
        ids = trail.prunable([(r[0], r[1]) for r in rows], newest_id=newest, now=now, retention=retention)
        if ids:
            await conn.execute("DELETE FROM outbox_events WHERE id = ANY($1::bigint[])", ids)
    return len(ids)


#: Strings JSON encoders write verbatim (no quote, backslash, control character or non-ASCII, which may be escaped).
_VERBATIM_IN_JSON = re.compile(r"[ !#-\[\]-~]*")
#: A replayed event has a step of this kind (jsonb containment, as the filter asks).
_REPLAYED = f'[{{"kind": "{trail.REPLAYED}"}}]'
_TRAIL_COLUMNS = ", ".join(trail.ROW_FIELDS).replace("steps", "steps::text")


async def trail_events(conn: Conn, where: TrailFilter) -> list[TrailEvent]:
    """Events matching ``where``, newest first: one statement (a read never holds up writers here: MVCC)."""
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column, value in (
        ("alert_key", where.alert_key),
        ("destination", where.destination),
        ("event_status", where.event_status),
    ):
        if value is not None:
            clauses.append(f"{column} = {arg(value)}")
    if where.outcome == trail.REPLAYED:
        clauses.append(f"steps @> {arg(_REPLAYED)}::jsonb")
    elif where.outcome is not None:
        clauses.append(f"state = {arg(where.outcome)}")
    if where.since is not None:
        clauses.append(f"created_at >= {arg(where.since)}")
    if where.before_id is not None:
        clauses.append(f"id < {arg(where.before_id)}")
    for name, value in where.labels:
        if _VERBATIM_IN_JSON.fullmatch(value):
            # A value JSON writes as it is must appear in the body: a substring test first spares parsing the
            # bodies of the other events (most, for a rare label), which is what a label filter costs.
            clauses.append(f"strpos(body, {arg(value)}) > 0")
        # Bodies are JSON objects the bridge made; only those are parsed.
        clauses.append(
            f"(CASE WHEN left(body, 1) = '{{' THEN body::jsonb -> 'labels' ->> {arg(name)} END) = {arg(value)}"
        )
    condition = " AND ".join(clauses) or "true"
    rows = await conn.fetch(
        f"SELECT {_TRAIL_COLUMNS} FROM outbox_events WHERE {condition} ORDER BY id DESC LIMIT {arg(where.limit)}",
        *args,
    )
    return [trail.event_from_row(tuple(row)) for row in rows]


async def trail_event(conn: Conn, event_id: int) -> TrailEvent | None:
    row = await conn.fetchrow(f"SELECT {_TRAIL_COLUMNS} FROM outbox_events WHERE id = $1", event_id)
    return None if row is None else trail.event_from_row(tuple(row))
