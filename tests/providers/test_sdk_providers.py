"""Both SDK providers against the fake upstream: text, stop reasons, usage, tools, faults."""

from __future__ import annotations

import json
import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from chatd.errors import (
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamRateLimited,
    UpstreamStreamError,
    UpstreamUnavailable,
)
from chatd.providers.base import Provider
from chatd.providers.retry import RetryPolicy, stream_with_retries
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import (
    ChatRequest,
    Message,
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
    Usage,
    UsageEvent,
)

ProviderFactory = Callable[..., Provider]
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_total_s=30)


def request(*texts: str, **kw: object) -> ChatRequest:
    """Build a request alternating user/assistant texts, ending with a user text."""
    messages = tuple(
        Message.user(t) if i % 2 == 0 else Message.assistant(t) for i, t in enumerate(texts)
    )
    params: dict[str, Any] = {"max_tokens": 200, **kw}
    return ChatRequest(model="m", messages=messages, **params)


async def collect(
    provider: Provider, req: ChatRequest, policy: RetryPolicy = FAST
) -> list[StreamEvent]:
    """Run one call through the retry wrapper and return every event."""
    return [e async for e in stream_with_retries(provider, req, policy)]


async def collect_until_failure(
    provider: Provider, req: ChatRequest
) -> tuple[list[StreamEvent], Exception]:
    """Return the events that arrived before the call failed, and the error."""
    seen: list[StreamEvent] = []
    try:
        async for event in stream_with_retries(provider, req, FAST):
            seen.append(event)
    except Exception as exc:
        return seen, exc
    raise AssertionError("the call did not fail")


def text_of(events: list[StreamEvent]) -> str:
    """Join the text deltas."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def stop_of(events: list[StreamEvent]) -> StopReason:
    """Return the stop reason, checking it is the last event."""
    assert isinstance(events[-1], StopEvent)
    return events[-1].reason


async def test_streams_text_in_chunks_that_quote_the_conversation(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    events = await collect(provider, request("hi", "hello!", "how are you? [fake: chunks=5]"))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 5
    assert 'You said: "how are you?"' in text_of(events)
    assert "to 3 messages" in text_of(events)
    assert stop_of(events) is StopReason.END_TURN
    assert len(fake_upstream.requests) == 1


async def test_system_prompt_goes_where_each_provider_wants_it(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    await collect(provider, request("hi", system="Be brief."))
    body = fake_upstream.requests[0].body
    if provider.name == "anthropic":
        assert body["system"] == "Be brief."
        assert all(m["role"] != "system" for m in body["messages"])
    else:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_sends_generation_parameters(provider: Provider, fake_upstream: FakeUpstream) -> None:
    await collect(provider, request("hi", temperature=0.3, stop=("zzz",)))
    body = fake_upstream.requests[0].body
    assert body["temperature"] == 0.3
    assert body["model"] == "m"
    assert body.get("stop_sequences", body.get("stop")) == ["zzz"]


@pytest.mark.parametrize(
    ("directive", "expected"),
    [
        ("stop=end_turn", StopReason.END_TURN),
        ("stop=max_tokens", StopReason.MAX_TOKENS),
        ("stop=refusal", StopReason.REFUSAL),
    ],
)
async def test_maps_stop_reasons(provider: Provider, directive: str, expected: StopReason) -> None:
    events = await collect(provider, request(f"go [fake: {directive}]"))
    assert stop_of(events) is expected


async def test_reports_stop_sequences(provider: Provider) -> None:
    events = await collect(provider, request("say it [fake: stop=stop_sequence]"))
    # OpenAI's finish_reason cannot tell a stop sequence from a natural end.
    assert stop_of(events) in (StopReason.STOP_SEQUENCE, StopReason.END_TURN)
    if provider.name == "anthropic":
        assert stop_of(events) is StopReason.STOP_SEQUENCE


async def test_max_tokens_truncation_is_reported(provider: Provider) -> None:
    events = await collect(provider, request("hi [fake: words=50]", max_tokens=5))
    assert stop_of(events) is StopReason.MAX_TOKENS
    assert len(text_of(events).split()) == 5


async def test_reports_usage_including_cache_tokens(provider: Provider) -> None:
    events = await collect(
        provider, request("hi [fake: usage_in=120 usage_out=7 cache_read=30 cache_write=11]")
    )
    usage = next(e.usage for e in events if isinstance(e, UsageEvent))
    assert usage.input_tokens == 120
    assert usage.output_tokens == 7
    assert usage.cache_read_tokens == 30
    if provider.name == "anthropic":
        assert usage.cache_write_tokens == 11


async def test_tool_calls_arrive_whole_with_parsed_input(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    args = urllib.parse.quote(json.dumps({"expression": "2+3", "nested": {"a": [1, 2]}}))
    spec = ToolSpec("calculate", "math", {"type": "object", "properties": {}})
    events = await collect(
        provider, request(f"add [fake: tool=calculate tool_input={args}]", tools=(spec,))
    )
    calls = [e.call for e in events if isinstance(e, ToolCallEvent)]
    assert len(calls) == 1
    assert calls[0].name == "calculate"
    assert calls[0].input == {"expression": "2+3", "nested": {"a": [1, 2]}}
    assert stop_of(events) is StopReason.TOOL_USE
    body = fake_upstream.requests[0].body
    assert "calculate" in json.dumps(body["tools"])


async def test_tool_results_are_sent_back_in_the_providers_shape(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    call = ToolCallPart("call_1", "calculate", {"expression": "2+3"})
    messages = (
        Message.user("add [fake: tool=calculate]"),
        Message(Message.assistant("").role, (call,)),
        Message(Message.user("").role, (ToolResultPart("call_1", "5"),)),
    )
    req = ChatRequest(model="m", messages=messages, max_tokens=100)
    events = await collect(provider, req)
    assert 'Tool said: "5"' in text_of(events)
    assert stop_of(events) is StopReason.END_TURN
    sent = json.dumps(fake_upstream.requests[0].body)
    assert "call_1" in sent


async def test_retries_honour_retry_after(provider: Provider, fake_upstream: FakeUpstream) -> None:
    events = await collect(provider, request("hi [fake: status=429 retry_after=1 fail_times=1]"))
    assert stop_of(events) is StopReason.END_TURN
    first, second = fake_upstream.requests
    assert second.time - first.time >= 0.95


async def test_retries_honour_retry_after_ms(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    events = await collect(
        provider, request("hi [fake: status=529 retry_after_ms=400 fail_times=2]")
    )
    assert stop_of(events) is StopReason.END_TURN
    times = [r.time for r in fake_upstream.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.38
    assert times[2] - times[1] >= 0.38


@pytest.mark.parametrize("status", [408, 500, 502, 503, 529])
async def test_retries_transient_statuses_then_succeeds(
    provider: Provider, fake_upstream: FakeUpstream, status: int
) -> None:
    events = await collect(provider, request(f"hi [fake: status={status} fail_times=2]"))
    assert stop_of(events) is StopReason.END_TURN
    assert len(fake_upstream.requests) == 3


async def test_gives_up_after_bounded_attempts_counted_once(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    with pytest.raises(UpstreamUnavailable):
        await collect(provider, request("hi [fake: status=500]"))
    # Three attempts in all: the SDK's own retries are off, so they do not multiply ours.
    assert len(fake_upstream.requests) == 3


async def test_rate_limit_exhausted_keeps_the_retry_hint(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    with pytest.raises(UpstreamRateLimited) as info:
        await collect(provider, request("hi [fake: status=429 retry_after=0]"))
    assert info.value.retry_after == 0
    assert len(fake_upstream.requests) == 3


async def test_does_not_wait_past_the_total_time_budget(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_total_s=2)
    with pytest.raises(UpstreamRateLimited) as info:
        await collect(provider, request("hi [fake: status=429 retry_after=30]"), policy)
    assert info.value.retry_after == 30
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("status", [400, 404, 413])
async def test_client_errors_are_not_retried(
    provider: Provider, fake_upstream: FakeUpstream, status: int
) -> None:
    with pytest.raises(UpstreamBadRequest):
        await collect(provider, request(f"hi [fake: status={status}]"))
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_are_not_retried(
    provider: Provider, fake_upstream: FakeUpstream, status: int
) -> None:
    with pytest.raises(UpstreamAuthError):
        await collect(provider, request(f"hi [fake: status={status}]"))
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_rejected_key_is_not_retried_and_not_echoed(
    kind: str, fake_upstream: FakeUpstream, make_sdk_provider: ProviderFactory
) -> None:
    provider = make_sdk_provider(kind, fake_upstream.url, key="bad-key")
    with pytest.raises(UpstreamAuthError) as info:
        await collect(provider, request("hi"))
    assert len(fake_upstream.requests) == 1
    assert "bad-key" not in info.value.message


async def test_spent_quota_is_not_retried(provider: Provider, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(UpstreamRateLimited) as info:
        await collect(provider, request("hi [fake: status=429 quota=1]"))
    assert not info.value.retryable
    assert len(fake_upstream.requests) == 1


async def test_error_mid_stream_fails_without_retry(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    seen, error = await collect_until_failure(
        provider, request("hi [fake: chunks=4 stream_error_after=2]")
    )
    assert isinstance(error, UpstreamStreamError)
    assert len([e for e in seen if isinstance(e, TextDelta)]) == 2
    assert len(fake_upstream.requests) == 1


async def test_error_before_any_output_is_retried(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    events = await collect(provider, request("hi [fake: stream_error_after=0 fail_times=1]"))
    assert stop_of(events) is StopReason.END_TURN
    assert len(fake_upstream.requests) == 2


async def test_dropped_connection_mid_stream_fails_cleanly(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    seen, error = await collect_until_failure(provider, request("hi [fake: chunks=4 drop_after=2]"))
    assert isinstance(error, UpstreamStreamError)
    assert len([e for e in seen if isinstance(e, TextDelta)]) == 2
    assert len(fake_upstream.requests) == 1


async def test_unreachable_provider_is_a_plain_unavailable_error(
    make_sdk_provider: ProviderFactory,
) -> None:
    provider = make_sdk_provider("anthropic", "http://127.0.0.1:9")
    with pytest.raises(UpstreamUnavailable) as info:
        await collect(provider, request("hi"), RetryPolicy(max_attempts=2, base_delay_s=0.01))
    assert "cannot reach anthropic" in info.value.message


def dead_port() -> int:
    """Return a local port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_unreachable_provider_is_named_by_its_root_cause(
    kind: str, make_sdk_provider: ProviderFactory
) -> None:
    port = dead_port()
    provider = make_sdk_provider(kind, f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamUnavailable) as info:
        await collect(provider, request("hi"), RetryPolicy(max_attempts=1))
    # Not the SDKs' words: openai's says "Request timed out.", anthropic's "Connection error.".
    assert info.value.message == f"cannot reach {kind} at 127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_connection_dropped_mid_reply_says_so(
    kind: str, fake_upstream: FakeUpstream, make_sdk_provider: ProviderFactory
) -> None:
    provider = make_sdk_provider(kind, fake_upstream.url)
    _, error = await collect_until_failure(provider, request("hi [fake: chunks=4 drop_after=2]"))
    assert isinstance(error, UpstreamStreamError)
    assert error.message.endswith(
        f"lost the connection to {kind} at {fake_upstream.url.removeprefix('http://')}: "
        "it closed before the reply was complete"
    )


async def test_openai_asks_for_usage_and_copes_without_it(
    fake_upstream: FakeUpstream, make_sdk_provider: ProviderFactory
) -> None:
    provider = make_sdk_provider("openai", fake_upstream.url)
    events = await collect(provider, request("hi [fake: no_usage=1]"))
    assert fake_upstream.requests[0].body["stream_options"] == {"include_usage": True}
    usage = next(e.usage for e in events if isinstance(e, UsageEvent))
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.estimated
    assert stop_of(events) is StopReason.END_TURN


def test_usage_adds_up() -> None:
    assert Usage(1, 2, 3, 4) + Usage(10, 20, 30, 40) == Usage(11, 22, 33, 44)


def test_a_sum_of_usage_is_estimated_if_any_part_is() -> None:
    exact, guessed = Usage(1, 2), Usage(3, 4, estimated=True)
    assert exact + guessed == Usage(4, 6, estimated=True)
    assert guessed + exact == Usage(4, 6, estimated=True)
    assert not (exact + exact).estimated


async def test_unknown_stream_events_are_tolerated(provider: Provider) -> None:
    events = await collect(provider, request("hi [fake: chunks=4 unknown_event=1]"))
    assert 'You said: "hi"' in text_of(events)
    assert stop_of(events) is StopReason.END_TURN


async def test_servers_that_reject_stream_options_still_work(
    fake_upstream: FakeUpstream, make_sdk_provider: ProviderFactory
) -> None:
    provider = make_sdk_provider("openai", fake_upstream.url)
    for text in ("hi [fake: reject_stream_options=1]", "again [fake: reject_stream_options=1]"):
        events = await collect(provider, request(text))
        assert stop_of(events) is StopReason.END_TURN
        usage = next(e.usage for e in events if isinstance(e, UsageEvent))
        assert usage.output_tokens > 0
    sent = [r.body for r in fake_upstream.requests]
    # Asked once, refused, then never again for this provider.
    assert ["stream_options" in b for b in sent] == [True, False, False]


async def test_a_long_prompt_is_read_from_the_anthropic_cache_on_the_next_turn(
    make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream
) -> None:
    provider = make_sdk_provider("anthropic", fake_upstream.url)
    system = " ".join(f"rule{n}: answer politely and precisely." for n in range(400))
    first = request("hello there")
    first = ChatRequest(model="m", messages=first.messages, max_tokens=200, system=system)
    events = await collect(provider, first)
    reply = text_of(events)
    written = next(e.usage for e in events if isinstance(e, UsageEvent))
    assert written.cache_write_tokens > 1024  # the prompt went into the cache...
    assert written.cache_read_tokens == 0
    second = request("hello there", reply, "and again?")
    second = ChatRequest(model="m", messages=second.messages, max_tokens=200, system=system)
    usage = next(e.usage for e in await collect(provider, second) if isinstance(e, UsageEvent))
    # ...and the next turn reads all of it back, paying full price only for what is new.
    assert usage.cache_read_tokens == written.cache_write_tokens
    assert usage.input_tokens < 100
    body = fake_upstream.requests[-1].body
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


async def test_a_short_request_carries_no_cache_breakpoints(
    make_sdk_provider: ProviderFactory, fake_upstream: FakeUpstream
) -> None:
    # Below the shortest cacheable prefix a breakpoint buys nothing: the body stays plain.
    provider = make_sdk_provider("anthropic", fake_upstream.url)
    short = request("hello")
    await collect(
        provider, ChatRequest(model="m", messages=short.messages, max_tokens=50, system="Be brief.")
    )
    body = fake_upstream.requests[-1].body
    assert body["system"] == "Be brief."
    assert body["messages"][-1]["content"] == "hello"
