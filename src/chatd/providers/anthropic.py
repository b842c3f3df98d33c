"""Anthropic's Messages API through the official `anthropic` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from chatd.errors import (
    ProviderNotConfigured,
    UpstreamError,
    UpstreamStreamError,
    UpstreamUnavailable,
)
from chatd.providers.base import (
    ProviderOptions,
    ProviderPlugin,
    after_output,
    connection_error,
    error_for_status,
    is_transport_error,
    joined_replies,
    parse_tool_input,
    pool_limits,
    redact,
    response_bytes,
    stream_json,
    summary_text,
    token_count,
)
from chatd.providers.sse import SSE, SSEDecoder
from chatd.tokens import estimate_message_tokens, estimate_text_tokens
from chatd.types import (
    ChatRequest,
    Message,
    Role,
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    Usage,
    UsageEvent,
)

if TYPE_CHECKING:
    import anthropic

DEFAULT_MODEL = "claude-sonnet-4-5"
# Error types Anthropic may send inside a 200 stream, mapped to the status they stand for.
STREAM_ERROR_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "authentication_error": 401,
    "permission_error": 403,
    "invalid_request_error": 400,
    "request_too_large": 413,
}


def _content(message: Message) -> str | list[dict[str, Any]]:
    if len(message.parts) == 1 and isinstance(message.parts[0], TextPart):
        return message.parts[0].text
    blocks: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ToolCallPart):
            blocks.append(
                {"type": "tool_use", "id": part.id, "name": part.name, "input": dict(part.input)}
            )
        else:
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": part.tool_call_id,
                    "content": part.content,
                    "is_error": part.is_error,
                }
            )
    return blocks


def wire_messages(request: ChatRequest) -> list[Message]:
    """Return the messages as sent: a continued reply as one, a final one as a clean prefill.

    A final assistant message is a prefill that the model continues (how Anthropic documents
    continuing a reply cut at max_tokens); the API refuses one ending in whitespace, so that
    is stripped (an all-whitespace prefill goes altogether).
    """
    messages = joined_replies(request.messages)
    if messages and messages[-1].role is Role.ASSISTANT and _trailing_space(messages[-1]):
        *parts, last = messages[-1].parts
        assert isinstance(last, TextPart)
        if text := last.text.rstrip():
            parts.append(TextPart(text))
        if parts:
            messages[-1] = Message(Role.ASSISTANT, tuple(parts))
        else:
            messages.pop()
    return messages


def _trailing_space(message: Message) -> bool:
    last = message.parts[-1] if message.parts else None
    return isinstance(last, TextPart) and last.text != last.text.rstrip()


def request_body(request: ChatRequest) -> dict[str, Any]:
    """Build the Messages API body for a request."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [
            {"role": m.role.value, "content": _content(m)} for m in wire_messages(request)
        ],
    }
    if request.summary:
        # A block of its own after the system prompt's, so each can carry a cache breakpoint.
        blocks = [{"type": "text", "text": request.system}] if request.system else []
        blocks.append({"type": "text", "text": summary_text(request.summary)})
        body["system"] = blocks
    elif request.system:
        body["system"] = request.system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)}
            for t in request.tools
        ]
    _mark_cache_breakpoints(body, request)
    return body


# The shortest prefix Anthropic caches (some models need more); below it a breakpoint does
# nothing, so short requests go out as they are.
CACHE_MIN_TOKENS = 1024
# The most cache_control blocks Anthropic accepts in one request (more is a 400).
MAX_CACHE_BREAKPOINTS = 4
_EPHEMERAL = {"type": "ephemeral"}


def _mark_cache_breakpoints(body: dict[str, Any], request: ChatRequest) -> None:
    """Put prompt-cache breakpoints after the system prompt, the summary and the newest users."""
    # The next turn resends this request's prefix and reads it from the cache at a tenth of
    # the price. Most valuable first: the newest user message, whose prefix is the whole
    # conversation; the system prompt (with the tools before it), since it outlives any trimming
    # and any new summary; the summary, which holds until the next one; and the previous user
    # message, which keeps last turn's breakpoint. That last one goes first if the cap bites: the
    # newest breakpoint already finds last turn's entry by Anthropic's 20-block lookback, unless
    # one turn added more than 20 blocks (a long tool loop).
    if not _cacheable(request):
        return
    if isinstance(body.get("system"), str):
        body["system"] = [{"type": "text", "text": body["system"]}]
    system: list[dict[str, Any]] = body.get("system") or []
    users = [m for m in body["messages"] if m["role"] == "user"]
    for message in users:
        # Blocks, marked or not: a message's breakpoint moves on two turns later, and the same
        # text sent as a string then would no longer match the prefix cached with it as a block.
        if isinstance(message["content"], str):
            message["content"] = [{"type": "text", "text": message["content"]}]
    # (blocks, index of the block to mark), most valuable first.
    places: list[tuple[list[dict[str, Any]], int]] = [(m["content"], -1) for m in users[-1:]]
    places += [(system, index) for index in range(len(system))]
    places += [(m["content"], -1) for m in users[-2:-1]]
    for blocks, index in places[:MAX_CACHE_BREAKPOINTS]:
        if blocks:
            blocks[index] = {**blocks[index], "cache_control": _EPHEMERAL}


class AnthropicProvider:
    """Streams replies from the Messages API; the SDK does no retries of its own."""

    def __init__(self, options: ProviderOptions) -> None:
        self.name = options.name
        self.default_model = options.model or DEFAULT_MODEL
        self._api_key = options.api_key
        # Imported here, not at the top: the SDK weighs ~38 MB, and registering the plugin
        # must not make every chatd process pay for a provider it does not use.
        import anthropic

        self._client = anthropic.AsyncAnthropic(
            api_key=options.api_key,
            base_url=options.base_url,
            max_retries=0,
            timeout=options.timeout_s,
            # The SDK's aiohttp transport, as for OpenAI (providers/openai_compat.py).
            http_client=anthropic.DefaultAioHttpClient(
                timeout=options.timeout_s, limits=pool_limits(anthropic.DEFAULT_CONNECTION_LIMITS)
            ),
        )
        # Named in connection errors: where the SDK was sent, with its default filled in.
        self._endpoint = str(self._client.base_url)

    async def aclose(self) -> None:
        """Close the SDK client."""
        await self._client.close()

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield normalized events for one streamed Messages call."""
        import anthropic

        events = _Events(self.name)
        # A prefill that lost its trailing whitespace is continued as if it had none: the
        # continuation's leading whitespace would double what the stored reply already ends with.
        final = request.messages[-1] if request.messages else None
        events.trim = final is not None and final.role is Role.ASSISTANT and _trailing_space(final)
        try:
            # The SDK's low-level request with the body as JSON bytes (orjson): its error
            # classes, headers and transport stay; its request transform and typed events go.
            stream = await self._client.post(
                "/v1/messages",
                content=orjson.dumps({**request_body(request), "stream": True}),
                cast_to=object,
                stream=True,
                stream_cls=anthropic.AsyncStream[object],
            )
            decoder = SSEDecoder()
            async with stream:
                response = stream.response
                async for data in response_bytes(response):
                    for sse in decoder.feed(data):
                        if sse.event == "error":
                            raise self._stream_error(sse, response.headers)
                        for event in events.read(sse):
                            yield event
            for event in events.end():
                yield event
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc, events.emitted) from None
        except (anthropic.APIConnectionError, OSError) as exc:
            raise after_output(self._unreachable(exc), events.emitted) from None
        except UpstreamError as exc:
            raise after_output(exc, events.emitted) from None
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            raise after_output(self._unreachable(exc), events.emitted) from None

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """Return the request's input tokens as Anthropic counts them: what `stream` is charged."""
        import anthropic

        # The very system, messages and tools `stream` sends (summary and breakpoints included):
        # the count endpoint takes no max_tokens, temperature or stop sequences.
        body = request_body(request)
        try:
            counted = await self._client.messages.count_tokens(
                model=body["model"],
                messages=body["messages"],
                system=body.get("system", anthropic.omit),
                tools=body.get("tools", anthropic.omit),
            )
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc, False) from None
        except (anthropic.APIConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            raise self._unreachable(exc) from None
        return token_count(counted.input_tokens)

    def _unreachable(self, exc: BaseException) -> UpstreamUnavailable:
        return connection_error(self.name, exc, self._endpoint)

    def _status_error(self, exc: anthropic.APIStatusError, emitted: bool) -> UpstreamError:
        detail = redact(str(exc.api_message or exc.message), self._api_key)
        return after_output(self._error(exc.status_code, detail, exc.response.headers), emitted)

    def _stream_error(self, sse: SSE, headers: Mapping[str, str]) -> UpstreamError:
        # An `error` event inside a 200 stream: its type stands for a status.
        try:
            body = orjson.loads(sse.data)
        except orjson.JSONDecodeError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str) or not message:
            message = sse.data.decode("utf-8", "replace") or "an error event without a message"
        status = STREAM_ERROR_STATUS.get(str(kind), 500)
        return self._error(status, redact(message, self._api_key), headers)

    def _error(self, status: int, detail: str, headers: Mapping[str, str]) -> UpstreamError:
        quota = "credit balance" in detail.lower()
        return error_for_status(self.name, status, detail, headers, quota_spent=quota)


class _Events:
    """Read a Messages stream's events into chatd's, one event at a time."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.usage = Usage()
        self.stop: StopReason | None = None
        self.tool: dict[str, Any] | None = None
        self.stopped = False
        # Reply output went out: a failure from now on is not retried.
        self.emitted = False
        # Drop the reply's leading whitespace (see AnthropicProvider.stream).
        self.trim = False

    def read(self, sse: SSE) -> list[StreamEvent]:
        """Return the events one server-sent event carries (most carry one text delta)."""
        if self.stopped or not sse.event or sse.event == "ping":
            # After message_stop the body is read to its end only to reuse the connection.
            return []
        event = stream_json(self.provider, sse.data)
        # Unknown event types (Anthropic adds them) are skipped by falling through.
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                text = str(delta["text"])
                if self.trim:
                    text = text.lstrip()
                    if not text:
                        return []
                    self.trim = False
                self.emitted = True
                return [TextDelta(text)]
            if delta.get("type") == "input_json_delta" and self.tool is not None:
                self.tool["json"].append(delta.get("partial_json", ""))
        elif kind == "message_start":
            self.usage = _usage(event.get("message", {}).get("usage") or {}, self.usage)
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.tool = {"id": block.get("id", ""), "name": block.get("name", ""), "json": []}
        elif kind == "content_block_stop" and self.tool is not None:
            tool, self.tool = self.tool, None
            self.emitted = True
            arguments = parse_tool_input("".join(tool["json"]))
            return [ToolCallEvent(ToolCallPart(tool["id"], tool["name"], arguments))]
        elif kind == "message_delta":
            self.stop = StopReason.parse((event.get("delta") or {}).get("stop_reason"))
            self.usage = _usage(event.get("usage") or {}, self.usage)
        elif kind == "message_stop":
            self.stopped = True
        return []

    def end(self) -> list[StreamEvent]:
        """Return the usage and stop reason once the stream has stopped."""
        if self.stop is None:
            raise UpstreamStreamError("anthropic ended the stream without a stop reason")
        return [UsageEvent(self.usage), StopEvent(self.stop)]


def _resolve(
    name: str, env: Mapping[str, str], base_url: str | None, model: str | None, timeout_s: float
) -> ProviderOptions:
    key = env.get("ANTHROPIC_API_KEY")
    if not key:
        raise ProviderNotConfigured(
            "provider 'anthropic' needs an API key: set ANTHROPIC_API_KEY "
            "(or pick another provider with CHATD_PROVIDER / --provider)"
        )
    return ProviderOptions(
        name=name,
        api_key=key,
        base_url=base_url or env.get("ANTHROPIC_BASE_URL") or None,
        model=model,
        timeout_s=timeout_s,
    )


plugin = ProviderPlugin(
    names=("anthropic",),
    create=AnthropicProvider,
    resolve=_resolve,
    configured=lambda _name, env: bool(env.get("ANTHROPIC_API_KEY")),
)


def _usage(reported: dict[str, Any], so_far: Usage) -> Usage:
    """Merge what an event reports into the usage so far (message_delta repeats totals)."""
    return Usage(
        input_tokens=token_count(reported.get("input_tokens")) or so_far.input_tokens,
        output_tokens=token_count(reported.get("output_tokens")) or so_far.output_tokens,
        cache_read_tokens=token_count(reported.get("cache_read_input_tokens"))
        or so_far.cache_read_tokens,
        cache_write_tokens=token_count(reported.get("cache_creation_input_tokens"))
        or so_far.cache_write_tokens,
    )


def _cacheable(request: ChatRequest) -> bool:
    """Tell whether a request reaches the shortest cacheable prefix, estimating no further."""
    total = estimate_text_tokens(request.system) if request.system else 0
    total += estimate_text_tokens(request.summary) if request.summary else 0
    for message in request.messages:
        if total >= CACHE_MIN_TOKENS:
            break
        total += estimate_message_tokens(message)
    return total >= CACHE_MIN_TOKENS
