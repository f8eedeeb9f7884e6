"""Events are byte-identical to the recorded ones: every fixture payload through every source.

Speed work on the intake path (parsing, mapping, label clean-up, ``Event.to_json``/``digest``)
must not change one byte of what is stored and sent, nor any refusal. The goldens in
``tests/fixtures/golden/events.json`` were recorded from ``main`` before that work; each
entry is one (config, source, payload) and the outcome of :func:`bridge.intake.prepare`:
every event's destination, alert_key, source, status, body and digest, the answer and the
notes; or the refusal. Two configs: the shipped one (defaults plus the template sources of
``config/sources/``) and one with every label rule, route fan-out and route labels.

To record anew after an *intended* change of events: ``.venv/bin/python -m tests.test_golden_events``
(and say why in the commit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bridge import config, intake
from bridge.intake import NotForwarded, Prepared, Received, Refused

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = FIXTURES / "golden" / "events.json"
STANDARD = FIXTURES / "golden" / "standard"
# Not a real payload: 60 alerts whose label sets repeat, with invalid names, over 50 labels, long
# descriptions; it covers what per-label-set caching and truncation could get wrong.
SYNTHETIC = FIXTURES / "golden" / "alertmanager-synthetic-mixed-labels.json"


def shipped_sources() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in sorted((ROOT / "config" / "sources").glob("*.yaml")):
        found |= yaml.safe_load(path.read_text())["sources"]
    return found


def configs() -> dict[str, config.Config]:
    sources = shipped_sources()
    rules = {
        "rename": {"instance": "host_instance", "alertname": "alert_name"},
        "enrich": {"resource": ["host_instance", "host", "monitor_url"], "service": ["job", "project"]},
        "add": {"env": "prod", "team": "ops"},
        "drop": ["__.*", "runbook.*"],
        "keep": [],
        "priority": ["team", "severity", "env"],
    }
    routes = [
        {"matchers": ['severity=~"critical|error"'], "destination": "pager", "continue": True},
        {"matchers": ['alert_name="Watchdog"'], "drop": True},
        {"sources": ["grafana"], "destination": "grafana", "labels": {"add": {"routed": "grafana"}}},
    ]
    destinations = {"pager": {"integration_key": "k-pager"}, "grafana": {"integration_key": "k-grafana"}}
    return {
        "shipped": config.Config.model_validate({"sources": sources}),
        "rules": config.Config.model_validate(
            {
                "sources": sources,
                "labels": rules,
                "routes": routes,
                "destinations": destinations,
                "flashduty": {"integration_key": "k-default"},
            }
        ),
    }


def corpus() -> dict[str, bytes]:
    """Every fixture payload by name: Alertmanager, Grafana, senders, standard API bodies."""
    paths = [
        *sorted((FIXTURES / "payloads").glob("*.json")),
        *sorted((FIXTURES / "senders").glob("*.json")),
        *sorted(STANDARD.glob("*.json")),
        SYNTHETIC,
    ]
    return {f"{path.parent.name}/{path.name}": path.read_bytes() for path in paths}


def outcome_json(outcome: intake.Outcome) -> dict[str, Any]:
    if isinstance(outcome, Prepared):
        return {
            "events": [
                [new.destination, new.alert_key, new.source, new.event_status, new.body, new.digest]
                for new in outcome.events
            ],
            "answer": outcome.answer(),
            "unrouted": outcome.unrouted,
            "notes": outcome.notes.to_json(),
        }
    if isinstance(outcome, Refused):
        return {"refused": [outcome.status, outcome.code, outcome.message]}
    assert isinstance(outcome, NotForwarded)
    return {"not_forwarded": [outcome.reason, outcome.detail]}


def produce() -> dict[str, Any]:
    found: dict[str, Any] = {}
    payloads = corpus()
    for config_name, cfg in configs().items():
        snapshot = intake.build(cfg)
        for source in snapshot.sources:
            for name, body in payloads.items():
                received = Received(source, body, {"content-type": "application/json"}, {})
                found[f"{config_name} {source} {name}"] = outcome_json(intake.prepare(snapshot, received))
    normalized: dict[str, Any] = json.loads(json.dumps(found))  # tuples as lists, as read back from the file
    return normalized


def test_every_fixture_through_every_source_gives_the_recorded_events_byte_for_byte() -> None:
    """Bodies, digests, keys, answers, notes and refusals equal the goldens recorded before the speed work."""
    recorded = json.loads(GOLDEN.read_text())
    produced = produce()
    assert sorted(produced) == sorted(recorded), "the corpus or the sources changed: record the goldens anew"
    changed = [name for name in recorded if produced[name] != recorded[name]]
    assert changed == [], f"{len(changed)} outcomes differ, first: {changed[0]}\n{produced[changed[0]]}"


def test_the_golden_corpus_has_events_from_every_source_and_both_configs() -> None:
    """The comparison above means something: each source turned some fixture into events under each config."""
    recorded = json.loads(GOLDEN.read_text())
    with_events = {name.rsplit(" ", 1)[0] for name, outcome in recorded.items() if outcome.get("events")}
    expected = {f"{c} {s}" for c, cfg in configs().items() for s in intake.build(cfg).sources}
    assert with_events == expected
    assert sum(len(outcome.get("events", [])) for outcome in recorded.values()) > 100


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(produce(), indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"wrote {GOLDEN}")
