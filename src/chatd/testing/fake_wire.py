"""Request reading, reply planning and usage estimates shared by the fake upstream's wire formats.

Pure functions only: `chatd.testing.fake_upstream` does the HTTP, `fake_directives` parses the
directives, `fake_anthropic` and `fake_openai` build the provider shapes. The reply format is
documented in `chatd.testing.fake_upstream`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson

from chatd.testing.fake_cache import CacheSplit
from chatd.testing.fake_directives import (
    Directives,
    StopReason,
    WireError,
    parse_directives,
    strip_directives,
)
from chatd.testing.fake_tokens import count_text as count_text
from chatd.testing.fake_tokens import count_tokens as count_tokens

Provider = Literal["anthropic", "openai"]

_WORD_RE = re.compile(r"\S+")
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


# ---- Reading requests (the provider modules say which message is the human turn) -------------


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the fake model 'reads' from a request."""

    count: int
    said: str
    directives: Directives
    tool_results_since_human: int
    trailing_tool_result: str | None


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the request's messages, checking each is an object with a role."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise WireError("messages: Field required (a list)")
    if not messages:
        raise WireError("messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise WireError(f"messages.{index}: must be an object with a role")
    return messages


def blocks_of(content: Any) -> list[dict[str, Any]]:
    """Return message content as a list of block objects (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    raise WireError("content: must be a string or a list of content blocks")


def text_of(content: Any) -> str:
    """Join the text blocks of message content with newlines."""
    return "\n".join(
        str(block.get("text", "")) for block in blocks_of(content) if block.get("type") == "text"
    )


def has_text(content: Any) -> bool:
    """Say whether message content has a text block."""
    return any(block.get("type") == "text" for block in blocks_of(content))


def conversation(
    messages: list[dict[str, Any]],
    count: int,
    human_at: int | None,
    results_since: int,
    trailing: str | None,
) -> Conversation:
    """Build a Conversation, taking text and directives from messages[human_at]."""
    said_raw = text_of(messages[human_at].get("content")) if human_at is not None else ""
    return Conversation(
        count=count,
        said=strip_directives(said_raw),
        directives=parse_directives(said_raw),
        tool_results_since_human=results_since,
        trailing_tool_result=trailing,
    )


def require_model(body: dict[str, Any]) -> str:
    """Return the requested model."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model: Field required")
    return model


def int_field(body: dict[str, Any], key: str) -> int | None:
    """Return a non-negative integer field, None if absent."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WireError(f"{key}: must be a non-negative integer")
    return value


def stop_sequences(value: Any) -> list[str]:
    """Check a list of stop sequences (None is none)."""
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return cast(list[str], value)
    raise WireError("stop sequences: must be a list of strings")


# ---- Reply composition and usage ---------------------------------------------------------------


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


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """Count a request's input tokens (the name older tests know `count_tokens` by)."""
    return count_tokens(body)


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


def plan_reply(
    body: dict[str, Any],
    conv: Conversation,
    *,
    prompt: CacheSplit,
    limit: int | None,
    sequences: list[str],
    tool_prefix: str,
) -> Reply:
    """Derive the deterministic reply to a request from its body, limits and directives."""
    d = conv.directives
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
        tool = ToolCall(tool_prefix + secrets.token_hex(12), d.tool, d.tool_input, arguments)
    output = word_count(text)
    if tool is not None:
        output += math.ceil((len(tool.name) + len(tool.arguments)) / 4)
    return Reply(
        text=text,
        pieces=split_pieces(text, d.chunks),
        stop=stop,
        stop_sequence=stop_sequence,
        tool=tool,
        input_tokens=d.usage_in if d.usage_in is not None else prompt.input_tokens,
        output_tokens=d.usage_out if d.usage_out is not None else output,
        cache_read=d.cache_read if d.cache_read is not None else prompt.cache_read,
        cache_write=d.cache_write if d.cache_write is not None else prompt.cache_write,
    )


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Encoded SSE stream: head, one frame per text piece, tail, and the in-stream error frame."""

    head: bytes
    deltas: tuple[bytes, ...]
    tail: bytes
    error: bytes


def json_pieces(arguments: str) -> list[str]:
    """Split a tool call's arguments JSON into up to 3 streamed parts."""
    parts = min(3, max(1, len(arguments) // 8))
    bounds = [i * len(arguments) // parts for i in range(parts)] + [len(arguments)]
    return [arguments[a:b] for a, b in itertools.pairwise(bounds)]
