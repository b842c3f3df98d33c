"""chatd's turn events encoded as OpenAI Chat Completions: a completion, or its SSE chunks."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from chatd.api.encoders import close, last_words, sse_data
from chatd.api.errors import error_type
from chatd.api.openai.schemas import (
    Choice,
    Completion,
    ReplyMessage,
    ToolCall,
    Usage,
)
from chatd.errors import ChatdError
from chatd.types import (
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
    ToolCallPart,
    TurnEnded,
    TurnEvent,
    UsageEvent,
)
from chatd.types import Usage as ChatdUsage

log = logging.getLogger("chatd.api")

FINISH = {
    StopReason.END_TURN: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.MAX_TOKENS: "length",
    StopReason.CONTEXT_WINDOW_EXCEEDED: "length",
    StopReason.TOOL_USE: "tool_calls",
    StopReason.REFUSAL: "content_filter",
}


def usage(u: ChatdUsage) -> Usage:
    """Return usage in OpenAI's terms."""
    return Usage(
        prompt_tokens=u.input_tokens,
        completion_tokens=u.output_tokens,
        total_tokens=u.input_tokens + u.output_tokens,
    )


def error_body(exc: BaseException) -> dict[str, Any]:
    """Return OpenAI's error shape for an exception."""
    message = exc.message if isinstance(exc, ChatdError) else "internal server error"
    kind = error_type(exc)
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


@dataclass
class Reply:
    """What the events of one completion add up to.

    Stateless, tool calls are the client's to run and usage is summed per model call; with a
    session, tool calls are the server's own (never shown) and the turn's end has the usage.
    """

    id: str
    model: str
    stateless: bool
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    calls: list[ToolCallPart] = field(default_factory=list)
    usage: ChatdUsage = field(default_factory=ChatdUsage)
    stop: StopReason = StopReason.UNKNOWN

    def take(self, event: StreamEvent | TurnEvent) -> dict[str, Any] | None:
        """Add an event; return the stream delta it makes, if any."""
        if isinstance(event, TextDelta):
            self.text.append(event.text)
            return {"content": event.text} if event.text else None
        if isinstance(event, ToolCallEvent) and self.stateless:
            self.calls.append(event.call)
            return {"tool_calls": [{"index": len(self.calls) - 1, **_call_out(event.call)}]}
        if isinstance(event, UsageEvent) and self.stateless:
            self.usage = self.usage + event.usage
        elif isinstance(event, StopEvent):
            self.stop = event.reason
        elif isinstance(event, TurnEnded):
            self.stop, self.usage = event.stop_reason, event.usage
        return None

    def completion(self) -> Completion:
        """Return the whole response."""
        calls = [ToolCall.model_validate(_call_out(c)) for c in self.calls] or None
        message = ReplyMessage(content="".join(self.text) or None, tool_calls=calls)
        choice = Choice(message=message, finish_reason=self.finish_reason())
        return Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=usage(self.usage),
        )

    def finish_reason(self) -> str:
        """Return OpenAI's finish_reason for how the model stopped."""
        return FINISH.get(self.stop, "stop")

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        """Encode one stream chunk."""
        return sse_data(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )


def _call_out(call: ToolCallPart) -> dict[str, Any]:
    arguments = orjson.dumps(dict(call.input)).decode()
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


async def collect(reply: Reply, first: Any, events: AsyncIterator[Any]) -> Completion:
    """Run the events to the end and return the response."""
    reply.take(first)
    async for event in events:
        reply.take(event)
    return reply.completion()


async def stream(
    reply: Reply, first: Any, events: AsyncIterator[Any], include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """Yield the response as OpenAI stream chunks, ending with [DONE] or an error chunk."""
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        delta = reply.take(first)
        if delta:
            yield reply.chunk(delta)
        async for event in events:
            delta = reply.take(event)
            if delta:
                yield reply.chunk(delta)
        yield reply.chunk({}, reply.finish_reason())
        if include_usage:
            yield sse_data(
                {
                    "id": reply.id,
                    "object": "chat.completion.chunk",
                    "created": reply.created,
                    "model": reply.model,
                    "choices": [],
                    "usage": usage(reply.usage).model_dump(),
                }
            )
        yield b"data: [DONE]\n\n"
    except Exception as exc:
        if not isinstance(exc, ChatdError):
            log.error("completion stream failed", exc_info=exc)
        yield last_words(lambda e: sse_data(error_body(e)), exc)
    finally:
        await close(events)
