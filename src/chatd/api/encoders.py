"""Engine events as the bytes of each streaming route: plain text, NDJSON, /v1 SSE.

A route first runs the turn up to its start (`started`), so whatever is refused before the
user's message is stored still gets its HTTP status; from then on failures travel in-stream,
and every stream ends with exactly one terminal line or event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson

from chatd.api.errors import error_type, retry_after
from chatd.api.views import tool_call_out, usage_out, usd
from chatd.errors import ChatdError
from chatd.types import (
    ContextChanged,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnEnded,
    TurnEvent,
    TurnStarted,
    UsageEvent,
)

log = logging.getLogger("chatd.api")


def sse(event: str, data: Any) -> bytes:
    """Encode one SSE event with a JSON payload."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def sse_data(data: Any) -> bytes:
    """Encode one unnamed SSE event (the OpenAI stream's shape)."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


Encoder = Callable[[TurnEvent], bytes | None]
Failure = Callable[[BaseException], bytes]


async def started(events: AsyncIterator[TurnEvent]) -> TurnEvent:
    """Pull the turn's first event; errors before it (nothing stored yet) raise here."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        raise ChatdError("the turn ended before it started") from None


async def close(events: AsyncIterator[object]) -> None:
    """Close an event source early (the client left, or the stream failed)."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()


async def encode(
    first: TurnEvent, events: AsyncIterator[TurnEvent], each: Encoder, failure: Failure
) -> AsyncGenerator[bytes, None]:
    """Yield the encoded events, then one failure chunk if the turn fails mid-way."""
    ended = isinstance(first, TurnEnded)
    try:
        chunk = each(first)
        if chunk:
            yield chunk
        async for event in events:
            chunk = each(event)
            if chunk:
                yield chunk
            ended = ended or isinstance(event, TurnEnded)
        if not ended:
            yield last_words(failure, ChatdError("the turn ended without a final event"))
    except Exception as exc:
        if not isinstance(exc, ChatdError):
            log.error("stream failed", exc_info=exc)
        yield last_words(failure, exc)
    finally:
        await close(events)


# What a stream ends with when even describing its error fails: it must end with one anyway.
_UNDESCRIBABLE = ChatdError("internal error: the reply ended with an error that cannot be shown")


def last_words(failure: Failure, exc: BaseException) -> bytes:
    """Encode the stream's terminal error; if that fails, a plain one, so a stream always ends."""
    try:
        return failure(exc)
    except Exception as broken:
        log.error("could not encode the error that ended a stream", exc_info=broken)
        return failure(_UNDESCRIBABLE)


def _message(exc: BaseException) -> str:
    if not isinstance(exc, ChatdError):
        return "internal server error"
    # An upstream's words may hold lone surrogates, which no encoder of the stream accepts.
    return exc.message.encode("utf-8", "replace").decode("utf-8")


def text_chunk(event: TurnEvent) -> bytes | None:
    """Encode /chat-stream: the reply's text as it comes."""
    return event.text.encode() if isinstance(event, TextDelta) and event.text else None


def text_failure(exc: BaseException) -> bytes:
    """End /chat-stream with one plain error line."""
    return f"\n[error] {_message(exc)}\n".encode()


def ndjson_chunk(event: TurnEvent) -> bytes | None:
    """Encode POST /chat/{id}: one {"delta"} line per text chunk."""
    if isinstance(event, TextDelta) and event.text:
        return orjson.dumps({"delta": event.text}) + b"\n"
    return None


def ndjson_failure(exc: BaseException) -> bytes:
    """End POST /chat/{id} with one {"error"} line."""
    return orjson.dumps({"error": _message(exc)}) + b"\n"


def sse_chunk(event: TurnEvent) -> bytes | None:
    """Encode a /v1 send's event as SSE (docs/http.md, /v1 SSE events)."""
    if isinstance(event, TextDelta):
        return sse("delta", {"text": event.text}) if event.text else None
    if isinstance(event, TurnStarted):
        return sse("message_start", {"session_id": event.session_id, "turn_id": event.turn_id})
    if isinstance(event, ToolCallEvent):
        return sse("tool_call", tool_call_out(event.call).model_dump())
    if isinstance(event, ToolResultEvent):
        r = event.result
        body = {"tool_call_id": r.tool_call_id, "content": r.content, "is_error": r.is_error}
        return sse("tool_result", body)
    if isinstance(event, UsageEvent):
        return sse("usage", usage_out(event.usage).model_dump())
    if isinstance(event, ContextChanged):
        return sse("context", context_out(event))
    return sse(
        "message_end",
        {
            "turn_id": event.turn_id,
            "state": event.state.value,
            "stop_reason": event.stop_reason.value,
            "usage": usage_out(event.usage).model_dump(),
            "truncated": event.truncated,
            "cost_usd": None if event.cost_micro_usd is None else usd(event.cost_micro_usd),
        },
    )


def context_out(event: ContextChanged) -> dict[str, object]:
    """Describe a change of the model's view, as the `context` event carries it."""
    return {
        "reason": event.reason,
        "dropped_messages": event.dropped_messages,
        "kept_messages": event.kept_messages,
        "summarized": event.summarized,
        "first_turn": event.first_turn,
    }


def sse_failure(exc: BaseException) -> bytes:
    """End a /v1 stream with one error event."""
    body: dict[str, object] = {"type": error_type(exc), "message": _message(exc)}
    wait = retry_after(exc)
    if wait is not None:
        body["retry_after"] = wait
    return sse("error", body)
