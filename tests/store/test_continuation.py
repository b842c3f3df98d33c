"""Continuing a truncated turn, on every store: the open (a read), the claim, the finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from chatd.engine.ports import Store
from chatd.errors import NotFound, NothingToContinue, SessionBusy
from chatd.store import SqlStore, open_store
from chatd.store.rows import CONTINUATION_EXPIRED
from chatd.testing.turns import begin_turn
from chatd.types import Message, StopReason, TurnPlan, TurnRecord, TurnState, TurnTokens, Usage

ALICE = "alice"
PLAN = TurnPlan("m", "p")
STOP_FOR = {
    TurnState.COMPLETE: StopReason.END_TURN,
    TurnState.TRUNCATED: StopReason.MAX_TOKENS,
    TurnState.REFUSED: StopReason.REFUSAL,
}


async def add_turn(
    store: Store, user_id: str, session_id: str, text: str, state: TurnState = TurnState.COMPLETE
) -> TurnRecord:
    """Store one turn ending in this state (its reply "re: TEXT"); failed ones have none."""
    turn = (await begin_turn(store, user_id, session_id, Message.user(text), PLAN)).record
    if state is TurnState.STREAMING:
        return turn
    failed = state is TurnState.FAILED
    return await store.finish_turn(
        turn.id,
        state=state,
        messages=[] if failed else [Message.assistant(f"re: {text}")],
        stop_reason=STOP_FOR.get(state),
        usage=Usage(10, 20),
        latency_ms=12.5,
        ttft_ms=2.5,
        error="upstream exploded" if failed else None,
    )


def texts(messages: Sequence[Message]) -> list[str]:
    """Return each message's text."""
    return [m.text for m in messages]


async def truncated(store: Store, session_id: str = "s") -> None:
    """Store one complete turn, then a truncated one, newest."""
    await store.ensure_session(ALICE, session_id)
    await add_turn(store, ALICE, session_id, "hi")
    await add_turn(store, ALICE, session_id, "long", TurnState.TRUNCATED)


async def finish(store: Store, turn_id: str, text: str, state: TurnState) -> None:
    """Finish a continued turn with one more assistant message."""
    await store.finish_turn(
        turn_id,
        state=state,
        messages=[Message.assistant(text)],
        stop_reason=StopReason.END_TURN,
        usage=Usage(1, 2),
        latency_ms=3.0,
        ttft_ms=1.0,
    )


async def test_a_truncated_turn_streams_again_and_its_continuation_is_appended(
    store: Store,
) -> None:
    await truncated(store)
    pending = await store.open_continuation(ALICE, "s")
    cut = pending.turn
    assert (cut.seq, cut.state, texts(cut.messages)) == (
        2,
        TurnState.TRUNCATED,
        ["long", "re: long"],
    )
    assert pending.turn_id == cut.id
    # The history the model sees ends with the truncated reply itself.
    history = await pending.history(None)
    assert texts(history) == ["hi", "re: hi", "long", "re: long"]
    record = await pending.commit(PLAN, 30)
    assert (record.id, record.state) == (cut.id, TurnState.STREAMING)
    assert [t.state for t in await store.list_turns(ALICE, "s")][-1] is TurnState.STREAMING
    await finish(store, cut.id, " and the rest", TurnState.COMPLETE)
    turns = await store.list_turns(ALICE, "s")
    assert len(turns) == 2
    assert texts(turns[1].messages) == ["long", "re: long", " and the rest"]
    assert turns[1].state is TurnState.COMPLETE
    assert texts(await store.context_messages(ALICE, "s"))[-2:] == ["re: long", " and the rest"]
    # A new turn after it comes next, after every part.
    await add_turn(store, ALICE, "s", "next")
    assert texts(await store.context_messages(ALICE, "s"))[-3:] == [
        " and the rest",
        "next",
        "re: next",
    ]


@pytest.mark.parametrize("state", [TurnState.COMPLETE, TurnState.FAILED, TurnState.REFUSED])
async def test_only_a_truncated_newest_turn_can_be_continued(
    store: Store, state: TurnState
) -> None:
    with pytest.raises(NotFound):
        await store.open_continuation(ALICE, "nowhere")
    await store.ensure_session(ALICE, "s")
    with pytest.raises(NothingToContinue, match="no reply to continue"):
        await store.open_continuation(ALICE, "s")
    await add_turn(store, ALICE, "s", "long", TurnState.TRUNCATED)
    await add_turn(store, ALICE, "s", "then", state)
    before = await store.list_turns(ALICE, "s")
    with pytest.raises(NothingToContinue, match=f"is {state.value}, not truncated"):
        await store.open_continuation(ALICE, "s")
    assert await store.list_turns(ALICE, "s") == before
    # The refusal let the session go: a new turn can begin.
    await add_turn(store, ALICE, "s", "again")


async def test_a_continuation_is_refused_while_a_turn_is_in_flight(store: Store) -> None:
    await truncated(store)
    await add_turn(store, ALICE, "s", "now", TurnState.STREAMING)
    with pytest.raises(SessionBusy):
        await store.open_continuation(ALICE, "s")


async def test_a_second_open_in_this_process_is_refused_until_the_first_lets_go(
    store: Store,
) -> None:
    await truncated(store)
    pending = await store.open_continuation(ALICE, "s")
    with pytest.raises(SessionBusy):
        await store.open_continuation(ALICE, "s")
    with pytest.raises(SessionBusy):
        await add_turn(store, ALICE, "s", "now")
    pending.abandon()
    (await store.open_continuation(ALICE, "s")).abandon()


@asynccontextmanager
async def elsewhere(store: SqlStore) -> AsyncIterator[SqlStore]:
    """Yield a second store on the same database: another process."""
    other = await open_store(store.db.url.render_as_string(hide_password=False))
    try:
        yield other
    finally:
        await other.close()


async def test_a_stale_read_is_refused_at_the_claim_and_changes_nothing(
    sql_store: SqlStore,
) -> None:
    await truncated(sql_store)
    pending = await sql_store.open_continuation(ALICE, "s")
    async with elsewhere(sql_store) as other:
        # Another process ran a turn since the read: the truncated one is no longer newest.
        await add_turn(other, ALICE, "s", "meanwhile")
    with pytest.raises(SessionBusy):
        await pending.commit(PLAN, 30)
    turns = await sql_store.list_turns(ALICE, "s")
    assert [t.state for t in turns] == [TurnState.COMPLETE, TurnState.TRUNCATED, TurnState.COMPLETE]


async def test_of_two_continuations_read_together_only_one_is_claimed(
    sql_store: SqlStore,
) -> None:
    await truncated(sql_store)
    async with elsewhere(sql_store) as other:
        first = await sql_store.open_continuation(ALICE, "s")
        second = await other.open_continuation(ALICE, "s")
        await first.commit(PLAN, 30)
        with pytest.raises(SessionBusy):
            await second.commit(PLAN, 30)
    turns = await sql_store.list_turns(ALICE, "s")
    assert [t.state for t in turns] == [TurnState.COMPLETE, TurnState.STREAMING]


async def test_a_continuation_whose_process_died_leaves_the_turn_truncated(store: Store) -> None:
    await truncated(store)
    pending = await store.open_continuation(ALICE, "s")
    cut = (await pending.commit(PLAN, 0.05)).id
    await asyncio.sleep(0.1)
    # The sweep puts it back as it was, in context, rather than interrupting it out of context.
    assert await store.expire_leases() == 1
    turn = (await store.list_turns(ALICE, "s"))[-1]
    assert (turn.id, turn.state, turn.error) == (cut, TurnState.TRUNCATED, CONTINUATION_EXPIRED)
    assert texts(turn.messages) == ["long", "re: long"]
    assert texts(await store.context_messages(ALICE, "s"))[-1] == "re: long"
    # And it can be continued again; so can one the sweep has not reached yet.
    again = await store.open_continuation(ALICE, "s")
    await again.commit(PLAN, 0.05)
    await asyncio.sleep(0.1)
    last = await store.open_continuation(ALICE, "s")
    assert last.turn.id == cut
    await last.commit(PLAN, 30)
    await finish(store, cut, " done", TurnState.COMPLETE)
    turn = (await store.list_turns(ALICE, "s"))[-1]
    assert (turn.state, turn.error) == (TurnState.COMPLETE, None)
    assert texts(turn.messages) == ["long", "re: long", " done"]


async def test_a_fresh_turn_whose_process_died_is_still_interrupted(store: Store) -> None:
    await truncated(store)
    turn = await add_turn(store, ALICE, "s", "q", TurnState.STREAMING)
    await store.renew_leases([turn.id], -1)
    assert await store.expire_leases() == 1
    assert (await store.list_turns(ALICE, "s"))[-1].state is TurnState.INTERRUPTED


async def test_a_continued_turn_keeps_the_sizes_its_first_part_learned(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    cut = (await begin_turn(store, ALICE, "s", Message.user("long"), PLAN)).record
    await store.finish_turn(
        cut.id,
        state=TurnState.TRUNCATED,
        messages=[Message.assistant("part one")],
        stop_reason=StopReason.MAX_TOKENS,
        usage=Usage(10, 3),
        latency_ms=1.0,
        ttft_ms=1.0,
        tokens=TurnTokens(user=7, reply=(3,), context=20),
    )
    await (await store.open_continuation(ALICE, "s")).commit(PLAN, 30)
    await store.finish_turn(
        cut.id,
        state=TurnState.COMPLETE,
        messages=[Message.assistant(" and two")],
        stop_reason=StopReason.END_TURN,
        usage=Usage(23, 4),
        latency_ms=1.0,
        ttft_ms=1.0,
        tokens=TurnTokens(reply=(4,), context=24),
    )
    [turn] = await store.list_turns(ALICE, "s")
    assert turn.tokens == (7, 3, 4)
