"""The embedded SQLite outbox (the default backend): one file under ``storage.path``, one process.

* ``backend``: :class:`SqliteOutbox`, the :class:`~bridge.outbox.Outbox` implementation.
* ``schema``: tables, migrations, the application id.
* ``integrity``: the directory lock, and the checks that refuse a damaged, emptied or foreign file.
* ``queries``: the statements, one method per operation.
* ``writer``: group commit, the outbox thread and WAL checkpoints.
"""

from __future__ import annotations

from bridge.outbox.sqlite.backend import SqliteOutbox

__all__ = ["SqliteOutbox"]
