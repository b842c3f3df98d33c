"""PostgreSQL restarted while turns run: clean StoreUnavailable, nothing partial, recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from chatd.config import Settings
from chatd.engine import ChatService, EngineConfig, TurnOptions
from chatd.errors import ChatdError, StoreUnavailable
from chatd.providers.pool import ProviderPool
from chatd.store import open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.testing.postgres import PostgresServer
from chatd.types import TurnEnded, TurnState

# A connection killed mid-statement can make asyncpg's protocol callback raise "unexpected
# connection_lost() call" outside any await; what this module asserts is chatd's behaviour.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def server(postgres_installed: None) -> Iterator[PostgresServer]:
    with PostgresServer() as pg:
        yield pg


@pytest.fixture
async def service(
    server: PostgresServer, fake_upstream: FakeUpstream
) -> AsyncIterator[ChatService]:
    url = server.create_database("restart_under_load")
    store = await open_store(url)
    settings = Settings.model_validate({"provider": "anthropic", "model": "m"})
    env = {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": fake_upstream.url}
    pool = await ProviderPool.start(settings, env=env)
    yield ChatService(store, pool, EngineConfig(lease_s=1.0))
    await pool.aclose()
    await store.close()
    if not server.running:
        server.start()
    server.drop_database("restart_under_load")


async def one_turn(service: ChatService, session: str) -> str:
    """Run a slow turn; return its final state, or the error class that ended it."""
    try:
        async for event in service.turn(
            session, "hello [fake: chunks=5 delay_ms=60]", TurnOptions()
        ):
            if isinstance(event, TurnEnded):
                return event.state.value
    except ChatdError as exc:
        return type(exc).__name__
    raise AssertionError("the turn ended without an outcome")


async def consume(events: AsyncIterator[object]) -> None:
    """Read a turn's events to the end."""
    async for _ in events:
        pass


async def test_restart_under_load_fails_cleanly_and_recovers(
    service: ChatService, server: PostgresServer
) -> None:
    turns = [asyncio.create_task(one_turn(service, f"s{i}")) for i in range(12)]
    await asyncio.sleep(0.15)
    await asyncio.to_thread(server.restart, "immediate")
    outcomes = await asyncio.wait_for(asyncio.gather(*turns), timeout=60)
    assert set(outcomes) <= {"complete", "StoreUnavailable"}, outcomes
    assert "StoreUnavailable" in outcomes  # the restart did hit turns in flight
    await service.wait_idle(10)
    # Turns that could not be stored are left to their lease, then read interrupted.
    await asyncio.sleep(1.1)
    await service.store.expire_leases()
    store = service.store
    for i, outcome in enumerate(outcomes):
        if await store.get_session("local", f"s{i}") is None:
            continue  # the restart came before the session was even created
        records = await store.list_turns("local", f"s{i}")
        for record in records:
            assert record.state is not TurnState.STREAMING
            assert record.messages[0].text.startswith("hello")  # never a turn without its message
        if outcome == "complete":
            assert [r.state for r in records] == [TurnState.COMPLETE]
    # And the same store serves new turns at once.
    assert await one_turn(service, "after") == "complete"


async def test_a_send_while_the_database_is_down_is_a_503(
    service: ChatService, server: PostgresServer
) -> None:
    server.stop(keep=True)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await asyncio.wait_for(consume(service.turn("down", "hello")), timeout=10)
        assert info.value.status == 503
    finally:
        server.start()
    assert await one_turn(service, "down") == "complete"
    assert len(await service.store.list_turns("local", "down")) == 1
