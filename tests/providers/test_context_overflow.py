"""A prompt longer than the model's context window is a ContextOverflow, never retried."""

from __future__ import annotations

import pytest

from chatd.errors import ContextOverflow, UpstreamBadRequest
from chatd.providers.base import Provider, context_overflow, error_for_status
from chatd.providers.retry import RetryPolicy, stream_with_retries
from chatd.testing.fake_tokens import count_tokens
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import ChatRequest, Message

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_total_s=30)
WHERE = "vllm answered HTTP 400"


def long_request(directives: str = "") -> ChatRequest:
    """Build a request of a few hundred tokens, its last message carrying fake directives."""
    filler = " ".join(f"word{n}" for n in range(300))
    messages = (Message.user(filler), Message.assistant("ok"), Message.user(f"go {directives}"))
    return ChatRequest(model="m", messages=messages, max_tokens=100, system="Be brief.")


async def overflow_of(provider: Provider, request: ChatRequest) -> ContextOverflow:
    """Run a call through the retry wrapper and return the ContextOverflow it fails with."""
    with pytest.raises(ContextOverflow) as info:
        async for _ in stream_with_retries(provider, request, FAST):
            pass
    return info.value


async def test_a_prompt_over_the_limit_is_a_context_overflow_with_its_numbers(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    error = await overflow_of(provider, long_request("[fake: context_limit=100]"))
    sent = count_tokens(fake_upstream.requests[0].body)
    assert (error.limit, error.prompt_tokens) == (100, sent)
    assert error.message == (
        f"{provider.name} answered HTTP 400: the prompt is {sent:,} tokens, "
        "more than the model's context window of 100"
    )
    assert isinstance(error, UpstreamBadRequest)
    assert error.upstream_status == 400
    assert not error.retryable
    assert len(fake_upstream.requests) == 1  # not retried


async def test_the_servers_own_limit_is_read_the_same_way(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.app.context_limit = 50
    try:
        error = await overflow_of(provider, long_request())
    finally:
        fake_upstream.app.context_limit = None
    assert error.limit == 50
    assert error.prompt_tokens == count_tokens(fake_upstream.requests[0].body)


async def test_a_prompt_within_the_limit_is_served(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    request = long_request("[fake: context_limit=100000]")
    events = [e async for e in stream_with_retries(provider, request, FAST)]
    assert events


async def test_other_rejections_stay_plain_bad_requests(provider: Provider) -> None:
    with pytest.raises(UpstreamBadRequest) as info:
        async for _ in stream_with_retries(provider, long_request("[fake: status=400]"), FAST):
            pass
    assert not isinstance(info.value, ContextOverflow)


@pytest.mark.parametrize(
    ("detail", "limit", "prompt"),
    [
        # vLLM: the request counts the completion in; the prompt is the part in the messages.
        (
            "This model's maximum context length is 4096 tokens. However, you requested 5000 "
            "tokens (4000 in the messages, 1000 in the completion). Please reduce the length of "
            "the messages or completion.",
            4096,
            4000,
        ),
        (
            "'max_tokens' or 'max_completion_tokens' is too large: 1000. This model's maximum "
            "context length is 4096 tokens and your request has 3500 input tokens "
            "(1000 > 4096 - 3500).",
            4096,
            3500,
        ),
        # llama.cpp's server.
        ("request (4476 tokens) exceeds the available context size (4096 tokens)", 4096, 4476),
        # Anthropic, when it counts max_tokens against the window.
        (
            "input length and `max_tokens` exceed context limit: 197202 + 21333 > 200000, "
            "decrease input length or `max_tokens` and try again",
            200000,
            197202,
        ),
    ],
)
def test_other_servers_wordings_give_their_numbers(detail: str, limit: int, prompt: int) -> None:
    error = context_overflow(WHERE, 400, detail)
    assert error is not None
    assert (error.limit, error.prompt_tokens) == (limit, prompt)


def test_a_prompt_that_fits_without_room_for_the_reply_is_said_so() -> None:
    detail = (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(4000 in the messages, 1000 in the completion)."
    )
    error = context_overflow(WHERE, 400, detail)
    assert error is not None
    assert error.message == (
        f"{WHERE}: the prompt (4,000 tokens) and the reply's max_tokens do not fit the model's "
        "context window of 4,096"
    )


def test_an_overflow_named_only_by_its_code_has_no_numbers() -> None:
    detail = "the request exceeds the available context size, try increasing it"
    error = error_for_status("llamacpp", 400, detail, {}, context_exceeded=True)
    assert isinstance(error, ContextOverflow)
    assert (error.limit, error.prompt_tokens) == (None, None)
    assert error.message == (
        f"llamacpp answered HTTP 400: the prompt is longer than the model's context window "
        f"({detail})"
    )


@pytest.mark.parametrize(
    "detail",
    [
        "prompt is too long: " + "9" * 5000 + " tokens > 100 maximum",
        "max_tokens: 5000000 > 64000, which is the maximum allowed for this model",
    ],
)
def test_no_overflow_is_read_into_other_messages(detail: str) -> None:
    assert context_overflow(WHERE, 400, detail) is None
