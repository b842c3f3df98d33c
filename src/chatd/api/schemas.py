"""Request and response bodies of the compatibility routes and /v1, with OpenAPI examples."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from chatd.bounds import MAX_CONTEXT_LIMIT, MAX_TITLE_CHARS, MAX_TOKENS
from chatd.textcheck import NO_CONTROLS, has_controls
from chatd.types import ContextPolicyName, StopReason, TurnState, UsageGrouping

SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# Printable ASCII without spaces, at most IDEMPOTENCY_KEY_MAX long.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"
IDEMPOTENCY_KEY_MAX = 255
SessionId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=SESSION_ID_PATTERN),
    Field(examples=["support-42"]),
]
# Whole-body caps bound these too; the field caps keep one field from taking all of it.
SystemPrompt = Annotated[str, Field(max_length=100_000, examples=["You are a terse assistant."])]
ModelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=255,
        description='"provider/model", or a bare model name for the default provider',
        examples=["anthropic/claude-sonnet-4-5"],
    ),
]
ProviderName = Annotated[str, Field(min_length=1, max_length=64, examples=["anthropic"])]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
Temperature = Annotated[float, Field(ge=0, le=2)]


def _no_controls(text: str) -> str:
    if has_controls(text):
        raise ValueError(NO_CONTROLS)
    return text


# A session's title: one line of at most MAX_TITLE_CHARS characters once trimmed; "" clears it.
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=MAX_TITLE_CHARS),
    AfterValidator(_no_controls),
    Field(
        description='what the session is called in a list; "" clears it. One line: control '
        "characters are refused",
        examples=["Trip to Lisbon"],
    ),
]
StopList = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=200)]], Field(max_length=8)
]


class Strict(BaseModel):
    """A /v1 request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


# Compatibility surface (docs/http.md): exact field names, unknown fields ignored.


class ServiceStatus(BaseModel):
    """The compatibility root's answer."""

    status: str = Field(examples=["ok"])
    service: str = Field(examples=["chatd"])


class ChatIn(BaseModel):
    """A message for /chat and /chat-stream; a session is created on first use."""

    message: str = Field(examples=["What is the capital of France?"])
    session_id: SessionId | None = Field(
        default=None, description="created on first use; a new id is made up when omitted"
    )
    system_prompt: SystemPrompt | None = None


class MessageIn(BaseModel):
    """A message for POST /chat/{session_id}."""

    message: str = Field(examples=["And of Italy?"])


class ChatOut(BaseModel):
    """The reply of /chat."""

    response: str
    session_id: str
    timestamp: datetime
    turn_count: int = Field(description="completed user→assistant exchanges")


class HistoryMessage(BaseModel):
    """One message of the visible history."""

    role: Literal["user", "assistant"]
    content: str


class HistoryOut(BaseModel):
    """A session's complete exchanges."""

    session_id: str
    messages: list[HistoryMessage]
    turn_count: int


class StatusOut(BaseModel):
    """What DELETE /history did."""

    status: Literal["cleared", "not_found"]
    session_id: str


class ResetOut(BaseModel):
    """What POST /reset did."""

    status: Literal["reset", "not_found"]
    session_id: str
    previous_turns: int = Field(default=0, description="completed exchanges before the reset")


class SessionSummary(BaseModel):
    """One line of GET /sessions."""

    session_id: str
    turns: int
    created_at: datetime


class SessionsOut(BaseModel):
    """Every session of the caller."""

    sessions: list[SessionSummary]


class StatsOut(BaseModel):
    """Totals over the caller's sessions."""

    total_sessions: int
    total_messages: int
    avg_messages_per_session: float


# /v1 (docs/http.md).


class ErrorDetail(BaseModel):
    """What went wrong."""

    type: str = Field(examples=["input_error"])
    message: str = Field(examples=["message is empty"])


class ErrorOut(BaseModel):
    """The one error shape of /v1."""

    error: ErrorDetail


ToolNames = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
    Field(
        max_length=32, description="built-in tools offered to the model", examples=[["calculate"]]
    ),
]


class ContextSettings(Strict):
    """Which part of the history the model sees."""

    policy: ContextPolicyName = Field(
        description="window: at most the newest N messages; tokens: at most N tokens of "
        "history; summary: the newest N messages or more, and a summary of the rest. Past "
        "its limit the view moves forward in one large step (to half of N for window and "
        "tokens), so the provider's prompt cache keeps hitting."
    )
    limit: int | None = Field(
        default=None, ge=1, le=MAX_CONTEXT_LIMIT, description="N; the server's default when omitted"
    )


class SessionUpdate(Strict):
    """Settings a session can be created or updated with (PATCH takes these alone)."""

    title: Title | None = None
    system_prompt: SystemPrompt | None = None
    model: ModelName | None = None
    provider: ProviderName | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    stop: StopList | None = None
    tools: ToolNames | None = None
    context: ContextSettings | None = None


class SessionCreate(SessionUpdate):
    """A new session; the id is made up when omitted."""

    id: SessionId | None = None


class ContextViewOut(BaseModel):
    """What the model sees of the session now: turns from `first_turn` on, and the summary."""

    first_turn: int = Field(description="seq of the oldest turn the model sees verbatim")
    summary: str | None = Field(
        description="what the model is told of the turns before first_turn (none: dropped)"
    )


class SessionOut(BaseModel):
    """A session and its settings."""

    id: str
    title: str | None = Field(
        description="set by its user, else the first line of its first message (null: none yet)"
    )
    system_prompt: str | None
    model: str | None
    provider: str | None
    max_tokens: int | None
    temperature: float | None
    stop: list[str] | None
    tools: list[str] | None
    context: ContextSettings | None
    view: ContextViewOut
    turn_count: int = Field(description="completed user→assistant exchanges")
    cost_usd: float = Field(
        description="what its turns cost, every state, at the price table's rates (USD); "
        "turns of a model with no price count 0"
    )
    created_at: datetime
    updated_at: datetime


class SessionPage(BaseModel):
    """One page of sessions; pass next_cursor as `cursor` for the next."""

    data: list[SessionOut]
    next_cursor: str | None


class UsageOut(BaseModel):
    """Token counts."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = Field(
        default=False,
        description="chatd's estimate (from what was sent and received) stands in for usage "
        "the provider never reported, for at least one model call",
    )


class TextPartOut(BaseModel):
    """Text."""

    type: Literal["text"] = "text"
    text: str


class ToolCallOut(BaseModel):
    """A tool call the model made."""

    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    input: dict[str, Any]


class ToolResultOut(BaseModel):
    """What a tool returned."""

    type: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    content: str
    is_error: bool = False


PartOut = Annotated[TextPartOut | ToolCallOut | ToolResultOut, Field(discriminator="type")]


class MessageOut(BaseModel):
    """One stored message: its text and every part."""

    role: Literal["user", "assistant"]
    content: str = Field(description="the text parts joined")
    parts: list[PartOut]
    tokens: int | None = Field(
        default=None, description="what the message adds to a prompt, as its provider counted"
    )


class TurnOut(BaseModel):
    """One turn: the user's message, what came back, and how it ended."""

    id: str
    seq: int
    state: TurnState
    stop_reason: StopReason | None
    truncated: bool
    model: str | None
    provider: str | None
    usage: UsageOut
    created_at: datetime
    latency_ms: float | None
    ttft_ms: float | None
    error: str | None
    cost_usd: float | None = Field(
        description="what its usage cost at the price table's rates (USD); null when its "
        "model has no price, or it finished before chatd kept costs"
    )
    in_view: bool = Field(
        description="the model sees this turn verbatim now (complete or truncated, and not "
        "dropped or summarised by the session's context policy)"
    )
    messages: list[MessageOut]


class TurnPage(BaseModel):
    """One page of turns; pass next_cursor as `cursor` for the next."""

    data: list[TurnOut]
    next_cursor: str | None


class SendIn(Strict):
    """A user message; the reply comes as JSON, or as SSE with stream (or Accept)."""

    content: str = Field(examples=["Summarise our conversation so far."])
    stream: bool = False
    model: ModelName | None = None
    provider: ProviderName | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    stop: StopList | None = None
    tools: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(
        default=None, max_length=32, description="built-in tools to offer; the server's by default"
    )


class ContinueIn(Strict):
    """How to continue a reply cut short; the rest comes as JSON, or as SSE with stream."""

    stream: bool = False
    max_tokens: MaxTokens | None = Field(
        default=None,
        description="most output tokens for the continuation; the session's by default",
    )
    temperature: Temperature | None = None


class RegenerateIn(Strict):
    """How to ask again for the last reply; the new one comes as JSON, or as SSE with stream."""

    stream: bool = False
    model: ModelName | None = Field(
        default=None, description="the model to ask this time; the session's by default"
    )
    max_tokens: MaxTokens | None = Field(
        default=None, description="most output tokens for the new reply; the session's by default"
    )
    temperature: Temperature | None = None


class ReplyOut(BaseModel):
    """How a turn ended."""

    session_id: str
    turn_id: str
    state: TurnState
    stop_reason: StopReason
    truncated: bool
    text: str
    usage: UsageOut
    cost_usd: float | None = Field(
        default=None,
        description="what the turn's usage cost at the price table's rates (USD); null when "
        "its model has no price",
    )
    tool_calls: list[ToolCallOut]


class ResetV1Out(BaseModel):
    """What a reset removed."""

    session_id: str
    previous_turns: int = Field(description="completed exchanges before the reset")


class StopOut(BaseModel):
    """A turn stopped on request, its end stored: the session takes the next send at once."""

    session_id: str
    turn_id: str
    state: Literal["interrupted", "truncated"] = Field(
        description="how the turn is stored: interrupted, with what it said so far (outside "
        "the model's context); a stopped continuation leaves its reply truncated, as it was",
        examples=["interrupted"],
    )


class UsageTotalsOut(UsageOut):
    """Usage summed: the tokens, and how many turns they were spent in."""

    turns: int = Field(
        description="turns, every state (those of deleted and reset sessions included)"
    )


class UsageGroupOut(UsageTotalsOut):
    """One group of a usage report."""

    key: str | None = Field(
        description="the UTC day (YYYY-MM-DD), provider/model, session id or user, as `by` "
        "says; null for calls outside any session (by session)",
        examples=["2026-12-01"],
    )
    completions: int = Field(description="stateless /v1/chat/completions calls")
    cost_usd: float = Field(description="at the price table's rates")
    unpriced: int = Field(
        description="turns and calls whose model has no price: in the tokens, at 0 in the cost"
    )


class UsageReportOut(UsageTotalsOut):
    """Usage and cost over a time range: the totals, and the same per group."""

    completions: int = Field(description="stateless /v1/chat/completions calls")
    cost_usd: float = Field(description="at the price table's rates")
    unpriced: int = Field(
        description="turns and calls whose model has no price: in the tokens, at 0 in the cost"
    )
    user: str | None = Field(description="whose usage; null: every user's (by=user)")
    since: datetime
    until: datetime | None = Field(description="null: up to now")
    by: UsageGrouping
    data: list[UsageGroupOut]


class ReadyOut(BaseModel):
    """Readiness and what was checked."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


class HealthOut(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"
