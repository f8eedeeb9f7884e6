"""Reloading the config file (SIGHUP, ``POST /-/reload``): what it applies, what it refuses, what it says."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from bridge.app import Bridge as RunningBridge
from bridge.app import create_app
from bridge.config import Config, load
from tests.conftest import Bridge, Emulator

MakeBridge = Callable[..., Bridge]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.yaml"
    write(path, tmp_path, workers=8)
    return path


def write(path: Path, tmp_path: Path, workers: int, **extra: Any) -> None:
    data = {"listen": "127.0.0.1:9095", "storage": {"path": str(tmp_path / "outbox")}, "delivery": {"workers": workers}}
    path.write_text(yaml.safe_dump({**data, **extra}))


class Client(httpx.AsyncClient):
    """An in-process client of a bridge app whose lifespan runs (outbox open, delivery started)."""

    def __init__(self, app: Starlette) -> None:
        super().__init__(transport=httpx.ASGITransport(app=app), base_url="http://bridge")
        self.app = app

    @property
    def bridge(self) -> RunningBridge:
        bridge: RunningBridge = self.app.state.bridge
        return bridge


async def running(config: Config, config_path: Path | None) -> AsyncIterator[Client]:
    app = create_app(config, config_path=config_path, registry=CollectorRegistry())
    async with app.router.lifespan_context(app), Client(app) as client:
        yield client


@pytest.fixture
async def client(config_file: Path) -> AsyncIterator[Client]:
    async for client in running(load(config_file), config_file):
        yield client


async def reload(client: Client) -> httpx.Response:
    return await client.post("/-/reload")


async def test_the_restart_note_compares_with_what_the_process_runs(
    client: Client, config_file: Path, tmp_path: Path
) -> None:
    """A restart-only change is reported on every reload until a restart, and a revert is not a change."""
    write(config_file, tmp_path, workers=4)
    for _ in range(2):  # the second reload still runs 8 workers: the note stays
        answer = await reload(client)
        assert answer.status_code == 200
        assert "delivery" in answer.json()["data"]["message"], answer.text
    write(config_file, tmp_path, workers=8)  # back to what runs: nothing waits for a restart
    assert (await reload(client)).json()["data"]["message"] == "reloaded"
    assert client.bridge.config.delivery.workers == 8


async def test_the_config_in_force_keeps_the_restart_only_settings_it_started_with(
    client: Client, config_file: Path, tmp_path: Path
) -> None:
    """After a reload, the bridge's config says what it runs: new routes and keys, the old listen/storage/delivery."""
    write(config_file, tmp_path, workers=2, listen="127.0.0.1:1", log_level="debug")
    assert (await reload(client)).status_code == 200
    config = client.bridge.config
    assert (config.delivery.workers, config.listen, config.log_level) == (8, "127.0.0.1:9095", "debug")


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        ("routez: []\n", "unknown key 'routez'"),
        ("destinations: {db: {integration_key_file: /nonexistent/db.key}}\n", "cannot read /nonexistent/db.key"),
    ],
)
async def test_a_refused_reload_answers_409_reload_refused_naming_the_file(
    client: Client, config_file: Path, breakage: str, problem: str
) -> None:
    """The request was fine and the bridge did not fail: its file cannot be applied. 409, not 500 InvalidParameter."""
    config_file.write_text(config_file.read_text() + breakage)
    answer = await reload(client)
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "ReloadRefused"
    assert f"{config_file}: " in error["message"] and problem in error["message"], error
    assert "destinations: destinations" not in error["message"]


async def test_reload_without_a_config_file_is_refused_the_same_way(tmp_path: Path) -> None:
    """Started without --config there is nothing to reload: the same 409 ReloadRefused."""
    path = tmp_path / "bridge.yaml"
    write(path, tmp_path, workers=8)
    async for client in running(load(path), None):
        answer = await reload(client)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "ReloadRefused"


def test_serve_with_listen_reloads_an_unchanged_file_without_a_restart_note(
    emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """`serve --listen` overrides the file; reloading the unchanged file must not claim `listen` changed."""
    bridge = make_bridge(emulator)  # started with --listen 127.0.0.1:<port>; the file has no listen
    answer = httpx.post(f"{bridge.url}/-/reload")
    assert answer.status_code == 200 and answer.json()["data"]["message"] == "reloaded", answer.text


def test_dry_run_keeps_listing_events_across_a_reload(make_bridge: MakeBridge) -> None:
    """A dry-run bridge lists what it would send at /-/dry-run, before and after a reload (the list carries over)."""
    from tests.conftest import payload, wait_for

    def listed() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = httpx.get(f"{bridge.url}/-/dry-run").json()["events"]
        return events

    bridge = make_bridge(None)  # no key: dry run
    firing, resolved = payload("alertmanager-0.25-firing.json"), payload("alertmanager-0.25-resolved.json")
    assert bridge.post("/alertmanager", firing).status_code == 200
    wait_for(lambda: len(listed()) == len(firing["alerts"]), what="the firing events listed")
    assert httpx.post(f"{bridge.url}/-/reload").status_code == 200
    assert bridge.post("/alertmanager", resolved).status_code == 200
    total = len(firing["alerts"]) + len(resolved["alerts"])
    events = wait_for(lambda: (found := listed()) and len(found) == total and found, what="the Ok events listed too")
    assert [event["event_status"] for event in events[len(firing["alerts"]) :]] == ["Ok"] * len(resolved["alerts"])
