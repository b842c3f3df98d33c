"""Turn messages and their parts into plain JSON-ready dicts and back; pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chatd.errors import InputError
from chatd.types import Message, Part, Role, TextPart, ToolCallPart, ToolResultPart

_ROLES = frozenset(r.value for r in Role)


def part_to_dict(part: Part) -> dict[str, Any]:
    """Encode one part as a plain dict."""
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ToolCallPart):
        # A plain dict copy: orjson refuses other Mappings, and later edits must not leak in.
        return {"type": "tool_call", "id": part.id, "name": part.name, "input": dict(part.input)}
    return {
        "type": "tool_result",
        "tool_call_id": part.tool_call_id,
        "content": part.content,
        "is_error": part.is_error,
    }


def part_from_dict(data: Mapping[str, Any]) -> Part:
    """Decode one part; InputError if it is malformed."""
    # Most parts are text, read back for every turn's history: decoded without the checks'
    # detours (an abstract-class isinstance costs more than building the part).
    if type(data) is dict and data.get("type") == "text" and type(data.get("text")) is str:
        return TextPart(data["text"])
    if not isinstance(data, Mapping):
        raise InputError(f"malformed message part: expected an object, got {type(data).__name__}")
    kind = data.get("type")
    if kind == "text":
        return TextPart(_str(data, "text"))
    if kind == "tool_call":
        tool_input = data.get("input", {})
        if not isinstance(tool_input, Mapping):
            raise InputError("malformed tool_call part: 'input' must be an object")
        return ToolCallPart(_str(data, "id"), _str(data, "name"), dict(tool_input))
    if kind == "tool_result":
        is_error = data.get("is_error", False)
        if not isinstance(is_error, bool):
            raise InputError("malformed tool_result part: 'is_error' must be a boolean")
        return ToolResultPart(_str(data, "tool_call_id"), _str(data, "content"), is_error)
    raise InputError(f"malformed message part: unknown type {kind!r}")


def parts_to_list(parts: Sequence[Part]) -> list[dict[str, Any]]:
    """Encode a message's parts as a list of dicts."""
    return [part_to_dict(p) for p in parts]


def parts_from_list(data: Sequence[Mapping[str, Any]]) -> tuple[Part, ...]:
    """Decode a list of part dicts; InputError if it is malformed."""
    if type(data) is not list and (not isinstance(data, Sequence) or isinstance(data, str)):
        raise InputError("malformed message: 'parts' must be a list")
    return tuple([part_from_dict(p) for p in data])


def message_to_dict(message: Message) -> dict[str, Any]:
    """Encode a message as {"role", "parts"}."""
    return {"role": message.role.value, "parts": parts_to_list(message.parts)}


def message_from_dict(data: Mapping[str, Any]) -> Message:
    """Decode a message written by message_to_dict; InputError if it is malformed."""
    if not isinstance(data, Mapping):
        raise InputError(f"malformed message: expected an object, got {type(data).__name__}")
    role = data.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise InputError(f"malformed message: unknown role {role!r}")
    return Message(Role(role), parts_from_list(data.get("parts", ())))


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InputError(f"malformed {data.get('type')} part: {key!r} must be a string")
    return value
