"""The trail contract: every backend answers "what happened to alert_key K" for delivered, suppressed, coalesced,
expired, dead-lettered, replayed and purged events, with every attempt, and keeps finished events only within
their retention.

Every test with the ``backend`` fixture runs once per backend in ``tests.support.outboxes.BACKENDS`` (as
``tests/test_outbox.py`` does); the rules themselves (:mod:`bridge.outbox.trail`) are tested without storage at
the end.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bridge.outbox import Attempt, DeadLetterFilter, NewEvent, Outbox, OutboxStats, Retention, TrailFilter
from bridge.outbox import trail as trail_rules
from tests.support.clock import FakeClock
from tests.support.outboxes import DEST, OutboxBackend, claim

OutboxFactory = Callable[..., Awaitable[Outbox]]


@pytest.fixture
def outbox_max_pending() -> int:
    return 100_000


def event(key: str, title: str, *, status: str = "Critical", destination: str = DEST, **labels: str) -> NewEvent:
    """An event with a real JSON body, as the mapper makes it (the trail reads title and labels from it)."""
    body = json.dumps({"title_rule": title, "event_status": status, "alert_key": key, "labels": labels})
    return NewEvent(destination, key, "alertmanager", status, body, digest=f"{status}/{title}/{sorted(labels.items())}")


def ok(at: float, request_id: str = "fd-ok", latency: float = 0.05) -> Attempt:
    return Attempt(at, "ok", "delivered", "none", latency, 200, request_id)


def failed(
    at: float, code: str = "InternalError", status: int | None = 500, request_id: str | None = "fd-retry"
) -> Attempt:
    return Attempt(at, "retry", "server_error", code, 0.2, status, request_id, "upstream failed")


def rejected(at: float, request_id: str = "fd-dead") -> Attempt:
    return Attempt(at, "give_up", "rejected", "InvalidParameter", 0.1, 400, request_id, "title_rule is too long")


async def history(box: Outbox, key: str | None = None, **criteria: Any) -> list[tuple[int, str]]:
    """(id, outcome) of the events of ``key`` (or all) matching ``criteria``, newest first."""
    return [(e.id, e.outcome) for e in await box.trail(TrailFilter(alert_key=key, **criteria))]


# -- what happened to alert_key K ----------------------------------------------------------------------


async def test_a_delivered_event_stays_in_the_trail_with_its_arrival_and_attempt(
    outbox: Outbox, clock: FakeClock
) -> None:
    """Delivered: the trail keeps where it came from (source, inbound request id), and the attempt with Flashduty's
    request id, HTTP status, code and latency; it is no longer pending."""
    await outbox.put([event("k", "disk full", team="db")], request_id="in-1")
    (claimed,) = await claim(outbox)
    clock.advance(2)
    await outbox.delivered(claimed.id, ok(clock.now, "fd-123", latency=0.042))

    (found,) = await outbox.trail(TrailFilter(alert_key="k"))
    assert (found.id, found.outcome, found.attempts) == (claimed.id, "delivered", 1)
    assert (found.source, found.inbound_request_id, found.destination) == ("alertmanager", "in-1", DEST)
    assert (found.title, found.labels, found.event_status) == ("disk full", {"team": "db"}, "Critical")
    assert (found.created_at, found.finished_at, found.request_id) == (1000.0, 1002.0, "fd-123")
    (attempt,) = found.steps
    assert attempt == {
        "kind": "attempt",
        "at": 1002.0,
        "outcome": "ok",
        "reason": "delivered",
        "code": "none",
        "status": 200,
        "request_id": "fd-123",
        "latency_ms": 42.0,
        "message": "",
    }
    assert await outbox.trail_event(claimed.id) == found
    assert (await outbox.stats()).pending == 0


async def test_a_suppressed_repeat_is_recorded_in_the_trail_and_not_queued(
    make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """A repeat within the refresh interval is answered False, queued nowhere, and listed as suppressed with the
    request it came in."""
    box = await make_outbox(refresh_interval=300)
    assert await box.put([event("k", "cpu high")], request_id="in-1") == [True]
    clock.advance(60)
    assert await box.put([event("k", "cpu high")], request_id="in-2") == [False]

    first, repeat = sorted(await box.trail(TrailFilter(alert_key="k")), key=lambda e: e.id)
    assert (first.outcome, repeat.outcome) == ("pending", "suppressed")
    assert (repeat.inbound_request_id, repeat.created_at, repeat.finished_at) == ("in-2", 1060.0, 1060.0)
    assert repeat.id > first.id
    assert await box.stats() == OutboxStats(pending=1, dead=0, oldest_pending_created_at=1000.0)
    assert [c.id for c in await claim(box)] == [first.id]


async def test_the_trail_of_a_key_lists_every_ending_newest_first(make_outbox: OutboxFactory, clock: FakeClock) -> None:
    """One key's trail: delivered, suppressed, coalesced, dead-lettered, in one list, newest first, other keys
    left out."""
    box = await make_outbox(refresh_interval=300)
    await box.put([event("k", "v1")])
    (first,) = await claim(box)
    await box.delivered(first.id, ok(clock.now))
    await box.put([event("k", "v1")])  # repeat: suppressed
    await box.put([event("k", "v2"), event("k", "v3"), event("other", "x")])  # v2 coalesced into v3
    result = await box.claim(DEST, 10, 30)
    assert result.coalesced == 1
    v3 = next(e for e in result.events if e.alert_key == "k")
    await box.dead(v3.id, "InvalidParameter", "bad", "fd-dead", rejected(clock.now))

    outcomes = [outcome for _, outcome in await history(box, "k")]
    assert outcomes == ["dead", "coalesced", "suppressed", "delivered"]


async def test_every_attempt_is_a_step_in_order(outbox: Outbox, clock: FakeClock) -> None:
    """Two failed attempts, then success: three attempt steps with their codes, statuses and request ids."""
    await outbox.put([event("k", "x")])
    for code, status in (("InternalError", 500), ("network", None)):
        (claimed,) = await claim(outbox)
        await outbox.retry_later(claimed.id, clock.now + 5, code, "failed", failed(clock.now, code, status))
        clock.advance(5)
    (claimed,) = await claim(outbox)
    await outbox.delivered(claimed.id, ok(clock.now, "fd-last"))

    found = await outbox.trail_event(claimed.id)
    assert found is not None
    assert found.attempts == 3
    assert [(s["outcome"], s["code"], s["status"], s["at"]) for s in found.steps] == [
        ("retry", "InternalError", 500, 1000.0),
        ("retry", "network", None, 1005.0),
        ("ok", "none", 200, 1010.0),
    ]
    assert found.request_id == "fd-last"


async def test_a_dead_letter_replayed_and_delivered_shows_the_whole_story(outbox: Outbox, clock: FakeClock) -> None:
    """Rejected, replayed, delivered: the steps say so in order, the outcome is delivered and it counts as replayed."""
    await outbox.put([event("k", "x")])
    (claimed,) = await claim(outbox)
    await outbox.dead(claimed.id, "InvalidParameter", "bad key", "fd-dead", rejected(clock.now))
    dead = await outbox.trail_event(claimed.id)
    assert dead is not None and (dead.outcome, dead.dead_at, dead.request_id) == ("dead", 1000.0, "fd-dead")

    clock.advance(60)
    assert (await outbox.replay(DeadLetterFilter(ids=(claimed.id,)))).replayed == [claimed.id]
    assert await history(outbox, "k") == [(claimed.id, "pending")]
    (again,) = await claim(outbox)
    await outbox.delivered(again.id, ok(clock.now, "fd-ok"))

    found = await outbox.trail_event(claimed.id)
    assert found is not None
    assert [(s["kind"], s.get("outcome")) for s in found.steps] == [
        ("attempt", "give_up"),
        ("replayed", None),
        ("attempt", "ok"),
    ]
    assert found.steps[1] == {"kind": "replayed", "at": 1060.0, "forced": False}
    assert (found.outcome, found.replayed, found.request_id) == ("delivered", True, "fd-ok")
    assert await history(outbox, outcome="replayed") == [(claimed.id, "delivered")]


async def test_coalesced_expired_parked_and_purged_events_say_why(make_outbox: OutboxFactory, clock: FakeClock) -> None:
    """Each ending without a delivery has its own step: coalesced (by the newer event), expired, parked (no
    attempt), purged."""
    box = await make_outbox(max_age=60)
    await box.put([event("e", "stale")])
    clock.advance(61)
    await box.put([event("c", "old"), event("c", "new")])
    await box.put([event("p", "nowhere")])
    result = await box.claim(DEST, 10, 30)
    newer, older = await box.trail(TrailFilter(alert_key="c"))
    (stale,) = await box.trail(TrailFilter(alert_key="e"))
    assert (newer.outcome, older.outcome) == ("pending", "coalesced")
    assert older.steps == [{"kind": "coalesced", "at": 1061.0, "by": newer.id}]
    assert (stale.outcome, stale.steps[0]["kind"], stale.last_code) == ("dead", "expired", "expired")
    assert [e.body for e in result.expired] == [stale.body]

    parked_id = next(e.id for e in result.events if e.alert_key == "p")
    await box.dead(parked_id, "unknown_destination", "no destination 'x' in the config", None)
    parked = await box.trail_event(parked_id)
    assert parked is not None
    assert parked.steps == [
        {"kind": "parked", "at": 1061.0, "code": "unknown_destination", "message": "no destination 'x' in the config"}
    ]

    clock.advance(5)
    assert await box.purge(DeadLetterFilter(ids=(parked_id,))) == 1
    purged = await box.trail_event(parked_id)
    assert purged is not None
    assert (purged.outcome, purged.finished_at, purged.steps[-1]) == (
        "purged",
        1066.0,
        {"kind": "purged", "at": 1066.0},
    )
    assert [letter["id"] for letter in await box.dead_letters(DeadLetterFilter())] == [stale.id]


async def test_steps_are_capped_keeping_the_first_and_the_latest(outbox: Outbox, clock: FakeClock) -> None:
    """An event retried more than MAX_STEPS times keeps MAX_STEPS steps: the first ones and the latest; attempts
    still counts every one."""
    await outbox.put([event("k", "x")])
    total = trail_rules.MAX_STEPS + 5
    for n in range(total - 1):
        (claimed,) = await claim(outbox)
        await outbox.retry_later(claimed.id, clock.now + 1, "InternalError", f"try {n}", failed(clock.now))
        clock.advance(1)
    (claimed,) = await claim(outbox)
    await outbox.delivered(claimed.id, ok(clock.now))

    found = await outbox.trail_event(claimed.id)
    assert found is not None
    assert found.attempts == total
    assert len(found.steps) == trail_rules.MAX_STEPS
    assert [s["at"] for s in found.steps[:3]] == [1000.0, 1001.0, 1002.0]
    assert (found.steps[-1]["outcome"], found.steps[-1]["at"]) == ("ok", 1000.0 + total - 1)


async def test_the_trail_survives_a_reopen(backend: OutboxBackend, clock: FakeClock) -> None:
    """Delivered and suppressed events are found by a new outbox on the same storage."""
    first = backend.make(max_pending=10, refresh_interval=300, clock=clock)
    await first.open()
    await first.put([event("k", "x")], request_id="in-1")
    await first.put([event("k", "x")], request_id="in-2")
    (claimed,) = await claim(first)
    await first.delivered(claimed.id, ok(clock.now))
    await first.close()

    second = backend.make(max_pending=10, refresh_interval=300, clock=clock)
    await second.open()
    try:
        found = await second.trail(TrailFilter(alert_key="k"))
        assert [(e.outcome, e.inbound_request_id) for e in found] == [("suppressed", "in-2"), ("delivered", "in-1")]
    finally:
        await second.close()


# -- filters --------------------------------------------------------------------------------------------


async def test_filters_narrow_the_trail_and_combine(outbox: Outbox, clock: FakeClock) -> None:
    """alert_key, destination, labels, status, outcome, since, before_id and limit each narrow; all must match."""
    await outbox.put([event("a", "a", team="db", env="prod"), event("b", "b", team="web", destination="d2")])
    clock.advance(10)
    await outbox.put([event("c", "c", status="Ok", team="db", env="dev")])
    (a,) = [e for e in await claim(outbox) if e.alert_key == "a"]
    await outbox.delivered(a.id, ok(clock.now))
    ids = {e.alert_key: e.id for e in await outbox.trail(TrailFilter())}

    async def keys(**criteria: Any) -> list[str]:
        return [e.alert_key for e in await outbox.trail(TrailFilter(**criteria))]

    assert await keys() == ["c", "b", "a"]
    assert await keys(alert_key="b") == ["b"]
    assert await keys(destination="d2") == ["b"]
    assert await keys(labels=(("team", "db"),)) == ["c", "a"]
    assert await keys(labels=(("team", "db"), ("env", "prod"))) == ["a"]
    assert await keys(labels=(("team", "nobody"),)) == []
    assert await keys(event_status="Ok") == ["c"]
    assert await keys(outcome="delivered") == ["a"]
    assert await keys(outcome="pending") == ["c", "b"]
    assert await keys(since=1005.0) == ["c"]
    assert await keys(before_id=ids["c"]) == ["b", "a"]
    assert await keys(limit=1) == ["c"]
    assert await keys(limit=1, before_id=ids["c"]) == ["b"]
    assert await keys(alert_key="a", outcome="pending") == []


async def test_a_rare_match_among_many_newer_events_is_found(outbox: Outbox) -> None:
    """A filter that only the oldest of many events matches still finds it (a scan reaches the oldest event)."""
    await outbox.put([event("needle", "n", team="rare")])
    await outbox.put([event(f"hay-{n}", "h", team="common") for n in range(9000)])

    found = await outbox.trail(TrailFilter(labels=(("team", "rare"),), limit=5))
    assert [e.alert_key for e in found] == ["needle"]
    assert len(await outbox.trail(TrailFilter(labels=(("team", "common"),), limit=1000))) == 1000


async def test_a_label_value_json_escapes_is_matched_exactly(outbox: Outbox) -> None:
    """Quotes, backslashes and non-ASCII in a label value: the filter compares the value, not its JSON spelling."""
    tricky = 'db "core" \\ équipe'
    await outbox.put([event("tricky", "t", team=tricky), event("plain", "p", team="db core")])
    assert [e.alert_key for e in await outbox.trail(TrailFilter(labels=(("team", tricky),)))] == ["tricky"]
    assert [e.alert_key for e in await outbox.trail(TrailFilter(labels=(("team", "db core"),)))] == ["plain"]
    assert await outbox.trail(TrailFilter(labels=(("team", "db"),))) == []


async def test_an_unknown_event_is_none(outbox: Outbox) -> None:
    """trail_event of an id never given (or pruned) is None, not an error."""
    assert await outbox.trail_event(12345) is None
    assert await outbox.trail(TrailFilter(alert_key="nothing")) == []


async def test_stats_by_destination_count_pending_and_dead_with_the_oldest(outbox: Outbox, clock: FakeClock) -> None:
    """Per destination: pending and dead counts, and when its oldest pending event arrived."""
    assert await outbox.stats_by_destination() == {}
    await outbox.put([event("a", "a", destination="d1"), event("b", "b", destination="d2")])
    clock.advance(10)
    await outbox.put([event("c", "c", destination="d1")])
    (b,) = await claim(outbox, destination="d2")
    await outbox.dead(b.id, "InvalidParameter", "bad", None, rejected(clock.now))

    assert await outbox.stats_by_destination() == {
        "d1": OutboxStats(pending=2, dead=0, oldest_pending_created_at=1000.0),
        "d2": OutboxStats(pending=0, dead=1, oldest_pending_created_at=None),
    }


# -- retention ------------------------------------------------------------------------------------------


async def test_pruning_keeps_the_newest_max_events_and_never_pending_or_dead(
    make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """With max_events 3, finished events outside the newest 3 ids go; pending and dead ones stay, however old."""
    box = await make_outbox(retention=Retention(max_age=3600, max_events=3))
    await box.put([event("pending", "p")])
    await box.put([event("dead", "d")])
    for n in range(5):
        await box.put([event(f"done-{n}", "x")])
    for claimed in await claim(box, limit=10):
        if claimed.alert_key == "dead":
            await box.dead(claimed.id, "InvalidParameter", "bad", None, rejected(clock.now))
        elif claimed.alert_key != "pending":
            await box.delivered(claimed.id, ok(clock.now))

    assert await box.prune_trail() == 2  # ids 1..7: the newest 3 are 5..7, so done-0 (3) and done-1 (4) go
    assert await box.prune_trail() == 0
    remaining = [e.alert_key for e in await box.trail(TrailFilter())]
    assert remaining == ["done-4", "done-3", "done-2", "dead", "pending"]


async def test_pruning_removes_events_finished_longer_than_max_age_ago(
    make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """Age counts from when an event finished, not when it arrived."""
    box = await make_outbox(retention=Retention(max_age=100, max_events=1000))
    await box.put([event("early", "x")])
    (early,) = await claim(box)
    await box.delivered(early.id, ok(clock.now))
    clock.advance(50)
    await box.put([event("late", "x")])
    (late,) = await claim(box)
    clock.advance(40)
    await box.delivered(late.id, ok(clock.now))  # finished at 1090

    clock.advance(10.5)  # 1100.5: early finished 100.5 s ago, late 10.5 s ago
    assert await box.prune_trail() == 1
    assert [e.alert_key for e in await box.trail(TrailFilter())] == ["late"]
    clock.advance(90)
    assert await box.prune_trail() == 1
    assert await box.trail(TrailFilter()) == []


async def test_max_events_zero_keeps_no_finished_event(make_outbox: OutboxFactory, clock: FakeClock) -> None:
    """With max_events 0 the trail holds only the outbox: finished events are all pruned."""
    box = await make_outbox(retention=Retention(max_events=0), refresh_interval=300)
    await box.put([event("k", "x"), event("k", "x"), event("j", "y")])
    for claimed in await claim(box):
        await box.delivered(claimed.id, ok(clock.now))
    await box.put([event("pending", "p")])

    assert await box.prune_trail() == 3
    assert [e.alert_key for e in await box.trail(TrailFilter())] == ["pending"]


async def test_one_prune_deletes_at_most_a_batch(make_outbox: OutboxFactory, clock: FakeClock) -> None:
    """prune_trail is bounded per call (PRUNE_BATCH), so a long backlog of old events is cut in short steps."""
    box = await make_outbox(retention=Retention(max_events=0), refresh_interval=300)
    await box.put([event("k", "x")] * (trail_rules.PRUNE_BATCH + 10))  # one stored, the rest suppressed

    assert await box.prune_trail() == trail_rules.PRUNE_BATCH
    assert await box.prune_trail() == 9
    assert [e.outcome for e in await box.trail(TrailFilter())] == ["pending"]


# -- the rules, without storage ---------------------------------------------------------------------------


def test_prunable_takes_the_leading_events_past_either_bound() -> None:
    """Past max_events (by id) or max_age (since finishing); the first one kept stops the walk."""
    retention = Retention(max_age=100, max_events=10)
    oldest = [(1, 950.0), (2, 990.0), (5, 850.0), (12, 800.0), (13, 999.0), (14, 800.0)]
    # newest id 20: ids <= 10 are past max_events; 12 finished 200 s ago; 13 is young and recent: stop.
    assert trail_rules.prunable(oldest, newest_id=20, now=1000.0, retention=retention) == [1, 2, 5, 12]
    assert trail_rules.prunable(oldest, newest_id=11, now=1000.0, retention=retention) == [1]  # 2..11 are the newest 10
    assert trail_rules.prunable([], newest_id=11, now=1000.0, retention=retention) == []


def test_append_step_keeps_the_first_steps_and_replaces_the_latest() -> None:
    steps: list[int] = []
    for n in range(trail_rules.MAX_STEPS + 3):
        steps = trail_rules.append_step(steps, n)
    assert len(steps) == trail_rules.MAX_STEPS
    assert steps[: trail_rules.MAX_STEPS - 1] == list(range(trail_rules.MAX_STEPS - 1))
    assert steps[-1] == trail_rules.MAX_STEPS + 2


@pytest.mark.parametrize(
    ("criteria", "problem"),
    [
        ({"outcome": "lost"}, "outcome must be one of"),
        ({"labels": (('te"am', "x"),)}, "label name"),
        ({"labels": (("1team", "x"),)}, "label name"),
        ({"limit": 0}, "limit"),
        ({"limit": trail_rules.MAX_LIMIT + 1}, "limit"),
    ],
)
def test_a_filter_refuses_what_no_backend_could_answer_safely(criteria: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TrailFilter(**criteria)


def test_a_row_with_a_body_that_is_not_json_has_no_title_or_labels() -> None:
    row = (1, 1000.0, "alertmanager", None, DEST, "k", "Ok", "pending", 0, None, None, None, None, None, "x", "[]")
    found = trail_rules.event_from_row(row)
    assert (found.title, found.labels, found.steps) == ("", {}, [])
