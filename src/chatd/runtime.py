"""Wire the library together for one process: store, providers, tools, engine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from chatd.config import Settings
from chatd.engine import ChatService, EngineConfig
from chatd.providers.pool import ProviderPool
from chatd.store.db import open_store
from chatd.store.repo import SqlStore
from chatd.tools import ToolRegistry
from chatd.tools.builtins import builtin_tools


@dataclass
class Runtime:
    """What one chatd process owns; closed once at shutdown."""

    settings: Settings
    store: SqlStore
    providers: ProviderPool
    service: ChatService

    async def aclose(self) -> None:
        """Close provider clients and database connections."""
        try:
            await self.providers.aclose()
        finally:
            await self.store.close()


async def open_runtime(settings: Settings, env: Mapping[str, str] | None = None) -> Runtime:
    """Choose the provider, open and migrate the database, build the engine."""
    providers = await ProviderPool.start(settings, env=os.environ if env is None else env)
    try:
        store = await open_store(settings.database_url)
    except BaseException:
        await providers.aclose()
        raise
    tools = ToolRegistry(builtin_tools())
    service = ChatService(store, providers, EngineConfig.from_settings(settings), tools)
    return Runtime(settings, store, providers, service)
