"""The fake upstream speaks both providers' wire formats well enough for their official SDKs."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.testing.fake_upstream import FakeUpstream, RecordedRequest, create_app
from chatd.testing.fake_wire import estimate_input_tokens, split_pieces

CLAUDE = "claude-test"
GPT = "gpt-test"
WEATHER = {"city": "Paris", "days": 2}
WEATHER_ARG = urllib.parse.quote(json.dumps(WEATHER))
REPLY_RE = re.compile(r'^Fake reply #[0-9a-f]{8} to (\d+) messages?\. You said: "(.*)"\.$', re.S)


@pytest.fixture
def claude(fake_upstream: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="k", base_url=fake_upstream.url, max_retries=0) as client:
        yield client


@pytest.fixture
def gpt(fake_upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    url = fake_upstream.url + "/v1"
    with openai.OpenAI(api_key="k", base_url=url, max_retries=0) as client:
        yield client


@pytest.fixture
def raw(fake_upstream: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_upstream.url) as client:
        yield client


def ask_claude(client: anthropic.Anthropic, text: str, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("max_tokens", 500)
    messages: Any = [{"role": "user", "content": text}]
    message: anthropic.types.Message = client.messages.create(
        model=CLAUDE, messages=messages, **kwargs
    )
    return message


def ask_gpt(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": text}], **kwargs
    )


def claude_text(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def drain(stream: Iterable[Any]) -> list[Any]:
    return list(stream)


def sse_frames(body: str) -> list[tuple[str | None, str]]:
    frames = []
    for frame in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        frames.append((fields.get("event"), fields["data"]))
    return frames


# ---- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_reply_quotes_last_user_text_and_counts_messages(
    claude: anthropic.Anthropic, fake_upstream: FakeUpstream
) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "hello there [fake: chunks=2]"}]},
    ]
    reply = claude.messages.create(model=CLAUDE, max_tokens=500, messages=messages)  # type: ignore[arg-type]
    text = claude_text(reply)
    match = REPLY_RE.match(text)
    assert match is not None, text
    assert match.groups() == ("3", "hello there")
    assert reply.model == CLAUDE
    assert reply.id.startswith("msg_")
    assert reply.stop_reason == "end_turn"
    assert reply.stop_sequence is None
    assert reply.usage.input_tokens == estimate_input_tokens(fake_upstream.requests[0].body)
    assert reply.usage.output_tokens == len(text.split())
    assert reply.usage.cache_read_input_tokens == 0
    assert reply.usage.cache_creation_input_tokens == 0


def test_anthropic_stream_wire_has_exact_event_sequence(
    raw: httpx.Client, claude: anthropic.Anthropic
) -> None:
    body: Any = {
        "model": CLAUDE,
        "max_tokens": 500,
        "messages": [{"role": "user", "content": "stream me [fake: chunks=3]"}],
    }
    response = raw.post("/v1/messages", json={**body, "stream": True}, headers={"x-api-key": "k"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(response.text)
    names = [name for name, _ in frames]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [json.loads(payload) for _, payload in frames]
    assert all(item["type"] == name for item, name in zip(data, names, strict=True))
    start = data[0]["message"]
    assert start["content"] == []
    assert start["usage"]["output_tokens"] == 1
    assert start["usage"]["input_tokens"] == estimate_input_tokens(body)
    streamed = "".join(item["delta"]["text"] for item in data[3:6])
    assert streamed == claude_text(claude.messages.create(**body))
    assert data[-2]["usage"] == {"output_tokens": len(streamed.split())}
    assert data[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_anthropic_sdk_stream_gives_text_and_usage(claude: anthropic.Anthropic) -> None:
    text = "tell me [fake: cache_read=7 cache_write=5]"
    with claude.messages.stream(
        model=CLAUDE, max_tokens=500, messages=[{"role": "user", "content": text}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 4
    assert "".join(pieces) == claude_text(final) == claude_text(ask_claude(claude, text))
    assert final.stop_reason == "end_turn"
    assert final.usage.cache_read_input_tokens == 7
    assert final.usage.cache_creation_input_tokens == 5
    assert final.usage.output_tokens == len(claude_text(final).split())


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_use_carries_input(claude: anthropic.Anthropic, stream: bool) -> None:
    text = f"weather? [fake: tool=get_weather tool_input={WEATHER_ARG}]"
    message: anthropic.types.Message
    if stream:
        with claude.messages.stream(
            model=CLAUDE, max_tokens=500, messages=[{"role": "user", "content": text}]
        ) as events:
            kinds = [e.delta.type for e in events if e.type == "content_block_delta"]
            message = events.get_final_message()
        assert "input_json_delta" in kinds
    else:
        message = ask_claude(claude, text)
    assert message.stop_reason == "tool_use"
    assert claude_text(message).endswith("Calling get_weather.")
    tool = message.content[1]
    assert tool.type == "tool_use"
    assert tool.name == "get_weather"
    assert tool.input == WEATHER
    assert tool.id.startswith("toolu_")


def test_anthropic_tool_result_ends_the_loop(claude: anthropic.Anthropic) -> None:
    messages: Any = [
        {"role": "user", "content": f"weather? [fake: tool=get_weather tool_input={WEATHER_ARG}]"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": WEATHER}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "18C and sunny"}],
                }
            ],
        },
    ]
    reply = claude.messages.create(model=CLAUDE, max_tokens=500, messages=messages)
    assert reply.stop_reason == "end_turn"
    assert [block.type for block in reply.content] == ["text"]
    assert claude_text(reply).endswith('to 3 messages. Tool said: "18C and sunny".')


def test_anthropic_count_tokens_matches_usage(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "count these words please"}]
    counted = claude.messages.count_tokens(model=CLAUDE, messages=messages, system="be brief")
    reply = claude.messages.create(
        model=CLAUDE, max_tokens=500, messages=messages, system="be brief"
    )
    assert counted.input_tokens == reply.usage.input_tokens > 0


def test_anthropic_models_list(claude: anthropic.Anthropic) -> None:
    models = claude.models.list()
    assert models.data
    assert all(model.type == "model" for model in models.data)


# ---- OpenAI ------------------------------------------------------------------------------------


def test_openai_reply_has_chat_completion_shape(
    gpt: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    completion = gpt.chat.completions.create(
        model=GPT,
        messages=[
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "how are you"}]},
        ],
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == GPT
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.tool_calls is None
    match = REPLY_RE.match(choice.message.content or "")
    assert match is not None
    assert match.groups() == ("3", "how are you")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == estimate_input_tokens(fake_upstream.requests[0].body)
    assert usage.completion_tokens == len((choice.message.content or "").split())
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_stream_with_usage_ends_with_usage_chunk(gpt: openai.OpenAI) -> None:
    chunks = drain(
        ask_gpt(gpt, "stream please", stream=True, stream_options={"include_usage": True})
    )
    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask_gpt(gpt, "stream please").choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())


@pytest.mark.parametrize(
    ("text", "options"),
    [("no usage asked", None), ("[fake: no_usage=1]", {"include_usage": True})],
)
def test_openai_stream_without_usage_chunk(
    gpt: openai.OpenAI, text: str, options: dict[str, bool] | None
) -> None:
    extra = {"stream_options": options} if options else {}
    chunks = drain(ask_gpt(gpt, text, stream=True, **extra))
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_stream_wire_ends_with_done(raw: httpx.Client) -> None:
    body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    response = raw.post("/v1/chat/completions", json=body)
    assert response.text.endswith("data: [DONE]\n\n")
    assert all(name is None for name, _ in sse_frames(response.text))


def test_openai_tool_call_deltas_accumulate(gpt: openai.OpenAI) -> None:
    text = f"weather? [fake: tool=get_weather tool_input={WEATHER_ARG}]"
    chunks = drain(ask_gpt(gpt, text, stream=True))
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert calls[0].id.startswith("call_")
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == ""
    assert len(calls) > 2
    assert json.loads("".join(call.function.arguments for call in calls)) == WEATHER
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    message = ask_gpt(gpt, text).choices[0].message
    assert message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments) == WEATHER


def test_openai_tool_message_ends_the_loop(gpt: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: Any = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "go [fake: tool=f]"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done: 42"},
    ]
    completion = gpt.chat.completions.create(model=GPT, messages=messages)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert (choice.message.content or "").endswith('to 3 messages. Tool said: "done: 42".')


def test_tool_rounds_keeps_calling_until_enough_results(gpt: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: list[Any] = [{"role": "user", "content": "go [fake: tool=f tool_rounds=2]"}]
    finishes = []
    for _ in range(3):
        choice = gpt.chat.completions.create(model=GPT, messages=messages).choices[0]
        finishes.append(choice.finish_reason)
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "r"},
        ]
    assert finishes == ["tool_calls", "tool_calls", "stop"]


def test_openai_models_list(gpt: openai.OpenAI) -> None:
    models = gpt.models.list()
    assert models.data
    assert all(model.object == "model" and model.owned_by == "fake" for model in models.data)


# ---- Shaping directives ------------------------------------------------------------------------


def test_different_conversations_get_different_replies(claude: anthropic.Anthropic) -> None:
    one = claude_text(ask_claude(claude, "same words"))
    assert claude_text(ask_claude(claude, "same words")) == one
    assert claude_text(ask_claude(claude, "same words", system="other")) != one
    assert claude_text(ask_claude(claude, "other words")) != one


def test_max_tokens_truncates_to_words(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    full = claude_text(ask_claude(claude, "long one [fake: words=30]"))
    short = ask_claude(claude, "long one [fake: words=30]", max_tokens=5)
    assert short.stop_reason == "max_tokens"
    # The digest differs (max_tokens is part of the request); the words after it do not.
    assert claude_text(short).split()[3:] == full.split()[3:5]
    assert short.usage.output_tokens == 5

    choice = ask_gpt(gpt, "long one", max_completion_tokens=3).choices[0]
    assert choice.finish_reason == "length"
    assert len((choice.message.content or "").split()) == 3


def test_stop_sequence_cuts_reply(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    reply = ask_claude(claude, "alpha STOP beta", stop_sequences=["beta", "STOP"])
    assert reply.stop_reason == "stop_sequence"
    assert reply.stop_sequence == "STOP"
    assert claude_text(reply).endswith('You said: "alpha ')

    choice = ask_gpt(gpt, "alpha STOP beta", stop="STOP").choices[0]
    assert choice.finish_reason == "stop"
    assert "STOP" not in (choice.message.content or "")


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("stop_sequence", "stop"),
    ],
)
def test_forced_stop_reason_maps_per_provider(
    claude: anthropic.Anthropic, gpt: openai.OpenAI, stop: str, finish: str
) -> None:
    reply = ask_claude(claude, f"hi [fake: stop={stop} tool=f]")
    assert reply.stop_reason == stop
    assert [block.type for block in reply.content] == ["text"]
    assert (reply.stop_sequence is not None) == (stop == "stop_sequence")
    assert ask_gpt(gpt, f"hi [fake: stop={stop}]").choices[0].finish_reason == finish


def test_usage_overrides_are_reported_verbatim(
    claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    directive = "[fake: usage_in=100 usage_out=7 cache_read=30 cache_write=20]"
    usage = ask_claude(claude, directive).usage
    assert (usage.input_tokens, usage.output_tokens) == (100, 7)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (30, 20)
    gpt_usage = ask_gpt(gpt, directive).usage
    assert (gpt_usage.prompt_tokens, gpt_usage.completion_tokens, gpt_usage.total_tokens) == (
        100,
        7,
        107,
    )
    assert gpt_usage.prompt_tokens_details.cached_tokens == 30


def test_chunks_and_delay_shape_the_stream(gpt: openai.OpenAI) -> None:
    started = time.monotonic()
    chunks = drain(ask_gpt(gpt, "slow [fake: chunks=3 delay_ms=40]", stream=True))
    assert time.monotonic() - started >= 0.12
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3

    started = time.monotonic()
    ask_gpt(gpt, "slow [fake: chunks=3 delay_ms=40]")
    assert time.monotonic() - started >= 0.12

    many = drain(ask_gpt(gpt, "fine grained [fake: chunks=40]", stream=True))
    assert len([c for c in many if c.choices and c.choices[0].delta.content]) == 40


@given(st.text(max_size=80), st.integers(min_value=1, max_value=100))
def test_split_pieces_rejoin_exactly(text: str, chunks: int) -> None:
    pieces = split_pieces(text, chunks)
    assert "".join(pieces) == text
    assert all(pieces)
    assert len(pieces) == (min(chunks, len(text)) if text else 0)


# ---- Faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "claude_error", "gpt_error"),
    [
        (429, anthropic.RateLimitError, openai.RateLimitError),
        (500, anthropic.InternalServerError, openai.InternalServerError),
        (503, anthropic.ServiceUnavailableError, openai.InternalServerError),
        (529, anthropic.OverloadedError, openai.InternalServerError),
        (400, anthropic.BadRequestError, openai.BadRequestError),
        (404, anthropic.NotFoundError, openai.NotFoundError),
        (413, anthropic.ContentTooLargeError, openai.APIStatusError),
    ],
)
def test_status_directive_raises_typed_errors_with_retry_after(
    claude: anthropic.Anthropic,
    gpt: openai.OpenAI,
    status: int,
    claude_error: type[anthropic.APIStatusError],
    gpt_error: type[openai.APIStatusError],
) -> None:
    directive = f"x [fake: status={status} retry_after=7 retry_after_ms=1500]"
    with pytest.raises(claude_error) as claude_info:
        ask_claude(claude, directive)
    assert claude_info.value.status_code == status
    assert claude_info.value.response.headers["retry-after"] == "7"
    assert claude_info.value.response.headers["retry-after-ms"] == "1500"
    body = claude_info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}

    with pytest.raises(gpt_error) as gpt_info:
        ask_gpt(gpt, directive)
    assert gpt_info.value.status_code == status
    assert gpt_info.value.response.headers["retry-after"] == "7"
    assert set(gpt_info.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_anthropic_overloaded_error_type(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError) as info:
        ask_claude(claude, "[fake: status=529]")
    assert info.value.type == "overloaded_error"
    assert "retry-after" not in info.value.response.headers


def test_quota_error_says_quota_is_spent(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    directive = "x [fake: status=429 quota=1 retry_after=5]"
    with pytest.raises(openai.RateLimitError) as gpt_info:
        ask_gpt(gpt, directive)
    assert gpt_info.value.code == "insufficient_quota"
    assert gpt_info.value.type == "insufficient_quota"
    assert "retry-after" not in gpt_info.value.response.headers

    with pytest.raises(anthropic.EnforcedSpendLimitReachedError) as claude_info:
        ask_claude(claude, directive)
    assert claude_info.value.type == "rate_limit_error"
    assert "credit balance" in (claude_info.value.api_message or "")
    assert "retry-after" not in claude_info.value.response.headers


def test_fail_times_fails_then_succeeds(
    claude: anthropic.Anthropic, fake_upstream: FakeUpstream
) -> None:
    text = "flaky [fake: status=503 fail_times=2]"
    for _ in range(2):
        with pytest.raises(anthropic.ServiceUnavailableError):
            ask_claude(claude, text)
    assert ask_claude(claude, text).stop_reason == "end_turn"
    assert ask_claude(claude, text).stop_reason == "end_turn"
    fake_upstream.clear()
    with pytest.raises(anthropic.ServiceUnavailableError):
        ask_claude(claude, text)


def test_sdk_retries_honour_retry_after_ms(fake_upstream: FakeUpstream) -> None:
    with openai.OpenAI(api_key="k", base_url=fake_upstream.url + "/v1", max_retries=3) as client:
        reply = ask_gpt(client, "[fake: status=429 fail_times=2 retry_after_ms=1]")
    assert reply.choices[0].finish_reason == "stop"
    assert len(fake_upstream.requests) == 3


def test_stream_error_after_raises_inside_sdk_stream(
    claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    text = "boom [fake: stream_error_after=2]"
    received: list[str] = []
    with (
        claude.messages.stream(
            model=CLAUDE, max_tokens=500, messages=[{"role": "user", "content": text}]
        ) as stream,
        pytest.raises(anthropic.APIStatusError) as info,
    ):
        received.extend(stream.text_stream)
    assert len(received) == 2
    assert info.value.type == "overloaded_error"

    gpt_chunks: list[Any] = []
    with pytest.raises(openai.APIError, match="server had an error"):
        gpt_chunks.extend(ask_gpt(gpt, text, stream=True))
    assert len([c for c in gpt_chunks if c.choices[0].delta.content]) == 2

    with pytest.raises(anthropic.InternalServerError):
        ask_claude(claude, text)


def test_drop_after_breaks_the_connection(
    raw: httpx.Client, claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    text = "bye [fake: drop_after=1]"
    body = {"model": CLAUDE, "max_tokens": 500, "stream": True}
    received: list[str] = []
    # On the wire: one delta, then the connection ends before the stream does. (How an SDK
    # surfaces that differs between its versions; what chatd makes of it is proved in
    # tests/providers: test_dropped_connection_mid_stream_fails_cleanly.)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        raw.stream(
            "POST",
            "/v1/messages",
            json={**body, "messages": [{"role": "user", "content": text}]},
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ) as response,
    ):
        received.extend(line for line in response.iter_lines() if '"text_delta"' in line)
    assert len(received) == 1
    assert not any("message_stop" in line for line in received)

    with pytest.raises(openai.APIConnectionError):
        drain(ask_gpt(gpt, text, stream=True))
    with pytest.raises(anthropic.APIConnectionError):
        ask_claude(claude, text)
    with pytest.raises(openai.APIConnectionError):
        ask_gpt(gpt, text)
    assert ask_claude(claude, "still alive").stop_reason == "end_turn"


# ---- Compatibility directives ------------------------------------------------------------------


def test_unknown_event_wire_puts_annotation_and_ping_after_first_delta(raw: httpx.Client) -> None:
    body = {
        "model": CLAUDE,
        "max_tokens": 500,
        "stream": True,
        "messages": [{"role": "user", "content": "new events [fake: unknown_event=1 chunks=3]"}],
    }
    frames = sse_frames(raw.post("/v1/messages", json=body, headers={"x-api-key": "k"}).text)
    assert [name for name, _ in frames] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_annotation",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert json.loads(frames[4][1]) == {
        "type": "content_block_annotation",
        "index": 0,
        "note": "future",
    }


def test_anthropic_sdk_yields_unknown_event_as_a_mistyped_model(
    claude: anthropic.Anthropic,
) -> None:
    text = "new events [fake: unknown_event=1 chunks=3]"
    events = list(
        claude.messages.create(
            model=CLAUDE, max_tokens=500, stream=True, messages=[{"role": "user", "content": text}]
        )
    )
    # Pings are dropped; the unknown event is yielded, not skipped.
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_annotation",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    unknown: Any = events[3]
    # The SDK builds it, unvalidated, as the union's first member: isinstance dispatch misfires,
    # dispatch on .type is safe. Its own fields land in model_extra.
    assert isinstance(unknown, anthropic.types.RawMessageStartEvent)
    assert unknown.message is None
    assert unknown.model_extra == {"index": 0, "note": "future"}
    streamed = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert streamed == claude_text(ask_claude(claude, text))

    # The accumulating helper passes it through too and still builds the whole message.
    with claude.messages.stream(
        model=CLAUDE, max_tokens=500, messages=[{"role": "user", "content": text}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "content_block_annotation" in kinds
    assert claude_text(final) == streamed
    assert final.stop_reason == "end_turn"


def test_openai_unknown_top_level_field_is_harmless(gpt: openai.OpenAI) -> None:
    text = "new fields [fake: unknown_event=1]"
    chunks = drain(ask_gpt(gpt, text, stream=True, stream_options={"include_usage": True}))
    assert all(chunk.model_extra == {"x_future": {"a": 1}} for chunk in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == ask_gpt(gpt, text).choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(streamed.split())
    with pytest.raises(openai.BadRequestError, match="unknown_event"):
        ask_gpt(gpt, "[fake: unknown_event=yes]")


def test_reject_stream_options_mimics_older_servers(gpt: openai.OpenAI) -> None:
    text = "old server [fake: reject_stream_options=1]"
    with pytest.raises(openai.BadRequestError) as info:
        ask_gpt(gpt, text, stream=True, stream_options={"include_usage": True})
    assert info.value.response.json() == {
        "error": {
            "message": "Unrecognized request argument supplied: stream_options",
            "type": "invalid_request_error",
            "param": "stream_options",
            "code": None,
        }
    }
    assert info.value.param == "stream_options"
    # The rejection comes before any fault directive.
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        ask_gpt(
            gpt, text + " [fake: status=500]", stream=True, stream_options={"include_usage": True}
        )

    chunks = drain(ask_gpt(gpt, text, stream=True))
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == ask_gpt(gpt, text).choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


# ---- Protocol edges ----------------------------------------------------------------------------


def test_auth_rules(fake_upstream: FakeUpstream, raw: httpx.Client) -> None:
    body = {"model": CLAUDE, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    missing = raw.post("/v1/messages", json=body)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert raw.post("/v1/messages", json=body, headers={"x-api-key": "k"}).status_code == 200
    assert raw.post("/v1/chat/completions", json=body).status_code == 200

    claude = anthropic.Anthropic(api_key="bad-key", base_url=fake_upstream.url, max_retries=0)
    with claude, pytest.raises(anthropic.AuthenticationError):
        ask_claude(claude, "x")
    gpt = openai.OpenAI(api_key="bad-key", base_url=fake_upstream.url + "/v1", max_retries=0)
    with gpt, pytest.raises(openai.AuthenticationError) as info:
        ask_gpt(gpt, "x")
    assert info.value.code == "invalid_api_key"


def test_malformed_requests_get_provider_shaped_400(
    raw: httpx.Client, claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    bad = raw.post("/v1/messages", content=b"{nope", headers={"x-api-key": "k"})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    bad = raw.post("/v1/chat/completions", content=b"{nope")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] is None

    with pytest.raises(anthropic.BadRequestError, match="chunks"):
        ask_claude(claude, "[fake: chunks=many]")
    with pytest.raises(openai.BadRequestError, match="tool_input"):
        ask_gpt(gpt, "[fake: tool=f tool_input=%7Bnot-json]")
    assert ask_gpt(gpt, "[fake: frobnicate=1]").choices[0].finish_reason == "stop"


def test_unknown_path_is_404_json(raw: httpx.Client) -> None:
    response = raw.get("/v1/nothing-here")
    assert response.status_code == 404
    assert "message" in response.json()["error"]
    assert raw.get("/v1/messages", headers={"x-api-key": "k"}).status_code == 405


def test_recorded_requests_carry_body_and_time(
    claude: anthropic.Anthropic, fake_upstream: FakeUpstream, raw: httpx.Client
) -> None:
    before = time.monotonic()
    ask_claude(claude, "one")
    ask_claude(claude, "two")
    first, second = fake_upstream.requests
    assert before <= first.time <= second.time <= time.monotonic()
    assert (first.method, first.path) == ("POST", "/v1/messages")
    assert first.body["messages"][0]["content"] == "one"
    assert first.headers["content-type"] == "application/json"

    listed = raw.get("/_fake/requests").json()
    assert [item["body"]["messages"][0]["content"] for item in listed] == ["one", "two"]
    assert raw.delete("/_fake/requests").json() == {"cleared": 2}
    assert fake_upstream.requests == []


async def test_async_clients_work(fake_upstream: FakeUpstream) -> None:
    claude = anthropic.AsyncAnthropic(api_key="k", base_url=fake_upstream.url)
    async with (
        claude,
        claude.messages.stream(
            model=CLAUDE, max_tokens=500, messages=[{"role": "user", "content": "async"}]
        ) as events,
    ):
        final = await events.get_final_message()
    assert claude_text(final).endswith('You said: "async".')

    async with openai.AsyncOpenAI(api_key="k", base_url=fake_upstream.url + "/v1") as gpt:
        stream = await gpt.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": "async"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text.endswith('You said: "async".')


async def test_create_app_records_into_the_given_list() -> None:
    recorder: list[RecordedRequest] = []
    transport = httpx.ASGITransport(app=create_app(recorder))
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        response = await client.get("/v1/models")
    assert response.json()["object"] == "list"
    assert [(r.method, r.path, r.body) for r in recorder] == [("GET", "/v1/models", None)]


def test_fake_upstream_binds_a_free_port_and_stops() -> None:
    with FakeUpstream() as fake:
        assert fake.port != 0
        assert fake.url == f"http://127.0.0.1:{fake.port}"
        assert httpx.get(fake.url + "/v1/models").status_code == 200
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", fake.port)):
        pass
