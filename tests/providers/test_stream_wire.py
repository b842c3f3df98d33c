"""Streams the fake upstream never sends: compressed, CRLF-framed, broken JSON, Anthropic errors.

Each test serves one canned streamed body from a real HTTP server (aiohttp) and reads it through
the provider over a socket, as chatd reads a provider.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from chatd.errors import UpstreamRateLimited, UpstreamStreamError
from chatd.providers.anthropic import AnthropicProvider
from chatd.providers.base import ProviderOptions
from chatd.providers.openai_compat import OpenAICompatProvider
from chatd.types import (
    ChatRequest,
    Message,
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    UsageEvent,
)

Serve = Callable[[bytes, dict[str, str]], Awaitable[str]]


def chunk(**delta: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def sse(*events: object, end: bytes = b"\n") -> bytes:
    lines = [b"data: " + orjson.dumps(e) + end + end for e in events]
    return b"".join(lines) + b"data: [DONE]" + end + end


OPENAI_BODY = sse(
    chunk(role="assistant", content=""),
    chunk(content="Hello"),
    chunk(content=" there"),
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start servers that answer any POST with one body and headers; return their base URL."""
    runners: list[web.AppRunner] = []

    async def start(body: bytes, headers: dict[str, str]) -> str:
        async def reply(_: web.Request) -> web.Response:
            return web.Response(body=body, headers={"content-type": "text/event-stream", **headers})

        app = web.Application()
        app.router.add_post("/{tail:.*}", reply)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def read(provider: OpenAICompatProvider | AnthropicProvider) -> list[StreamEvent]:
    request = ChatRequest(model="m", messages=(Message.user("hi"),), max_tokens=64)
    try:
        return [event async for event in provider.stream(request)]
    finally:
        await provider.aclose()


def openai_at(url: str) -> OpenAICompatProvider:
    return OpenAICompatProvider(ProviderOptions("openai", "k", url + "/v1", "m", 10))


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_a_gzip_compressed_stream_reads_as_the_plain_one(serve: Serve) -> None:
    url = await serve(gzip.compress(OPENAI_BODY), {"content-encoding": "gzip"})
    events = await read(openai_at(url))
    assert text_of(events) == "Hello there"
    usage = [e.usage for e in events if isinstance(e, UsageEvent)]
    assert [(u.input_tokens, u.output_tokens) for u in usage] == [(7, 2)]
    assert events[-1] == StopEvent(StopReason.END_TURN)


async def test_a_crlf_framed_stream_reads_as_the_lf_one(serve: Serve) -> None:
    crlf = OPENAI_BODY.replace(b"\n", b"\r\n")
    events = await read(openai_at(await serve(crlf, {})))
    assert text_of(events) == "Hello there"
    assert events[-1] == StopEvent(StopReason.END_TURN)


async def test_an_event_that_is_not_json_fails_the_reply_plainly(serve: Serve) -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\ndata: <oops>\n\n'
    provider = openai_at(await serve(body, {}))
    with pytest.raises(UpstreamStreamError) as info:
        await read(provider)
    # The text had gone out: the reply broke off, it is not retried.
    assert "the reply broke off" in info.value.message
    assert "not JSON" in info.value.message
    assert "<oops>" in info.value.message


async def test_an_anthropic_error_event_stands_for_its_status(serve: Serve) -> None:
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    body = b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
    provider = AnthropicProvider(ProviderOptions("anthropic", "k", await serve(body, {}), None, 10))
    with pytest.raises(UpstreamRateLimited) as info:
        await read(provider)
    assert "slow down" in info.value.message


ANTHROPIC_EVENTS: list[dict[str, object]] = [
    {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
    {"type": "message_stop"},
]
ANTHROPIC_BODY = b"".join(
    f"event: {e['type']}\ndata: ".encode() + orjson.dumps(e) + b"\n\n" for e in ANTHROPIC_EVENTS
)


async def test_an_upstream_connection_idle_for_4_s_is_not_reused() -> None:
    # uvicorn (vLLM, LiteLLM), Node and llama.cpp's server close a connection idle for 5 s: one
    # reused at that moment fails the request. The SDKs' pool kept connections for 5 s too.
    peers: dict[str, list[int]] = {"openai": [], "anthropic": []}

    async def reply(request: web.Request) -> web.Response:
        anthropic = request.path.startswith("/v1/messages")
        port = request.transport.get_extra_info("peername")[1]  # type: ignore[union-attr]
        peers["anthropic" if anthropic else "openai"].append(port)
        body = ANTHROPIC_BODY if anthropic else OPENAI_BODY
        return web.Response(body=body, headers={"content-type": "text/event-stream"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", reply)
    runner = web.AppRunner(app, keepalive_timeout=60)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    request = ChatRequest(model="m", messages=(Message.user("hi"),), max_tokens=64)
    made_openai = openai_at(url)
    made_anthropic = AnthropicProvider(ProviderOptions("anthropic", "k", url, None, 10))

    async def three_turns(provider: OpenAICompatProvider | AnthropicProvider) -> None:
        for pause in (0.0, 0.5, 4.1):
            await asyncio.sleep(pause)
            assert text_of([e async for e in provider.stream(request)]) in ("Hello there", "Hi")

    try:
        await asyncio.gather(three_turns(made_openai), three_turns(made_anthropic))
    finally:
        await made_openai.aclose()
        await made_anthropic.aclose()
        await runner.cleanup()
    # Per provider: a connection, the same one again after 0.5 s, a new one after 4.1 s idle.
    for conns in peers.values():
        assert [p == conns[0] for p in conns] == [True, True, False]


def anthropic_body(*texts: str) -> bytes:
    """Return an Anthropic stream of these text deltas, ending the turn."""
    deltas = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
        for t in texts
    ]
    events = [ANTHROPIC_EVENTS[0], *deltas, *ANTHROPIC_EVENTS[2:]]
    return b"".join(
        f"event: {e['type']}\ndata: ".encode() + orjson.dumps(e) + b"\n\n" for e in events
    )


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        # The prefill went without its trailing whitespace: the model's own is dropped, once.
        (Message.assistant("The list:\n\n"), "1. one\n 2. two"),
        # A prefill that had none, or no prefill at all: the reply is passed on as it came.
        (Message.assistant("The list:"), "\n\n 1. one\n 2. two"),
        (Message.user("list them"), "\n\n 1. one\n 2. two"),
    ],
)
async def test_a_continued_prefill_does_not_double_the_whitespace_it_lost(
    serve: Serve, last: Message, expected: str
) -> None:
    url = await serve(anthropic_body("\n\n", " ", "1. one\n", " 2. two"), {})
    provider = AnthropicProvider(ProviderOptions("anthropic", "k", url, None, 10))
    messages = (Message.user("list them"), last) if last.role.value == "assistant" else (last,)
    request = ChatRequest(model="m", messages=messages, max_tokens=64, continuation=True)
    try:
        events = [event async for event in provider.stream(request)]
    finally:
        await provider.aclose()
    assert text_of(events) == expected
