"""A conversation sent turn by turn keeps its prefix, so OpenAI's cache grows with it."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

from chatd.providers.base import Provider
from chatd.providers.retry import RetryPolicy, stream_with_retries
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import (
    ChatRequest,
    Message,
    Part,
    Role,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolResultPart,
    ToolSpec,
    UsageEvent,
)

ProviderFactory = Callable[..., Provider]
FAST = RetryPolicy(max_attempts=1)
SYSTEM = " ".join(f"rule{n}: answer politely and precisely." for n in range(200))
WEATHER = ToolSpec(
    "weather",
    "Tell the weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
)
# OpenAI caches prefixes in steps of 128 tokens from 1,024 on.
STEP = 128


def question(n: int, directives: str = "") -> str:
    """Return a user message of about 150 tokens."""
    return f"Question {n}: " + " ".join(f"detail{n}x{k}" for k in range(150)) + directives


async def test_openai_reads_each_turns_prompt_from_the_cache_on_the_next(
    make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream
) -> None:
    provider = make_sdk_provider("openai", fake_upstream.url)
    tool_input = "%7B%22city%22%3A%22Oslo%22%2C%22days%22%3A2%7D"
    asks = [
        question(1),
        question(2, f" [fake: tool=weather tool_input={tool_input}]"),
        question(3),
        question(4),
    ]
    history: list[Message] = []
    prompts: list[int] = []
    cached: list[int] = []
    for ask in asks:
        history.append(Message.user(ask))
        while True:  # a tool round is a call of its own, as the engine makes it
            request = ChatRequest(
                model="m",
                messages=tuple(history),
                max_tokens=200,
                system=SYSTEM,
                temperature=0.2,
                stop=("zzz",),
                tools=(WEATHER,),
                summary="The user is planning a trip.",
            )
            events: list[StreamEvent] = [
                e async for e in stream_with_retries(provider, request, FAST)
            ]
            usage = next(e.usage for e in events if isinstance(e, UsageEvent))
            prompts.append(usage.input_tokens)
            cached.append(usage.cache_read_tokens)
            text = "".join(e.text for e in events if isinstance(e, TextDelta))
            calls = [e.call for e in events if isinstance(e, ToolCallEvent)]
            parts: tuple[Part, ...] = ((TextPart(text),) if text else ()) + tuple(calls)
            history.append(Message(Role.ASSISTANT, parts))
            if not calls:
                break
            results = tuple(ToolResultPart(c.id, "Rain, 7 degrees.") for c in calls)
            history.append(Message(Role.USER, results))

    assert len(prompts) == 5  # four turns, one of them with a tool round
    assert prompts[0] >= 1024
    assert cached[0] == 0
    # Every call finds the whole of the previous call's prompt, to the last full step, cached.
    for before, now in zip(prompts, cached[1:], strict=False):
        assert now == before // STEP * STEP
    assert cached == sorted(set(cached))  # growing every call

    bodies: list[dict[str, Any]] = [r.body for r in fake_upstream.requests]
    for earlier, later in pairwise(bodies):
        assert list(later) == list(earlier)  # the same keys in the same order
        assert later["messages"][: len(earlier["messages"])] == earlier["messages"]
    # Nothing but the model goes ahead of the messages.
    assert list(bodies[0])[:2] == ["model", "messages"]
