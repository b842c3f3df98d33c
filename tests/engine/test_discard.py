"""Promise 1 on both databases: a refused turn changes nothing; a session deleted or reset
while its reply streams ends that reply clearly, stops the model call and keeps nothing of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from chatd.engine import ChatService, TurnOptions
from chatd.errors import ConfigError, SessionBusy, TurnDiscarded
from chatd.store import SqlStore, open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import TextDelta, TurnEnded, TurnEvent, TurnState

ServiceFactory = Callable[..., Awaitable[ChatService]]
SLOW = "tell me a long story [fake: chunks=200 delay_ms=20]"  # about 4 s of reply
USER = "local"


async def first_text(events: AsyncIterator[TurnEvent]) -> None:
    """Read a turn's events up to its first piece of text."""
    async for event in events:
        if isinstance(event, TextDelta):
            return
    raise AssertionError("the turn ended before any text")


async def rest_fails(events: AsyncIterator[TurnEvent]) -> tuple[BaseException, float]:
    """Read the rest of a turn's events; return the error that ended it and when it came."""
    try:
        async for event in events:
            assert not isinstance(event, TurnEnded), "the reply was not stopped"
    except Exception as exc:
        return exc, time.monotonic()
    raise AssertionError("the turn ended without an error")


async def cut_short(fake: FakeUpstream) -> list[int]:
    """Return how many deltas each abandoned upstream stream sent, once the fake noticed."""
    for _ in range(100):
        if fake.cut_short:
            break
        await asyncio.sleep(0.02)
    return [sent for _, sent in fake.cut_short]


@pytest.mark.parametrize("how", ["deleted", "reset"])
async def test_deleting_or_resetting_a_session_mid_reply_stops_it_at_once(
    service: ChatService, fake_upstream: FakeUpstream, how: str
) -> None:
    await service.reply("s", "hello")
    events = service.turn("s", SLOW)
    await first_text(events)
    ending = asyncio.create_task(rest_fails(events))
    began = time.monotonic()
    if how == "deleted":
        assert await service.delete_session(USER, "s") is True
    else:
        assert await service.reset_session(USER, "s") == 2
    error, ended = await ending
    assert isinstance(error, TurnDiscarded)
    assert error.status == 409
    assert f"session was {how} while the reply was streaming" in error.message
    assert ended - began < 1
    # The model call was called off, long before its 200 deltas.
    sent = await cut_short(fake_upstream)
    assert len(sent) == 1
    assert sent[0] < 100
    # Nothing half-written remains; a reset session takes the next send as usual.
    if how == "deleted":
        assert await service.store.get_session(USER, "s") is None
    else:
        assert await service.store.list_turns(USER, "s") == []
    end = await service.reply("s", "again")
    assert end.state is TurnState.COMPLETE
    assert [t.state for t in await service.store.list_turns(USER, "s")] == [TurnState.COMPLETE]


@pytest.mark.parametrize("how", ["deleted", "reset"])
async def test_a_session_deleted_by_another_process_stops_its_reply_at_the_next_renewal(
    make_service: ServiceFactory,
    db_store: SqlStore,
    fake_upstream: FakeUpstream,
    how: str,
) -> None:
    service = await make_service("openai", lease_s=0.6)
    await service.reply("s", "hello")
    # Another process (a second server, `chatd sessions delete`): its own store, not this service.
    other = await open_store(db_store.db.url.render_as_string(hide_password=False))
    try:
        events = service.turn("s", SLOW)
        await first_text(events)
        ending = asyncio.create_task(rest_fails(events))
        began = time.monotonic()
        if how == "deleted":
            assert await other.delete_session(USER, "s") is True
        else:
            assert await other.reset_session(USER, "s") == 2
        error, ended = await ending
    finally:
        await other.close()
    # Not a lost lease (StoreUnavailable): the turn is gone with its session.
    assert isinstance(error, TurnDiscarded)
    assert "deleted or reset while the reply was streaming" in error.message
    assert ended - began < 1.5
    assert (await cut_short(fake_upstream))[0] < 100
    assert await service.wait_idle(5)
    if how == "reset":
        assert await db_store.list_turns(USER, "s") == []
        assert (await service.reply("s", "again")).state is TurnState.COMPLETE


async def test_a_refused_turn_leaves_the_system_prompt_as_it_was(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    store = service.store
    await store.ensure_session(USER, "s", system_prompt="Be brief.")
    events = service.turn("s", SLOW, TurnOptions(on_disconnect="abort"))
    await first_text(events)
    # Busy: another turn is streaming on the session.
    with pytest.raises(SessionBusy):
        await service.reply("s", "hi", TurnOptions(session_prompt="Be verbose."))
    assert (await store.get_session(USER, "s")).system_prompt == "Be brief."  # type: ignore[union-attr]
    await events.aclose()  # type: ignore[attr-defined]
    assert await service.wait_idle(10)
    # Refused by the planner: a provider this server does not have.
    with pytest.raises(ConfigError):
        await service.reply("s", "hi", TurnOptions(session_prompt="Be verbose.", provider="nope"))
    assert (await store.get_session(USER, "s")).system_prompt == "Be brief."  # type: ignore[union-attr]
    # Accepted: the prompt changes with the turn, and this turn's request already carries it.
    fake_upstream.clear()
    await service.reply("s", "hi", TurnOptions(session_prompt="Be verbose."))
    assert (await store.get_session(USER, "s")).system_prompt == "Be verbose."  # type: ignore[union-attr]
    sent = fake_upstream.requests[-1].body
    assert "Be verbose." in str(sent.get("system") or sent["messages"][0])
