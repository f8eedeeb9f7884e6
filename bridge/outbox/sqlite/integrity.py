"""What the SQLite outbox checks before it trusts its directory: one owner, and a healthy file.

Each refusal is an :class:`~bridge.outbox.model.OpenRefused` whose message is one line
naming the file and what to do; ``serve`` prints it and exits with the code of its class.

* **One process per outbox.** ``outbox.lock`` is held with ``flock`` for the life of the
  process; a second bridge is refused (:class:`OutboxInUse`), naming the holder's pid.
* **Events are not lost silently.** The lock file also records, as JSON, since when this
  directory holds an outbox. If ``outbox.sqlite3`` is then missing or empty, its events
  are gone: refuse (:class:`OutboxUnusable`) instead of starting empty. Without that record
  (a new directory, or one written by a bridge before the record existed) an empty file
  is a new outbox, with a loud warning.
* **The file is an outbox.** Not an SQLite file, or an SQLite database with other tables or
  another application id: refuse, never write into someone else's file.
* **The file is healthy.** ``PRAGMA quick_check`` at every open: corrupt or truncated pages
  are refused before any 200 is answered for events that could never be delivered. It reads
  the whole file, so it grows with it: for 100,000 pending events (110 MB) it made ``open``
  take 0.15 s instead of 0.02 s with a warm page cache, and 3.0 s instead of 0.07 s from a
  cold one (``integrity_check``, which also cross-checks indexes, took twice as long warm).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from bridge.outbox.model import OpenRefused, OutboxInUse, OutboxUnusable
from bridge.outbox.sqlite.schema import APPLICATION_ID, TABLES

log = logging.getLogger("bridge.outbox")

SQLITE_HEADER = b"SQLite format 3\x00"
#: Shown from the quick_check report: enough to recognise the damage, short enough for one line.
_DETAIL_CHARS = 160


class DirectoryLock:
    """``outbox.lock``: held exclusively while this process uses the outbox, and the outbox's record."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "outbox.lock"
        self._fd: int | None = None
        #: What the lock file said when this process took it.
        self.record: dict[str, Any] = {}

    def acquire(self, outbox: Path) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd).get("pid")
            os.close(fd)
            by = f" (pid {holder})" if isinstance(holder, int) else ""
            raise OutboxInUse(
                f"outbox {outbox} is in use by another bridge process{by}:"
                " stop it first, or give each bridge its own storage.path"
            ) from None
        self._fd = fd
        self.record = _read_record(fd)

    @property
    def outbox_since(self) -> float | None:
        """When this directory got its outbox, if the lock file recorded it."""
        since = self.record.get("outbox_since")
        return float(since) if isinstance(since, int | float) else None

    def write(self, outbox_since: float) -> None:
        """Record this process and since when the directory holds an outbox (kept across restarts)."""
        assert self._fd is not None
        self.record = {"pid": os.getpid(), "outbox_since": outbox_since}
        data = json.dumps(self.record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_record(fd: int) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        if isinstance(record, dict):
            return record
    return {}


def check_file(path: Path, lock: DirectoryLock) -> None:
    """Before SQLite opens ``path``: refuse a missing or empty file that held events, or a foreign one."""
    since = lock.outbox_since
    held = "" if since is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        if since is not None:
            raise OutboxUnusable(
                f"outbox {path} is missing, but {lock.path} says this directory has held an outbox since {held}:"
                f" its events are lost unless the file is restored (was storage.path mounted elsewhere?);"
                f" {start_empty(path)}"
            ) from None
        return
    except OSError as exc:
        raise OpenRefused(f"outbox {path} cannot be read: {exc.strerror or exc}") from None
    if not header:
        if since is not None:
            raise OutboxUnusable(
                f"outbox {path} is empty, but {lock.path} says this directory has held an outbox since {held}:"
                f" the file was truncated or replaced and its events are lost; restore it from a backup,"
                f" or {start_empty(path)}"
            )
        log.warning(
            "outbox %s is an empty file: starting a new outbox in it; if this directory held queued events,"
            " they are lost",
            path,
        )
        return
    if header != SQLITE_HEADER:
        raise OutboxUnusable(
            f"outbox {path} is not an outbox (not an SQLite database: a foreign or overwritten file);"
            f" point storage.path at the bridge's own directory, or {start_empty(path)}"
        )


def check_database(db: sqlite3.Connection, path: Path) -> None:
    """After SQLite opened ``path``, before anything is written: it is an outbox, and it is healthy."""
    try:
        (application_id,) = db.execute("PRAGMA application_id").fetchone()
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        foreign = (application_id not in (0, APPLICATION_ID)) or not tables <= TABLES
        if foreign:
            raise OutboxUnusable(
                f"outbox {path} is an SQLite database but not an outbox"
                f" (tables: {', '.join(sorted(tables - TABLES)) or 'none'}; application_id {application_id});"
                f" point storage.path at the bridge's own directory, or {start_empty(path)}"
            )
        report = [row[0] for row in db.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise damaged(path, str(exc)) from None
        raise
    if report != ["ok"]:
        lines = [line for entry in report for line in str(entry).splitlines() if not line.startswith("***")]
        detail = f"quick_check: {lines[0] if lines else report[0]}"
        if len(lines) > 1:
            detail += f" and {len(lines) - 1} more problems"
        raise damaged(path, detail)


def is_damage(exc: sqlite3.Error) -> bool:
    """SQLite says the file is corrupt or not a database (as opposed to I/O, space or permissions)."""
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(exc)


def damaged(path: Path, detail: str) -> OutboxUnusable:
    if len(detail) > _DETAIL_CHARS:
        detail = detail[: _DETAIL_CHARS - 1] + "…"
    return OutboxUnusable(
        f"outbox {path} is damaged ({detail}): the bridge will not accept alerts it could not deliver;"
        f" stop every process using it, keep a copy (`sqlite3 {path.name} .recover` may salvage its events),"
        f" then {start_empty(path)}"
    )


def start_empty(path: Path) -> str:
    """What to do to start afresh: the database, its WAL and the lock file's record go together."""
    return f"to start with an empty outbox, move {path.name}* and outbox.lock out of {path.parent}"
