"""The outbox contract: every backend commits durably, suppresses repeats, claims heads by priority, coalesces and
expires them, keeps per-key FIFO order, and manages dead letters (list, replay, purge).

Every test runs once per backend in ``tests.support.outboxes.BACKENDS``, on real storage of its own, with a fake
clock. What only one backend promises (SQLite's lock file, WAL, group commit, migrations) is tested in
``test_outbox_<backend>.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bridge.outbox import (
    Claimed,
    DeadLetterFilter,
    Outbox,
    OutboxFull,
    OutboxStats,
    OutboxUnavailable,
    ReplayResult,
    policy,
)
from tests.support.clock import FakeClock
from tests.support.outboxes import DEST, OutboxBackend, bodies, claim, ev

ALL = DeadLetterFilter()

OutboxFactory = Callable[..., Awaitable[Outbox]]


def id_of(backend: OutboxBackend, body: str) -> int:
    """The id of the stored event with ``body``."""
    (event_id,) = [row["id"] for row in backend.events() if row["body"] == body]
    return int(event_id)


# -- durability -----------------------------------------------------------------------------


async def test_put_commits_events_that_survive_close_and_reopen(backend: OutboxBackend, clock: FakeClock) -> None:
    """Events committed by put are found by a new outbox opened on the same storage."""
    first = backend.make(max_pending=10, clock=clock)
    await first.open()
    assert await first.put([ev("k1", "one"), ev("k2", "two", status="Ok")]) == [True, True]
    await first.close()

    second = backend.make(max_pending=10, clock=clock)
    await second.open()
    try:
        assert (await second.stats()).pending == 2
        claimed = await claim(second)
        assert sorted((c.alert_key, c.body, c.event_status, c.attempts) for c in claimed) == [
            ("k1", "one", "Critical", 0),
            ("k2", "two", "Ok", 0),
        ]
        assert all(c.created_at == 1000.0 for c in claimed)
    finally:
        await second.close()


async def test_put_after_close_raises_outbox_unavailable(outbox: Outbox) -> None:
    """A closed outbox refuses new events with OutboxUnavailable instead of losing them."""
    await outbox.close()
    with pytest.raises(OutboxUnavailable):
        await outbox.put([ev("k", "late")])


async def test_put_of_nothing_returns_an_empty_list(backend: OutboxBackend, outbox: Outbox) -> None:
    """put([]) stores nothing and says so with an empty result."""
    assert await outbox.put([]) == []
    assert backend.events() == []


async def test_an_outbox_says_where_it_is_opens_and_closes_twice_safely(backend: OutboxBackend) -> None:
    """location names the storage, is_open follows open and close, and a second close is harmless."""
    box = backend.make(max_pending=10)
    assert not box.is_open
    await box.open()
    assert box.is_open
    assert box.location
    await box.close()
    assert not box.is_open
    await box.close()


async def test_passthrough_keys_are_remembered_across_a_reopen(backend: OutboxBackend) -> None:
    """A key from a sender's URL is stored once and listed again by a new outbox on the same storage."""
    first = backend.make(max_pending=10)
    await first.open()
    await first.save_passthrough_key("passthrough-1", "key-one")
    await first.save_passthrough_key("passthrough-1", "key-one")
    await first.save_passthrough_key("passthrough-2", "key-two")
    await first.close()

    second = backend.make(max_pending=10)
    await second.open()
    try:
        assert await second.passthrough_keys() == {"passthrough-1": "key-one", "passthrough-2": "key-two"}
    finally:
        await second.close()


async def test_a_working_outbox_probes_fine_and_reports_no_problem(outbox: Outbox) -> None:
    """probe() commits on healthy storage, and health has no problem to report."""
    await outbox.probe()
    await outbox.put([ev("k", "after the probe")])
    assert outbox.health.problem is None
    assert (await outbox.stats()).pending == 1


async def test_operations_on_a_closed_outbox_raise_outbox_unavailable_without_a_storage_problem(
    outbox: Outbox,
) -> None:
    """A closed outbox refuses every operation with OutboxUnavailable; being closed is not a storage failure."""
    await outbox.close()
    for operation in (outbox.stats(), outbox.claim(DEST, 1, 30), outbox.probe(), outbox.dead_letters(ALL)):
        with pytest.raises(OutboxUnavailable):
            await operation
    assert outbox.health.problem is None


# -- suppression of unchanged repeats ------------------------------------------------------------


async def test_repeat_with_the_same_digest_within_refresh_interval_is_suppressed(
    backend: OutboxBackend, make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """A digest equal to the key's last accepted one within refresh_interval: put returns False and stores nothing."""
    box = await make_outbox(refresh_interval=300)
    assert await box.put([ev("k", "first", digest="d1")]) == [True]
    clock.advance(299.9)

    assert await box.put([ev("k", "repeat", digest="d1")]) == [False]

    assert [row["body"] for row in backend.events()] == ["first"]
    assert (await box.stats()).pending == 1


async def test_repeat_after_refresh_interval_is_stored(
    backend: OutboxBackend, make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """Once refresh_interval has passed since the last accepted event, the same digest is stored again."""
    box = await make_outbox(refresh_interval=300)
    await box.put([ev("k", "first", digest="d1")])
    clock.advance(300)

    assert await box.put([ev("k", "refresh", digest="d1")]) == [True]
    assert [row["body"] for row in backend.events()] == ["first", "refresh"]


async def test_suppressed_repeats_do_not_extend_the_refresh_interval(
    backend: OutboxBackend, make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """The interval runs from the last *accepted* event, so steady repeats still go out once per interval."""
    box = await make_outbox(refresh_interval=300)
    await box.put([ev("k", "t0", digest="d1")])
    results = []
    for body in ("t100", "t200", "t300", "t400"):
        clock.advance(100)
        results += await box.put([ev("k", body, digest="d1")])

    assert results == [False, False, True, False]
    assert [row["body"] for row in backend.events()] == ["t0", "t300"]


async def test_a_different_digest_is_stored_at_once(make_outbox: OutboxFactory, clock: FakeClock) -> None:
    """An event that says something new (another digest) is never suppressed, even right after the last one."""
    box = await make_outbox(refresh_interval=300)
    await box.put([ev("k", "firing", digest="d1")])
    clock.advance(1)

    assert await box.put([ev("k", "changed", digest="d2")]) == [True]


async def test_going_back_to_an_earlier_state_is_not_a_repeat(make_outbox: OutboxFactory) -> None:
    """Firing, resolved, firing again with the first digest: all three are stored (only the last digest counts)."""
    box = await make_outbox(refresh_interval=300)

    stored = await box.put(
        [ev("k", "fire-1", digest="fire"), ev("k", "ok", status="Ok", digest="ok"), ev("k", "fire-2", digest="fire")]
    )

    assert stored == [True, True, True]


async def test_repeats_within_one_request_are_suppressed(make_outbox: OutboxFactory) -> None:
    """Two identical events of a key in one put: the second is reported False and not stored."""
    box = await make_outbox(refresh_interval=300)

    assert await box.put([ev("k", "a", digest="d1"), ev("k", "b", digest="d1"), ev("j", "c", digest="d1")]) == [
        True,
        False,
        True,
    ]


async def test_empty_digest_is_never_suppressed(backend: OutboxBackend, make_outbox: OutboxFactory) -> None:
    """Events without a digest are always stored, however often they repeat."""
    box = await make_outbox(refresh_interval=300)

    assert await box.put([ev("k", "a"), ev("k", "b")]) == [True, True]
    assert await box.put([ev("k", "c")]) == [True]
    assert len(backend.events()) == 3


async def test_zero_refresh_interval_suppresses_nothing(make_outbox: OutboxFactory) -> None:
    """With refresh_interval 0, a repeat with the same digest is stored."""
    box = await make_outbox(refresh_interval=0)

    assert await box.put([ev("k", "a", digest="d1"), ev("k", "b", digest="d1")]) == [True, True]


async def test_suppression_is_per_destination_and_alert_key(make_outbox: OutboxFactory) -> None:
    """The same digest under another alert_key, or the same key under another destination, is stored."""
    box = await make_outbox(refresh_interval=300)
    await box.put([ev("k", "d1/k", destination="d1", digest="same")])

    stored = await box.put(
        [
            ev("other", "d1/other", destination="d1", digest="same"),
            ev("k", "d2/k", destination="d2", digest="same"),
            ev("k", "d1/k again", destination="d1", digest="same"),
        ]
    )

    assert stored == [True, True, False]


async def test_suppression_state_survives_a_restart(backend: OutboxBackend, clock: FakeClock) -> None:
    """The last accepted digest is durable: a repeat right after a reopen is still suppressed."""
    first = backend.make(max_pending=10, refresh_interval=300, clock=clock)
    await first.open()
    await first.put([ev("k", "a", digest="d1")])
    await first.close()

    second = backend.make(max_pending=10, refresh_interval=300, clock=clock)
    await second.open()
    try:
        assert await second.put([ev("k", "b", digest="d1")]) == [False]
    finally:
        await second.close()


async def test_an_event_without_digest_ends_the_repeat_of_the_previous_one(make_outbox: OutboxFactory) -> None:
    """Firing (digest d1), resolved (no digest), firing (d1): the last accepted event differs, so all are stored."""
    box = await make_outbox(refresh_interval=300)

    stored = await box.put([ev("k", "fire-1", digest="d1"), ev("k", "ok", status="Ok"), ev("k", "fire-2", digest="d1")])

    assert stored == [True, True, True]


# -- claiming: per-key order, priority, leases ------------------------------------------------------------


async def test_claims_return_heads_in_commit_order_across_keys(outbox: Outbox) -> None:
    """Heads of different keys with the same status are claimed in the order they were committed, up to the limit."""
    await outbox.put([ev("k2", "first")])
    await outbox.put([ev("k1", "second"), ev("k3", "third")])
    await outbox.put([ev("k0", "fourth")])

    assert bodies(await claim(outbox, 3)) == ["first", "second", "third"]
    assert bodies(await claim(outbox, 3)) == ["fourth"]


async def test_claims_drain_ok_first_then_critical_warning_info(outbox: Outbox) -> None:
    """Across keys, heads are claimed Ok, Critical, Warning, Info, and by commit order within a status."""
    await outbox.put(
        [
            ev("k1", "info", status="Info"),
            ev("k2", "warning", status="Warning"),
            ev("k3", "critical-1", status="Critical"),
            ev("k4", "ok-1", status="Ok"),
            ev("k5", "critical-2", status="Critical"),
            ev("k6", "ok-2", status="Ok"),
            ev("k7", "warning-2", status="Warning"),
        ]
    )

    assert bodies(await claim(outbox, 3)) == ["ok-1", "ok-2", "critical-1"]
    assert bodies(await claim(outbox, 10)) == ["critical-2", "warning", "warning-2", "info"]


async def test_priority_never_reorders_events_of_one_key(outbox: Outbox) -> None:
    """An Ok queued behind a firing event of its key waits for it, though Ok heads of other keys go first."""
    await outbox.put([ev("k", "fire", status="Warning"), ev("k", "ok-k", status="Ok"), ev("j", "ok-j", status="Ok")])

    first = await claim(outbox)
    assert bodies(first) == ["ok-j", "fire"]
    assert await claim(outbox) == []

    await outbox.delivered(first[1].id)
    assert bodies(await claim(outbox)) == ["ok-k"]


async def test_priority_follows_the_new_head_when_a_key_advances(outbox: Outbox) -> None:
    """When a key's head is delivered, the key's next event is ranked by its own status."""
    await outbox.put(
        [ev("k", "k-info", status="Info"), ev("k", "k-ok", status="Ok"), ev("j", "j-critical", status="Critical")]
    )
    (critical, info) = await claim(outbox)
    assert [critical.body, info.body] == ["j-critical", "k-info"]
    await outbox.delivered(info.id)
    await outbox.put([ev("m", "m-critical", status="Critical")])

    assert bodies(await claim(outbox)) == ["k-ok", "m-critical"]


async def test_only_the_oldest_pending_event_of_a_key_is_claimable(outbox: Outbox) -> None:
    """The second event of a key stays unclaimable while the first is pending or leased, until it is delivered."""
    await outbox.put([ev("k", "firing", status="Critical"), ev("k", "resolved", status="Ok")])

    assert await outbox.next_due() == 1000.0
    first = await claim(outbox)
    assert bodies(first) == ["firing"]
    assert await claim(outbox) == []  # head leased, second event blocked behind it

    await outbox.delivered(first[0].id)
    assert bodies(await claim(outbox)) == ["resolved"]


async def test_a_leased_head_is_reclaimed_only_after_its_lease_expires(outbox: Outbox, clock: FakeClock) -> None:
    """A claimed event is invisible to other claims until lease_seconds have passed on the clock."""
    await outbox.put([ev("k", "x")])
    (claimed,) = await claim(outbox, lease=30)

    clock.advance(29.9)
    assert await claim(outbox, lease=30) == []
    clock.advance(0.1)
    again = await claim(outbox, lease=30)
    assert [c.id for c in again] == [claimed.id]
    assert again[0].attempts == 0  # an expired lease is not a recorded attempt


async def test_retry_later_keeps_the_event_at_the_head_until_it_is_due(
    backend: OutboxBackend, outbox: Outbox, clock: FakeClock
) -> None:
    """After retry_later the event is not due until ``at``, and the next event of its key stays blocked."""
    await outbox.put([ev("k", "firing"), ev("k", "resolved", status="Ok")])
    (claimed,) = await claim(outbox)

    await outbox.retry_later(claimed.id, at=1010.0, code="InternalError", error="boom")
    assert await claim(outbox) == []
    assert await outbox.next_due() == 1010.0

    clock.advance(9.9)
    assert await claim(outbox) == []
    clock.advance(0.1)
    retried = await claim(outbox)
    assert [(c.id, c.body, c.attempts) for c in retried] == [(claimed.id, "firing", 1)]

    stored = backend.events()[0]
    assert (stored["state"], stored["last_code"], stored["last_error"]) == ("pending", "InternalError", "boom")


async def test_dead_parks_the_event_and_unblocks_the_next_event_of_its_key(outbox: Outbox, clock: FakeClock) -> None:
    """A dead-lettered head is listed with its reason, and the key's next event becomes claimable."""
    await outbox.put([ev("k", "rejected"), ev("k", "after", status="Ok")])
    (claimed,) = await claim(outbox)
    clock.advance(5)

    await outbox.dead(claimed.id, "InvalidParameter", "title_rule is too long", "req-123")

    assert bodies(await claim(outbox)) == ["after"]
    (letter,) = await outbox.dead_letters(ALL)
    assert letter["id"] == claimed.id
    assert letter["body"] == "rejected"
    assert letter["alert_key"] == "k"
    assert letter["destination"] == DEST
    assert letter["source"] == "alertmanager"
    assert letter["event_status"] == "Critical"
    assert letter["last_code"] == "InvalidParameter"
    assert letter["last_error"] == "title_rule is too long"
    assert letter["request_id"] == "req-123"
    assert letter["attempts"] == 1
    assert letter["created_at"] == 1000.0
    assert letter["dead_at"] == 1005.0
    assert await outbox.stats() == OutboxStats(pending=1, dead=1, oldest_pending_created_at=1000.0)


async def test_delivered_deletes_the_event(backend: OutboxBackend, outbox: Outbox) -> None:
    """A delivered event is removed from the database and from the pending count."""
    await outbox.put([ev("k", "a"), ev("k", "b", status="Ok")])
    (claimed,) = await claim(outbox)

    await outbox.delivered(claimed.id)

    assert [row["body"] for row in backend.events()] == ["b"]
    assert (await outbox.stats()).pending == 1
    assert await outbox.dead_letters(ALL) == []


async def test_same_alert_key_under_two_destinations_is_ordered_independently(outbox: Outbox) -> None:
    """The per-key FIFO is per (destination, alert_key), and a claim only returns its own destination's events."""
    await outbox.put(
        [
            ev("k", "d1-first", destination="d1"),
            ev("k", "d1-second", destination="d1", status="Ok"),
            ev("k", "d2-first", destination="d2"),
        ]
    )

    assert [(c.destination, c.body) for c in await claim(outbox, destination="d1")] == [("d1", "d1-first")]
    assert [(c.destination, c.body) for c in await claim(outbox, destination="d2")] == [("d2", "d2-first")]
    assert await claim(outbox, destination="elsewhere") == []


async def test_destinations_lists_only_destinations_with_pending_events(outbox: Outbox) -> None:
    """destinations() names each destination with a pending event once; dead or delivered events do not count."""
    assert await outbox.destinations() == []
    await outbox.put([ev("k1", "a", destination="d1"), ev("k2", "b", destination="d1"), ev("k", "c", destination="d2")])
    assert sorted(await outbox.destinations()) == ["d1", "d2"]

    (c,) = await claim(outbox, destination="d2")
    assert sorted(await outbox.destinations()) == ["d1", "d2"]  # leased is still pending
    await outbox.dead(c.id, "InvalidParameter", "bad", None)
    assert await outbox.destinations() == ["d1"]

    for event in await claim(outbox, destination="d1"):
        await outbox.delivered(event.id)
    assert await outbox.destinations() == []


# -- coalescing --------------------------------------------------------------------------------------


async def test_newer_firing_states_supersede_older_ones_but_not_the_ok(backend: OutboxBackend, outbox: Outbox) -> None:
    """F1, F2, F3, Ok of one key: the claim sends F3 (F1 and F2 coalesced and deleted), then the Ok."""
    await outbox.put([ev("k", "f1"), ev("k", "f2", status="Warning"), ev("k", "f3"), ev("k", "ok", status="Ok")])

    result = await outbox.claim(DEST, 10, 30)
    assert bodies(result) == ["f3"]
    assert result.coalesced == 2
    assert result.expired == []
    assert [row["body"] for row in backend.events()] == ["f3", "ok"]
    assert (await outbox.stats()).pending == 2
    assert await outbox.dead_letters(ALL) == []  # coalesced events are gone, not dead

    await outbox.delivered(result.events[0].id)
    result = await outbox.claim(DEST, 10, 30)
    assert (bodies(result), result.coalesced) == (["ok"], 0)


async def test_an_ok_is_never_coalesced(outbox: Outbox) -> None:
    """Ok followed by Ok, or by a firing event, is sent as it is: every Ok goes out."""
    await outbox.put([ev("k", "ok-1", status="Ok"), ev("k", "ok-2", status="Ok"), ev("k", "fire")])

    sent = []
    for _ in range(3):
        result = await outbox.claim(DEST, 10, 30)
        assert result.coalesced == 0
        (event,) = result.events
        sent.append(event.body)
        await outbox.delivered(event.id)
    assert sent == ["ok-1", "ok-2", "fire"]


async def test_firing_ok_firing_keeps_all_three(outbox: Outbox) -> None:
    """A firing event is only superseded by a firing event directly behind it: F, Ok, F are all sent, in order."""
    await outbox.put([ev("k", "f1"), ev("k", "ok", status="Ok"), ev("k", "f2")])

    sent = []
    for _ in range(3):
        result = await outbox.claim(DEST, 10, 30)
        assert result.coalesced == 0
        (event,) = result.events
        sent.append(event.body)
        await outbox.delivered(event.id)
    assert sent == ["f1", "ok", "f2"]


async def test_a_head_in_retry_is_superseded_by_a_newer_firing_state(
    backend: OutboxBackend, outbox: Outbox, clock: FakeClock
) -> None:
    """A firing head that already failed (attempts > 0) is still replaced by a newer firing event once it is due."""
    await outbox.put([ev("k", "old")])
    (old,) = await claim(outbox)
    await outbox.retry_later(old.id, at=1010.0, code="InternalError", error="boom")
    await outbox.put([ev("k", "new")])
    assert await claim(outbox) == []  # the head is backing off; the newer event waits behind it

    clock.advance(10)
    result = await outbox.claim(DEST, 10, 30)

    assert [(c.body, c.attempts) for c in result.events] == [("new", 0)]
    assert result.coalesced == 1
    assert [row["body"] for row in backend.events()] == ["new"]


async def test_a_leased_head_is_not_coalesced(outbox: Outbox) -> None:
    """A firing event being delivered is not deleted under its worker; the newer one waits until it is done."""
    await outbox.put([ev("k", "inflight")])
    (inflight,) = await claim(outbox)
    await outbox.put([ev("k", "newer")])

    result = await outbox.claim(DEST, 10, 30)
    assert (result.events, result.coalesced) == ([], 0)

    await outbox.delivered(inflight.id)
    assert bodies(await claim(outbox)) == ["newer"]


async def test_coalescing_does_not_shrink_a_claim(outbox: Outbox) -> None:
    """Heads removed by coalescing are replaced, so the claim still returns up to ``limit`` events."""
    await outbox.put([ev("k1", "k1-old"), ev("k1", "k1-new"), ev("k2", "k2"), ev("k3", "k3")])

    result = await outbox.claim(DEST, 3, 30)

    assert sorted(bodies(result)) == ["k1-new", "k2", "k3"]
    assert result.coalesced == 1


async def test_a_coalesced_head_hands_its_rank_to_the_event_that_supersedes_it(outbox: Outbox) -> None:
    """The event that replaces a coalesced head is ranked by its own status, within the same claim."""
    await outbox.put([ev("k", "k-critical"), ev("k", "k-info", status="Info"), ev("j", "j-warning", status="Warning")])

    result = await outbox.claim(DEST, 1, 30)
    assert (bodies(result), result.coalesced) == (["j-warning"], 1)  # not k-info, ranked as the Critical it replaced
    assert bodies(await claim(outbox)) == ["k-info"]


async def test_events_queued_behind_an_event_in_flight_are_coalesced_once_it_is_delivered(
    backend: OutboxBackend, outbox: Outbox
) -> None:
    """Firing states that arrive while their key's head is being delivered wait for it; its ack hands the key
    to the oldest, the next claim coalesces it into the newest, and the key's last ack drops its head."""
    await outbox.put([ev("k", "inflight"), ev("j", "other")])
    inflight, other = await claim(outbox)
    await outbox.put([ev("k", "second"), ev("k", "third", status="Warning"), ev("k", "ok", status="Ok")])
    await outbox.delivered(inflight.id)

    result = await outbox.claim(DEST, 10, 30)
    assert (bodies(result), result.coalesced) == (["third"], 1)
    await outbox.delivered(other.id)
    await outbox.delivered(result.events[0].id)
    (ok,) = await claim(outbox)
    assert ok.body == "ok"
    assert [row["body"] for row in backend.events()] == ["ok"]
    assert (await outbox.stats()).pending == 1

    await outbox.delivered(ok.id)
    assert ((await outbox.stats()).pending, await outbox.destinations(), await outbox.next_due()) == (0, [], None)


# -- expiry ------------------------------------------------------------------------------------------


async def test_head_older_than_max_age_becomes_an_expired_dead_letter(
    make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """A head pending longer than max_age is returned as expired, parked with code 'expired', and its key moves on."""
    box = await make_outbox(max_age=60)
    await box.put([ev("k", "stale")])
    clock.advance(30)
    await box.put([ev("k", "ok", status="Ok"), ev("j", "young")])
    clock.advance(30.5)  # stale is 60.5 s old, the others 30.5 s

    result = await box.claim(DEST, 10, 30)

    assert [e.body for e in result.expired] == ["stale"]
    assert sorted(bodies(result)) == ["ok", "young"]
    (letter,) = await box.dead_letters(ALL)
    assert (letter["body"], letter["last_code"], letter["dead_at"]) == ("stale", "expired", 1060.5)
    assert await box.stats() == OutboxStats(pending=2, dead=1, oldest_pending_created_at=1030.0)


async def test_an_event_exactly_max_age_old_is_still_delivered(make_outbox: OutboxFactory, clock: FakeClock) -> None:
    """Expiry needs an age strictly above max_age."""
    box = await make_outbox(max_age=60)
    await box.put([ev("k", "x")])
    clock.advance(60)

    result = await box.claim(DEST, 10, 30)
    assert (bodies(result), result.expired) == (["x"], [])


async def test_every_expired_event_of_a_key_is_parked_in_one_claim(
    make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """When a key's whole backlog is past max_age, each event is expired in turn and nothing is claimed."""
    box = await make_outbox(max_age=60)
    await box.put([ev("k", "ok-1", status="Ok"), ev("k", "ok-2", status="Ok")])
    clock.advance(61)

    result = await box.claim(DEST, 10, 30)

    assert (result.events, [e.body for e in result.expired]) == ([], ["ok-1", "ok-2"])
    assert await box.destinations() == []
    assert (await box.stats()).dead == 2


async def test_no_max_age_means_nothing_expires(outbox: Outbox, clock: FakeClock) -> None:
    """Without max_age an event a year old is still claimed."""
    await outbox.put([ev("k", "ancient")])
    clock.advance(365 * 86400)

    result = await outbox.claim(DEST, 10, 30)
    assert (bodies(result), result.expired) == (["ancient"], [])


async def test_an_expired_dead_letter_reports_the_attempts_actually_made(
    make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """An event that expires after two failed attempts is listed with attempts == 2."""
    box = await make_outbox(max_age=60)
    await box.put([ev("k", "x")])
    for _ in range(2):
        (event,) = await claim(box)
        await box.retry_later(event.id, at=clock.now + 40, code="InternalError", error="boom")
        clock.advance(40)

    result = await box.claim(DEST, 10, 30)

    assert [e.attempts for e in result.expired] == [2]
    (letter,) = await box.dead_letters(ALL)
    assert letter["attempts"] == 2


# -- forgetting idle keys --------------------------------------------------------------------------


async def test_idle_key_states_are_forgotten_but_not_while_the_key_has_something_outstanding(
    make_outbox: OutboxFactory, clock: FakeClock
) -> None:
    """A delivered key, idle past refresh_interval, is forgotten; a pending key, a dead letter's key and a key
    that could still suppress a repeat are kept (and keep suppressing) until they are idle too."""
    box = await make_outbox(refresh_interval=300)
    await box.put([ev("done", "a", digest="d1"), ev("dead", "c", digest="d3")])
    for event in await claim(box):
        if event.alert_key == "done":
            await box.delivered(event.id)
        else:
            await box.dead(event.id, "InvalidParameter", "bad", None)
    clock.advance(300)
    await box.put([ev("recent", "r", digest="d4")])
    (recent,) = await claim(box)
    await box.delivered(recent.id)
    await box.put([ev("pending", "b", digest="d2")])

    assert await box.forget_idle_keys() == 1  # "done"
    assert await box.forget_idle_keys() == 0
    assert await box.put([ev("recent", "r again", digest="d4")]) == [False]  # still suppresses

    (pending,) = await claim(box)
    await box.delivered(pending.id)
    assert await box.purge(ALL) == 1
    clock.advance(300)
    assert await box.forget_idle_keys() == 3  # "pending", "dead", "recent"


async def test_the_sweep_goes_on_where_it_stopped_and_starts_again_at_the_end(
    make_outbox: OutboxFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call looks at one slice of the key states: 12 idle keys in slices of 5 are forgotten in three calls."""
    monkeypatch.setattr(policy, "FORGET_BATCH", 5)
    box = await make_outbox(refresh_interval=10)
    await box.put([ev(f"k{n:02}", f"e{n}", digest=f"d{n}") for n in range(12)])
    for event in await claim(box, limit=20):
        await box.delivered(event.id)
    clock.advance(10)
    await box.put([ev("later", "y", digest="dy")])  # pending: kept
    assert [await box.forget_idle_keys() for _ in range(3)] == [5, 5, 2]
    assert await box.forget_idle_keys() == 0  # a new sweep from the start finds only "later"


# -- dead letters: list, replay, purge ---------------------------------------------------------------


async def park(box: Outbox, code: str = "InvalidParameter") -> Claimed:
    """Claim one event and make it a dead letter with ``code``."""
    (event,) = await claim(box, 1)
    await box.dead(event.id, code, f"{code} happened", None)
    return event


async def test_dead_letters_filters_by_ids_destination_code_and_age(
    backend: OutboxBackend, outbox: Outbox, clock: FakeClock
) -> None:
    """Each DeadLetterFilter criterion narrows the list; combined, all must match; oldest first, up to limit."""
    await outbox.put([ev("a", "a", destination="d1"), ev("b", "b", destination="d1"), ev("c", "c", destination="d2")])
    await outbox.put([ev("p", "still pending", destination="d1")])
    a = await outbox.claim("d1", 1, 30)
    await outbox.dead(a.events[0].id, "InvalidParameter", "bad", None)
    clock.advance(100)
    b = await outbox.claim("d1", 1, 30)
    await outbox.dead(b.events[0].id, "unknown_destination", "gone", None)
    c = await outbox.claim("d2", 1, 30)
    await outbox.dead(c.events[0].id, "InvalidParameter", "bad", None)
    clock.advance(50)

    async def listed(**criteria: Any) -> list[str]:
        return [letter["body"] for letter in await outbox.dead_letters(DeadLetterFilter(**criteria))]

    assert await listed() == ["a", "b", "c"]
    assert await listed(ids=(a.events[0].id, c.events[0].id)) == ["a", "c"]
    assert await listed(destination="d1") == ["a", "b"]
    assert await listed(code="InvalidParameter") == ["a", "c"]
    assert await listed(older_than=100) == ["a"]  # dead 150 s ago; b and c 50 s ago
    assert await listed(older_than=50) == ["a", "b", "c"]
    assert await listed(destination="d1", code="InvalidParameter") == ["a"]
    assert await listed(destination="d2", code="unknown_destination") == []
    assert await listed(limit=2) == ["a", "b"]
    assert await listed(ids=(id_of(backend, "still pending"),)) == []  # pending events are never listed


async def test_replay_puts_a_dead_letter_back_before_newer_events_of_its_key(outbox: Outbox) -> None:
    """Dead F, then a newer pending Ok of the key: replay makes F the head again, so F is sent before the Ok."""
    await outbox.put([ev("k", "fire"), ev("k", "ok", status="Ok")])
    fire = await park(outbox)
    assert (await outbox.stats()).pending == 1

    result = await outbox.replay(DeadLetterFilter(ids=(fire.id,)))

    assert result == ReplayResult(replayed=[fire.id], superseded=[], in_flight=[])
    assert await outbox.stats() == OutboxStats(pending=2, dead=0, oldest_pending_created_at=1000.0)
    assert await outbox.dead_letters(ALL) == []
    (again,) = await claim(outbox)
    assert (again.id, again.body) == (fire.id, "fire")
    await outbox.delivered(again.id)
    assert bodies(await claim(outbox)) == ["ok"]


async def test_replay_keeps_the_attempt_count_and_makes_the_event_due_at_once(
    backend: OutboxBackend, outbox: Outbox, clock: FakeClock
) -> None:
    """A replayed event is due immediately and keeps its history: its attempts count on from where they were."""
    await outbox.put([ev("k", "x")])
    for _ in range(2):
        (event,) = await claim(outbox)
        await outbox.retry_later(event.id, at=clock.now + 10, code="InternalError", error="boom")
        clock.advance(10)
    await park(outbox)
    assert (await outbox.dead_letters(ALL))[0]["attempts"] == 3

    await outbox.replay(ALL)

    (replayed,) = await claim(outbox)
    assert replayed.attempts == 3
    assert backend.events()[0]["dead_at"] is None


async def test_replay_restores_the_order_of_several_dead_letters_of_a_key(outbox: Outbox) -> None:
    """Two dead letters of one key (firing, then its Ok) replayed together go out in their original order."""
    await outbox.put([ev("k", "fire"), ev("k", "ok", status="Ok")])
    await park(outbox)
    await park(outbox)

    result = await outbox.replay(ALL)
    assert len(result.replayed) == 2

    sent = []
    for _ in range(2):
        (event,) = await claim(outbox)
        sent.append(event.body)
        await outbox.delivered(event.id)
    assert sent == ["fire", "ok"]


async def test_replaying_only_the_newer_dead_letter_then_the_older_keeps_the_order(outbox: Outbox) -> None:
    """Replaying a key's dead letters one at a time, newest first, still ends with the oldest as the head."""
    await outbox.put([ev("k", "fire"), ev("k", "ok", status="Ok")])
    fire = await park(outbox)
    ok = await park(outbox)

    await outbox.replay(DeadLetterFilter(ids=(ok.id,)))
    await outbox.replay(DeadLetterFilter(ids=(fire.id,)))

    assert bodies(await claim(outbox)) == ["fire"]


async def test_replay_skips_a_dead_letter_superseded_by_a_delivered_newer_event(outbox: Outbox) -> None:
    """When a newer event of the key was delivered since, replay leaves the old one parked unless forced."""
    await outbox.put([ev("k", "fire"), ev("k", "ok", status="Ok")])
    fire = await park(outbox)
    (ok,) = await claim(outbox)
    await outbox.delivered(ok.id)

    result = await outbox.replay(ALL)

    assert result == ReplayResult(replayed=[], superseded=[fire.id], in_flight=[])
    assert [letter["id"] for letter in await outbox.dead_letters(ALL)] == [fire.id]
    assert await claim(outbox) == []

    forced = await outbox.replay(ALL, force=True)
    assert forced == ReplayResult(replayed=[fire.id], superseded=[], in_flight=[])
    assert bodies(await claim(outbox)) == ["fire"]


async def test_replay_is_not_superseded_by_an_older_delivered_event(outbox: Outbox) -> None:
    """Only a *newer* delivered event supersedes: a dead letter behind a delivered event replays normally."""
    await outbox.put([ev("k", "ok-first", status="Ok"), ev("k", "fire")])
    (first,) = await claim(outbox)
    await outbox.delivered(first.id)
    fire = await park(outbox)

    result = await outbox.replay(ALL)

    assert result.replayed == [fire.id]


async def test_replay_waits_while_a_newer_event_of_the_key_is_in_flight(outbox: Outbox, clock: FakeClock) -> None:
    """A dead letter whose key has a newer event leased right now is reported in_flight and stays parked."""
    await outbox.put([ev("k", "fire"), ev("k", "ok", status="Ok")])
    fire = await park(outbox)
    (ok,) = await claim(outbox, lease=30)

    result = await outbox.replay(ALL)

    assert result == ReplayResult(replayed=[], superseded=[], in_flight=[fire.id])
    assert (await outbox.stats()).dead == 1
    forced = await outbox.replay(ALL, force=True)
    assert forced.in_flight == [fire.id]  # force cannot overtake an event on the wire

    await outbox.delivered(ok.id)
    assert (await outbox.replay(ALL)).superseded == [fire.id]


async def test_replay_after_the_newer_events_lease_expired_is_not_in_flight(outbox: Outbox, clock: FakeClock) -> None:
    """Once the newer event's lease has run out it is no longer on the wire, so the dead letter replays first."""
    await outbox.put([ev("k", "fire"), ev("k", "ok", status="Ok")])
    fire = await park(outbox)
    await claim(outbox, lease=30)
    clock.advance(30)

    assert (await outbox.replay(ALL)).replayed == [fire.id]
    assert bodies(await claim(outbox)) == ["fire"]


async def test_replay_only_touches_matching_dead_letters(outbox: Outbox) -> None:
    """replay with a filter queues the matching dead letters and leaves the others parked."""
    await outbox.put([ev("a", "a"), ev("b", "b")])
    await park(outbox, "InvalidParameter")
    await park(outbox, "unknown_destination")

    result = await outbox.replay(DeadLetterFilter(code="unknown_destination"))

    assert len(result.replayed) == 1
    assert [letter["body"] for letter in await outbox.dead_letters(ALL)] == ["a"]
    assert bodies(await claim(outbox)) == ["b"]
    assert await outbox.stats() == OutboxStats(pending=1, dead=1, oldest_pending_created_at=1000.0)


async def test_purge_deletes_matching_dead_letters_for_good(
    backend: OutboxBackend, outbox: Outbox, clock: FakeClock
) -> None:
    """purge removes dead letters by ids, destination, code or age, returns how many, and never touches pending ones."""
    await outbox.put(
        [
            ev("a", "a", destination="d1"),
            ev("b", "b", destination="d1"),
            ev("c", "c", destination="d2"),
            ev("e", "e", destination="d2"),
        ]
    )
    await outbox.put([ev("p", "pending", destination="d1")])
    a = (await outbox.claim("d1", 1, 30)).events[0]
    await outbox.dead(a.id, "InvalidParameter", "bad", None)
    clock.advance(100)
    for destination, code in (("d1", "unknown_destination"), ("d2", "InvalidParameter"), ("d2", "NoLicense")):
        (event,) = (await outbox.claim(destination, 1, 30)).events
        await outbox.dead(event.id, code, "bad", None)

    assert await outbox.purge(DeadLetterFilter(ids=(id_of(backend, "pending"),))) == 0
    assert await outbox.purge(DeadLetterFilter(older_than=50)) == 1  # a
    assert await outbox.purge(DeadLetterFilter(code="InvalidParameter")) == 1  # c
    assert await outbox.purge(DeadLetterFilter(destination="d1")) == 1  # b
    assert [row["body"] for row in backend.events()] == ["e", "pending"]
    assert await outbox.purge(DeadLetterFilter(ids=(id_of(backend, "e"),))) == 1
    assert await outbox.purge(ALL) == 0
    assert [row["body"] for row in backend.events()] == ["pending"]
    assert await outbox.stats() == OutboxStats(pending=1, dead=0, oldest_pending_created_at=1000.0)


# -- capacity and group commit -----------------------------------------------------------------------


async def test_put_over_max_pending_raises_outbox_full_and_stores_nothing_of_that_request(
    backend: OutboxBackend, clock: FakeClock
) -> None:
    """A request that would exceed max_pending is refused whole, while a smaller concurrent request still fits."""
    box = backend.make(max_pending=5, clock=clock)
    await box.open()
    try:
        await box.put([ev("a", "a1"), ev("b", "b1"), ev("c", "c1")])

        too_big, fits = await asyncio.gather(
            box.put([ev("x", "x1"), ev("y", "y1"), ev("z", "z1")]),
            box.put([ev("d", "d1"), ev("e", "e1")]),
            return_exceptions=True,
        )

        assert isinstance(too_big, OutboxFull)
        assert fits == [True, True]
        assert [row["body"] for row in backend.events()] == ["a1", "b1", "c1", "d1", "e1"]
        assert (await box.stats()).pending == 5
        with pytest.raises(OutboxFull):
            await box.put([ev("f", "f1")])

        (claimed, *_) = await claim(box, 1)
        await box.delivered(claimed.id)
        assert await box.put([ev("f", "f1")]) == [True]  # delivering frees room again
    finally:
        await box.close()


# -- stats and scheduling ---------------------------------------------------------------------------


async def test_stats_count_pending_and_dead_and_report_the_oldest_pending(outbox: Outbox, clock: FakeClock) -> None:
    """stats() counts pending and dead events and reports the creation time of the oldest pending one."""
    assert await outbox.stats() == OutboxStats(pending=0, dead=0, oldest_pending_created_at=None)

    await outbox.put([ev("k1", "old")])
    clock.advance(50)
    await outbox.put([ev("k2", "newer"), ev("k3", "newest")])
    assert await outbox.stats() == OutboxStats(pending=3, dead=0, oldest_pending_created_at=1000.0)

    old, *_ = await claim(outbox)
    await outbox.dead(old.id, "InvalidParameter", "bad", None)
    assert await outbox.stats() == OutboxStats(pending=2, dead=1, oldest_pending_created_at=1050.0)


async def test_next_due_returns_the_earliest_due_head_or_none_when_empty(outbox: Outbox, clock: FakeClock) -> None:
    """next_due() is the earliest time any head can be claimed, ignoring events queued behind a head."""
    assert await outbox.next_due() is None

    await outbox.put([ev("k1", "a"), ev("k2", "b")])
    assert await outbox.next_due() == 1000.0

    a, b = await claim(outbox)
    assert await outbox.next_due() == 1030.0  # both leased

    await outbox.retry_later(a.id, at=1500.0, code="InternalError", error="boom")
    await outbox.retry_later(b.id, at=1300.0, code="InternalError", error="boom")
    await outbox.put([ev("k2", "behind b", status="Ok")])  # due now, but not a head
    assert await outbox.next_due() == 1300.0

    await outbox.dead(b.id, "InvalidParameter", "bad", None)
    assert await outbox.next_due() == 1000.0  # "behind b" is the head of k2 now

    (behind,) = await claim(outbox)
    await outbox.delivered(behind.id)
    await outbox.dead(a.id, "InvalidParameter", "bad", None)
    assert await outbox.next_due() is None
