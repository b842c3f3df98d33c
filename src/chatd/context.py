"""Context policies (which history the model sees) and token estimates."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from chatd.types import (
    ChatRequest,
    Message,
    Role,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    Usage,
    UsageEvent,
)

# Framing each message costs a few tokens on every provider.
MESSAGE_OVERHEAD = 4


def estimate_text_tokens(text: str) -> int:
    """Estimate tokens in text: about four characters a token."""
    return (len(text) + 3) // 4


def estimate_message_tokens(message: Message) -> int:
    """Estimate the tokens a message costs in a request."""
    total = MESSAGE_OVERHEAD
    for part in message.parts:
        if isinstance(part, TextPart):
            total += estimate_text_tokens(part.text)
        elif isinstance(part, ToolCallPart):
            total += estimate_text_tokens(part.name + json.dumps(dict(part.input)))
        else:
            total += estimate_text_tokens(part.content)
    return total


def estimate_request_tokens(request: ChatRequest) -> int:
    """Estimate the input tokens of a whole request."""
    system = estimate_text_tokens(request.system) if request.system else 0
    return system + sum(estimate_message_tokens(m) for m in request.messages)


def estimate_usage(request: ChatRequest, output_chars: int) -> Usage:
    """Estimate a call's usage, marked so: its request (tools too) in, output_chars out."""
    tools = sum(
        estimate_text_tokens(t.name + t.description + json.dumps(dict(t.input_schema)))
        for t in request.tools
    )
    return Usage(
        input_tokens=estimate_request_tokens(request) + tools,
        output_tokens=(output_chars + 3) // 4,
        estimated=True,
    )


@dataclass
class CallUsage:
    """One upstream call's usage: what its provider reported, else an estimate of it."""

    request: ChatRequest
    reported: Usage | None = None
    output_chars: int = 0

    def see(self, event: StreamEvent) -> None:
        """Count what one of the call's events tells of its usage."""
        if isinstance(event, TextDelta):
            self.output_chars += len(event.text)
        elif isinstance(event, ToolCallEvent):
            self.output_chars += len(event.call.name) + len(json.dumps(dict(event.call.input)))
        elif isinstance(event, UsageEvent):
            self.reported = event.usage if self.reported is None else self.reported + event.usage

    def total(self, *, worked: bool) -> Usage:
        """Return the reported usage, else an estimate if output came or the upstream worked."""
        # `worked`: the call ran to its end or chatd stopped it, so the upstream read the
        # request; one that failed before any output is not charged, as providers bill none.
        if self.reported is not None:
            return self.reported
        if self.output_chars or worked:
            return estimate_usage(self.request, self.output_chars)
        return Usage()


def is_turn_start(message: Message) -> bool:
    """Tell whether a window may start at this message: a user message carrying no tool result."""
    return message.role is Role.USER and not message.tool_results


class ContextPolicy(Protocol):
    """Chooses the suffix of the history sent to the model."""

    def select(self, system: str | None, messages: Sequence[Message]) -> Sequence[Message]:
        """Return the messages to send; the last user message is always kept."""
        ...

    def history_cut(self) -> Callable[[Message], bool]:
        """Return a check fed the history newest first: True once no older message can be kept.

        `select` over the history read up to that point (and newer messages after it) gives
        the same result as over the whole history, so older messages need not be loaded.
        """
        ...


def _cut_points(messages: Sequence[Message]) -> list[int]:
    return [i for i, m in enumerate(messages) if is_turn_start(m)]


def _fallback(messages: Sequence[Message], cuts: list[int]) -> Sequence[Message]:
    return messages[cuts[-1] :] if cuts else messages


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    """Keep at most the last `max_messages` messages, cut at a turn boundary."""

    max_messages: int

    def select(self, system: str | None, messages: Sequence[Message]) -> Sequence[Message]:
        """Return the newest whole turns that fit in the window."""
        cuts = _cut_points(messages)
        for i in cuts:
            if len(messages) - i <= self.max_messages:
                return messages[i:]
        return _fallback(messages, cuts)

    def history_cut(self) -> Callable[[Message], bool]:
        """Stop once a window's worth of messages is read."""
        count = 0

        def enough(_: Message) -> bool:
            nonlocal count
            count += 1
            return count >= self.max_messages

        return enough


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """Keep the newest whole turns whose estimated tokens, with the system prompt, fit."""

    max_tokens: int

    def select(self, system: str | None, messages: Sequence[Message]) -> Sequence[Message]:
        """Return the newest whole turns that fit in the budget."""
        budget = self.max_tokens - (estimate_text_tokens(system) if system else 0)
        cuts = set(_cut_points(messages))
        best: int | None = None
        used = 0
        for i in range(len(messages) - 1, -1, -1):
            used += estimate_message_tokens(messages[i])
            if used > budget:
                break
            if i in cuts:
                best = i
        if best is None:
            return _fallback(messages, sorted(cuts))
        return messages[best:]

    def history_cut(self) -> Callable[[Message], bool]:
        """Stop once the messages read are over the budget on their own."""
        used = 0

        def enough(message: Message) -> bool:
            nonlocal used
            used += estimate_message_tokens(message)
            return used > self.max_tokens

        return enough


DEFAULT_WINDOW_MESSAGES = 50
DEFAULT_BUDGET_TOKENS = 16000


def policy_for(kind: str | None, limit: int | None, fallback: ContextPolicy) -> ContextPolicy:
    """Return the policy a session asks for, or the server's when it asks for none."""
    if kind == "window":
        return SlidingWindow(limit or DEFAULT_WINDOW_MESSAGES)
    if kind == "tokens":
        return TokenBudget(limit or DEFAULT_BUDGET_TOKENS)
    return fallback
