"""Cursor pages of sessions and turns, and usage totals, on every backend."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from chatd.engine.ports import Store
from chatd.errors import InputError, NotFound
from chatd.testing.turns import begin_turn
from chatd.types import (
    Message,
    SessionInfo,
    SessionOrder,
    StopReason,
    TurnPlan,
    TurnState,
    Usage,
)

PLAN = TurnPlan("m", "p")

ALICE, BOB = "alice", "bob"


def cursor_of(fields: Any) -> str:
    """Return a session cursor holding these fields, encoded as the stores encode theirs."""
    return base64.urlsafe_b64encode(orjson.dumps(fields)).decode().rstrip("=")


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


@pytest.mark.parametrize("order", ["created", "recent"])
@pytest.mark.parametrize(
    "cursor",
    [
        "nonsense",
        "",
        "W10",
        "WyJ4IiwxXQ",
        cursor_of(["recent", "x", "s"]),
        cursor_of(["recent", "2026-01-01T00:00:00+00:00", 1]),
        cursor_of(["recent", "2026-01-01T00:00:00", "s"]),
        cursor_of(["later", "2026-01-01T00:00:00+00:00", "s"]),
        cursor_of({"at": "2026-01-01T00:00:00+00:00", "id": "s"}),
    ],
)
async def test_bad_cursor_is_an_input_error(store: Store, cursor: str, order: SessionOrder) -> None:
    with pytest.raises(InputError):
        await store.page_sessions(ALICE, limit=2, after=cursor, order=order)


async def test_recent_pages_walk_every_session_once_most_recently_active_first(
    store: Store,
) -> None:
    names = [f"s{i}" for i in range(7)]
    for name in names:
        await store.ensure_session(ALICE, name)
    await store.ensure_session(BOB, "not-alice")
    # Activity after creation: a turn, an update, a turn.
    await add_turn(store, ALICE, "s4", "one", TurnState.COMPLETE)
    await store.update_session(ALICE, "s1", title="renamed")
    await add_turn(store, ALICE, "s2", "two", TurnState.FAILED)
    seen: list[SessionInfo] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await store.page_sessions(ALICE, limit=3, after=cursor, order="recent")
        seen.extend(page)
        pages += 1
        if cursor is None:
            break
    assert [s.id for s in seen] == ["s2", "s1", "s4", "s6", "s5", "s3", "s0"]
    assert pages == 3
    times = [s.updated_at for s in seen]
    assert times == sorted(times, reverse=True)
    assert [s.turn_count for s in seen[:3]] == [0, 0, 1]
    assert seen[1].title == "renamed"
    whole, last = await store.page_sessions(ALICE, limit=7, order="recent")
    assert (whole, last) == (seen, None)
    assert await store.page_sessions(BOB, limit=2, order="recent") == (
        [await store.get_session(BOB, "not-alice")],
        None,
    )


async def test_recent_paging_skips_a_session_touched_after_its_page_was_read(
    store: Store,
) -> None:
    # The documented cost of paging on a moving key: s0 moves ahead of the cursor.
    for name in ("s0", "s1", "s2"):
        await store.ensure_session(ALICE, name)
    first, cursor = await store.page_sessions(ALICE, limit=1, order="recent")
    assert [s.id for s in first] == ["s2"]
    await store.update_session(ALICE, "s0", title="touched")
    rest, last = await store.page_sessions(ALICE, limit=5, after=cursor, order="recent")
    assert [s.id for s in rest] == ["s1"]
    assert last is None


async def test_a_cursor_pages_only_in_the_order_it_was_made_for(store: Store) -> None:
    for name in ("a", "b", "c"):
        await store.ensure_session(ALICE, name)
    _, created = await store.page_sessions(ALICE, limit=1)
    _, recent = await store.page_sessions(ALICE, limit=1, order="recent")
    assert created is not None
    assert recent is not None
    with pytest.raises(InputError, match="order=created, not order=recent"):
        await store.page_sessions(ALICE, limit=1, after=created, order="recent")
    with pytest.raises(InputError, match="order=recent, not order=created"):
        await store.page_sessions(ALICE, limit=1, after=recent)
    rest, _ = await store.page_sessions(ALICE, limit=5, after=recent, order="recent")
    assert [s.id for s in rest] == ["b", "a"]


async def test_a_created_cursor_keeps_its_old_form(store: Store) -> None:
    # Cursors handed out before there were orders ([created_at, id], no tag) stay valid.
    for name in ("a", "b", "c"):
        await store.ensure_session(ALICE, name)
    (first,), cursor = await store.page_sessions(ALICE, limit=1)
    old = cursor_of([first.created_at.isoformat(), first.id])
    assert cursor == old
    rest, _ = await store.page_sessions(ALICE, limit=5, after=old, order="created")
    assert [s.id for s in rest] == ["b", "c"]


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
