"""TurnView: one turn's view of its session, moved by the policy or a provider's refusal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from chatd.engine.context import ContextPolicy, ViewPlan, is_turn_start, plan_view
from chatd.engine.meter import TokenMeter, derive_tokens
from chatd.engine.summarize import SummaryConfig
from chatd.errors import ContextOverflow
from chatd.providers.base import token_count
from chatd.tokens import CallUsage, estimate_fixed_tokens, estimate_message_tokens
from chatd.types import (
    ChatRequest,
    ContextChanged,
    ContextFold,
    FoldRecord,
    History,
    Message,
    TurnTokens,
)


@dataclass
class TurnView:
    """Where the turn's prompt starts in its messages, the summary before it, and its sizes."""

    policy: ContextPolicy
    meter: TokenMeter
    history: History
    summaries: SummaryConfig = field(default_factory=SummaryConfig)
    # Index in the turn's messages (history, then this turn's) of the first one sent.
    start: int = 0
    summary: str | None = None
    # The view's change to store with the turn, if it changed.
    fold: FoldRecord | None = None
    # Each finished model call's prompt and output tokens as reported (None: not reported).
    prompts: list[int | None] = field(default_factory=list)
    outputs: list[int | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.summary = self.history.fold.summary

    def _sizes(self, provider: str, model: str, messages: Sequence[Message]) -> list[int]:
        return self.meter.sizes(provider, model, self.history.tokens, messages)

    def _fixed(self, provider: str, base: ChatRequest) -> int:
        request = replace(base, summary=self.summary)
        return self.meter.estimate(provider, base.model, estimate_fixed_tokens(request))

    def plan(self, provider: str, base: ChatRequest, messages: Sequence[Message]) -> ViewPlan:
        """Return where the policy moves the view to (0: it stays), and whether it summarises."""
        budget = self.meter.budget(provider, base.model, base.max_tokens)
        if self._stays(provider, base.model, messages, budget):
            return ViewPlan(0)
        sizes = self._sizes(provider, base.model, messages)
        return plan_view(self.policy, messages, sizes, self._fixed(provider, base), budget)

    def _stays(
        self, provider: str, model: str, messages: Sequence[Message], budget: int | None
    ) -> bool:
        # Most turns: without sizing every message, the view is known to stay where it is.
        policy = self.policy
        if policy.counts_tokens or policy.over(len(messages), 0):
            return False
        if not is_turn_start(messages[0]):
            return False
        if budget is None:
            return True
        before = self.history.context_tokens
        if before is None:
            return False
        new = self.meter.estimate(provider, model, estimate_message_tokens(messages[-1]))
        return before + new <= budget

    def fits(self, provider: str, base: ChatRequest, messages: Sequence[Message]) -> bool:
        """Tell whether a prompt of these messages fits the model's window, as far as known."""
        budget = self.meter.budget(provider, base.model, base.max_tokens)
        if budget is None:
            return True
        sizes = self._sizes(provider, base.model, messages)
        return self._fixed(provider, base) + sum(sizes) <= budget

    def to_fold(self, provider: str, base: ChatRequest, messages: Sequence[Message]) -> int:
        """Return how many of messages (oldest first) a summary call can take in: it must fit."""
        budget = self.meter.budget(provider, base.model, base.max_tokens)
        if budget is None:
            return 0
        sizes = self._sizes(provider, base.model, messages)
        room, total = budget - self._fixed(provider, base), sum(sizes)
        skip = 0
        for size in sizes:
            if total <= room:
                break
            total -= size
            skip += 1
        # Start the summary's messages at a turn, as any prompt.
        while skip < len(messages) and not is_turn_start(messages[skip]):
            skip += 1
        return skip

    def shrink(
        self, provider: str, base: ChatRequest, messages: Sequence[Message], exc: ContextOverflow
    ) -> int | None:
        """Learn from the provider's refusal and return where the view moves to (None: nowhere)."""
        sent = replace(base, messages=tuple(messages[self.start :]), summary=self.summary)
        if exc.limit is not None:
            self.meter.learn_window(provider, base.model, exc.limit)
        if exc.prompt_tokens is not None:
            self.meter.observe(provider, base.model, sent, exc.prompt_tokens)
        sizes = self._sizes(provider, base.model, messages)[self.start :]
        fixed = self._fixed(provider, base)
        budget = self.meter.budget(provider, base.model, base.max_tokens)
        if budget is None:
            # No window known: half of what was refused.
            budget = (fixed + sum(sizes)) // 2
        moved = plan_view(self.policy, messages[self.start :], sizes, fixed, budget).start
        return None if moved == 0 else self.start + moved

    def move(
        self,
        start: int,
        first_turn: int,
        reason: Literal["limit", "overflow"],
        summary: str | None,
        model: str | None,
        total: int,
    ) -> ContextChanged:
        """Move the view to `start` (`first_turn`); return the event that says so."""
        dropped = start - self.start
        summarized = summary is not None and summary != self.summary
        self.start, self.summary = start, summary
        self.fold = FoldRecord(ContextFold(first_turn, summary), reason, dropped, model)
        return ContextChanged(reason, dropped, total - start, summarized, first_turn)

    def first_turn(self, start: int) -> int | None:
        """Return the seq of the turn the message at `start` belongs to (None: this turn's)."""
        turns = self.history.turns
        return turns[start] if start < len(turns) else None

    def tally(self, provider: str, call: CallUsage) -> None:
        """Keep a finished call's reported sizes, and calibrate estimates by them."""
        usage = call.reported
        if usage is None or usage.estimated:
            self.prompts.append(None)
            self.outputs.append(None)
            return
        prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        self.prompts.append(prompt)
        self.outputs.append(usage.output_tokens)
        self.meter.observe(provider, call.request.model, call.request, prompt)

    def tokens(self) -> TurnTokens:
        """Return the sizes the turn's calls showed for its messages."""
        # The growth from the last turn's context is this turn's message only if the view
        # stayed where it was.
        before = self.history.context_tokens if self.fold is None else None
        user, reply, context = derive_tokens(self.prompts, self.outputs, before)
        return TurnTokens(_stored(user), tuple(_stored(n) for n in reply), _stored(context))


def _stored(tokens: int | None) -> int | None:
    # Stored as 32-bit integers, as any count an upstream reports.
    return None if tokens is None else token_count(tokens)
