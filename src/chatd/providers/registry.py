"""Provider plugins by name (built-ins load the same way outside plugins do), and `auto`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points

from chatd.config import Settings
from chatd.errors import ConfigError
from chatd.providers.base import Provider, ProviderOptions, ProviderPlugin

log = logging.getLogger("chatd.providers")

ENTRY_POINT_GROUP = "chatd.providers"
# `auto` tries these in order, then a reachable local Ollama, then demo.
AUTO_ORDER = ("anthropic", "openai", "groq", "together", "vllm", "openai-compatible")


class ProviderRegistry:
    """Name → plugin; loads the `chatd.providers` entry points on first use."""

    def __init__(self) -> None:
        self._plugins: dict[str, ProviderPlugin] = {}
        self._loaded = False

    def register(self, plugin: ProviderPlugin) -> None:
        """Add a plugin under each of its names."""
        for name in plugin.names:
            self._plugins[name] = plugin

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            plugin = ep.load()
            if not isinstance(plugin, ProviderPlugin):
                raise ConfigError(f"entry point {ep.name!r} is not a chatd ProviderPlugin")
            for name in plugin.names:
                self._plugins.setdefault(name, plugin)

    def names(self) -> list[str]:
        """Return every known provider name."""
        self._load()
        return sorted(self._plugins)

    def plugin(self, name: str) -> ProviderPlugin:
        """Return the plugin serving name, or raise ConfigError naming the choices."""
        self._load()
        try:
            return self._plugins[name]
        except KeyError:
            choices = ", ".join(["auto", *self.names()])
            raise ConfigError(f"unknown provider {name!r}; choose one of: {choices}") from None

    def options(self, name: str, settings: Settings, env: Mapping[str, str]) -> ProviderOptions:
        """Resolve a provider's credentials and endpoint, raising if they are missing."""
        return self.plugin(name).resolve(
            name, env, settings.base_url, settings.model, settings.request_timeout_s
        )

    def create(self, name: str, settings: Settings, env: Mapping[str, str]) -> Provider:
        """Build a provider by name."""
        plugin = self.plugin(name)
        return plugin.create(self.options(name, settings, env))


async def choose_provider(
    registry: ProviderRegistry, settings: Settings, env: Mapping[str, str]
) -> tuple[str, str]:
    """Return the provider name to use and a plain reason for the choice."""
    if settings.provider != "auto":
        registry.options(settings.provider, settings, env)  # fail now, not at the first message
        return settings.provider, f"CHATD_PROVIDER={settings.provider}"
    for name in AUTO_ORDER:
        if registry.plugin(name).configured(name, env) or (
            name == "openai-compatible" and settings.base_url
        ):
            return name, "auto: found its configuration in the environment"
    if await ollama_reachable(settings.ollama_probe_timeout_s):
        return "ollama", "auto: a local Ollama answered on localhost:11434"
    return (
        "demo",
        "auto: no provider key set and no local Ollama "
        "(set ANTHROPIC_API_KEY or OPENAI_API_KEY for a real model)",
    )


async def ollama_reachable(timeout_s: float) -> bool:
    """Tell whether a local Ollama server answers."""
    # Here, not at the top: only `auto` without a key gets this far, and httpx would bring its
    # command-line extras (rich, pygments, click) into every server.
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get("http://127.0.0.1:11434/api/version")
    except httpx.HTTPError:
        return False
    return response.status_code == 200
