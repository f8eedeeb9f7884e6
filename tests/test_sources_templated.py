"""Template sources: output limits per event field, the `alerts` expression as a value, the shipped Uptime Kuma
templates on hostile messages. Through the pure pipeline (bridge.intake.prepare); the real process is in
tests/test_senders.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridge import config, contract, intake
from bridge.intake import Prepared, Received, Refused

ROOT = Path(__file__).resolve().parents[1]


def prepare(sources: dict[str, Any], source: str, body: Any) -> intake.Outcome:
    snapshot = intake.build(config.Config.model_validate({"sources": sources}))
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return intake.prepare(snapshot, Received(source, raw, {}, {}))


def event(outcome: intake.Outcome, index: int = 0) -> dict[str, Any]:
    assert isinstance(outcome, Prepared), outcome
    body: dict[str, Any] = json.loads(outcome.events[index].body)
    return body


def test_text_fields_are_cut_at_their_own_limit_and_truncated_not_failed() -> None:
    """A 100 KB description (over the 64 KiB template output limit) is cut and truncated to 2048, counted."""
    source = {
        "title": "{{ payload.text }}",
        "description": "{{ payload.text }}",
        "event_status": "Info",
        "labels": {"all": "{{ payload.text }}"},
    }
    outcome = prepare({"s": source}, "s", {"text": "word " * 20_000})
    assert isinstance(outcome, Prepared)
    assert not outcome.notes.template_errors
    mapped = event(outcome)
    assert len(mapped["title_rule"]) == contract.TITLE_MAX
    assert len(mapped["description"]) == contract.DESCRIPTION_MAX
    assert len(mapped["labels"]["all"]) == contract.LABEL_VALUE_MAX
    assert outcome.notes.truncations == {"title_rule": 1, "description": 1, "label_value": 1}


def test_a_key_or_status_over_the_output_limit_is_still_a_template_error() -> None:
    """alert_key must be whole (a long one is hashed): over 64 KiB of it is a failed template with a fallback."""
    source = {"title": "t", "event_status": "Info", "alert_key": "{{ payload.text }}"}
    outcome = prepare({"s": source}, "s", {"text": "k" * 70_000})
    assert isinstance(outcome, Prepared)
    assert outcome.notes.template_errors == {"alert_key": 1}
    assert "output exceeds 65536" in outcome.notes.first_template_error


def test_the_alerts_expression_takes_lists_of_any_size_and_names_what_else_it_got() -> None:
    """The value itself, not 64 KiB of JSON: 2,000 items of 100 characters; a generator or nothing: a 400."""
    source = {"alerts": "payload.checks", "title": "{{ alert.name }}", "event_status": "Info"}
    checks = [{"name": f"check-{i}", "note": "n" * 100} for i in range(2000)]
    outcome = prepare({"s": source}, "s", {"checks": checks})
    assert isinstance(outcome, Prepared) and len(outcome.events) == 2000
    assert event(outcome, 1999)["title_rule"] == "check-1999"
    generator = prepare({"s": {**source, "alerts": "payload.checks | select"}}, "s", {"checks": [1]})
    assert isinstance(generator, Refused) and generator.message.endswith("gave generator, not a list (add | list)")
    missing = prepare({"s": source}, "s", {})
    assert isinstance(missing, Refused) and missing.message.endswith("gave nothing, not a list")
    holes = prepare({"s": {**source, "alerts": "[payload.absent, payload]"}}, "s", {"checks": []})
    assert isinstance(holes, Prepared) and len(holes.events) == 2  # a missing item is null, as in JSON


def test_shipped_uptime_kuma_templates_take_a_hostile_64_kb_message_without_running_out_of_time() -> None:
    """'[x][y] a certificate b' × 2,800 made the certificate regex backtrack: every field ran out of time (0.8 s).

    Now the pattern is decided in one pass and tried only on messages up to 4096 characters.
    """
    shipped = config.load(ROOT / "config" / "sources" / "uptime-kuma.yaml", env={})
    snapshot = intake.build(shipped)
    for message in ("[x][y] a certificate b " * 2800, "] server certificate will " * 2500, "x " * 32000):
        raw = json.dumps({"heartbeat": None, "monitor": None, "msg": message}).encode()
        outcome = intake.prepare(snapshot, Received("uptime_kuma", raw, {}, {}))
        assert isinstance(outcome, Prepared), outcome
        assert not outcome.notes.template_errors, outcome.notes.first_template_error
        assert event(outcome)["title_rule"].startswith("Uptime Kuma: ")
