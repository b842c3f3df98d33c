"""Translation between OpenAI Chat Completions and chatd: messages in, events out."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from chatd.api.errors import error_type
from chatd.api.openai_schemas import (
    ChatMessage,
    Choice,
    Completion,
    ContentPart,
    ReplyMessage,
    ToolCall,
    ToolDef,
    Usage,
)
from chatd.api.sse import sse_data
from chatd.api.streams import close, last_words
from chatd.errors import ChatdError, InputError
from chatd.types import (
    Message,
    Part,
    Role,
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
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
_EMPTY_SCHEMA = {"type": "object", "properties": {}}


def check_messages(messages: list[ChatMessage]) -> None:
    """Refuse, in OpenAI's words, the messages OpenAI refuses: content missing, null or empty."""
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(m.content, list):
            if not m.content:
                raise InputError(_empty_array(f"{where}.content"))
            for j, part in enumerate(m.content):
                if part.type == "text" and part.text is None:
                    raise InputError(f"Missing required parameter: '{where}.content[{j}].text'.")
        if m.tool_calls == []:
            raise InputError(_empty_array(f"{where}.tool_calls"))
        # Only an assistant message that calls tools may go without content.
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            if "content" not in m.model_fields_set:
                raise InputError(f"Missing required parameter: '{where}.content'.")
            raise InputError(
                f"Invalid type for '{where}.content': expected a string or an array of "
                "content parts, but got null instead."
            )
        if m.role == "tool" and not m.tool_call_id:
            raise InputError(f"Missing required parameter: '{where}.tool_call_id'.")


def _empty_array(param: str) -> str:
    return (
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead."
    )


def content_text(content: str | list[ContentPart] | None) -> str:
    """Return a message's text; InputError for parts chatd cannot pass on (images, audio)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InputError(f"content parts of type {part.type!r} are not supported; send text")
        texts.append(part.text)
    return "".join(texts)


def to_chatd(messages: list[ChatMessage]) -> tuple[str | None, list[Message]]:
    """Return the system prompt and the conversation as chatd messages.

    Tool results (role "tool") join the next user message, the way chatd stores them.
    """
    system: list[str] = []
    out: list[Message] = []
    results: list[Part] = []
    for m in messages:
        text = content_text(m.content)
        if m.role in ("system", "developer"):
            system.append(text)
        elif m.role == "tool":
            if not m.tool_call_id:
                raise InputError("a tool message needs its tool_call_id")
            results.append(ToolResultPart(m.tool_call_id, text))
        elif m.role == "user":
            out.append(Message(Role.USER, (*results, TextPart(text))))
            results = []
        else:
            if results:
                out.append(Message(Role.USER, tuple(results)))
                results = []
            parts: list[Part] = [TextPart(text)] if text else []
            parts.extend(_call(c) for c in m.tool_calls or ())
            if parts:
                out.append(Message(Role.ASSISTANT, tuple(parts)))
    if results:
        out.append(Message(Role.USER, tuple(results)))
    return "\n\n".join(system) or None, out


def _call(call: ToolCall) -> ToolCallPart:
    try:
        arguments = orjson.loads(call.function.arguments or "{}")
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InputError(f"tool call {call.id!r}: arguments must be a JSON object")
    return ToolCallPart(call.id, call.function.name, arguments)


def tool_specs(tools: list[ToolDef] | None, choice: Any) -> tuple[ToolSpec, ...]:
    """Return the client's tools as chatd tool specs; none when tool_choice is "none"."""
    if not tools or choice == "none":
        return ()
    return tuple(
        ToolSpec(
            t.function.name, t.function.description or "", t.function.parameters or _EMPTY_SCHEMA
        )
        for t in tools
    )


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
