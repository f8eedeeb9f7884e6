"""What only the SQLite outbox promises: one process per directory (lock file), WAL and its checkpoints, group
commit, schema migrations, the checks that refuse a damaged, emptied or foreign file, and how real write failures
(a database that cannot grow) reach the outbox's health.

The contract every backend keeps is in ``test_outbox.py``. Files are real, under ``tmp_path``; damage is done to
them with plain file operations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.outbox import DeadLetterFilter, OutboxInUse, OutboxStats, OutboxUnavailable, OutboxUnusable
from bridge.outbox.sqlite import SqliteOutbox, writer
from bridge.outbox.sqlite.schema import APPLICATION_ID, SCHEMA_VERSION
from tests.support.clock import FakeClock
from tests.support.damage import DAMAGE, corrupt_pages, fill
from tests.support.outboxes import DEST, SqliteBackend, bodies, claim, ev

ALL = DeadLetterFilter()


class CountingClock(FakeClock):
    """A clock that ticks one second every time it is read, so each read is distinguishable."""

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def rows(path: Path) -> list[dict[str, Any]]:
    """Every stored event, read with a separate plain sqlite3 connection."""
    return SqliteBackend(path.parent).events()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def outbox(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SqliteOutbox]:
    box = SqliteOutbox(tmp_path / "outbox", max_pending=1000, clock=clock)
    await box.open()
    yield box
    await box.close()


# -- one process per directory, WAL, leases of a previous process ----------------------------------------


async def test_database_file_uses_wal_journal_mode(outbox: SqliteOutbox) -> None:
    """The outbox file is in WAL mode as seen by an independent sqlite3 connection."""
    await outbox.put([ev("k", "x")])
    db = sqlite3.connect(outbox.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


async def test_reopening_clears_leases_left_by_a_previous_process(tmp_path: Path, clock: FakeClock) -> None:
    """A lease taken before close does not block the event after the outbox is opened again."""
    directory = tmp_path / "outbox"
    first = SqliteOutbox(directory, max_pending=10, clock=clock)
    await first.open()
    await first.put([ev("k", "leased")])
    assert bodies(await claim(first, lease=300)) == ["leased"]
    assert await claim(first, lease=300) == []
    await first.close()

    second = SqliteOutbox(directory, max_pending=10, clock=clock)
    await second.open()
    try:
        assert bodies(await claim(second, lease=300)) == ["leased"]  # clock did not move: the lease was cleared
    finally:
        await second.close()


async def test_second_outbox_on_the_same_directory_fails_to_open(tmp_path: Path, clock: FakeClock) -> None:
    """The lock file stops a second outbox from opening a directory that is in use, naming the holder."""
    directory = tmp_path / "outbox"
    first = SqliteOutbox(directory, max_pending=10, clock=clock)
    await first.open()
    intruder = SqliteOutbox(directory, max_pending=10, clock=clock)
    try:
        with pytest.raises(OutboxInUse, match=f"in use by another bridge process \\(pid {os.getpid()}\\)"):
            await intruder.open()
        assert not intruder.is_open
        await first.put([ev("k", "still works")])  # the owner is unaffected
    finally:
        await intruder.close()
        await first.close()

    successor = SqliteOutbox(directory, max_pending=10, clock=clock)
    await successor.open()  # the lock is released on close
    try:
        assert (await successor.stats()).pending == 1
    finally:
        await successor.close()


async def test_concurrent_puts_are_group_committed_and_keep_per_call_order(tmp_path: Path) -> None:
    """Many puts gathered at once all commit, in fewer transactions than puts, each request contiguous and in order."""
    clock = CountingClock()  # every transaction reads the clock once, so created_at tells transactions apart
    box = SqliteOutbox(tmp_path / "outbox", max_pending=1000, clock=clock)
    await box.open()
    requests = 40
    try:
        results = await asyncio.gather(
            *(box.put([ev(f"k{i}", f"{i}:0"), ev(f"k{i}", f"{i}:1"), ev(f"k{i}", f"{i}:2")]) for i in range(requests))
        )
        stored = rows(box.path)
        assert (await box.stats()).pending == 3 * requests
    finally:
        await box.close()

    assert results == [[True, True, True]] * requests
    assert len(stored) == 3 * requests
    for i in range(requests):
        mine = [index for index, row in enumerate(stored) if row["alert_key"] == f"k{i}"]
        assert [stored[index]["body"] for index in mine] == [f"{i}:0", f"{i}:1", f"{i}:2"]
        assert mine == list(range(mine[0], mine[0] + 3))  # one request's events are committed together
        assert len({stored[index]["created_at"] for index in mine}) == 1
    transactions = {row["created_at"] for row in stored}
    assert len(transactions) < requests


async def test_acks_behind_a_queued_put_join_its_transaction_and_each_frees_its_key(tmp_path: Path) -> None:
    """Acks that arrive while a commit is pending share the next transaction; an ack on an idle outbox runs at once."""
    clock = CountingClock()
    box = SqliteOutbox(tmp_path / "outbox", max_pending=1000, clock=clock)
    await box.open()
    keys = 40
    try:
        # Firing then Ok per key (an Ok is never coalesced away).
        await box.put([ev(f"k{i}", f"{i}:{n}", status=("Critical", "Ok")[n]) for n in range(2) for i in range(keys)])
        first = await claim(box, keys)
        assert sorted(event.body for event in first) == sorted(f"{i}:0" for i in range(keys))
        await box.delivered(first[0].id)  # idle outbox: committed before delivered() returns
        assert [row["body"] for row in rows(box.path)].count(first[0].body) == 0
        await asyncio.gather(box.put([ev("late", "late:0")]), *(box.delivered(event.id) for event in first[1:]))
        second = await claim(box, keys + 1)  # every key's next event is now its head
        pending = (await box.stats()).pending
        db = sqlite3.connect(box.path)
        try:
            delivered_at = dict(db.execute("SELECT alert_key, delivered_at FROM key_state WHERE delivered_at > 0"))
            accepted_at = db.execute("SELECT accepted_at FROM key_state WHERE alert_key = 'late'").fetchone()[0]
        finally:
            db.close()
    finally:
        await box.close()
    assert sorted(event.body for event in second) == sorted([*(f"{i}:1" for i in range(keys)), "late:0"])
    assert pending == keys + 1
    assert len(delivered_at) == keys
    # The late put and the 39 acks queued behind it were one transaction (one clock reading).
    assert {delivered_at[f"k{i}"] for i in range(1, keys)} == {accepted_at}
    assert delivered_at["k0"] < accepted_at


async def wal_bytes_after_churn(directory: Path) -> int:
    """Put, claim and deliver 1,200 events in 60 rounds; the size of the WAL file afterwards."""
    box = SqliteOutbox(directory, max_pending=1000)
    await box.open()
    try:
        for round_ in range(60):
            await box.put([ev(f"k{i}", "x" * 400 + f"{round_}") for i in range(20)])
            for event in await claim(box, 20):
                await box.delivered(event.id)
            await asyncio.sleep(0)  # let a scheduled checkpoint run
        for _ in range(100):  # the last checkpoint may still be on the outbox thread
            await asyncio.sleep(0.01)
        return (directory / "outbox.sqlite3-wal").stat().st_size
    finally:
        await box.close()


async def test_the_wal_is_checkpointed_by_the_outbox_thread_so_it_stops_growing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Automatic checkpoints are off (they would fsync on the event loop); the outbox's own keep the WAL small."""
    monkeypatch.setattr(writer, "CHECKPOINT_CHANGES", 10**9)
    unchecked = await wal_bytes_after_churn(tmp_path / "unchecked")
    monkeypatch.setattr(writer, "CHECKPOINT_CHANGES", 200)
    checked = await wal_bytes_after_churn(tmp_path / "checked")
    assert checked * 4 < unchecked, (checked, unchecked)


async def test_puts_commit_while_a_checkpoint_copies_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint's copy and fsync run on a connection of their own: puts queued meanwhile commit at once."""
    import threading

    copying, release = threading.Event(), threading.Event()
    main_connections: list[sqlite3.Connection] = []
    plain = writer.checkpoint_wal

    def slow_copy(db: sqlite3.Connection) -> None:
        if db not in main_connections:  # the checkpoint connection: hold it mid-copy
            copying.set()
            release.wait(10)
        plain(db)

    monkeypatch.setattr(writer, "CHECKPOINT_CHANGES", 50)
    monkeypatch.setattr(writer, "checkpoint_wal", slow_copy)
    box = SqliteOutbox(tmp_path / "outbox", max_pending=10_000)
    await box.open()
    try:
        main_connections.append(box._writer.conn())
        await box.put([ev(f"k{i}", "x" * 200) for i in range(60)])  # enough changes for a checkpoint
        await asyncio.get_running_loop().run_in_executor(None, copying.wait, 10)
        assert copying.is_set(), "no checkpoint started"
        stored = await asyncio.wait_for(box.put([ev("during", "d")]), timeout=5)
        assert stored == [True]
        assert not release.is_set()  # the copy was still running when the put committed
    finally:
        release.set()
        await box.close()
    assert "during" in {row["alert_key"] for row in rows(box.path)}


async def test_a_failed_group_transaction_fails_every_caller_and_keeps_the_pending_count(tmp_path: Path) -> None:
    """One broken write rolls back the whole group; the others hear about it and nothing is half-counted."""
    box = SqliteOutbox(tmp_path / "outbox", max_pending=1000)
    await box.open()
    try:

        def broken(db: sqlite3.Connection, now: float) -> None:
            db.execute("INSERT INTO no_such_table VALUES (1)")

        results = await asyncio.gather(
            box.put([ev("a", "a1")]),
            box._writer.write("record", broken),
            box.put([ev("b", "b1")]),
            return_exceptions=True,
        )
        after = (await box.stats()).pending
        stored = rows(box.path)
    finally:
        await box.close()
    assert all(isinstance(result, OutboxUnavailable) for result in results), results
    assert (after, stored) == (0, [])


async def test_destinations_and_next_due_are_index_lookups_not_backlog_scans(tmp_path: Path) -> None:
    """With thousands of heads, the delivery loop's polling must not read them all (it runs every pass)."""
    clock = FakeClock(1000.0)
    box = SqliteOutbox(tmp_path / "outbox", max_pending=10_000, clock=clock)
    await box.open()
    try:
        await box.put([ev(f"k{i}", f"b{i}", destination=name) for name in ("a", "c", "b") for i in range(1000)])
        clock.now = 1005.0
        await claim(box, 1000, destination="b")  # every head of b leased until 1035
        assert await box.destinations() == ["a", "b", "c"]
        assert await box.next_due("b") == 1035.0
        assert await box.next_due() == 1000.0
        db = sqlite3.connect(box.path)
        try:
            plan = " ".join(
                row[3]
                for row in db.execute(
                    "EXPLAIN QUERY PLAN SELECT MIN(MAX(next_attempt_at, lease_until)) FROM heads WHERE destination = ?",
                    ("a",),
                )
            )
        finally:
            db.close()
    finally:
        await box.close()
    assert "USING INDEX heads_due" in plan, plan


# -- schema migration -------------------------------------------------------------------------------

#: The schema of bridge 0.x outboxes (schema_version 1): no heads, no key_state; the schedule lives on events.
_V1_SCHEMA = """
CREATE TABLE events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    destination     TEXT    NOT NULL,
    alert_key       TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    event_status    TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    next_attempt_at REAL    NOT NULL,
    lease_until     REAL    NOT NULL DEFAULT 0,
    last_code       TEXT,
    last_error      TEXT,
    request_id      TEXT,
    dead_at         REAL
);
CREATE INDEX events_pending_by_key ON events (destination, alert_key, id) WHERE state = 'pending';
CREATE INDEX events_dead ON events (dead_at) WHERE state = 'dead';
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def write_v1_database(directory: Path, events: list[dict[str, Any]]) -> Path:
    """Create ``outbox.sqlite3`` in ``directory`` with the v1 schema and ``events`` (column -> value)."""
    directory.mkdir(parents=True)
    path = directory / "outbox.sqlite3"
    db = sqlite3.connect(path)
    try:
        db.executescript(_V1_SCHEMA)
        for event in events:
            row = {"source": "alertmanager", "destination": DEST, "created_at": 900.0, **event}
            row.setdefault("body", f"{row['alert_key']}/{row['event_status']}")
            names = ", ".join(row)
            db.execute(f"INSERT INTO events ({names}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        db.commit()
    finally:
        db.close()
    return path


async def test_v1_database_is_migrated_and_claims_the_right_heads(tmp_path: Path, clock: FakeClock) -> None:
    """A schema-1 outbox opens as schema 2, keeps every event, and claims each key's oldest event when it is due."""
    directory = tmp_path / "outbox"
    path = write_v1_database(
        directory,
        [
            # key a: the head failed twice and waits until 1100; its Ok queues behind it
            {"alert_key": "a", "event_status": "Critical", "attempts": 2, "next_attempt_at": 1100.0, "body": "a1"},
            {"alert_key": "a", "event_status": "Ok", "next_attempt_at": 900.0, "body": "a2"},
            # key b: due now, leased by the old process
            {
                "alert_key": "b",
                "event_status": "Warning",
                "next_attempt_at": 900.0,
                "lease_until": 1200.0,
                "body": "b1",
            },
            {"alert_key": "b", "event_status": "Ok", "next_attempt_at": 900.0, "body": "b2"},
            # key c: a dead letter only
            {
                "alert_key": "c",
                "event_status": "Critical",
                "next_attempt_at": 900.0,
                "state": "dead",
                "dead_at": 950.0,
                "last_code": "InvalidParameter",
                "body": "c1",
            },
        ],
    )

    box = SqliteOutbox(directory, max_pending=100, clock=clock)
    await box.open()
    try:
        db = sqlite3.connect(path)
        try:
            version = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            assert version == (str(SCHEMA_VERSION),)
            heads = db.execute("SELECT alert_key, event_id, priority, next_attempt_at FROM heads ORDER BY alert_key")
            assert heads.fetchall() == [("a", 1, 1, 1100.0), ("b", 3, 2, 900.0)]
        finally:
            db.close()
        assert await box.stats() == OutboxStats(pending=4, dead=1, oldest_pending_created_at=900.0)
        assert sorted(await box.destinations()) == [DEST]
        assert [letter["body"] for letter in await box.dead_letters(ALL)] == ["c1"]

        # The old process's lease on b1 is gone; a1 is not due yet, and a2 is blocked behind it.
        assert bodies(await claim(box, lease=300)) == ["b1"]
        assert await box.next_due() == 1100.0  # a1's retry, before b1's lease ends at 1300
        clock.now = 1099.9
        assert await claim(box) == []
        clock.now = 1100.0
        assert [(c.body, c.attempts) for c in await claim(box)] == [("a1", 2)]
    finally:
        await box.close()


async def test_migrated_database_reopens_without_changes(tmp_path: Path, clock: FakeClock) -> None:
    """Opening a migrated outbox again keeps one head per key and the same pending events."""
    directory = tmp_path / "outbox"
    write_v1_database(
        directory,
        [
            {"alert_key": "a", "event_status": "Critical", "next_attempt_at": 900.0},
            {"alert_key": "a", "event_status": "Ok", "next_attempt_at": 900.0},
        ],
    )
    for _ in range(2):
        box = SqliteOutbox(directory, max_pending=100, clock=clock)
        await box.open()
        await box.close()

    box = SqliteOutbox(directory, max_pending=100, clock=clock)
    await box.open()
    try:
        assert (await box.stats()).pending == 2
        assert bodies(await claim(box)) == ["a/Critical"]
    finally:
        await box.close()


async def test_database_with_a_newer_schema_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    """An outbox written by a newer bridge (a schema above SCHEMA_VERSION) is not opened, so this one cannot
    corrupt it."""
    directory = tmp_path / "outbox"
    path = write_v1_database(directory, [])
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()

    box = SqliteOutbox(directory, max_pending=100, clock=clock)
    with pytest.raises(OutboxUnavailable, match="newer"):
        await box.open()
    assert not box.is_open
    await box.close()


# -- integrity at open: the file is an outbox, healthy, and not silently emptied -----------------------


async def test_a_new_outbox_is_marked_in_its_header_and_its_lock_file(tmp_path: Path) -> None:
    """A new outbox carries the bridge's application id, and outbox.lock records the pid and since when."""
    directory = tmp_path / "outbox"
    box = SqliteOutbox(directory, max_pending=10)
    await box.open()
    try:
        record = json.loads((directory / "outbox.lock").read_text())
        db = sqlite3.connect(box.path)
        try:
            (application_id,) = db.execute("PRAGMA application_id").fetchone()
        finally:
            db.close()
    finally:
        await box.close()
    assert application_id == APPLICATION_ID
    assert record["pid"] == os.getpid()
    assert record["outbox_since"] > 1.6e9  # wall clock, not the injected one


async def test_an_outbox_from_before_the_marks_opens_and_gets_them(tmp_path: Path) -> None:
    """An outbox with application id 0 and an empty lock file (older bridges) is recognised by its tables."""
    directory = tmp_path / "outbox"
    write_v1_database(directory, [{"alert_key": "a", "event_status": "Critical", "next_attempt_at": 900.0}])
    (directory / "outbox.lock").write_bytes(b"")

    box = SqliteOutbox(directory, max_pending=10)
    await box.open()
    try:
        assert (await box.stats()).pending == 1
    finally:
        await box.close()
    db = sqlite3.connect(directory / "outbox.sqlite3")
    try:
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    finally:
        db.close()
    assert "outbox_since" in json.loads((directory / "outbox.lock").read_text())


@pytest.mark.parametrize("damage", DAMAGE)
async def test_a_damaged_emptied_or_foreign_outbox_is_refused_in_one_line_saying_what_to_do(
    tmp_path: Path, damage: str
) -> None:
    """Every kind of damage is refused at open with OutboxUnusable: one line naming the file and the way out."""
    directory = tmp_path / "outbox"
    await fill(directory)
    harm, says = DAMAGE[damage]
    harm(directory)
    before = {path.name: path.read_bytes() for path in directory.iterdir()}

    box = SqliteOutbox(directory, max_pending=1000)
    with pytest.raises(OutboxUnusable) as refused:
        await box.open()
    await box.close()

    message = str(refused.value)
    assert says in message
    assert str(directory / "outbox.sqlite3") in message
    assert "\n" not in message
    if damage in ("text file", "another database", "corrupt pages", "truncated"):
        # Nothing was written into the file, not even a WAL: the refusal leaves the evidence as it was.
        after = {path.name: path.read_bytes() for path in directory.iterdir()}
        assert after == before
    assert "to start with an empty outbox, move outbox.sqlite3* and outbox.lock out of" in message
    assert not box.is_open


async def test_an_outbox_refused_for_damage_opens_again_once_moved_aside_as_the_message_says(tmp_path: Path) -> None:
    """Following the refusal's advice (move the file and the lock record away) gives an empty, working outbox."""
    directory = tmp_path / "outbox"
    await fill(directory)
    corrupt_pages(directory)
    with pytest.raises(OutboxUnusable):
        await SqliteOutbox(directory, max_pending=1000).open()

    aside = tmp_path / "damaged"
    aside.mkdir()
    for path in [*directory.glob("outbox.sqlite3*"), directory / "outbox.lock"]:
        shutil.move(path, aside / path.name)
    box = SqliteOutbox(directory, max_pending=1000)
    await box.open()
    try:
        assert await box.put([ev("k", "fresh")]) == [True]
    finally:
        await box.close()


async def test_an_empty_file_in_a_directory_without_a_record_starts_a_new_outbox_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Zero bytes and no record of an outbox (new directory, or a crash before the first write): start, and warn."""
    directory = tmp_path / "outbox"
    directory.mkdir()
    (directory / "outbox.sqlite3").write_bytes(b"")

    box = SqliteOutbox(directory, max_pending=10)
    with caplog.at_level(logging.WARNING, logger="bridge.outbox"):
        await box.open()
    try:
        assert await box.put([ev("k", "x")]) == [True]
    finally:
        await box.close()
    assert any("is an empty file" in record.getMessage() for record in caplog.records)


# -- storage failures reach the outbox's health ----------------------------------------------------------


def cap_growth(box: SqliteOutbox) -> None:
    """Let the database file grow no further, as a full disk would: new pages fail with SQLITE_FULL."""
    db = box._writer.conn()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")


def uncap_growth(box: SqliteOutbox) -> None:
    box._writer.conn().execute("PRAGMA max_page_count = 1073741823")


async def test_a_put_the_database_cannot_hold_is_a_storage_problem_and_changes_nothing(
    outbox: SqliteOutbox,
) -> None:
    """SQLITE_FULL on a put: 503-worthy OutboxUnavailable, recorded and counted as a put failure, count kept."""
    failures: list[str] = []
    outbox.health.listener = failures.append
    await outbox.put([ev("k0", "before")])
    cap_growth(outbox)

    with pytest.raises(OutboxUnavailable, match="database or disk is full"):
        await outbox.put([ev(f"k{i}", "x" * 2000) for i in range(1, 50)])

    assert failures == ["put"]
    assert outbox.health.problem is not None and outbox.health.problem.startswith("put failed")
    assert await outbox.stats() == OutboxStats(pending=1, dead=0, oldest_pending_created_at=1000.0)
    assert [row["body"] for row in rows(outbox.path)] == ["before"]
    uncap_growth(outbox)
    assert await outbox.put([ev("k1", "after")]) == [True]


async def test_a_probe_fails_while_the_database_cannot_grow_and_succeeds_once_it_can(outbox: SqliteOutbox) -> None:
    """probe() writes a few pages durably: it fails (and is counted) while that does not fit, and passes after."""
    failures: list[str] = []
    outbox.health.listener = failures.append
    cap_growth(outbox)

    with pytest.raises(OutboxUnavailable, match="database or disk is full"):
        await outbox.probe()
    assert failures == ["probe"]

    uncap_growth(outbox)
    await outbox.probe()
    assert failures == ["probe"]


async def test_a_replay_that_fails_midway_keeps_the_pending_count(outbox: SqliteOutbox) -> None:
    """A dead-letter replay that fails after counting an event back rolls back whole, and so does the count."""
    await outbox.put([ev(f"k{i}", f"e{i}") for i in range(3)])
    for event in await claim(outbox):
        await outbox.dead(event.id, "InvalidParameter", "bad", None)
    db = sqlite3.connect(outbox.path)
    try:  # the storage fails on the replay's second statement, after its first event was counted
        db.execute("CREATE TRIGGER fail BEFORE INSERT ON heads BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        db.commit()
        with pytest.raises(OutboxUnavailable, match="disk I/O error"):
            await outbox.replay(ALL)
    finally:
        db.execute("DROP TRIGGER fail")
        db.commit()
        db.close()
    assert await outbox.stats() == OutboxStats(pending=0, dead=3, oldest_pending_created_at=None)
    assert outbox.health.problem is not None and outbox.health.problem.startswith("admin failed")
    assert len((await outbox.replay(ALL)).replayed) == 3
