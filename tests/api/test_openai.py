"""The official openai SDK against /v1/chat/completions and /v1/models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from chatd.testing.fake_upstream import FakeUpstream

MODEL = "anthropic/test-model"
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def sdk(server: Any, fake_upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    """Yield an OpenAI client of the shared server, with no retries of its own."""
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        yield client


def test_plain_completion(sdk: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    reply = sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
    )
    assert reply.choices[0].message.content is not None
    assert 'You said: "hello"' in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    sent = fake_upstream.requests[-1].body
    assert (sent["model"], sent["system"]) == ("test-model", "Be brief.")


def test_bare_model_goes_to_the_default_provider(
    sdk: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    sdk.chat.completions.create(model="other-model", messages=[{"role": "user", "content": "hi"}])
    assert fake_upstream.requests[-1].body["model"] == "other-model"


def test_stream_with_usage(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello [fake: chunks=3]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert 'You said: "hello"' in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_stream_without_usage_has_no_usage_chunk(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)


def test_truncation_is_finish_reason_length(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x [fake: words=40]"}], max_tokens=5
    )
    assert reply.choices[0].finish_reason == "length"


def test_tool_call_round_trip(sdk: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    messages: list[Any] = [
        {"role": "user", "content": 'weather? [fake: tool=weather tool_input={"city":"Oslo"}]'}
    ]
    first = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "rain, 4°C"},
    ]
    second = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert 'Tool said: "rain, 4°C"' in (second.choices[0].message.content or "")
    assert fake_upstream.requests[-1].body["tools"][0]["name"] == "weather"


def test_streamed_tool_call(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "go [fake: tool=weather]"}],
            tools=[WEATHER],
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [c.function.name for c in calls if c.function] == ["weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("directive", "error"),
    [
        ("status=429", openai.RateLimitError),
        ("status=503", openai.InternalServerError),
        ("status=401", openai.InternalServerError),
    ],
)
@pytest.mark.allow_5xx
def test_upstream_errors_raise_the_matching_sdk_class(
    sdk: openai.OpenAI, directive: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"x [fake: {directive}]"}]
        )
    with pytest.raises(error):
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"x [fake: {directive}]"}],
            stream=True,
        )


def test_rate_limit_carries_retry_after(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x [fake: status=429 retry_after=9]"}],
        )
    assert caught.value.response.headers["retry-after"] == "9"
    assert caught.value.body is not None


def test_bad_requests_raise_bad_request_error(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="nonesuch-provider-x", messages=[])
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(
            model="openai/gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "system", "content": "only a system prompt"}]
        )


@pytest.fixture
def demo_sdk(make_server: Any) -> Iterator[openai.OpenAI]:
    """Yield an OpenAI client of a chatd of its own whose provider is the offline demo."""
    server = make_server(provider="demo", model=None)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("message", "said"),
    [
        ({"role": "user"}, "Missing required parameter: 'messages[0].content'."),
        ({"role": "user", "content": None}, "Invalid type for 'messages[0].content'"),
        ({"role": "user", "content": []}, "Invalid 'messages[0].content': empty array."),
        ({"role": "user", "content": [{"type": "text"}]}, "'messages[0].content[0].text'"),
        ({"role": "system"}, "Missing required parameter: 'messages[0].content'."),
        ({"role": "assistant"}, "Missing required parameter: 'messages[0].content'."),
        ({"role": "assistant", "tool_calls": []}, "Invalid 'messages[0].tool_calls': empty"),
    ],
)
def test_a_message_without_content_is_a_bad_request(
    demo_sdk: openai.OpenAI, message: Any, said: str, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        demo_sdk.chat.completions.create(model="demo-1", messages=[message], stream=stream)
    assert said in caught.value.message
    assert caught.value.type == "invalid_request_error"
    assert isinstance(caught.value.body, dict)
    assert set(caught.value.body) == {"message", "type", "param", "code"}


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": [{"type": "text", "text": ""}]}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "hello"}],
        [{"role": "tool", "tool_call_id": "c1", "content": "5"}],
        [
            {"role": "user", "content": "add"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "5"},
        ],
    ],
)
def test_the_demo_answers_every_conversation_the_api_admits(
    demo_sdk: openai.OpenAI, messages: Any
) -> None:
    reply = demo_sdk.chat.completions.create(model="demo-1", messages=messages)
    assert (reply.choices[0].message.content or "").startswith("(demo) ")
    assert reply.choices[0].finish_reason == "stop"


def test_mid_stream_failure_raises_in_the_sdk(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x [fake: chunks=4 stream_error_after=2]"}],
        stream=True,
    )
    with pytest.raises(openai.APIError):
        list(stream)


def test_session_header_keeps_memory_server_side(
    server: Any, sdk: openai.OpenAI, sid: str, fake_upstream: FakeUpstream
) -> None:
    headers = {"X-Chatd-Session": sid}
    for text in ("my name is Ada", "what is my name?"):
        reply = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], extra_headers=headers
        )
    assert "to 3 messages" in (reply.choices[0].message.content or "")
    history = httpx.get(f"{server.url}/history/{sid}").json()
    assert history["turn_count"] == 2
    streamed = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "third"}],
        extra_headers=headers,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert "to 5 messages" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None


def test_session_header_needs_a_user_message_last(sdk: openai.OpenAI, sid: str) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "assistant", "content": "hi"}],
            extra_headers={"X-Chatd-Session": sid},
        )


def test_models_lists_the_default_model(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == [MODEL]


def test_model_allow_list_refuses_others(make_server: Any) -> None:
    server = make_server(models=["anthropic/good-model"])
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == ["anthropic/good-model"]
        ok = sdk.chat.completions.create(
            model="good-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert ok.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="not allowed"):
            sdk.chat.completions.create(
                model="bad-model", messages=[{"role": "user", "content": "hi"}]
            )
    with httpx.Client(base_url=server.url) as c:
        refused = c.post("/v1/sessions", json={"model": "bad-model"})
        assert refused.status_code == 400
