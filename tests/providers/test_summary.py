"""A request's summary of older turns, on the wire and in the providers' prompt caches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatd.providers.base import Provider, ProviderOptions
from chatd.providers.demo import DemoProvider
from chatd.providers.retry import RetryPolicy, stream_with_retries
from chatd.testing.fake_tokens import MESSAGE_OVERHEAD, count_text
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import ChatRequest, Message, StopEvent, StreamEvent, TextDelta, Usage, UsageEvent

ProviderFactory = Callable[..., Provider]
FAST = RetryPolicy(max_attempts=1)
HEADING = "Summary of the earlier conversation:\n\n"
# About 2,800 tokens: past the shortest prefix either provider caches (1,024).
LONG_SYSTEM = " ".join(f"rule{n}: answer politely and precisely." for n in range(400))


def chat(*texts: str, system: str | None = None, summary: str | None = None) -> ChatRequest:
    """Build a request alternating user/assistant texts, ending with a user text."""
    messages = tuple(
        Message.user(t) if i % 2 == 0 else Message.assistant(t) for i, t in enumerate(texts)
    )
    return ChatRequest(model="m", messages=messages, max_tokens=200, system=system, summary=summary)


async def call(provider: Provider, request: ChatRequest) -> tuple[str, Usage]:
    """Stream one call and return its text and usage."""
    events: list[StreamEvent] = [e async for e in stream_with_retries(provider, request, FAST)]
    assert isinstance(events[-1], StopEvent)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return text, next(e.usage for e in events if isinstance(e, UsageEvent))


def breakpoints(body: dict[str, Any]) -> int:
    """Count the cache_control marks on a Messages body's tools, system and message blocks."""
    blocks: list[Any] = [*body.get("tools", ())]
    blocks += body["system"] if isinstance(body.get("system"), list) else []
    for message in body["messages"]:
        blocks += message["content"] if isinstance(message["content"], list) else []
    return sum("cache_control" in block for block in blocks)


async def test_the_summary_follows_the_system_prompt_on_each_wire(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    await call(provider, chat("and now?", system="Be brief.", summary="We talked about cats."))
    body = fake_upstream.requests[0].body
    summary = HEADING + "We talked about cats."
    if provider.name == "anthropic":
        assert body["system"] == [
            {"type": "text", "text": "Be brief."},
            {"type": "text", "text": summary},
        ]
        assert breakpoints(body) == 0  # short: nothing worth caching
    else:
        assert body["messages"][:3] == [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": summary},
            {"role": "user", "content": "and now?"},
        ]


async def test_without_a_system_prompt_the_summary_comes_first(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    await call(provider, chat("and now?", summary="We talked about cats."))
    body = fake_upstream.requests[0].body
    summary = HEADING + "We talked about cats."
    if provider.name == "anthropic":
        assert body["system"] == [{"type": "text", "text": summary}]
    else:
        assert body["messages"][0] == {"role": "system", "content": summary}


async def test_an_empty_summary_is_not_sent(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    await call(provider, chat("hi", system="Be brief.", summary=""))
    body = fake_upstream.requests[0].body
    if provider.name == "anthropic":
        assert body["system"] == "Be brief."
    else:
        assert [m["role"] for m in body["messages"]] == ["system", "user"]


async def test_a_new_summary_still_reads_the_system_prompt_from_the_anthropic_cache(
    make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream
) -> None:
    provider = make_sdk_provider("anthropic", fake_upstream.url)
    reply, first = await call(
        provider, chat("first question", system=LONG_SYSTEM, summary="We talked about cats.")
    )
    assert first.cache_read_tokens == 0
    assert first.cache_write_tokens > count_text(LONG_SYSTEM)
    # Older turns were folded into a new summary: everything after the system prompt changed.
    _, usage = await call(
        provider,
        chat("first question", reply, "next", system=LONG_SYSTEM, summary="Cats, then dogs."),
    )
    assert usage.cache_read_tokens == count_text(LONG_SYSTEM)
    body = fake_upstream.requests[-1].body
    assert [block.get("cache_control") for block in body["system"]] == [{"type": "ephemeral"}] * 2
    assert body["system"][1]["text"] == HEADING + "Cats, then dogs."
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


async def test_an_unchanged_summary_keeps_the_whole_conversation_cached(
    make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream
) -> None:
    provider = make_sdk_provider("anthropic", fake_upstream.url)
    texts: list[str] = ["first question"]
    written = 0
    for turn in range(3):
        reply, usage = await call(provider, chat(*texts, system=LONG_SYSTEM, summary="Cats."))
        # Each turn reads all the previous one wrote, and pays full price only for what is new.
        assert usage.cache_read_tokens == written
        assert usage.input_tokens < 100
        written = usage.cache_read_tokens + usage.cache_write_tokens
        texts += [reply, f"question {turn + 2}"]
    # System prompt, summary and the two newest user messages: Anthropic's limit of 4, exactly.
    assert breakpoints(fake_upstream.requests[-1].body) == 4


async def test_a_new_summary_keeps_the_system_prompt_in_openais_cached_prefix(
    make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream
) -> None:
    provider = make_sdk_provider("openai", fake_upstream.url)
    reply, first = await call(provider, chat("first", system=LONG_SYSTEM, summary="Cats."))
    assert first.cache_read_tokens == 0
    _, usage = await call(
        provider, chat("first", reply, "next", system=LONG_SYSTEM, summary="Dogs.")
    )
    # OpenAI caches in steps of 128 tokens: every whole step of the system prompt's message.
    system_message = MESSAGE_OVERHEAD + count_text(LONG_SYSTEM)
    assert usage.cache_read_tokens >= system_message // 128 * 128 >= 1024
    assert usage.cache_read_tokens < usage.input_tokens


async def test_the_demo_accepts_a_summary() -> None:
    demo = DemoProvider(ProviderOptions("demo", None, None, None, 10))
    text, _ = await call(demo, chat("hi", system="Be brief.", summary="We talked about cats."))
    assert 'You said: "hi"' in text
