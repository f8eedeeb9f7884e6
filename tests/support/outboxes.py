"""Outbox backends under test: each builds outboxes on one storage place of its own and reads back what they stored.

The contract suite (``tests/test_outbox.py``) and the dispatcher tests run once per name in
:data:`BACKENDS`, through the ``backend`` fixture they define with :func:`backend_under_test`.
Adding a backend is one class here (``make``, ``events``, setup and teardown) and one name in
:data:`BACKENDS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from bridge.outbox import Claimed, ClaimResult, NewEvent, Outbox
from bridge.outbox.postgres import PostgresOutbox
from bridge.outbox.sqlite import SqliteOutbox
from tests.support import postgres

#: Every backend the contract suite runs against.
BACKENDS = ["sqlite", "postgresql"]

DEST = "flashduty"

#: The columns ``events()`` returns for each stored event (pending or dead).
EVENT_COLUMNS = (
    "id",
    "destination",
    "alert_key",
    "source",
    "event_status",
    "body",
    "state",
    "attempts",
    "created_at",
    "last_code",
    "last_error",
    "request_id",
    "dead_at",
)


class OutboxBackend(Protocol):
    name: str

    def make(self, **options: Any) -> Outbox:
        """A new, unopened outbox on this backend's storage (the same storage every time).

        ``options``: ``max_pending`` (required), ``max_age``, ``refresh_interval``, ``retention``, ``clock``.
        """

    def events(self) -> list[dict[str, Any]]:
        """Every event in the outbox (pending or dead, not the trail's finished ones) in commit order, with
        :data:`EVENT_COLUMNS`, read independently."""


class SqliteBackend:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def make(self, **options: Any) -> SqliteOutbox:
        return SqliteOutbox(self.directory, **options)

    @property
    def path(self) -> Path:
        return self.directory / "outbox.sqlite3"

    def events(self) -> list[dict[str, Any]]:
        db = sqlite3.connect(self.path)
        try:
            db.row_factory = sqlite3.Row
            return [
                dict(row)
                for row in db.execute(
                    f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE state IN ('pending', 'dead') ORDER BY id"
                )
            ]
        finally:
            db.close()


class PostgresBackend:
    """A schema of its own in the test database (``tests.support.postgres``), dropped after the test."""

    name = "postgresql"

    def __init__(self, database: postgres.Database) -> None:
        self.database = database

    def make(self, **options: Any) -> PostgresOutbox:
        return PostgresOutbox(self.database.dsn, **options)

    def events(self) -> list[dict[str, Any]]:
        rows = self.database.query(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM outbox_events WHERE state IN ('pending', 'dead') ORDER BY id"
        )
        return [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows]


@asynccontextmanager
async def backend_under_test(name: str, tmp_path: Path) -> AsyncIterator[OutboxBackend]:
    """Storage of its own for one test, removed afterwards (PostgreSQL: skipped when no server answers)."""
    if name == "sqlite":
        yield SqliteBackend(tmp_path / "outbox")
        return
    if name == "postgresql":
        async with postgres.database() as database:
            yield PostgresBackend(database)
        return
    raise ValueError(f"no test backend {name!r}")


def ev(alert_key: str, body: str, *, destination: str = DEST, status: str = "Critical", digest: str = "") -> NewEvent:
    return NewEvent(
        destination=destination,
        alert_key=alert_key,
        source="alertmanager",
        event_status=status,
        body=body,
        digest=digest,
    )


def bodies(claimed: list[Claimed] | ClaimResult) -> list[str]:
    events = claimed.events if isinstance(claimed, ClaimResult) else claimed
    return [c.body for c in events]


async def claim(box: Outbox, limit: int = 10, lease: float = 30, destination: str = DEST) -> list[Claimed]:
    """The events of one claim (what the claim cleaned up on the way is ignored)."""
    return (await box.claim(destination, limit, lease)).events
