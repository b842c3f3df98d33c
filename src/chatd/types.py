"""Pure value types shared by every layer: messages, parts, requests, stream events, usage."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal


class Role(StrEnum):
    """Who wrote a message; the system prompt is a session attribute, not a message."""

    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class TextPart:
    """Plain text."""

    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A request from the model to run a tool."""

    id: str
    name: str
    input: Mapping[str, Any]
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class ToolResultPart:
    """The outcome of a tool call, fed back to the model."""

    tool_call_id: str
    content: str
    is_error: bool = False
    type: Literal["tool_result"] = "tool_result"


Part = TextPart | ToolCallPart | ToolResultPart


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation."""

    role: Role
    parts: tuple[Part, ...]

    @classmethod
    def user(cls, text: str) -> Message:
        """Build a user text message."""
        return cls(Role.USER, (TextPart(text),))

    @classmethod
    def assistant(cls, text: str) -> Message:
        """Build an assistant text message."""
        return cls(Role.ASSISTANT, (TextPart(text),))

    @property
    def text(self) -> str:
        """Return the concatenated text parts."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def tool_calls(self) -> tuple[ToolCallPart, ...]:
        """Return the tool calls this message makes."""
        return tuple(p for p in self.parts if isinstance(p, ToolCallPart))

    @property
    def tool_results(self) -> tuple[ToolResultPart, ...]:
        """Return the tool results this message carries."""
        return tuple(p for p in self.parts if isinstance(p, ToolResultPart))


class StopReason(StrEnum):
    """Why the model stopped; values a provider may add later map to UNKNOWN."""

    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    TOOL_USE = "tool_use"
    REFUSAL = "refusal"
    PAUSE_TURN = "pause_turn"
    CONTEXT_WINDOW_EXCEEDED = "context_window_exceeded"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: str | None) -> StopReason:
        """Map a provider's raw value, never raising on one we do not know."""
        if value is None:
            return cls.UNKNOWN
        if value == "model_context_window_exceeded":
            return cls.CONTEXT_WINDOW_EXCEEDED
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class TurnState(StrEnum):
    """Where a turn is; every turn ends in exactly one of the final states."""

    STREAMING = "streaming"
    COMPLETE = "complete"
    TRUNCATED = "truncated"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"
    FAILED = "failed"

    @property
    def in_context(self) -> bool:
        """Tell whether a turn in this state is part of what the model sees."""
        return self in (TurnState.COMPLETE, TurnState.TRUNCATED)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported for one or more calls, or estimated where none was reported."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # True when any call's counts are chatd's estimate: its provider's usage never arrived.
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as offered to the model: name, description, JSON schema of its input."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


# How a session's history is fitted to the model: the newest messages (`window`), the newest
# that fit a token budget (`tokens`), or the newest with a summary of the rest (`summary`).
ContextPolicyName = Literal["window", "tokens", "summary"]


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Per-session or per-request knobs; None means use the next default down."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] | None = None
    tools: tuple[str, ...] | None = None
    context_policy: ContextPolicyName | None = None
    context_limit: int | None = None

    def over(self, base: GenerationParams) -> GenerationParams:
        """Return these params with unset fields taken from base."""
        unset = {
            f.name: getattr(base, f.name) for f in fields(self) if getattr(self, f.name) is None
        }
        return replace(self, **unset)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything a provider needs for one model call."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    system: str | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    # What the model is told of the turns folded out of `messages`: sent right after `system`,
    # as a block (Anthropic) or a message (OpenAI) of its own, so the system prompt's cached
    # prefix outlives a new summary.
    summary: str | None = None
    # The last message is the assistant's reply cut short (max_tokens), to be continued where
    # it stopped: Anthropic continues a final assistant message as a prefill; providers with
    # no prefill (OpenAI-compatible) send a transient user message asking for the rest.
    continuation: bool = False


# Provider stream events, normalized across providers.


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A chunk of reply text, passed on as it arrives."""

    text: str
    kind: Literal["delta"] = "delta"


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """A complete tool call from the model."""

    call: ToolCallPart
    kind: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """Token usage of one model call."""

    usage: Usage
    kind: Literal["usage"] = "usage"


@dataclass(frozen=True, slots=True)
class StopEvent:
    """The model call ended; always the last event of a provider stream."""

    reason: StopReason
    kind: Literal["stop"] = "stop"


StreamEvent = TextDelta | ToolCallEvent | UsageEvent | StopEvent


# Engine events: the provider events plus the turn's start, tool results and its end.


@dataclass(frozen=True, slots=True)
class TurnStarted:
    """The user's message is stored; the reply is about to stream."""

    session_id: str
    turn_id: str
    kind: Literal["message_start"] = "message_start"


@dataclass(frozen=True, slots=True)
class ToolResultEvent:
    """A tool ran and this is what goes back to the model."""

    result: ToolResultPart
    kind: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The turn is stored in its final state; always the last engine event."""

    turn_id: str
    state: TurnState
    stop_reason: StopReason
    usage: Usage
    text: str
    kind: Literal["message_end"] = "message_end"
    # What the turn's usage cost, in micro-dollars (None: no price known for its model).
    cost_micro_usd: int | None = None

    @property
    def truncated(self) -> bool:
        """Tell whether the reply was cut short (max_tokens or the context window)."""
        return self.state is TurnState.TRUNCATED


@dataclass(frozen=True, slots=True)
class ContextChanged:
    """What the model sees changed before this call: older turns were dropped or summarised."""

    # Why: the policy's limit was reached, or the provider said the prompt was too long.
    reason: Literal["limit", "overflow"]
    # Messages the model no longer sees verbatim (dropped, or folded into the summary).
    dropped_messages: int
    # Messages it still sees verbatim, this turn's included.
    kept_messages: int
    # Whether a new summary of everything dropped so far now stands in for it.
    summarized: bool
    # The turn seq the view now starts at: earlier turns are out of view (or summarised).
    first_turn: int
    kind: Literal["context"] = "context"


TurnEvent = (
    TurnStarted
    | ContextChanged
    | TextDelta
    | ToolCallEvent
    | ToolResultEvent
    | UsageEvent
    | TurnEnded
)


# Stored records, as the store hands them out.


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a session is set up with: the settings its turns start from."""

    system_prompt: str | None = None
    params: GenerationParams = GenerationParams()
    provider: str | None = None


# How a session list is ordered: by creation, oldest first (then id), or most recently active
# first (updated_at, which moves at every turn's start and finish and every update; then id,
# both descending).
SessionOrder = Literal["created", "recent"]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A conversation's settings and size."""

    id: str
    user_id: str
    system_prompt: str | None
    params: GenerationParams
    provider: str | None
    created_at: datetime
    updated_at: datetime
    turn_count: int = 0
    # Where the model's view of the conversation starts, and the summary before it.
    fold: ContextFold = field(default_factory=lambda: ContextFold())
    # What its turns cost, in micro-dollars (turns of a model with no price count 0).
    cost_micro_usd: int = 0
    # What it is called in a list: set by its user, or taken from its first message.
    title: str | None = None

    @property
    def settings(self) -> SessionSettings:
        """Return what the session is set up with."""
        return SessionSettings(self.system_prompt, self.params, self.provider)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One stored turn: the user's message, what came back, and how it ended."""

    id: str
    session_id: str
    seq: int
    state: TurnState
    messages: tuple[Message, ...]
    stop_reason: StopReason | None
    usage: Usage
    model: str | None
    provider: str | None
    created_at: datetime
    latency_ms: float | None = None
    ttft_ms: float | None = None
    error: str | None = None
    # The tokens each message adds to a prompt, as its provider counted (None: not known);
    # empty when not read (so not part of a turn's equality).
    tokens: tuple[int | None, ...] = field(default=(), compare=False)
    # What its usage cost at the price table's rates, in micro-dollars (None: no price known).
    cost_micro_usd: int | None = None


@dataclass(frozen=True, slots=True)
class TurnStart:
    """A turn just begun (or an earlier one replayed), and the history in context before it."""

    record: TurnRecord
    history: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True)
class ContextFold:
    """Where a session's context view starts, and what stands in for the turns before it."""

    # Turns with a lower seq are out of the model's view.
    first_turn: int = 0
    # A summary of them written by a model, or None: they are dropped.
    summary: str | None = None


@dataclass(frozen=True, slots=True)
class FoldRecord:
    """A change of a session's context view, stored with the turn it was made for."""

    fold: ContextFold
    reason: Literal["limit", "overflow"]
    dropped_messages: int
    # The model that wrote the summary, when a new one was written.
    model: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    """A session's history in the model's view, oldest first, with what is known of its size."""

    messages: tuple[Message, ...] = ()
    # The seq of each message's turn.
    turns: tuple[int, ...] = ()
    # The tokens each message adds to a prompt, as its provider counted (None: not known).
    tokens: tuple[int | None, ...] = ()
    # The context's size after the newest turn, as its provider counted (None: not known).
    context_tokens: int | None = None
    fold: ContextFold = ContextFold()


@dataclass(frozen=True, slots=True)
class TurnTokens:
    """What a turn learned of its messages' sizes, from its calls' reported usage."""

    # The turn's user message.
    user: int | None = None
    # Each reply message, in order (None: not known).
    reply: tuple[int | None, ...] = ()
    # The context's size after the turn: its last call's prompt and output.
    context: int | None = None


@dataclass(frozen=True, slots=True)
class CallReport:
    """What one finished turn or stateless call did, for logs and metrics; text only if asked."""

    kind: Literal["turn", "continuation", "completion"]
    user_id: str
    provider: str
    model: str
    # A TurnState value, or "discarded" (its session went while it ran); a completion's is
    # "complete", "truncated", "refused", "interrupted" (the caller left) or "failed".
    state: str
    usage: Usage
    # What the usage costs at the price table's rates; None when the model has no price.
    cost_usd: float | None
    latency_ms: float
    ttft_ms: float | None
    # Upstream attempts retried, and the class of every upstream error met (retried or not).
    retries: int = 0
    upstream_errors: tuple[str, ...] = ()
    session_id: str | None = None
    turn_id: str | None = None
    # How often the context view moved, and whether a summary was written.
    context_moves: int = 0
    summarized: bool = False
    tool_rounds: int = 0
    request_id: str | None = None
    # The class of the error that ended it, if one did.
    error: str | None = None
    # The user's message (None for a continuation) and the reply's text: only when the engine
    # is told to keep them (EngineConfig.log_content), else None.
    prompt: str | None = None
    reply: str | None = None


# Told every CallReport as its turn or call ends; must be quick and must not raise.
ReportSink = Callable[[CallReport], None]


# How a usage report is grouped: by UTC day, by provider and model, by session, by user.
UsageGrouping = Literal["day", "model", "session", "user"]


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which usage to report: a time range, one user (None: every user), and the grouping."""

    since: datetime
    # None: up to now.
    until: datetime | None = None
    user_id: str | None = None
    by: UsageGrouping = "day"


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One group of a usage report: what its calls used and cost."""

    # The day (YYYY-MM-DD, UTC), "provider/model", session id or user; None for calls made
    # outside any session (by session), or for a report's total.
    key: str | None
    usage: Usage = Usage()
    # Turns (stored, or moved to the usage records when their session went) and stateless calls.
    turns: int = 0
    completions: int = 0
    cost_micro_usd: int = 0
    # Turns and calls whose model has no price: counted in the tokens, at 0 in the cost.
    unpriced: int = 0
    # Whose session it is, when grouped by session (ids are unique per user only).
    user_id: str | None = None

    def __add__(self, other: UsageLine) -> UsageLine:
        return UsageLine(
            self.key if self.key == other.key else None,
            self.usage + other.usage,
            self.turns + other.turns,
            self.completions + other.completions,
            self.cost_micro_usd + other.cost_micro_usd,
            self.unpriced + other.unpriced,
            self.user_id if self.user_id == other.user_id else None,
        )

    @staticmethod
    def total(lines: Sequence[UsageLine]) -> UsageLine:
        """Return the sum of a report's lines, keyed None."""
        return sum(lines, UsageLine(None))


# The user every session belongs to when auth is off.
DEFAULT_USER = "local"

# Fed a session's history newest first; True once no older message could reach the model.
HistoryCut = Callable[[Message], bool]


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What a new turn is stored with, and how far back its history is read."""

    model: str
    provider: str
    history_until: HistoryCut | None = None


# Decides a turn's plan from its session's settings (what the engine does between a turn's
# open and its commit); what it raises refuses the turn with nothing stored.
Planner = Callable[[SessionSettings], TurnPlan]
