"""OpenAI Chat Completions requests decoded into chatd's terms: messages, system prompt, tools."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from chatd.api.openai.schemas import (
    ChatMessage,
    ContentPart,
    ToolCall,
    ToolDef,
)
from chatd.errors import InputError
from chatd.types import (
    Message,
    Part,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
)

log = logging.getLogger("chatd.api")

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
