"""Exact input token counts, where a provider offers them: what the call is then charged."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import pytest

from chatd.errors import UpstreamAuthError, UpstreamUnavailable
from chatd.providers.base import Provider, ProviderOptions, TokenCounter, count_request_tokens
from chatd.providers.demo import DemoProvider
from chatd.providers.retry import RetryPolicy, stream_with_retries
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import (
    ChatRequest,
    Message,
    Role,
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
    Usage,
    UsageEvent,
)

ProviderFactory = Callable[..., Provider]
FAST = RetryPolicy(max_attempts=1)
LONG_SYSTEM = " ".join(f"rule{n}: answer politely and precisely." for n in range(400))
WEATHER = ToolSpec(
    "weather",
    "Tell the weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string", "description": "Its name."}}},
)


def with_tools(system: str | None, summary: str | None) -> ChatRequest:
    """Build a request with every part a count must include: tools, a tool round, a summary."""
    messages = (
        Message.user("What is the weather in Oslo?"),
        Message(Role.ASSISTANT, (ToolCallPart("call_1", "weather", {"city": "Oslo"}),)),
        Message(Role.USER, (ToolResultPart("call_1", "Rain, 7 degrees."),)),
        Message.assistant("It rains in Oslo."),
        Message.user("And tomorrow?"),
    )
    return ChatRequest(
        model="m",
        messages=messages,
        max_tokens=200,
        system=system,
        temperature=0.5,
        stop=("zzz",),
        tools=(WEATHER,),
        summary=summary,
    )


async def charged(provider: Provider, request: ChatRequest) -> int:
    """Stream the request and return every input token it was charged, cached or not."""
    events: list[StreamEvent] = [e async for e in stream_with_retries(provider, request, FAST)]
    assert isinstance(events[-1], StopEvent)
    usage: Usage = next(e.usage for e in events if isinstance(e, UsageEvent))
    return usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens


@pytest.fixture
def anthropic(make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream) -> Provider:
    """Return the Anthropic provider against the fake (closed by make_sdk_provider)."""
    return make_sdk_provider("anthropic", fake_upstream.url)


@pytest.mark.parametrize(
    ("system", "summary"),
    [
        (None, None),
        ("Be brief.", None),
        ("Be brief.", "We talked about cats."),
        (LONG_SYSTEM, "Cats."),
    ],
)
async def test_the_anthropic_count_is_what_the_call_is_charged(
    anthropic: Provider, fake_upstream: FakeUpstream, system: str | None, summary: str | None
) -> None:
    request = with_tools(system, summary)
    counted = await count_request_tokens(anthropic, request)
    assert counted is not None
    assert counted > 0
    assert counted == await charged(anthropic, request)
    # Counted again once the long prompt is cached: the count is of all of it still.
    assert await count_request_tokens(anthropic, request) == counted
    assert counted == await charged(anthropic, request)


async def test_the_anthropic_count_sends_what_the_call_sends(
    anthropic: Provider, fake_upstream: FakeUpstream
) -> None:
    request = with_tools(LONG_SYSTEM, "Cats.")
    await count_request_tokens(anthropic, request)
    await charged(anthropic, request)
    count, call = fake_upstream.requests
    assert count.path == "/v1/messages/count_tokens"
    assert call.path == "/v1/messages"
    for key in ("model", "system", "messages", "tools"):
        assert count.body[key] == call.body[key], key
    # The count endpoint takes no generation parameters.
    assert not {"max_tokens", "temperature", "stop_sequences", "stream"} & set(count.body)


async def test_a_rejected_key_fails_the_count_as_it_fails_a_call(
    make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream
) -> None:
    provider = make_sdk_provider("anthropic", fake_upstream.url, key="bad-key")
    with pytest.raises(UpstreamAuthError):
        await count_request_tokens(provider, with_tools(None, None))


async def test_an_unreachable_provider_fails_the_count_plainly(
    make_sdk_provider: ProviderFactory,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = make_sdk_provider("anthropic", f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamUnavailable) as info:
        await count_request_tokens(provider, with_tools(None, None))
    assert info.value.message == f"cannot reach anthropic at 127.0.0.1:{port}: connection refused"


async def test_openai_compatible_servers_cannot_count(
    make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream
) -> None:
    provider = make_sdk_provider("openai", fake_upstream.url)
    assert await count_request_tokens(provider, with_tools("Be brief.", "Cats.")) is None
    assert fake_upstream.requests == []  # nothing asked over the wire


async def test_the_demo_cannot_count() -> None:
    demo = DemoProvider(ProviderOptions("demo", None, None, None, 10))
    assert await count_request_tokens(demo, with_tools("Be brief.", None)) is None


class Echo:
    """A provider written before token counting: it has no count_tokens."""

    name = "echo"
    default_model = "echo-1"

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Echo the last message."""
        yield TextDelta(request.messages[-1].text)
        yield StopEvent(StopReason.END_TURN)

    async def aclose(self) -> None:
        """Close nothing."""


async def test_a_provider_without_count_tokens_is_still_a_provider_that_cannot_count() -> None:
    echo: Provider = Echo()
    assert not isinstance(echo, TokenCounter)
    assert await count_request_tokens(echo, with_tools(None, None)) is None
