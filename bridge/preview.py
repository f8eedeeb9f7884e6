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

Both use the same parse → route → map code as ``serve``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge import config as config_module
from bridge.auth import Unauthorized
from bridge.metrics import Metrics
from bridge.routing import Router
from bridge.runtime import Prepared, Runtime, sources
from bridge.sources import InvalidPayload, Skipped, describe_validation_error
from bridge.sources import standard as standard_module


def offline_runtime(cfg: config_module.Config) -> Runtime:
    """Sources and routes of ``cfg``, without destinations: enough to map, nothing to send."""
    return Runtime(cfg, Router(cfg), sources(cfg, Metrics(CollectorRegistry())), {}, {})


def prepare(runtime: Runtime, name: str, payload: Any, headers: dict[str, str], query: dict[str, str]) -> Prepared:
    source = runtime.sources.get(name)
    if source is None:
        raise KeyError(f"no source {name!r} in the config (have: {', '.join(sorted(runtime.sources))})")
    body = source.decode(json.dumps(payload).encode(), {"content-type": "application/json", **headers})
    return runtime.prepare(source, source.parse(body, headers, query))


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items if "=" in item)


def render(args: argparse.Namespace) -> int:
    from bridge.cli import load_or_exit

    runtime = offline_runtime(load_or_exit(args.config))
    try:
        payload = json.loads(Path(args.payload).read_text(encoding="utf-8"))
        prepared = prepare(runtime, args.source, payload, _pairs(args.header), _pairs(args.query))
    except (OSError, ValueError, KeyError, InvalidPayload, standard_module.Rejection, Unauthorized) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Skipped as skip:
        print(json.dumps({"events": [], "not_forwarded": skip.reason}, indent=2))
        return 0
    print(json.dumps(prepared.to_json(), indent=2, ensure_ascii=False))
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
    runtime = offline_runtime(load_or_exit(config_path))
    passed = failed = 0
    for test in spec.tests:
        problems: list[str] = []
        try:
            payload = test.payload
            if test.payload_file is not None:
                payload = json.loads((path.parent / test.payload_file).read_text(encoding="utf-8"))
            events = [
                event.to_body() for _, event in prepare(runtime, test.source, payload, test.headers, test.query).events
            ]
        except Skipped as skip:
            events = []
            problems += (
                [] if not test.expect else [f"not forwarded ({skip.reason}), expected {len(test.expect)} events"]
            )
        except (OSError, ValueError, KeyError, InvalidPayload, standard_module.Rejection) as exc:
            events, problems = [], [f"error: {exc}"]
        if not problems and len(events) != len(test.expect):
            problems.append(f"expected {len(test.expect)} events, got {len(events)}")
        for index, (expected, actual) in enumerate(zip(test.expect, events, strict=False)):
            problems += _subset_problems(expected, actual, f"events[{index}]")
        if problems:
            failed += 1
            print(f"FAIL {path.name}: {test.name}")
            for problem in problems:
                print(f"  - {problem}")
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
