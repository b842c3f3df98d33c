"""The providers one process uses: chosen once at start, each built once and shared."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from chatd.config import Settings
from chatd.providers.base import Provider
from chatd.providers.registry import ProviderRegistry, choose_provider

log = logging.getLogger("chatd")


class ProviderPool:
    """Name → live provider (one SDK client per provider per process)."""

    def __init__(
        self,
        settings: Settings,
        default: str,
        *,
        env: Mapping[str, str] | None = None,
        registry: ProviderRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.default_name = default
        self.registry = registry or ProviderRegistry()
        self._env = os.environ if env is None else env
        self._live: dict[str, Provider] = {}

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        env: Mapping[str, str] | None = None,
        registry: ProviderRegistry | None = None,
    ) -> ProviderPool:
        """Choose the default provider (logging the choice in one line) and build it."""
        registry = registry or ProviderRegistry()
        env = os.environ if env is None else env
        name, reason = await choose_provider(registry, settings, env)
        pool = cls(settings, name, env=env, registry=registry)
        provider = pool.get(name)
        log.warning(
            "chatd: using provider %s, model %s -- %s", name, provider.default_model, reason
        )
        return pool

    def get(self, name: str | None = None) -> Provider:
        """Return the named (or default) provider, building it on first use."""
        name = name or self.default_name
        provider = self._live.get(name)
        if provider is None:
            provider = self.registry.create(name, self.settings, self._env)
            self._live[name] = provider
        return provider

    async def aclose(self) -> None:
        """Close every provider's client."""
        for provider in self._live.values():
            await provider.aclose()
        self._live.clear()
