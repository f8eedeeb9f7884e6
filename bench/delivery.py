"""Delivery benchmark: how fast a backlog drains into a local Flashduty receiver.

The receiver is ``bench/receiver.py`` (``minimal``: answers Flashduty's success JSON and counts,
so the bridge's own CPU per event shows) or, with ``--receiver emulate``, the strict emulator.
Each round starts the receiver with its rate limits lifted and a bridge pointed at it with
its own limits lifted too, fills the outbox with ``events`` events (500-alert webhooks)
while the emulator answers 503 (an outage), then ends the outage and measures the drain:
events/s delivered, bridge CPU µs per event (user + system time of the bridge process,
from /proc), and the bridge's RSS idle, with the backlog, and after the drain.

Targets: each bridge source on SQLite (unless ``--no-sqlite``), and (with a PostgreSQL server,
``BRIDGE_TEST_POSTGRES_DSN``) each one on a fresh schema with 1 and 2 replicas. With two, the backlog is posted to both
at once and both drain it; CPU and RSS are the sum of the replicas. The fill is also an intake
measurement (alerts/s answered 200 and committed, CPU µs per alert); for PostgreSQL, the bridge
reaches the database through a counting proxy, which gives the round trips per alert in and
per event out.

Bounded: every webhook answers before the next is sent, and the drain is measured for at
most ``drain_seconds`` s; a drain cut short is reported as such (delivered < backlog), with
the rate over the window and the RSS at the cut.

Run through ``python -m bench`` (``--only delivery``); ``python -m bench.delivery`` is the same.
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench._proc import BridgeSource, cpu_seconds, log, metric, rss_mib, start_bridge, start_module
from tests.support import postgres
from tests.support.procs import Proc
from tests.support.tcpproxy import TcpProxy

KEY = "bench-key"
BATCH = 500
DELIVERED = "flashduty_bridge_delivery_attempts_total"  # with outcome="ok"
PENDING = "flashduty_bridge_outbox_pending"
GAUGE_WAIT = 10.0  # s


def webhook(start: int, count: int) -> dict[str, Any]:
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "Backlog", "instance": f"node-{i}", "job": "node", "severity": "critical"},
            "annotations": {"summary": f"node-{i} is down"},
            "startsAt": "2026-11-26T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.local/graph",
        }
        for i in range(start, start + count)
    ]
    return {"version": "4", "status": "firing", "receiver": "bench", "groupKey": "{}:{}", "alerts": alerts}


def start_receiver(work: Path, receiver: str) -> tuple[Proc, str]:
    """``minimal`` (bench/receiver.py: answers and counts) or ``emulate`` (the strict emulator)."""
    if receiver == "emulate":
        return start_emulator(work)
    argv = [sys.executable, "-m", "bench.receiver", "--port", "{port}"]
    return start_module(work, f"receiver-{time.monotonic_ns()}", argv, "/-/healthy")


def start_emulator(work: Path) -> tuple[Proc, str]:
    argv = [sys.executable, "-m", "bridge", "emulate", "--listen", "127.0.0.1:{port}"]
    # Quiet: logging every request would make the receiver, not the bridge, the bottleneck.
    argv += ["--per-second", "1000000", "--per-minute", "100000000", "--log-level", "warning"]
    return start_module(work, f"emulator-{time.monotonic_ns()}", argv, "/-/healthy")


@dataclass(frozen=True)
class Target:
    """What one delivery round runs: a bridge source on a backend, with this many replicas."""

    label: str
    source: BridgeSource
    backend: str = "sqlite"  # or "postgresql"
    replicas: int = 1
    receiver: str = "minimal"  # or "emulate"


def targets(
    sources: list[BridgeSource], postgresql: bool, receiver: str = "minimal", sqlite: bool = True
) -> list[Target]:
    """SQLite for every source; with a PostgreSQL server, every source on it with 1 and 2 replicas (labelled
    ``postgresql xN``, or ``<source> postgresql xN`` for several sources, to compare them in one invocation)."""
    found = [Target(source.label, source, receiver=receiver) for source in sources] if sqlite else []
    if postgresql:
        for source in sources:
            prefix = f"{source.label} " if len(sources) > 1 else ""
            found += [Target(f"{prefix}postgresql x{n}", source, "postgresql", n, receiver) for n in (1, 2)]
    return found


def one_round(work: Path, target: Target, events: int, workers: int, drain_seconds: float) -> dict[str, Any]:
    if target.backend == "sqlite":
        storage = {"path": str(work / f"outbox-{time.monotonic_ns()}")}
        return _round(work, target, storage, None, events, workers, drain_seconds)
    with postgres.sync_database() as database:
        dsn = urlsplit(database.dsn)
        # Through a counting proxy: database round trips per event, seen from outside the bridge.
        with TcpProxy(dsn.hostname or "127.0.0.1", dsn.port or 5432) as proxy:
            netloc = f"{dsn.username or 'postgres'}@127.0.0.1:{proxy.port}"
            storage = {"dsn": urlunsplit(dsn._replace(netloc=netloc))}
            return _round(work, target, storage, proxy, events, workers, drain_seconds)


def _round(
    work: Path,
    target: Target,
    storage: dict[str, Any],
    proxy: TcpProxy | None,
    events: int,
    workers: int,
    drain_seconds: float,
) -> dict[str, Any]:
    emulator, emulator_url = start_receiver(work, target.receiver)
    name = f"delivery-{target.label.replace(':', '-').replace(' ', '-')}-{time.monotonic_ns()}"
    config = {
        "storage": {**storage, "max_pending": events * 2},
        "flashduty": {
            "url": f"{emulator_url}/event/push/alert/standard",
            "integration_key": KEY,
            "rate_limit": {"per_second": 1_000_000, "per_minute": 100_000_000},
        },
        "delivery": {
            "workers": workers,
            "backoff_initial": "100ms",
            "backoff_max": "100ms",
            "circuit": {"failures": 1000000},
        },
        "log_level": "warning",
    }
    bridges: list[tuple[Proc, str]] = []
    try:
        for n in range(target.replicas):
            bridges.append(start_bridge(work, f"{name}-{n}", config, target.source))
    except BaseException:
        for proc, _ in bridges:
            proc.stop()
        emulator.stop()
        raise
    urls = [url for _, url in bridges]
    pids = [proc.pid for proc, _ in bridges]
    try:
        time.sleep(0.3)
        result: dict[str, Any] = {
            "target": target.label,
            "backlog": events,
            "rss_idle_mib": sum(rss_mib(pid) for pid in pids),
        }
        outage = {"outage": {"seconds": 3600, "answer": {"status": 503, "code": "InternalError"}}}
        httpx.put(f"{emulator_url}/-/faults", json=outage).raise_for_status()
        t0 = time.monotonic()
        trips0 = proxy.round_trips if proxy else 0
        cpu_in0 = sum(cpu_seconds(pid) for pid in pids)

        def fill(index: int) -> int:
            refused = 0
            with httpx.Client(timeout=120) as client:
                for start in range(index * BATCH, events, BATCH * len(urls)):
                    count = min(BATCH, events - start)
                    if client.post(f"{urls[index]}/alertmanager", json=webhook(start, count)).status_code // 100 != 2:
                        refused += count
            return refused

        with ThreadPoolExecutor(max_workers=len(urls)) as senders:
            refused = sum(senders.map(fill, range(len(urls))))
        posted = time.monotonic() - t0
        result["intake_alerts_per_s"] = (events - refused) / posted
        result["cpu_us_per_alert_in"] = (sum(cpu_seconds(pid) for pid in pids) - cpu_in0) / max(1, events) * 1e6
        result["round_trips_per_alert_in"] = (proxy.round_trips - trips0) / max(1, events) if proxy else float("nan")
        # 200 means committed, so the backlog is complete now; the gauge may lag by its refresh period.
        deadline = time.monotonic() + GAUGE_WAIT
        while metric(urls[0], PENDING) < events - refused and time.monotonic() < deadline:
            time.sleep(0.2)
        result["fill_s"] = time.monotonic() - t0
        result["refused_alerts"] = refused
        result["pending_before_drain"] = metric(urls[0], PENDING)
        result["rss_backlog_mib"] = sum(rss_mib(pid) for pid in pids)
        httpx.delete(f"{emulator_url}/-/faults").raise_for_status()
        cpu0, t0 = sum(cpu_seconds(pid) for pid in pids), time.monotonic()
        trips0 = proxy.round_trips if proxy else 0
        deadline = t0 + drain_seconds
        delivered = 0.0
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                # Count at the receiver: scraping the bridge's /metrics five times a second would
                # add its own CPU to the bridge's per-event figure.
                delivered = float(client.get(f"{emulator_url}/-/stats").json()["events"])
                if delivered >= events - refused:
                    break
                time.sleep(0.1)
        elapsed, cpu = time.monotonic() - t0, sum(cpu_seconds(pid) for pid in pids) - cpu0
        trips = (proxy.round_trips - trips0) if proxy else 0
        result["delivered_per_bridge_metrics"] = sum(metric(url, DELIVERED, outcome="ok") for url in urls)
        result |= {
            "delivered": delivered,
            "drained": delivered >= events - refused,
            "drain_s": elapsed,
            "events_per_s": delivered / elapsed,
            "cpu_us_per_event": cpu / delivered * 1e6 if delivered else float("nan"),
            "round_trips_per_event": trips / delivered if proxy and delivered else float("nan"),
            "rss_after_mib": sum(rss_mib(pid) for pid in pids),
        }
        return result
    finally:
        for proc, _ in bridges:
            proc.stop()
        emulator.stop()


def run_rounds(
    work: Path,
    sources: list[Target],
    rounds: int,
    events: int,
    workers: int = 8,
    drain_seconds: float = 60,
) -> list[dict[str, Any]]:
    """``rounds`` rounds per target, targets interleaved (order flipped each round)."""
    runs = []
    for round_ in range(rounds):
        for source in sources if round_ % 2 == 0 else sources[::-1]:
            result = one_round(work, source, events, workers, drain_seconds)
            result["round"] = round_ + 1
            runs.append(result)
            log(
                f"delivery round {round_ + 1} {source.label}: {result['events_per_s']:7.0f} events/s"
                f"  {result['cpu_us_per_event']:6.0f} µs CPU/event  delivered {result['delivered']:.0f}/{events}"
                f" in {result['drain_s']:.1f} s (filled in {result['fill_s']:.1f} s)  RSS idle"
                f" {result['rss_idle_mib']:.0f}, backlog {result['rss_backlog_mib']:.0f},"
                f" after {result['rss_after_mib']:.0f} MiB"
            )
    return runs


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = (
        "events_per_s",
        "cpu_us_per_event",
        "rss_idle_mib",
        "rss_backlog_mib",
        "rss_after_mib",
        "fill_s",
        "drain_s",
        "intake_alerts_per_s",
        "cpu_us_per_alert_in",
        "round_trips_per_alert_in",
        "round_trips_per_event",
    )
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["target"], []).append(run)
    return {
        target: {
            **{key: statistics.median(run[key] for run in group) for key in keys},
            "rounds": len(group),
            "backlog": group[0]["backlog"],
            "drained_rounds": sum(run["drained"] for run in group),
            "refused_alerts": sum(run["refused_alerts"] for run in group),
            "min_delivered": min(run["delivered"] for run in group),
        }
        for target, group in groups.items()
    }


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["--only", "delivery", *sys.argv[1:]]))
