"""The real bridge app, in-process: its lifespan runs (outbox, delivery), requests go through ASGI.

For pure request logic (status codes, envelopes, metrics of one request), where starting a
process per case would only add seconds. Anything about the process itself (startup,
signals, durability, limits of the server) is tested through ``tests.conftest.Bridge``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from bridge import config as config_module
from bridge.app import Bridge, create_app


@dataclass
class InProcess:
    """A started app, a client for it and its metrics registry."""

    app: Starlette
    client: httpx.AsyncClient
    registry: CollectorRegistry

    @property
    def bridge(self) -> Bridge:
        bridge: Bridge = self.app.state.bridge
        return bridge

    async def delivered(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The dry-run destination's events, once it has ``count`` (bounded wait on delivery)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        log = self.bridge.dry_run_log
        assert log is not None, "not a dry-run bridge"
        while len(log.sent) < count:
            if loop.time() > deadline:
                raise TimeoutError(f"{len(log.sent)} of {count} events delivered after {timeout}s")
            self.bridge.dispatcher.wake()
            await asyncio.sleep(0.01)
        return list(log.sent)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (0.0 when none)."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


def make_config(tmp_path: Path, **overrides: Any) -> config_module.Config:
    """A dry-run config (nothing leaves the process) with its outbox under ``tmp_path``."""
    data: dict[str, Any] = {"storage": {"path": str(tmp_path / "outbox")}, **overrides}
    return config_module.Config.model_validate(data)


@contextlib.asynccontextmanager
async def running(config: config_module.Config, config_path: Path | None = None) -> AsyncIterator[InProcess]:
    """Run ``create_app(config)`` with its lifespan, and a client talking ASGI to it."""
    registry = CollectorRegistry()
    app = create_app(config, config_path=config_path, registry=registry)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge", timeout=30) as client:
            yield InProcess(app, client, registry)
