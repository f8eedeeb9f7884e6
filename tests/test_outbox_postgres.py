"""What only the PostgreSQL outbox promises: several outboxes (replicas) on one database agree.

Migrations run once when replicas open together, and a newer schema is refused; per-key order,
suppression and leases hold between two outboxes; the rate limit and a 429 pause are shared;
a commit wakes the other replicas; the DSN's password is never shown. Every test has a schema
of its own on the real server (``tests.support.postgres``); the contract every backend keeps is
in ``test_outbox.py``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client import CollectorRegistry

from bridge import logs
from bridge.config import Config, DeliveryConfig, StorageConfig
from bridge.destinations import Outcome, Reason, Verdict
from bridge.metrics import Metrics
from bridge.outbox import DeadLetterFilter, OpenRefused, OutboxUnusable, Retention, TrailFilter, policy
from bridge.outbox import trail as trail_rules
from bridge.outbox.dispatcher import Dispatcher
from bridge.outbox.postgres import PostgresOutbox, queries
from bridge.outbox.postgres import backend as backend_module
from bridge.outbox.postgres import schema as schema_module
from bridge.outbox.postgres.dsn import display, read_dsn, secrets
from bridge.outbox.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from bridge.passthrough import PassthroughKeys
from tests.support import postgres
from tests.support.clock import FakeClock
from tests.support.outboxes import DEST, claim, ev
from tests.test_trail import event, ok

PASSWORD = "pw-SECRET-9c41"
ALL = DeadLetterFilter()


@pytest.fixture
async def database() -> AsyncIterator[postgres.Database]:
    async with postgres.database() as db:
        yield db


@pytest.fixture
async def replicas(database: postgres.Database) -> AsyncIterator[list[PostgresOutbox]]:
    """Two open outboxes on one database, on one fake clock."""
    clock = FakeClock()
    boxes = [PostgresOutbox(database.dsn, max_pending=1000, refresh_interval=300, clock=clock) for _ in range(2)]
    for box in boxes:
        await box.open()
    yield boxes
    for box in boxes:
        await box.close()


def with_password(dsn: str) -> str:
    """The test DSN with a password (the local server trusts loopback, so it still connects)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{PASSWORD}@{parts.hostname}:{parts.port}"))


async def test_replicas_opening_together_migrate_once(database: postgres.Database) -> None:
    boxes = [PostgresOutbox(database.dsn, max_pending=10) for _ in range(4)]
    await asyncio.gather(*(box.open() for box in boxes))
    try:
        assert database.query("SELECT value FROM outbox_meta WHERE name = 'schema_version'") == [(str(SCHEMA_VERSION),)]
        assert all(box.is_open for box in boxes)
    finally:
        for box in boxes:
            await box.close()


async def test_a_schema_newer_than_the_bridge_is_refused(database: postgres.Database) -> None:
    first = PostgresOutbox(database.dsn, max_pending=10)
    await first.open()
    await first.close()
    database.query("UPDATE outbox_meta SET value = '99' WHERE name = 'schema_version' RETURNING 1")
    with pytest.raises(OutboxUnusable, match="schema 99, newer than this bridge"):
        await PostgresOutbox(database.dsn, max_pending=10).open()


async def test_the_same_alert_at_two_replicas_at_once_is_stored_once(replicas: list[PostgresOutbox]) -> None:
    a, b = replicas
    for n in range(20):
        event = ev(f"k{n}", f"firing {n}", digest=f"d{n}")
        stored = await asyncio.gather(a.put([event]), b.put([event]))
        assert sorted(stored) == [[False], [True]], n


async def test_an_ok_never_overtakes_its_firing_event_taken_by_another_replica(
    replicas: list[PostgresOutbox],
) -> None:
    a, b = replicas
    await a.put([ev("k", "firing")])
    await b.put([ev("k", "ok", status="Ok")])
    assert [c.body for c in await claim(b)] == ["firing"]  # the head, whichever replica stored it
    assert await claim(a) == []  # leased by b: the Ok waits behind it, at every replica
    assert await a.dead_letters(ALL) == []


async def test_a_killed_replicas_lease_is_taken_over_after_it_expires(replicas: list[PostgresOutbox]) -> None:
    a, b = replicas
    clock = a._fixed_clock
    assert isinstance(clock, FakeClock)
    await a.put([ev("k", "firing"), ev("k", "ok", status="Ok")])
    assert [c.body for c in await claim(a, lease=30)] == ["firing"]
    # a dies without a word: b must not touch the key before the lease ends, then takes the same head.
    clock.advance(29)
    assert await claim(b) == []
    clock.advance(2)
    (taken,) = await claim(b)
    assert taken.body == "firing"
    await b.delivered(taken.id)
    assert [c.body for c in await claim(b)] == ["ok"]


async def test_the_rate_limit_is_shared_never_multiplied(replicas: list[PostgresOutbox]) -> None:
    """Two replicas claiming at once get 5 sends per second between them, not 5 each; the rest waits."""
    a, b = replicas
    await a.put([ev(f"k{n}", f"e{n}") for n in range(12)])
    claims = await asyncio.gather(*(box.rate_limits.claim(DEST, 4, 30, 5, 1000) for box in (a, b, a, b)))
    assert sum(len(result.events) for result, _ in claims) == 5
    assert sum(grant.granted for _, grant in claims) == 5
    result, grant = await b.rate_limits.claim(DEST, 4, 30, 5, 1000)
    assert (result.events, grant.granted, grant.headroom["second"]) == ([], 0, 0)
    # The waiting heads are due when the window has room again, not now.
    window = b.rate_limits.windows[0]
    assert result.next_due == grant.next_free and grant.next_free > 1000.0 + window - 0.01


async def test_the_per_minute_limit_is_shared_too(replicas: list[PostgresOutbox]) -> None:
    """5/s and 7/min between two replicas: 5 in the first second, 2 more in the next, then nothing until the
    first sends leave the minute window; then the other replica gets them."""
    a, b = replicas
    clock = a._fixed_clock
    assert isinstance(clock, FakeClock)
    await a.put([ev(f"k{n}", f"e{n}") for n in range(20)])
    first, _ = await a.rate_limits.claim(DEST, 10, 300, 5, 7)
    assert len(first.events) == 5
    clock.advance(1.5)
    second, _ = await b.rate_limits.claim(DEST, 10, 300, 5, 7)
    assert len(second.events) == 2
    clock.advance(1.5)
    held, grant = await a.rate_limits.claim(DEST, 10, 300, 5, 7)
    assert (held.events, grant.granted, grant.headroom["minute"]) == ([], 0, 0)
    assert grant.next_free >= clock.now + 55  # the first sends leave the minute window 60 s after they left
    clock.advance(60)
    later, _ = await b.rate_limits.claim(DEST, 10, 300, 5, 7)
    assert len(later.events) == 5


async def test_events_a_claim_drops_give_their_sends_back(
    database: postgres.Database, replicas: list[PostgresOutbox]
) -> None:
    """A superseded firing state is not sent, so it does not use up the shared limit."""
    a, _ = replicas
    await a.put([ev("k", "firing 1"), ev("k", "firing 2")])
    result, grant = await a.rate_limits.claim(DEST, 2, 30, 5, 1000)
    assert ([c.body for c in result.events], result.coalesced, grant.granted) == (["firing 2"], 1, 1)
    assert database.query("SELECT count(*) FROM outbox_rate_sends") == [(1,)]


async def test_a_429_pause_at_one_replica_holds_the_others(replicas: list[PostgresOutbox]) -> None:
    a, b = replicas
    clock = a._fixed_clock
    assert isinstance(clock, FakeClock)
    await a.put([ev("k", "held")])
    await a.rate_limits.pause(DEST, clock.now + 5)
    result, held = await b.rate_limits.claim(DEST, 3, 30, 100, 1000)
    assert (result.events, held.granted, held.next_free, result.next_due) == ([], 0, clock.now + 5, clock.now + 5)
    clock.advance(5)
    result, _ = await b.rate_limits.claim(DEST, 3, 30, 100, 1000)
    assert [c.body for c in result.events] == ["held"]


async def test_a_commit_wakes_the_other_replicas(replicas: list[PostgresOutbox]) -> None:
    a, b = replicas
    woken = asyncio.Event()
    b.subscribe(woken.set)
    await a.put([ev("k", "new")])
    await asyncio.wait_for(woken.wait(), 5)


async def test_gauges_agree_on_every_replica(replicas: list[PostgresOutbox]) -> None:
    a, b = replicas
    await a.put([ev("k1", "one")])
    await b.put([ev("k2", "two")])
    (first,) = [c for c in await claim(a, limit=1)]
    await a.dead(first.id, "InvalidParameter", "bad", "req-1")
    assert await a.stats() == await b.stats()
    assert (await b.stats()).pending == 1
    assert [letter["body"] for letter in await b.dead_letters(ALL)] == [first.body]  # listed from any replica
    assert await b.purge(ALL) == 1
    assert await a.dead_letters(ALL) == []


async def test_a_dead_letter_is_replayed_from_another_replica_and_delivered_by_either(
    replicas: list[PostgresOutbox],
) -> None:
    """Parked at A, replayed at B (the CLI or console may reach any pod), taken by A again in key order."""
    a, b = replicas
    await a.put([ev("k", "parked")])
    (taken,) = await claim(a)
    await a.dead(taken.id, "InvalidIntegrationKey", "integration_key is not a valid one", "req-1")
    await a.put([ev("k", "resolved behind it", status="Ok")])
    result = await b.replay(DeadLetterFilter(code="InvalidIntegrationKey"))
    assert (result.replayed, result.superseded) == ([taken.id], [])
    assert await a.dead_letters(ALL) == []
    # The replayed event is older than the one queued behind it, so it goes first.
    assert [c.body for c in await claim(a)] == ["parked"]


async def test_time_is_the_databases_whatever_the_process_clock_says(
    database: postgres.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica whose clock runs an hour ahead still stores times on the database's clock."""
    box = PostgresOutbox(database.dsn, max_pending=10)
    real = backend_module.time.time
    monkeypatch.setattr(backend_module.time, "time", lambda: real() + 3600)
    await box.open()
    try:
        await box.put([ev("k", "skewed")])
        ((created,),) = database.query("SELECT created_at FROM outbox_events")
        assert abs(created - real()) < 5
        (event,) = await claim(box)
        assert abs(event.created_at - (real() + 3600)) < 5  # callers see their own clock
        await box.dead(event.id, "InvalidParameter", "bad", None)
        await box.purge(ALL)
        found = await box.trail_event(event.id)  # the trail too: its times and its steps'
        assert found is not None and found.finished_at is not None
        times = [found.created_at, found.finished_at, *(s["at"] for s in found.steps)]
        assert all(abs(at - (real() + 3600)) < 5 for at in times), times
    finally:
        await box.close()


def test_the_dsn_is_shown_without_password_or_query() -> None:
    dsn = f"postgresql://bridge:{PASSWORD}@db.example:5433/bridge?sslmode=require&password={PASSWORD}"
    assert display(dsn) == "postgresql://bridge@db.example:5433/bridge"
    assert PASSWORD in secrets(dsn)


def test_the_dsn_is_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text(f"  postgresql://u:{PASSWORD}@h/db\n")
    assert read_dsn(StorageConfig(dsn_file=path)) == f"postgresql://u:{PASSWORD}@h/db"


async def test_the_password_never_reaches_location_errors_or_logs(
    database: postgres.Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "CONNECT_SECONDS", 0.3)
    box = PostgresOutbox(with_password(database.dsn), max_pending=10)
    assert PASSWORD not in box.location
    await box.open()
    await box.close()
    parts = urlsplit(with_password(database.dsn))
    unreachable = urlunsplit(parts._replace(netloc=f"postgres:{PASSWORD}@127.0.0.1:1"))
    with pytest.raises(OpenRefused) as refused:
        await PostgresOutbox(unreachable, max_pending=10).open()
    assert PASSWORD not in str(refused.value) and "postgresql://postgres@127.0.0.1:1/" in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no chained traceback
    # Should a driver ever log the DSN, the log filter scrubs it.
    record = logging.LogRecord("asyncpg", logging.ERROR, __file__, 1, "connecting to %s", (unreachable,), None)
    assert logs._redactor.filter(record) and PASSWORD not in record.getMessage()
    # And from a traceback, should an exception ever carry it.
    try:
        raise RuntimeError(f"cannot connect to {unreachable}")
    except RuntimeError:
        record = logging.LogRecord("bridge", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert logs._redactor.filter(record)
    assert "cannot connect to" in record.getMessage() and PASSWORD not in record.getMessage()


async def test_puts_commit_synchronously_and_bookkeeping_does_not_wait_for_the_flush(
    database: postgres.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 waits for the WAL flush (synchronous_commit on in the put's transaction); claims and acks do not."""
    seen: dict[str, str] = {}
    insert, claim_rows = queries.insert, queries.claim

    async def spying_insert(conn: queries.Conn, *args: Any, **kwargs: Any) -> Any:
        seen["put"] = await conn.fetchval("SHOW synchronous_commit")
        return await insert(conn, *args, **kwargs)

    async def spying_claim(conn: queries.Conn, *args: Any) -> Any:
        seen["claim"] = await conn.fetchval("SHOW synchronous_commit")
        return await claim_rows(conn, *args)

    monkeypatch.setattr(queries, "insert", spying_insert)
    monkeypatch.setattr(queries, "claim", spying_claim)
    box = PostgresOutbox(database.dsn, max_pending=10)
    await box.open()
    try:
        await box.put([ev("k", "durable")])
        await claim(box)
    finally:
        await box.close()
    assert seen == {"put": "on", "claim": "off"}


async def test_a_passthrough_key_is_forgotten_only_when_no_replica_needs_it(replicas: list[PostgresOutbox]) -> None:
    """Nothing stored, and no replica saved it or stored events for it within the grace period."""
    a, b = replicas
    clock = a._fixed_clock
    assert isinstance(clock, FakeClock)
    await a.save_passthrough_key("passthrough-1", "KEY-1")
    assert not await b.forget_passthrough_key("passthrough-1")  # just saved: a may be about to put
    clock.advance(backend_module.PASSTHROUGH_GRACE + 1)
    await a.put([ev("k", "queued", destination="passthrough-1")])
    assert not await b.forget_passthrough_key("passthrough-1")  # events pending
    (event,) = await claim(a, destination="passthrough-1")
    await a.delivered(event.id)
    assert not await b.forget_passthrough_key("passthrough-1")  # used just now
    clock.advance(backend_module.PASSTHROUGH_GRACE + 1)
    assert await b.forget_passthrough_key("passthrough-1")
    assert await a.passthrough_keys() == {}


async def test_a_passthrough_key_another_replica_took_is_delivered_not_parked(replicas: list[PostgresOutbox]) -> None:
    """A replica that sees events for a destination it has no lane for looks for the key in the shared outbox."""
    a, b = replicas
    clock = a._fixed_clock
    assert isinstance(clock, FakeClock)
    await a.save_passthrough_key("passthrough-2", "KEY-2")
    await a.put([ev("k", "via url", destination="passthrough-2")])
    sent: list[tuple[str, str]] = []

    class Recorded:
        def __init__(self, name: str, key: str) -> None:
            self.name, self.key = name, key

        async def send(self, body: str) -> Outcome:
            sent.append((self.key, body))
            return Outcome(Verdict.OK, Reason.DELIVERED, request_id="r")

    metrics = Metrics(CollectorRegistry())
    dispatcher = Dispatcher(b, {}, metrics, DeliveryConfig(), clock=clock, scan_interval=0.0)
    keys = PassthroughKeys(b, dispatcher, metrics, Config, Recorded)
    dispatcher.adopt = keys.adopt
    dispatcher.start()
    try:
        for _ in range(200):
            if sent and (await b.stats()).pending == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        await dispatcher.stop(timeout=5)
    assert sent == [("KEY-2", "via url")]
    assert await b.dead_letters(ALL) == []


async def test_puts_of_thousands_of_distinct_keys_committed_together_are_stored(database: postgres.Database) -> None:
    """A group transaction locks every key it adds to: many large requests at once (here 6,000 distinct keys in one
    transaction, beyond PostgreSQL's 1,664 target-list entries and near its 32,767 bind parameters) still commit."""
    box = PostgresOutbox(database.dsn, max_pending=10_000)
    await box.open()
    try:
        requests = [[ev(f"k{r}-{n}", f"e{r}-{n}") for n in range(1000)] for r in range(6)]
        stored = await asyncio.gather(*(box.put(events) for events in requests))
        assert stored == [[True] * 1000] * 6
        assert (await box.stats()).pending == 6000
    finally:
        await box.close()


async def test_an_outbox_of_schema_1_is_upgraded_in_place_and_keeps_its_events_order_and_dead_letters(
    database: postgres.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database the previous bridge made (schema 1: no trail) opens at the current schema: pending events are
    delivered in their order, dead letters stay replayable, and from then on the trail is kept."""
    clock = FakeClock()
    monkeypatch.setattr(schema_module, "MIGRATIONS", {1: MIGRATIONS[1]})
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", 1)
    old = PostgresOutbox(database.dsn, max_pending=100, clock=clock)
    await old.open()  # creates schema 1
    await old.close()
    monkeypatch.undo()
    # What a schema-1 bridge left: a key with a firing event (tried once) and its Ok behind it, and a dead letter.
    database.query(
        "INSERT INTO outbox_events (destination, alert_key, source, event_status, body, created_at, attempts)"
        " VALUES ($1, 'k', 'alertmanager', 'Critical', 'firing', 1000, 1), ($1, 'k', 'alertmanager', 'Ok', 'ok',"
        " 1000, 0) RETURNING id",
        DEST,
    )
    database.query(
        "INSERT INTO outbox_events (destination, alert_key, source, event_status, body, created_at, state, attempts,"
        " last_code, last_error, request_id, dead_at)"
        " VALUES ($1, 'bad', 'alertmanager', 'Critical', 'rejected', 1000, 'dead', 1, 'InvalidParameter', 'bad',"
        " 'fd-1', 1000) RETURNING id",
        DEST,
    )
    database.query(
        "INSERT INTO outbox_heads (destination, alert_key, event_id, priority, next_attempt_at)"
        " VALUES ($1, 'k', 1, $2, 1000) RETURNING 1",
        DEST,
        policy.priority("Critical"),
    )
    assert database.query("SELECT value FROM outbox_meta WHERE name = 'schema_version'") == [("1",)]

    box = PostgresOutbox(database.dsn, max_pending=100, clock=clock)
    await box.open()
    try:
        assert database.query("SELECT value FROM outbox_meta WHERE name = 'schema_version'") == [(str(SCHEMA_VERSION),)]
        assert [(e.alert_key, e.outcome, e.attempts) for e in await box.trail(TrailFilter())] == [
            ("bad", "dead", 1),
            ("k", "pending", 0),
            ("k", "pending", 1),
        ]
        (firing,) = await claim(box)
        assert firing.body == "firing"
        await box.delivered(firing.id, ok(clock.now))
        (resolved,) = await claim(box)
        assert resolved.body == "ok"
        assert (await box.replay(ALL)).replayed == [3]
        await box.put([ev("new", "after the upgrade")], request_id="in-9")
        delivered = await box.trail_event(firing.id)
        assert delivered is not None and (delivered.outcome, delivered.steps[-1]["outcome"]) == ("delivered", "ok")
        assert [(e.alert_key, e.inbound_request_id) for e in await box.trail(TrailFilter(alert_key="new"))] == [
            ("new", "in-9")
        ]
    finally:
        await box.close()


async def test_claims_and_counts_read_pending_rows_only_however_long_the_trail(database: postgres.Database) -> None:
    """With thousands of finished events kept, the claim statement and the counts read pending (and dead) rows
    through index lookups (by id, by key, or on the state): their plans never walk the finished events."""
    clock = FakeClock()
    box = PostgresOutbox(database.dsn, max_pending=100_000, clock=clock)
    await box.open()
    try:
        await box.put([event(f"done-{n}", "x") for n in range(5000)])
        while batch := await claim(box, limit=1000):
            for claimed in batch:
                await box.delivered(claimed.id, ok(clock.now))
        await box.put([event(f"pending-{n}", "x") for n in range(20)])
        database.query("ANALYZE outbox_events")
        database.query("ANALYZE outbox_heads")
        plans = []
        for sql, *args in (
            (queries.CLAIM, DEST, clock.now, 10, 30.0, "replica", True, None, None, None, None),
            (queries.STATS,),
            (queries.STATS_BY_DESTINATION,),
        ):
            async with box._connection() as conn:  # the outbox's own session settings
                plans.append(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
        scans = [node for plan in plans for node in _nodes(plan) if node.get("Relation Name") == "outbox_events"]
        # Index lookups bounded by an id, a key or the pending state: never a walk over the finished events.
        assert scans and all(node["Node Type"] in ("Index Scan", "Index Only Scan") for node in scans), scans
        for node in scans:
            bound = node.get("Index Cond", "")
            partial = node["Index Name"] in (
                "outbox_events_pending",
                "outbox_events_pending_by_key",
                "outbox_events_dead",
            )
            keyed = any(cond in bound for cond in ("id =", "alert_key =", "state = 'pending'", "state = 'dead'"))
            assert partial or keyed, node
    finally:
        await box.close()


def _nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    import json

    tree = json.loads(plan) if isinstance(plan, str) else plan
    found: list[dict[str, Any]] = []
    stack = [tree[0]["Plan"]] if isinstance(tree, list) else [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        stack += node.get("Plans", [])
    return found


async def test_replicas_pruning_at_once_share_the_work_and_count_each_event_once(database: postgres.Database) -> None:
    """Every replica prunes every second: at once they never fail, never delete an event twice, and together remove
    exactly the finished events past the retention."""
    clock = FakeClock()
    boxes = [
        PostgresOutbox(
            database.dsn, max_pending=10_000, refresh_interval=300, retention=Retention(max_events=0), clock=clock
        )
        for _ in range(3)
    ]
    for box in boxes:
        await box.open()
    try:
        repeats = 2 * trail_rules.PRUNE_BATCH + 500
        await boxes[0].put([event("k", "x")] * (repeats + 1))  # one stored, the rest suppressed (finished)
        pruned = 0
        while counts := [n for n in await asyncio.gather(*(box.prune_trail() for box in boxes * 2)) if n]:
            assert all(0 < n <= trail_rules.PRUNE_BATCH for n in counts)
            pruned += sum(counts)
        assert pruned == repeats
        assert [e.outcome for e in await boxes[1].trail(TrailFilter())] == ["pending"]
    finally:
        for box in boxes:
            await box.close()
