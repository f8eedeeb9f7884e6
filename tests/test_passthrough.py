"""``?integration_key=`` passthrough: behind the source's auth, capped, retired when idle, refusals counted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.conftest import Emulator
from tests.support.inprocess import InProcess, make_config, running
from tests.test_app import alert, webhook

TOKEN = "sender-token-SECRET"


def config(tmp_path: Path, emulator: Emulator, **overrides: Any) -> Any:
    return make_config(
        tmp_path,
        flashduty={"url": emulator.push_url, "timeout": "3s"},
        delivery={"backoff_initial": "50ms", "backoff_max": "100ms"},
        **overrides,
    )


async def send(bridge: InProcess, key: str, name: str = "A", **kwargs: Any) -> Any:
    body = webhook(alert({"alertname": name, "key": key}))
    return await bridge.client.post("/alertmanager", params={"integration_key": key}, json=body, **kwargs)


async def wait_until(condition: Any, what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_passthrough_needs_the_sources_auth_before_any_destination_exists(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Without the source's credentials a URL key is refused (401) and nothing is created or stored."""
    auth = {"method": "bearer", "token": TOKEN}
    async with running(config(tmp_path, emulator, alertmanager={"auth": auth}, standard_auth=auth)) as bridge:
        assert (await send(bridge, "url-key-1")).status_code == 401
        standard = await bridge.client.post(
            "/event/push/alert/standard",
            params={"integration_key": "url-key-2"},
            json={"title_rule": "t", "event_status": "Info"},
        )
        assert standard.status_code == 401
        assert len(bridge.bridge.passthrough) == 0
        assert await bridge.bridge.outbox.passthrough_keys() == {}
        assert bridge.metric("flashduty_bridge_passthrough_keys") == 0

        ok = await send(bridge, "url-key-1", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
        assert len(bridge.bridge.passthrough) == 1
        assert bridge.metric("flashduty_bridge_passthrough_keys") == 1


async def test_a_new_key_over_the_cap_is_503_with_retry_after_and_counted_while_known_keys_work(
    tmp_path: Path, emulator: Emulator
) -> None:
    """passthrough_max_keys: 2. A third key is refused (503, Retry-After); the first two keep working."""
    async with running(config(tmp_path, emulator, passthrough_max_keys=2)) as bridge:
        assert (await send(bridge, "key-one")).status_code == 200
        assert (await send(bridge, "key-two")).status_code == 200
        refused = await send(bridge, "key-three")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "ServiceUnavailable"
        assert "passthrough_max_keys: 2" in refused.json()["error"]["message"]
        assert "key-three" not in refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600
        assert (await send(bridge, "key-one", name="B")).status_code == 200
        assert bridge.metric("flashduty_bridge_passthrough_refused_total", reason="limit") == 1
        assert bridge.metric("flashduty_bridge_requests_total", source="alertmanager", outcome="unavailable") == 1
        assert bridge.metric("flashduty_bridge_passthrough_keys") == 2
        assert len(await bridge.bridge.outbox.passthrough_keys()) == 2


async def test_an_idle_key_with_nothing_stored_retires_and_makes_room(tmp_path: Path, emulator: Emulator) -> None:
    """Once its events are delivered and it is unused for passthrough_retire_after, a key gives its place up."""
    settings = config(tmp_path, emulator, passthrough_max_keys=1, passthrough_retire_after="0.2s")
    async with running(settings) as bridge:
        assert (await send(bridge, "first-key")).status_code == 200

        async def delivered() -> bool:
            return (await bridge.bridge.outbox.stats()).pending == 0

        await wait_until(delivered, "the first key's event delivered")
        assert bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="ok") == 1
        await asyncio.sleep(0.3)  # longer than passthrough_retire_after: the key is now idle
        second = await send(bridge, "second-key")
        assert second.status_code == 200, second.text
        remembered = await bridge.bridge.outbox.passthrough_keys()
        assert list(remembered.values()) == ["second-key"]
        (only,) = [name for name in bridge.bridge.dispatcher.lanes if name.startswith("key-")]
        assert remembered == {only: "second-key"}  # the first key's lane is gone with its row
        # The retired destination left no series behind.
        assert bridge.metric("flashduty_bridge_delivery_attempts_total", outcome="ok") == 0
        assert emulator.bodies("first-key") and len(emulator.bodies("second-key")) <= 1


async def test_a_key_with_dead_letters_is_kept_so_they_can_be_replayed(tmp_path: Path, emulator: Emulator) -> None:
    """A dead letter keeps its key's destination: a new key stays refused rather than orphan the letter."""
    emulator.fault({"status": 400, "code": "InvalidParameter", "message": "integration_key is not a valid one"})
    settings = config(tmp_path, emulator, passthrough_max_keys=1, passthrough_retire_after="0.2s")
    async with running(settings) as bridge:
        assert (await send(bridge, "revoked-key")).status_code == 200

        async def dead() -> bool:
            return (await bridge.bridge.outbox.stats()).dead == 1

        await wait_until(dead, "the event dead-lettered")
        await asyncio.sleep(0.3)
        refused = await send(bridge, "other-key")
        assert refused.status_code == 503
        assert list((await bridge.bridge.outbox.passthrough_keys()).values()) == ["revoked-key"]
