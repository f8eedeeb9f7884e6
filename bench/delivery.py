"""Delivery benchmark: how fast a backlog drains into a local Flashduty (the emulator).

Each round starts ``emulate`` with its rate limits lifted and a bridge pointed at it with
its own limits lifted too, fills the outbox with ``events`` events (500-alert webhooks)
while the emulator answers 503 (an outage), then ends the outage and measures the drain:
events/s delivered, bridge CPU µs per event (user + system time of the bridge process,
from /proc), and the bridge's RSS idle, with the backlog, and after the drain.

Bounded: every webhook answers before the next is sent, and the drain is measured for at
most ``drain_seconds`` s; a drain cut short is reported as such (delivered < backlog), with
the rate over the window and the RSS at the cut.

Run through ``python -m bench`` (``--only delivery``); ``python -m bench.delivery`` is the same.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench._proc import BridgeSource, cpu_seconds, log, metric, rss_mib, start_bridge, start_module
from tests.support.procs import Proc

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


def start_emulator(work: Path) -> tuple[Proc, str]:
    argv = [sys.executable, "-m", "bridge", "emulate", "--listen", "127.0.0.1:{port}"]
    # Quiet: logging every request would make the receiver, not the bridge, the bottleneck.
    argv += ["--per-second", "1000000", "--per-minute", "100000000", "--log-level", "warning"]
    return start_module(work, f"emulator-{time.monotonic_ns()}", argv, "/-/healthy")


def one_round(work: Path, source: BridgeSource, events: int, workers: int, drain_seconds: float) -> dict[str, Any]:
    emulator, emulator_url = start_emulator(work)
    name = f"delivery-{source.label.replace(':', '-')}-{time.monotonic_ns()}"
    config = {
        "storage": {"path": str(work / f"outbox-{name}"), "max_pending": events * 2},
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
    try:
        bridge, bridge_url = start_bridge(work, name, config, source)
    except BaseException:
        emulator.stop()
        raise
    try:
        time.sleep(0.3)
        result: dict[str, Any] = {"target": source.label, "backlog": events, "rss_idle_mib": rss_mib(bridge.pid)}
        outage = {"outage": {"seconds": 3600, "answer": {"status": 503, "code": "InternalError"}}}
        httpx.put(f"{emulator_url}/-/faults", json=outage).raise_for_status()
        t0 = time.monotonic()
        refused = 0
        with httpx.Client(timeout=120) as client:
            for start in range(0, events, BATCH):
                count = min(BATCH, events - start)
                if client.post(f"{bridge_url}/alertmanager", json=webhook(start, count)).status_code // 100 != 2:
                    refused += count
        # 200 means committed, so the backlog is complete now; the gauge may lag by its refresh period.
        deadline = time.monotonic() + GAUGE_WAIT
        while metric(bridge_url, PENDING) < events - refused and time.monotonic() < deadline:
            time.sleep(0.2)
        result["fill_s"] = time.monotonic() - t0
        result["refused_alerts"] = refused
        result["pending_before_drain"] = metric(bridge_url, PENDING)
        result["rss_backlog_mib"] = rss_mib(bridge.pid)
        httpx.delete(f"{emulator_url}/-/faults").raise_for_status()
        cpu0, t0 = cpu_seconds(bridge.pid), time.monotonic()
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
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(bridge.pid) - cpu0
        result["delivered_per_bridge_metrics"] = metric(bridge_url, DELIVERED, outcome="ok")
        result |= {
            "delivered": delivered,
            "drained": delivered >= events - refused,
            "drain_s": elapsed,
            "events_per_s": delivered / elapsed,
            "cpu_us_per_event": cpu / delivered * 1e6 if delivered else float("nan"),
            "rss_after_mib": rss_mib(bridge.pid),
        }
        return result
    finally:
        bridge.stop()
        emulator.stop()


def run_rounds(
    work: Path,
    sources: list[BridgeSource],
    rounds: int,
    events: int,
    workers: int = 8,
    drain_seconds: float = 60,
) -> list[dict[str, Any]]:
    """``rounds`` rounds per bridge source, sources interleaved (order flipped each round)."""
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
    keys = ("events_per_s", "cpu_us_per_event", "rss_idle_mib", "rss_backlog_mib", "rss_after_mib", "fill_s", "drain_s")
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
