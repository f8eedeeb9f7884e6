"""Which PostgreSQL driver the outbox uses: asyncpg against psycopg 3 (async, with its pool), measured.

    python -m bench.pgdriver [--events 2000] [--rounds 3] [--dsn postgresql://...]

Both drivers run the same put → claim → ack cycle the outbox runs per event, on a schema of
their own in the same database, in one invocation, interleaved (order flipped every round):

* put: one transaction inserting the event and upserting its key's head, committed with
  ``synchronous_commit = on`` (what a 200 waits for);
* claim: one statement leasing due heads (``FOR UPDATE SKIP LOCKED``) and returning the events;
* ack: one statement deleting the event and its head.

Reported, medians over the rounds: events/s through the whole cycle run by ``--concurrency``
tasks on a pool of that many connections, and the client's CPU µs per event (this process's
user + system time: the driver's share of the bridge's CPU). The server's work is the same
for both. Needs ``asyncpg``, ``psycopg`` and ``psycopg-pool`` installed (the latter two are not
dependencies of the bridge: ``pip install "psycopg[binary]" psycopg-pool`` to rerun this).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_DSN = os.environ.get("BRIDGE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

SCHEMA = """
CREATE TABLE events (id bigserial PRIMARY KEY, alert_key text NOT NULL, body text NOT NULL,
                     created_at double precision NOT NULL);
CREATE TABLE heads (alert_key text PRIMARY KEY, event_id bigint NOT NULL, leased_until timestamptz);
"""
PUT = [
    "INSERT INTO events (alert_key, body, created_at) VALUES ($1, $2, extract(epoch FROM now()))",
    "INSERT INTO heads (alert_key, event_id) VALUES ($1, currval('events_id_seq')) ON CONFLICT DO NOTHING",
]
CLAIM = (
    "WITH c AS (SELECT alert_key FROM heads WHERE leased_until IS NULL ORDER BY event_id LIMIT $1"
    " FOR UPDATE SKIP LOCKED)"
    " UPDATE heads h SET leased_until = now() + interval '5 minutes' FROM c WHERE h.alert_key = c.alert_key"
    " RETURNING h.event_id, h.alert_key, (SELECT body FROM events WHERE id = h.event_id)"
)
ACK = "WITH d AS (DELETE FROM events WHERE id = $1 RETURNING alert_key) DELETE FROM heads WHERE event_id = $1"

Cycle = Callable[[int], Awaitable[None]]


def psycopg_sql(sql: str) -> str:
    """``$n`` placeholders as psycopg's ``%s`` (each used in order here, ``$1`` twice in ACK)."""
    return re.sub(r"\$\d+", "%s", sql)


async def run_asyncpg(dsn: str, schema: str, events: int, concurrency: int) -> dict[str, float]:
    import asyncpg

    pool = await asyncpg.create_pool(
        dsn,
        min_size=concurrency,
        max_size=concurrency,
        server_settings={"search_path": schema, "synchronous_commit": "on"},
    )

    async def cycle(n: int) -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(PUT[0], f"k{n}", "x" * 600)
                await conn.execute(PUT[1], f"k{n}")
            rows = await conn.fetch(CLAIM, 1)
            for row in rows:
                await conn.execute(ACK, row[0])

    try:
        return await drive(cycle, events, concurrency)
    finally:
        await pool.close()


async def run_psycopg(dsn: str, schema: str, events: int, concurrency: int) -> dict[str, float]:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        dsn,
        min_size=concurrency,
        max_size=concurrency,
        open=False,
        kwargs={"options": f"-c search_path={schema} -c synchronous_commit=on", "autocommit": True},
    )
    await pool.open(wait=True)
    put0, put1, claim, ack = psycopg_sql(PUT[0]), psycopg_sql(PUT[1]), psycopg_sql(CLAIM), psycopg_sql(ACK)

    async def cycle(n: int) -> None:
        async with pool.connection() as conn:
            async with conn.transaction():
                await conn.execute(put0, (f"k{n}", "x" * 600))
                await conn.execute(put1, (f"k{n}",))
            cursor = await conn.execute(claim, (1,))
            for row in await cursor.fetchall():
                await conn.execute(ack, (row[0], row[0]))

    try:
        return await drive(cycle, events, concurrency)
    finally:
        await pool.close()


async def drive(cycle: Cycle, events: int, concurrency: int) -> dict[str, float]:
    counter = iter(range(events))

    async def worker() -> None:
        for n in counter:
            await cycle(n)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"events_per_s": events / elapsed, "cpu_us_per_event": cpu / events * 1e6}


async def with_schema(dsn: str, run: Callable[[str], Awaitable[dict[str, float]]]) -> dict[str, float]:
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}; {SCHEMA}")
        return await run(schema)
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def main_async(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    drivers: dict[str, Any] = {"asyncpg": run_asyncpg, "psycopg": run_psycopg}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in drivers}
    names = list(drivers)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            result = await with_schema(
                args.dsn, lambda schema, name=name: drivers[name](args.dsn, schema, args.events, args.concurrency)
            )
            results[name].append(result)
            print(
                f"round {round_ + 1} {name}: {result['events_per_s']:.0f} events/s,"
                f" {result['cpu_us_per_event']:.0f} µs CPU/event",
                file=sys.stderr,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pgdriver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    print(f"put → claim → ack, {args.events} events × {args.rounds} rounds, {args.concurrency} connections (median)")
    print(f"{'driver':10} {'events/s':>9} {'CPU µs/event':>13}")
    for name, runs in results.items():
        rate = statistics.median(r["events_per_s"] for r in runs)
        cpu = statistics.median(r["cpu_us_per_event"] for r in runs)
        print(f"{name:10} {rate:9.0f} {cpu:13.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
