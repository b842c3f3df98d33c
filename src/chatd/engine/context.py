"""Context policies: where the model's view of a session starts, moved in large steps.

A session's view is its turns from a first turn on (the fold), plus the summary of the turns
before it when the `summary` policy wrote one. The view stays put while it is within the
policy's limit, so the prompt's prefix is byte-stable and the provider's prompt cache keeps
hitting; once past the limit it moves forward in one large step (to half the limit, or to the
last `keep` messages), never by one message a turn. A view always starts at a turn's user
message, so it never opens on an assistant message or splits a tool call from its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chatd.tokens import estimate_message_tokens
from chatd.types import HistoryCut, Message, Role


def is_turn_start(message: Message) -> bool:
    """Tell whether a view may start at this message: a user message carrying no tool result."""
    return message.role is Role.USER and not message.tool_results


class ContextPolicy(Protocol):
    """Decides when a session's view moves, and where to."""

    @property
    def summarizes(self) -> bool:
        """Tell whether the turns left out are summarised rather than dropped."""
        ...

    @property
    def counts_tokens(self) -> bool:
        """Tell whether `over` looks at tokens (else at the number of messages alone)."""
        ...

    def over(self, messages: int, tokens: int) -> bool:
        """Tell whether a view of this many messages (and their tokens) is past the limit."""
        ...

    def step(self, sizes: Sequence[int], starts: Sequence[int]) -> int:
        """Return where a view past the limit moves to: one of `starts` (turn starts).

        `sizes` are the tokens of each message of the view, this turn's message last.
        """
        ...

    def history_cut(self) -> HistoryCut:
        """Return a check fed the history newest first: True once enough is read.

        Enough to tell a view past the limit, so a session whose older turns were never
        folded (imported ones) is not read whole.
        """
        ...


def _read_past_a_turn_start(enough: HistoryCut) -> HistoryCut:
    """Once `enough` says so, read on through a turn's start to the message before it.

    The step may need all of a turn longer than what it keeps; and a read that opens mid-turn
    is one `plan_view` knows was cut short, so it moves the view in a full step rather than
    sending the read as if it were the whole view (older turns dropped with no fold).
    """
    at_start = False

    def cut(message: Message) -> bool:
        nonlocal at_start
        if at_start and not is_turn_start(message):
            return True
        at_start = at_start or (enough(message) and is_turn_start(message))
        return False

    return cut


def _count_cut(limit: int) -> HistoryCut:
    count = 0

    def enough(_: Message) -> bool:
        nonlocal count
        count += 1
        return count > limit

    return _read_past_a_turn_start(enough)


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    """At most `max_messages` messages; past that, drop old turns down to half of it."""

    max_messages: int
    summarizes: bool = False
    counts_tokens: bool = False

    def over(self, messages: int, tokens: int) -> bool:
        """Past the limit: more messages than the window holds."""
        return messages > self.max_messages

    def step(self, sizes: Sequence[int], starts: Sequence[int]) -> int:
        """Move to the oldest turn start leaving at most half the window."""
        keep = max(1, self.max_messages // 2)
        return next((i for i in starts if len(sizes) - i <= keep), starts[-1])

    def history_cut(self) -> HistoryCut:
        """Stop past a turn's start once a window's worth (and one more) is read."""
        return _count_cut(self.max_messages)


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """At most `max_tokens` tokens of history; past that, drop old turns down to half of it."""

    max_tokens: int
    summarizes: bool = False
    counts_tokens: bool = True

    def over(self, messages: int, tokens: int) -> bool:
        """Past the limit: more tokens than the budget."""
        return tokens > self.max_tokens

    def step(self, sizes: Sequence[int], starts: Sequence[int]) -> int:
        """Move to the oldest turn start leaving at most half the budget."""
        half, total = self.max_tokens // 2, sum(sizes)
        used = 0
        for i in range(len(sizes)):
            if i in starts and total - used <= half:
                return i
            used += sizes[i]
        return starts[-1]

    def history_cut(self) -> HistoryCut:
        """Stop past a turn's start once the messages read are over the budget on their own."""
        used = 0

        def enough(message: Message) -> bool:
            nonlocal used
            used += estimate_message_tokens(message)
            return used > self.max_tokens

        return _read_past_a_turn_start(enough)


@dataclass(frozen=True, slots=True)
class Summarize:
    """The last `keep` messages verbatim and a summary of the rest, refreshed in large steps.

    The view grows to three times `keep` messages; then everything but the newest whole
    turns holding at least `keep` messages is folded into the summary. Folding less often
    costs more cache reads (a tenth of a token each) and saves a summary call, its output and
    the rewrite of the cached prefix after it: on benchmarks.cost three times is cheaper
    than twice at both 50 and 200 turns.
    """

    keep: int
    summarizes: bool = True
    counts_tokens: bool = False

    def over(self, messages: int, tokens: int) -> bool:
        """Past the limit: three times the messages kept."""
        return messages > 3 * self.keep

    def step(self, sizes: Sequence[int], starts: Sequence[int]) -> int:
        """Move to the newest turn start that still leaves `keep` messages."""
        fits = [i for i in starts if len(sizes) - i >= self.keep]
        return fits[-1] if fits else starts[0]

    def history_cut(self) -> HistoryCut:
        """Stop past a turn's start once more than three times `keep` messages are read."""
        return _count_cut(3 * self.keep)


DEFAULT_WINDOW_MESSAGES = 50
DEFAULT_BUDGET_TOKENS = 16000
DEFAULT_KEEP_MESSAGES = 20


def policy_for(kind: str | None, limit: int | None, fallback: ContextPolicy) -> ContextPolicy:
    """Return the policy a session asks for, or the server's when it asks for none."""
    if kind == "window":
        return SlidingWindow(limit or DEFAULT_WINDOW_MESSAGES)
    if kind == "tokens":
        return TokenBudget(limit or DEFAULT_BUDGET_TOKENS)
    if kind == "summary":
        return Summarize(limit or DEFAULT_KEEP_MESSAGES)
    return fallback


@dataclass(frozen=True, slots=True)
class ViewPlan:
    """Where this turn's view starts in the history read (this turn's message last)."""

    # Index of the view's first message; 0 when the view stays where it was.
    start: int
    # Whether the messages before `start` (and the old summary) are folded into a new summary.
    summarize: bool = False
    # Whether it moves only because the prompt, as estimated, would not fit the model's window.
    for_window: bool = False

    @property
    def moved(self) -> bool:
        """Tell whether the view changed."""
        return self.start > 0


def plan_view(
    policy: ContextPolicy,
    messages: Sequence[Message],
    sizes: Sequence[int],
    fixed: int,
    budget: int | None,
) -> ViewPlan:
    """Decide this turn's view: stay, or move in one step (then past the budget, further).

    `messages` are the view's so far and this turn's (last), `sizes` their tokens, `fixed` the
    tokens of everything else in the prompt (system, tools, summary), `budget` the most the
    prompt may hold for the model's window (None: not known).
    """
    starts = [i for i, m in enumerate(messages) if is_turn_start(m)]
    if not starts:
        return ViewPlan(0)
    # suffix[i]: the tokens of the messages from i on.
    suffix = [0] * (len(sizes) + 1)
    for i in range(len(sizes) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + sizes[i]
    # A view read from mid-turn (an unfolded history cut short) must start at a turn; and the
    # read was cut because the history was past the limit, so the view moves in a full step.
    start = starts[0]
    cut_short = start > 0
    past_budget = budget is not None and fixed + suffix[start] > budget
    by_policy = cut_short or policy.over(len(messages) - start, suffix[start])
    if by_policy or past_budget:
        start = max(start, policy.step(sizes, starts))
    if budget is not None:
        # The model's window bounds every policy: drop whole turns until the prompt fits.
        start = next((i for i in starts if i >= start and fixed + suffix[i] <= budget), starts[-1])
    return ViewPlan(start, policy.summarizes and start > 0, start > 0 and not by_policy)
