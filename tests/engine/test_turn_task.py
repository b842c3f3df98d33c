"""A turn's task always ends its stream, whatever kills it; the turn is stored failed if it can."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatd.config import Settings
from chatd.engine import ChatService, EngineConfig, TurnOptions
from chatd.providers.pool import ProviderPool
from chatd.store import SqlStore, create_database, upgrade
from chatd.types import TurnState

# These provoke an unforeseen error on purpose, and the engine logs its traceback, as it should.
pytestmark = pytest.mark.allow_5xx


class FlakyStore(SqlStore):
    """A real SQLite store whose first `failures` attempts to end a turn die of a bug."""

    failures = 0

    async def finish_turn(self, turn_id: str, **kwargs: Any) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("an error nobody foresaw")
        await super().finish_turn(turn_id, **kwargs)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    db = create_database(f"sqlite:///{tmp_path / 'task.db'}")
    await upgrade(db)
    store = FlakyStore(db)
    yield store
    await store.close()


@pytest.fixture
async def service(store: FlakyStore) -> AsyncIterator[ChatService]:
    settings = Settings(provider="demo", database_url="sqlite://", _env_file=None)  # type: ignore[call-arg]
    pool = await ProviderPool.start(settings, env={"CHATD_DEMO_DELAY_MS": "0"})
    yield ChatService(store, pool, EngineConfig(lease_s=5.0))
    await pool.aclose()


async def read_to_the_end(service: ChatService, session: str) -> BaseException | None:
    """Read a turn's events; return the error that ended the stream, if any."""
    try:
        async for _ in service.turn(session, "hello", TurnOptions()):
            pass
    except Exception as exc:
        return exc
    return None


async def test_an_unexpected_error_storing_the_turn_ends_the_stream(
    service: ChatService, store: FlakyStore
) -> None:
    store.failures = 10  # every attempt to store the turn's end fails
    error = await asyncio.wait_for(read_to_the_end(service, "s"), timeout=10)
    assert error is not None  # the reader is told, instead of waiting forever
    assert await service.wait_idle(5)


async def test_a_turn_whose_end_failed_once_is_stored_failed(
    service: ChatService, store: FlakyStore
) -> None:
    store.failures = 1
    error = await asyncio.wait_for(read_to_the_end(service, "s"), timeout=10)
    assert error is not None
    [turn] = await store.list_turns("local", "s")
    assert turn.state is TurnState.FAILED
    assert turn.error == "internal error: RuntimeError"
    # What the model sees next is as before the failed turn.
    assert await store.context_messages("local", "s") == []
    # And the session takes the next turn.
    assert await asyncio.wait_for(read_to_the_end(service, "s"), timeout=10) is None
