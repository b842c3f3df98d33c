"""OpenAI Chat Completions and every server that speaks it, through the official `openai` SDK."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from chatd.errors import (
    ConfigError,
    ProviderNotConfigured,
    UpstreamBadRequest,
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
from chatd.tokens import estimate_usage
from chatd.types import (
    ChatRequest,
    Message,
    Role,
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
    ToolCallPart,
    Usage,
    UsageEvent,
)

if TYPE_CHECKING:
    import openai

log = logging.getLogger("chatd.providers")


@dataclass(frozen=True, slots=True)
class Preset:
    """Where a known OpenAI-compatible service lives and how it authenticates."""

    base_url: str | None
    key_var: str | None
    key_required: bool
    model: str | None


PRESETS: dict[str, Preset] = {
    "openai": Preset("https://api.openai.com/v1", "OPENAI_API_KEY", True, "gpt-4o-mini"),
    "groq": Preset(
        "https://api.groq.com/openai/v1", "GROQ_API_KEY", True, "llama-3.3-70b-versatile"
    ),
    "together": Preset(
        "https://api.together.xyz/v1",
        "TOGETHER_API_KEY",
        True,
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ),
    "ollama": Preset("http://127.0.0.1:11434/v1", None, False, "llama3.2"),
    "vllm": Preset("http://127.0.0.1:8000/v1", "VLLM_API_KEY", False, None),
    "llamacpp": Preset("http://127.0.0.1:8080/v1", None, False, "default"),
    "openai-compatible": Preset(None, "OPENAI_API_KEY", False, None),
}

FINISH_REASONS = {
    "stop": StopReason.END_TURN,
    "length": StopReason.MAX_TOKENS,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
    "content_filter": StopReason.REFUSAL,
}


# What a continuation asks of a model that cannot be handed its cut reply to continue.
CONTINUE_PROMPT = (
    "Your previous reply was cut off by the output limit. Continue it exactly where it "
    "stopped, mid-word or mid-sentence if need be: do not repeat anything already written, "
    "and add no preamble or comment."
)


def messages_body(request: ChatRequest) -> list[dict[str, Any]]:
    """Translate chatd messages to Chat Completions messages, system prompt and summary first."""
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    if request.summary:
        # A message of its own after the system prompt's, so a new summary leaves the system
        # prompt's cached prefix intact.
        out.append({"role": "system", "content": summary_text(request.summary)})
    messages = joined_replies(request.messages)
    for message in messages:
        out.extend(_translate(message))
    if request.continuation and messages and messages[-1].role is Role.ASSISTANT:
        # Chat Completions has no prefill: the model is asked for the rest, in a message that
        # is sent with this call only and never stored.
        out.append({"role": "user", "content": CONTINUE_PROMPT})
    return out


def _translate(message: Message) -> list[dict[str, Any]]:
    text = message.text
    if message.role is Role.ASSISTANT:
        entry: dict[str, Any] = {"role": "assistant", "content": text or None}
        if message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(dict(c.input))},
                }
                for c in message.tool_calls
            ]
        return [entry]
    out: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": r.tool_call_id, "content": r.content}
        for r in message.tool_results
    ]
    if text or not out:
        out.append({"role": "user", "content": text})
    return out


class OpenAICompatProvider:
    """Streams replies from a Chat Completions endpoint; the SDK does no retries of its own."""

    def __init__(self, options: ProviderOptions) -> None:
        self.name = options.name
        model = options.model or PRESETS.get(options.name, PRESETS["openai-compatible"]).model
        if not model:
            raise ConfigError(f"provider {options.name!r} has no default model: set CHATD_MODEL")
        self.default_model = model
        # OpenAI itself deprecated max_tokens; most compatible servers only know it.
        self._max_tokens_field = (
            "max_completion_tokens" if options.name == "openai" else "max_tokens"
        )
        self._include_usage = True
        self._api_key = options.api_key
        # Imported here, not at the top: registering the plugin must not load the SDK.
        import openai

        self._client = openai.AsyncOpenAI(
            api_key=options.api_key or "not-needed",
            base_url=options.base_url,
            max_retries=0,
            timeout=options.timeout_s,
            # The SDK's aiohttp transport: much less work per chunk than its httpx default.
            http_client=openai.DefaultAioHttpClient(
                timeout=options.timeout_s, limits=pool_limits(openai.DEFAULT_CONNECTION_LIMITS)
            ),
        )
        # Named in connection errors: where the SDK was sent, with its default filled in.
        self._endpoint = str(self._client.base_url)

    async def aclose(self) -> None:
        """Close the SDK client."""
        await self._client.close()

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """Return None: Chat Completions has no counting endpoint (and tiktoken downloads)."""
        return None

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages_body(request),
            self._max_tokens_field: request.max_tokens,
            "stream": True,
        }
        if self._include_usage:
            body["stream_options"] = {"include_usage": True}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": dict(t.input_schema),
                    },
                }
                for t in request.tools
            ]
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield normalized events for one streamed Chat Completions call."""
        import openai

        try:
            stream = await self._open(request)
        except UpstreamBadRequest as exc:
            if not self._include_usage or "stream_options" not in exc.message:
                raise
            # Some servers reject stream_options: go on without it; usage is estimated then.
            log.info("%s does not accept stream_options; usage will be estimated", self.name)
            self._include_usage = False
            stream = await self._open(request)
        chunks = _Chunks(self.name, request)
        decoder = SSEDecoder()
        try:
            async with stream:
                async for data in response_bytes(stream.response):
                    for sse in decoder.feed(data):
                        for event in chunks.read(sse):
                            yield event
            for event in chunks.end():
                yield event
        except openai.APIConnectionError as exc:
            raise after_output(self._unreachable(exc), chunks.emitted) from None
        except UpstreamError as exc:
            raise after_output(exc, chunks.emitted) from None
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            raise after_output(self._unreachable(exc), chunks.emitted) from None

    async def _open(self, request: ChatRequest) -> Any:
        import openai

        try:
            # The SDK's low-level request with the body as orjson bytes: its error classes,
            # headers and transport stay; its costly request transform and typed chunks go.
            return await self._client.post(
                "/chat/completions",
                content=orjson.dumps(self._body(request)),
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APIConnectionError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> UpstreamUnavailable:
        return connection_error(self.name, exc, self._endpoint)

    def _status_error(self, exc: openai.APIStatusError) -> UpstreamError:
        detail = redact(exc.message, self._api_key)
        body = exc.body if isinstance(exc.body, dict) else {}
        quota = exc.code == "insufficient_quota" or body.get("type") == "insufficient_quota"
        # OpenAI's code, and llama.cpp's server's type; the message has the numbers, if any.
        overflow = exc.code == "context_length_exceeded" or body.get("type") == (
            "exceed_context_size_error"
        )
        return error_for_status(
            self.name,
            exc.status_code,
            detail,
            exc.response.headers,
            quota_spent=quota,
            context_exceeded=overflow,
        )


class _Chunks:
    """Read a Chat Completions stream's events into chatd's, one event at a time."""

    def __init__(self, provider: str, request: ChatRequest) -> None:
        self.provider = provider
        self.request = request
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.calls: dict[int, dict[str, Any]] = {}
        self.out_chars = 0
        self.done = False
        # Reply output went out: a failure from now on is not retried.
        self.emitted = False

    def read(self, sse: SSE) -> list[StreamEvent]:
        """Return the events one server-sent event carries (most carry one text delta)."""
        if self.done:
            return []  # after [DONE]: the body is read to its end only to reuse the connection
        if sse.data.startswith(b"[DONE]"):
            self.done = True
            return []
        chunk = stream_json(self.provider, sse.data)
        if not isinstance(chunk, dict):
            return []  # a shape from a server we do not know: nothing to pass on
        if chunk.get("error"):
            raise UpstreamUnavailable(
                f"{self.provider} reported an error mid-stream: {_error_message(chunk['error'])}"
            )
        out: list[StreamEvent] = []
        u = chunk.get("usage")
        if isinstance(u, dict):
            details = u.get("prompt_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            self.usage = Usage(
                input_tokens=token_count(u.get("prompt_tokens")),
                output_tokens=token_count(u.get("completion_tokens")),
                cache_read_tokens=token_count(cached),
            )
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.out_chars += len(content)
                self.emitted = True
                out.append(TextDelta(content))
            for tc in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(tc.get("index", 0), {"id": "", "name": "", "args": []})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                function = tc.get("function") or {}
                if function.get("name"):
                    slot["name"] = function["name"]
                if function.get("arguments"):
                    slot["args"].append(function["arguments"])
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> list[StreamEvent]:
        """Return the tool calls, usage and stop reason once the body has ended."""
        if self.finish is None:
            raise UpstreamStreamError("the stream ended without a finish_reason")
        out: list[StreamEvent] = []
        for index in sorted(self.calls):
            slot = self.calls[index]
            arguments = parse_tool_input("".join(slot["args"]))
            out.append(
                ToolCallEvent(ToolCallPart(slot["id"] or f"call_{index}", slot["name"], arguments))
            )
        if out:
            self.emitted = True
        usage = self.usage or estimate_usage(self.request, self.out_chars)
        out.append(UsageEvent(usage))
        out.append(StopEvent(FINISH_REASONS.get(self.finish, StopReason.UNKNOWN)))
        return out


def _error_message(error: Any) -> str:
    # As the SDK words it when the error object has no message of its own.
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else "An error occurred during streaming"


def _resolve(
    name: str, env: Mapping[str, str], base_url: str | None, model: str | None, timeout_s: float
) -> ProviderOptions:
    preset = PRESETS[name]
    key = env.get(preset.key_var) if preset.key_var else None
    if preset.key_required and not key:
        raise ProviderNotConfigured(
            f"provider {name!r} needs an API key: set {preset.key_var} "
            "(or pick another provider with CHATD_PROVIDER / --provider)"
        )
    url = base_url or (env.get("OPENAI_BASE_URL") if name == "openai" else None) or preset.base_url
    if not url:
        raise ConfigError(f"provider {name!r} needs an endpoint: set CHATD_BASE_URL")
    return ProviderOptions(name=name, api_key=key, base_url=url, model=model, timeout_s=timeout_s)


def _configured(name: str, env: Mapping[str, str]) -> bool:
    preset = PRESETS[name]
    if not (preset.key_var and env.get(preset.key_var)):
        return False
    # A vLLM server needs no key, but VLLM_API_KEY set says the user runs one (at
    # CHATD_BASE_URL, else the preset's); OPENAI_API_KEY stands for openai, not for this one.
    return preset.key_required or name == "vllm"


plugin = ProviderPlugin(
    names=tuple(PRESETS),
    create=OpenAICompatProvider,
    resolve=_resolve,
    configured=_configured,
)
