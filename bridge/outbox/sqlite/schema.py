"""The SQLite outbox's tables, and how a file becomes (or is upgraded to) the current schema.

Tables:

* ``events``: every event the outbox was given, and its trail (see
  :mod:`bridge.outbox.trail`): ``state`` is pending or dead (the outbox proper), or
  delivered, suppressed, coalesced or purged (finished: ``finished_at`` is set, and
  ``prune_trail`` deletes it once past the retention). ``steps`` is a JSON array of what
  happened to it (attempts, replays...); ``inbound_request`` the request_id the sender got.
* ``heads``: one row per ``(destination, alert_key)`` with pending events, naming
  the oldest one. Only heads can be claimed, which is what makes delivery per key
  strictly FIFO; claims scan heads (keys), never the whole backlog.
* ``key_state``: per key, the digest of the last accepted event (to suppress
  unchanged repeats) and the id of the last delivered one (so a replayed dead
  letter never goes out after a newer event of its key).
* ``passthrough_keys``: integration keys that arrived in a sender's URL.
* ``meta``: ``schema_version``, and the heartbeat written by ``probe``.

The file header carries :data:`APPLICATION_ID`, so an outbox is recognisable as one
(``file`` and ``PRAGMA application_id`` show it); outboxes created before it was set are
recognised by their tables and get it on their next open.

:func:`prepare` runs once per open, holding the directory lock, after the file passed
:mod:`~bridge.outbox.sqlite.integrity`'s checks. It is idempotent: schema 1 is
migrated to 2, schema 2 to 3 (the trail's columns and indexes: a delivered event is
kept as ``delivered`` instead of deleted), schema 3 is left as it is, a newer schema is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.outbox.model import OutboxUnusable
from bridge.outbox.policy import LOWEST_PRIORITY, PRIORITY

SCHEMA_VERSION = 3
#: "FDbr" in the file header: this SQLite file is a flashduty-bridge outbox.
APPLICATION_ID = int.from_bytes(b"FDbr", "big")
#: Every table an outbox has had (sqlite_sequence comes with AUTOINCREMENT).
TABLES = frozenset({"events", "meta", "heads", "passthrough_keys", "key_state", "sqlite_sequence"})

_SCHEMA_1 = """
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
    priority        INTEGER NOT NULL,   -- of that event: see policy.PRIORITY
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

#: Schema 3: the trail. Columns are added to ``events`` when missing (``ALTER TABLE`` is not idempotent).
_TRAIL_COLUMNS = {
    "inbound_request": "TEXT",
    "finished_at": "REAL",
    "steps": "TEXT NOT NULL DEFAULT '[]'",
}
_SCHEMA_3 = """
-- "What happened to alert_key K": every event of a key, newest first.
CREATE INDEX IF NOT EXISTS events_by_key ON events (alert_key, id);
-- Pruning walks finished events from the oldest; covering, so it reads no row.
CREATE INDEX IF NOT EXISTS events_finished ON events (id, finished_at) WHERE finished_at IS NOT NULL;
"""

#: ``policy.priority`` in SQL, over a column named ``event_status``.
PRIORITY_SQL = (
    f"CASE event_status {' '.join(f'WHEN {s!r} THEN {p}' for s, p in PRIORITY.items())} ELSE {LOWEST_PRIORITY} END"
)


def configure(db: sqlite3.Connection) -> None:
    """Connection settings: WAL, NORMAL sync (puts switch to FULL), no automatic checkpoints."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # FULL for the commits that accept events
    db.execute("PRAGMA wal_autocheckpoint=0")  # the outbox thread checkpoints, never the event loop
    db.execute("PRAGMA busy_timeout=5000")


def prepare(db: sqlite3.Connection, path: Path) -> int:
    """Create or migrate the schema, clear a previous process's leases; returns the pending count."""
    configure(db)
    db.executescript(_SCHEMA_1)
    row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    version = int(row[0]) if row else None
    if version is not None and version > SCHEMA_VERSION:
        raise OutboxUnusable(
            f"outbox {path} has schema {version}, newer than this bridge ({SCHEMA_VERSION}):"
            " run the newer bridge version on it"
        )
    db.executescript(_SCHEMA_2)  # idempotent; executescript commits, so it runs before BEGIN
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    for name, definition in _TRAIL_COLUMNS.items():
        if name not in columns:
            db.execute(f"ALTER TABLE events ADD COLUMN {name} {definition}")
    db.executescript(_SCHEMA_3)
    db.execute("BEGIN IMMEDIATE")
    if version == 1:
        # Schema 1 kept the schedule on events; build the heads from it.
        db.execute(
            "INSERT OR IGNORE INTO heads (destination, alert_key, event_id, priority, next_attempt_at)"
            f" SELECT e.destination, e.alert_key, e.id, {PRIORITY_SQL}, e.next_attempt_at FROM events e"
            " JOIN (SELECT MIN(id) AS id FROM events WHERE state = 'pending' GROUP BY destination, alert_key) h"
            " ON h.id = e.id"
        )
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    # Leases belong to workers of a previous process, which is gone (we hold the lock).
    db.execute("UPDATE heads SET lease_until = 0 WHERE lease_until > 0")
    db.execute("COMMIT")
    pending: int = db.execute("SELECT COUNT(*) FROM events WHERE state = 'pending'").fetchone()[0]
    return pending
