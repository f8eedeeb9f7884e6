"""The shared PostgreSQL outbox: one database, any number of bridge replicas.

* ``backend``: :class:`PostgresOutbox`, the :class:`~bridge.outbox.Outbox` implementation, and
  :class:`PostgresRateLimits`, the rate limit every replica shares.
* ``dsn``: reading the DSN, and showing it without its password.
* ``schema``: tables and versioned migrations (run once when replicas start together).
* ``queries``: the statements, one function per operation, and the key locks.
* ``writer``: group commit of puts and acks.
"""

from __future__ import annotations

from bridge.outbox.postgres.backend import PostgresOutbox, PostgresRateLimits

__all__ = ["PostgresOutbox", "PostgresRateLimits"]
