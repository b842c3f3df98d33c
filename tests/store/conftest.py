"""Store fixtures: `store` runs a test on every backend, `sql_store` on every SQL one.

To add a backend, write an async factory taking the fixture request and add it to STORES (and
SQL_STORES if it is SQL); every store test then runs on it too. PostgreSQL runs on the session's
server (tests/conftest.py), one fresh database per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from chatd.engine.ports import Store
from chatd.store import SqlStore, open_store
from chatd.testing.memory_store import MemoryStore


async def _memory(request: pytest.FixtureRequest) -> MemoryStore:
    return MemoryStore()


async def _sqlite(request: pytest.FixtureRequest) -> SqlStore:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return await open_store(f"sqlite:///{tmp_path / 'chatd.db'}")


async def _postgres(request: pytest.FixtureRequest) -> SqlStore:
    url: str = request.getfixturevalue("postgres_url")
    return await open_store(url)


SQL_STORES: dict[str, Callable[[pytest.FixtureRequest], Awaitable[SqlStore]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}
STORES: dict[str, Callable[[pytest.FixtureRequest], Awaitable[Store]]] = {
    "memory": _memory,
    **SQL_STORES,
}


@pytest.fixture(params=list(STORES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Yield a fresh, empty store of each kind."""
    opened = await STORES[request.param](request)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(params=list(SQL_STORES))
async def sql_store(request: pytest.FixtureRequest) -> AsyncIterator[SqlStore]:
    """Yield a fresh, migrated SQL store of each kind."""
    opened = await SQL_STORES[request.param](request)
    try:
        yield opened
    finally:
        await opened.close()
