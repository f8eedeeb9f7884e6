"""The PostgreSQL outbox's tables, and versioned migrations that replicas starting together run once.

Every table is prefixed ``outbox_``, so the outbox can share a database (and a schema) with
other applications; it lives in the connection's current schema (``search_path``).

* ``outbox_events``: every accepted event (pending, or dead with its reason). Delivered events
  are deleted. Ids come from an identity column; per key they follow commit order because
  every transaction that adds to a key holds that key's advisory lock until it commits.
* ``outbox_heads``: one row per ``(destination, alert_key)`` with pending events, naming the
  oldest one, its due time and its lease (``leased_until``, ``leased_by``). Only heads are
  claimed: that is per-key FIFO across replicas.
* ``outbox_key_state``: per key, the digest of the last accepted event (suppression) and the
  id of the last delivered one (replay).
* ``outbox_passthrough_keys``: integration keys that arrived in a sender's URL.
* ``outbox_rate_sends``: the send log of the rate limit shared by every replica (sends per
  10 ms slot of the last minute); ``outbox_pacing``: a 429's pause, per destination.
* ``outbox_meta``: ``schema_version``, and the heartbeat written by ``probe``.

Times are Unix seconds (``double precision``) on the database's clock (see
:class:`~bridge.outbox.postgres.backend.PostgresOutbox`).

:func:`migrate` runs at every ``open``, inside one transaction holding the advisory lock
:data:`MIGRATION_LOCK`: replicas starting at once run each migration exactly once, the others
wait for it and find nothing to do. A schema newer than this bridge is refused. A new
migration is appended to :data:`MIGRATIONS`; existing ones never change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.outbox.model import OutboxUnusable
from bridge.outbox.policy import LOWEST_PRIORITY, PRIORITY
from bridge.outbox.trail import MAX_STEPS

if TYPE_CHECKING:
    from bridge.outbox.postgres.queries import Conn

#: pg_advisory_xact_lock key of schema migrations ("FDbrMIGR" as a 64-bit integer).
MIGRATION_LOCK = int.from_bytes(b"FDbrMIGR", "big") - (1 << 63)


def append_step(steps: str, new: str) -> str:
    """:func:`bridge.outbox.trail.append_step` in SQL: ``steps`` (jsonb) with ``new`` (a JSON text; NULL: none)
    appended, the last replaced once there are ``MAX_STEPS``."""
    return (
        f"CASE WHEN {new} IS NULL THEN {steps}"
        f" WHEN jsonb_array_length({steps}) < {MAX_STEPS} THEN {steps} || jsonb_build_array({new}::jsonb)"
        f" ELSE jsonb_set({steps}, '{{-1}}', {new}::jsonb) END"
    )


#: Version → the statements that bring the schema from the version before to it.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE outbox_events (
    id              bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- per key: commit order
    destination     text    NOT NULL,
    alert_key       text    NOT NULL,
    source          text    NOT NULL,
    event_status    text    NOT NULL,
    body            text    NOT NULL,                     -- the JSON sent to Flashduty
    state           text    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      double precision NOT NULL,
    last_code       text,
    last_error      text,
    request_id      text,
    dead_at         double precision
);
CREATE INDEX outbox_events_pending_by_key ON outbox_events (destination, alert_key, id) WHERE state = 'pending';
CREATE INDEX outbox_events_pending ON outbox_events (id) WHERE state = 'pending';
CREATE INDEX outbox_events_dead ON outbox_events (id) WHERE state = 'dead';
CREATE TABLE outbox_heads (
    destination     text    NOT NULL,
    alert_key       text    NOT NULL,
    event_id        bigint  NOT NULL,            -- the oldest pending event of the key
    priority        smallint NOT NULL,           -- of that event: see policy.PRIORITY
    next_attempt_at double precision NOT NULL,
    leased_until    double precision NOT NULL DEFAULT 0,
    leased_by       text,                        -- the replica holding the lease (released when it stops)
    PRIMARY KEY (destination, alert_key)
);
CREATE INDEX outbox_heads_by_priority ON outbox_heads (destination, priority, event_id);
CREATE INDEX outbox_heads_due ON outbox_heads (destination, (greatest(next_attempt_at, leased_until)));
CREATE INDEX outbox_heads_leased_by ON outbox_heads (leased_by) WHERE leased_by IS NOT NULL;
CREATE TABLE outbox_key_state (
    destination     text    NOT NULL,
    alert_key       text    NOT NULL,
    accepted_digest text,
    accepted_at     double precision,
    delivered_id    bigint,
    delivered_at    double precision,
    PRIMARY KEY (destination, alert_key)
);
CREATE TABLE outbox_passthrough_keys (
    destination     text PRIMARY KEY,
    integration_key text NOT NULL,
    used_at         double precision NOT NULL DEFAULT 0  -- saved, or events put for it, by any replica
);
CREATE TABLE outbox_rate_sends (        -- sends per destination and 10 ms slot, the last minute's
    destination     text    NOT NULL,
    slot            bigint  NOT NULL,         -- floor(time * 100)
    n               integer NOT NULL,
    PRIMARY KEY (destination, slot)
);
CREATE TABLE outbox_pacing (
    destination     text PRIMARY KEY,
    paused_until    double precision NOT NULL
);
-- Grant up to `want` sends to `dest` at `now` within both sliding windows (the rule of
-- bridge.outbox.pacing.RateLimiter), for every replica at once: the destination's advisory lock
-- serialises grants, and each statement after it sees the grants committed before. Sends are
-- counted per 10 ms slot, a slot counting for the whole of it: a window holds at most 120 or
-- 6,110 slots, whatever the volume, and a send leaves a window no earlier than it really does.
CREATE FUNCTION outbox_reserve(dest text, want integer, per_second integer, per_minute integer,
                               now double precision, second_len double precision, minute_len double precision)
RETURNS TABLE (granted integer, next_free double precision, used_second integer, used_minute integer)
LANGUAGE plpgsql AS $fn$
DECLARE
    paused double precision;
    first_second bigint := floor((now - second_len) * 100);
    first_minute bigint := floor((now - minute_len) * 100);
    in_second integer;
    in_minute integer;
    g integer := 0;
    free_at double precision := now;
    leaves bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('flashduty-bridge rate ' || dest, 0));
    SELECT p.paused_until INTO paused FROM outbox_pacing p WHERE p.destination = dest;
    DELETE FROM outbox_rate_sends s WHERE s.destination = dest AND s.slot < first_minute;
    SELECT coalesce(sum(s.n) FILTER (WHERE s.slot >= first_second), 0), coalesce(sum(s.n), 0)
    INTO in_second, in_minute
    FROM outbox_rate_sends s WHERE s.destination = dest AND s.slot >= first_minute;
    IF paused IS NOT NULL AND paused > now THEN
        free_at := paused;
    ELSIF want > 0 THEN
        g := greatest(0, least(want, per_second - in_second, per_minute - in_minute));
        IF g > 0 THEN
            INSERT INTO outbox_rate_sends AS s VALUES (dest, floor(now * 100), g)
            ON CONFLICT (destination, slot) DO UPDATE SET n = s.n + excluded.n;
        END IF;
        IF g < want THEN
            -- Room appears when the oldest slots that fill a window have left it.
            IF in_second + g >= per_second THEN
                SELECT c.slot INTO leaves FROM (
                    SELECT s.slot, sum(s.n) OVER (ORDER BY s.slot) AS upto FROM outbox_rate_sends s
                    WHERE s.destination = dest AND s.slot >= first_second) c
                WHERE c.upto >= in_second + g - per_second + 1 ORDER BY c.slot LIMIT 1;
                free_at := greatest(free_at, coalesce((leaves + 1) / 100.0 + second_len + 1e-6, now + second_len));
            END IF;
            IF in_minute + g >= per_minute THEN
                SELECT c.slot INTO leaves FROM (
                    SELECT s.slot, sum(s.n) OVER (ORDER BY s.slot) AS upto FROM outbox_rate_sends s
                    WHERE s.destination = dest AND s.slot >= first_minute) c
                WHERE c.upto >= in_minute + g - per_minute + 1 ORDER BY c.slot LIMIT 1;
                free_at := greatest(free_at, coalesce((leaves + 1) / 100.0 + minute_len + 1e-6, now + minute_len));
            END IF;
        END IF;
    END IF;
    RETURN QUERY SELECT g, free_at, in_second + g, in_minute + g;
END
$fn$;
-- Delivered: delete events `ids` (at most one per key: only heads are leased), record them as their keys'
-- last delivered, and advance each key to its oldest other pending event, or drop its head. It takes the
-- keys' advisory locks `locks` (ascending) itself, so an ack is one round trip; the statement after the
-- locks sees every put committed before them.
CREATE FUNCTION outbox_delivered(ids bigint[], locks bigint[], now double precision) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    done bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM unnest(locks) AS k;
    WITH gone AS (
        DELETE FROM outbox_events e USING unnest(ids) AS d(id)
        WHERE e.id = d.id AND e.state = 'pending'
        RETURNING e.id, e.destination, e.alert_key
    ), keys AS (
        SELECT g.destination, g.alert_key, max(g.id) AS id, count(*) AS n FROM gone g
        GROUP BY g.destination, g.alert_key
    ), state AS (
        INSERT INTO outbox_key_state AS s (destination, alert_key, delivered_id, delivered_at)
        SELECT k.destination, k.alert_key, k.id, now FROM keys k
        ON CONFLICT (destination, alert_key) DO UPDATE
        SET delivered_id = greatest(s.delivered_id, excluded.delivered_id), delivered_at = excluded.delivered_at
    ), next AS (
        SELECT k.destination, k.alert_key, n.id, n.event_status
        FROM keys k
        LEFT JOIN LATERAL (
            SELECT e.id, e.event_status FROM outbox_events e
            WHERE e.destination = k.destination AND e.alert_key = k.alert_key AND e.state = 'pending'
              AND e.id <> ALL(ids)   -- this statement still sees the rows it deletes
            ORDER BY e.id LIMIT 1
        ) n ON true
    ), dropped AS (
        DELETE FROM outbox_heads h USING next
        WHERE next.id IS NULL AND h.destination = next.destination AND h.alert_key = next.alert_key
    ), moved AS (
        UPDATE outbox_heads h
        SET event_id = next.id, priority = PRIORITY_OF_NEXT, next_attempt_at = now, leased_until = 0,
            leased_by = NULL
        FROM next WHERE next.id IS NOT NULL AND h.destination = next.destination AND h.alert_key = next.alert_key
    )
    SELECT coalesce(sum(k.n), 0) INTO done FROM keys k;
    RETURN done;
END
$fn$;
""",
    # The trail (bridge.outbox.trail): finished events stay as rows, pruned by prune_trail. New columns have
    # constant defaults, so adding them rewrites nothing; claims keep reading only the pending partial indexes.
    2: f"""
ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_state_check;
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_state_check
    CHECK (state IN ('pending', 'dead', 'delivered', 'suppressed', 'coalesced', 'purged'));
ALTER TABLE outbox_events
    ADD COLUMN inbound_request text,                        -- the request_id the sender was answered with
    ADD COLUMN finished_at double precision,                -- delivered, suppressed, coalesced or purged at
    ADD COLUMN steps jsonb NOT NULL DEFAULT '[]';           -- attempts, replays...: at most {MAX_STEPS}
-- "What happened to alert_key K": every event of a key, newest first.
CREATE INDEX outbox_events_by_key ON outbox_events (alert_key, id);
-- Pruning walks finished events from the oldest; covering, so it reads no row.
CREATE INDEX outbox_events_finished ON outbox_events (id, finished_at) WHERE finished_at IS NOT NULL;
-- No more: every index is written for each event put and again when it is delivered (the row is updated, not
-- deleted), and the delivery bench lost throughput to indexes on (state, id) and created_at. Filters by outcome,
-- since or label walk the primary key newest first, over a trail that max_events bounds (100,000 rows: tens of
-- milliseconds on the bench machine); pending and dead rows have their partial indexes from schema 1.
-- Delivered: now the events stay, as the trail's 'delivered', with their attempt appended to their steps
-- (notes[i] for ids[i]: a JSON step or null; fd_request_ids[i]: Flashduty's request_id). Otherwise as in
-- schema 1, whose function stays for replicas of the previous version still running during a rolling upgrade.
CREATE FUNCTION outbox_delivered(ids bigint[], locks bigint[], now double precision, notes text[],
                                 fd_request_ids text[]) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    done bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM unnest(locks) AS k;
    WITH gone AS (
        UPDATE outbox_events e
        SET state = 'delivered', finished_at = now, attempts = e.attempts + 1, request_id = d.request_id,
            steps = {append_step("e.steps", "d.attempt")}
        FROM unnest(ids, notes, fd_request_ids) AS d(id, attempt, request_id)
        WHERE e.id = d.id AND e.state = 'pending'
        RETURNING e.id, e.destination, e.alert_key
    ), keys AS (
        SELECT g.destination, g.alert_key, max(g.id) AS id, count(*) AS n FROM gone g
        GROUP BY g.destination, g.alert_key
    ), state AS (
        INSERT INTO outbox_key_state AS s (destination, alert_key, delivered_id, delivered_at)
        SELECT k.destination, k.alert_key, k.id, now FROM keys k
        ON CONFLICT (destination, alert_key) DO UPDATE
        SET delivered_id = greatest(s.delivered_id, excluded.delivered_id), delivered_at = excluded.delivered_at
    ), next AS (
        SELECT k.destination, k.alert_key, n.id, n.event_status
        FROM keys k
        LEFT JOIN LATERAL (
            SELECT e.id, e.event_status FROM outbox_events e
            WHERE e.destination = k.destination AND e.alert_key = k.alert_key AND e.state = 'pending'
              AND e.id <> ALL(ids)   -- this statement still sees the rows it updates as pending
            ORDER BY e.id LIMIT 1
        ) n ON true
    ), dropped AS (
        DELETE FROM outbox_heads h USING next
        WHERE next.id IS NULL AND h.destination = next.destination AND h.alert_key = next.alert_key
    ), moved AS (
        UPDATE outbox_heads h
        SET event_id = next.id, priority = PRIORITY_OF_NEXT, next_attempt_at = now, leased_until = 0,
            leased_by = NULL
        FROM next WHERE next.id IS NOT NULL AND h.destination = next.destination AND h.alert_key = next.alert_key
    )
    SELECT coalesce(sum(k.n), 0) INTO done FROM keys k;
    RETURN done;
END
$fn$;
""",
}
SCHEMA_VERSION = max(MIGRATIONS)

#: ``policy.priority`` in SQL, over a column named ``event_status``.
PRIORITY_SQL = (
    f"CASE event_status {' '.join(f'WHEN {s!r} THEN {p}' for s, p in PRIORITY.items())} ELSE {LOWEST_PRIORITY} END"
)
# The functions of migration 1 rank heads with the same rule.
for _number in (1, 2):
    MIGRATIONS[_number] = MIGRATIONS[_number].replace(
        "PRIORITY_OF_NEXT", PRIORITY_SQL.replace("event_status", "next.event_status")
    )


async def migrate(conn: Conn, location: str) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` (once, whatever the number of replicas starting); returns
    the version found before."""
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        await conn.execute("CREATE TABLE IF NOT EXISTS outbox_meta (name text PRIMARY KEY, value text NOT NULL)")
        found = await conn.fetchval("SELECT value FROM outbox_meta WHERE name = 'schema_version'")
        version = int(found) if found is not None else 0
        if version > SCHEMA_VERSION:
            raise OutboxUnusable(
                f"outbox {location} has schema {version}, newer than this bridge ({SCHEMA_VERSION}):"
                " run the newer bridge version on it"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[number])
        if version < SCHEMA_VERSION:
            await conn.execute(
                "INSERT INTO outbox_meta VALUES ('schema_version', $1)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                str(SCHEMA_VERSION),
            )
    return version
