"""Every sender through the real bridge into the strict emulator: Grafana, the standard API,
template sources, inbound authentication, and the render / test-templates tools."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ADMIN_TOKEN, TEST_KEY, Bridge, Emulator, payload, wait_for
from tests.test_delivery import sequence_per_key

MakeBridge = Callable[..., Bridge]


def delivered(emulator: Emulator, count: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        bodies = emulator.bodies(TEST_KEY)
        return bodies if len(bodies) >= count else None

    return list(wait_for(enough, what=f"{count} events"))


# -- Grafana ---------------------------------------------------------------------------------


def test_every_grafana_fixture_maps_to_one_event_per_alert(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """Unified fixtures (firing, no-data, resolved, mixed, test) arrive contract-clean, keyed by fingerprint."""
    bridge = make_bridge(emulator)
    expected: dict[str, str] = {}
    for name in ("grafana-firing", "grafana-nodata", "grafana-resolved", "grafana-mixed", "grafana-test-notification"):
        body = payload(f"{name}.json")
        response = bridge.post("/grafana", body)
        assert response.status_code == 200, response.text
        for item in body["alerts"]:
            expected[f"grafana:{item['fingerprint']}"] = item["status"]
    events = {event["alert_key"]: event for event in delivered(emulator, len(expected))}
    assert set(events) == set(expected)
    for key, status in expected.items():
        assert (events[key]["event_status"] == "Ok") == (status == "resolved"), key

    nodata = events["grafana:c50ae7bba42b3626"]
    rule = payload("grafana-nodata.json")["alerts"][0]["labels"]["rulename"]
    assert nodata["event_status"] == "Critical"
    assert nodata["title_rule"].startswith(f"{rule}: no data")
    test = events["grafana:57c6d9296de2ad39"]
    assert test["title_rule"].startswith("Test notification:")
    assert test["labels"]["test_notification"] == "true"
    assert test["event_status"] == "Info"
    firing = events["grafana:3201e9e1f14b433c"]
    item = payload("grafana-firing.json")["alerts"][0]
    assert firing["labels"]["dashboard_url"] == item["dashboardURL"]
    assert f"Dashboard: {item['dashboardURL']}" in firing["description"]
    assert "Values:" in firing["description"]


def test_legacy_grafana_states_map_and_paused_is_counted_not_forwarded(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """alerting and no_data fire, ok resolves under the same key, paused is accepted but not forwarded."""
    bridge = make_bridge(emulator)
    legacy = {**payload("grafana-legacy.json"), "message": "Disk usage above 90%", "title": "[Alerting] Disk"}
    for state in ("alerting", "no_data", "ok"):
        assert bridge.post("/grafana", {**legacy, "state": state}).status_code == 200
    paused = bridge.post("/grafana", {**legacy, "state": "paused"})
    assert paused.status_code == 200 and paused.json()["data"]["not_forwarded"] == "paused"
    events = delivered(emulator, 3)
    assert [e["event_status"] for e in events] == ["Warning", "Critical", "Ok"]
    assert len({e["alert_key"] for e in events}) == 1
    assert events[0]["images"][0]["src"] == legacy["imageUrl"]
    assert bridge.metric("flashduty_bridge_alerts_not_forwarded_total", source="grafana", reason="paused") == 1


def test_grafana_hmac_signature_is_verified_on_the_raw_body(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """A correct HMAC-SHA256 over "ts:body" passes; a wrong secret, a tampered body or a stale timestamp get 401."""
    secret = "grafana-SECRET-hmac"
    bridge = make_bridge(
        emulator,
        grafana={"auth": {"method": "hmac", "secret": secret, "timestamp_header": "X-Grafana-Alerting-Timestamp"}},
    )
    raw = json.dumps(payload("grafana-firing.json")).encode()

    def signed(body: bytes, ts: int, key: str = secret) -> dict[str, str]:
        digest = hmac.new(key.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
        return {"X-Grafana-Alerting-Signature": digest, "X-Grafana-Alerting-Timestamp": str(ts)}

    now = int(time.time())
    assert bridge.post("/grafana", content=raw, headers=signed(raw, now)).status_code == 200
    for headers, body in (
        (signed(raw, now, "wrong"), raw),
        (signed(raw, now), raw.replace(b"TEST", b"EVIL")),
        (signed(raw, now - 3600), raw),
        ({}, raw),
    ):
        refused = bridge.post("/grafana", content=body, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "Unauthorized"
    assert bridge.metric("flashduty_bridge_auth_failures_total", source="grafana") == 4
    assert bridge.metric("flashduty_bridge_auth_failures_total", reason="stale timestamp") == 1
    assert secret not in bridge.log()
    assert len(delivered(emulator, 1)) == 1


def test_alertmanager_bearer_token_is_required_when_configured(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """With auth: bearer, Alertmanager's http_config.authorization passes and anything else gets 401."""
    bridge = make_bridge(emulator, alertmanager={"auth": {"method": "bearer", "token": "am-SECRET-token"}})
    body = payload("alertmanager-0.25-firing.json")
    assert bridge.post("/alertmanager", body).status_code == 401
    assert bridge.post("/alertmanager", body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert bridge.post("/alertmanager", body, headers={"Authorization": "Bearer am-SECRET-token"}).status_code == 200


# -- the standard API --------------------------------------------------------------------------


PUSH = "/event/push/alert/standard"
JSON = {"Content-Type": "application/json"}


def test_standard_api_buffers_events_and_answers_like_flashduty(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """A valid event is echoed with its alert_key and delivered; a missing key is generated and returned."""
    bridge = make_bridge(emulator)
    event = {
        "title_rule": "[TPL]${resource} down",
        "event_status": "Critical",
        "alert_key": "db-1:disk",
        "labels": {"resource": "db-1"},
        "description": "disk full",
    }
    answer = bridge.post(PUSH, event, headers=JSON)
    assert answer.status_code == 200
    assert answer.json()["data"] == {"alert_key": "db-1:disk"}
    generated = bridge.post(PUSH, {"title_rule": "no key", "event_status": "Info"}, headers=JSON).json()["data"][
        "alert_key"
    ]
    assert len(generated) == 22
    bridge.post(PUSH, {"title_rule": "recovered", "event_status": "Ok", "alert_key": generated}, headers=JSON)
    events = delivered(emulator, 3)  # keys deliver concurrently: compare per key, not across keys
    first = next(e for e in events if e["alert_key"] == "db-1:disk")
    assert first["title_rule"] == "[TPL]${resource} down"  # the sender's own rule passes through
    assert first["labels"] == {"resource": "db-1"}
    assert [e["event_status"] for e in events if e["alert_key"] == generated] == ["Info", "Ok"]


def test_standard_api_rejects_exactly_as_flashduty(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """The bridge's answers for bad standard events equal the emulator's (same code, message and status)."""
    bridge = make_bridge(emulator)
    bad_bodies: list[Any] = [
        {"title_rule": "x", "event_status": "Ok"},
        {"title_rule": "x", "event_status": "critical"},
        {"event_status": "Info"},
        {"title_rule": "x", "event_status": "Info", "labels": {"bad.key": "v"}},
        [1, 2],
    ]
    for body in bad_bodies:
        ours = bridge.post(PUSH, body, headers=JSON)
        theirs = httpx.post(
            f"{emulator.push_url}?integration_key=k",
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        assert ours.status_code == theirs.status_code == 400, (body, ours.text)
        assert ours.json()["error"] == theirs.json()["error"], body
    assert emulator.bodies(TEST_KEY) == []


# -- template sources ------------------------------------------------------------------------

UPTIME = {
    "alerts": "payload.checks",
    "title": "{{ alert.name }} is {{ alert.state }}",
    "description": "{{ alert.message }}",
    "event_status": "{{ alert.state }}",
    "status_map": {"down": "Critical", "degraded": "Warning", "up": "Ok"},
    "alert_key": "{{ alert.id }}",
    "labels": {"check": "{{ alert.name }}", "region": "{{ payload.region }}", "broken": "{{ alert.nope.x + 1 }}"},
}


def checks(*items: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "region": "eu",
        "checks": [{"id": i, "name": n, "state": s, "message": f"{n} {s} {{{{ 7*7 }}}}"} for i, n, s in items],
    }


def test_template_source_maps_each_item_and_resolves_under_the_same_key(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """One event per list item; down then up share a key; payload text is never rendered; a failing field is flagged."""
    bridge = make_bridge(emulator, sources={"uptime": UPTIME})
    first = bridge.post("/webhook/uptime", checks(("c1", "api", "down"), ("c2", "web", "degraded")))
    assert first.status_code == 200, first.text
    assert bridge.post("/webhook/uptime", checks(("c1", "api", "up"))).status_code == 200
    events = delivered(emulator, 3)
    assert sequence_per_key(events) == {"uptime:c1": ["Critical", "Ok"], "uptime:c2": ["Warning"]}
    events = [e for e in events if e["alert_key"] == "uptime:c1"]  # keys deliver concurrently
    assert events[0]["title_rule"] == "api is down"
    assert events[0]["description"].startswith("api down {{ 7*7 }}")  # data, not a template
    assert events[0]["labels"]["region"] == "eu"
    assert events[0]["labels"]["template_error"] == "labels.broken"
    assert "Raw payload:" in events[0]["description"]
    assert bridge.metric("flashduty_bridge_template_errors_total", source="uptime", field="labels.broken") == 3


def test_large_real_payloads_pass_where_the_alerts_output_limit_refused_them(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """A 71 KB Sentry event_alert and a 1,500-check list (the issue's 400s), and a 74 KB Uptime Kuma report.

    The shipped sources take them; the `alerts` expression is a value, not 64 KiB of JSON text, and
    text fields are cut at their own limits, so nothing is refused and no template fails; nor on the
    64 KB message that made every Uptime Kuma template run out of time.
    """
    root = Path(__file__).resolve().parents[1]
    shipped = {}
    for name in ("sentry", "uptime-kuma"):
        shipped.update(yaml.safe_load((root / "config" / "sources" / f"{name}.yaml").read_text())["sources"])
    bridge = make_bridge(emulator, sources={**shipped, "uptime": UPTIME})
    senders = root / "tests" / "fixtures" / "senders"
    for source, fixture, size in (
        ("sentry", "sentry-event-alert-large.json", 70_000),
        ("uptime_kuma", "uptime-kuma-mqtt-report-down.json", 74_000),
    ):
        raw = json.dumps(json.loads((senders / fixture).read_text()), separators=(",", ":"), ensure_ascii=False)
        assert len(raw.encode()) > size
        answer = bridge.post(f"/webhook/{source}", content=raw.encode())
        assert answer.status_code == 200 and answer.json()["data"]["events"] == 1, answer.text
    # The message that made every Uptime Kuma template run out of time (0.8 s of CPU): now an "other" notification.
    hostile = {"heartbeat": None, "monitor": None, "msg": ("[x][y] a certificate b " * 2800)[:64000]}
    assert bridge.post("/webhook/uptime_kuma", hostile).status_code == 200
    events = delivered(emulator, 3)
    by_key = {event["alert_key"]: event for event in events}
    assert by_key[f"uptime_kuma:message:{hashlib.md5(hostile['msg'].encode()).hexdigest()}"]["title_rule"].startswith(
        "Uptime Kuma: [x][y] a certificate b"
    )
    assert by_key["sentry:4218258981"]["title_rule"].startswith("Checkout errors: ConnectionError: ")
    kuma = by_key["uptime_kuma:12"]
    assert kuma["title_rule"].startswith("Plant 3 sensors is DOWN: Message Mismatch - Topic: plant-3/health")
    assert len(kuma["description"]) == 2048  # cut to Flashduty's limit, and counted
    assert not [event for event in events if "template_error" in event.get("labels", {})]
    assert bridge.metric("flashduty_bridge_truncations_total", field="description") >= 1
    many = checks(*[(f"c{i:04d}", f"check-{i:04d}", "down") for i in range(1500)])
    assert len(json.dumps(many)) > 64 * 1024
    answer = bridge.post("/webhook/uptime", many)  # 200: all 1,500 events committed (delivery takes 15 s)
    assert answer.status_code == 200 and answer.json()["data"]["events"] == 1500, answer.text[:300]
    assert bridge.metric("flashduty_bridge_events_total", source="uptime") == 1500
    assert bridge.metric("flashduty_bridge_template_errors_total", source="uptime", field="labels.broken") == 1500
    assert bridge.metric("flashduty_bridge_template_errors_total", source="sentry") == 0
    assert bridge.metric("flashduty_bridge_template_errors_total", source="uptime_kuma") == 0


def test_sandbox_escapes_in_templates_fail_cleanly_and_the_bridge_keeps_serving(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """Escape attempts render nothing dangerous: the event goes out with a fallback and later requests work."""
    escapes = [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ payload.__class__.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ lipsum.__globals__.os.popen('id').read() }}",
        "{% for i in range(10**9) %}x{% endfor %}",
        "{{ 'x' * 10**9 }}",
        "{{ '{0.__class__}'.format(payload) }}",
    ]
    sources = {
        f"esc{i}": {**UPTIME, "alerts": None, "title": text, "event_status": "down", "alert_key": "k", "labels": {}}
        for i, text in enumerate(escapes)
    }
    for source in sources.values():
        source.pop("alerts")
    bridge = make_bridge(emulator, sources=sources)
    for name in sources:
        response = bridge.post(f"/webhook/{name}", {"x": 1})
        assert response.status_code == 200, (name, response.text)
    events = delivered(emulator, len(escapes))
    for event in events:
        text = json.dumps(event)
        # Either the sandbox refused (fallback title, flagged) or the escape rendered as nothing.
        assert event["title_rule"].endswith(" alert"), event
        assert "uid=" not in text and "<class" not in text and "function" not in text
    flagged = [e for e in events if e.get("labels", {}).get("template_error") == "title"]
    assert len(flagged) >= 4, events  # __class__, lipsum, huge range, huge string: refused outright
    assert httpx.get(f"{bridge.url}/-/ready").status_code == 200


def test_template_that_does_not_compile_fails_check_config_with_source_and_line(tmp_path: Path) -> None:
    """A syntax error in a template stops check-config, naming the source, the field and the line."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sources": {"uptime": {**UPTIME, "title": "ok\n{{ alert.name "}}}))
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "sources.uptime.title" in result.stderr and "title:2" in result.stderr, result.stderr


def test_render_endpoint_and_cli_show_events_without_sending(
    tmp_path: Path, emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """POST /-/render/{source} and `flashduty-bridge render` print the events; nothing reaches the emulator."""
    bridge = make_bridge(emulator, sources={"uptime": UPTIME})
    body = checks(("c9", "db", "down"))
    shown = httpx.post(f"{bridge.url}/-/render/uptime", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert shown.status_code == 200, shown.text
    (entry,) = shown.json()["data"]["events"]
    assert entry["destination"] == "default" and entry["event"]["alert_key"] == "uptime:c9"
    assert httpx.post(f"{bridge.url}/-/render/uptime", json=body).status_code == 401
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(json.dumps(body))
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "render",
            "--config",
            str(bridge.config_path),
            "--source",
            "uptime",
            str(payload_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["events"][0]["event"]["title_rule"] == "db is down"
    # Had a preview queued its event, the same payload sent for real would repeat it and be suppressed; and it
    # would reach Flashduty first (per-key order). Neither: the real one is new, and alone.
    sent = bridge.post("/webhook/uptime", body)
    assert sent.json()["data"]["suppressed"] == 0 and sent.json()["data"]["events"] == 1, sent.text
    delivered = wait_for(lambda: emulator.bodies(TEST_KEY), what="the real delivery")
    assert [b["alert_key"] for b in delivered] == ["uptime:c9"]
    assert bridge.metric("flashduty_bridge_events_total") == 1


def test_test_templates_passes_good_expectations_and_prints_a_diff_for_bad_ones(tmp_path: Path) -> None:
    """test-templates exits 0 when every expectation holds, 1 with a readable diff when one does not."""
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump({"sources": {"uptime": UPTIME}}))
    tests = {
        "config": "bridge.yaml",
        "tests": [
            {
                "name": "down",
                "source": "uptime",
                "payload": checks(("c1", "api", "down")),
                "expect": [{"event_status": "Critical", "alert_key": "uptime:c1", "labels": {"check": "api"}}],
            },
        ],
    }
    good = tmp_path / "good.test.yaml"
    good.write_text(yaml.safe_dump(tests))
    run = [sys.executable, "-m", "bridge", "test-templates"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 passed, 0 failed" in ok.stdout
    assert ok.stderr == ""  # the failing `broken` label is expected here: not noise on stderr
    broken = copy.deepcopy(tests)
    broken["tests"][0]["expect"][0]["event_status"] = "Info"
    bad = tmp_path / "bad.test.yaml"
    bad.write_text(yaml.safe_dump(broken))
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert "events[0].event_status: expected 'Info', got 'Critical'" in failed.stdout
    # A failing test shows its template errors (the fallbacks) next to the diff.
    assert "  - template error: labels.broken" in failed.stdout, failed.stdout
    assert failed.stderr == ""


def test_shipped_template_sources_pass_their_template_tests() -> None:
    """config/sources/*.yaml pass check-config, and tests/templates/*.test.yaml all pass against them."""
    root = Path(__file__).resolve().parents[1]
    configs = sorted((root / "config" / "sources").glob("*.yaml"))
    assert len(configs) >= 2
    for config in configs:
        check = subprocess.run(
            [sys.executable, "-m", "bridge", "check-config", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, (config, check.stderr)
    files = sorted(str(path) for path in (root / "tests" / "templates").glob("*.test.yaml"))
    run = subprocess.run(
        [sys.executable, "-m", "bridge", "test-templates", *files], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 failed" in run.stdout and "FAIL" not in run.stdout
    assert run.stderr == ""  # all passing: nothing to say on stderr
