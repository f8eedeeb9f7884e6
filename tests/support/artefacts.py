"""Paths of the deployment artefacts and the expressions inside them.

Shared by ``tests/test_deploy.py`` (static checks) and ``tests/test_e2e_prometheus.py``
(which loads the same rules and dashboard queries into a real Prometheus).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "flashduty-bridge"
#: The one source of the bridge's alert rules: a plain Prometheus rule file, which the
#: chart's PrometheusRule embeds as its spec.
RULES = CHART / "files" / "flashduty-bridge-rules.yaml"
DASHBOARD = CHART / "files" / "flashduty-bridge.json"
RULE_TESTS = ROOT / "tests" / "fixtures" / "prometheus" / "bridge-rules.test.yml"

#: Grafana's variables, replaced by values any Prometheus accepts so the queries can be
#: checked by promtool and evaluated by a real server.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$namespace": ".*",
    "$instance": ".*",
}


def rule_groups(*, annotations: bool = True) -> list[dict[str, Any]]:
    """The rule file's ``groups`` (also the chart's PrometheusRule ``spec.groups``)."""
    document = yaml.safe_load(RULES.read_text())
    groups: list[dict[str, Any]] = document["groups"]
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    return groups


def write_rule_file(path: Path, *, annotations: bool = True) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule_groups(annotations=annotations)}, sort_keys=False))
    return path


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    board = board if board is not None else dashboard()
    panels = []
    for panel in board["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(where, expr) for every panel query and every query variable, as written."""
    board = board if board is not None else dashboard()
    found = []
    for panel in dashboard_panels(board):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)\s*", text)
            expr = match.group(1) if match else text
            found.append((f"variable {variable['name']}", expr))
    return found


def substitute_variables(expr: str) -> str:
    """``expr`` with Grafana's variables replaced (longest names first)."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace("${" + name[1:] + "}", GRAFANA_VARIABLES[name]).replace(name, GRAFANA_VARIABLES[name])
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr
