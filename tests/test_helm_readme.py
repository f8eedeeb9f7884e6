"""The README's deploy and operate sections, run: every command and values file in them.

The sections "Deploy on Kubernetes" (with "Run several replicas") and "Operate" are read
block by block, in order, as a reader would follow them, on a machine without a cluster:

* YAML blocks are files (their first line names them: ``# values-teams.yaml``), used by
  the commands that name them; a block without a name fails the test.
* ``kubectl create namespace|secret`` run for real as client-side dry runs: the Secrets
  they make are the ones the chart's objects must find (names and keys).
* ``helm install|upgrade --install`` run as ``helm template`` with the same arguments; every
  object is validated as in tests/test_helm.py, and every Secret, key and key file it
  references was created by an earlier command.
* Commands that need a cluster (``rollout status``, ``port-forward``) or a running pod
  (``curl``) are checked against what the last install rendered: the object exists, the
  port is the Service's.
* ``kustomize build --enable-helm`` renders the README's kustomization with kubectl's
  kustomize and must give what helm gives for the same values.
* ``promtool check rules``, ``flashduty-bridge deadletter`` (its arguments), ``docker``
  (tag, volume and port against the Dockerfile) are checked too.

Any other command fails the test: a new example must come with its check. The values
table is compared with values.yaml, and the alerts table with the rule file.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import artefacts, dockerfile, helm
from tests.support.artefacts import ROOT
from tests.support.helm import CHART
from tests.support.manifests import validate_object
from tests.support.procs import LOOPBACK, free_port
from tests.support.tools import find_tool

README = ROOT / "README.md"
SECTIONS = ("Deploy on Kubernetes", "Operate")
SECRET_FILES = "/var/run/secrets/flashduty-bridge/"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the sections, in order."""
    return [(m.group(1), m.group(2)) for title in SECTIONS for m in FENCE.finditer(section(title))]


def commands(script: str) -> list[str]:
    """The shell block's commands: continuation lines joined, blank lines dropped."""
    return [line.strip() for line in script.replace("\\\n", " ").splitlines() if line.strip()]


@dataclass
class Reader:
    """What the reader has made so far, following the sections in order."""

    tools: helm.Tools
    home: Path
    tmp: Path
    files: dict[str, str] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)
    secrets: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    objects: list[dict[str, Any]] = field(default_factory=list)
    forwarded: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)

    def kubectl_bin(self) -> Path:
        directory = self.tmp / "bin"
        if not directory.exists():
            directory.mkdir()
            (directory / "kubectl").symlink_to(self.tools.kubectl)
        return directory

    # -- kubectl create, for real -------------------------------------------------------

    def create(self, line: str) -> None:
        assert "#" not in line, line
        pipe = " | kubectl apply -f -"
        if line.endswith(pipe):
            line = line.removesuffix(pipe)
            assert "--dry-run=client -o yaml" in line
        else:
            line += " --dry-run=client -o yaml"
        env = helm.isolated_env(self.home) | {"PATH": f"{self.kubectl_bin()}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env, timeout=60, check=False)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        created = yaml.safe_load(done.stdout)
        if created["kind"] == "Namespace":
            self.namespaces.add(created["metadata"]["name"])
            return
        assert created["kind"] == "Secret"
        namespace = created["metadata"]["namespace"]
        assert namespace in self.namespaces, f"{line}: create the namespace first"
        self.secrets[(namespace, created["metadata"]["name"])] = set(created.get("data", {}))

    # -- helm -----------------------------------------------------------------------------

    def install(self, tokens: list[str]) -> None:
        args = tokens[2:]
        if args[0] == "--install":
            assert tokens[1] == "upgrade", tokens
            args = args[1:]
        release, chart, *options = args
        assert (ROOT / chart).resolve() == CHART
        options = [
            str(self.file(o)) if prev in ("--values", "-f") else o
            for prev, o in zip(["", *options], options, strict=False)
        ]
        done = helm.run([self.tools.helm, "template", release, chart, *options], self.home, cwd=ROOT)
        assert done.returncode == 0, f"{shlex.join(tokens)}\n{done.stderr}"
        self.objects = helm.objects(done.stdout)
        problems = {f"{o['kind']}/{o['metadata']['name']}": validate_object(o) for o in self.objects}
        assert {name: found for name, found in problems.items() if found} == {}
        namespace = options[options.index("--namespace") + 1]
        assert namespace in self.namespaces
        self.check_secrets(namespace)

    def file(self, name: str) -> Path:
        assert name in self.files, f"{name} is not a file of the README (a YAML block starting '# {name}')"
        path = self.tmp / name
        path.write_text(self.files[name])
        return path

    def check_secrets(self, namespace: str) -> None:
        """Every Secret, key and key file the pods use was created by a README command."""
        for obj in self.objects:
            if obj["kind"] not in ("StatefulSet", "Deployment"):
                continue
            spec = obj["spec"]["template"]["spec"]
            for variable in spec["containers"][0]["env"]:
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["key"] in self.secrets[(namespace, reference["name"])], reference
            files = set()
            for volume in spec["volumes"]:
                for source in volume.get("projected", {}).get("sources", []):
                    keys = self.secrets[(namespace, source["secret"]["name"])]
                    items = source["secret"].get("items")
                    for item in items or [{"key": key, "path": key} for key in keys]:
                        assert item["key"] in keys, item
                        files.add(item["path"])
            config = next(o for o in self.objects if o["kind"] == "ConfigMap" and "config.yaml" in o["data"])
            for used in re.findall(re.escape(SECRET_FILES) + r"([-._a-zA-Z0-9]+)", config["data"]["config.yaml"]):
                assert used in files, f"{SECRET_FILES}{used} is not a key of the mounted Secrets"

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"].lower() == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"the last install renders no {kind}/{name}"
        return found[0]

    # -- kustomize ------------------------------------------------------------------------

    def kustomize(self) -> None:
        directory = self.tmp / "kustomize"
        directory.mkdir()
        kustomization = yaml.safe_load(self.files["kustomization.yaml"])
        (directory / "kustomization.yaml").write_text(self.files["kustomization.yaml"])
        # chartHome points into "a checkout (or a vendored copy)": a copy of this chart there
        # (kustomize refuses files outside the kustomization's directory, symlinks resolved).
        checkout, *inside = Path(kustomization["helmGlobals"]["chartHome"]).parts
        assert Path(*inside) == CHART.parent.relative_to(ROOT), "chartHome: the chart's folder in the checkout"
        shutil.copytree(CHART, directory / checkout / Path(*inside) / CHART.name)
        # kubectl 1.34 bundles kustomize 5.7.1, which asks `helm version -c --short` (a flag helm 4
        # dropped) and accepts only a "v3" answer (kustomize#6013; kustomize 5.8.1, which the
        # README asks for, runs helm 4). The shim answers that one question as helm 3 would;
        # everything else is the real helm 4, and the output is compared with helm's own below.
        shim = self.tmp / "helm-for-kustomize-5.7"
        shim.write_text(f'#!/bin/sh\n[ "$1" = version ] && echo v3.19.0 && exit 0\nexec {self.tools.helm} "$@"\n')
        shim.chmod(0o755)
        done = helm.run(
            [self.tools.kubectl, "kustomize", "--enable-helm", "--helm-command", str(shim), str(directory)], self.home
        )
        assert done.returncode == 0, done.stderr
        (chart,) = kustomization["helmCharts"]
        values = self.tmp / "inline-values.yaml"
        values.write_text(yaml.safe_dump(chart["valuesInline"]))
        direct = helm.run(
            [self.tools.helm, "template", chart["releaseName"], str(CHART), "--namespace", chart["namespace"],
             "--values", str(values)],
            self.home,
        )  # fmt: skip
        assert direct.returncode == 0, direct.stderr

        def key(obj: dict[str, Any]) -> tuple[str, str]:
            return obj["kind"], obj["metadata"]["name"]

        assert sorted(helm.objects(done.stdout), key=key) == sorted(helm.objects(direct.stdout), key=key)

    # -- one command ----------------------------------------------------------------------

    def run(self, line: str) -> None:
        tokens = shlex.split(line, comments=True)
        if tokens[-1] == "&":
            tokens = tokens[:-1]
        words = [t for t in tokens if not t.startswith("-")]
        if tokens[0] == "kubectl" and "create" in tokens:
            self.create(line)
        elif tokens[:2] in (["helm", "install"], ["helm", "upgrade"]):
            self.install(tokens)
        elif tokens[0] == "kubectl" and "rollout" in tokens:
            kind, name = words[-1].split("/")
            self.named(kind, name)
        elif tokens[0] == "kubectl" and "port-forward" in tokens:
            kind, name = words[-2].split("/")
            service = self.named(kind, name)
            self.forwarded = int(words[-1])
            assert self.forwarded in [p["port"] for p in service["spec"]["ports"]]
        elif tokens[0] == "curl":
            assert re.fullmatch(rf"localhost:{self.forwarded}/-/ready", tokens[-1]), "curl the port-forward"
        elif tokens[:2] == ["kustomize", "build"]:
            self.kustomize()
        elif tokens[:3] == ["promtool", "check", "rules"]:
            self.promtool(tokens)
        elif tokens[0] == "export":
            name, _, value = tokens[1].partition("=")
            self.env[name] = value
        elif tokens[0] == "flashduty-bridge":
            self.bridge_cli(tokens)
        elif tokens[0] == "docker":
            self.docker(tokens)
        else:
            pytest.fail(f"the README runs a command this test does not check: {line}")
        verbs = [verb for verb in ("create", "rollout", "port-forward") if verb in tokens]
        self.done.append(f"kubectl {verbs[0]}" if tokens[0] == "kubectl" else tokens[0])

    def promtool(self, tokens: list[str]) -> None:
        promtool = find_tool("promtool")
        if promtool is None:
            assert os.environ.get("BRIDGE_REQUIRE_PROMETHEUS") != "1", "promtool is required"
            assert (ROOT / tokens[-1]).is_file()
            return
        done = subprocess.run([promtool, *tokens[1:]], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    def bridge_cli(self, tokens: list[str]) -> None:
        """The arguments parse; the bridge it talks to is not there (nothing listens on the port)."""
        url = f"http://{LOOPBACK}:{free_port()}"
        argv = [url if prev == "--url" else t for prev, t in zip(["", *tokens], tokens, strict=False)]
        env = {**os.environ, **self.env}
        done = subprocess.run(
            [sys.executable, "-m", "bridge", *argv[1:]], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
        )
        assert done.returncode != 2 and "usage:" not in done.stderr, done.stderr
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stdout + done.stderr

    def docker(self, tokens: list[str]) -> None:
        parsed = dockerfile.parse(artefacts.DOCKERFILE)
        final = parsed.final
        version = parsed.stage_args(final)["VERSION"]
        image = next(t for t in tokens if "registry.example.com/" in t)
        assert image.endswith(f":{version}"), image
        options = dict(itertools.pairwise(tokens))
        if tokens[1] == "run":
            assert "--read-only" in tokens
            assert options["-v"].split(":")[1] in final.volumes
            assert options["-p"].split(":")[1] == final.last("EXPOSE").args  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def tools() -> helm.Tools:
    return helm.tools()


def test_every_command_and_file_of_the_deploy_sections_works(tools: helm.Tools, tmp_path: Path) -> None:
    reader = Reader(tools, tmp_path / "helm-home", tmp_path)
    found = blocks()
    for language, text in found:
        if language == "yaml":
            first = text.splitlines()[0]
            match = re.fullmatch(r"# ([-.\w]+\.yaml)", first)
            assert match, f"a YAML block must start with its file name:\n{text}"
            yaml.safe_load(text)
            reader.files[match.group(1)] = text
        else:
            assert language == "sh", f"unchecked block language {language!r}"
            for line in commands(text):
                reader.run(line)
    # The walk really went through the documented path.
    assert reader.done.count("helm") >= 4
    for step in ("kubectl create", "kubectl rollout", "kubectl port-forward", "curl", "kustomize", "docker"):
        assert step in reader.done, step
    assert {"values-kube-prometheus-stack.yaml", "values-teams.yaml", "values-postgresql.yaml"} <= set(reader.files)


def test_the_install_commands_cover_both_modes_and_every_monitoring_part(tools: helm.Tools, tmp_path: Path) -> None:
    """The values files of the README are the common cases the issue asks for."""
    files = {}
    for language, text in blocks():
        if language == "yaml" and text.startswith("# values-"):
            files[text.splitlines()[0][2:]] = yaml.safe_load(text)
    assert files["values-postgresql.yaml"]["storage"]["mode"] == "postgresql"
    monitoring = files["values-kube-prometheus-stack.yaml"]
    for part in ("serviceMonitor", "prometheusRule", "grafanaDashboard"):
        assert monitoring[part]["enabled"] is True
    teams = files["values-teams.yaml"]
    assert teams["config"]["routes"] and teams["config"]["admin"]["token"].startswith("${")


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"{path} is not a value of the chart"
        node = node[part]
    return node


def test_the_values_table_matches_values_yaml() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = section("Deploy on Kubernetes")
    table = text[text.index("| Value | Default |") :].split("\n\n", 1)[0].splitlines()[2:]
    assert len(table) >= 10
    for row in table:
        names_cell, defaults_cell, _ = (cell.strip() for cell in row.strip("|").split("|", 2))
        names = re.findall(r"`([^`]+)`", names_cell)
        # `a.b`, `.c` is a.b and a.c
        full = []
        for name in names:
            full.append(full[-1].rsplit(".", 1)[0] + name if name.startswith(".") else name)
        defaults = [yaml.safe_load(d) for d in re.findall(r"`([^`]*)`", defaults_cell)]
        defaults = defaults * len(full) if len(defaults) == 1 else defaults
        assert len(defaults) == len(full), row
        for name, default in zip(full, defaults, strict=True):
            assert _lookup(values, name) == default, name


def test_the_alerts_table_lists_every_rule_with_its_severity() -> None:
    text = section("Operate")
    table = text[text.index("| Alert | Severity |") :].split("\n\n", 1)[0].splitlines()[2:]
    listed = {}
    for row in table:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        listed[cells[0].strip("`")] = cells[1]
    rules = {rule["alert"]: rule["labels"]["severity"] for group in artefacts.rule_groups() for rule in group["rules"]}
    assert listed == rules


def test_the_sections_link_only_to_files_that_exist() -> None:
    text = "".join(section(title) for title in SECTIONS)
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link
