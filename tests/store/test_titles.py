"""Session titles on every store: set, cleared, taken from the first message, never overwritten."""

from __future__ import annotations

import pytest

from chatd.engine.ports import Store
from chatd.errors import InputError, NotFound
from chatd.store.rows import TITLE_FROM_MESSAGE, title_from
from chatd.testing.turns import begin_turn
from chatd.types import (
    GenerationParams,
    Message,
    SessionSettings,
    StopReason,
    TurnPlan,
    TurnState,
    Usage,
)

ALICE, BOB = "alice", "bob"
PLAN = TurnPlan("m", "p")


async def send(store: Store, session_id: str, text: str, *, create: bool = False) -> None:
    """Store one complete turn with this user message."""
    settings = SessionSettings() if create else None
    start = await begin_turn(store, ALICE, session_id, Message.user(text), PLAN, create=settings)
    await store.finish_turn(
        start.record.id,
        state=TurnState.COMPLETE,
        messages=[Message.assistant("ok")],
        stop_reason=StopReason.END_TURN,
        usage=Usage(1, 1),
        latency_ms=1.0,
        ttft_ms=1.0,
    )


async def title(store: Store, session_id: str, user_id: str = ALICE) -> str | None:
    """Return the session's stored title."""
    info = await store.get_session(user_id, session_id)
    assert info is not None
    return info.title


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Where is Lisbon?", "Where is Lisbon?"),
        ("\n\n  Plan   a\ttrip  \nto Lisbon, please", "Plan a trip"),
        ("x" * TITLE_FROM_MESSAGE, "x" * TITLE_FROM_MESSAGE),
        ("word " * 40, ("word " * 16)[:79].rstrip() + "…"),
        ("   \n\t", None),
    ],
)
def test_a_title_from_a_message_is_its_first_line_made_short(
    text: str, expected: str | None
) -> None:
    made = title_from(Message.user(text))
    assert made == expected
    assert made is None or len(made) <= TITLE_FROM_MESSAGE


async def test_a_title_is_set_at_creation_changed_and_cleared(store: Store) -> None:
    created = await store.ensure_session(ALICE, "s", title="Trip")
    assert created.title == "Trip"
    assert await title(store, "s") == "Trip"
    # Settings changed without a title leave it.
    await store.update_session(ALICE, "s", params=GenerationParams(temperature=0.5))
    assert await title(store, "s") == "Trip"
    renamed = await store.update_session(ALICE, "s", title="Trip to Lisbon")
    assert renamed.title == "Trip to Lisbon"
    assert await title(store, "s") == "Trip to Lisbon"
    cleared = await store.update_session(ALICE, "s", title="")
    assert cleared.title is None
    assert await title(store, "s") is None
    assert (await store.ensure_session(ALICE, "untitled", title="")).title is None
    with pytest.raises(NotFound):
        await store.update_session(BOB, "s", title="mine now")
    assert [s.title for s in await store.list_sessions(ALICE)] == [None, None]
    page, _ = await store.page_sessions(ALICE, limit=10)
    assert [s.title for s in page] == [None, None]


async def test_the_first_message_names_a_session_without_a_title(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    await send(store, "s", "How do I boil an egg?\nSoft, please.")
    await send(store, "s", "And a hard one?")
    assert await title(store, "s") == "How do I boil an egg?"
    # A session the turn creates is named in the same write.
    await send(store, "new", "  hello   there ", create=True)
    assert await title(store, "new") == "hello there"
    listed = {s.id: s.title for s in await store.list_sessions(ALICE)}
    assert listed == {"s": "How do I boil an egg?", "new": "hello there"}


async def test_a_users_title_is_never_overwritten(store: Store) -> None:
    await store.ensure_session(ALICE, "s", title="Eggs")
    await send(store, "s", "How do I boil an egg?")
    assert await title(store, "s") == "Eggs"
    # A title cleared later stays cleared: only the first turn names a session.
    await store.update_session(ALICE, "s", title="")
    await send(store, "s", "And a hard one?")
    assert await title(store, "s") is None


async def test_a_refused_turn_names_nothing(store: Store) -> None:
    def refuse(settings: SessionSettings) -> TurnPlan:
        raise InputError("no such model")

    await store.ensure_session(ALICE, "s")
    with pytest.raises(InputError):
        await begin_turn(store, ALICE, "s", Message.user("named?"), refuse)
    assert await title(store, "s") is None
    await send(store, "s", "named now")
    assert await title(store, "s") == "named now"


async def test_after_a_reset_the_title_stays_and_an_untitled_session_is_named_again(
    store: Store,
) -> None:
    await store.ensure_session(ALICE, "s")
    await send(store, "s", "first topic")
    await store.reset_session(ALICE, "s")
    await send(store, "s", "second topic")
    assert await title(store, "s") == "first topic"
    await store.update_session(ALICE, "s", title="")
    await store.reset_session(ALICE, "s")
    await send(store, "s", "third topic")
    assert await title(store, "s") == "third topic"


async def test_an_imported_session_keeps_its_title(store: Store) -> None:
    info = await store.import_session(
        ALICE,
        "copy",
        system_prompt=None,
        params=GenerationParams(),
        provider=None,
        turns=[],
        title="Saved chat",
    )
    assert info.title == "Saved chat"
    assert await title(store, "copy") == "Saved chat"
    untitled = await store.import_session(
        ALICE, "bare", system_prompt=None, params=GenerationParams(), provider=None, turns=[]
    )
    assert untitled.title is None
    assert await title(store, "bare") is None
