"""The SQLite outbox commits durably, groups commits, leases heads and keeps per-key FIFO order.

Every test uses a real SQLite file under ``tmp_path`` and a fake clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.outbox import Claimed, NewEvent, OutboxFull, OutboxStats, OutboxUnavailable, SqliteOutbox
from tests.support.clock import FakeClock

DEST = "flashduty"


class CountingClock(FakeClock):
    """A clock that ticks one second every time it is read, so each read is distinguishable."""

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def ev(alert_key: str, body: str, *, destination: str = DEST, status: str = "Critical") -> NewEvent:
    return NewEvent(destination=destination, alert_key=alert_key, source="alertmanager", event_status=status, body=body)


def rows(path: Path) -> list[dict[str, Any]]:
    """Every stored event, read with a separate plain sqlite3 connection."""
    db = sqlite3.connect(path)
    try:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM events ORDER BY id")]
    finally:
        db.close()


def bodies(claimed: list[Claimed]) -> list[str]:
    return [c.body for c in claimed]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def outbox(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SqliteOutbox]:
    box = SqliteOutbox(tmp_path / "outbox", max_pending=1000, clock=clock)
    await box.open()
    yield box
    if box.is_open:
        await box.close()


# -- durability -----------------------------------------------------------------------------


async def test_put_commits_events_that_survive_close_and_reopen(tmp_path: Path, clock: FakeClock) -> None:
    """Events committed by put are found by a new SqliteOutbox opened on the same directory."""
    directory = tmp_path / "outbox"
    first = SqliteOutbox(directory, max_pending=10, clock=clock)
    await first.open()
    await first.put([ev("k1", "one"), ev("k2", "two", status="Ok")])
    await first.close()

    second = SqliteOutbox(directory, max_pending=10, clock=clock)
    await second.open()
    try:
        assert (await second.stats()).pending == 2
        claimed = await second.claim(10, 30)
        assert [(c.alert_key, c.body, c.event_status, c.attempts) for c in claimed] == [
            ("k1", "one", "Critical", 0),
            ("k2", "two", "Ok", 0),
        ]
        assert all(c.created_at == 1000.0 for c in claimed)
    finally:
        await second.close()


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
    assert bodies(await first.claim(10, 300)) == ["leased"]
    assert await first.claim(10, 300) == []
    await first.close()

    second = SqliteOutbox(directory, max_pending=10, clock=clock)
    await second.open()
    try:
        assert bodies(await second.claim(10, 300)) == ["leased"]  # clock did not move: the lease was cleared
    finally:
        await second.close()


async def test_second_outbox_on_the_same_directory_fails_to_open(tmp_path: Path, clock: FakeClock) -> None:
    """The lock file stops a second SqliteOutbox from opening a directory that is in use."""
    directory = tmp_path / "outbox"
    first = SqliteOutbox(directory, max_pending=10, clock=clock)
    await first.open()
    intruder = SqliteOutbox(directory, max_pending=10, clock=clock)
    try:
        with pytest.raises(OutboxUnavailable, match="in use"):
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


async def test_put_after_close_raises_outbox_unavailable(outbox: SqliteOutbox) -> None:
    """A closed outbox refuses new events with OutboxUnavailable instead of losing them."""
    await outbox.close()
    with pytest.raises(OutboxUnavailable):
        await outbox.put([ev("k", "late")])


# -- claiming and per-key order -----------------------------------------------------------------------


async def test_claims_return_heads_in_commit_order_across_keys(outbox: SqliteOutbox) -> None:
    """Heads of different keys are claimed in the order they were committed, up to the limit."""
    await outbox.put([ev("k2", "first")])
    await outbox.put([ev("k1", "second"), ev("k3", "third")])
    await outbox.put([ev("k0", "fourth")])

    assert bodies(await outbox.claim(3, 30)) == ["first", "second", "third"]
    assert bodies(await outbox.claim(3, 30)) == ["fourth"]


async def test_only_the_oldest_pending_event_of_a_key_is_claimable(outbox: SqliteOutbox) -> None:
    """The second event of a key stays unclaimable while the first is pending or leased, until it is delivered."""
    await outbox.put([ev("k", "firing", status="Critical"), ev("k", "resolved", status="Ok")])

    assert await outbox.next_due() == 1000.0
    first = await outbox.claim(10, 30)
    assert bodies(first) == ["firing"]
    assert await outbox.claim(10, 30) == []  # head leased, second event blocked behind it

    await outbox.delivered(first[0].id)
    assert bodies(await outbox.claim(10, 30)) == ["resolved"]


async def test_a_leased_head_is_reclaimed_only_after_its_lease_expires(outbox: SqliteOutbox, clock: FakeClock) -> None:
    """A claimed event is invisible to other claims until lease_seconds have passed on the clock."""
    await outbox.put([ev("k", "x")])
    (claimed,) = await outbox.claim(10, 30)

    clock.advance(29.9)
    assert await outbox.claim(10, 30) == []
    clock.advance(0.1)
    again = await outbox.claim(10, 30)
    assert [c.id for c in again] == [claimed.id]
    assert again[0].attempts == 0  # an expired lease is not a recorded attempt


async def test_retry_later_keeps_the_event_at_the_head_until_it_is_due(outbox: SqliteOutbox, clock: FakeClock) -> None:
    """After retry_later the event is not due until ``at``, and the next event of its key stays blocked."""
    await outbox.put([ev("k", "firing"), ev("k", "resolved", status="Ok")])
    (claimed,) = await outbox.claim(10, 30)

    await outbox.retry_later(claimed.id, at=1010.0, code="InternalError", error="boom")
    assert await outbox.claim(10, 30) == []
    assert await outbox.next_due() == 1010.0

    clock.advance(9.9)
    assert await outbox.claim(10, 30) == []
    clock.advance(0.1)
    retried = await outbox.claim(10, 30)
    assert [(c.id, c.body, c.attempts) for c in retried] == [(claimed.id, "firing", 1)]

    stored = rows(outbox.path)[0]
    assert (stored["state"], stored["last_code"], stored["last_error"]) == ("pending", "InternalError", "boom")


async def test_dead_parks_the_event_and_unblocks_the_next_event_of_its_key(
    outbox: SqliteOutbox, clock: FakeClock
) -> None:
    """A dead-lettered head is listed with its reason, and the key's next event becomes claimable."""
    await outbox.put([ev("k", "rejected"), ev("k", "after")])
    (claimed,) = await outbox.claim(10, 30)
    clock.advance(5)

    await outbox.dead(claimed.id, "InvalidParameter", "title_rule is too long", "req-123")

    assert bodies(await outbox.claim(10, 30)) == ["after"]
    (letter,) = await outbox.dead_letters()
    assert letter["id"] == claimed.id
    assert letter["body"] == "rejected"
    assert letter["alert_key"] == "k"
    assert letter["destination"] == DEST
    assert letter["last_code"] == "InvalidParameter"
    assert letter["last_error"] == "title_rule is too long"
    assert letter["request_id"] == "req-123"
    assert letter["attempts"] == 1
    assert letter["dead_at"] == 1005.0
    assert await outbox.stats() == OutboxStats(pending=1, dead=1, oldest_pending_created_at=1000.0)


async def test_delivered_deletes_the_event(outbox: SqliteOutbox) -> None:
    """A delivered event is removed from the database and from the pending count."""
    await outbox.put([ev("k", "a"), ev("k", "b")])
    (claimed,) = await outbox.claim(10, 30)

    await outbox.delivered(claimed.id)

    assert [row["body"] for row in rows(outbox.path)] == ["b"]
    assert (await outbox.stats()).pending == 1
    assert await outbox.dead_letters() == []


async def test_same_alert_key_under_two_destinations_is_ordered_independently(outbox: SqliteOutbox) -> None:
    """The per-key FIFO is per (destination, alert_key): another destination's head is claimable."""
    await outbox.put(
        [
            ev("k", "d1-first", destination="d1"),
            ev("k", "d1-second", destination="d1"),
            ev("k", "d2-first", destination="d2"),
        ]
    )

    claimed = await outbox.claim(10, 30)
    assert [(c.destination, c.body) for c in claimed] == [("d1", "d1-first"), ("d2", "d2-first")]


# -- capacity and group commit -----------------------------------------------------------------------


async def test_put_over_max_pending_raises_outbox_full_and_stores_nothing_of_that_request(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A request that would exceed max_pending is refused whole, while a smaller concurrent request still fits."""
    box = SqliteOutbox(tmp_path / "outbox", max_pending=5, clock=clock)
    await box.open()
    try:
        await box.put([ev("a", "a1"), ev("b", "b1"), ev("c", "c1")])

        too_big, fits = await asyncio.gather(
            box.put([ev("x", "x1"), ev("y", "y1"), ev("z", "z1")]),
            box.put([ev("d", "d1"), ev("e", "e1")]),
            return_exceptions=True,
        )

        assert isinstance(too_big, OutboxFull)
        assert fits is None
        assert [row["body"] for row in rows(box.path)] == ["a1", "b1", "c1", "d1", "e1"]
        assert (await box.stats()).pending == 5
        with pytest.raises(OutboxFull):
            await box.put([ev("f", "f1")])

        (claimed, *_) = await box.claim(1, 30)
        await box.delivered(claimed.id)
        await box.put([ev("f", "f1")])  # delivering frees room again
    finally:
        await box.close()


async def test_concurrent_puts_are_group_committed_and_keep_per_call_order(tmp_path: Path) -> None:
    """Many puts gathered at once all commit, in fewer transactions than puts, each request contiguous and in order."""
    clock = CountingClock()  # every transaction reads the clock once, so created_at tells transactions apart
    box = SqliteOutbox(tmp_path / "outbox", max_pending=1000, clock=clock)
    await box.open()
    requests = 40
    try:
        await asyncio.gather(
            *(box.put([ev(f"k{i}", f"{i}:0"), ev(f"k{i}", f"{i}:1"), ev(f"k{i}", f"{i}:2")]) for i in range(requests))
        )
        stored = rows(box.path)
        assert (await box.stats()).pending == 3 * requests
    finally:
        await box.close()

    assert len(stored) == 3 * requests
    for i in range(requests):
        mine = [index for index, row in enumerate(stored) if row["alert_key"] == f"k{i}"]
        assert [stored[index]["body"] for index in mine] == [f"{i}:0", f"{i}:1", f"{i}:2"]
        assert mine == list(range(mine[0], mine[0] + 3))  # one request's events are committed together
        assert len({stored[index]["created_at"] for index in mine}) == 1
    transactions = {row["created_at"] for row in stored}
    assert len(transactions) < requests


# -- stats and scheduling ---------------------------------------------------------------------------


async def test_stats_count_pending_and_dead_and_report_the_oldest_pending(
    outbox: SqliteOutbox, clock: FakeClock
) -> None:
    """stats() counts pending and dead events and reports the creation time of the oldest pending one."""
    assert await outbox.stats() == OutboxStats(pending=0, dead=0, oldest_pending_created_at=None)

    await outbox.put([ev("k1", "old")])
    clock.advance(50)
    await outbox.put([ev("k2", "newer"), ev("k3", "newest")])
    assert await outbox.stats() == OutboxStats(pending=3, dead=0, oldest_pending_created_at=1000.0)

    old, *_ = await outbox.claim(10, 30)
    await outbox.dead(old.id, "InvalidParameter", "bad", None)
    assert await outbox.stats() == OutboxStats(pending=2, dead=1, oldest_pending_created_at=1050.0)


async def test_next_due_returns_the_earliest_due_head_or_none_when_empty(
    outbox: SqliteOutbox, clock: FakeClock
) -> None:
    """next_due() is the earliest time any head can be claimed, ignoring events queued behind a head."""
    assert await outbox.next_due() is None

    await outbox.put([ev("k1", "a"), ev("k2", "b")])
    assert await outbox.next_due() == 1000.0

    a, b = await outbox.claim(10, 30)
    assert await outbox.next_due() == 1030.0  # both leased

    await outbox.retry_later(a.id, at=1500.0, code="InternalError", error="boom")
    await outbox.retry_later(b.id, at=1300.0, code="InternalError", error="boom")
    await outbox.put([ev("k2", "behind b")])  # due now, but not a head
    assert await outbox.next_due() == 1300.0

    await outbox.dead(b.id, "InvalidParameter", "bad", None)
    assert await outbox.next_due() == 1000.0  # "behind b" is the head of k2 now

    (behind,) = await outbox.claim(10, 30)
    await outbox.delivered(behind.id)
    await outbox.dead(a.id, "InvalidParameter", "bad", None)
    assert await outbox.next_due() is None
