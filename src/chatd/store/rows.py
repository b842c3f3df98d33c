"""Conversions between table rows (as column-name mappings) and chatd.types values."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from chatd.errors import NothingToContinue, NothingToRegenerate, SessionBusy
from chatd.store.codec import parts_from_list, parts_to_list
from chatd.types import (
    ContextFold,
    GenerationParams,
    Message,
    Role,
    SessionInfo,
    SessionSettings,
    StopReason,
    TurnRecord,
    TurnState,
    Usage,
)

# What a turn row holds before it finishes, beside the values a turn's commit inserts.
UNFINISHED_TURN: Mapping[str, Any] = {
    "stop_reason": None,
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "usage_estimated": False,
    "latency_ms": None,
    "ttft_ms": None,
    "error": None,
}


# The longest title a session takes from its first message.
TITLE_FROM_MESSAGE = 80

LEASE_EXPIRED = "the process running this turn stopped before it finished (its lease ran out)"
CONTINUATION_EXPIRED = (
    "the process continuing this reply stopped before it finished (its lease ran out); "
    "the reply is kept as it was, truncated"
)


def busy(session_id: str) -> SessionBusy:
    """Describe a session that already has a turn in flight."""
    return SessionBusy(
        f"session {session_id!r} already has a reply in progress; wait for it to finish"
    )


def not_continuable(session_id: str, state: TurnState | None) -> NothingToContinue:
    """Describe a session whose newest turn is not a truncated reply."""
    if state is None:
        return NothingToContinue(f"session {session_id!r} has no reply to continue yet")
    return NothingToContinue(
        f"the last reply in session {session_id!r} is {state.value}, not truncated: "
        "only a reply cut short by max_tokens can be continued"
    )


def title_from(message: Message) -> str | None:
    """Return the title a session takes from its first message: its first line, made short.

    The first line with any text, its whitespace collapsed, cut to TITLE_FROM_MESSAGE
    characters (the last one then "…"); None if the message has no text.
    """
    line = next((n for n in message.text.splitlines() if n.strip()), "")
    title = " ".join(line.split())
    if len(title) > TITLE_FROM_MESSAGE:
        title = title[: TITLE_FROM_MESSAGE - 1].rstrip() + "…"
    return title or None


def nothing_to_regenerate(session_id: str) -> NothingToRegenerate:
    """Describe a session with no turn whose reply could be regenerated."""
    return NothingToRegenerate(f"session {session_id!r} has no reply to regenerate yet")


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def param_values(params: GenerationParams) -> dict[str, Any]:
    """Return the sessions columns for these generation params."""
    return {
        "model": params.model,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "stop": None if params.stop is None else list(params.stop),
        "tools": None if params.tools is None else list(params.tools),
        "context_policy": params.context_policy,
        "context_limit": params.context_limit,
    }


def settings_values(settings: SessionSettings) -> dict[str, Any]:
    """Return the sessions columns for these settings."""
    return {
        "system_prompt": settings.system_prompt,
        "provider": settings.provider,
        **param_values(settings.params),
    }


def message_values(
    turn_id: str,
    session_pk: int,
    seq: int,
    message: Message,
    now: datetime,
    tokens: int | None = None,
) -> dict[str, Any]:
    """Return the messages row for one message."""
    return {
        "turn_id": turn_id,
        "session_pk": session_pk,
        "seq": seq,
        "role": message.role.value,
        "parts": parts_to_list(message.parts),
        "tokens": tokens,
        "created_at": now,
    }


def final_values(
    state: TurnState,
    stop_reason: StopReason | None,
    usage: Usage,
    latency_ms: float | None,
    ttft_ms: float | None,
    error: str | None,
    now: datetime,
    cost_micro_usd: int | None = None,
) -> dict[str, Any]:
    """Return the turns columns finish_turn sets."""
    return {
        "state": state.value,
        "stop_reason": None if stop_reason is None else stop_reason.value,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "usage_estimated": usage.estimated,
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "error": error,
        "cost_micro_usd": cost_micro_usd,
        "finished_at": now,
        "lease_until": None,
    }


def read_back(
    newest_first: Iterable[Message], until: Callable[[Message], bool] | None
) -> tuple[Message, ...]:
    """Take messages newest first until `until` says enough (all when None); oldest first."""
    taken: list[Message] = []
    for m in newest_first:
        taken.append(m)
        if until is not None and until(m):
            break
    return tuple(reversed(taken))


_ROLES = {r.value: r for r in Role}


def message(role: str, parts: Any) -> Message:
    """Build a Message from its role and parts columns."""
    # A dict lookup: calling the enum (Role(role)) takes several times as long.
    return Message(_ROLES.get(role) or Role(role), parts_from_list(parts))


def session_settings(row: Mapping[Any, Any]) -> SessionSettings:
    """Build a session's settings from its sessions row."""
    return SessionSettings(
        system_prompt=row["system_prompt"],
        params=GenerationParams(
            model=row["model"],
            max_tokens=row["max_tokens"],
            temperature=row["temperature"],
            stop=None if row["stop"] is None else tuple(row["stop"]),
            tools=None if row["tools"] is None else tuple(row["tools"]),
            context_policy=row["context_policy"],
            context_limit=row["context_limit"],
        ),
        provider=row["provider"],
    )


def session_fold(row: Mapping[Any, Any]) -> ContextFold:
    """Return the context view a sessions row holds."""
    return ContextFold(row["context_from"] or 0, row["context_summary"])


def session_info(row: Mapping[Any, Any]) -> SessionInfo:
    """Build a SessionInfo from a sessions row plus its turn_count and cost_micro_usd."""
    settings = session_settings(row)
    return SessionInfo(
        id=row["session_id"],
        user_id=row["user_id"],
        system_prompt=settings.system_prompt,
        params=settings.params,
        provider=settings.provider,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        turn_count=row["turn_count"],
        fold=session_fold(row),
        cost_micro_usd=int(row["cost_micro_usd"]),
        title=row["title"],
    )


def turn_record(
    row: Mapping[Any, Any],
    session_id: str,
    messages: tuple[Message, ...],
    tokens: tuple[int | None, ...] = (),
) -> TurnRecord:
    """Build a TurnRecord from a turns row and the turn's messages."""
    stop = row["stop_reason"]
    return TurnRecord(
        id=row["id"],
        session_id=session_id,
        seq=row["seq"],
        state=TurnState(row["state"]),
        messages=messages,
        stop_reason=None if stop is None else StopReason.parse(stop),
        usage=Usage(
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            bool(row["usage_estimated"]),
        ),
        model=row["model"],
        provider=row["provider"],
        created_at=row["created_at"],
        latency_ms=row["latency_ms"],
        ttft_ms=row["ttft_ms"],
        error=row["error"],
        tokens=tokens,
        # Not in a row read back from the turn's own insert (its cost is set at its finish).
        cost_micro_usd=row.get("cost_micro_usd"),
    )


def imported_rows(
    session_pk: int, turns: Sequence[TurnRecord], now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the turns and messages rows that recreate these turns in a new session."""
    turn_rows: list[dict[str, Any]] = []
    message_rows: list[dict[str, Any]] = []
    for seq, turn in enumerate(turns, start=1):
        turn_id = uuid4().hex
        # A turn exported mid-flight can never finish now.
        state = TurnState.INTERRUPTED if turn.state is TurnState.STREAMING else turn.state
        final = final_values(
            state,
            turn.stop_reason,
            turn.usage,
            turn.latency_ms,
            turn.ttft_ms,
            turn.error,
            now,
            turn.cost_micro_usd,
        )
        turn_rows.append(
            {
                **final,
                "id": turn_id,
                "session_pk": session_pk,
                "seq": seq,
                "model": turn.model,
                "provider": turn.provider,
                "created_at": turn.created_at,
                "idempotency_key": None,
            }
        )
        for m in turn.messages:
            message_rows.append(message_values(turn_id, session_pk, len(message_rows) + 1, m, now))
    return turn_rows, message_rows
