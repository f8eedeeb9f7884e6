"""The real bridge process over HTTP, delivering into the strict emulator.

Every event the emulator stores passed its strict contract checks (limits in
characters, label naming, 50 labels, Ok with alert_key, no unknown fields), so
"it arrived" already means "it was contract-clean".
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import httpx

from bridge.sources.alertmanager import fingerprint
from tests.conftest import TEST_KEY, Bridge, Emulator, payload, wait_for

MakeBridge = Callable[..., Bridge]


def webhook(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    """A minimal Alertmanager v4 webhook around ``alerts``."""
    return {
        "receiver": "bridge",
        "status": status,
        "alerts": list(alerts),
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
    }


def alert(labels: dict[str, str], annotations: dict[str, str] | None = None, status: str = "firing") -> dict[str, Any]:
    return {
        "status": status,
        "labels": labels,
        "annotations": annotations or {},
        "startsAt": "2026-11-26T10:00:00.123456789+01:00",
        "endsAt": "2026-11-26T10:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph?g0.expr=up",
        "fingerprint": fingerprint(labels),
    }


def delivered(emulator: Emulator, count: int) -> list[dict[str, Any]]:
    """Wait until the emulator accepted ``count`` events; return their bodies in arrival order."""

    def enough() -> list[dict[str, Any]] | None:
        bodies = emulator.bodies(TEST_KEY)
        return bodies if len(bodies) >= count else None

    return list(wait_for(enough, what=f"{count} events"))


def test_real_fixtures_arrive_as_one_contract_clean_event_per_alert(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """Each alert of each real payload becomes exactly one accepted event with its fingerprint key."""
    bridge = make_bridge(emulator)
    names = [
        "alertmanager-firing-grouped.json",
        "alertmanager-0.25-firing.json",
        "alertmanager-0.25-resolved.json",
        "alertmanager-resolved.json",
    ]
    expected = []
    for name in names:
        body = payload(name)
        response = bridge.post("/alertmanager", body)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["accepted"] == len(body["alerts"])
        expected += [(f"alertmanager:{a['fingerprint']}", a["status"]) for a in body["alerts"]]
    bodies = delivered(emulator, len(expected))
    assert len(bodies) == len(expected)
    got = sorted((b["alert_key"], "resolved" if b["event_status"] == "Ok" else "firing") for b in bodies)
    assert got == sorted(expected)
    assert all(r["status"] == 200 for r in emulator.requests())


def test_severity_title_description_and_time_follow_the_alert(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """The 0.25 capture maps to Critical/Warning, a literal title, links in the description and startsAt."""
    bridge = make_bridge(emulator)
    assert bridge.post("/alertmanager", payload("alertmanager-0.25-firing.json")).status_code == 200
    bodies = {b["alert_key"]: b for b in delivered(emulator, 2)}
    critical = bodies["alertmanager:59375702559462c1"]
    assert critical["event_status"] == "Critical"
    assert critical["title_rule"] == "HighCPU: CPU > 90% on web-1"
    assert critical["description"].startswith("CPU usage is 97% for 5m on web-1:9100")
    assert "Runbook: https://runbooks.local/cpu" in critical["description"]
    assert "Source: http://prometheus.local/graph?g0.expr=cpu" in critical["description"]
    assert critical["event_time"] == 1795691420  # 2026-11-26T11:10:20.324Z
    assert critical["labels"]["instance"] == "web-1:9100"
    assert critical["labels"]["runbook_url"] == "https://runbooks.local/cpu"
    assert bodies["alertmanager:225fc7756e773d97"]["event_status"] == "Warning"


def test_mixed_group_sends_firing_and_ok_under_the_fingerprint_keys(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """A group with firing and resolved alerts yields one event each; resolved ones are Ok at endsAt."""
    bridge = make_bridge(emulator)
    firing = alert({"alertname": "DiskFull", "instance": "db-1", "severity": "critical"})
    resolved = alert({"alertname": "DiskFull", "instance": "db-2", "severity": "critical"}, status="resolved")
    assert bridge.post("/alertmanager", webhook(firing, resolved)).status_code == 200
    bodies = {b["alert_key"]: b for b in delivered(emulator, 2)}
    assert bodies[f"alertmanager:{firing['fingerprint']}"]["event_status"] == "Critical"
    ok = bodies[f"alertmanager:{resolved['fingerprint']}"]
    assert ok["event_status"] == "Ok"
    assert ok["event_time"] == 1795687500  # endsAt 2026-11-26T10:05:00Z


def test_missing_fingerprint_gets_alertmanagers_own_so_keys_match_newer_versions(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """An Alertmanager < 0.19 payload (no fingerprint) gets the key a newer Alertmanager would give."""
    bridge = make_bridge(emulator)
    old = copy.deepcopy(payload("alertmanager-firing-grouped.json"))
    expected = [a.pop("fingerprint") for a in old["alerts"]]
    assert bridge.post("/alertmanager", old).status_code == 200
    keys = sorted(b["alert_key"] for b in delivered(emulator, 2))
    assert keys == sorted(f"alertmanager:{fp}" for fp in expected)


def test_seventy_labels_are_capped_at_fifty_keeping_identity_labels(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """70 labels plus annotations arrive as exactly 50 labels; alertname, instance, job, severity survive."""
    bridge = make_bridge(emulator)
    labels = {f"zz_extra_{i:02d}": f"value {i}" for i in range(66)}
    labels.update({"alertname": "Wide", "instance": "host-1", "job": "node", "severity": "info"})
    assert len(labels) == 70
    body = webhook(alert(labels, {"summary": "wide alert", "description": "many labels"}))
    assert bridge.post("/alertmanager", body).status_code == 200
    event = delivered(emulator, 1)[0]
    assert len(event["labels"]) == 50
    for name in ("alertname", "instance", "job", "severity"):
        assert event["labels"][name] == labels[name]
    assert event["event_status"] == "Info"
    assert bridge.metric("flashduty_bridge_labels_dropped_total", reason="limit") == 70 + 2 - 50


def test_utf8_label_names_are_sanitised_without_silent_collisions(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """service.name and service_name both survive under distinct valid keys; the real one keeps its name."""
    bridge = make_bridge(emulator)
    labels = {
        "alertname": "Utf8",
        "service.name": "checkout",
        "service_name": "legacy",
        "k8s.pod/name": "p-1",
        "名前": "値",
    }
    assert bridge.post("/alertmanager", webhook(alert(labels))).status_code == 200
    event = delivered(emulator, 1)[0]
    out = event["labels"]
    assert out["service_name"] == "legacy"
    assert "checkout" in out.values() and "p-1" in out.values() and "値" in out.values()
    assert out["k8s_pod_name"] == "p-1"
    assert len(out) == len(labels)
    assert bridge.metric("flashduty_bridge_label_keys_rewritten_total", reason="collision") >= 1


def test_huge_emoji_and_cjk_annotations_are_cut_by_characters(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """5,000-character emoji/CJK annotations arrive within limits counted in code points, with links kept."""
    bridge = make_bridge(emulator)
    text = ("告警🔥👩‍💻" * 1000)[:5000]
    body = webhook(alert({"alertname": "Huge"}, {"summary": text, "description": text, "runbook_url": "https://rb/x"}))
    assert bridge.post("/alertmanager", body).status_code == 200
    event = delivered(emulator, 1)[0]
    assert len(event["title_rule"]) <= 512
    assert len(event["description"]) <= 2048
    assert event["description"].endswith("Runbook: https://rb/x\nSource: http://prometheus.local/graph?g0.expr=up")
    assert all(len(v) <= 2048 for v in event["labels"].values())
    assert event["labels"]["summary"].endswith("…")
    assert bridge.metric("flashduty_bridge_truncations_total", field="title_rule") == 1
    assert bridge.metric("flashduty_bridge_truncations_total", field="description") == 1
    assert bridge.metric("flashduty_bridge_truncations_total", field="label_value") == 2


def test_tpl_summary_does_not_switch_on_flashduty_templating(emulator: Emulator, make_bridge: MakeBridge) -> None:
    """A summary starting with [TPL] yields a literal title that does not start with [TPL]."""
    bridge = make_bridge(emulator)
    body = webhook(alert({}, {"summary": "[TPL]{{.Labels.secret}} leaked"}))
    assert bridge.post("/alertmanager", body).status_code == 200
    event = delivered(emulator, 1)[0]
    assert not event["title_rule"].upper().startswith("[TPL]")
    assert "{{.Labels.secret}} leaked" in event["title_rule"]


def test_malformed_bodies_get_400_invalid_parameter_with_a_precise_message(make_bridge: MakeBridge) -> None:
    """Bad JSON, wrong types, wrong version and API-format arrays are rejected naming the problem."""
    bridge = make_bridge()
    cases: list[tuple[bytes, str]] = [
        (b'{"version": "4", "alerts": [', "invalid JSON at line 1 column 29"),
        (b"", "body is empty"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'{"version": "4", "alerts": [{"status": "firing", "labels": {"a": NaN}}]}', "NaN is not valid JSON"),
        (
            json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": {"a": 1}}]}).encode(),
            "alerts[0].labels.a: Input should be a valid string",
        ),
        (json.dumps({"version": "4", "alerts": [{"status": "pending", "labels": {}}]}).encode(), "alerts[0].status"),
        (json.dumps({"version": "4", "alerts": "x"}).encode(), "alerts: Input should be a valid list"),
        (
            json.dumps(
                {"version": "4", "alerts": [{"status": "firing", "labels": {}, "startsAt": "yesterday"}]}
            ).encode(),
            "alerts[0].startsAt",
        ),
        (json.dumps({"version": "1", "orgId": 1, "alerts": []}).encode(), "looks like a Grafana webhook"),
        (json.dumps([{"labels": {"alertname": "x"}}]).encode(), "/api/v2/alerts"),
        (b'"just a string"', "must be a JSON object"),
    ]
    for content, message in cases:
        response = bridge.post("/alertmanager", content=content)
        assert response.status_code == 400, (content, response.text)
        error = response.json()["error"]
        assert error["code"] == "InvalidParameter"
        assert message in error["message"], (content, error["message"])
        assert len(response.json()["request_id"]) == 32
    assert bridge.metric("flashduty_bridge_requests_total", source="alertmanager", outcome="invalid") == len(cases)


def test_oversized_body_gets_413_before_it_is_read_whole(make_bridge: MakeBridge) -> None:
    """A body over max_body_bytes is refused with 413 whether or not it declares its length."""
    bridge = make_bridge(max_body_bytes=10_000)
    big = json.dumps(webhook(alert({"alertname": "Big"}, {"description": "x" * 20_000}))).encode()
    declared = bridge.post("/alertmanager", content=big)
    assert declared.status_code == 413
    assert "10000" in declared.json()["error"]["message"]

    def chunks() -> Any:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    streamed = httpx.post(f"{bridge.url}/alertmanager", content=chunks(), timeout=30)
    assert streamed.status_code == 413
    assert bridge.metric("flashduty_bridge_requests_total", source="alertmanager", outcome="too_large") == 2


def test_wrong_method_and_unknown_path_answer_in_the_envelope(make_bridge: MakeBridge) -> None:
    """GET /alertmanager is 405 MethodNotAllowed and an unknown path is 404 RouteNotFound, both enveloped."""
    bridge = make_bridge()
    wrong = httpx.get(f"{bridge.url}/alertmanager")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "MethodNotAllowed"
    missing = httpx.post(f"{bridge.url}/nope", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "RouteNotFound"


def test_outbox_full_answers_503_so_alertmanager_retries_and_keeps_what_it_had(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """With max_pending reached the bridge answers 503 (never 429) and loses nothing already accepted."""
    emulator.fault(*[{"status": 503, "code": "InternalError"}] * 1000)
    bridge = make_bridge(
        emulator, storage={"max_pending": 3}, delivery={"backoff_initial": "10s", "backoff_max": "10s"}
    )
    first = webhook(*[alert({"alertname": "Fill", "instance": f"i{i}"}) for i in range(3)])
    assert bridge.post("/alertmanager", first).status_code == 200
    refused = bridge.post("/alertmanager", webhook(alert({"alertname": "Fill", "instance": "i9"})))
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "ServiceUnavailable"
    wait_for(lambda: bridge.metric("flashduty_bridge_outbox_pending") == 3, what="gauge refresh")  # once a second
    assert bridge.metric("flashduty_bridge_alerts_received_total", source="alertmanager", outcome="unavailable") == 1


def test_answer_and_metrics_count_every_alert_event_repeat_and_drop(make_bridge: MakeBridge) -> None:
    """Per request: accepted alerts, events by status, suppressed repeats and unrouted alerts, each counted once."""
    bridge = make_bridge(routes=[{"matchers": ['env="dev"'], "drop": True}])
    alerts = [
        alert({"alertname": "A", "severity": "critical"}),
        alert({"alertname": "B", "severity": "critical"}),
        alert({"alertname": "C", "severity": "info"}),
        alert({"alertname": "D"}, status="resolved"),
        alert({"alertname": "Dev", "env": "dev"}),
        alert({"alertname": "Dev2", "env": "dev"}),
    ]
    first = bridge.post("/alertmanager?source=x", webhook(*alerts))
    assert first.status_code == 200, first.text
    data = first.json()["data"]
    assert (data["accepted"], data["events"], data["suppressed"], data["unrouted"]) == (6, 4, 0, 2)
    assert len(data["alert_keys"]) == 4
    again = bridge.post("/alertmanager", webhook(*alerts[:3])).json()["data"]  # nothing new: suppressed
    assert (again["accepted"], again["events"], again["suppressed"], again["unrouted"]) == (3, 0, 3, 0)

    def counted(name: str, **labels: str) -> float:
        return bridge.metric(f"flashduty_bridge_{name}", source="alertmanager", **labels)

    assert counted("requests_total", outcome="accepted") == 2
    assert counted("alerts_received_total", outcome="accepted") == 9
    assert counted("events_total", status="Critical") == 2
    assert counted("events_total", status="Info") == 1
    assert counted("events_total", status="Ok") == 1
    assert counted("events_total", status="Warning") == 0
    assert counted("events_suppressed_total") == 3
    assert counted("alerts_unrouted_total", reason="dropped_by_route") == 2
    assert counted("alerts_unrouted_total", reason="no_route") == 0


def test_dry_run_without_a_key_shows_what_it_would_send(make_bridge: MakeBridge) -> None:
    """No integration key: the bridge says DRY RUN at start and lists each mapped event at /-/dry-run."""
    bridge = make_bridge()
    assert httpx.get(f"{bridge.url}/-/ready").json()["dry_run"] is True
    assert bridge.post("/alertmanager", payload("alertmanager-0.25-firing.json")).status_code == 200
    events = wait_for(
        lambda: (
            len(httpx.get(f"{bridge.url}/-/dry-run").json()["events"]) == 2
            and httpx.get(f"{bridge.url}/-/dry-run").json()["events"]
        )
    )
    assert {e["alert_key"] for e in events} == {"alertmanager:59375702559462c1", "alertmanager:225fc7756e773d97"}
    assert "DRY RUN" in bridge.log()
    assert "would send" in bridge.log()
    assert bridge.metric("flashduty_bridge_dry_run") == 1


def test_integration_key_never_appears_in_logs_metrics_or_dead_letters(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """Delivery, failures and dead letters never show the key, even when Flashduty echoes it."""
    secret_url = emulator.push_url + "?layer_person_reset_1_emails=a%40b.c"
    emulator.fault(
        {"status": 400, "code": "InvalidParameter", "message": f"bad key {TEST_KEY}"},
        {"status": 503, "code": "InternalError"},
    )
    bridge = make_bridge(emulator, flashduty={"url": secret_url})
    assert bridge.post("/alertmanager", payload("alertmanager-0.25-firing.json")).status_code == 200
    wait_for(lambda: len(emulator.bodies(TEST_KEY)) >= 1, what="one delivery")
    wait_for(lambda: bridge.metric("flashduty_bridge_dead_letters") == 1, what="one dead letter")
    letters = bridge.admin("GET", "/dead-letters").text
    for text in (bridge.log(), bridge.metrics(), letters):
        assert TEST_KEY not in text
    assert "***" in letters
    pushed = [r for r in emulator.requests() if r["status"] == 200]
    assert pushed, emulator.requests()
    raw = httpx.get(f"{emulator.url}/-/requests").json()["requests"]
    assert all(r["integration_key"] == TEST_KEY for r in raw)
