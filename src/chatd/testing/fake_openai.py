"""OpenAI Chat Completions shapes for the fake upstream: request reading, JSON, SSE chunks, errors.

Pure functions only; `chatd.testing.fake_upstream` does the HTTP and documents the behaviour.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from chatd.testing import fake_wire as wire
from chatd.testing.fake_cache import CacheSplit
from chatd.testing.fake_wire import Conversation, Reply, StreamPlan

_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
}
_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
# What unknown_event=1 adds to every stream chunk: a top-level field no SDK knows.
_UNKNOWN_FIELD = {"x_future": {"a": 1}}


def openai_conversation(body: dict[str, Any]) -> Conversation:
    """Read a Chat Completions request; system/developer messages are not counted."""
    messages = wire.messages_of(body)
    roles = [message["role"] for message in messages]
    human_at = next((i for i in range(len(roles) - 1, -1, -1) if roles[i] == "user"), None)
    results = roles[(human_at or 0) :].count("tool")
    tail: list[str] = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        tail.insert(0, wire.text_of(message.get("content")))
    trailing = "\n".join(tail) if tail else None
    count = sum(role not in ("system", "developer") for role in roles)
    return wire.conversation(messages, count, human_at, results, trailing)


def openai_reply(body: dict[str, Any], conv: Conversation, prompt: CacheSplit) -> Reply:
    """Plan the reply, honouring max_completion_tokens (else max_tokens) and stop."""
    limit = wire.int_field(body, "max_completion_tokens")
    limit = wire.int_field(body, "max_tokens") if limit is None else limit
    stop = body.get("stop")
    sequences = [stop] if isinstance(stop, str) else wire.stop_sequences(stop)
    return wire.plan_reply(
        body, conv, prompt=prompt, limit=limit, sequences=sequences, tool_prefix="call_"
    )


def openai_error(
    status: int,
    message: str,
    *,
    quota: bool = False,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """Build OpenAI's error body for an HTTP status."""
    kind, default_code = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    if quota:
        kind = default_code = "insufficient_quota"
        message = "You exceeded your current quota, please check your plan and billing details."
    error = {"message": message, "type": kind, "param": param, "code": code or default_code}
    return {"error": error}


def _usage(reply: Reply) -> dict[str, Any]:
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


def _envelope(model: str, kind: str) -> dict[str, Any]:
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
        "finish_reason": _FINISH[reply.stop],
    }
    return {**_envelope(model, "chat.completion"), "choices": [choice], "usage": _usage(reply)}


def openai_stream(
    model: str, reply: Reply, *, include_usage: bool, unknown_event: bool = False
) -> StreamPlan:
    """Encode a reply as OpenAI's SSE chunk sequence ending in [DONE]."""
    envelope = _envelope(model, "chat.completion.chunk")
    if include_usage:
        envelope["usage"] = None
    if unknown_event:
        envelope.update(_UNKNOWN_FIELD)

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
            for part in wire.json_pieces(tool.arguments)
        )
    tail.append(chunk({}, _FINISH[reply.stop]))
    if include_usage:
        usage = {**envelope, "choices": [], "usage": _usage(reply)}
        tail.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    tail.append(b"data: [DONE]\n\n")
    error = openai_error(500, "The server had an error while processing your request.")
    return StreamPlan(head, deltas, b"".join(tail), b"data: " + orjson.dumps(error) + b"\n\n")


def openai_models() -> dict[str, Any]:
    """Build OpenAI's model list."""
    names = ("fake-model", "gpt-4o", "gpt-4o-mini")
    data = [{"id": n, "object": "model", "created": 1700000000, "owned_by": "fake"} for n in names]
    return {"object": "list", "data": data}
