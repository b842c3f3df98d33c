"""ChatService end to end: memory, stored states, failures that leave the context alone."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable

import pytest

from chatd.engine import ChatService, TurnOptions
from chatd.engine.context import SlidingWindow
from chatd.errors import (
    ConfigError,
    InputError,
    InputTooLarge,
    ProviderNotConfigured,
    UpstreamStreamError,
    UpstreamUnavailable,
)
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import (
    GenerationParams,
    StopReason,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnEnded,
    TurnEvent,
    TurnStarted,
    TurnState,
)

ServiceFactory = Callable[..., Awaitable[ChatService]]


async def run(service: ChatService, session: str, text: str, **opts: object) -> list[TurnEvent]:
    """Run a turn to the end and return its events."""
    return [e async for e in service.turn(session, text, TurnOptions(**opts))]  # type: ignore[arg-type]


def ended(events: list[TurnEvent]) -> TurnEnded:
    """Return the final event, checking it is last and unique."""
    assert isinstance(events[-1], TurnEnded)
    assert sum(isinstance(e, TurnEnded) for e in events) == 1
    return events[-1]


async def context_size(service: ChatService, session: str) -> int:
    """Return how many messages the model would see from history."""
    return len(await service.store.context_messages("local", session))


async def test_second_turn_carries_the_first_exchange(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    first = ended(await run(service, "s1", "my name is Ada"))
    second = ended(await run(service, "s1", "what is my name?"))
    assert first.state is TurnState.COMPLETE
    assert "to 3 messages" in second.text
    sent = [m for m in fake_upstream.requests[-1].body["messages"] if m["role"] != "system"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "my name is Ada"),
        ("assistant", first.text),
        ("user", "what is my name?"),
    ]


async def test_events_start_with_ids_and_end_with_the_stored_turn(service: ChatService) -> None:
    events = await run(service, "s1", "hello [fake: chunks=3]")
    assert isinstance(events[0], TurnStarted)
    assert events[0].session_id == "s1"
    assert sum(isinstance(e, TextDelta) for e in events) == 3
    end = ended(events)
    assert end.turn_id == events[0].turn_id
    assert end.usage.output_tokens > 0
    turns = await service.store.list_turns("local", "s1")
    assert [t.state for t in turns] == [TurnState.COMPLETE]
    assert turns[0].usage == end.usage
    assert turns[0].ttft_ms is not None
    assert turns[0].latency_ms is not None
    assert turns[0].latency_ms >= turns[0].ttft_ms


async def test_a_long_streamed_reply_is_stored_whole(service: ChatService) -> None:
    events = await run(service, "s1", "hello [fake: chunks=300 words=300]")
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert sum(isinstance(e, TextDelta) for e in events) == 300
    [turn] = await service.store.list_turns("local", "s1")
    assert turn.messages[1].text == deltas == ended(events).text


async def test_user_message_is_stored_before_the_reply_streams(service: ChatService) -> None:
    seen_while_streaming = None
    async for event in service.turn("s1", "hello [fake: chunks=3 delay_ms=100]"):
        if isinstance(event, TextDelta) and seen_while_streaming is None:
            seen_while_streaming = await service.store.list_turns("local", "s1")
    assert seen_while_streaming is not None
    assert [t.state for t in seen_while_streaming] == [TurnState.STREAMING]
    assert seen_while_streaming[0].messages[0].text == "hello [fake: chunks=3 delay_ms=100]"


async def test_turn_is_stored_before_the_last_event_is_handed_on(service: ChatService) -> None:
    async for event in service.turn("s1", "hello"):
        if isinstance(event, TurnEnded):
            turns = await service.store.list_turns("local", "s1")
            assert turns[-1].state is TurnState.COMPLETE
            assert turns[-1].messages[-1].text == event.text


async def test_upstream_failure_stores_a_failed_turn_and_leaves_the_context(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    await run(service, "s1", "first")
    before = await context_size(service, "s1")
    with pytest.raises(UpstreamUnavailable):
        await run(service, "s1", "boom [fake: status=503]")
    assert await context_size(service, "s1") == before
    turns = await service.store.list_turns("local", "s1")
    assert turns[-1].state is TurnState.FAILED
    assert turns[-1].error
    ended_ok = ended(await run(service, "s1", "again"))
    assert "to 3 messages" in ended_ok.text  # first exchange + this message; no orphan


@pytest.mark.parametrize("fault", ["stream_error_after=2", "drop_after=2"])
async def test_broken_stream_keeps_partial_text_but_not_in_context(
    service: ChatService, fault: str
) -> None:
    with pytest.raises(UpstreamStreamError):
        await run(service, "s1", f"hi [fake: chunks=4 {fault}]")
    turn = (await service.store.list_turns("local", "s1"))[-1]
    assert turn.state is TurnState.FAILED
    assert turn.messages[-1].text  # the two chunks that arrived are kept
    assert await context_size(service, "s1") == 0


async def test_truncated_reply_is_reported_and_kept_in_context(service: ChatService) -> None:
    end = ended(await run(service, "s1", "hi [fake: stop=max_tokens]"))
    assert end.truncated
    assert end.state is TurnState.TRUNCATED
    assert await context_size(service, "s1") == 2


async def test_refusal_is_stored_as_refused_outside_the_context(service: ChatService) -> None:
    end = ended(await run(service, "s1", "hi [fake: stop=refusal]"))
    assert end.state is TurnState.REFUSED
    assert await context_size(service, "s1") == 0


async def test_session_and_request_parameters_reach_the_provider(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    await service.store.ensure_session(
        "local", "s1", params=GenerationParams(model="session-model", max_tokens=77)
    )
    await run(service, "s1", "hi", params=GenerationParams(temperature=0.5, stop=("zz",)))
    body = fake_upstream.requests[-1].body
    assert body["model"] == "session-model"
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 77
    assert body["temperature"] == 0.5
    await run(service, "s1", "hi", params=GenerationParams(model="request-model"))
    assert fake_upstream.requests[-1].body["model"] == "request-model"


async def test_tool_loop_runs_the_tool_and_feeds_the_result_back(service: ChatService) -> None:
    args = urllib.parse.quote(json.dumps({"expression": "6*7"}))
    events = await run(
        service, "s1", f"compute [fake: tool=calculate tool_input={args}]", tools=("calculate",)
    )
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert calls[0].call.input == {"expression": "6*7"}
    assert results[0].result.content == "42"
    assert not results[0].result.is_error
    end = ended(events)
    assert 'Tool said: "42"' in end.text
    context = await service.store.context_messages("local", "s1")
    assert len(context) == 4  # user, assistant tool call, tool result, final answer


async def test_invalid_tool_input_becomes_an_error_result(service: ChatService) -> None:
    args = urllib.parse.quote(json.dumps({"expr": 1}))
    events = await run(
        service, "s1", f"compute [fake: tool=calculate tool_input={args}]", tools=("calculate",)
    )
    result = next(e for e in events if isinstance(e, ToolResultEvent)).result
    assert result.is_error
    assert "expression" in result.content
    assert ended(events).state is TurnState.COMPLETE


async def test_tool_rounds_are_bounded(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic", max_tool_rounds=2)
    args = urllib.parse.quote(json.dumps({"expression": "1+1"}))
    with pytest.raises(Exception, match="more than 2 rounds"):
        await run(
            service,
            "s1",
            f"loop [fake: tool=calculate tool_input={args} tool_rounds=10]",
            tools=("calculate",),
        )
    turn = (await service.store.list_turns("local", "s1"))[-1]
    assert turn.state is TurnState.FAILED
    assert await context_size(service, "s1") == 0


async def test_bad_messages_are_refused_before_anything_is_stored(service: ChatService) -> None:
    with pytest.raises(InputError, match="empty"):
        await run(service, "s1", " \n\t ")
    with pytest.raises(InputTooLarge, match="32000"):
        await run(service, "s1", "x" * 32001)
    with pytest.raises(InputError, match="session id"):
        await run(service, "bad id!", "hi")
    assert await service.store.get_session("local", "s1") is None


async def test_control_characters_are_stripped_before_storage(service: ChatService) -> None:
    await run(service, "s1", "he\x00llo\x1b[31m\r\nworld\tok")
    stored = (await service.store.list_turns("local", "s1"))[0].messages[0].text
    assert stored == "hello[31m\nworld\tok"


async def test_unknown_provider_fails_before_storing(service: ChatService) -> None:
    with pytest.raises(ConfigError, match="unknown provider"):
        await run(service, "s2", "hi", provider="nope")
    assert await service.store.get_session("local", "s2") is None


async def test_provider_without_key_names_the_variable(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic", models=("groq/llama",))
    with pytest.raises(ProviderNotConfigured, match="GROQ_API_KEY"):
        await run(service, "s3", "hi", provider="groq", params=GenerationParams(model="llama"))


async def leave_after_first_delta(service: ChatService, text: str, **opts: object) -> str:
    """Start a turn, walk away after its first text chunk, and return the turn id."""
    stream = service.turn("s1", text, TurnOptions(**opts))  # type: ignore[arg-type]
    turn_id = ""
    async for event in stream:
        if isinstance(event, TurnStarted):
            turn_id = event.turn_id
        if isinstance(event, TextDelta):
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return turn_id


async def test_consumer_leaving_mid_reply_does_not_cancel_the_turn(service: ChatService) -> None:
    turn_id = await leave_after_first_delta(service, "hello [fake: chunks=4 delay_ms=30]")
    assert await service.wait_idle(10)
    turn = (await service.store.list_turns("local", "s1"))[-1]
    assert turn.id == turn_id
    assert turn.state is TurnState.COMPLETE
    assert 'You said: "hello"' in turn.messages[-1].text
    assert await context_size(service, "s1") == 2


async def test_abort_policy_stores_the_partial_reply_as_interrupted(service: ChatService) -> None:
    await leave_after_first_delta(
        service, "hello [fake: chunks=4 delay_ms=30]", on_disconnect="abort"
    )
    turn = (await service.store.list_turns("local", "s1"))[-1]
    assert turn.state is TurnState.INTERRUPTED
    assert turn.messages[-1].text
    assert await context_size(service, "s1") == 0


async def test_demo_uses_the_conversation(make_service: ServiceFactory) -> None:
    demo = await make_service("demo")
    a = ended(await run(demo, "a", "I like tea"))
    b = ended(await run(demo, "b", "I like coffee"))
    a2 = ended(await run(demo, "a", "what do I like?"))
    b2 = ended(await run(demo, "b", "what do I like?"))
    assert "I like tea" in a2.text
    assert "I like coffee" in b2.text
    assert a2.text != b2.text
    assert a.usage.input_tokens > 0
    assert b.usage.output_tokens > 0


async def test_demo_truncates_at_max_tokens(make_service: ServiceFactory) -> None:
    demo = await make_service("demo")
    end = ended(await run(demo, "a", "hello", params=GenerationParams(max_tokens=3)))
    assert end.truncated
    assert end.stop_reason is StopReason.MAX_TOKENS
    assert len(end.text.split()) == 3


async def test_a_session_keeps_its_own_tools_and_context_policy(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    settings = GenerationParams(tools=("calculate",), context_policy="window", context_limit=2)
    await service.store.ensure_session("local", "own", params=settings)
    for n in range(3):
        ended(await run(service, "own", f"question {n}"))
    body = fake_upstream.requests[-1].body
    names = [t.get("name") or t["function"]["name"] for t in body["tools"]]
    assert names == ["calculate"]
    # A window of 2 messages holds only the newest whole turn: this question alone.
    assert [m["content"] for m in body["messages"]] == ["question 2"]
    await run(service, "own", "and now?", tools=())
    assert "tools" not in fake_upstream.requests[-1].body


async def test_usage_an_upstream_reports_beyond_range_is_bounded_and_stored(
    service: ChatService,
) -> None:
    # A hostile or broken upstream: counts past a 32-bit column must not fail the turn.
    end = ended(await run(service, "s1", "hi [fake: usage_in=1099511627776 usage_out=7]"))
    assert end.state is TurnState.COMPLETE
    assert end.usage.input_tokens == 2**31 - 1
    [turn] = await service.store.list_turns("local", "s1")
    assert turn.state is TurnState.COMPLETE
    assert turn.usage.input_tokens == 2**31 - 1
    assert turn.usage.output_tokens == 7


@pytest.mark.parametrize("session_limit", [2, 6, 40])
async def test_a_sessions_own_window_sees_exactly_its_history_whatever_the_servers_default(
    make_service: ServiceFactory, fake_upstream: FakeUpstream, session_limit: int
) -> None:
    # The open reads as far back as the server's default (a window of 4 messages) in one go;
    # a session whose window is shorter or longer still sees exactly its own window.
    service = await make_service("anthropic", policy=SlidingWindow(4))
    settings = GenerationParams(context_policy="window", context_limit=session_limit)
    await service.store.ensure_session("local", "own", params=settings)
    for n in range(25):
        ended(await run(service, "own", f"question {n}"))
    sent = [m["content"] for m in fake_upstream.requests[-1].body["messages"]]
    # The window moves in steps: past its limit, down to half of it.
    assert max(1, session_limit // 2 - 1) <= len(sent) <= session_limit
    assert sent[-1] == "question 24"
    assert sent[0] == f"question {24 - (len(sent) - 1) // 2}"
