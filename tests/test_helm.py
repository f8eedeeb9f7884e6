"""The Helm chart (deploy/helm/flashduty-bridge), checked with the real helm and no cluster.

* ``helm lint --strict`` with the default values and with every values file in the chart's
  ``ci/`` folder (the chart-testing convention: one per storage mode, one with every
  optional part on, one with a multi-team config).
* ``helm template`` for the same matrix; every object validated strictly against the
  Kubernetes schemas of the oldest supported and the newest bundled version (the
  Prometheus Operator objects field by field), then asserted: the workload kind per storage
  mode, selectors that select the pods, a locked-down security context on every container,
  the pod as the Dockerfile's image expects it, no secret material in any ConfigMap.
* The values: the schema refuses wrong types, unknown modes and unknown keys; the chart
  refuses more than one SQLite pod, PostgreSQL without its Secret, and secrets in values.
* The rendered bridge config passes ``check-config`` as the pod sees it (Secret files and
  variables in place); the default one is the image's own config.
* The PrometheusRule embeds the rule file the promtool tests run (tests/test_deploy.py);
  the dashboard ConfigMap is the dashboard file.

helm 4 and kubectl 1.34 come from PyPI (tests/support/helm.py); without them these tests
skip, unless ``BRIDGE_REQUIRE_DEPLOY_TOOLS=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

import bridge
from tests.support import artefacts, dockerfile, helm
from tests.support.artefacts import ROOT
from tests.support.helm import CHART, NAMESPACE, RELEASE
from tests.support.manifests import K8S_OLDEST, validate_object

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
#: Matrix case → helm arguments. "default" is the chart with no values at all.
CASES: dict[str, list[str]] = {
    "default": [],
    **{path.name.removesuffix("-values.yaml"): ["--values", str(path)] for path in CI_VALUES},
}
CORE = ["ConfigMap", "PodDisruptionBudget", "Service", "ServiceAccount"]
SQLITE = sorted([*CORE, "StatefulSet"])
POSTGRESQL = sorted([*CORE, "Deployment"])
#: Case → the kinds it must render (every ci file must be listed here).
KINDS = {
    "default": SQLITE,
    "sqlite": SQLITE,
    "custom-config": SQLITE,
    "postgresql": POSTGRESQL,
    "all-on": sorted([*POSTGRESQL, "ConfigMap", "Ingress", "NetworkPolicy", "PrometheusRule", "ServiceMonitor"]),
}
#: Case → pods it must run.
REPLICAS = {"default": 1, "sqlite": 1, "custom-config": 1, "postgresql": 3, "all-on": 2}
SECRET_KEYS = frozenset({"integration_key", "token", "password", "secret", "dsn"})
VARIABLE = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*\})?$")
PATHS = {
    "config": "/etc/flashduty-bridge",
    "data": "/var/lib/flashduty-bridge",
    "secrets": "/var/run/secrets/flashduty-bridge",
}


# -- rendering -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> helm.Tools:
    return helm.tools()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="module")
def rendered(tools: helm.Tools, home: Path) -> dict[str, list[dict[str, Any]]]:
    """Every case of the matrix rendered once: case → its objects."""
    result = {}
    for case, args in CASES.items():
        done = helm.template(tools.helm, home, *args)
        assert done.returncode == 0, f"helm template ({case}) failed:\n{done.stderr}"
        result[case] = helm.objects(done.stdout)
    return result


def refused(tools: helm.Tools, home: Path, *args: str) -> str:
    """helm's error for values the chart must refuse."""
    done = helm.template(tools.helm, home, *args)
    assert done.returncode != 0, f"helm template {' '.join(args)} was accepted"
    return done.stderr


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]
    return found


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = workload(objects)["spec"]["template"]["spec"]
    return spec


def bridge_config(objects: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    config_map = one(objects, "ConfigMap", f"{RELEASE}-config")
    text = config_map["data"]["config.yaml"]
    return text, yaml.safe_load(text)


def values_file(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_every_ci_values_file_is_in_the_matrix() -> None:
    assert set(CASES) == set(KINDS) == set(REPLICAS)
    assert {"sqlite", "postgresql", "all-on"} <= set(CASES)


# -- the chart's metadata and values ---------------------------------------------------


def test_chart_metadata_matches_the_package_and_artifact_hub() -> None:
    chart = values_file(CHART / "Chart.yaml")
    assert (chart["apiVersion"], chart["name"], chart["type"]) == ("v2", "flashduty-bridge", "application")
    assert chart["appVersion"] == bridge.__version__
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?", chart["version"])
    assert chart["kubeVersion"] == f">={K8S_OLDEST}.0-0"
    assert values_file(CHART / "values.yaml")["image"]["tag"] == "", "the image tag defaults to appVersion"
    annotations = chart["annotations"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'license = {{ text = "{annotations["artifacthub.io/license"]}" }}' in pyproject
    assert annotations["artifacthub.io/category"] in {"monitoring-logging", "integration-delivery"}
    assert annotations["artifacthub.io/prerelease"] in ("true", "false")
    changes = yaml.safe_load(annotations["artifacthub.io/changes"])
    assert changes and all(set(c) == {"kind", "description"} for c in changes)
    assert {c["kind"] for c in changes} <= {"added", "changed", "deprecated", "removed", "fixed", "security"}


def _key_lines(node: yaml.Node, path: tuple[str, ...], found: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found[(*path, key.value)] = key.start_mark.line
            _key_lines(value, (*path, key.value), found)


def _schema_properties(schema: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every value the chart defines: the properties of the schema's closed objects."""
    found = {}
    for name, sub in schema.get("properties", {}).items():
        found[(*path, name)] = sub
        if sub.get("additionalProperties") is False:
            found |= _schema_properties(sub, (*path, name))
    return found


def test_every_value_is_documented_in_values_yaml_and_typed_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False, "unknown values must be refused"
    defined = {path: sub for path, sub in _schema_properties(schema).items() if path != ("global",)}
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    keys: dict[tuple[str, ...], int] = {}
    _key_lines(yaml.compose(text), (), keys)
    # Each value the schema defines is in values.yaml, with a comment line right above it.
    for path in defined:
        assert path in keys, f"{'.'.join(path)} is in the schema but not in values.yaml"
        assert lines[keys[path] - 1].strip().startswith("#"), f"{'.'.join(path)} has no comment in values.yaml"
    # ... and each value of values.yaml inside the chart's own objects is in the schema.
    closed = {path[:-1] for path in defined} | {()}
    for path in keys:
        if path[:-1] in closed:
            assert path in defined, f"{'.'.join(path)} is in values.yaml but not in the schema"
    undescribed = [".".join(p) for p, sub in defined.items() if not sub.get("description")]
    assert undescribed == []


# -- helm lint -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict_passes(tools: helm.Tools, home: Path, case: str) -> None:
    done = helm.run([tools.helm, "lint", "--strict", str(CHART), *CASES[case]], home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


# -- every object validates ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_validates_against_two_kubernetes_versions(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    objects = rendered[case]
    problems = {f"{o['kind']}/{o['metadata']['name']}": validate_object(o) for o in objects}
    assert {name: found for name, found in problems.items() if found} == {}
    assert sorted(o["kind"] for o in objects) == KINDS[case]
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert namespaces <= {NAMESPACE, "grafana"}  # the dashboard may go where the sidecar looks


def test_the_validators_catch_mistakes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Guard against a validator that passes everything."""
    service = one(rendered["default"], "Service")
    typo = json.loads(json.dumps(service))
    typo["spec"]["ports"][0]["prot"] = 1
    assert any("prot" in problem for problem in validate_object(typo))
    statefulset = json.loads(json.dumps(workload(rendered["default"])))
    statefulset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    assert any("readOnlyRootFileSystem" in problem for problem in validate_object(statefulset))
    rule = json.loads(json.dumps(one(rendered["all-on"], "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    rule["spec"]["groups"][0]["rules"][1]["record"] = "x"
    assert len(validate_object(rule)) == 2


# -- the workload per storage mode -----------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_the_storage_mode_decides_the_workload(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    objects = rendered[case]
    found = workload(objects)
    spec = found["spec"]
    assert spec["replicas"] == REPLICAS[case]
    volumes = spec["template"]["spec"]["volumes"]
    assert not any("persistentVolumeClaim" in v or "hostPath" in v for v in volumes)
    _, config = bridge_config(objects)
    if found["kind"] == "StatefulSet":
        # SQLite: one pod, its outbox on its own claim, kept when the StatefulSet goes.
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["spec"]["resources"]["requests"]["storage"] in ("1Gi", "2Gi")
        assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
        assert spec["serviceName"] == one(objects, "Service")["metadata"]["name"]
        assert config["storage"]["path"] == PATHS["data"] and "dsn_file" not in config["storage"]
        assert "topologySpreadConstraints" not in spec["template"]["spec"]
    else:
        # PostgreSQL: interchangeable pods, no volume, spread over nodes, never all down.
        assert found["kind"] == "Deployment"
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        spread = {c["topologyKey"]: c for c in spec["template"]["spec"]["topologySpreadConstraints"]}
        assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
        assert spread["kubernetes.io/hostname"]["maxSkew"] == 1
        assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] < spec["replicas"]
        assert "path" not in config["storage"]
        dsn = PurePosixPath(config["storage"]["dsn_file"])
        mounts = {m["mountPath"]: m for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]}
        secrets = next(v for v in volumes if v["name"] == mounts[str(dsn.parent)]["name"])
        values = values_file(CHART / "ci" / f"{case}-values.yaml")["storage"]["postgresql"]
        (source,) = [s["secret"] for s in secrets["projected"]["sources"] if s["secret"].get("items")]
        assert source["name"] == values["existingSecret"]
        assert source["items"] == [{"key": values.get("secretKey", "dsn"), "path": dsn.name}]


@pytest.mark.parametrize("case", CASES)
def test_selectors_select_the_pods_and_references_resolve(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    objects = rendered[case]
    found = workload(objects)
    template = found["spec"]["template"]
    labels = template["metadata"]["labels"]
    service = one(objects, "Service")
    selectors = [
        found["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *[c["labelSelector"]["matchLabels"] for c in template["spec"].get("topologySpreadConstraints", [])],
        *[o["spec"]["podSelector"]["matchLabels"] for o in objects if o["kind"] == "NetworkPolicy"],
    ]
    for selector in selectors:
        assert selector and selector.items() <= labels.items()
    # The selector is what never changes: no version in it.
    assert "app.kubernetes.io/version" not in found["spec"]["selector"]["matchLabels"]
    port = next(p for p in template["spec"]["containers"][0]["ports"] if p["name"] == "http")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for volume in template["spec"]["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names
    assert ("ServiceAccount", template["spec"]["serviceAccountName"]) in names
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        # up{job="flashduty-bridge"} in the rules: the job comes from this Service label.
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "flashduty-bridge"
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        (ingress_rule,) = policy["spec"]["ingress"]
        assert ingress_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
        assert {53, 443} <= egress
        if found["kind"] == "Deployment":
            assert 5432 in egress  # the database


@pytest.mark.parametrize("case", CASES)
def test_every_container_is_locked_down(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    spec = pod(rendered[case])
    assert spec["automountServiceAccountToken"] is False
    service_account = one(rendered[case], "ServiceAccount")
    assert service_account["automountServiceAccountToken"] is False
    pod_security = spec["securityContext"]
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    containers = [*spec["containers"], *spec.get("initContainers", [])]
    assert containers
    for container in containers:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security.get("privileged", False) is False
        assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add")
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
        seccomp = security.get("seccompProfile", pod_security["seccompProfile"])
        assert seccomp == {"type": "RuntimeDefault"}
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
        probes = {name: container[f"{name}Probe"]["httpGet"] for name in ("liveness", "readiness", "startup")}
        assert probes == {
            "liveness": {"path": "/-/healthy", "port": "http"},
            "readiness": {"path": "/-/ready", "port": "http"},
            "startup": {"path": "/-/healthy", "port": "http"},
        }
    if workload(rendered[case])["kind"] == "StatefulSet":
        assert spec["containers"][0]["resources"]["limits"]["memory"] == "256Mi"


@pytest.mark.parametrize("case", CASES)
def test_pods_run_the_image_as_the_dockerfile_says(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    objects = rendered[case]
    spec = pod(objects)
    container = spec["containers"][0]
    final = dockerfile.parse(artefacts.DOCKERFILE).final
    assert container["command"] + container["args"] == final.command
    uid, gid = (int(part) for part in (final.user or "").split(":"))
    security = spec["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (uid, gid, gid)
    image_tag = container["image"].rsplit(":", 1)[1]
    assert image_tag == dockerfile.parse(artefacts.DOCKERFILE).stage_args(final)["VERSION"]
    assert str(container["ports"][0]["containerPort"]) == final.last("EXPOSE").args  # type: ignore[union-attr]

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The config file the command names comes from the chart's ConfigMap.
    config_path = PurePosixPath(final.command[final.command.index("--config") + 1])
    assert "configMap" in volumes[mounts[str(config_path.parent)]["name"]]
    # Writable: the outbox volume (SQLite only, where the image's VOLUME is) and /tmp.
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    if workload(objects)["kind"] == "StatefulSet":
        assert writable == {PATHS["data"], "/tmp"}
        assert final.volumes == [PATHS["data"]] and final.workdir == PATHS["data"]
        claims = {c["metadata"]["name"] for c in workload(objects)["spec"]["volumeClaimTemplates"]}
        assert mounts[PATHS["data"]]["name"] in claims
    else:
        assert writable == {"/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    env = {e["name"]: e for e in container["env"]}
    assert env["PYTHONDONTWRITEBYTECODE"]["value"] == final.env["PYTHONDONTWRITEBYTECODE"] == "1"
    # Secrets reach the pod only as Secret references: env from secretKeyRef, read-only files.
    for variable in env.values():
        if "valueFrom" in variable:
            assert set(variable["valueFrom"]) == {"secretKeyRef"}
    if PATHS["secrets"] in mounts:
        assert mounts[PATHS["secrets"]]["readOnly"] is True
        sources = volumes[mounts[PATHS["secrets"]]["name"]]["projected"]["sources"]
        assert all(set(source) == {"secret"} for source in sources)
    # The bridge drains for up to 15 s and gives open requests 30 s: do not SIGKILL it first.
    assert spec["terminationGracePeriodSeconds"] > 30


def test_the_integration_key_comes_from_existing_secret_or_the_bridge_runs_dry(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    default = {e["name"] for e in pod(rendered["default"])["containers"][0]["env"]}
    assert "FLASHDUTY_INTEGRATION_KEY" not in default
    assert not any(v["name"] == "secrets" for v in pod(rendered["default"])["volumes"])
    env = {e["name"]: e for e in pod(rendered["sqlite"])["containers"][0]["env"]}
    reference = env["FLASHDUTY_INTEGRATION_KEY"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "flashduty-bridge", "key": "integration-key"}
    (source,) = next(v for v in pod(rendered["sqlite"])["volumes"] if v["name"] == "secrets")["projected"]["sources"]
    assert source == {"secret": {"name": "flashduty-bridge"}}  # every key, as a file


# -- secrets ---------------------------------------------------------------------------


def secret_problems(node: Any, path: str = "config") -> list[str]:
    """Secret material in a bridge config: literal values of secret keys, credentials in URLs."""
    problems = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key in SECRET_KEYS and not (isinstance(value, str) and VARIABLE.match(value)):
                problems.append(f"{where}: a literal secret")
            else:
                problems += secret_problems(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            problems += secret_problems(value, f"{path}[{index}]")
    elif isinstance(node, str) and (
        re.search(r"[?&]integration_key=[^$&]", node) or re.match(r"^[a-z][-+.a-z0-9]*://[^/@]*:[^/@]*@", node, re.I)
    ):
        problems.append(f"{path}: a URL with credentials")
    return problems


def test_the_secret_check_catches_secrets() -> None:
    assert secret_problems({"admin": {"token": "${T}"}, "a": [{"password": ""}]}) == []
    assert secret_problems({"admin": {"token": "hunter2"}}) == ["config.admin.token: a literal secret"]
    assert secret_problems({"storage": {"dsn": "postgresql://u:p@h/db"}})
    assert secret_problems({"flashduty": {"url": "https://x/y?integration_key=k"}})
    assert secret_problems({"d": [{"url": "https://u:p@h/"}]})


@pytest.mark.parametrize("case", CASES)
def test_no_secret_material_in_any_rendered_config_map(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for config_map in (o for o in rendered[case] if o["kind"] == "ConfigMap"):
        for name, text in config_map["data"].items():
            document = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            assert secret_problems(document) == [], f"{config_map['metadata']['name']}/{name}"
            assert "postgresql://" not in text and "postgres://" not in text


SECRET = "hunter2-SECRET-e9f1"
#: --set arguments → the key path the chart must name when it refuses them.
SECRETS_IN_VALUES = {
    "admin token": (f"config.admin.token={SECRET}", "config.admin.token"),
    "inbound auth": (f"config.alertmanager.auth.password={SECRET}", "config.alertmanager.auth.password"),
    "integration key": (f"config.flashduty.integration_key={SECRET}", "config.flashduty.integration_key"),
    "route destination key": (f"config.destinations.db.integration_key={SECRET}", "config.destinations.db"),
    "source token": (f"config.sources.uptime.auth.token={SECRET}", "config.sources.uptime.auth.token"),
    "dsn": (f"config.storage.dsn=postgresql://bridge:{SECRET}@db/bridge", "config.storage.dsn"),
    "key in a URL": (
        f"config.flashduty.url=https://api.flashcat.cloud/x?integration_key={SECRET}",
        "config.flashduty.url",
    ),
    "password in a URL": (
        f"config.destinations.db.url=https://user:{SECRET}@example.com/x",
        "config.destinations.db.url",
    ),
    "secret in a list": (f"config.routes[0].labels.add.password={SECRET}", "config.routes[0].labels.add.password"),
}


@pytest.mark.parametrize("name", SECRETS_IN_VALUES)
def test_the_chart_refuses_secrets_in_values_without_echoing_them(tools: helm.Tools, home: Path, name: str) -> None:
    argument, where = SECRETS_IN_VALUES[name]
    message = refused(tools, home, "--set", argument)
    assert where in message
    assert SECRET not in message


# -- the values schema and the chart's own refusals -------------------------------------

#: Bad values → a fragment of helm's message. The schema refuses types, enums, unknown keys;
#: the templates refuse combinations, with a message that says what to do.
BAD_VALUES = {
    "wrong type": (["--set", "replicaCount=three"], "/replicaCount"),
    "unknown storage mode": (["--set", "storage.mode=mysql"], "/storage/mode"),
    "unknown value": (["--set", "replicas=2"], "'replicas' not allowed"),
    "unknown nested value": (["--set", "serviceMonitor.intervall=1m"], "'intervall' not allowed"),
    "bad pull policy": (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    "grace period too short": (["--set", "terminationGracePeriodSeconds=10"], "/terminationGracePeriodSeconds"),
    "two SQLite pods": (["--set", "replicaCount=2"], "storage.mode sqlite runs exactly one pod"),
    "PostgreSQL without its Secret": (["--set", "storage.mode=postgresql"], "storage.postgresql.existingSecret"),
    "listen in config": (["--set", "config.listen=0.0.0.0:80"], "config.listen is set by the chart"),
    "storage path in config": (["--set", "config.storage.path=/data"], "config.storage.path is set by the chart"),
}


@pytest.mark.parametrize("name", BAD_VALUES)
def test_helm_refuses_bad_values(tools: helm.Tools, home: Path, name: str) -> None:
    args, fragment = BAD_VALUES[name]
    assert fragment in refused(tools, home, *args)


def test_what_the_refusals_allow_renders(tools: helm.Tools, home: Path) -> None:
    """The refusals above are precise: the nearest good values render."""
    for args in (
        ["--set", "replicaCount=1"],
        [
            "--set",
            "storage.mode=postgresql",
            "--set",
            "storage.postgresql.existingSecret=db",
            "--set",
            "replicaCount=5",
        ],
        ["--set", "config.storage.max_pending=5000", "--set", "config.admin.token=${BRIDGE_ADMIN_TOKEN}"],
        ["--set", "config.flashduty.integration_key_file=/var/run/secrets/flashduty-bridge/integration-key"],
    ):
        done = helm.template(tools.helm, home, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"


# -- the bridge config -------------------------------------------------------------------


def pod_view(objects: list[dict[str, Any]], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The rendered config as the pod sees it, on this machine.

    The Secret's files and variables exist (with made-up values), the pod's paths are moved
    under ``tmp_path``; nothing else changes.
    """
    text, _ = bridge_config(objects)
    spec = pod(objects)
    container = spec["containers"][0]
    moved = {path: tmp_path / name for name, path in PATHS.items()}
    for directory in moved.values():
        directory.mkdir(parents=True, exist_ok=True)
    for path, target in sorted(moved.items(), key=lambda item: -len(item[0])):
        text = text.replace(path, str(target))
    # Every file the config names under the Secret mount exists, as the kubelet would make it.
    for match in re.finditer(re.escape(str(moved[PATHS["secrets"]])) + r"/([-._a-zA-Z0-9]+)", text):
        name = match.group(1)
        content = os.environ.get("BRIDGE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
        (moved[PATHS["secrets"]] / name).write_text(content if name == "postgresql-dsn" else f"made-up-{name}")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "FLASHDUTY_INTEGRATION_KEY"}
    for variable in container["env"]:
        if "valueFrom" in variable:
            env[variable["name"]] = f"made-up-{variable['valueFrom']['secretKeyRef']['key']}"
        else:
            env[variable["name"]] = variable["value"]
    return config, env


def check_config(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_rendered_config_passes_check_config_as_the_pod_sees_it(
    rendered: dict[str, list[dict[str, Any]]], case: str, tmp_path: Path
) -> None:
    config, env = pod_view(rendered[case], tmp_path)
    done = check_config(config, env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert ": OK (" in done.stdout
    # The Deployment's pods run on the PostgreSQL outbox the Secret names, never on a local directory.
    postgresql = workload(rendered[case])["kind"] == "Deployment"
    assert ("outbox in postgresql://" in done.stdout) == postgresql, done.stdout
    assert "unset" not in output.lower(), "every ${VAR} of the config comes from the pod's env"


def test_default_config_is_the_image_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Same bridge with or without the chart: the ConfigMap holds config/container.yaml's settings."""
    _, config = bridge_config(rendered["default"])
    assert config == yaml.safe_load((ROOT / "config" / "container.yaml").read_text())


def test_custom_config_reaches_the_bridge_and_its_secret_files_are_mounted(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    _, config = bridge_config(rendered["custom-config"])
    values = values_file(CHART / "ci" / "custom-config-values.yaml")
    for key, value in values["config"].items():
        if key != "storage":
            assert config[key] == value
    assert config["storage"] == {**values["config"]["storage"], "path": PATHS["data"]}
    key_file = PurePosixPath(config["destinations"]["db"]["integration_key_file"])
    mounts = {m["mountPath"]: m["name"] for m in pod(rendered["custom-config"])["containers"][0]["volumeMounts"]}
    assert mounts[str(key_file.parent)] == "secrets"
    env = {e["name"] for e in pod(rendered["custom-config"])["containers"][0]["env"]}
    variables = set(re.findall(r"\$\{(\w+)\}", json.dumps(config)))
    assert variables and variables <= env


def checksum(objects: list[dict[str, Any]]) -> str:
    value: str = workload(objects)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


def test_a_config_change_rolls_the_pods_and_nothing_else_does(tools: helm.Tools, home: Path) -> None:
    def render(*args: str) -> list[dict[str, Any]]:
        done = helm.template(tools.helm, home, *args)
        assert done.returncode == 0, done.stderr
        return helm.objects(done.stdout)

    base = checksum(render())
    assert checksum(render()) == base
    assert checksum(render("--set", "podAnnotations.team=sre")) == base
    assert checksum(render("--set", "config.log_level=debug")) != base
    assert checksum(render("--set", "config.delivery.workers=4")) != base


# -- upgrades --------------------------------------------------------------------------


def immutable(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields Kubernetes refuses to change on an existing workload."""
    found = workload(objects)
    spec = found["spec"]
    fields = {"kind": found["kind"], "name": found["metadata"]["name"], "selector": spec["selector"]}
    if found["kind"] == "StatefulSet":
        fields |= {k: spec.get(k) for k in ("serviceName", "podManagementPolicy", "volumeClaimTemplates")}
    return fields


def test_an_upgrade_to_a_new_chart_version_changes_no_immutable_field(
    tools: helm.Tools, home: Path, tmp_path: Path
) -> None:
    newer = tmp_path / "flashduty-bridge"
    shutil.copytree(CHART, newer)
    chart = values_file(newer / "Chart.yaml")
    chart["version"], chart["appVersion"] = "99.1.0", "99.0.0"
    (newer / "Chart.yaml").write_text(yaml.safe_dump(chart))
    for case in ("default", "postgresql"):
        old = helm.template(tools.helm, home, *CASES[case])
        new = helm.template(tools.helm, home, *CASES[case], chart=newer)
        assert old.returncode == new.returncode == 0, old.stderr + new.stderr
        assert old.stdout != new.stdout  # the new version did change something (labels, image)
        assert immutable(helm.objects(new.stdout)) == immutable(helm.objects(old.stdout))


# -- monitoring parts ------------------------------------------------------------------


def test_prometheus_rule_is_the_rule_file_that_promtool_tests(rendered: dict[str, list[dict[str, Any]]]) -> None:
    rule = one(rendered["all-on"], "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(artefacts.RULES.read_text())
    assert rule["spec"]["groups"] == artefacts.rule_groups()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(rendered["all-on"], "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_config_map_is_the_dashboard_file_for_the_sidecar(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dashboard = one(rendered["all-on"], "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Flashduty"}
    assert json.loads(dashboard["data"]["flashduty-bridge.json"]) == artefacts.dashboard()


# -- where senders point ---------------------------------------------------------------


def service_url(objects: list[dict[str, Any]], path: str) -> str:
    service = one(objects, "Service")
    port = service["spec"]["ports"][0]["port"]
    return f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}{path}"


def bridge_urls(snippet: Path) -> list[str]:
    config = yaml.safe_load(snippet.read_text())
    return [
        webhook["url"]
        for receiver in config["receivers"]
        for webhook in receiver.get("webhook_configs", [])
        if webhook["url"].endswith("/alertmanager")
    ]


def test_alertmanager_snippets_point_at_the_release_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    snippets = sorted((ROOT / "config" / "alertmanager").glob("*.yml"))
    assert snippets
    for case in ("default", "postgresql"):  # one Service, one URL, whatever the mode
        url = service_url(rendered[case], "/alertmanager")
        for snippet in snippets:
            assert bridge_urls(snippet) == [url], snippet.name


def notes(tools: helm.Tools, home: Path, *args: str) -> str:
    """The NOTES helm prints after an install (a client-side dry run: no cluster)."""
    done = helm.run(
        [tools.helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args], home
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\nNOTES:\n", 1)[1]


@pytest.mark.parametrize("case", ["default", "sqlite", "postgresql"])
def test_notes_say_where_to_point_alertmanager_and_grafana(
    tools: helm.Tools, home: Path, rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    text = notes(tools, home, *CASES[case])
    objects = rendered[case]
    # The Alertmanager receiver in the notes is the amtool-checked one, for this release.
    block = re.search(r"\n(  receivers:\n(?:    .*\n)+)", text)
    assert block is not None, text
    (receiver,) = yaml.safe_load(block.group(1))["receivers"]
    shipped = yaml.safe_load((ROOT / "config" / "alertmanager" / "receiver.yml").read_text())
    (expected,) = [r for r in shipped["receivers"] if r["name"] == shipped["route"]["receiver"]]
    assert receiver == expected
    assert receiver["webhook_configs"][0]["url"] == service_url(objects, "/alertmanager")
    assert f"\n  {service_url(objects, '/grafana')}\n" in text
    kind = workload(objects)["kind"].lower()
    assert f"rollout status {kind}/{workload(objects)['metadata']['name']}" in text
    assert ("DRY RUN" in text) == (case == "default")
    if kind == "deployment":
        assert f"a Deployment of {REPLICAS[case]} pods" in text
