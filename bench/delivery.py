"""Delivery benchmark: how fast a backlog drains into a local Flashduty (the emulator).

Starts ``emulate`` with its rate limits lifted and a bridge pointed at it with its own
limits lifted too, fills the outbox while the emulator answers 503 (an outage), then
ends the outage and measures the drain: events/s delivered, bridge CPU µs per event
(user + system time of the bridge process, from /proc), and the bridge's RSS idle,
with the backlog, and after the drain. Bounded: ``--events`` events, ``--timeout`` s.

    python -m bench.delivery --events 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.procs import LOOPBACK, Proc, free_port, python_module

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "bench-key"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


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


def one_round(work: Path, events: int, workers: int, timeout: float) -> dict[str, float]:
    emulator_port, bridge_port = free_port(), free_port()
    emulator = Proc(
        python_module(
            "bridge",
            "emulate",
            "--listen",
            f"{LOOPBACK}:{emulator_port}",
            "--per-second",
            "1000000",
            "--per-minute",
            "100000000",
        ),
        work / "emulator.log",
    )
    emulator_url = f"http://{LOOPBACK}:{emulator_port}"
    config = {
        "storage": {"path": str(work / f"outbox-{time.monotonic_ns()}"), "max_pending": events * 2},
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
    (work / "bridge.yaml").write_text(yaml.safe_dump(config))
    bridge = Proc(
        python_module(
            "bridge", "serve", "--config", str(work / "bridge.yaml"), "--listen", f"{LOOPBACK}:{bridge_port}"
        ),
        work / "bridge.log",
    )
    bridge_url = f"http://{LOOPBACK}:{bridge_port}"
    try:
        emulator.wait_http(f"{emulator_url}/-/healthy")
        bridge.wait_http(f"{bridge_url}/-/ready")
        idle = rss_mib(bridge.pid)
        outage = {"outage": {"seconds": 3600, "answer": {"status": 503, "code": "InternalError"}}}
        httpx.put(f"{emulator_url}/-/faults", json=outage).raise_for_status()
        for start in range(0, events, 500):
            httpx.post(f"{bridge_url}/alertmanager", json=webhook(start, min(500, events - start)), timeout=60)
        deadline = time.monotonic() + timeout
        while metric(bridge_url, "flashduty_bridge_outbox_pending") < events and time.monotonic() < deadline:
            time.sleep(0.2)
        backlog_rss = rss_mib(bridge.pid)
        httpx.delete(f"{emulator_url}/-/faults").raise_for_status()
        cpu0, t0 = cpu_seconds(bridge.pid), time.monotonic()
        delivered = 0.0
        while time.monotonic() < deadline:
            delivered = metric(bridge_url, "flashduty_bridge_delivery_attempts_total", outcome="ok")
            if delivered >= events:
                break
            time.sleep(0.1)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(bridge.pid) - cpu0
        return {
            "events_per_s": delivered / elapsed,
            "cpu_us_per_event": cpu / max(delivered, 1) * 1e6,
            "rss_idle_mib": idle,
            "rss_backlog_mib": backlog_rss,
            "rss_after_mib": rss_mib(bridge.pid),
            "delivered": delivered,
        }
    finally:
        bridge.stop()
        emulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        for round_ in range(args.rounds):
            result = one_round(Path(tmp), args.events, args.workers, args.timeout)
            runs.append(result)
            print(
                f"round {round_ + 1}: {result['events_per_s']:7.0f} events/s"
                f"  {result['cpu_us_per_event']:6.0f} µs CPU/event"
                f"  RSS idle {result['rss_idle_mib']:.0f} MiB, backlog {result['rss_backlog_mib']:.0f} MiB,"
                f" after {result['rss_after_mib']:.0f} MiB",
                flush=True,
            )
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    events_s, cpu_us = summary["events_per_s"], summary["cpu_us_per_event"]
    rss = f"RSS {summary['rss_idle_mib']:.0f} MiB idle, {summary['rss_backlog_mib']:.0f} MiB with {args.events} queued"
    print(f"\nmedian: {events_s:.0f} events/s delivered, {cpu_us:.0f} µs of bridge CPU per event, {rss}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("delivery-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({"args": vars(args), "median": summary, "runs": runs}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
