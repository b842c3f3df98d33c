"""Context policies: which suffix of the history the model sees."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.engine.context import ContextPolicy, SlidingWindow, TokenBudget
from chatd.tokens import (
    MESSAGE_OVERHEAD,
    estimate_message_tokens,
    estimate_request_tokens,
    estimate_text_tokens,
)
from chatd.types import ChatRequest, Message, Role, TextPart, ToolCallPart, ToolResultPart

# --- building histories -------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """A generated conversation and the indexes where its turns start."""

    messages: tuple[Message, ...]
    turn_starts: tuple[int, ...]

    @property
    def last_turn_start(self) -> int:
        return self.turn_starts[-1]


texts = st.text(max_size=40)
tool_names = st.sampled_from(["calculate", "current_time", "search"])
tool_inputs = st.dictionaries(
    st.sampled_from(["expression", "timezone", "query", "limit"]),
    st.one_of(st.integers(-1000, 1000), st.text(max_size=20), st.booleans()),
    max_size=3,
)


@st.composite
def turns(draw: st.DrawFn, ids: itertools.count[int]) -> list[Message]:
    """One whole turn: user text, zero or more tool rounds, final assistant text."""
    turn = [Message.user(draw(texts))]
    for _ in range(draw(st.integers(0, 2))):
        calls = [
            ToolCallPart(f"call_{next(ids)}", draw(tool_names), draw(tool_inputs))
            for _ in range(draw(st.integers(1, 3)))
        ]
        preamble = draw(texts)
        text_parts = (TextPart(preamble),) if preamble else ()
        turn.append(Message(Role.ASSISTANT, (*text_parts, *calls)))
        results = [ToolResultPart(c.id, draw(texts), draw(st.booleans())) for c in calls]
        turn.append(Message(Role.USER, tuple(draw(st.permutations(results)))))
    turn.append(Message.assistant(draw(texts)))
    return turn


@st.composite
def histories(draw: st.DrawFn) -> History:
    """Whole turns; the last one may be cut short (the message being sent, or mid tool loop)."""
    ids = itertools.count()
    messages: list[Message] = []
    starts: list[int] = []
    n_turns = draw(st.integers(1, 6))
    for n in range(n_turns):
        turn = draw(turns(ids))
        if n == n_turns - 1:
            turn = turn[: draw(st.integers(1, len(turn)))]
        starts.append(len(messages))
        messages.extend(turn)
    return History(tuple(messages), tuple(starts))


systems = st.one_of(st.none(), st.just(""), st.text(max_size=300), st.just("x" * 20_000))


def window_tokens(system: str | None, messages: Sequence[Message]) -> int:
    prompt = estimate_text_tokens(system) if system else 0
    return prompt + sum(estimate_message_tokens(m) for m in messages)


# --- structural checks shared by both policies -------------------------------------------------


def check_structure(history: History, selected: Sequence[Message]) -> int:
    """Assert the selection is a well-formed suffix; return the index it starts at."""
    messages = history.messages
    selected = list(selected)
    assert selected, "the selection must never be empty"
    start = len(messages) - len(selected)
    assert selected == list(messages[start:]), "the selection must be a suffix of the history"
    assert selected[-1] is messages[-1], "the last message must always be sent"

    first = selected[0]
    assert first.role is Role.USER
    assert not any(isinstance(p, ToolResultPart) for p in first.parts)
    assert start in history.turn_starts, "the window must start at a turn boundary"

    for before, after in itertools.pairwise(selected):
        assert before.role is not after.role, "roles must alternate"

    for i, message in enumerate(selected):
        result_ids = [r.tool_call_id for r in message.tool_results]
        if result_ids:
            assert i > 0
            previous = selected[i - 1]
            assert previous.role is Role.ASSISTANT
            assert sorted(result_ids) == sorted(c.id for c in previous.tool_calls)
        call_ids = [c.id for c in message.tool_calls]
        if call_ids and i < len(selected) - 1:
            answered = [r.tool_call_id for r in selected[i + 1].tool_results]
            assert sorted(answered) == sorted(call_ids), "every tool call needs its result"
    return start


def previous_turn_start(history: History, start: int) -> int | None:
    earlier = [s for s in history.turn_starts if s < start]
    return earlier[-1] if earlier else None


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(history=histories(), max_messages=st.integers(1, 25), system=systems)
def test_sliding_window_selects_the_most_whole_turns_that_fit(
    history: History, max_messages: int, system: str | None
) -> None:
    selected = SlidingWindow(max_messages).select(system, history.messages)
    start = check_structure(history, selected)

    if start != history.last_turn_start:
        assert len(selected) <= max_messages
    more = previous_turn_start(history, start)
    if more is not None:
        assert len(history.messages) - more > max_messages, "one more turn would have fit"


@settings(max_examples=200, deadline=None)
@given(history=histories(), max_tokens=st.integers(0, 700), system=systems)
def test_token_budget_selects_the_most_whole_turns_that_fit(
    history: History, max_tokens: int, system: str | None
) -> None:
    selected = TokenBudget(max_tokens).select(system, history.messages)
    start = check_structure(history, selected)

    if start != history.last_turn_start:
        assert window_tokens(system, selected) <= max_tokens
    more = previous_turn_start(history, start)
    if more is not None:
        assert window_tokens(system, history.messages[more:]) > max_tokens, (
            "one more turn would have fit"
        )


@settings(max_examples=200, deadline=None)
@given(history=histories(), max_messages=st.integers(1, 25), system=systems)
def test_sliding_window_ignores_the_system_prompt(
    history: History, max_messages: int, system: str | None
) -> None:
    policy = SlidingWindow(max_messages)
    assert list(policy.select(system, history.messages)) == list(
        policy.select(None, history.messages)
    )


@settings(max_examples=200, deadline=None)
@given(history=histories(), max_tokens=st.integers(0, 700), system=systems)
def test_token_budget_window_shrinks_as_the_system_prompt_grows(
    history: History, max_tokens: int, system: str | None
) -> None:
    policy = TokenBudget(max_tokens)
    with_system = policy.select(system, history.messages)
    without = policy.select(None, history.messages)
    assert len(with_system) <= len(without)
    assert all(m.role in (Role.USER, Role.ASSISTANT) for m in with_system)


def loaded_suffix(policy: ContextPolicy, history: Sequence[Message]) -> list[Message]:
    """Read the history newest first until the policy's cut says enough, as the store does."""
    enough = policy.history_cut()
    newest_first: list[Message] = []
    for message in reversed(history):
        newest_first.append(message)
        if enough(message):
            break
    return newest_first[::-1]


@settings(max_examples=300, deadline=None)
@given(
    history=histories(),
    policy=st.one_of(
        st.builds(SlidingWindow, st.integers(1, 25)), st.builds(TokenBudget, st.integers(0, 700))
    ),
    system=systems,
)
def test_reading_only_what_the_cut_asks_for_selects_the_same_messages(
    history: History, policy: ContextPolicy, system: str | None
) -> None:
    # The stored history is the finished turns; the last turn is the one being run.
    split = history.last_turn_start
    stored, current = history.messages[:split], list(history.messages[split:])
    loaded = loaded_suffix(policy, stored)
    assert list(policy.select(system, [*loaded, *current])) == list(
        policy.select(system, [*stored, *current])
    )


def test_the_cut_stops_reading_a_long_history_early() -> None:
    stored = [m for n in range(500) for m in (Message.user(f"q{n}"), Message.assistant("a"))]
    assert len(loaded_suffix(SlidingWindow(50), stored)) == 50
    assert len(loaded_suffix(TokenBudget(100), stored)) < 50


# --- examples -----------------------------------------------------------------------------------


def _tool_turn(question: str, call_id: str, answer: str) -> list[Message]:
    call = ToolCallPart(call_id, "calculate", {"expression": "2*(3+4)"})
    return [
        Message.user(question),
        Message(Role.ASSISTANT, (TextPart("Let me compute."), call)),
        Message(Role.USER, (ToolResultPart(call_id, "14"),)),
        Message.assistant(answer),
    ]


def test_window_never_starts_on_assistant_message() -> None:
    history = [Message.user("hi"), Message.assistant("hello"), Message.user("how are you?")]

    selected = SlidingWindow(2).select(None, history)

    assert list(selected) == [Message.user("how are you?")]


def test_window_never_starts_on_tool_result_message() -> None:
    history = [*_tool_turn("what is 2*(3+4)?", "c1", "14"), Message.user("thanks")]

    # The last 3 messages would start on the tool result, the last 4 on the tool call.
    for limit in (2, 3, 4):
        assert list(SlidingWindow(limit).select(None, history)) == [Message.user("thanks")]
    assert list(SlidingWindow(5).select(None, history)) == history


def test_sliding_window_keeps_everything_when_it_fits() -> None:
    history = [Message.user("a"), Message.assistant("b"), Message.user("c")]

    assert list(SlidingWindow(3).select(None, history)) == history
    assert list(SlidingWindow(100).select(None, history)) == history


def test_sliding_window_keeps_the_whole_last_turn_even_past_the_limit() -> None:
    history = [Message.user("earlier"), Message.assistant("ok"), *_tool_turn("q", "c1", "a")]

    selected = SlidingWindow(1).select(None, history)

    assert list(selected) == history[2:]


def test_window_mid_tool_loop_keeps_the_pending_tool_call_and_its_question() -> None:
    turn = _tool_turn("what is 2*(3+4)?", "c1", "14")
    history = [Message.user("hi"), Message.assistant("hello"), *turn[:3]]

    assert list(SlidingWindow(2).select(None, history)) == turn[:3]
    assert list(TokenBudget(1).select(None, history)) == turn[:3]


def test_token_budget_counts_the_system_prompt() -> None:
    history = [Message.user("a" * 40), Message.assistant("b" * 40), Message.user("c" * 40)]
    cost = sum(estimate_message_tokens(m) for m in history)

    assert list(TokenBudget(cost).select(None, history)) == history
    assert list(TokenBudget(cost).select("be brief", history)) == history[2:]
    assert list(TokenBudget(cost + 2).select("be brief", history)) == history


def test_token_budget_keeps_the_last_turn_when_nothing_fits() -> None:
    history = [Message.user("hello"), Message.assistant("hi"), Message.user("x" * 1000)]

    assert list(TokenBudget(1).select(None, history)) == history[2:]
    assert list(TokenBudget(10_000).select("s" * 100_000, history)) == history[2:]


def test_token_budget_drops_the_oldest_turns_first() -> None:
    history = [
        Message.user("first " * 50),
        Message.assistant("reply " * 50),
        Message.user("second"),
        Message.assistant("reply"),
        Message.user("third"),
    ]
    budget = sum(estimate_message_tokens(m) for m in history[2:])

    assert list(TokenBudget(budget).select(None, history)) == history[2:]


def test_text_tokens_are_about_four_characters_each() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcd") == 1
    assert estimate_text_tokens("abcde") == 2
    assert estimate_text_tokens("x" * 400) == 100


def test_message_tokens_count_every_part_plus_overhead() -> None:
    call = ToolCallPart("c1", "calc", {"e": "1"})
    message = Message(Role.ASSISTANT, (TextPart("abcd"), call))
    assert estimate_message_tokens(Message.user("")) == MESSAGE_OVERHEAD
    assert estimate_message_tokens(message) == (
        MESSAGE_OVERHEAD + 1 + estimate_text_tokens('calc{"e": "1"}')
    )
    result = Message(Role.USER, (ToolResultPart("c1", "x" * 8),))
    assert estimate_message_tokens(result) == MESSAGE_OVERHEAD + 2


def test_request_tokens_include_the_system_prompt() -> None:
    messages = (Message.user("abcd"),)
    request = ChatRequest(model="m", messages=messages, max_tokens=10, system="x" * 8)

    assert estimate_request_tokens(request) == 2 + MESSAGE_OVERHEAD + 1


def test_policies_satisfy_the_protocol() -> None:
    policies: list[ContextPolicy] = [SlidingWindow(4), TokenBudget(100)]
    for policy in policies:
        assert list(policy.select(None, [Message.user("hi")])) == [Message.user("hi")]
