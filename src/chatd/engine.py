"""ChatService: one turn from the user's text to a stored reply; framework-free."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatd.config import Settings
from chatd.context import ContextPolicy, SlidingWindow, TokenBudget
from chatd.errors import ChatdError, InputError, InputTooLarge, ToolRoundsExceeded
from chatd.ports import DEFAULT_USER, Store
from chatd.providers.base import Provider
from chatd.providers.retry import RetryPolicy, stream_with_retries
from chatd.tools import ToolRegistry
from chatd.types import (
    ChatRequest,
    GenerationParams,
    Message,
    Part,
    Role,
    StopReason,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    ToolResultEvent,
    ToolSpec,
    TurnEnded,
    TurnEvent,
    TurnStarted,
    TurnState,
    Usage,
    UsageEvent,
)

log = logging.getLogger("chatd.engine")

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_KEEP_CONTROLS = {"\n", "\t"}
_STATE_FOR_STOP = {
    StopReason.MAX_TOKENS: TurnState.TRUNCATED,
    StopReason.CONTEXT_WINDOW_EXCEEDED: TurnState.TRUNCATED,
    StopReason.REFUSAL: TurnState.REFUSED,
}


def check_session_id(session_id: str) -> str:
    """Return the id if it is 1–128 characters of [A-Za-z0-9._:-], else raise InputError."""
    if not SESSION_ID.fullmatch(session_id):
        raise InputError(
            "session id must be 1-128 characters of letters, digits and . _ : - "
            f"(got {session_id[:40]!r})"
        )
    return session_id


def clean_message(text: str, max_chars: int) -> str:
    """Strip control characters (but newline and tab) and enforce the length cap."""
    text = text.replace("\r\n", "\n")
    text = "".join(
        c for c in text if c in _KEEP_CONTROLS or unicodedata.category(c) not in ("Cc", "Cs")
    )
    if not text.strip():
        raise InputError("message is empty")
    if len(text) > max_chars:
        raise InputTooLarge(
            f"message is {len(text)} characters; the limit is {max_chars} characters"
        )
    return text


class ProviderSource(Protocol):
    """Where the engine gets providers by name; `ProviderPool` is the real one."""

    def get(self, name: str | None = None) -> Provider:
        """Return the named provider, or the default when name is None."""
        ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's defaults and bounds."""

    defaults: GenerationParams = field(
        default_factory=lambda: GenerationParams(max_tokens=1024, stop=())
    )
    policy: ContextPolicy = field(default_factory=lambda: TokenBudget(16000))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_tool_rounds: int = 8
    tool_timeout_s: float = 30.0
    max_message_chars: int = 32000
    tools: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, s: Settings) -> EngineConfig:
        """Read the engine's knobs from settings."""
        policy: ContextPolicy = (
            SlidingWindow(s.context_max_messages)
            if s.context_policy == "window"
            else TokenBudget(s.context_max_tokens)
        )
        return cls(
            defaults=GenerationParams(
                model=s.model, max_tokens=s.max_tokens, temperature=s.temperature, stop=()
            ),
            policy=policy,
            retry=RetryPolicy(
                s.retry_max_attempts, s.retry_base_delay_s, s.retry_max_delay_s, s.retry_max_total_s
            ),
            max_tool_rounds=s.max_tool_rounds,
            tool_timeout_s=s.tool_timeout_s,
            max_message_chars=s.max_message_chars,
            tools=tuple(s.tools),
        )


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """Who is asking and how; session settings apply where these are None."""

    user_id: str = DEFAULT_USER
    params: GenerationParams = field(default_factory=GenerationParams)
    system_prompt: str | None = None
    provider: str | None = None
    tools: tuple[str, ...] | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class CompletionOptions:
    """A stateless call: the caller brings the whole conversation and its own tools."""

    params: GenerationParams = field(default_factory=GenerationParams)
    system: str | None = None
    provider: str | None = None
    tools: tuple[ToolSpec, ...] = ()


@dataclass
class _Progress:
    """What a turn has produced so far, so a failure can store the partial reply."""

    started: float
    messages: list[Message] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    calls: list[ToolCallPart] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    stop: StopReason | None = None
    ttft: float | None = None

    def flush(self) -> Message | None:
        """Close the assistant message being streamed and keep it."""
        parts: list[Part] = [TextPart("".join(self.text))] if self.text else []
        parts.extend(self.calls)
        self.text, self.calls = [], []
        if not parts:
            return None
        message = Message(Role.ASSISTANT, tuple(parts))
        self.messages.append(message)
        return message

    def ms_since_start(self) -> float:
        """Return milliseconds since the turn started."""
        return (time.monotonic() - self.started) * 1000


class ChatService:
    """Runs turns: load history, call the provider, run tools, store the outcome."""

    def __init__(
        self,
        store: Store,
        providers: ProviderSource,
        config: EngineConfig | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.config = config or EngineConfig()
        self.tools = tools or ToolRegistry()

    async def turn(
        self, session_id: str, text: str, options: TurnOptions | None = None
    ) -> AsyncIterator[TurnEvent]:
        """Run one turn, yielding its events; the last is TurnEnded, after it is stored."""
        opts = options or TurnOptions()
        cfg = self.config
        check_session_id(session_id)
        text = clean_message(text, cfg.max_message_chars)
        session = await self.store.get_session(opts.user_id, session_id)
        # Resolve everything that can be refused before a new session is written.
        provider = self.providers.get(opts.provider or (session.provider if session else None))
        specs = self.tools.specs(cfg.tools if opts.tools is None else opts.tools)
        if session is None:
            session = await self.store.ensure_session(
                opts.user_id, session_id, system_prompt=opts.system_prompt, provider=opts.provider
            )
        params = opts.params.over(session.params).over(cfg.defaults)
        base = ChatRequest(
            model=params.model or provider.default_model,
            messages=(),
            max_tokens=params.max_tokens or 1024,
            system=session.system_prompt,
            temperature=params.temperature,
            stop=params.stop or (),
            tools=specs,
        )
        history = list(await self.store.context_messages(opts.user_id, session_id))
        user_message = Message.user(text)
        record = await self.store.begin_turn(
            opts.user_id, session_id, user_message, model=base.model, provider=provider.name
        )
        yield TurnStarted(session_id, record.id)
        progress = _Progress(started=time.monotonic())
        try:
            async for event in self._rounds(provider, base, [*history, user_message], progress):
                yield event
        except BaseException as exc:
            progress.flush()
            aborted = isinstance(exc, asyncio.CancelledError | GeneratorExit)
            state = TurnState.INTERRUPTED if aborted else TurnState.FAILED
            reason = "the client went away" if aborted else _describe(exc)
            await self._finish(record.id, progress, state, error=reason)
            raise
        stop = progress.stop or StopReason.UNKNOWN
        yield await self._finish(record.id, progress, _STATE_FOR_STOP.get(stop, TurnState.COMPLETE))

    async def _rounds(
        self,
        provider: Provider,
        base: ChatRequest,
        messages: list[Message],
        progress: _Progress,
    ) -> AsyncIterator[TurnEvent]:
        cfg = self.config
        for round_no in range(cfg.max_tool_rounds + 1):
            request = ChatRequest(
                model=base.model,
                messages=tuple(cfg.policy.select(base.system, messages)),
                max_tokens=base.max_tokens,
                system=base.system,
                temperature=base.temperature,
                stop=base.stop,
                tools=base.tools,
            )
            async for event in stream_with_retries(provider, request, cfg.retry):
                if isinstance(event, TextDelta):
                    if progress.ttft is None:
                        progress.ttft = progress.ms_since_start()
                    progress.text.append(event.text)
                elif isinstance(event, ToolCallEvent):
                    progress.calls.append(event.call)
                elif isinstance(event, UsageEvent):
                    progress.usage = progress.usage + event.usage
                else:
                    progress.stop = event.reason
                    continue
                yield event
            assistant = progress.flush()
            if assistant is None or not assistant.tool_calls:
                return
            messages.append(assistant)
            if round_no == cfg.max_tool_rounds:
                raise ToolRoundsExceeded(
                    f"the model asked for more than {cfg.max_tool_rounds} rounds of tool calls"
                )
            results = await asyncio.gather(
                *(self.tools.run(c, cfg.tool_timeout_s) for c in assistant.tool_calls)
            )
            for result in results:
                yield ToolResultEvent(result)
            tool_message = Message(Role.USER, tuple(results))
            progress.messages.append(tool_message)
            messages.append(tool_message)

    async def _finish(
        self, turn_id: str, progress: _Progress, state: TurnState, error: str | None = None
    ) -> TurnEnded:
        stored = await self.store.finish_turn(
            turn_id,
            state=state,
            messages=progress.messages,
            stop_reason=progress.stop,
            usage=progress.usage,
            latency_ms=progress.ms_since_start(),
            ttft_ms=progress.ttft,
            error=error,
        )
        text = "".join(m.text for m in progress.messages if m.role is Role.ASSISTANT)
        return TurnEnded(
            stored.id, state, progress.stop or StopReason.UNKNOWN, progress.usage, text
        )

    async def complete(
        self, messages: Sequence[Message], options: CompletionOptions | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run one model call on the caller's messages; nothing is loaded or stored."""
        opts = options or CompletionOptions()
        if not messages:
            raise InputError("messages must not be empty")
        provider = self.providers.get(opts.provider)
        params = opts.params.over(self.config.defaults)
        request = ChatRequest(
            model=params.model or provider.default_model,
            messages=tuple(messages),
            max_tokens=params.max_tokens or 1024,
            system=opts.system,
            temperature=params.temperature,
            stop=params.stop or (),
            tools=opts.tools,
        )
        async for event in stream_with_retries(provider, request, self.config.retry):
            yield event

    async def reply(
        self, session_id: str, text: str, options: TurnOptions | None = None
    ) -> TurnEnded:
        """Run one turn to the end and return how it ended."""
        async for event in self.turn(session_id, text, options):
            if isinstance(event, TurnEnded):
                return event
        raise ChatdError("the turn ended without a final event")  # unreachable by construction


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ChatdError):
        return exc.message
    log.exception("turn failed unexpectedly", exc_info=exc)
    return f"internal error: {type(exc).__name__}"


def history_text(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """Return (role, text) pairs of the messages that carry text."""
    return [(m.role.value, m.text) for m in messages if m.text]
