"""Regenerating the last reply through the engine: a new turn in the old one's place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select

from chatd.engine import ChatService, TurnOptions
from chatd.errors import ConfigError, NotFound, NothingToRegenerate, SessionBusy
from chatd.store import SqlStore
from chatd.store.tables import context_folds
from chatd.testing.fake_upstream import FakeUpstream, RecordedRequest
from chatd.types import (
    ContextChanged,
    GenerationParams,
    TextDelta,
    TurnEnded,
    TurnEvent,
    TurnStarted,
    TurnState,
)

ServiceFactory = Callable[..., Awaitable[ChatService]]
# Another temperature: the fake's reply digests the request, so it says something else.
AGAIN = TurnOptions(params=GenerationParams(temperature=0.5))


async def run(service: ChatService, session: str, text: str) -> list[TurnEvent]:
    """Run a turn to the end and return its events."""
    return [e async for e in service.turn(session, text, TurnOptions())]


async def regenerate(
    service: ChatService, session: str, options: TurnOptions = AGAIN
) -> list[TurnEvent]:
    """Regenerate the session's last reply to the end and return the events."""
    return [e async for e in service.regenerate(session, options)]


def ended(events: list[TurnEvent]) -> TurnEnded:
    """Return the final event, checking it is last and unique."""
    assert isinstance(events[-1], TurnEnded)
    assert sum(isinstance(e, TurnEnded) for e in events) == 1
    return events[-1]


def conversation(request: RecordedRequest) -> list[tuple[str, str]]:
    """Return a wire request's user and assistant messages as (role, text)."""
    found = []
    for m in request.body["messages"]:
        if m["role"] not in ("user", "assistant"):
            continue
        content = m["content"]
        if not isinstance(content, str):
            content = "".join(b.get("text", "") for b in content if b.get("type") == "text")
        found.append((m["role"], content))
    return found


def carried(request: RecordedRequest) -> str:
    """Return everything a request says besides its messages: its system prompt and summary."""
    body = request.body
    system = body.get("system") or ""
    if isinstance(system, list):
        system = " ".join(b["text"] for b in system)
    rest = [m["content"] for m in body["messages"] if m["role"] == "system"]
    return " ".join([system, *[str(r) for r in rest]])


async def test_the_last_reply_is_asked_again_and_replaced(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    first = ended(await run(service, "s", "hi"))
    old = ended(await run(service, "s", "a joke please"))
    events = await regenerate(service, "s")
    assert isinstance(events[0], TurnStarted)
    new = ended(events)
    assert new.turn_id == events[0].turn_id != old.turn_id
    assert new.state is TurnState.COMPLETE
    assert new.text == "".join(e.text for e in events if isinstance(e, TextDelta))
    assert new.text != old.text
    assert conversation(fake_upstream.requests[-1]) == [
        ("user", "hi"),
        ("assistant", first.text),
        ("user", "a joke please"),
    ]
    turns = await service.store.list_turns("local", "s")
    assert [(t.id, t.seq) for t in turns] == [(first.turn_id, 1), (new.turn_id, 2)]
    context = await service.store.context_messages("local", "s")
    assert [m.text for m in context] == ["hi", first.text, "a joke please", new.text]


async def test_refusals_change_nothing(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic", models=("test-model",))
    with pytest.raises(NotFound):
        await regenerate(service, "nowhere")
    await service.store.ensure_session("local", "s")
    with pytest.raises(NothingToRegenerate):
        await regenerate(service, "s")
    await run(service, "s", "hi")
    before = await service.store.list_turns("local", "s")
    other = TurnOptions(params=GenerationParams(model="not-allowed"))
    with pytest.raises(ConfigError, match="not allowed"):
        await regenerate(service, "s", other)
    with pytest.raises(NotFound):
        await regenerate(service, "s", TurnOptions(user_id="bob"))
    assert await service.store.list_turns("local", "s") == before
    # Nothing held the session: it takes a regenerate now.
    assert ended(await regenerate(service, "s")).state is TurnState.COMPLETE


async def test_a_regenerate_stopped_midway_is_kept_interrupted_in_the_old_ones_place(
    make_service: ServiceFactory,
) -> None:
    service = await make_service("anthropic")
    old = ended(await run(service, "s", "long [fake: chunks=8 delay_ms=50]"))
    aborting = TurnOptions(params=GenerationParams(temperature=0.5), on_disconnect="abort")
    events = service.regenerate("s", aborting)
    started = await anext(events)
    assert isinstance(started, TurnStarted)
    with pytest.raises(SessionBusy):
        await regenerate(service, "s")
    await events.aclose()  # type: ignore[attr-defined]
    await service.wait_idle(10)
    [turn] = await service.store.list_turns("local", "s")
    # Replaced when it began: the old reply is gone, the new one stopped where it was.
    assert (turn.id, turn.state) == (started.turn_id, TurnState.INTERRUPTED)
    assert turn.id != old.turn_id


async def test_a_regenerated_turn_sees_the_view_and_summary_its_predecessor_moved_to(
    make_service: ServiceFactory, fake_upstream: FakeUpstream, db_store: SqlStore
) -> None:
    service = await make_service("anthropic")
    params = GenerationParams(context_policy="summary", context_limit=2)
    await service.store.ensure_session("local", "c", params=params)
    moved: list[ContextChanged] = []
    for n in range(8):
        events = await run(service, "c", f"point {n}")
        moved = [e for e in events if isinstance(e, ContextChanged)]
        if moved and moved[0].summarized:
            break
    assert moved, "the last turn moved the view and summarised what it left out"
    replaced = fake_upstream.requests[-1]
    info = await service.store.get_session("local", "c")
    assert info is not None
    assert info.fold.summary
    events = await regenerate(service, "c")
    new = ended(events)
    # The same view: no move, the same messages and the same summary as the replaced call.
    assert not [e for e in events if isinstance(e, ContextChanged)]
    again = fake_upstream.requests[-1]
    assert conversation(again) == conversation(replaced)
    assert info.fold.summary in carried(again)
    after = await service.store.get_session("local", "c")
    assert after is not None
    assert (after.fold, after.turn_count) == (info.fold, info.turn_count)
    folds = await db_store.db.read(
        lambda c: c.execute(select(context_folds.c.turn_id, context_folds.c.first_turn)).all()
    )
    # The view change made for the replaced turn is now the new turn's.
    assert folds[-1] == (new.turn_id, info.fold.first_turn)
    turn_ids = {t.id for t in await service.store.list_turns("local", "c")}
    assert {f[0] for f in folds} <= turn_ids
