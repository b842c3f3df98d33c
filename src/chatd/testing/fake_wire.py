"""Reply planning, fault directives and wire encodings for the fake LLM upstream.

Pure functions only: `chatd.testing.fake_upstream` does the HTTP. The directive language and
reply format are documented there.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import orjson

Provider = Literal["anthropic", "openai"]
StopReason = Literal["end_turn", "max_tokens", "refusal", "stop_sequence", "tool_use"]

DIRECTIVE_RE = re.compile(r"\s*\[fake:([^\]]*)\]")
_WORD_RE = re.compile(r"\S+")
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_FORCIBLE_STOPS = ("end_turn", "max_tokens", "refusal", "stop_sequence")
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_OPENAI_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
}


class WireError(Exception):
    """A request the fake rejects with a 400 in the provider's error shape."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Directives:
    """Fault and shaping directives parsed from `[fake: ...]` in the last user text."""

    chunks: int = 4
    delay_ms: int = 0
    status: int | None = None
    retry_after: str | None = None
    retry_after_ms: int | None = None
    quota: bool = False
    fail_times: int | None = None
    stream_error_after: int | None = None
    drop_after: int | None = None
    stop: StopReason | None = None
    tool: str | None = None
    tool_input: dict[str, Any] = field(default_factory=dict)
    tool_rounds: int = 1
    usage_in: int | None = None
    usage_out: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    no_usage: bool = False
    words: int = 0

    @property
    def has_fault(self) -> bool:
        """Say whether any failure directive is present."""
        return (
            self.status is not None
            or self.stream_error_after is not None
            or self.drop_after is not None
        )

    def without_faults(self) -> Directives:
        """Return a copy with every failure directive switched off."""
        return replace(self, status=None, stream_error_after=None, drop_after=None)


# Minimum accepted value of each integer directive.
_INT_KEYS = {
    "chunks": 1,
    "delay_ms": 0,
    "retry_after_ms": 0,
    "fail_times": 0,
    "stream_error_after": 0,
    "drop_after": 0,
    "tool_rounds": 0,
    "usage_in": 0,
    "usage_out": 0,
    "cache_read": 0,
    "cache_write": 0,
    "words": 0,
}


def parse_directives(text: str) -> Directives:
    """Parse every `[fake: key=value ...]` in text; raise WireError on a malformed value."""
    values: dict[str, Any] = {}
    for match in DIRECTIVE_RE.finditer(text):
        for token in match.group(1).split():
            key, sep, raw = token.partition("=")
            if not sep or not raw:
                raise WireError(f"fake directive {token!r} is not key=value")
            if key in _INT_KEYS:
                values[key] = _parse_int(key, raw, _INT_KEYS[key])
            elif key in ("quota", "no_usage"):
                if raw not in ("0", "1", "true", "false"):
                    raise WireError(f"fake directive {key}={raw!r} must be 0 or 1")
                values[key] = raw in ("1", "true")
            elif key == "status":
                status = _parse_int(key, raw, 400)
                if status > 599:
                    raise WireError(f"fake directive status={raw!r} must be 400-599")
                values[key] = status
            elif key == "retry_after":
                try:
                    ok = float(raw) >= 0
                except ValueError:
                    ok = False
                if not ok:
                    raise WireError(f"fake directive retry_after={raw!r} must be seconds")
                values[key] = raw
            elif key == "stop":
                if raw not in _FORCIBLE_STOPS:
                    raise WireError(f"fake directive stop={raw!r} must be one of {_FORCIBLE_STOPS}")
                values[key] = raw
            elif key == "tool":
                if not _TOOL_NAME_RE.match(raw):
                    raise WireError(f"fake directive tool={raw!r} is not a tool name")
                values[key] = raw
            elif key == "tool_input":
                values[key] = _parse_tool_input(raw)
            # Unknown keys are ignored so a test can carry notes for other fakes.
    return Directives(**values)


def _parse_int(key: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise WireError(f"fake directive {key}={raw!r} must be an integer") from None
    if value < minimum:
        raise WireError(f"fake directive {key}={raw!r} must be >= {minimum}")
    return value


def _parse_tool_input(raw: str) -> dict[str, Any]:
    try:
        value = orjson.loads(urllib.parse.unquote(raw))
    except orjson.JSONDecodeError:
        raise WireError(f"fake directive tool_input={raw!r} is not url-encoded JSON") from None
    if not isinstance(value, dict):
        raise WireError(f"fake directive tool_input={raw!r} must be a JSON object")
    return value


def strip_directives(text: str) -> str:
    """Remove every directive from text and trim the result."""
    return DIRECTIVE_RE.sub("", text).strip()


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the fake model 'reads' from a request."""

    count: int
    said: str
    directives: Directives
    tool_results_since_human: int
    trailing_tool_result: str | None


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise WireError("messages: Field required (a list)")
    if not messages:
        raise WireError("messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise WireError(f"messages.{index}: must be an object with a role")
    return messages


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    raise WireError("content: must be a string or a list of content blocks")


def _text(content: Any) -> str:
    return "\n".join(
        str(block.get("text", "")) for block in _blocks(content) if block.get("type") == "text"
    )


def _has_text(content: Any) -> bool:
    return any(block.get("type") == "text" for block in _blocks(content))


def _conversation(
    messages: list[dict[str, Any]],
    count: int,
    human_at: int | None,
    results_since: int,
    trailing: str | None,
) -> Conversation:
    said_raw = _text(messages[human_at].get("content")) if human_at is not None else ""
    return Conversation(
        count=count,
        said=strip_directives(said_raw),
        directives=parse_directives(said_raw),
        tool_results_since_human=results_since,
        trailing_tool_result=trailing,
    )


def anthropic_conversation(body: dict[str, Any]) -> Conversation:
    """Read an Anthropic Messages request; the human turn is the last user message with text."""
    messages = _messages(body)
    human_at = next(
        (
            i
            for i in range(len(messages) - 1, -1, -1)
            if messages[i]["role"] == "user" and _has_text(messages[i].get("content"))
        ),
        None,
    )
    results = [
        block
        for message in messages[human_at or 0 :]
        if message["role"] == "user"
        for block in _blocks(message.get("content"))
        if block.get("type") == "tool_result"
    ]
    last = messages[-1]
    trailing_blocks = [
        block for block in _blocks(last.get("content")) if block.get("type") == "tool_result"
    ]
    trailing = None
    if last["role"] == "user" and trailing_blocks:
        trailing = "\n".join(_text(block.get("content")) for block in trailing_blocks)
    return _conversation(messages, len(messages), human_at, len(results), trailing)


def openai_conversation(body: dict[str, Any]) -> Conversation:
    """Read an OpenAI Chat Completions request; system/developer messages are not counted."""
    messages = _messages(body)
    roles = [message["role"] for message in messages]
    human_at = next((i for i in range(len(roles) - 1, -1, -1) if roles[i] == "user"), None)
    results = roles[(human_at or 0) :].count("tool")
    tail: list[str] = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        tail.insert(0, _text(message.get("content")))
    trailing = "\n".join(tail) if tail else None
    count = sum(role not in ("system", "developer") for role in roles)
    return _conversation(messages, count, human_at, results, trailing)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call the fake model makes."""

    id: str
    name: str
    input: dict[str, Any]
    arguments: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A planned reply, independent of wire format."""

    text: str
    pieces: tuple[str, ...]
    stop: StopReason
    stop_sequence: str | None
    tool: ToolCall | None
    input_tokens: int
    output_tokens: int
    cache_read: int
    cache_write: int


def canonical_json(value: Any) -> bytes:
    """Serialise value with sorted keys so equal requests give equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def reply_digest(body: dict[str, Any]) -> str:
    """Return the 8-hex digest that names a request's reply (ignoring the stream flags)."""
    content = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    return hashlib.sha256(canonical_json(content)).hexdigest()[:8]


def _string_chars(value: Any) -> int:
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """Estimate input tokens: a quarter of every string's length plus 3 per message."""
    chars = sum(_string_chars(body.get(key)) for key in ("system", "messages", "tools"))
    messages = body.get("messages")
    return math.ceil(chars / 4) + 3 * (len(messages) if isinstance(messages, list) else 0)


def word_count(text: str) -> int:
    """Count whitespace-separated words, the fake's unit of output tokens."""
    return len(_WORD_RE.findall(text))


def _first_words(text: str, limit: int) -> str:
    if limit <= 0:
        return ""
    for index, match in enumerate(_WORD_RE.finditer(text)):
        if index == limit - 1:
            return text[: match.end()]
    return text


def split_pieces(text: str, chunks: int) -> tuple[str, ...]:
    """Split text into `chunks` pieces at word starts (else characters) that rejoin exactly."""
    if not text:
        return ()
    starts = [match.start() for match in _WORD_RE.finditer(text)]
    if chunks <= len(starts):
        bounds = [0, *(starts[i * len(starts) // chunks] for i in range(1, chunks))]
    else:
        pieces = min(chunks, len(text))
        bounds = [i * len(text) // pieces for i in range(pieces)]
    bounds.append(len(text))
    return tuple(text[a:b] for a, b in itertools.pairwise(bounds))


def require_model(provider: Provider, body: dict[str, Any]) -> str:
    """Return the requested model, checking the fields the provider insists on."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model: Field required")
    if provider == "anthropic" and _int_field(body, "max_tokens") is None:
        raise WireError("max_tokens: Field required")
    return model


def _int_field(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WireError(f"{key}: must be a non-negative integer")
    return value


def _stop_sequences(provider: Provider, body: dict[str, Any]) -> list[str]:
    value = body.get("stop_sequences" if provider == "anthropic" else "stop")
    if value is None:
        return []
    if isinstance(value, str) and provider == "openai":
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return cast(list[str], value)
    raise WireError("stop sequences: must be a list of strings")


def plan_reply(provider: Provider, body: dict[str, Any], conv: Conversation) -> Reply:
    """Derive the deterministic reply to a request from its body and directives."""
    d = conv.directives
    if provider == "anthropic":
        limit = _int_field(body, "max_tokens")
    else:
        limit = _int_field(body, "max_completion_tokens")
        limit = _int_field(body, "max_tokens") if limit is None else limit
    sequences = _stop_sequences(provider, body)

    plural = "" if conv.count == 1 else "s"
    text = f"Fake reply #{reply_digest(body)} to {conv.count} message{plural}."
    call_tool = (
        d.tool is not None and d.stop is None and conv.tool_results_since_human < d.tool_rounds
    )
    if conv.trailing_tool_result is not None and not call_tool:
        text += f' Tool said: "{conv.trailing_tool_result}".'
    else:
        text += f' You said: "{conv.said}".'
    if call_tool:
        text += f" Calling {d.tool}."
    if d.words:
        text += " " + " ".join(_FILLER[i % len(_FILLER)] for i in range(d.words))

    stop: StopReason = "tool_use" if call_tool else "end_turn"
    stop_sequence: str | None = None
    if d.stop is not None:
        stop = d.stop
        if stop == "stop_sequence":
            stop_sequence = sequences[0] if sequences else "[fake-stop]"
    else:
        found = [(text.find(seq), seq) for seq in sequences if seq and seq in text]
        if found:
            at, stop_sequence = min(found)
            text, stop, call_tool = text[:at], "stop_sequence", False
        if limit is not None and word_count(text) > limit:
            text, stop, stop_sequence, call_tool = (
                _first_words(text, limit),
                "max_tokens",
                None,
                False,
            )

    tool = None
    if call_tool and d.tool is not None:
        arguments = orjson.dumps(d.tool_input).decode()
        prefix = "toolu_" if provider == "anthropic" else "call_"
        tool = ToolCall(prefix + secrets.token_hex(12), d.tool, d.tool_input, arguments)
    output = word_count(text)
    if tool is not None:
        output += math.ceil((len(tool.name) + len(tool.arguments)) / 4)
    return Reply(
        text=text,
        pieces=split_pieces(text, d.chunks),
        stop=stop,
        stop_sequence=stop_sequence,
        tool=tool,
        input_tokens=d.usage_in if d.usage_in is not None else estimate_input_tokens(body),
        output_tokens=d.usage_out if d.usage_out is not None else output,
        cache_read=d.cache_read or 0,
        cache_write=d.cache_write or 0,
    )


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Encoded SSE stream: head, one frame per text piece, tail, and the in-stream error frame."""

    head: bytes
    deltas: tuple[bytes, ...]
    tail: bytes
    error: bytes


def _json_pieces(arguments: str) -> list[str]:
    parts = min(3, max(1, len(arguments) // 8))
    bounds = [i * len(arguments) // parts for i in range(parts)] + [len(arguments)]
    return [arguments[a:b] for a, b in itertools.pairwise(bounds)]


# ---- Anthropic ---------------------------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str, *, quota: bool = False) -> dict[str, Any]:
    """Build Anthropic's error body for an HTTP status."""
    kind = _ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    error: dict[str, Any] = {"type": kind, "message": message}
    if quota:
        # The SDK maps this error_code on a 429 to EnforcedSpendLimitReachedError.
        error["message"] = "Your credit balance is too low to access the Anthropic API."
        error["details"] = {"error_code": "enforced_spend_limit_reached"}
    return {"type": "error", "error": error, "request_id": "req_" + secrets.token_hex(12)}


def _anthropic_usage(reply: Reply, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": reply.cache_write,
        "cache_read_input_tokens": reply.cache_read,
        "output_tokens": output_tokens,
    }


def anthropic_message(model: str, reply: Reply) -> dict[str, Any]:
    """Build a non-streamed Anthropic Message."""
    content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}]
    if reply.tool is not None:
        tool = reply.tool
        content.append({"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input})
    return {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop,
        "stop_sequence": reply.stop_sequence,
        "usage": _anthropic_usage(reply, reply.output_tokens),
    }


def _event(data: dict[str, Any]) -> bytes:
    name: str = data["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_stream(model: str, reply: Reply) -> StreamPlan:
    """Encode a reply as Anthropic's SSE event sequence."""
    start = anthropic_message(model, reply)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = _anthropic_usage(reply, 1)
    head = b"".join(
        _event(event)
        for event in (
            {"type": "message_start", "message": start},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {"type": "ping"},
        )
    )
    deltas = tuple(
        _event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        )
        for p in reply.pieces
    )
    tail: list[dict[str, Any]] = [{"type": "content_block_stop", "index": 0}]
    if reply.tool is not None:
        tool = reply.tool
        block = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
        tail.append({"type": "content_block_start", "index": 1, "content_block": block})
        tail.extend(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": part},
            }
            for part in _json_pieces(tool.arguments)
        )
        tail.append({"type": "content_block_stop", "index": 1})
    tail.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop, "stop_sequence": reply.stop_sequence},
            "usage": {"output_tokens": reply.output_tokens},
        }
    )
    tail.append({"type": "message_stop"})
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    return StreamPlan(head, deltas, b"".join(map(_event, tail)), _event(error))


def anthropic_models() -> dict[str, Any]:
    """Build Anthropic's model list page."""
    data = [
        {
            "type": "model",
            "id": name,
            "display_name": name.replace("-", " ").title(),
            "created_at": "2025-01-01T00:00:00Z",
            "lifecycle": "active",
        }
        for name in ("claude-fake-1", "claude-sonnet-4-5")
    ]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}


# ---- OpenAI ------------------------------------------------------------------------------------

_OPENAI_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def openai_error(
    status: int, message: str, *, quota: bool = False, code: str | None = None
) -> dict[str, Any]:
    """Build OpenAI's error body for an HTTP status."""
    kind, default_code = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    if quota:
        kind = default_code = "insufficient_quota"
        message = "You exceeded your current quota, please check your plan and billing details."
    error = {"message": message, "type": kind, "param": None, "code": code or default_code}
    return {"error": error}


def _openai_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_envelope(model: str, kind: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
    }


def openai_completion(model: str, reply: Reply) -> dict[str, Any]:
    """Build a non-streamed ChatCompletion."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool is not None:
        function = {"name": reply.tool.name, "arguments": reply.tool.arguments}
        message["tool_calls"] = [{"id": reply.tool.id, "type": "function", "function": function}]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _OPENAI_FINISH[reply.stop],
    }
    return {
        **_openai_envelope(model, "chat.completion"),
        "choices": [choice],
        "usage": _openai_usage(reply),
    }


def openai_stream(model: str, reply: Reply, *, include_usage: bool) -> StreamPlan:
    """Encode a reply as OpenAI's SSE chunk sequence ending in [DONE]."""
    envelope = _openai_envelope(model, "chat.completion.chunk")
    if include_usage:
        envelope["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**envelope, "choices": [choice]}) + b"\n\n"

    head = chunk({"role": "assistant", "content": "", "refusal": None})
    deltas = tuple(chunk({"content": piece}) for piece in reply.pieces)
    tail: list[bytes] = []
    if reply.tool is not None:
        tool = reply.tool
        function = {"name": tool.name, "arguments": ""}
        first = {"index": 0, "id": tool.id, "type": "function", "function": function}
        tail.append(chunk({"tool_calls": [first]}))
        tail.extend(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            for part in _json_pieces(tool.arguments)
        )
    tail.append(chunk({}, _OPENAI_FINISH[reply.stop]))
    if include_usage:
        usage = {**envelope, "choices": [], "usage": _openai_usage(reply)}
        tail.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    tail.append(b"data: [DONE]\n\n")
    error = openai_error(500, "The server had an error while processing your request.")
    return StreamPlan(head, deltas, b"".join(tail), b"data: " + orjson.dumps(error) + b"\n\n")


def openai_models() -> dict[str, Any]:
    """Build OpenAI's model list."""
    names = ("fake-model", "gpt-4o", "gpt-4o-mini")
    data = [{"id": n, "object": "model", "created": 1700000000, "owned_by": "fake"} for n in names]
    return {"object": "list", "data": data}
