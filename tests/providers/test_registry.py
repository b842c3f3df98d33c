"""Provider registry and `auto`: plugins by entry point, the choice and its reasons."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatd.config import Settings
from chatd.errors import ConfigError, ProviderNotConfigured
from chatd.providers.base import ProviderOptions, ProviderPlugin
from chatd.providers.demo import DemoProvider
from chatd.providers.pool import ProviderPool
from chatd.providers.registry import ProviderRegistry, choose_provider
from chatd.types import ChatRequest, StopEvent, StopReason, StreamEvent, TextDelta


def settings(**kw: object) -> Settings:
    """Build settings without reading .env or CHATD_* from the test process."""
    return Settings.model_validate({"database_url": "sqlite://", **kw})


def test_built_ins_load_through_the_entry_point_group() -> None:
    names = ProviderRegistry().names()
    for name in ("anthropic", "openai", "groq", "together", "ollama", "vllm", "llamacpp"):
        assert name in names
    assert "openai-compatible" in names
    assert "demo" in names


class EchoProvider:
    """A provider an outside package might ship."""

    name = "echo"
    default_model = "echo-1"

    def __init__(self, options: ProviderOptions) -> None:
        self.options = options

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Echo the last message."""
        yield TextDelta(request.messages[-1].text)
        yield StopEvent(StopReason.END_TURN)

    async def aclose(self) -> None:
        """Close nothing."""


def test_an_outside_plugin_registers_the_same_way() -> None:
    registry = ProviderRegistry()
    registry.register(
        ProviderPlugin(
            names=("echo",),
            create=EchoProvider,
            resolve=lambda name, env, url, model, timeout: ProviderOptions(
                name, None, url, model, timeout
            ),
            configured=lambda name, env: False,
        )
    )
    provider = registry.create("echo", settings(), {})
    assert isinstance(provider, EchoProvider)
    assert "anthropic" in registry.names()  # registering by hand does not hide the built-ins


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "o"}, "anthropic"),
        ({"OPENAI_API_KEY": "o", "GROQ_API_KEY": "g"}, "openai"),
        ({"GROQ_API_KEY": "g"}, "groq"),
        ({"TOGETHER_API_KEY": "t"}, "together"),
        ({"TOGETHER_API_KEY": "t", "VLLM_API_KEY": "v"}, "together"),
        ({"VLLM_API_KEY": "v"}, "vllm"),
        ({}, "demo"),
    ],
)
async def test_auto_picks_the_first_configured_provider(env: dict[str, str], expected: str) -> None:
    name, reason = await choose_provider(ProviderRegistry(), settings(), env)
    assert name == expected
    assert reason.startswith("auto")


async def test_auto_uses_a_base_url_as_an_openai_compatible_server() -> None:
    s = settings(base_url="http://127.0.0.1:1/v1", model="m")
    name, _ = await choose_provider(ProviderRegistry(), s, {})
    assert name == "openai-compatible"


async def test_auto_sends_the_vllm_key_to_the_vllm_server_at_the_base_url() -> None:
    registry = ProviderRegistry()
    s = settings(base_url="http://127.0.0.1:1/v1", model="m")
    name, _ = await choose_provider(registry, s, {"VLLM_API_KEY": "v"})
    assert name == "vllm"
    options = registry.options(name, s, {"VLLM_API_KEY": "v"})
    assert (options.api_key, options.base_url) == ("v", "http://127.0.0.1:1/v1")


async def test_auto_with_the_vllm_key_alone_asks_for_the_model() -> None:
    registry = ProviderRegistry()
    name, _ = await choose_provider(registry, settings(), {"VLLM_API_KEY": "v"})
    assert name == "vllm"
    with pytest.raises(ConfigError, match="CHATD_MODEL"):
        registry.create(name, settings(), {"VLLM_API_KEY": "v"})


async def test_demo_choice_says_how_to_get_a_real_model() -> None:
    _, reason = await choose_provider(ProviderRegistry(), settings(), {})
    assert "ANTHROPIC_API_KEY" in reason


async def test_asking_for_a_provider_never_falls_back_to_demo() -> None:
    with pytest.raises(ProviderNotConfigured, match="OPENAI_API_KEY"):
        await choose_provider(ProviderRegistry(), settings(provider="openai"), {})


async def test_unknown_provider_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="choose one of: auto, anthropic"):
        await choose_provider(ProviderRegistry(), settings(provider="gpt"), {})


def test_openai_compatible_needs_an_endpoint_and_a_model() -> None:
    registry = ProviderRegistry()
    with pytest.raises(ConfigError, match="CHATD_BASE_URL"):
        registry.create("openai-compatible", settings(), {})
    with pytest.raises(ConfigError, match="CHATD_MODEL"):
        registry.create("openai-compatible", settings(base_url="http://127.0.0.1:1/v1"), {})


def test_local_presets_need_no_key() -> None:
    registry = ProviderRegistry()
    for name in ("ollama", "llamacpp"):
        options = registry.options(name, settings(), {})
        assert options.api_key is None
        assert options.base_url is not None
        assert options.base_url.startswith("http://127.0.0.1")


def test_base_url_variables_are_honoured() -> None:
    registry = ProviderRegistry()
    env = {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "http://127.0.0.1:5/"}
    assert registry.options("anthropic", settings(), env).base_url == "http://127.0.0.1:5/"
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:6/v1"}
    assert registry.options("openai", settings(), env).base_url == "http://127.0.0.1:6/v1"
    assert (
        registry.options("openai", settings(base_url="http://x:1/v1"), env).base_url
        == "http://x:1/v1"
    )


async def test_pool_builds_each_provider_once_and_logs_the_choice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="chatd"):
        pool = await ProviderPool.start(settings(), env={})
    try:
        assert pool.default_name == "demo"
        assert pool.get() is pool.get("demo")
        assert isinstance(pool.get(), DemoProvider)
    finally:
        await pool.aclose()
    lines = [r.getMessage() for r in caplog.records if "using provider" in r.getMessage()]
    assert len(lines) == 1
    assert "demo" in lines[0]
