"""Context views: where the model's view of a session starts, and how it moves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.engine.context import (
    DEFAULT_BUDGET_TOKENS,
    DEFAULT_KEEP_MESSAGES,
    DEFAULT_WINDOW_MESSAGES,
    ContextPolicy,
    SlidingWindow,
    Summarize,
    TokenBudget,
    ViewPlan,
    plan_view,
    policy_for,
)
from chatd.engine.meter import MARGIN, TokenMeter, derive_tokens
from chatd.store.rows import read_back
from chatd.tokens import estimate_fixed_tokens, estimate_message_tokens
from chatd.types import ChatRequest, Message, Role, ToolCallPart, ToolResultPart, ToolSpec

# --- building conversations ---------------------------------------------------------------------


def make_turn(n: int, rounds: Sequence[int] = (), chars: int = 8) -> list[Message]:
    """Turn n: a question, one tool round per entry of `rounds` (that many calls), an answer."""
    text = "x" * chars
    turn = [Message.user(f"q{n} {text}")]
    for r, calls in enumerate(rounds):
        ids = [f"call_{n}_{r}_{c}" for c in range(calls)]
        call_parts = tuple(ToolCallPart(i, "calculate", {"expression": text}) for i in ids)
        turn.append(Message(Role.ASSISTANT, call_parts))
        turn.append(Message(Role.USER, tuple(ToolResultPart(i, text) for i in reversed(ids))))
    turn.append(Message.assistant(f"a{n} {text}"))
    return turn


# Calls in each tool round of a turn (up to three rounds, so a turn holds up to 8 messages).
tool_rounds = st.lists(st.integers(1, 2), max_size=3)
conversations = st.lists(st.tuples(tool_rounds, st.integers(0, 400)), min_size=1, max_size=40).map(
    lambda shapes: [make_turn(n, rounds, chars) for n, (rounds, chars) in enumerate(shapes)]
)
policies = st.one_of(
    st.builds(SlidingWindow, st.integers(1, 30)),
    st.builds(TokenBudget, st.integers(1, 1500)),
    st.builds(Summarize, st.integers(1, 15)),
)
budgets = st.one_of(st.none(), st.integers(1, 2000))


@dataclass(frozen=True)
class Case:
    """What plan_view is given: a history as read, this turn's messages last."""

    messages: tuple[Message, ...]
    sizes: tuple[int, ...]
    fixed: int
    budget: int | None
    # Index of this turn's user message (any later ones: what ran of the turn so far).
    current: int
    # Whether the read starts at a turn (else it was cut short in the middle of one).
    aligned: bool


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Whole earlier turns, maybe read from mid-turn, then this turn's message and tool rounds."""
    earlier = [
        m
        for n, rounds in enumerate(draw(st.lists(tool_rounds, max_size=12)))
        for m in make_turn(n, rounds)
    ]
    skip = draw(st.one_of(st.just(0), st.integers(0, len(earlier))))
    read = earlier[skip:]
    turn = make_turn(len(earlier), draw(tool_rounds))
    # This turn's message, and maybe what ran of it (a retry after an overflow, a continuation).
    now = turn[: draw(st.integers(1, len(turn)))]
    messages = (*read, *now)
    sizes = draw(st.lists(st.integers(1, 60), min_size=len(messages), max_size=len(messages)))
    return Case(
        messages=messages,
        sizes=tuple(sizes),
        fixed=draw(st.integers(0, 300)),
        budget=draw(budgets),
        current=len(read),
        aligned=not read or is_question(read[0]),
    )


def is_question(message: Message) -> bool:
    """A turn's first message: a user message carrying no tool result."""
    return message.role is Role.USER and not any(
        isinstance(p, ToolResultPart) for p in message.parts
    )


def turn_starts(messages: Sequence[Message]) -> list[int]:
    return [i for i, m in enumerate(messages) if is_question(m)]


def plan(policy: ContextPolicy, case: Case) -> ViewPlan:
    return plan_view(policy, case.messages, case.sizes, case.fixed, case.budget)


def past_limit(policy: ContextPolicy, messages: int, tokens: int) -> bool:
    """The documented limits: the window's messages, the budget's tokens, a multiple of `keep`."""
    if isinstance(policy, SlidingWindow):
        return messages > policy.max_messages
    if isinstance(policy, TokenBudget):
        return tokens > policy.max_tokens
    assert isinstance(policy, Summarize)
    return messages > summary_limit(policy)


def can_move(policy: ContextPolicy, messages: Sequence[Message]) -> bool:
    """Tell whether a later question is there to move to (Summarize: one leaving `keep`)."""
    later = turn_starts(messages)[1:]
    if isinstance(policy, Summarize):
        return any(len(messages) - i >= policy.keep for i in later)
    return bool(later)


def summary_limit(policy: Summarize) -> int:
    """The most messages a Summarize view holds before it folds (a multiple of `keep`)."""
    return next(m for m in range(policy.keep, 10 * policy.keep) if policy.over(m + 1, 0))


def tokens_of(messages: Sequence[Message]) -> list[int]:
    return [estimate_message_tokens(m) for m in messages]


def read_stored(policy: ContextPolicy, stored: Sequence[Message]) -> list[Message]:
    """Read the stored history newest first until the policy's cut says enough (as the store)."""
    return list(read_back(reversed(stored), policy.history_cut()))


# --- one plan -----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(policy=policies, case=cases())
def test_view_starts_at_a_question_and_keeps_tool_calls_with_their_results(
    policy: ContextPolicy, case: Case
) -> None:
    """The view opens on a user question and never splits a tool call from its result."""
    view = case.messages[plan(policy, case).start :]

    assert is_question(view[0])
    for i, message in enumerate(view):
        results = sorted(p.tool_call_id for p in message.parts if isinstance(p, ToolResultPart))
        if results:
            assert i > 0
            assert view[i - 1].role is Role.ASSISTANT
            assert results == sorted(c.id for c in view[i - 1].tool_calls)


@settings(max_examples=150, deadline=None)
@given(policy=policies, case=cases())
def test_view_always_holds_this_turns_message(policy: ContextPolicy, case: Case) -> None:
    """This turn's message (and its tool rounds so far) is always sent."""
    assert plan(policy, case).start <= case.current


@settings(max_examples=150, deadline=None)
@given(policy=policies, case=cases())
def test_prompt_with_system_part_fits_the_budget_when_any_view_does(
    policy: ContextPolicy, case: Case
) -> None:
    """The fixed part (system prompt, tools, summary) counts against the budget."""
    if case.budget is None:
        return
    start = plan(policy, case).start
    fitting = [
        i for i in turn_starts(case.messages) if case.fixed + sum(case.sizes[i:]) <= case.budget
    ]
    if fitting:
        assert case.fixed + sum(case.sizes[start:]) <= case.budget
    else:
        # Nothing fits: send this turn alone and let the provider say how far off it is.
        assert start == case.current


@settings(max_examples=150, deadline=None)
@given(policy=policies, case=cases())
def test_view_stays_exactly_while_within_the_limit_and_the_budget(
    policy: ContextPolicy, case: Case
) -> None:
    """A view read whole stays while it fits; one read cut short always moves to a turn."""
    p = plan(policy, case)
    if not case.aligned:
        assert p.moved
        return
    messages, tokens = case.messages, sum(case.sizes)
    if case.budget is not None and case.fixed + tokens > case.budget:
        # Past the model's window: whole turns go, as long as there are older ones.
        assert p.moved == bool(turn_starts(messages)[1:])
    else:
        assert p.moved == (past_limit(policy, len(messages), tokens) and can_move(policy, messages))


@settings(max_examples=150, deadline=None)
@given(policy=policies, case=cases())
def test_only_the_summary_policy_summarizes_and_only_when_the_view_moves(
    policy: ContextPolicy, case: Case
) -> None:
    """`summarize` is set exactly when a Summarize view moves."""
    p = plan(policy, case)
    assert p.summarize == (isinstance(policy, Summarize) and p.moved)


@settings(max_examples=150, deadline=None)
@given(keep=st.integers(1, 15), case=cases())
def test_summary_view_keeps_keep_messages_and_no_more_than_its_limit(keep: int, case: Case) -> None:
    """Summarize sends at least `keep` messages (whole turns allowing) and at most its limit."""
    case = Case(case.messages, case.sizes, case.fixed, None, case.current, case.aligned)
    policy = Summarize(keep)
    start = plan(policy, case).start
    view = case.messages[start:]
    if any(len(case.messages) - i >= keep for i in turn_starts(case.messages)):
        assert len(view) >= keep
    first_turn = (turn_starts(view)[1:] or [len(view)])[0]
    assert len(view) <= summary_limit(policy) or first_turn > keep


@settings(max_examples=150, deadline=None)
@given(
    policy=policies,
    earlier=st.lists(tool_rounds, max_size=25),
    fixed=st.integers(0, 300),
    budget=budgets,
)
def test_reading_only_what_the_cut_asks_for_plans_the_same_view(
    policy: ContextPolicy, earlier: list[list[int]], fixed: int, budget: int | None
) -> None:
    """A history read only as far as the policy's cut gives the view the whole one gives."""
    stored = [m for n, rounds in enumerate(earlier) for m in make_turn(n, rounds)]
    question = Message.user("and now?")
    read = read_stored(policy, stored)

    whole = [*stored, question]
    cut = [*read, question]
    whole_view = whole[plan_view(policy, whole, tokens_of(whole), fixed, budget).start :]
    cut_view = cut[plan_view(policy, cut, tokens_of(cut), fixed, budget).start :]

    assert cut_view == whole_view


# --- a conversation, turn by turn ---------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One turn of a simulated conversation: its view before and after planning."""

    # The messages in the view before planning (since the last move, and this turn's) and
    # their tokens.
    before: int
    tokens: int
    plan: ViewPlan
    # What the turn's first call sends, and what the previous turn's last call sent.
    view: tuple[Message, ...]
    previous: tuple[Message, ...]

    @property
    def moved(self) -> bool:
        return self.plan.moved


def converse(
    policy: ContextPolicy,
    turns: Sequence[Sequence[Message]],
    fixed: int = 0,
    budget: int | None = None,
) -> list[Planned]:
    """Run a conversation: read the stored view through the cut, plan, keep the view, reply."""
    stored: list[Message] = []
    planned: list[Planned] = []
    for turn in turns:
        whole = [*stored, turn[0]]
        messages = [*read_stored(policy, stored), turn[0]]
        p = plan_view(policy, messages, tokens_of(messages), fixed, budget)
        view = tuple(messages[p.start :])
        planned.append(Planned(len(whole), sum(tokens_of(whole)), p, view, tuple(stored)))
        stored = [*view, *turn[1:]]
    return planned


def check_large_step(policy: ContextPolicy, view: Sequence[Message]) -> None:
    """After a move the view is down to half the limit (or this turn's message alone)."""
    if len(view) == 1:
        return
    if isinstance(policy, SlidingWindow):
        assert len(view) <= max(1, policy.max_messages // 2)
    elif isinstance(policy, TokenBudget):
        assert sum(tokens_of(view)) <= policy.max_tokens // 2
    else:
        assert isinstance(policy, Summarize)
        assert len(view) >= policy.keep


@settings(max_examples=60, deadline=None)
@given(policy=policies, turns=conversations)
def test_conversation_view_moves_only_past_the_limit_and_then_by_a_large_step(
    policy: ContextPolicy, turns: list[list[Message]]
) -> None:
    """The prompt's prefix is stable until the limit is passed; then it moves a long way."""
    for turn in converse(policy, turns):
        whole = [*turn.previous, turn.view[-1]]
        assert turn.moved == (
            past_limit(policy, turn.before, turn.tokens) and can_move(policy, whole)
        )
        if turn.moved:
            check_large_step(policy, turn.view)
        else:
            # The cached prefix holds: the turn sends what the last one sent, and its message.
            assert turn.view == tuple(whole)
        assert turn.plan.summarize == (isinstance(policy, Summarize) and turn.moved)


@settings(max_examples=60, deadline=None)
@given(max_messages=st.integers(1, 30), turns=conversations)
def test_sliding_window_moves_once_per_half_window_of_messages(
    max_messages: int, turns: list[list[Message]]
) -> None:
    """Each move of a window follows at least half a window of new messages."""
    moves = sum(t.moved for t in converse(SlidingWindow(max_messages), turns))
    growth = max_messages + 1 - max(1, max_messages // 2)
    assert moves * growth <= sum(len(t) for t in turns)


@settings(max_examples=60, deadline=None)
@given(policy=policies, turns=conversations, fixed=st.integers(0, 300), budget=budgets)
def test_conversation_prompts_fit_the_budget(
    policy: ContextPolicy, turns: list[list[Message]], fixed: int, budget: int | None
) -> None:
    """Each turn's first prompt fits the budget unless its own message alone does not."""
    for turn in converse(policy, turns, fixed, budget):
        sent = fixed + sum(tokens_of(turn.view))
        if budget is not None and len(turn.view) > 1:
            assert sent <= budget
        if turn.moved:
            assert past_limit(policy, turn.before, turn.tokens) or (
                budget is not None and fixed + turn.tokens > budget
            )


def long_conversation(turns: int = 200, every: int = 3) -> list[list[Message]]:
    """A support chat: every `every`th turn runs a tool (0: none does)."""
    return [make_turn(n, (1,) if every and n % every == 0 else (), 120) for n in range(turns)]


def test_a_20_message_window_moves_rarely_over_200_turns() -> None:
    """A 20-message window over 200 turns moves every 5 or 6 turns, not every turn."""
    planned = converse(SlidingWindow(20), long_conversation(every=0))
    assert 25 <= sum(t.moved for t in planned) <= 40
    assert all(len(t.view) <= 20 for t in planned)

    # With tool rounds the turns are longer: a move per 11 new messages at most.
    turns = long_conversation()
    moves = sum(t.moved for t in converse(SlidingWindow(20), turns))
    assert moves <= sum(len(t) for t in turns) // 11


def test_a_token_budget_moves_rarely_over_200_turns() -> None:
    """A budget of ~20 messages' tokens moves as rarely as a 20-message window."""
    turns = long_conversation()
    budget = sum(tokens_of([m for t in turns for m in t][:20]))
    planned = converse(TokenBudget(budget), turns)
    assert sum(t.moved for t in planned) <= sum(len(t) for t in turns) // 11
    assert all(sum(tokens_of(t.view)) <= budget for t in planned)


def test_summary_of_20_refreshes_rarely_over_200_turns() -> None:
    """Summarize(20) writes a summary every ~15 turns and always keeps 20 messages or more."""
    planned = converse(Summarize(20), long_conversation())
    assert 5 <= sum(t.plan.summarize for t in planned) <= 15
    assert all(len(t.view) >= 20 for t in planned if t.moved)
    assert all(len(t.view) <= summary_limit(Summarize(20)) for t in planned)


# --- examples -----------------------------------------------------------------------------------


def test_window_never_starts_on_an_assistant_or_tool_result_message() -> None:
    """Trimming to a window moves to the next question, past any tool call and its result."""
    history = [*make_turn(0), *make_turn(1, (1,)), Message.user("thanks")]
    sizes = [1] * len(history)

    # Half the window (the last 2 or 3 messages) would start on the answer or the tool result.
    for window in (4, 5, 6):
        view = history[plan_view(SlidingWindow(window), history, sizes, 0, None).start :]
        assert view == [Message.user("thanks")]
    # Without the first turn it all fits: nothing moves.
    assert plan_view(SlidingWindow(6), history[2:], sizes[2:], 0, None).start == 0


def test_system_prompt_counts_against_the_budget() -> None:
    """A longer system prompt leaves room for fewer turns."""
    history = [*make_turn(0), *make_turn(1), Message.user("and now?")]
    sizes = [10] * len(history)

    assert plan_view(TokenBudget(10_000), history, sizes, 50, 100).start == 0
    assert plan_view(TokenBudget(10_000), history, sizes, 51, 100).start == 2
    assert plan_view(TokenBudget(10_000), history, sizes, 500, 100).start == 4


def test_policy_for_maps_each_kind_and_falls_back_to_the_servers() -> None:
    """The session's kind and limit pick the policy; the server's when it names none."""
    fallback = Summarize(7)
    assert policy_for("window", 12, fallback) == SlidingWindow(12)
    assert policy_for("tokens", 900, fallback) == TokenBudget(900)
    assert policy_for("summary", 5, fallback) == Summarize(5)
    assert policy_for("window", None, fallback) == SlidingWindow(DEFAULT_WINDOW_MESSAGES)
    assert policy_for("tokens", None, fallback) == TokenBudget(DEFAULT_BUDGET_TOKENS)
    assert policy_for("summary", None, fallback) == Summarize(DEFAULT_KEEP_MESSAGES)
    assert policy_for(None, 12, fallback) is fallback


def test_history_cut_stops_after_the_documented_messages() -> None:
    """Window n reads n + 1 messages, Summarize past its limit, TokenBudget past its tokens.

    Then on to a question and the message before it: a read cut short opens mid-turn.
    """
    stored = [m for n in range(100) for m in make_turn(n, chars=36)]  # 14 tokens a message
    summary = Summarize(5)

    assert len(read_stored(SlidingWindow(9), stored)) == 10 + 1
    assert len(read_stored(SlidingWindow(10), stored)) == 11 + 1 + 1
    assert len(read_stored(TokenBudget(140), stored)) == 11 + 1 + 1
    read = read_stored(summary, stored)
    assert len(read) - 1 - summary_limit(summary) in (1, 2)
    for policy in (SlidingWindow(9), SlidingWindow(10), TokenBudget(140), summary):
        read = read_stored(policy, stored)
        assert not is_question(read[0])
        assert is_question(read[1])
    short = stored[:6]
    for policy in (SlidingWindow(10), Summarize(5), TokenBudget(140)):
        assert read_stored(policy, short) == short


def test_summary_view_grows_to_a_fixed_multiple_of_keep_before_it_folds() -> None:
    """Summarize lets the view grow to the same multiple of `keep` (at least twice) for any keep."""
    factor = summary_limit(Summarize(20)) // 20
    assert factor >= 2
    assert all(summary_limit(Summarize(keep)) == factor * keep for keep in (1, 3, 7, 50))


def test_summary_cut_reads_on_to_the_start_of_a_long_turn() -> None:
    """Summarize's read reaches the question of a turn longer than it keeps."""
    stored = [*make_turn(0), *make_turn(1, (1, 1, 1)), *make_turn(2)]  # 2, 8, 2 messages

    assert read_stored(Summarize(1), stored) == stored[1:]


def test_turns_left_out_of_a_read_are_folded_not_silently_dropped() -> None:
    """When the cut leaves older turns unread, the view moves (and summarises) past them."""
    turns = [make_turn(0), make_turn(1, (1, 1, 1)), make_turn(2)]

    third = converse(Summarize(2), turns)[2]

    assert third.moved
    assert third.plan.summarize
    assert third.view == (*turns[1], turns[2][0])


def test_token_budget_read_cut_short_moves_even_when_counted_sizes_fit() -> None:
    """Reported sizes below chatd's estimates still move a cut read, and a full step."""
    stored = [m for n in range(100) for m in make_turn(n, chars=36)]  # 14 tokens a message
    messages = [*read_stored(TokenBudget(126), stored), Message.user("and now?")]

    # The provider counted 9 tokens a message where chatd estimates 14: the read fits 126.
    sizes = [9] * len(messages)
    p = plan_view(TokenBudget(126), messages, sizes, 0, None)

    assert p.moved
    assert sum(sizes[p.start :]) <= 126 // 2


def test_derive_tokens_splits_calls_usage_into_messages() -> None:
    """Each message costs what its call's prompt grew by, each reply its output."""
    # 900 tokens in view before; the question, a reply with a tool call, its result, an answer.
    user, reply, context = derive_tokens([1000, 1080], [30, 20], 900)

    assert user == 100
    assert reply == [30, 50, 20]  # the tool result: 1080 - 1000 - 30
    assert context == 1100


def test_derive_tokens_leaves_unknown_sizes_none() -> None:
    """A size the reports can't tell is None, not a guess."""
    assert derive_tokens([1000], [30], None) == (None, [30], 1030)
    assert derive_tokens([1000, None], [30, 20], 900) == (100, [30, None, 20], None)
    assert derive_tokens([None, 1080], [30, None], 900) == (None, [30, None, None], None)
    assert derive_tokens([], [], 900) == (None, [], None)


def test_budget_leaves_room_for_the_reply() -> None:
    """The prompt budget is the window less the reply's room (at least 5%, at most half)."""
    meter = TokenMeter()
    assert meter.budget("anthropic", "claude-sonnet-4", 20_000) == 180_000
    assert meter.budget("anthropic", "claude-sonnet-4", 10) == 190_000
    assert meter.budget("anthropic", "claude-sonnet-4", 10**9) == 100_000
    assert meter.budget("openai", "some-local-model", 8000) is None
    assert TokenMeter(configured_window=32_000).budget("openai", "local", 4000) == 28_000


def test_learned_window_overrides_the_known_one() -> None:
    """A provider's context-length error sets the window, for that provider and model only."""
    meter = TokenMeter(configured_window=32_000)
    meter.learn_window("openai", "gpt-4o", 16_000)

    assert meter.window("openai", "gpt-4o") == 16_000
    assert meter.budget("openai", "gpt-4o", 1000) == 15_000
    assert meter.window("other", "gpt-4o") == 32_000


def test_observed_size_calibrates_the_next_estimate() -> None:
    """After a report, the same request is estimated at its size, no more than MARGIN over."""
    tool = ToolSpec("calculate", "Evaluate arithmetic.", {"type": "object"})
    messages = (Message.user("x" * 400), Message.assistant("y" * 200), Message.user("z" * 40))
    request = ChatRequest("m", messages, 100, system="s" * 300, tools=(tool,))
    guess = estimate_fixed_tokens(request) + sum(tokens_of(messages))

    for reported in (guess * 3, guess // 2):
        meter = TokenMeter()
        meter.observe("p", "m", request, reported)
        estimate = meter.estimate("p", "m", estimate_fixed_tokens(request)) + sum(
            meter.sizes("p", "m", [], messages)
        )
        assert reported <= estimate <= reported * (1 + MARGIN) + 1 + len(messages)
    assert TokenMeter().estimate("p", "m", guess) >= guess
