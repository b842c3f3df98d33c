"""The portable session document: lossless export, validated import, and restoring one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatd.bounds import (
    MAX_CONTEXT_LIMIT,
    MAX_LATENCY_MS,
    MAX_TITLE_CHARS,
    MAX_TOKENS,
    MAX_TURN_TOKENS,
)
from chatd.engine.ports import SessionWriter
from chatd.errors import InputError
from chatd.store.codec import message_from_dict, message_to_dict
from chatd.textcheck import NO_CONTROLS, NOT_UNICODE, has_controls, unencodable_at
from chatd.textcheck import where as place
from chatd.types import (
    GenerationParams,
    Role,
    SessionInfo,
    StopReason,
    TurnRecord,
    TurnState,
    Usage,
)

FORMAT = "chatd.session/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Usage(_Strict):
    input_tokens: int = Field(default=0, ge=0, le=MAX_TURN_TOKENS)
    output_tokens: int = Field(default=0, ge=0, le=MAX_TURN_TOKENS)
    cache_read_tokens: int = Field(default=0, ge=0, le=MAX_TURN_TOKENS)
    cache_write_tokens: int = Field(default=0, ge=0, le=MAX_TURN_TOKENS)
    # Absent in documents from before chatd estimated usage: those counts were reported.
    estimated: bool = False


class _Params(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: list[str] | None = None
    tools: list[str] | None = None
    context_policy: Literal["window", "tokens"] | None = None
    context_limit: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_LIMIT)


class _Turn(_Strict):
    state: TurnState
    stop_reason: str | None = None
    model: str | None = None
    provider: str | None = None
    usage: _Usage = Field(default_factory=lambda: _Usage())
    latency_ms: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    ttft_ms: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    error: str | None = None
    created_at: AwareDatetime | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # An offset can carry a date past year 1 or 9999 once it is stored in UTC.
        try:
            return None if value is None else value.astimezone(UTC)
        except OverflowError:
            raise ValueError("date out of range once in UTC") from None


class _Doc(_Strict):
    format: Literal["chatd.session/1"]
    session_id: str
    # Absent in documents from before sessions had titles.
    title: str | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    system_prompt: str | None = None
    provider: str | None = None
    params: _Params = Field(default_factory=lambda: _Params())
    turns: list[_Turn] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SessionExport:
    """A whole session as values, ready to import."""

    session_id: str
    system_prompt: str | None
    provider: str | None
    params: GenerationParams
    turns: tuple[TurnRecord, ...]
    title: str | None = None


def export_doc(info: SessionInfo, turns: Sequence[TurnRecord]) -> dict[str, Any]:
    """Return the JSON-ready document of a session and all its turns."""
    p = info.params
    return {
        "format": FORMAT,
        "session_id": info.id,
        "title": info.title,
        "system_prompt": info.system_prompt,
        "provider": info.provider,
        "params": {
            "model": p.model,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "stop": None if p.stop is None else list(p.stop),
            "tools": None if p.tools is None else list(p.tools),
            "context_policy": p.context_policy,
            "context_limit": p.context_limit,
        },
        "turns": [
            {
                "state": t.state.value,
                "stop_reason": t.stop_reason.value if t.stop_reason else None,
                "model": t.model,
                "provider": t.provider,
                "usage": {
                    "input_tokens": t.usage.input_tokens,
                    "output_tokens": t.usage.output_tokens,
                    "cache_read_tokens": t.usage.cache_read_tokens,
                    "cache_write_tokens": t.usage.cache_write_tokens,
                    "estimated": t.usage.estimated,
                },
                "latency_ms": t.latency_ms,
                "ttft_ms": t.ttft_ms,
                "error": t.error,
                "created_at": t.created_at.isoformat(),
                "messages": [message_to_dict(m) for m in t.messages],
            }
            for t in turns
        ],
    }


def parse_doc(data: Any) -> SessionExport:
    """Validate a session document; InputError naming the first problem if it is malformed."""
    found = unencodable_at(data)
    if found is not None:
        raise InputError(f"not a valid chatd session file: {place(found)}: {NOT_UNICODE}")
    try:
        doc = _Doc.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "document"
        raise InputError(f"not a valid chatd session file: {where}: {first['msg']}") from None
    turns = []
    for n, t in enumerate(doc.turns, start=1):
        messages = tuple(message_from_dict(m) for m in t.messages)
        if messages[0].role is not Role.USER:
            raise InputError(
                f"not a valid chatd session file: turn {n} must start with a user message"
            )
        turns.append(
            TurnRecord(
                id="",
                session_id=doc.session_id,
                seq=n,
                state=t.state,
                messages=messages,
                stop_reason=StopReason.parse(t.stop_reason) if t.stop_reason else None,
                usage=Usage(**t.usage.model_dump()),
                model=t.model,
                provider=t.provider,
                created_at=t.created_at or datetime.now(UTC),
                latency_ms=t.latency_ms,
                ttft_ms=t.ttft_ms,
                error=t.error,
            )
        )
    p = doc.params
    params = GenerationParams(
        model=p.model,
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        stop=None if p.stop is None else tuple(p.stop),
        tools=None if p.tools is None else tuple(p.tools),
        context_policy=p.context_policy,
        context_limit=p.context_limit,
    )
    # Trimmed and checked as the API's title is.
    title = None if doc.title is None else doc.title.strip()
    if title is not None and has_controls(title):
        raise InputError(f"not a valid chatd session file: title: {NO_CONTROLS}")
    return SessionExport(
        doc.session_id, doc.system_prompt, doc.provider, params, tuple(turns), title or None
    )


async def restore(
    store: SessionWriter, user_id: str, saved: SessionExport, session_id: str | None = None
) -> SessionInfo:
    """Create the saved session (under session_id if given); AlreadyExists if it is taken."""
    return await store.import_session(
        user_id,
        session_id or saved.session_id,
        system_prompt=saved.system_prompt,
        params=saved.params,
        provider=saved.provider,
        turns=saved.turns,
        title=saved.title,
    )
