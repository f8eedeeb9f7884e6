"""The deployment artefacts besides the Helm chart, checked without a cluster and without Docker.

* Prometheus rules (the chart's ``files/flashduty-bridge-rules.yaml``, a plain rule file):
  ``promtool check rules``, then ``promtool test rules`` with the unit tests in
  ``tests/fixtures/prometheus/bridge-rules.test.yml``.
* Rules and dashboard (the chart's ``files/flashduty-bridge.json``) reference only metrics
  the bridge exports, as built by ``bridge.metrics.Metrics`` on a fresh registry (never a
  hand-written list).
* Every bridge config in ``config/`` passes ``check-config``; the Alertmanager snippets
  pass ``amtool check-config``; the Grafana provisioning file has the expected shape.
* Dockerfile: read, checked, and its ENTRYPOINT + CMD run as written, with the config it
  ships, on a read-only root filesystem (a private mount namespace), to readiness and
  through a SIGTERM drain.

The chart itself (helm lint, the rendered objects, their fit with the image) is checked
by ``tests/test_helm.py``.

Tools: ``promtool`` (Debian ``prometheus``), ``amtool`` (Debian ``prometheus-alertmanager``),
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
from pathlib import Path
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

DEPLOY_TOOLS = "BRIDGE_REQUIRE_DEPLOY_TOOLS"
BRIDGE_CONFIGS = sorted((ROOT / "config").glob("*.yaml"))
ALERTMANAGER_SNIPPETS = sorted((ROOT / "config" / "alertmanager").glob("*.yml"))
GRAFANA_PROVISIONING = ROOT / "config" / "grafana" / "contact-point.yaml"


# -- tools ---------------------------------------------------------------------------


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


def container_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / "container.yaml").read_text())
    return data


def image() -> dockerfile.Stage:
    return dockerfile.parse(artefacts.DOCKERFILE).final


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
    # This file hands Grafana's alerts to Alertmanager; a "webhook" contact point posting to
    # the bridge's /grafana is the other way (README, "Deploy on Kubernetes").
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
    chart = yaml.safe_load((artefacts.CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version  # the chart's default image tag
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
