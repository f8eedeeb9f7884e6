"""Trail retention benchmark: do RSS and disk stay flat over a long run with the default ``storage.history``?

    python -m bench.retention                  # 200,000 events (about 5 minutes)
    python -m bench.retention --events 20000   # smoke run
    python -m bench.retention --backend postgresql --events 100000 --max-events 20000

Starts ``emulate`` (limits lifted) and a bridge with the default retention (finished events kept
24 h, at most 100,000 events back), then sends ``--events`` events in 500-alert Alertmanager
webhooks, paced by delivery (the next webhook waits until fewer than ``--pending`` are queued),
over a fixed set of alert keys whose status alternates (firing, resolved), every fourth webhook a
repeat of the one before (suppressed, and recorded in the trail). Every ``--every`` events it
samples the bridge's RSS, the outbox directory's size on disk (database and WAL), and how many
events the trail holds. Prints a table; the JSON goes to ``bench/results/``.

Flat means: once the trail reaches ``max_events``, the rows stop growing, and RSS and disk level
off (SQLite reuses the pages pruning frees; the WAL is checkpointed every 5,000 changes).

``--backend postgresql`` runs the bridge on a fresh schema of the tests' server (``BRIDGE_TEST_POSTGRES_DSN``)
instead; "disk" is then ``pg_total_relation_size`` of ``outbox_events`` (table, indexes and TOAST): flat
means vacuum lets pruned and updated rows' space be reused. A server with autovacuum off (as the tests'
may be) shows the growth without it; ``--vacuum-every N`` then runs ``VACUUM outbox_events`` every N events
sent, standing in for autovacuum. ``--max-events`` sets ``storage.history.max_events``
(a small one reaches the steady state sooner).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._proc import REPO, RESULTS, BridgeSource, log, metric, rss_mib, start_bridge, start_module
from bridge.outbox.trail import DEFAULT_MAX_EVENTS
from tests.support import postgres

BATCH = 500
KEYS = 20_000  # distinct alert keys: per-key state is bounded too, as in a real fleet
PENDING = "flashduty_bridge_outbox_pending"


def webhook(cycle: int, first: int) -> dict[str, Any]:
    status = "firing" if cycle % 2 == 0 else "resolved"
    alerts = [
        {
            "status": status,
            "labels": {"alertname": "Retention", "instance": f"node-{i}", "job": "node", "severity": "warning"},
            "annotations": {"summary": f"node-{i} is {status}"},
            "startsAt": "2026-11-26T10:00:00Z",
            "endsAt": "2026-11-26T10:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.local/graph",
        }
        for i in range(first, first + BATCH)
    ]
    return {"version": "4", "status": status, "receiver": "bench", "groupKey": "{}:{}", "alerts": alerts}


def disk_mib(directory: Path) -> float:
    return sum(path.stat().st_size for path in directory.iterdir() if path.is_file()) / 2**20


def trail_rows(database: Path) -> tuple[int, int]:
    """(events in the trail, finished ones), read through a read-only connection."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        total, finished = db.execute("SELECT COUNT(*), COUNT(finished_at) FROM events").fetchone()
        return int(total), int(finished)
    finally:
        db.close()


class Storage:
    """Where the bridge under test keeps its outbox, and how big it is."""

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def size_mib(self) -> float:
        raise NotImplementedError

    def rows(self) -> tuple[int, int]:
        """(events in the trail, finished ones)."""
        raise NotImplementedError

    def vacuum(self) -> None:
        """What autovacuum would do (PostgreSQL); nothing for SQLite, which reuses freed pages itself."""


class SqliteStorage(Storage):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def config(self) -> dict[str, Any]:
        return {"path": str(self.directory)}

    def size_mib(self) -> float:
        return disk_mib(self.directory)

    def rows(self) -> tuple[int, int]:
        return trail_rows(self.directory / "outbox.sqlite3")


class PostgresStorage(Storage):
    def __init__(self, database: postgres.Database) -> None:
        self.database = database

    def config(self) -> dict[str, Any]:
        return {"dsn": self.database.dsn}

    def size_mib(self) -> float:
        ((size,),) = self.database.query("SELECT pg_total_relation_size('outbox_events')")
        return float(size) / 2**20

    def rows(self) -> tuple[int, int]:
        # By state, not finished_at: a bridge from before the trail (--bridge-src) has no such column.
        ((total, finished),) = self.database.query(
            "SELECT count(*), count(*) FILTER (WHERE state NOT IN ('pending', 'dead')) FROM outbox_events"
        )
        return int(total), int(finished)

    def vacuum(self) -> None:
        self.database.query("VACUUM outbox_events")


def run(
    work: Path,
    storage: Storage,
    events: int,
    every: int,
    pending_cap: int,
    max_events: int,
    vacuum_every: int = 0,
    source: Path = REPO,
) -> dict[str, Any]:
    emulator, emulator_url = start_module(
        work,
        "emulator",
        [
            sys.executable,
            "-m",
            "bridge",
            "emulate",
            "--listen",
            "127.0.0.1:{port}",
            "--per-second",
            "1000000",
            "--per-minute",
            "100000000",
            "--log-level",
            "warning",
        ],
        "/-/healthy",
    )
    config = {
        "storage": {**storage.config(), "history": {"max_events": max_events}},
        "flashduty": {
            "url": f"{emulator_url}/event/push/alert/standard",
            "integration_key": "bench-key",
            "rate_limit": {"per_second": 1_000_000, "per_minute": 100_000_000},
        },
        "log_level": "warning",
    }
    bridge, url = start_bridge(work, "bridge", config, BridgeSource("bridge", source))
    samples: list[dict[str, Any]] = []
    sent = suppressed_sent = 0
    t0 = time.monotonic()
    try:
        with httpx.Client(timeout=120) as client:
            batch = 0
            while sent < events:
                repeat = batch % 4 == 3
                index = batch - 1 if repeat else batch
                cycle, first = divmod(index * BATCH, KEYS)
                answer = client.post(f"{url}/alertmanager", json=webhook(cycle, first))
                answer.raise_for_status()
                suppressed_sent += answer.json()["data"]["suppressed"]
                sent += BATCH
                batch += 1
                while metric(url, PENDING) > pending_cap:
                    time.sleep(0.05)
                if vacuum_every and sent % vacuum_every == 0:
                    storage.vacuum()
                if sent % every == 0:
                    rows, finished = storage.rows()
                    sample = {
                        "events": sent,
                        "seconds": round(time.monotonic() - t0, 1),
                        "rss_mib": round(rss_mib(bridge.pid), 1),
                        "disk_mib": round(storage.size_mib(), 1),
                        "trail_rows": rows,
                        "finished_rows": finished,
                        "pending": metric(url, PENDING),
                        "suppressed_so_far": suppressed_sent,
                    }
                    samples.append(sample)
                    log(json.dumps(sample))
    finally:
        bridge.stop()
        emulator.stop()
    backend = type(storage).__name__ + (f", VACUUM every {vacuum_every:,} events" if vacuum_every else "")
    return {"events": events, "max_events": max_events, "backend": backend, "samples": samples}


def render(report: dict[str, Any]) -> str:
    header = f"{'events sent':>11}  {'s':>6}  {'RSS MiB':>8}  {'disk MiB':>8}  {'trail rows':>10}  {'suppressed':>10}"
    lines = [
        f"Trail retention ({report['backend']}): {report['events']:,} events, storage.history max_events"
        f" {report['max_events']:,}, max_age 24h; delivery-paced",
        header,
        "-" * len(header),
    ]
    for s in report["samples"]:
        lines.append(
            f"{s['events']:>11,}  {s['seconds']:>6.0f}  {s['rss_mib']:>8.1f}  {s['disk_mib']:>8.1f}"
            f"  {s['trail_rows']:>10,}  {s['suppressed_so_far']:>10,}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retention", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=10_000, help="sample every N events (a multiple of 500)")
    parser.add_argument("--pending", type=int, default=5_000, help="most events queued before the next webhook")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--max-events", type=int, default=DEFAULT_MAX_EVENTS, help="storage.history.max_events")
    parser.add_argument("--bridge-src", type=Path, default=REPO, help="checkout whose bridge package runs")
    parser.add_argument("--vacuum-every", type=int, default=0, help="PostgreSQL: VACUUM every N events sent")
    args = parser.parse_args(argv)
    if args.every % BATCH or args.events % BATCH:
        parser.error(f"--events and --every must be multiples of {BATCH}")
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        if args.backend == "sqlite":
            report = run(
                Path(tmp), SqliteStorage(Path(tmp) / "outbox"), args.events, args.every, args.pending, args.max_events
            )
        else:
            with postgres.sync_database() as database:
                storage = PostgresStorage(database)
                report = run(
                    Path(tmp),
                    storage,
                    args.events,
                    args.every,
                    args.pending,
                    args.max_events,
                    args.vacuum_every,
                    args.bridge_src.resolve(),
                )
    text = render(report)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("retention-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({**report, "table": text}, indent=2))
    print(text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
