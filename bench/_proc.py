"""Helpers shared by the benchmarks: /proc readings, /metrics scrapes, starting a bridge from a source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.procs import LOOPBACK, Proc, free_port, python_module

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the table."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def descendants(pid: int) -> list[int]:
    """The live children of ``pid`` (every thread's), their children, and so on."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited between the listing and the read
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) and its live descendants (the bridge's
    worker processes, which handle large bodies), in seconds."""
    return sum(_own_cpu_seconds(p) for p in (pid, *descendants(pid)))


@dataclass
class Pinning:
    """``--pinned``: every server under test on CPU ``server``, the load generator (and helper
    processes such as the receiver) on CPU ``load``; empty prefixes when not pinned."""

    server: str = ""
    load: str = ""

    def server_prefix(self) -> list[str]:
        # taskset execs the command: the PID stays the server's; its threads and children inherit the mask.
        return ["taskset", "-c", self.server] if self.server else []

    def load_prefix(self) -> list[str]:
        return ["taskset", "-c", self.load] if self.load else []


PINNING = Pinning()


def pin(server: str, load: str) -> None:
    """Pin servers to ``server`` and load generators to ``load`` (CPU lists as taskset takes them)."""
    PINNING.server, PINNING.load = server, load


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    """Every sample of ``url``/metrics as (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == want for k, want in labels.items()))


def metric(url: str, name: str, **labels: str) -> float:
    return value(scrape(url), name, **labels)


@dataclass(frozen=True)
class BridgeSource:
    """A checkout whose ``bridge`` package the bridge process runs (``--bridge-src``)."""

    label: str
    path: Path

    def env(self) -> dict[str, str]:
        # PYTHONSAFEPATH keeps the current directory (this repository) off sys.path, so PYTHONPATH
        # decides which bridge package is imported; the editable install's finder comes after both.
        return {"PYTHONPATH": str(self.path), "PYTHONSAFEPATH": "1"}

    def describe(self) -> dict[str, Any]:
        """Which files the bridge process will import, its version and the checkout's commit."""
        probe = subprocess.run(
            [sys.executable, "-c", "import bridge; print(bridge.__file__); print(bridge.__version__)"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **self.env()},
        )
        lines = probe.stdout.split()
        if probe.returncode != 0 or len(lines) != 2:
            raise RuntimeError(f"cannot import bridge from {self.path}:\n{probe.stderr}")
        module = Path(lines[0]).resolve()
        if not module.is_relative_to(self.path.resolve()):
            raise RuntimeError(f"--bridge-src {self.path}: the bridge process would import {module} instead")
        git = subprocess.run(
            ["git", "-C", str(self.path), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return {
            "label": self.label,
            "path": str(self.path),
            "module": str(module),
            "version": lines[1],
            "git": git.stdout.strip() if git.returncode == 0 else None,
        }


def sources_from(paths: list[str]) -> list[BridgeSource]:
    """One BridgeSource per ``--bridge-src``; labels are ``bridge`` or, for several, ``bridge:<dir name>``."""
    resolved = [Path(p).resolve() for p in paths] or [REPO]
    if len(resolved) == 1:
        return [BridgeSource("bridge", resolved[0])]
    labels: list[str] = []
    for path in resolved:
        label = f"bridge:{path.name}"
        labels.append(label if label not in labels else f"{label}#{len(labels) + 1}")
    return [BridgeSource(label, path) for label, path in zip(labels, resolved, strict=True)]


def start_bridge(
    work: Path, name: str, config: dict[str, Any], source: BridgeSource, env: dict[str, str] | None = None
) -> tuple[Proc, str]:
    """``python -m bridge serve`` from ``source`` on a free loopback port; returns the process and its URL."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = Proc(
        [
            *PINNING.server_prefix(),
            *python_module("bridge", "serve", "--config", str(path), "--listen", f"{LOOPBACK}:{port}"),
        ],
        work / f"{name}.log",
        env={**source.env(), **(env or {})},
    )
    return _ready(proc, f"http://{LOOPBACK}:{port}", "/-/ready")


def start_module(
    work: Path, name: str, argv_for_port: list[str], ready: str, *, under_test: bool = False
) -> tuple[Proc, str]:
    """A helper process (emulator, receiver) or a baseline server (``under_test``: pinned like the bridge)
    run from this repository, whatever ``--bridge-src`` says."""
    port = free_port()
    prefix = PINNING.server_prefix() if under_test else PINNING.load_prefix()
    argv = [*prefix, *(arg.replace("{port}", str(port)) for arg in argv_for_port)]
    proc = Proc(argv, work / f"{name}.log", env={"PYTHONPATH": str(REPO), "PYTHONSAFEPATH": "1"})
    return _ready(proc, f"http://{LOOPBACK}:{port}", ready)


def _ready(proc: Proc, url: str, path: str) -> tuple[Proc, str]:
    """Wait until ``proc`` answers on ``path``; stop it if it never does."""
    try:
        proc.wait_http(f"{url}{path}", timeout=60)
    except BaseException:
        proc.stop()
        raise
    return proc, url
