"""A ChatService on a real database (SQLite file, PostgreSQL), talking to the fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from chatd.config import Settings
from chatd.engine import ChatService, EngineConfig
from chatd.providers.pool import ProviderPool
from chatd.providers.retry import RetryPolicy
from chatd.store import SqlStore, open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.tools import ToolRegistry
from chatd.tools.builtins import builtin_tools

ServiceFactory = Callable[..., Awaitable[ChatService]]


def provider_env(kind: str, url: str) -> dict[str, str]:
    """Return the environment that points a provider at the fake upstream."""
    if kind == "anthropic":
        return {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": url}
    if kind == "openai":
        return {"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": url + "/v1"}
    return {"CHATD_DEMO_DELAY_MS": "0"}


@pytest.fixture(params=["sqlite", "postgres"])
async def db_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    """Yield a migrated store on each database: a fresh SQLite file, a fresh PostgreSQL one."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'engine.db'}"
    store = await open_store(url)
    yield store
    await store.close()


@pytest.fixture
async def make_service(
    db_store: SqlStore, fake_upstream: FakeUpstream
) -> AsyncIterator[ServiceFactory]:
    """Yield a factory of services on the test's store; providers are closed afterwards."""
    pools: list[ProviderPool] = []

    async def factory(
        kind: str = "anthropic",
        *,
        models: tuple[str, ...] = (),
        base_url: str | None = None,
        **config: object,
    ) -> ChatService:
        settings = Settings(
            provider=kind,
            model="test-model",
            database_url="sqlite://",
            models=list(models),
            base_url=base_url,
            _env_file=None,
        )  # type: ignore[call-arg]
        pool = await ProviderPool.start(settings, env=provider_env(kind, fake_upstream.url))
        pools.append(pool)
        engine_config = EngineConfig(
            retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05),
            models=models,
            **config,  # type: ignore[arg-type]
        )
        return ChatService(db_store, pool, engine_config, ToolRegistry(builtin_tools()))

    yield factory
    for pool in pools:
        await pool.aclose()


@pytest.fixture(params=["anthropic", "openai"])
async def service(request: pytest.FixtureRequest, make_service: ServiceFactory) -> ChatService:
    """Yield a service on each SDK provider."""
    return await make_service(request.param)
