"""ChatService.stop_turn on both databases: a user's stop of the turn in flight, wherever it runs.

The turn is kept interrupted with what it said so far (outside the model's context) and its
usage charged; its reader gets TurnStoppedOnRequest; the session takes the next send at once.
A turn another process runs stops at that process's next lease renewal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from chatd.engine import ChatService, TurnOptions
from chatd.errors import NotFound, NothingToStop, TurnStoppedOnRequest
from chatd.store import SqlStore, open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.testing.turns import begin_turn
from chatd.types import (
    GenerationParams,
    Message,
    Role,
    TextDelta,
    TurnEnded,
    TurnEvent,
    TurnPlan,
    TurnState,
    Usage,
)

ServiceFactory = Callable[..., Awaitable[ChatService]]
SLOW = "tell me a long story [fake: chunks=200 delay_ms=20]"  # about 4 s of reply
USER = "local"


async def first_text(events: AsyncIterator[TurnEvent]) -> str:
    """Read a turn's events up to its first piece of text; return that text."""
    async for event in events:
        if isinstance(event, TextDelta):
            return event.text
    raise AssertionError("the turn ended before any text")


async def rest_is_stopped(events: AsyncIterator[TurnEvent]) -> tuple[str, BaseException]:
    """Read the rest of a turn's events; return the text they carried and the error at the end."""
    text = ""
    try:
        async for event in events:
            assert not isinstance(event, TurnEnded), "the reply was not stopped"
            if isinstance(event, TextDelta):
                text += event.text
    except Exception as exc:
        return text, exc
    raise AssertionError("the turn ended without an error")


class Charged:
    """A usage sink that keeps what it was charged."""

    def __init__(self) -> None:
        self.usage = Usage()

    async def __call__(self, usage: Usage, model: str) -> None:
        self.usage = self.usage + usage


async def test_a_turn_stopped_here_keeps_what_it_said_outside_the_context(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    await service.reply("s", "hello")
    charged = Charged()
    events = service.turn("s", SLOW, TurnOptions(usage_sink=charged))
    said = await first_text(events)
    ending = asyncio.create_task(rest_is_stopped(events))
    began = time.monotonic()
    stopped = await service.stop_turn(USER, "s")
    assert time.monotonic() - began < 1
    rest, error = await ending
    said += rest
    assert isinstance(error, TurnStoppedOnRequest)
    assert error.status == 409
    assert stopped.state is TurnState.INTERRUPTED
    assert stopped.session_id == "s"
    turns = await service.store.list_turns(USER, "s")
    assert [t.state for t in turns] == [TurnState.COMPLETE, TurnState.INTERRUPTED]
    turn = turns[1]
    assert turn.id == stopped.turn_id
    assert "".join(m.text for m in turn.messages if m.role is Role.ASSISTANT) == said
    assert turn.error == "the reply was stopped on request"
    # Charged, to the turn and to the caller's quota: an estimate, as the usage never came.
    assert turn.usage.output_tokens > 0
    assert turn.usage.estimated
    assert charged.usage == turn.usage
    # The session is free at once; the stopped turn is not in what the model sees.
    end = await service.reply("s", "again")
    assert end.state is TurnState.COMPLETE
    context = await service.store.context_messages(USER, "s")
    assert [m.text for m in context if m.role is Role.USER] == ["hello", "again"]
    with pytest.raises(NothingToStop):
        await service.stop_turn(USER, "s")


async def test_nothing_to_stop_and_no_such_session(service: ChatService) -> None:
    with pytest.raises(NotFound):
        await service.stop_turn(USER, "nobody")
    await service.reply("s", "hello")
    with pytest.raises(NothingToStop, match="no turn is in flight"):
        await service.stop_turn(USER, "s")
    # Another user's session is as missing as one that does not exist.
    events = service.turn("s", SLOW, TurnOptions(on_disconnect="abort"))
    await first_text(events)
    with pytest.raises(NotFound):
        await service.stop_turn("someone-else", "s")
    await events.aclose()  # type: ignore[attr-defined]
    assert await service.wait_idle(10)


async def test_a_turn_another_process_runs_stops_at_its_next_lease_renewal(
    make_service: ServiceFactory, db_store: SqlStore, fake_upstream: FakeUpstream
) -> None:
    service = await make_service("openai", lease_s=0.6)
    await service.reply("s", "hello")
    # Another process: its own store and service, knowing nothing of this one's turns.
    other_store = await open_store(db_store.db.url.render_as_string(hide_password=False))
    other = ChatService(other_store, service.providers, service.config, service.tools)
    try:
        events = service.turn("s", SLOW)
        said = await first_text(events)
        ending = asyncio.create_task(rest_is_stopped(events))
        began = time.monotonic()
        stopped = await other.stop_turn(USER, "s")
        took = time.monotonic() - began
        rest, error = await ending
    finally:
        await other_store.close()
    said += rest
    # Answered once the process running it stopped it (within a renewal) and stored its end.
    assert stopped.state is TurnState.INTERRUPTED
    assert took < 1.5
    assert isinstance(error, TurnStoppedOnRequest)
    turns = await db_store.list_turns(USER, "s")
    assert [t.state for t in turns] == [TurnState.COMPLETE, TurnState.INTERRUPTED]
    assert turns[1].id == stopped.turn_id
    assert "".join(m.text for m in turns[1].messages if m.role is Role.ASSISTANT) == said
    assert turns[1].usage.output_tokens > 0
    assert (await service.reply("s", "again")).state is TurnState.COMPLETE


async def test_a_stop_for_a_process_that_died_answers_once_its_lease_ran_out(
    make_service: ServiceFactory, db_store: SqlStore
) -> None:
    service = await make_service("anthropic", lease_s=0.5)
    await db_store.ensure_session(USER, "s")
    # A process that began a turn and died: nobody renews this lease, nobody stops it.
    start = await begin_turn(
        db_store, USER, "s", Message.user("lost"), TurnPlan("m", "p"), lease_s=0.5
    )
    began = time.monotonic()
    stopped = await service.stop_turn(USER, "s")
    assert stopped.turn_id == start.record.id
    assert stopped.state is TurnState.INTERRUPTED
    assert time.monotonic() - began < 3
    assert (await service.reply("s", "again")).state is TurnState.COMPLETE


async def test_a_stopped_continuation_leaves_its_reply_truncated(
    make_service: ServiceFactory,
) -> None:
    service = await make_service("anthropic")
    cut = GenerationParams(max_tokens=10)
    first = await service.reply(
        "s", "tell me [fake: words=40 chunks=100 delay_ms=20]", TurnOptions(params=cut)
    )
    assert first.state is TurnState.TRUNCATED
    events = service.continue_turn("s", TurnOptions(params=GenerationParams(max_tokens=1000)))
    said = await first_text(events)
    ending = asyncio.create_task(rest_is_stopped(events))
    stopped = await service.stop_turn(USER, "s")
    rest, error = await ending
    assert isinstance(error, TurnStoppedOnRequest)
    assert stopped.state is TurnState.TRUNCATED
    [turn] = await service.store.list_turns(USER, "s")
    assert turn.state is TurnState.TRUNCATED
    assert turn.error == "the continuation was stopped: the reply was stopped on request"
    assert turn.messages[1].text == first.text
    assert turn.messages[2].text == said + rest
