"""A PostgreSQL database of its own for each test: a fresh schema in the server the tests use.

The server is ``BRIDGE_TEST_POSTGRES_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``,
what this project's machines and ``.ci/run`` provide). Each test gets a schema named after a
random id and a DSN whose ``search_path`` selects it; the schema is dropped afterwards.
Without a server the test is skipped with a one-line reason, unless ``BRIDGE_REQUIRE_POSTGRES=1``
(CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def server_dsn() -> str:
    return os.environ.get("BRIDGE_TEST_POSTGRES_DSN", DEFAULT_DSN)


def with_schema(dsn: str, schema: str) -> str:
    """``dsn`` with ``search_path`` set to ``schema`` (asyncpg passes unknown parameters as settings)."""
    parts = urlsplit(dsn)
    query = "&".join(filter(None, [parts.query, urlencode({"search_path": schema})]))
    return urlunsplit(parts._replace(query=query))


def _unavailable(reason: str) -> None:
    parts = urlsplit(server_dsn())
    message = f"no PostgreSQL server answers at {parts.hostname}:{parts.port or 5432} ({reason})"
    if os.environ.get("BRIDGE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message} (BRIDGE_REQUIRE_POSTGRES=1)")
    pytest.skip(message)


async def _connect() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(server_dsn(), timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        _unavailable(type(exc).__name__)
        raise AssertionError("unreachable") from exc


@dataclass
class Database:
    """One test's schema: its DSN, and synchronous reads for assertions."""

    schema: str
    dsn: str

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` in this schema, read on a connection of its own (callable from sync or async code)."""

        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.dsn, timeout=5)
            try:
                return [tuple(row) for row in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, run()).result(timeout=30)


@asynccontextmanager
async def database() -> AsyncIterator[Database]:
    """A fresh schema for one test, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = await _connect()
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
    finally:
        await admin.close()
    try:
        yield Database(schema, with_schema(server_dsn(), schema))
    finally:
        admin = await asyncpg.connect(server_dsn(), timeout=5)
        try:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await admin.close()


@contextmanager
def sync_database() -> Iterator[Database]:
    """:func:`database` for synchronous tests (process tests)."""
    manager = database()
    with ThreadPoolExecutor(max_workers=1) as pool:
        loop = asyncio.new_event_loop()
        try:
            db = pool.submit(loop.run_until_complete, manager.__aenter__()).result(timeout=30)
            try:
                yield db
            finally:
                pool.submit(loop.run_until_complete, manager.__aexit__(None, None, None)).result(timeout=30)
        finally:
            loop.close()
