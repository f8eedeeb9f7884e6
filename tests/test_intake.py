"""The intake pipeline: one path for receive and render, notes instead of side effects."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import intake
from bridge.config import Config
from tests.support.inprocess import make_config, running

TEMPLATED: dict[str, Any] = {
    "title": "{{ headers['x-env'] }} / {{ query.team }} / {{ payload.name }}",
    "event_status": "{{ payload.state }}",
    "status_map": {"down": "Critical", "up": "Ok"},
    "alert_key": "{{ payload.id }}",
    "labels": {"broken": "{{ payload.nope.x + 1 }}"},
}


def long_alert(index: int = 0) -> dict[str, Any]:
    """An Alertmanager alert whose title must be cut and whose labels overflow the 50-label cap."""
    labels = {"alertname": "A" * 600, **{f"l{i:02d}": "v" for i in range(60)}, "n": str(index)}
    return {"status": "firing", "labels": labels, "annotations": {}, "fingerprint": f"{index:016x}"}


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "alerts": list(alerts), "groupKey": "{}:{}", "receiver": "r"}


async def test_render_runs_the_pipeline_without_touching_live_metrics(tmp_path: Path) -> None:
    """POST /-/render shows truncations and dropped labels as notes; only receive counts them."""
    async with running(make_config(tmp_path)) as bridge:
        shown = await bridge.client.post("/-/render/alertmanager", json=webhook(long_alert()))
        assert shown.status_code == 200, shown.text
        data = shown.json()["data"]
        (entry,) = data["events"]
        assert len(entry["event"]["title_rule"]) == 512
        assert data["notes"]["truncations"] == {"title_rule": 1}
        assert data["notes"]["labels_dropped"] == {"limit": 12}
        assert bridge.metric("flashduty_bridge_truncations_total") == 0
        assert bridge.metric("flashduty_bridge_labels_dropped_total") == 0
        assert bridge.metric("flashduty_bridge_requests_total") == 0

        received = await bridge.client.post("/alertmanager", json=webhook(long_alert()))
        assert received.status_code == 200, received.text
        assert bridge.metric("flashduty_bridge_truncations_total", field="title_rule") == 1
        assert bridge.metric("flashduty_bridge_labels_dropped_total", reason="limit") == 12


async def test_render_reads_headers_and_query_exactly_as_receive_does(tmp_path: Path) -> None:
    """A repeated header counts by its first value on both paths; the query likewise."""
    headers = [("x-env", "prod"), ("x-env", "dev"), ("content-type", "application/json")]
    body = json.dumps({"id": "c1", "name": "api", "state": "down"}).encode()
    async with running(make_config(tmp_path, sources={"hook": TEMPLATED})) as bridge:
        shown = await bridge.client.post("/-/render/hook?team=db&team=web", content=body, headers=headers)
        assert shown.status_code == 200, shown.text
        (entry,) = shown.json()["data"]["events"]
        assert entry["event"]["title_rule"] == "prod / db / api"
        assert shown.json()["data"]["notes"]["template_errors"] == {"labels.broken": 1}
        received = await bridge.client.post("/webhook/hook?team=db&team=web", content=body, headers=headers)
        assert received.status_code == 200, received.text
        sent = await bridge.delivered(1)
        assert sent[0]["title_rule"] == entry["event"]["title_rule"]
        assert bridge.metric("flashduty_bridge_template_errors_total", source="hook", field="labels.broken") == 1


def test_render_cli_prints_what_the_render_endpoint_answers(tmp_path: Path) -> None:
    """`flashduty-bridge render` is the same pipeline: same events, same notes, headers as given."""
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(yaml.safe_dump({"sources": {"hook": TEMPLATED}}))
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"id": "c1", "name": "api", "state": "down"}))
    argv = [sys.executable, "-m", "bridge", "render", "--config", str(config_path), "--source", "hook"]
    argv += ["--header", "X-Env=prod", "--query", "team=db", str(payload)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # a template error is a note in the output, not a log line
    printed = json.loads(result.stdout)
    assert printed["events"][0]["event"]["title_rule"] == "prod / db / api"
    assert printed["notes"]["template_errors"] == {"labels.broken": 1}


def test_prepare_is_a_pure_function_of_plain_data(tmp_path: Path) -> None:
    """What a worker process would be handed and would hand back pickles; nothing global changes."""
    cfg = Config.model_validate({"storage": {"path": str(tmp_path)}, "sources": {"hook": TEMPLATED}})
    snapshot = intake.build(cfg)
    received = intake.Received(
        source="alertmanager",
        body=json.dumps(webhook(long_alert(1), long_alert(2))).encode(),
        headers={"content-type": "application/json"},
        query={},
        passthrough=None,
    )
    pickle.loads(pickle.dumps(received))
    outcome = intake.prepare(snapshot, received)
    assert isinstance(outcome, intake.Prepared)
    again = pickle.loads(pickle.dumps(outcome))
    assert again == outcome
    assert [event.destination for event in outcome.events] == ["default", "default"]
    assert outcome.notes.truncations == {"title_rule": 2}
    assert outcome.answer() == {
        "accepted": 2,
        "events": 2,
        "suppressed": 0,
        "unrouted": 0,
        "alert_keys": ["alertmanager:0000000000000001", "alertmanager:0000000000000002"],
    }
    assert intake.prepare(snapshot, received) == outcome  # no state carried between calls


@pytest.mark.parametrize(
    ("source", "raw", "expected"),
    [
        ("alertmanager", b"[]", intake.Refused),
        ("alertmanager", b"{", intake.Refused),
        ("grafana", b'{"ruleName": "r", "state": "paused"}', intake.NotForwarded),
        ("standard", b'{"title_rule": "t", "event_status": "Info"}', intake.Prepared),
    ],
)
def test_prepare_answers_with_data_never_an_exception(tmp_path: Path, source: str, raw: bytes, expected: type) -> None:
    snapshot = intake.build(Config.model_validate({"storage": {"path": str(tmp_path)}}))
    received = intake.Received(source, raw, {"content-type": "application/json"}, {}, None)
    assert isinstance(intake.prepare(snapshot, received), expected)
