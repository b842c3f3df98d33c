"""Conversions from chatd values to response bodies, and small input clean-ups."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

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
    UsageGroupOut,
    UsageOut,
    UsageReportOut,
)
from chatd.errors import InputError
from chatd.prices import MICRO
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
    UsageLine,
    UsageQuery,
)

# What a usage report covers when no `since` is given: today and the 29 days before, in UTC.
DEFAULT_USAGE_DAYS = 30


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


def usd(micro: int) -> float:
    """Return micro-dollars as dollars."""
    return micro / MICRO


def session_out(info: SessionInfo) -> SessionOut:
    """Return the body of a session."""
    p = info.params
    return SessionOut(
        id=info.id,
        title=info.title,
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
        cost_usd=usd(info.cost_micro_usd),
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
        cost_usd=None if turn.cost_micro_usd is None else usd(turn.cost_micro_usd),
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
        cost_usd=None if end.cost_micro_usd is None else usd(end.cost_micro_usd),
        tool_calls=[tool_call_out(c) for c in calls],
    )


def history(messages: Sequence[Message]) -> list[HistoryMessage]:
    """Return the user and assistant text of in-context messages (tool-only ones left out)."""
    return [HistoryMessage(role=m.role.value, content=m.text) for m in messages if m.text]


def instant(text: str, name: str, *, end: bool = False) -> datetime:
    """Read an ISO date or datetime as a UTC instant; InputError (422) naming the parameter.

    A date is the start of that day in UTC, or with `end` the start of the next (so an end
    date is included); a datetime without an offset is UTC.
    """
    try:
        if len(text) <= 10:
            day = date.fromisoformat(text)
            return datetime.combine(day, time(), UTC) + timedelta(days=1 if end else 0)
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise InputError(
            f"{name} must be an ISO date (2026-12-01) or datetime (2026-12-01T08:00:00Z), "
            f"not {text[:40]!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def default_since(now: datetime) -> datetime:
    """Return where a usage report starts by default: UTC midnight, 29 days before today."""
    today = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    return today - timedelta(days=DEFAULT_USAGE_DAYS - 1)


def checked_range(since: datetime, until: datetime | None) -> None:
    """Refuse (422) a range that ends before it starts."""
    if until is not None and until <= since:
        raise InputError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")


def _group_out(line: UsageLine) -> UsageGroupOut:
    return UsageGroupOut(
        key=line.key,
        turns=line.turns,
        completions=line.completions,
        cost_usd=usd(line.cost_micro_usd),
        unpriced=line.unpriced,
        **usage_out(line.usage).model_dump(),
    )


def usage_report_out(query: UsageQuery, lines: Sequence[UsageLine]) -> UsageReportOut:
    """Return the body of a usage report: its totals, then each group."""
    total = UsageLine.total(lines)
    return UsageReportOut(
        turns=total.turns,
        completions=total.completions,
        cost_usd=usd(total.cost_micro_usd),
        unpriced=total.unpriced,
        user=query.user_id,
        since=query.since,
        until=query.until,
        by=query.by,
        data=[_group_out(line) for line in lines],
        **usage_out(total.usage).model_dump(),
    )
