"""Context policies: which suffix of a session's history the model sees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from chatd.tokens import estimate_message_tokens, estimate_text_tokens
from chatd.types import Message, Role


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
