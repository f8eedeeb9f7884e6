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
* ``outbox_rate_sends``: the send log of the rate limit shared by every replica (one row per
  request reserved in the last minute); ``outbox_pacing``: a 429's pause, per destination.
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

if TYPE_CHECKING:
    from bridge.outbox.postgres.queries import Conn

#: pg_advisory_xact_lock key of schema migrations ("FDbrMIGR" as a 64-bit integer).
MIGRATION_LOCK = int.from_bytes(b"FDbrMIGR", "big") - (1 << 63)

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
    integration_key text NOT NULL
);
CREATE TABLE outbox_rate_sends (
    destination     text NOT NULL,
    at              double precision NOT NULL
);
CREATE INDEX outbox_rate_sends_by_time ON outbox_rate_sends (destination, at);
CREATE TABLE outbox_pacing (
    destination     text PRIMARY KEY,
    paused_until    double precision NOT NULL
);
-- Reserve up to `want` requests to `dest` at `now` within both sliding windows (the rule of
-- bridge.outbox.pacing.RateLimiter), for every replica at once: the destination's advisory lock
-- serialises reservations, and each statement after it sees the sends committed before.
CREATE FUNCTION outbox_reserve(dest text, want integer, per_second integer, per_minute integer,
                               now double precision, second_len double precision, minute_len double precision)
RETURNS TABLE (granted integer, next_free double precision, used_second integer, used_minute integer)
LANGUAGE plpgsql AS $fn$
DECLARE
    paused double precision;
    in_second integer;
    in_minute integer;
    g integer := 0;
    free_at double precision := now;
    leaves double precision;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('flashduty-bridge rate ' || dest, 0));
    SELECT p.paused_until INTO paused FROM outbox_pacing p WHERE p.destination = dest;
    DELETE FROM outbox_rate_sends s WHERE s.destination = dest AND s.at <= now - minute_len;
    SELECT count(*) FILTER (WHERE s.at > now - second_len), count(*) INTO in_second, in_minute
    FROM outbox_rate_sends s WHERE s.destination = dest AND s.at > now - minute_len;
    IF paused IS NOT NULL AND paused > now THEN
        free_at := paused;
    ELSE
        g := greatest(0, least(want, per_second - in_second, per_minute - in_minute));
        IF g > 0 THEN
            INSERT INTO outbox_rate_sends SELECT dest, now FROM generate_series(1, g);
        END IF;
        IF g < want THEN
            -- Room appears when the oldest send that fills a window leaves it.
            IF in_second + g >= per_second THEN
                SELECT s.at + second_len + 1e-6 INTO leaves FROM outbox_rate_sends s
                WHERE s.destination = dest AND s.at > now - second_len
                ORDER BY s.at OFFSET in_second + g - per_second LIMIT 1;
                free_at := greatest(free_at, coalesce(leaves, now + second_len));
            END IF;
            IF in_minute + g >= per_minute THEN
                SELECT s.at + minute_len + 1e-6 INTO leaves FROM outbox_rate_sends s
                WHERE s.destination = dest AND s.at > now - minute_len
                ORDER BY s.at OFFSET in_minute + g - per_minute LIMIT 1;
                free_at := greatest(free_at, coalesce(leaves, now + minute_len));
            END IF;
        END IF;
    END IF;
    RETURN QUERY SELECT g, free_at, in_second + g, in_minute + g;
END
$fn$;
""",
}
SCHEMA_VERSION = max(MIGRATIONS)

#: ``policy.priority`` in SQL, over a column named ``event_status``.
PRIORITY_SQL = (
    f"CASE event_status {' '.join(f'WHEN {s!r} THEN {p}' for s, p in PRIORITY.items())} ELSE {LOWEST_PRIORITY} END"
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
