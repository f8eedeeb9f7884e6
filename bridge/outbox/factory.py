"""Choose and open the outbox backend the configuration asks for; callers never name one.

``storage.path`` (the default) selects ``sqlite``, the embedded outbox of one process;
``storage.dsn`` or ``storage.dsn_file`` selects ``postgresql``, one outbox shared by every
replica pointed at the database. The PostgreSQL outbox keeps time on the database's clock,
not the process's, so it does not take ``clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.config import DeliveryConfig, StorageConfig
from bridge.outbox.model import OpenRefused
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


def _postgresql(storage: StorageConfig, delivery: DeliveryConfig, clock: Clock) -> Outbox:
    from bridge.outbox.postgres import PostgresOutbox
    from bridge.outbox.postgres.dsn import DsnError, read_dsn

    try:
        dsn = read_dsn(storage)
    except DsnError as exc:
        raise OpenRefused(f"outbox cannot be opened: {exc}") from None
    return PostgresOutbox(
        dsn,
        max_pending=storage.max_pending,
        max_age=delivery.retry_horizon,
        refresh_interval=delivery.refresh_interval,
        retention=retention(storage),
    )


#: Backend name -> how to build it from the config (not opened yet).
BACKENDS: dict[str, Callable[[StorageConfig, DeliveryConfig, Clock], Outbox]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}


def backend_name(storage: StorageConfig) -> str:
    """Which backend ``storage`` selects."""
    return "postgresql" if storage.postgresql else "sqlite"


def describe(storage: StorageConfig) -> str:
    """Where ``storage`` keeps the outbox, safe to print: the directory, or the database without password."""
    if not storage.postgresql:
        return str(storage.path)
    from bridge.outbox.postgres.dsn import DsnError, display, read_dsn

    try:
        return display(read_dsn(storage))
    except DsnError as exc:
        return f"(PostgreSQL: {exc})"


def create_outbox(storage: StorageConfig, delivery: DeliveryConfig, *, clock: Clock = time.time) -> Outbox:
    """The outbox ``storage`` selects, not opened yet."""
    return BACKENDS[backend_name(storage)](storage, delivery, clock)


async def open_outbox(storage: StorageConfig, delivery: DeliveryConfig, *, clock: Clock = time.time) -> Outbox:
    """The outbox ``storage`` selects, opened (raises ``OpenRefused`` with a one-line reason)."""
    outbox = create_outbox(storage, delivery, clock=clock)
    await outbox.open()
    return outbox
