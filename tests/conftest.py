"""Fixtures that run the real processes: the emulator (Flashduty) and the bridge.

Tests talk HTTP to them on loopback. Each process is stopped by its PID when the
test ends, and its log is printed if the test failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bridge.outbox import Outbox
from tests.support.clock import FakeClock
from tests.support.outboxes import BACKENDS, OutboxBackend, backend_under_test
from tests.support.procs import LOOPBACK, Proc, free_port, python_module

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "payloads"
TEST_KEY = "it-test-key-SECRET-7f3a9c"
ADMIN_TOKEN = "admin-token-SECRET-51b2"


def payload(name: str) -> dict[str, Any]:
    """A real captured payload from ``tests/fixtures/payloads`` (provenance in its README)."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (bounded); return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Emulator:
    """A running ``flashduty-bridge emulate`` process."""

    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def push_url(self) -> str:
        return f"{self.url}/event/push/alert/standard"

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        params = {"integration_key": key} if key else {}
        events: list[dict[str, Any]] = httpx.get(f"{self.url}/-/events", params=params).json()["events"]
        return events

    def bodies(self, key: str | None = None) -> list[dict[str, Any]]:
        return [event["body"] for event in self.events(key)]

    def requests(self) -> list[dict[str, Any]]:
        requests: list[dict[str, Any]] = httpx.get(f"{self.url}/-/requests").json()["requests"]
        return requests

    def fault(self, *items: dict[str, Any]) -> None:
        response = httpx.put(f"{self.url}/-/faults", json={"script": list(items)})
        assert response.status_code == 200, response.text

    def reset(self) -> None:
        httpx.delete(f"{self.url}/-/events").raise_for_status()


def start_emulator(tmp_path: Path, *args: str, port: int | None = None) -> Emulator:
    port = port or free_port()
    proc = Proc(
        python_module("bridge", "emulate", "--listen", f"{LOOPBACK}:{port}", *args),
        tmp_path / f"emulator-{port}.log",
        env={"PYTHONUNBUFFERED": "1"},
    )
    proc.wait_http(f"http://{LOOPBACK}:{port}/-/healthy")
    return Emulator(proc, port)


@dataclass
class Bridge:
    """A running ``flashduty-bridge serve`` process and how to restart it."""

    config_path: Path
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Bridge:
        if self.proc is not None:
            self.proc.stop()  # a previous run (killed or stopped): release its log file
        self.proc = Proc(
            python_module("bridge", "serve", "--config", str(self.config_path), "--listen", f"{LOOPBACK}:{self.port}"),
            self.log_path,
            env={"PYTHONUNBUFFERED": "1", **self.env},
        )
        self.proc.wait_http(f"{self.url}/-/ready")
        return self

    def post(self, path: str, body: Any = None, *, content: bytes | None = None, **kwargs: Any) -> httpx.Response:
        if content is None:
            content = json.dumps(body).encode()
        return httpx.post(f"{self.url}{path}", content=content, timeout=30, **kwargs)

    def admin(self, method: str, path: str, token: str = ADMIN_TOKEN, **kwargs: Any) -> httpx.Response:
        """Call the admin API (``/api/v1/...``) with the bearer token."""
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=30, **kwargs)

    def dead_letters(self, **params: Any) -> list[dict[str, Any]]:
        response = self.admin("GET", "/dead-letters", params=params)
        assert response.status_code == 200, response.text
        letters: list[dict[str, Any]] = response.json()["data"]["dead_letters"]
        return letters

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (0.0 when none)."""
        from prometheus_client.parser import text_string_to_metric_families

        return sum(
            float(sample.value)
            for family in text_string_to_metric_families(self.metrics())
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc else None


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    emu = start_emulator(tmp_path)
    try:
        yield emu
    finally:
        emu.proc.stop()


#: Fast retries so failure tests finish in seconds.
FAST_DELIVERY = {"backoff_initial": "50ms", "backoff_max": "200ms", "retry_after_max": "2s", "workers": 4}


@pytest.fixture
def make_bridge(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Bridge]]:
    """Factory: ``make_bridge(emulator, **config_overrides)`` starts a bridge delivering there."""
    started: list[Bridge] = []

    def make(
        target: Emulator | str | None = None, *, start: bool = True, key: str = TEST_KEY, **overrides: Any
    ) -> Bridge:
        """``target`` is the emulator, or a push URL (where nothing may listen), or None for dry run."""
        index = len(started)
        config: dict[str, Any] = {
            "storage": {"path": str(tmp_path / f"outbox-{index}")},
            "delivery": dict(FAST_DELIVERY),
            "admin": {"token": ADMIN_TOKEN},
            "log_level": "info",
        }
        if target is not None:
            url = target.push_url if isinstance(target, Emulator) else target
            config["flashduty"] = {"url": url, "integration_key": key, "timeout": "3s"}
        for name, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(name), dict):
                config[name] = {**config[name], **value}
            else:
                config[name] = value
        bridge = Bridge(
            write_config(tmp_path / f"bridge-{index}.yaml", config), free_port(), tmp_path / f"bridge-{index}.log"
        )
        started.append(bridge)
        return bridge.start() if start else bridge

    yield make
    for bridge in started:
        bridge.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for bridge in started:
            print(f"--- {bridge.log_path} ---\n{bridge.log()[-5000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


# -- the outbox contract: every backend, on a fake clock (test_outbox, test_trail, test_dispatcher) ----------

OutboxFactory = Callable[..., Awaitable[Outbox]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OutboxBackend]:
    async with backend_under_test(request.param, tmp_path) as under_test:
        yield under_test


@pytest.fixture
def outbox_max_pending() -> int:
    """``max_pending`` of the outboxes ``make_outbox`` opens (a module overrides it to need more room)."""
    return 1000


@pytest.fixture
async def make_outbox(
    backend: OutboxBackend, clock: FakeClock, outbox_max_pending: int
) -> AsyncIterator[OutboxFactory]:
    """Factory: an open outbox on the backend's storage with the fake clock; closed after the test."""
    opened: list[Outbox] = []

    async def make(**options: Any) -> Outbox:
        box = backend.make(**{"max_pending": outbox_max_pending, "clock": clock, **options})
        await box.open()
        opened.append(box)
        return box

    yield make
    for box in opened:
        await box.close()


@pytest.fixture
async def outbox(make_outbox: OutboxFactory) -> Outbox:
    return await make_outbox()
