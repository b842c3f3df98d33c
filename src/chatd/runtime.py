"""Wire the library together for one process: store, providers, tools, engine."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from chatd.config import Settings
from chatd.engine import ChatService, EngineConfig
from chatd.engine.ports import LeaseStore
from chatd.errors import StoreUnavailable
from chatd.providers.pool import ProviderPool
from chatd.store import SqlStore, open_store
from chatd.tools import ToolRegistry
from chatd.tools.builtins import builtin_tools

log = logging.getLogger("chatd")


@dataclass
class Runtime:
    """What one chatd process owns; closed once at shutdown."""

    settings: Settings
    store: SqlStore
    providers: ProviderPool
    service: ChatService

    sweeper: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        """Let turns in flight finish (bounded), then close clients and connections."""
        if self.sweeper is not None:
            self.sweeper.cancel()
        try:
            await self.service.aclose(self.settings.shutdown_grace_s)
            await self.providers.aclose()
        finally:
            await self.store.close()


async def sweep_leases(store: LeaseStore, every_s: float) -> None:
    """Mark turns orphaned by a dead process as interrupted, every so often."""
    while True:
        await asyncio.sleep(every_s)
        try:
            expired = await store.expire_leases()
        except StoreUnavailable as exc:
            log.warning("lease sweep skipped: %s", exc.message)
        else:
            if expired:
                log.warning("marked %d orphaned turn(s) interrupted", expired)


async def open_runtime(settings: Settings, env: Mapping[str, str] | None = None) -> Runtime:
    """Choose the provider, open and migrate the database, build the engine."""
    providers = await ProviderPool.start(settings, env=os.environ if env is None else env)
    try:
        store = await open_store(settings.database_url)
    except BaseException:
        await providers.aclose()
        raise
    # CHATD_TOOLS is the deployment's list: a tool left out is unknown here, whoever asks.
    tools = ToolRegistry(t for t in builtin_tools() if t.spec.name in settings.tools)
    service = ChatService(store, providers, EngineConfig.from_settings(settings), tools)
    # Stateless calls' usage (kept in no turn) goes to the usage records, written after each
    # call by the store, which writes what is still queued when it closes (chatd.store.usage).
    service.observers.append(store.record_call)
    # Once before serving, so what a crashed process left behind reads right from the start.
    await store.expire_leases()
    runtime = Runtime(settings, store, providers, service)
    runtime.sweeper = asyncio.create_task(sweep_leases(store, settings.turn_lease_s / 2))
    return runtime
