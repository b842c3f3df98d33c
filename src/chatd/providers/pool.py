"""The providers one process uses: chosen once at start, each built once and shared."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from chatd.config import Settings
from chatd.errors import ConfigError, ProviderNotConfigured
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
        self._offered: list[str] | None = None

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
        model = provider.default_model
        if settings.models and not {model, f"{name}/{model}"} & set(settings.models):
            log.warning(
                "chatd: CHATD_MODELS leaves out the default model %s/%s: "
                "requests that name no model will be refused",
                name,
                model,
            )
        return pool

    def offered(self) -> list[str]:
        """Return the providers a caller may name: the default, CHATD_MODELS', those with keys."""
        if self._offered is None:
            names = self.registry.names()
            listed = {m.partition("/")[0] for m in self.settings.models if "/" in m}
            self._offered = sorted(
                {self.default_name}
                | {
                    n
                    for n in names
                    if n in listed or self.registry.plugin(n).configured(n, self._env)
                }
            )
        return self._offered

    def get(self, name: str | None = None) -> Provider:
        """Return the named (or default) provider, building it on first use."""
        name = name or self.default_name
        provider = self._live.get(name)
        if provider is None:
            # Presets are the operator's shorthand, not a caller's menu: naming ollama must not
            # make chatd post the caller's text to whatever listens on 127.0.0.1:11434.
            offered = self.offered()
            if name not in offered:
                if name not in self.registry.names():
                    raise ConfigError(
                        f"unknown provider {name!r}; this server offers: {', '.join(offered)}"
                    )
                raise ProviderNotConfigured(
                    f"provider {name!r} is not configured on this server; it offers: "
                    f"{', '.join(offered)}"
                )
            provider = self.registry.create(name, self.settings, self._env)
            self._live[name] = provider
        return provider

    async def aclose(self) -> None:
        """Close every provider's client."""
        for provider in self._live.values():
            await provider.aclose()
        self._live.clear()
