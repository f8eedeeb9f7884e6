"""Choose and open the outbox backend the configuration asks for; callers never name one.

Only ``sqlite`` exists today (``storage.path``). A PostgreSQL backend plugs in here: a
``storage.dsn`` selects it in :func:`backend_name`, and :data:`BACKENDS` builds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.config import DeliveryConfig, StorageConfig
from bridge.outbox.protocol import Outbox
from bridge.outbox.sqlite import SqliteOutbox
from bridge.outbox.trail import Retention

Clock = Callable[[], float]


def _sqlite(storage: StorageConfig, delivery: DeliveryConfig, clock: Clock) -> Outbox:
    return SqliteOutbox(
        storage.path,
        max_pending=storage.max_pending,
        max_age=delivery.retry_horizon,
        refresh_interval=delivery.refresh_interval,
        retention=retention(storage),
        clock=clock,
    )


def retention(storage: StorageConfig) -> Retention:
    """The trail's retention, as every backend takes it."""
    return Retention(storage.history.max_age, storage.history.max_events)


#: Backend name -> how to build it from the config (not opened yet).
BACKENDS: dict[str, Callable[[StorageConfig, DeliveryConfig, Clock], Outbox]] = {"sqlite": _sqlite}


def backend_name(storage: StorageConfig) -> str:
    """Which backend ``storage`` selects."""
    return "sqlite"


def create_outbox(storage: StorageConfig, delivery: DeliveryConfig, *, clock: Clock = time.time) -> Outbox:
    """The outbox ``storage`` selects, not opened yet."""
    return BACKENDS[backend_name(storage)](storage, delivery, clock)


async def open_outbox(storage: StorageConfig, delivery: DeliveryConfig, *, clock: Clock = time.time) -> Outbox:
    """The outbox ``storage`` selects, opened (raises ``OpenRefused`` with a one-line reason)."""
    outbox = create_outbox(storage, delivery, clock=clock)
    await outbox.open()
    return outbox
