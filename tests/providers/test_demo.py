"""The offline demo provider answers every request, however odd the conversation."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.providers.base import ProviderOptions
from chatd.providers.demo import DemoProvider
from chatd.types import (
    ChatRequest,
    Message,
    Role,
    StopEvent,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    UsageEvent,
)

CALL = ToolCallPart("call_1", "calculate", {"expression": "2+3"})
RESULT = ToolResultPart("call_1", "5")


def answer(request: ChatRequest) -> list[StreamEvent]:
    """Return every event the demo streams for a request."""
    demo = DemoProvider(ProviderOptions("demo", None, None, None, 10))

    async def run() -> list[StreamEvent]:
        return [event async for event in demo.stream(request)]

    return asyncio.run(run())


def check_answered(request: ChatRequest) -> str:
    """Check the demo streamed text, then usage, then a stop reason; return the text."""
    events = answer(request)
    *deltas, usage, stop = events
    assert all(isinstance(e, TextDelta) for e in deltas)
    assert isinstance(usage, UsageEvent)
    assert isinstance(stop, StopEvent)
    text = "".join(e.text for e in deltas if isinstance(e, TextDelta))
    assert len(text.split()) <= request.max_tokens
    return text


@pytest.mark.parametrize(
    "messages",
    [
        (),
        (Message.assistant("hello"),),
        (Message.user("hi"), Message.assistant("hello")),
        (Message(Role.USER, (RESULT,)),),
        (Message.user("add"), Message(Role.ASSISTANT, (CALL,)), Message(Role.USER, (RESULT,))),
        (Message.user(""),),
        (Message.user("   "),),
        (Message(Role.USER, ()),),
        (Message(Role.ASSISTANT, ()),),
    ],
)
def test_the_demo_answers_odd_but_admitted_conversations(messages: tuple[Message, ...]) -> None:
    text = check_answered(ChatRequest("demo-1", messages, 200, system="Be brief."))
    assert text.startswith("(demo) ")
    assert 'My instructions: "Be brief."' in text


texts = st.text(max_size=30)
parts = st.one_of(
    st.builds(TextPart, texts),
    st.builds(ToolCallPart, texts, texts, st.dictionaries(texts, texts, max_size=2)),
    st.builds(ToolResultPart, texts, texts, st.booleans()),
)
messages = st.builds(Message, st.sampled_from(Role), st.lists(parts, max_size=3).map(tuple))
requests = st.builds(
    ChatRequest,
    model=st.just("demo-1"),
    messages=st.lists(messages, max_size=6).map(tuple),
    max_tokens=st.integers(1, 400),
    system=st.none() | texts,
    stop=st.lists(texts, max_size=2).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(requests)
def test_the_demo_answers_any_request(request: ChatRequest) -> None:
    text = check_answered(request)
    if not request.stop and request.max_tokens >= 100:
        assert text.startswith("(demo) ")
