"""Anthropic Messages shapes for the fake upstream: request reading, JSON, SSE events, errors.

Pure functions only; `chatd.testing.fake_upstream` does the HTTP and documents the behaviour.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from chatd.testing import fake_wire as wire
from chatd.testing.fake_cache import CacheSplit
from chatd.testing.fake_directives import WireError
from chatd.testing.fake_wire import Conversation, Reply, StreamPlan

_ERROR_TYPES = {
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


def anthropic_model(body: dict[str, Any]) -> str:
    """Return the requested model, checking that max_tokens is given too."""
    model = wire.require_model(body)
    if wire.int_field(body, "max_tokens") is None:
        raise WireError("max_tokens: Field required")
    return model


def anthropic_conversation(body: dict[str, Any]) -> Conversation:
    """Read a Messages request; the human turn is the last user message with text."""
    messages = wire.messages_of(body)
    final = wire.blocks_of(messages[-1].get("content"))
    if messages[-1]["role"] == "assistant" and final and final[-1].get("type") == "text":
        # A prefill the model continues; Anthropic refuses one ending in whitespace.
        text = str(final[-1].get("text", ""))
        if text != text.rstrip():
            raise WireError("messages: final assistant content cannot end with trailing whitespace")
    human_at = next(
        (
            i
            for i in range(len(messages) - 1, -1, -1)
            if messages[i]["role"] == "user" and wire.has_text(messages[i].get("content"))
        ),
        None,
    )
    results = [
        block
        for message in messages[human_at or 0 :]
        if message["role"] == "user"
        for block in wire.blocks_of(message.get("content"))
        if block.get("type") == "tool_result"
    ]
    last = messages[-1]
    trailing_blocks = [
        block for block in wire.blocks_of(last.get("content")) if block.get("type") == "tool_result"
    ]
    trailing = None
    if last["role"] == "user" and trailing_blocks:
        trailing = "\n".join(wire.text_of(block.get("content")) for block in trailing_blocks)
    return wire.conversation(messages, len(messages), human_at, len(results), trailing)


def anthropic_reply(body: dict[str, Any], conv: Conversation, prompt: CacheSplit) -> Reply:
    """Plan the reply, honouring max_tokens and stop_sequences."""
    return wire.plan_reply(
        body,
        conv,
        prompt=prompt,
        limit=wire.int_field(body, "max_tokens"),
        sequences=wire.stop_sequences(body.get("stop_sequences")),
        tool_prefix="toolu_",
    )


def anthropic_error(status: int, message: str, *, quota: bool = False) -> dict[str, Any]:
    """Build Anthropic's error body for an HTTP status."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {"type": kind, "message": message}
    if quota:
        # The SDK maps this error_code on a 429 to EnforcedSpendLimitReachedError.
        error["message"] = "Your credit balance is too low to access the Anthropic API."
        error["details"] = {"error_code": "enforced_spend_limit_reached"}
    return {"type": "error", "error": error, "request_id": "req_" + secrets.token_hex(12)}


def _usage(reply: Reply, output_tokens: int) -> dict[str, int]:
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
        "usage": _usage(reply, reply.output_tokens),
    }


def _event(data: dict[str, Any]) -> bytes:
    name: str = data["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# What unknown_event=1 inserts after the first text delta: a type no SDK knows, and a ping.
_UNKNOWN_EVENTS = _event(
    {"type": "content_block_annotation", "index": 0, "note": "future"}
) + _event({"type": "ping"})


def anthropic_stream(model: str, reply: Reply, *, unknown_event: bool = False) -> StreamPlan:
    """Encode a reply as Anthropic's SSE event sequence."""
    start = anthropic_message(model, reply)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = _usage(reply, 1)
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
    if unknown_event:
        if deltas:
            deltas = (deltas[0] + _UNKNOWN_EVENTS, *deltas[1:])
        else:
            head += _UNKNOWN_EVENTS
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
            for part in wire.json_pieces(tool.arguments)
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
