"""Strict checks of rendered Kubernetes objects, without a cluster.

Core objects are validated (strict: unknown fields are errors) against the Kubernetes
schemas that ``kubernetes-validate`` bundles, for the oldest Kubernetes the chart supports
(its ``kubeVersion``) and the newest bundled one. The Prometheus Operator objects (CRDs,
no bundled schema) are checked field by field, as their CRDs do, for the fields we use.
"""

from __future__ import annotations

import re
from typing import Any

#: Oldest Kubernetes minor we support (its schemas); Chart.yaml's kubeVersion says the same.
K8S_OLDEST = "1.28"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def versions() -> tuple[str, str]:
    import kubernetes_validate

    return K8S_OLDEST, kubernetes_validate.latest_version()


def validate_core(obj: dict[str, Any]) -> list[str]:
    """Strict validation against the bundled Kubernetes schemas, oldest and newest version."""
    import kubernetes_validate

    problems = []
    for version in versions():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(item) for item in exc.path)
            problems.append(f"Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(exc.message)
    return problems


def _keys(where: str, value: Any, allowed: set[str], required: set[str] | None = None) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: must be a mapping"]
    problems = [f"{where}.{key}: unknown field" for key in sorted(set(value) - allowed)]
    problems += [f"{where}.{key}: required" for key in sorted((required or set()) - set(value))]
    return problems


def _string_map(where: str, value: Any) -> list[str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return [f"{where}: must map strings to strings"]
    return []


def validate_service_monitor(obj: dict[str, Any]) -> list[str]:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor that we use, checked as the CRD does."""
    spec = obj.get("spec", {})
    allowed = {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels"}
    problems = _keys("spec", spec, allowed, {"selector", "endpoints"})
    problems += _keys("spec.selector", spec.get("selector"), {"matchLabels", "matchExpressions"})
    problems += _string_map("spec.selector.matchLabels", spec.get("selector", {}).get("matchLabels", {}))
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        return [*problems, "spec.endpoints: at least one endpoint"]
    for i, endpoint in enumerate(endpoints):
        where = f"spec.endpoints[{i}]"
        problems += _keys(where, endpoint, {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"})
        if not isinstance(endpoint.get("port"), str):
            problems.append(f"{where}.port: the Service port's name")
        if not str(endpoint.get("path", "/")).startswith("/"):
            problems.append(f"{where}.path: must start with /")
        for field_name in ("interval", "scrapeTimeout"):
            if field_name in endpoint and not DURATION.match(str(endpoint[field_name])):
                problems.append(f"{where}.{field_name}: not a Prometheus duration")
    return problems


def validate_prometheus_rule(obj: dict[str, Any]) -> list[str]:
    """monitoring.coreos.com/v1 PrometheusRule: groups of rules, each alert xor record."""
    spec = obj.get("spec", {})
    problems = _keys("spec", spec, {"groups"}, {"groups"})
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        return [*problems, "spec.groups: at least one group"]
    names = [group.get("name") for group in groups]
    if len(set(names)) != len(names):
        problems.append("spec.groups: group names must be unique")
    for g, group in enumerate(groups):
        where = f"spec.groups[{g}]"
        problems += _keys(where, group, {"name", "interval", "rules", "limit"}, {"name", "rules"})
        for r, rule in enumerate(group.get("rules", [])):
            at = f"{where}.rules[{r}]"
            problems += _keys(at, rule, {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"})
            if ("alert" in rule) == ("record" in rule):
                problems.append(f"{at}: exactly one of alert and record")
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                problems.append(f"{at}.expr: a PromQL expression (string)")
            if "for" in rule and not DURATION.match(str(rule["for"])):
                problems.append(f"{at}.for: not a Prometheus duration")
            problems += _string_map(f"{at}.labels", rule.get("labels", {}))
            problems += _string_map(f"{at}.annotations", rule.get("annotations", {}))
    return problems


CRD_VALIDATORS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): validate_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): validate_prometheus_rule,
}


def validate_object(obj: dict[str, Any]) -> list[str]:
    metadata = obj.get("metadata", {})
    name = metadata.get("name", "")
    problems = [] if DNS_SUBDOMAIN.match(name) else [f"metadata.name {name!r} is not a DNS subdomain"]
    if metadata.get("labels", {}).get("app.kubernetes.io/name") != "flashduty-bridge":
        problems.append("metadata.labels: app.kubernetes.io/name: flashduty-bridge is missing")
    crd = CRD_VALIDATORS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd is not None:
        problems += _keys("metadata", metadata, {"name", "namespace", "labels", "annotations"}, {"name"})
        return problems + crd(obj)
    return problems + validate_core(obj)
