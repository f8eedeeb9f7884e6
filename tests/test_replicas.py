"""Several bridge processes on one PostgreSQL outbox keep the guarantees of one: the real processes, the real
database, the real emulator.

* Three replicas, one ``emulate`` with a rate limit: 1,000 alerts posted round-robin as firing → resolved, each
  notification also sent to the next replica (as HA Alertmanager peers do), one replica killed with -9 mid-burst
  and restarted. Every acknowledged alert is delivered, per key in order, within the one rate limit (checked on
  the emulator's own request log), the peers' copies are suppressed, nothing gets a 429; the duplicates the kill
  caused are counted and stay within the killed replica's in-flight attempts.
* The database lost while running: not ready, intake 503, delivery resumes when it is back, without a restart.
* The database unreachable at start: one line naming it without its password, exit 74.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from bridge.cli import EXIT_OUTBOX_UNAVAILABLE
from tests.conftest import TEST_KEY, Bridge, Emulator, start_emulator, wait_for, write_config
from tests.support import postgres
from tests.support.procs import LOOPBACK, Proc, free_port, python_module
from tests.support.tcpproxy import TcpProxy

ALERTS = 1000
PER_WEBHOOK = 10
PER_SECOND = 100
WORKERS = 4
#: Each attempt ends within this; a killed replica's leases end 2 × this + 10 s after they were taken.
TIMEOUT = "2s"
REPLICAS = 3


@pytest.fixture
def database() -> Iterator[postgres.Database]:
    with postgres.sync_database() as db:
        yield db


def bridge_config(dsn: str, emulator: Emulator, **delivery: Any) -> dict[str, Any]:
    return {
        "storage": {"dsn": dsn},
        "flashduty": {
            "url": emulator.push_url,
            "integration_key": TEST_KEY,
            "timeout": TIMEOUT,
            "rate_limit": {"per_second": PER_SECOND, "per_minute": 100_000},
        },
        "delivery": {"backoff_initial": "50ms", "backoff_max": "500ms", "workers": WORKERS, **delivery},
        "log_level": "info",
    }


def replica(tmp_path: Path, name: str, config: dict[str, Any]) -> Bridge:
    path = write_config(tmp_path / f"{name}.yaml", config)
    return Bridge(path, free_port(), tmp_path / f"{name}.log")


def webhook(group: int, status: str) -> dict[str, Any]:
    alerts = [
        {
            "status": status,
            "labels": {"alertname": "Replicas", "instance": f"node-{group}-{i}", "severity": "critical"},
            "annotations": {"summary": f"node {group}-{i}"},
            "startsAt": "2026-11-26T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-26T10:05:00Z",
            "fingerprint": f"{group:04x}{i:04x}{0:08x}",
        }
        for i in range(PER_WEBHOOK)
    ]
    return {"version": "4", "status": status, "receiver": "bridge", "groupKey": f"{{}}:{{g{group}}}", "alerts": alerts}


def max_in_window(times: list[float], length: float) -> int:
    """The most of ``times`` (sorted) in any window of ``length`` seconds."""
    best, first = 0, 0
    for last, now in enumerate(times):
        while times[first] <= now - length:
            first += 1
        best = max(best, last - first + 1)
    return best


def test_three_replicas_share_order_suppression_and_the_rate_limit_through_a_kill(
    tmp_path: Path, database: postgres.Database
) -> None:
    emulator = start_emulator(tmp_path, "--per-second", str(PER_SECOND), "--per-minute", "100000")
    bridges = [replica(tmp_path, f"replica-{n}", bridge_config(database.dsn, emulator)) for n in range(REPLICAS)]
    try:
        with ThreadPoolExecutor(max_workers=REPLICAS) as starting:
            list(starting.map(Bridge.start, bridges))  # together: the migration runs once
        acknowledged: dict[str, set[str]] = {"firing": set(), "resolved": set()}
        suppressed = 0
        acked_copies: Counter[tuple[str, str]] = Counter()
        lock = threading.Lock()
        victim = bridges[1]

        def post(bridge: Bridge, body: dict[str, Any]) -> None:
            nonlocal suppressed
            try:
                response = httpx.post(f"{bridge.url}/alertmanager", json=body, timeout=10)
            except httpx.HTTPError:
                return  # the killed replica: its peer's copy is the one acknowledged
            if response.status_code == 200:
                with lock:
                    acked_copies[(body["status"], body["groupKey"])] += 1
                    acknowledged[body["status"]].update(a["fingerprint"] for a in body["alerts"])
                    suppressed += response.json()["data"]["suppressed"]

        groups = ALERTS // PER_WEBHOOK
        with ThreadPoolExecutor(max_workers=4) as senders:
            for status in ("firing", "resolved"):
                for group in range(groups):
                    body = webhook(group, status)
                    first, peer = bridges[group % REPLICAS], bridges[(group + 1) % REPLICAS]
                    # The two Alertmanager peers notify at the same moment, each a different replica.
                    list(senders.map(post, [first, peer], [body, body]))
                    if status == "firing" and group == groups // 2:
                        # Mid-burst, while it holds leases: kill -9, as the OOM killer or a lost node would.
                        wait_for(lambda: victim.metric("flashduty_bridge_delivery_attempts_total") > 0, 30)
                        in_flight_bound = WORKERS
                        assert victim.proc is not None
                        victim.proc.kill9()
                        killed_at = time.monotonic()
                    if status == "firing" and group == groups - 1:
                        victim.start()  # restarted on the same database: it takes part again

        expected = len(acknowledged["firing"]) + len(acknowledged["resolved"])
        assert len(acknowledged["firing"]) == ALERTS and len(acknowledged["resolved"]) == ALERTS

        def delivered_keys() -> dict[str, list[str]]:
            sequences: dict[str, list[str]] = {}
            for event in emulator.events():
                sequences.setdefault(event["alert_key"], []).append(event["body"]["event_status"])
            return sequences

        def all_delivered() -> bool:
            sequences = delivered_keys()
            return len(sequences) == ALERTS and all(seq[-1:] == ["Ok"] for seq in sequences.values())

        wait_for(all_delivered, timeout=120, what=f"{expected} acknowledged events delivered")
        took_over = time.monotonic() - killed_at
        sequences = delivered_keys()

        # Per key: firing then Ok, never the other way round; repeats only from the killed replica's attempts.
        duplicates = 0
        for key, seq in sequences.items():
            collapsed = [s for i, s in enumerate(seq) if i == 0 or s != seq[i - 1]]
            assert collapsed == ["Critical", "Ok"], f"{key}: {seq}"
            duplicates += len(seq) - len(collapsed)
        assert duplicates <= in_flight_bound, f"{duplicates} duplicates, at most {in_flight_bound} attempts in flight"

        # Where both peers' copies were acknowledged, one of them was suppressed (one more notification may have
        # been stored by the victim just before the kill, its peer's copy then suppressed).
        both = sum(1 for copies in acked_copies.values() if copies == 2) * PER_WEBHOOK
        assert both <= suppressed <= both + PER_WEBHOOK, (both, suppressed)

        requests = emulator.requests()
        statuses = Counter(r["status"] for r in requests)
        assert statuses[429] == 0, statuses
        times = sorted(r["received_at"] for r in requests)
        assert max_in_window(times, 1.0) <= PER_SECOND
        print(
            f"replicas: {len(requests)} requests, {duplicates} duplicates after kill -9, {suppressed} peer copies"
            f" suppressed, busiest second {max_in_window(times, 1.0)}/{PER_SECOND}, all delivered"
            f" {took_over:.1f}s after the kill"
        )
    finally:
        for bridge in bridges:
            bridge.stop()
        emulator.proc.stop()


def moved(dsn: str, port: int, password: str | None = None) -> str:
    """``dsn`` pointed at another port of loopback (a proxy, or nothing), optionally with a password."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    auth = f"{user}:{password}" if password else user
    return urlunsplit(parts._replace(netloc=f"{auth}@{LOOPBACK}:{port}"))


def ready(bridge: Bridge) -> int:
    return httpx.get(f"{bridge.url}/-/ready", timeout=5).status_code


def test_a_lost_database_makes_the_replica_unready_and_delivery_resumes_when_it_is_back(
    tmp_path: Path, database: postgres.Database, emulator: Emulator
) -> None:
    target = urlsplit(database.dsn)
    with TcpProxy(target.hostname or LOOPBACK, target.port or 5432) as proxy:
        config = bridge_config(moved(database.dsn, proxy.port, password="pw-SECRET-0d1e"), emulator)
        bridge = replica(tmp_path, "lost", config).start()
        try:
            assert bridge.post("/alertmanager", webhook(0, "firing")).status_code == 200
            wait_for(lambda: len(emulator.events()) == PER_WEBHOOK, what="delivery before the outage")

            proxy.cut()
            cut = time.monotonic()
            wait_for(lambda: ready(bridge) == 503, what="not ready without the database")
            unready_after = time.monotonic() - cut
            reason = httpx.get(f"{bridge.url}/-/ready").json()["reason"]
            answer = bridge.post("/alertmanager", webhook(1, "firing"))
            assert answer.status_code == 503, answer.text  # Alertmanager retries 5xx
            assert "pw-SECRET" not in answer.text + reason

            proxy.restore()
            back = time.monotonic()
            wait_for(lambda: ready(bridge) == 200, timeout=30, what="ready again once the database is back")
            ready_after = time.monotonic() - back
            assert bridge.post("/alertmanager", webhook(1, "firing")).status_code == 200
            wait_for(lambda: len(emulator.events()) == 2 * PER_WEBHOOK, what="delivery after the outage")
            assert bridge.metric("flashduty_bridge_storage_errors_total") > 0
            assert bridge.proc is not None and bridge.proc.popen.poll() is None  # no restart
            assert "pw-SECRET" not in bridge.log()
            print(f"database lost: not ready after {unready_after:.1f}s ({reason}); ready {ready_after:.1f}s after")
        finally:
            bridge.stop()


def test_an_unreachable_database_at_start_is_one_line_without_the_password_and_exit_74(tmp_path: Path) -> None:
    dsn = moved(postgres.server_dsn(), free_port(), password="pw-SECRET-77aa")  # nothing listens there
    config = write_config(tmp_path / "bridge.yaml", {"storage": {"dsn": dsn}})
    proc = Proc(
        python_module("bridge", "serve", "--config", str(config), "--listen", f"{LOOPBACK}:{free_port()}"),
        tmp_path / "bridge.log",
    )
    try:
        code = proc.popen.wait(timeout=30)
    finally:
        proc.stop()
    output = proc.output()
    assert code == EXIT_OUTBOX_UNAVAILABLE, output
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert "cannot be opened" in line and f"postgresql://postgres@{LOOPBACK}:" in line
    assert "pw-SECRET" not in output
