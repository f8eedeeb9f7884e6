"""``flashduty-bridge render`` and ``flashduty-bridge test-templates``: templates, tried offline.

``render`` prints the events a payload would become (destination and body), nothing
queued or sent. ``test-templates`` runs test files, as ``promtool test rules`` does:

.. code-block:: yaml

    config: ../../config/sources/uptime-kuma.yaml   # relative to this file; --config overrides
    tests:
      - name: monitor goes down
        source: uptime_kuma
        payload_file: ../fixtures/senders/uptime-kuma-down.json   # or `payload:` inline
        headers: {}
        query: {}
        expect:                  # the events, in order; each a subset of the event body
          - {event_status: Critical, alert_key: "uptime_kuma:12"}

Both run the very pipeline ``serve`` runs (:func:`bridge.intake.prepare`: decode → parse →
route → map) on the payload's bytes, with headers and query read the same way; only the
store is left out. Template errors and truncations are shown as notes, never logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge import config as config_module
from bridge import intake
from bridge.intake import NotForwarded, Outcome, Received, Refused
from bridge.routing import passthrough_destination
from bridge.sources import describe_validation_error


def received(
    source: str, body: bytes, headers: dict[str, str], query: dict[str, str], config: config_module.Config
) -> Received:
    """A request as ``serve`` would receive it: header names in lower case, JSON unless said otherwise."""
    headers = {"content-type": "application/json", **{name.lower(): value for name, value in headers.items()}}
    key = query.get("integration_key", "").strip() if config.passthrough else ""
    return Received(source, body, headers, dict(query), passthrough_destination(key) if key else None)


def prepare(
    snapshot: intake.Intake, source: str, body: bytes, headers: dict[str, str], query: dict[str, str]
) -> Outcome:
    """The outcome ``serve`` would reach for this request, minus the store: the very same pipeline."""
    if source not in snapshot.sources:
        raise KeyError(f"no source {source!r} in the config (have: {', '.join(sorted(snapshot.sources))})")
    return intake.prepare(snapshot, received(source, body, headers, query, snapshot.config))


def _pairs(items: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        if "=" in item:
            name, value = item.split("=", 1)
            pairs.setdefault(name, value)  # the first value, as serve reads a repeated header
    return pairs


def render(args: argparse.Namespace) -> int:
    from bridge.cli import load_or_exit

    snapshot = intake.build(load_or_exit(args.config))
    try:
        body = Path(args.payload).read_bytes()
        outcome = prepare(snapshot, args.source, body, _pairs(args.header), _pairs(args.query))
    except (OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(outcome, Refused):
        print(f"error: {outcome.code}: {outcome.message}", file=sys.stderr)
        return 2
    if isinstance(outcome, NotForwarded):
        print(json.dumps({"events": [], "not_forwarded": outcome.reason}, indent=2))
        return 0
    print(json.dumps(outcome.to_json(), indent=2, ensure_ascii=False))
    return 0


class TemplateCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    source: str
    payload: Any = None
    payload_file: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    expect: list[dict[str, Any]]

    @model_validator(mode="after")
    def _one_payload(self) -> TemplateCase:
        if (self.payload is None) == (self.payload_file is None):
            raise ValueError("give exactly one of payload and payload_file")
        return self


class TemplateTestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | None = None
    tests: list[TemplateCase]


def _subset_problems(expected: Any, actual: Any, path: str) -> list[str]:
    """Where ``actual`` does not contain ``expected`` (dicts: subset; everything else: equal)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}.{key}: missing (expected {value!r})")
            else:
                problems += _subset_problems(value, actual[key], f"{path}.{key}")
        return problems
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


def run_test_file(path: Path, config_override: str | None) -> tuple[int, int]:
    """Run one test file; print results; return (passed, failed)."""
    from bridge.cli import load_or_exit

    try:
        spec = TemplateTestFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        print(f"{path}: cannot read: {exc}")
        return 0, 1
    except ValidationError as exc:
        print(f"{path}: invalid test file: {describe_validation_error(exc)}")
        return 0, 1
    config_path = config_override or (str((path.parent / spec.config).resolve()) if spec.config else None)
    snapshot = intake.build(load_or_exit(config_path))
    passed = failed = 0
    for test in spec.tests:
        problems: list[str] = []
        events: list[dict[str, Any]] = []
        said = ""
        try:
            if test.payload_file is not None:
                body = (path.parent / test.payload_file).read_bytes()
            else:
                body = json.dumps(test.payload).encode()
            outcome = prepare(snapshot, test.source, body, test.headers, test.query)
        except (OSError, KeyError) as exc:
            problems.append(f"error: {exc}")
        else:
            if isinstance(outcome, Refused):
                problems.append(f"error: {outcome.code}: {outcome.message}")
            elif isinstance(outcome, NotForwarded):
                if test.expect:
                    problems.append(f"not forwarded ({outcome.reason}), expected {len(test.expect)} events")
            else:
                events = [json.loads(event.body) for event in outcome.events]
                said = outcome.notes.first_template_error
        if not problems and len(events) != len(test.expect):
            problems.append(f"expected {len(test.expect)} events, got {len(events)}")
        for index, (expected, actual) in enumerate(zip(test.expect, events, strict=False)):
            problems += _subset_problems(expected, actual, f"events[{index}]")
        if problems:
            failed += 1
            print(f"FAIL {path.name}: {test.name}")
            for problem in problems:
                print(f"  - {problem}")
            if said:  # a template that fell back: quiet when expected, shown when the test fails
                print(f"  - template error: {said}")
            print("  got: " + json.dumps(events, ensure_ascii=False, indent=2).replace("\n", "\n  "))
        else:
            passed += 1
            print(f"ok   {path.name}: {test.name}")
    return passed, failed


def run_template_tests(args: argparse.Namespace) -> int:
    passed = failed = 0
    for name in args.files:
        ok, bad = run_test_file(Path(name), args.config)
        passed, failed = passed + ok, failed + bad
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def add_parsers(commands: Any) -> None:
    show = commands.add_parser("render", help="print the events a payload would become (nothing is sent)")
    show.add_argument("--config", help="config file (its sources, routes and label rules apply)")
    show.add_argument("--source", required=True, help="alertmanager, grafana, standard or a template source name")
    show.add_argument("--header", action="append", default=[], help="NAME=VALUE, repeatable (seen as headers)")
    show.add_argument("--query", action="append", default=[], help="NAME=VALUE, repeatable (seen as query)")
    show.add_argument("payload", help="the webhook body, a JSON file")
    show.set_defaults(func=render)
    check = commands.add_parser("test-templates", help="run template test files (like promtool test rules)")
    check.add_argument("--config", help="config file (default: each test file's `config:`)")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=run_template_tests)
