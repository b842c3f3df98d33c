"""Cursor pages of sessions and turns, and usage totals, on every backend."""

from __future__ import annotations

import pytest

from chatd.engine.ports import Store
from chatd.errors import InputError, NotFound
from chatd.testing.turns import begin_turn
from chatd.types import Message, StopReason, TurnPlan, TurnState, Usage

PLAN = TurnPlan("m", "p")

ALICE, BOB = "alice", "bob"


async def add_turn(store: Store, user: str, session: str, text: str, state: TurnState) -> None:
    """Store one finished turn with a fixed usage."""
    turn = (await begin_turn(store, user, session, Message.user(text), PLAN)).record
    await store.finish_turn(
        turn.id,
        state=state,
        messages=[Message.assistant(f"re: {text}")],
        stop_reason=StopReason.END_TURN,
        usage=Usage(10, 20, 1, 2),
        latency_ms=1.0,
        ttft_ms=1.0,
    )


async def test_session_pages_walk_every_session_once_in_creation_order(store: Store) -> None:
    names = [f"s{i}" for i in range(7)]
    for name in names:
        await store.ensure_session(ALICE, name)
    await store.ensure_session(BOB, "not-alice")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await store.page_sessions(ALICE, limit=3, after=cursor)
        seen.extend(s.id for s in page)
        pages += 1
        if cursor is None:
            break
    assert seen == names
    assert pages == 3


async def test_exact_last_page_has_no_cursor(store: Store) -> None:
    for name in ("a", "b"):
        await store.ensure_session(ALICE, name)
    page, cursor = await store.page_sessions(ALICE, limit=2)
    assert [s.id for s in page] == ["a", "b"]
    assert cursor is None
    assert await store.page_sessions(BOB, limit=2) == ([], None)


async def test_session_page_carries_turn_count(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    await add_turn(store, ALICE, "s", "one", TurnState.COMPLETE)
    await add_turn(store, ALICE, "s", "two", TurnState.FAILED)
    page, _ = await store.page_sessions(ALICE, limit=10)
    assert page[0].turn_count == 1


@pytest.mark.parametrize("cursor", ["nonsense", "", "W10", "WyJ4IiwxXQ"])
async def test_bad_cursor_is_an_input_error(store: Store, cursor: str) -> None:
    with pytest.raises(InputError):
        await store.page_sessions(ALICE, limit=2, after=cursor)


async def test_turn_pages_show_every_state_in_order(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    states = [TurnState.COMPLETE, TurnState.FAILED, TurnState.TRUNCATED, TurnState.COMPLETE]
    for i, state in enumerate(states):
        await add_turn(store, ALICE, "s", f"m{i}", state)
    first, after = await store.page_turns(ALICE, "s", limit=3)
    assert [t.state for t in first] == states[:3]
    assert [t.messages[0].text for t in first] == ["m0", "m1", "m2"]
    assert first[0].messages[1].text == "re: m0"
    assert after == first[-1].seq
    rest, after = await store.page_turns(ALICE, "s", limit=3, after_seq=after)
    assert [t.messages[0].text for t in rest] == ["m3"]
    assert after is None


async def test_turn_page_of_an_empty_session_is_empty(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    assert await store.page_turns(ALICE, "s", limit=5) == ([], None)


async def test_turn_page_of_a_missing_or_foreign_session_is_not_found(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    with pytest.raises(NotFound):
        await store.page_turns(BOB, "s", limit=5)
    with pytest.raises(NotFound):
        await store.page_turns(ALICE, "nope", limit=5)


async def test_usage_totals_sum_the_users_turns_only(store: Store) -> None:
    assert await store.usage_totals(ALICE) == (0, Usage())
    for user, session in ((ALICE, "a1"), (ALICE, "a2"), (BOB, "b")):
        await store.ensure_session(user, session)
        await add_turn(store, user, session, "hi", TurnState.COMPLETE)
    await add_turn(store, ALICE, "a1", "again", TurnState.FAILED)
    assert await store.usage_totals(ALICE) == (3, Usage(30, 60, 3, 6))
