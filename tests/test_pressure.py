"""Delivery under pressure, through the real processes: storms, rate limits, outages, dead letters.

The emulator enforces Flashduty's per-key limits (scaled down where a test needs to
finish quickly) and plays outages; the bridge is configured to match.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ADMIN_TOKEN, TEST_KEY, Bridge, Emulator, start_emulator, wait_for
from tests.support.procs import free_port
from tests.test_app import alert, webhook
from tests.test_delivery import sequence_per_key

MakeBridge = Callable[..., Bridge]


def storm_alert(i: int, status: str = "firing") -> dict[str, Any]:
    return alert(
        {"alertname": "Storm", "instance": f"node-{i:03d}", "severity": "critical"},
        {"summary": f"node-{i:03d} unreachable"},
        status=status,
    )


def test_storm_of_5000_alerts_stays_under_the_rate_limit_and_loses_nothing(
    tmp_path: Path, make_bridge: MakeBridge
) -> None:
    """500 alerts re-sent 10 times, 100 resolving midway: no 429, no loss, order kept, repeats suppressed, Oks first."""
    per_second = 30
    emulator = start_emulator(tmp_path, "--per-second", str(per_second), "--per-minute", "2000")
    try:
        bridge = make_bridge(
            emulator,
            flashduty={"rate_limit": {"per_second": per_second, "per_minute": 2000}},
            delivery={"workers": 8, "refresh_interval": "10m"},
        )
        received = 0

        def send_round(resolved: range) -> None:
            nonlocal received
            for start in range(0, 500, 50):
                alerts = [storm_alert(i, "resolved" if i in resolved else "firing") for i in range(start, start + 50)]
                response = bridge.post("/alertmanager", webhook(*alerts))
                assert response.status_code == 200, response.text
                received += len(alerts)

        for _ in range(5):
            send_round(range(0))
        # The first keys' firing events go out first; once they are out, resolve them.
        first_keys = {f"alertmanager:{storm_alert(i)['fingerprint']}" for i in range(100)}
        wait_for(
            lambda: first_keys <= {b["alert_key"] for b in emulator.bodies(TEST_KEY)}, timeout=30, what="first 100"
        )
        for _ in range(5):
            send_round(range(100))
        assert received == 5000

        bodies = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) >= 600 and b, timeout=50, what="600")
        wait_for(lambda: bridge.metric("flashduty_bridge_outbox_pending") == 0, what="empty outbox")
        bodies = emulator.bodies(TEST_KEY)
        statuses = [r["status"] for r in emulator.requests()]
        print(f"\nstorm: {received} alerts received, {len(statuses)} requests upstream, {len(bodies)} events accepted")

        assert 429 not in statuses, Counter(statuses)
        assert len(bodies) == 600  # 500 firing + 100 Ok: every repeat suppressed
        per_key = sequence_per_key(bodies)
        assert len(per_key) == 500
        for key, sequence in per_key.items():
            assert sequence == (["Critical", "Ok"] if key in first_keys else ["Critical"]), (key, sequence)
        assert bridge.metric("flashduty_bridge_events_suppressed_total", source="alertmanager") == 5000 - 600
        # Resolutions drain before the firing backlog that was still queued when they arrived.
        arrivals = [b["event_status"] for b in bodies]
        last_ok = max(i for i, status in enumerate(arrivals) if status == "Ok")
        assert last_ok < len(arrivals) - 100, f"last Ok arrived at {last_ok} of {len(arrivals)}"
        assert bridge.metric("flashduty_bridge_rate_limited_total") == 0
    finally:
        emulator.proc.stop()


def test_outage_with_dropped_connections_and_kill_9_delivers_everything_in_order(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """Connections cut mid-response, then 503s, with SIGKILL in the middle: all events arrive, per key in order."""
    httpx.put(
        f"{emulator.url}/-/faults",
        json={
            "script": [{"drop": True}] * 5,
            "outage": {"seconds": 4, "answer": {"status": 503, "code": "InternalError"}},
        },
    ).raise_for_status()
    bridge = make_bridge(emulator, delivery={"circuit": {"failures": 3, "cooldown": "200ms", "max_cooldown": "1s"}})
    sent: dict[str, list[str]] = {}
    for status in ("firing", "resolved", "firing"):
        alerts = [alert({"alertname": "Outage", "instance": f"db-{i}"}, status=status) for i in range(4)]
        assert bridge.post("/alertmanager", webhook(*alerts)).status_code == 200
        for item in alerts:
            sent.setdefault(f"alertmanager:{item['fingerprint']}", []).append(
                "Ok" if status == "resolved" else "Warning"
            )
    wait_for(lambda: bridge.metric("flashduty_bridge_delivery_attempts_total", code="network") >= 2, what="drops")
    assert bridge.proc is not None
    bridge.proc.kill9()
    bridge.start()
    bodies = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) >= 12 and b, timeout=30, what="12 events")
    assert sequence_per_key(bodies) == sent
    assert bridge.metric("flashduty_bridge_dead_lettered_total") == 0  # a counter: never stale


def test_circuit_opens_during_an_outage_and_closes_after_it(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """Repeated 503s open the circuit (probing instead of hammering); readiness stays 200 and reports it.

    The outage starts once the bridge is up and ends only after the test has seen the circuit open and
    probe: a timed outage could be over before the bridge had even started.
    """
    bridge = make_bridge(
        emulator,
        delivery={
            "workers": 8,
            "backoff_initial": "20ms",
            "backoff_max": "50ms",
            "circuit": {"failures": 3, "cooldown": "500ms", "max_cooldown": "500ms"},
        },
    )
    httpx.put(
        f"{emulator.url}/-/faults",
        json={"outage": {"seconds": 600, "answer": {"status": 503, "code": "InternalError"}}},
    ).raise_for_status()
    alerts = [alert({"alertname": "Down", "instance": f"n{i}"}) for i in range(20)]
    assert bridge.post("/alertmanager", webhook(*alerts)).status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_circuit_open", destination="default") == 1, what="open circuit")
    ready = httpx.get(f"{bridge.url}/-/ready")
    assert ready.status_code == 200
    assert ready.json()["circuits"]["default"] in ("open", "half_open")
    # While open, only probes go out: wait for two of them after the circuit opened.
    opened_with = len(emulator.requests())
    wait_for(lambda: len(emulator.requests()) >= opened_with + 2, what="two probes")
    failed = sum(1 for r in emulator.requests() if r["status"] == 503)
    httpx.delete(f"{emulator.url}/-/faults").raise_for_status()  # the outage ends

    wait_for(lambda: len(emulator.bodies(TEST_KEY)) == 20, timeout=30, what="delivery after the outage")
    wait_for(lambda: bridge.metric("flashduty_bridge_circuit_open", destination="default") == 0, what="closed")
    # Two probes take at least two cool-downs (1 s): without the breaker, 20 events retrying every 20-50 ms
    # would have failed several hundred times by then; with it, the attempts in flight when it opened (about
    # one per worker) and a probe per cool-down.
    assert failed <= 30, failed


def test_a_wrong_integration_key_parks_events_until_the_key_is_fixed_and_they_are_replayed(
    tmp_path: Path, make_bridge: MakeBridge
) -> None:
    """Flashduty's answer to a wrong key (400 InvalidParameter "integration_key is not a valid one") parks every
    event as InvalidIntegrationKey with one ERROR naming the destination; fix the key, reload, replay: delivered."""
    emulator = start_emulator(tmp_path, "--keys", TEST_KEY)  # only the right key is known
    wrong = "wrong-key-SECRET-0d1e"
    try:
        bridge = make_bridge(emulator, key=wrong, delivery={"workers": 1})
        alerts = [alert({"alertname": "WrongKey", "instance": f"i{i}"}) for i in range(3)]
        assert bridge.post("/alertmanager", webhook(*alerts)).status_code == 200
        wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 3, what="three dead letters")

        answers = [(r["status"], r["code"], r["message"]) for r in emulator.requests()]
        assert answers == [(400, "InvalidParameter", "integration_key is not a valid one")] * 3  # as Flashduty
        letters = bridge.dead_letters(code="InvalidIntegrationKey")
        assert len(letters) == 3 and bridge.dead_letters(code="InvalidParameter") == []
        assert bridge.metric("flashduty_bridge_dead_lettered_total", code="InvalidIntegrationKey") == 3
        assert (
            bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="give_up", code="InvalidIntegrationKey")
            == 3
        )
        errors = [line for line in bridge.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1, errors
        assert "destination default" in errors[0] and "InvalidIntegrationKey" in errors[0]

        config = yaml.safe_load(bridge.config_path.read_text())
        config["flashduty"]["integration_key"] = TEST_KEY
        bridge.config_path.write_text(yaml.safe_dump(config))
        assert httpx.post(f"{bridge.url}/-/reload").status_code == 200
        argv = [sys.executable, "-m", "bridge", "deadletter", "replay", "--url", bridge.url]
        replay = subprocess.run(
            [*argv, "--code", "InvalidIntegrationKey"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"},
        )
        assert replay.returncode == 0, replay.stderr
        assert sorted(json.loads(replay.stdout)["replayed"]) == sorted(letter["id"] for letter in letters)
        bodies = wait_for(lambda: (b := emulator.bodies(TEST_KEY)) and len(b) == 3 and b, what="the replayed events")
        assert {b["alert_key"] for b in bodies} == {f"alertmanager:{a['fingerprint']}" for a in alerts}
        wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 0, what="no dead letters left")
        assert wrong not in bridge.log()
    finally:
        emulator.proc.stop()


def test_unauthorized_parks_events_without_retries_and_replay_delivers_them(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """401 and NoLicense answers become dead letters at once; after the fix, `deadletter replay` sends them in order."""
    emulator.fault(
        {"status": 401, "code": "Unauthorized", "message": "integration key revoked"},
        {"status": 400, "code": "NoLicense", "message": "licence expired"},
    )
    bridge = make_bridge(emulator, delivery={"workers": 1})
    first, second = alert({"alertname": "Auth", "instance": "a"}), alert({"alertname": "Auth", "instance": "b"})
    assert bridge.post("/alertmanager", webhook(first, second)).status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 2, what="two dead letters")
    assert [r["status"] for r in emulator.requests()] == [401, 400]  # no retries
    letters = bridge.dead_letters()
    assert [letter["last_code"] for letter in letters] == ["Unauthorized", "NoLicense"]
    assert bridge.dead_letters(code="NoLicense")[0]["last_error"] == "licence expired"

    # The operator fixes the key, then replays with the CLI against the running bridge.
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "deadletter", "replay", "--url", bridge.url, "--code", "Unauthorized"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert '"replayed": [' in result.stdout
    bodies = wait_for(lambda: emulator.bodies(TEST_KEY), what="the replayed event")
    assert [b["alert_key"] for b in bodies] == [f"alertmanager:{first['fingerprint']}"]
    replay_all = bridge.admin("POST", "/dead-letters/replay", json={})
    assert replay_all.json()["data"]["replayed"] == [letters[1]["id"]]
    wait_for(lambda: len(emulator.bodies(TEST_KEY)) == 2, what="both delivered")
    assert bridge.metric("flashduty_bridge_dead_letters_replayed_total") == 2
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 0, what="no dead letters left")


def test_replay_never_sends_a_firing_event_after_a_newer_resolution(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """A dead-lettered firing event whose alert has since resolved stays parked unless forced."""
    emulator.fault({"status": 400, "code": "InvalidParameter", "message": "rejected once"})
    bridge = make_bridge(emulator)
    firing = alert({"alertname": "Stale", "instance": "x"})
    assert bridge.post("/alertmanager", webhook(firing)).status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 1, what="dead letter")
    resolved = {**firing, "status": "resolved", "endsAt": "2026-11-26T10:05:00Z"}
    assert bridge.post("/alertmanager", webhook(resolved)).status_code == 200
    wait_for(lambda: emulator.bodies(TEST_KEY), what="the Ok")
    replay = bridge.admin("POST", "/dead-letters/replay", json={}).json()["data"]
    assert replay["replayed"] == [] and len(replay["superseded"]) == 1
    assert [b["event_status"] for b in emulator.bodies(TEST_KEY)] == ["Ok"]


def test_admin_api_needs_a_token_and_purge_needs_a_filter(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """Wrong or missing tokens get 401, a disabled API 403; purge without a filter is refused, with all it works."""
    emulator.fault({"status": 400, "code": "InvalidParameter"}, {"status": 400, "code": "InvalidParameter"})
    bridge = make_bridge(emulator)
    assert bridge.admin("GET", "/dead-letters", token="wrong").status_code == 401
    assert httpx.get(f"{bridge.url}/api/v1/dead-letters").status_code == 401
    assert (
        bridge.post(
            "/alertmanager", webhook(alert({"alertname": "P", "i": "1"}), alert({"alertname": "P"}))
        ).status_code
        == 200
    )
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 2, what="two dead letters")
    one = bridge.dead_letters()[0]["id"]
    assert bridge.admin("GET", f"/dead-letters/{one}").json()["data"]["id"] == one
    assert bridge.admin("GET", "/dead-letters/999999").status_code == 404
    refused = bridge.admin("POST", "/dead-letters/purge", json={})
    assert refused.status_code == 400 and "all: true" in refused.json()["error"]["message"]
    assert bridge.admin("POST", "/dead-letters/purge", json={"bogus": 1}).status_code == 400
    assert bridge.admin("POST", "/dead-letters/purge", json={"ids": [one]}).json()["data"]["purged"] == 1
    assert bridge.admin("POST", "/dead-letters/purge", json={"all": True}).json()["data"]["purged"] == 1
    assert bridge.dead_letters() == []
    disabled = make_bridge(emulator, admin={"token": ""})
    assert disabled.admin("GET", "/dead-letters").status_code == 403


def test_events_past_the_retry_horizon_become_expired_dead_letters(tmp_path: Path, make_bridge: MakeBridge) -> None:
    """With Flashduty unreachable beyond retry_horizon, events are parked as 'expired' and stay replayable."""
    bridge = make_bridge("http://127.0.0.1:9/event/push/alert/standard", delivery={"retry_horizon": "1s"})
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "Old"}))).status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 1, what="expiry")
    (letter,) = bridge.dead_letters()
    assert letter["last_code"] == "expired"
    assert bridge.metric("flashduty_bridge_dead_lettered_total", code="expired") == 1


def test_deadletter_cli_with_config_talks_to_the_running_bridge_and_reads_the_outbox_when_stopped(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """`deadletter ... --config` uses the running bridge's admin API (its listen and admin.token from the config)
    and, once the bridge is stopped, its outbox directly: the same answers either way."""
    emulator.fault({"status": 400, "code": "InvalidParameter", "message": "nope"})
    bridge = make_bridge(emulator, start=False)
    config = yaml.safe_load(bridge.config_path.read_text())
    # The admin token comes from the environment through ${...}, as in config/example.yaml.
    config.update(listen=f"127.0.0.1:{bridge.port}", admin={"token": "${BRIDGE_ADMIN_TOKEN}"})
    bridge.config_path.write_text(yaml.safe_dump(config))
    bridge.env["BRIDGE_ADMIN_TOKEN"] = ADMIN_TOKEN
    bridge.start()
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "Cli"}))).status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 1, what="dead letter")

    def deadletter(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "bridge", "deadletter", *args, "--config", str(bridge.config_path)]
        env = {"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"}
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

    running = deadletter("list", "--code", "InvalidParameter")
    assert running.returncode == 0, running.stderr
    (letter,) = json.loads(running.stdout)["dead_letters"]
    assert letter["last_code"] == "InvalidParameter"
    assert bridge.admin("GET", "/dead-letters").json()["data"]["dead_letters"] == [letter]  # it was the API
    bridge.stop()
    stopped = deadletter("list", "--code", "InvalidParameter")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["dead_letters"] == [letter]
    assert TEST_KEY not in running.stdout + running.stderr + stopped.stdout + stopped.stderr


def test_deadletter_cli_with_config_says_what_to_do_when_the_running_bridge_cannot_be_reached(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """The outbox is in use but nothing answers at the config's listen (started with --listen): one clear line."""
    bridge = make_bridge(emulator)  # the file has no listen: the default 0.0.0.0:9095 is not where it runs
    config = yaml.safe_load(bridge.config_path.read_text())
    config["listen"] = f"127.0.0.1:{free_port()}"
    bridge.config_path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "bridge", "deadletter", "list", "--config", str(bridge.config_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "in use by a running bridge" in result.stderr and "--url" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
