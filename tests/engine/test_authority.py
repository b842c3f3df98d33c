"""The deployment decides what runs: models, providers, tools, on every path (promise 6)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from chatd.config import Settings
from chatd.engine import ChatService, CompletionOptions, TurnOptions
from chatd.errors import ConfigError, ProviderNotConfigured
from chatd.providers.pool import ProviderPool
from chatd.testing.fake_upstream import FakeUpstream
from chatd.tools import ToolRegistry, tool
from chatd.tools.builtins import builtin_tools
from chatd.types import GenerationParams, Message, ToolResultEvent, TurnEnded, TurnEvent, TurnState

ServiceFactory = Callable[..., Awaitable[ChatService]]
KINDS = ["anthropic", "openai"]
UNCONFIGURED = ["ollama", "vllm", "llamacpp", "openai-compatible", "demo"]


async def run(service: ChatService, session: str, text: str, **opts: object) -> list[TurnEvent]:
    """Run a turn to the end and return its events."""
    return [e async for e in service.turn(session, text, TurnOptions(**opts))]  # type: ignore[arg-type]


async def complete(service: ChatService, **opts: object) -> None:
    """Run a stateless call on one message to its end."""
    options = CompletionOptions(**opts)  # type: ignore[arg-type]
    async for _ in service.complete([Message.user("my secret text")], options):
        pass


@asynccontextmanager
async def listener() -> AsyncIterator[tuple[str, list[int]]]:
    """Yield a base URL whose server counts the connections it gets (and closes them)."""
    connections: list[int] = []

    async def note(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(note, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", connections
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_send_naming_only_a_provider_is_held_to_the_model_list(
    make_service: ServiceFactory, fake_upstream: FakeUpstream, kind: str
) -> None:
    service = await make_service(kind, models=(f"{kind}/allowed-model",))
    # The provider's default model (test-model) is not on the list.
    with pytest.raises(ConfigError, match=r"'test-model'.*allowed models: \w+/allowed-model"):
        await run(service, "s1", "hi", provider=kind)
    assert await service.store.get_session("local", "s1") is None
    assert fake_upstream.requests == []
    allowed = GenerationParams(model="allowed-model")
    events = await run(service, "s1", "hi", provider=kind, params=allowed)
    assert isinstance(events[-1], TurnEnded)
    assert events[-1].state is TurnState.COMPLETE
    assert fake_upstream.requests[-1].body["model"] == "allowed-model"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_sessions_stored_model_is_held_to_the_model_list(
    make_service: ServiceFactory, fake_upstream: FakeUpstream, kind: str
) -> None:
    service = await make_service(kind, models=(f"{kind}/allowed-model",))
    # As an import (or a session stored before the list was set) leaves it.
    stored = GenerationParams(model="stored-model")
    await service.store.ensure_session("local", "s1", params=stored, provider=kind)
    with pytest.raises(ConfigError, match=r"'stored-model'.*not allowed"):
        await run(service, "s1", "hi")
    info = await service.store.get_session("local", "s1")
    assert info is not None
    assert info.turn_count == 0
    assert await service.store.list_turns("local", "s1") == []
    assert fake_upstream.requests == []


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stateless_call_is_held_to_the_model_list(
    make_service: ServiceFactory, fake_upstream: FakeUpstream, kind: str
) -> None:
    service = await make_service(kind, models=(f"{kind}/allowed-model",))
    with pytest.raises(ConfigError, match=r"'test-model'.*not allowed"):
        await complete(service, provider=kind)
    with pytest.raises(ConfigError, match=r"'other-model'.*not allowed"):
        await complete(service, params=GenerationParams(model="other-model"))
    assert fake_upstream.requests == []
    await complete(service, params=GenerationParams(model="allowed-model"))
    assert fake_upstream.requests[-1].body["model"] == "allowed-model"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_provider_the_operator_did_not_configure_is_never_contacted(
    make_service: ServiceFactory, kind: str
) -> None:
    async with listener() as (url, connections):
        # CHATD_BASE_URL points every preset at the listener, so any request would reach it.
        service = await make_service(kind, base_url=url)
        for name in UNCONFIGURED:
            refused = rf"provider '{name}' is not configured on this server; it offers: {kind}$"
            with pytest.raises(ProviderNotConfigured, match=refused):
                await run(service, "s1", "my secret text", provider=name)
            with pytest.raises(ProviderNotConfigured, match=refused):
                await complete(service, provider=name)
            # A session that names it (imported, or stored before) fares no better.
            await service.store.ensure_session("local", f"stored-{name}", provider=name)
            with pytest.raises(ProviderNotConfigured, match=refused):
                await run(service, f"stored-{name}", "my secret text")
            assert await service.store.list_turns("local", f"stored-{name}") == []
        with pytest.raises(
            ConfigError, match=rf"unknown provider 'nope'; this server offers: {kind}"
        ):
            await run(service, "s1", "hi", provider="nope")
    assert await service.store.get_session("local", "s1") is None
    assert connections == []


def test_callers_may_name_the_default_the_listed_and_the_keyed_providers() -> None:
    settings = Settings(
        provider="anthropic", models=["ollama/llama3.2", "meta-llama/x", "bare"], _env_file=None
    )  # type: ignore[call-arg]
    env = {"ANTHROPIC_API_KEY": "a", "GROQ_API_KEY": "g", "OPENAI_BASE_URL": "http://x"}
    pool = ProviderPool(settings, "anthropic", env=env)
    assert pool.offered() == ["anthropic", "groq", "ollama"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_tool_the_turn_did_not_offer_never_runs(
    make_service: ServiceFactory, fake_upstream: FakeUpstream, kind: str
) -> None:
    ran: list[str] = []

    def record(note: str) -> str:
        """Record a note."""
        ran.append(note)
        return "recorded"

    base = await make_service(kind)
    tools = ToolRegistry([*builtin_tools(), tool(record)])
    service = ChatService(base.store, base.providers, base.config, tools)
    args = urllib.parse.quote(json.dumps({"note": "x"}))
    for offered in (("current_time",), ()):
        text = f"go [fake: tool=record tool_input={args}]"
        events = await run(service, f"s{len(offered)}", text, tools=offered)
        results = [e.result for e in events if isinstance(e, ToolResultEvent)]
        assert [(r.is_error, r.content) for r in results] == [
            (True, "tool 'record' was not offered")
        ]
        assert isinstance(events[-1], TurnEnded)
        assert "not offered" in json.dumps(fake_upstream.requests[-1].body)
    assert ran == []
    await run(service, "s9", f"go [fake: tool=record tool_input={args}]", tools=("record",))
    assert ran == ["x"]
