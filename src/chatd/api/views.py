"""Conversions from chatd values to response bodies, and small input clean-ups."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from chatd.api.schemas import (
    ContextSettings,
    ContextViewOut,
    HistoryMessage,
    MessageOut,
    PartOut,
    ReplyOut,
    SessionOut,
    TextPartOut,
    ToolCallOut,
    ToolResultOut,
    TurnOut,
    UsageOut,
)
from chatd.types import (
    Message,
    Part,
    SessionInfo,
    TextPart,
    ToolCallPart,
    TurnEnded,
    TurnRecord,
    TurnState,
    Usage,
)


def strip_controls(text: str) -> str:
    """Drop control characters but newline and tab, as the engine does for messages."""
    text = text.replace("\r\n", "\n")
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"))


def usage_out(usage: Usage) -> UsageOut:
    """Return the body of a usage."""
    return UsageOut(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        estimated=usage.estimated,
    )


def session_out(info: SessionInfo) -> SessionOut:
    """Return the body of a session."""
    p = info.params
    return SessionOut(
        id=info.id,
        system_prompt=info.system_prompt,
        model=p.model,
        provider=info.provider,
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        stop=None if p.stop is None else list(p.stop),
        tools=None if p.tools is None else list(p.tools),
        context=None
        if p.context_policy is None
        else ContextSettings(policy=p.context_policy, limit=p.context_limit),
        view=ContextViewOut(first_turn=info.fold.first_turn, summary=info.fold.summary),
        turn_count=info.turn_count,
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


def tool_call_out(call: ToolCallPart) -> ToolCallOut:
    """Return the body of a tool call."""
    return ToolCallOut(id=call.id, name=call.name, input=dict(call.input))


def part_out(part: Part) -> PartOut:
    """Return the body of one message part."""
    if isinstance(part, TextPart):
        return TextPartOut(text=part.text)
    if isinstance(part, ToolCallPart):
        return tool_call_out(part)
    return ToolResultOut(
        tool_call_id=part.tool_call_id, content=part.content, is_error=part.is_error
    )


def message_out(message: Message, tokens: int | None = None) -> MessageOut:
    """Return the body of a stored message."""
    return MessageOut(
        role=message.role.value,
        content=message.text,
        parts=[part_out(p) for p in message.parts],
        tokens=tokens,
    )


def turn_out(turn: TurnRecord, first_in_view: int = 0) -> TurnOut:
    """Return the body of a stored turn; the model's view starts at turn `first_in_view`."""
    sizes = turn.tokens
    return TurnOut(
        id=turn.id,
        seq=turn.seq,
        state=turn.state,
        stop_reason=turn.stop_reason,
        truncated=turn.state is TurnState.TRUNCATED,
        model=turn.model,
        provider=turn.provider,
        usage=usage_out(turn.usage),
        created_at=turn.created_at,
        latency_ms=turn.latency_ms,
        ttft_ms=turn.ttft_ms,
        error=turn.error,
        in_view=turn.state.in_context and turn.seq >= first_in_view,
        messages=[
            message_out(m, sizes[i] if i < len(sizes) else None)
            for i, m in enumerate(turn.messages)
        ],
    )


def reply_out(session_id: str, end: TurnEnded, calls: Sequence[ToolCallPart]) -> ReplyOut:
    """Return the body of a finished send."""
    return ReplyOut(
        session_id=session_id,
        turn_id=end.turn_id,
        state=end.state,
        stop_reason=end.stop_reason,
        truncated=end.truncated,
        text=end.text,
        usage=usage_out(end.usage),
        tool_calls=[tool_call_out(c) for c in calls],
    )


def history(messages: Sequence[Message]) -> list[HistoryMessage]:
    """Return the user and assistant text of in-context messages (tool-only ones left out)."""
    return [HistoryMessage(role=m.role.value, content=m.text) for m in messages if m.text]
