"""Real outboxes and the damage the bridge must refuse to start on, done with plain file operations.

Each ``damage`` function takes the outbox directory of a bridge that was stopped cleanly (its WAL
checkpointed into ``outbox.sqlite3``) and leaves it as an operator might find it.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

from bridge.outbox import NewEvent
from bridge.outbox.sqlite import SqliteOutbox

PAGE = 4096


async def fill(directory: Path, events: int = 400) -> None:
    """An outbox in ``directory`` with ``events`` pending events of about 500 bytes, closed cleanly."""
    box = SqliteOutbox(directory, max_pending=events)
    await box.open()
    try:
        body = "x" * 500
        await box.put([NewEvent("flashduty", f"k{i}", "alertmanager", "Critical", body) for i in range(events)])
    finally:
        await box.close()


def corrupt_pages(directory: Path) -> None:
    """Overwrite two pages in the middle of the file with noise, as a bad disk or a stray writer would."""
    path = directory / "outbox.sqlite3"
    middle = path.stat().st_size // 2 // PAGE * PAGE
    with path.open("r+b") as file:
        file.seek(middle)
        file.write(random.Random(7).randbytes(2 * PAGE))


def truncate(directory: Path) -> None:
    """Cut the file in half, as a copy interrupted by a full disk would."""
    path = directory / "outbox.sqlite3"
    os.truncate(path, path.stat().st_size // 2)


def empty(directory: Path) -> None:
    """Truncate the file to zero bytes, as ``> outbox.sqlite3`` or a botched restore would."""
    os.truncate(directory / "outbox.sqlite3", 0)


def delete(directory: Path) -> None:
    """Remove the database, keeping the lock file."""
    (directory / "outbox.sqlite3").unlink()


def foreign_text(directory: Path) -> None:
    """Replace the database with a text file."""
    (directory / "outbox.sqlite3").write_text("[server]\nhttp_port = 3000\n" * 200)


def foreign_database(directory: Path) -> None:
    """Replace the database with another application's SQLite database."""
    path = directory / "outbox.sqlite3"
    path.unlink()
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE alert_rule (id INTEGER PRIMARY KEY, title TEXT)")
        db.executemany("INSERT INTO alert_rule (title) VALUES (?)", [(f"rule {i}",) for i in range(100)])
        db.commit()
    finally:
        db.close()


#: Damage name -> (how to do it, what the refusal must say).
DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt pages": (corrupt_pages, "is damaged ("),
    "truncated": (truncate, "is damaged ("),
    "emptied": (empty, "is empty, but"),
    "deleted": (delete, "is missing, but"),
    "text file": (foreign_text, "is not an outbox (not an SQLite database"),
    "another database": (foreign_database, "is an SQLite database but not an outbox (tables: alert_rule"),
}
