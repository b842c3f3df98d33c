"""Replacing a session's newest turn, on every store: the open (a read), the commit, the usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from chatd.engine.ports import Store
from chatd.errors import NotFound, NothingToRegenerate, SessionBusy
from chatd.store import SqlStore, open_store
from chatd.testing.turns import begin_turn
from chatd.types import (
    ContextFold,
    FoldRecord,
    Message,
    StopReason,
    TurnPlan,
    TurnRecord,
    TurnState,
    Usage,
    UsageLine,
    UsageQuery,
)

ALICE, BOB = "alice", "bob"
PLAN = TurnPlan("m", "p")
NEW_PLAN = TurnPlan("m2", "p")
EVER = datetime(2000, 1, 1, tzinfo=UTC)
STOP_FOR = {
    TurnState.COMPLETE: StopReason.END_TURN,
    TurnState.TRUNCATED: StopReason.MAX_TOKENS,
    TurnState.REFUSED: StopReason.REFUSAL,
}
FINAL_STATES = [
    TurnState.COMPLETE,
    TurnState.TRUNCATED,
    TurnState.REFUSED,
    TurnState.FAILED,
    TurnState.INTERRUPTED,
]


async def add_turn(
    store: Store,
    session_id: str,
    text: str,
    state: TurnState = TurnState.COMPLETE,
    *,
    key: str | None = None,
    fold: FoldRecord | None = None,
) -> TurnRecord:
    """Store one turn ending in this state (its reply "re: TEXT"); failed ones have none."""
    turn = (
        await begin_turn(store, ALICE, session_id, Message.user(text), PLAN, idempotency_key=key)
    ).record
    if state is TurnState.STREAMING:
        return turn
    failed = state in (TurnState.FAILED, TurnState.INTERRUPTED)
    return await store.finish_turn(
        turn.id,
        state=state,
        messages=[] if failed else [Message.assistant(f"re: {text}")],
        stop_reason=STOP_FOR.get(state),
        usage=Usage(10, 20),
        latency_ms=1.0,
        ttft_ms=1.0,
        error="boom" if failed else None,
        fold=fold,
        cost_micro_usd=7,
    )


async def finish(store: Store, turn_id: str, text: str) -> TurnRecord:
    """Finish a streaming turn, complete, with this reply."""
    return await store.finish_turn(
        turn_id,
        state=TurnState.COMPLETE,
        messages=[Message.assistant(text)],
        stop_reason=StopReason.END_TURN,
        usage=Usage(1, 2),
        latency_ms=1.0,
        ttft_ms=1.0,
        cost_micro_usd=3,
    )


def texts(messages: Sequence[Message]) -> list[str]:
    """Return each message's text."""
    return [m.text for m in messages]


async def two_turns(store: Store, last: TurnState = TurnState.COMPLETE) -> TurnRecord:
    """Store a session "s" with two turns, the newest ending in `last`; return the newest."""
    await store.ensure_session(ALICE, "s")
    await add_turn(store, "s", "one")
    return await add_turn(store, "s", "two", last)


@pytest.mark.parametrize("state", FINAL_STATES)
async def test_the_newest_turn_is_replaced_in_its_place(store: Store, state: TurnState) -> None:
    old = await two_turns(store, state)
    pending = await store.open_regeneration(ALICE, "s")
    assert (pending.turn.id, pending.turn.seq, pending.turn.state) == (old.id, 2, state)
    assert texts(pending.turn.messages)[0] == "two"
    assert pending.turn_id != old.id
    # The history is what came before the replaced turn, whatever its state.
    assert texts(await pending.history(None)) == ["one", "re: one"]
    assert texts((await pending.context(None)).messages) == ["one", "re: one"]
    new = await pending.commit(NEW_PLAN, 30)
    assert (new.id, new.seq, new.state, new.model) == (
        pending.turn_id,
        2,
        TurnState.STREAMING,
        "m2",
    )
    assert texts(new.messages) == ["two"]
    listed = await store.list_turns(ALICE, "s")
    assert [(t.seq, t.id) for t in listed][1:] == [(2, new.id)]
    assert texts(listed[1].messages) == ["two"]
    await finish(store, new.id, "again")
    assert texts(await store.context_messages(ALICE, "s")) == ["one", "re: one", "two", "again"]
    info = await store.get_session(ALICE, "s")
    assert info is not None
    assert (info.turn_count, info.cost_micro_usd) == (2, 7 + 3)
    # The next turn follows it, and sees it.
    after = await begin_turn(store, ALICE, "s", Message.user("three"), PLAN)
    assert after.record.seq == 3
    assert texts(after.history) == ["one", "re: one", "two", "again"]


async def test_the_replaced_turns_usage_stays_counted(store: Store) -> None:
    await two_turns(store)
    by_session = UsageQuery(EVER, None, ALICE, "session")
    before = UsageLine.total(await store.usage_report(by_session))
    pending = await store.open_regeneration(ALICE, "s")
    await finish(store, (await pending.commit(PLAN, 30)).id, "again")
    [line] = await store.usage_report(by_session)
    assert (line.key, line.user_id) == ("s", ALICE)
    # The replaced turn (10 in, 20 out, 7 micro-dollars) with the two stored now.
    assert (line.turns, line.usage.input_tokens, line.usage.output_tokens) == (3, 21, 42)
    assert line.cost_micro_usd == before.cost_micro_usd + 3 == 7 + 7 + 3
    by_day = UsageLine.total(await store.usage_report(UsageQuery(EVER, None, ALICE, "day")))
    assert (by_day.turns, by_day.usage, by_day.cost_micro_usd) == (3, line.usage, 17)


async def test_an_abandoned_regeneration_changes_nothing(store: Store) -> None:
    await two_turns(store)
    before = await store.list_turns(ALICE, "s")
    pending = await store.open_regeneration(ALICE, "s")
    # Held in this process meanwhile: a send (or another regenerate) is refused.
    with pytest.raises(SessionBusy):
        await store.open_regeneration(ALICE, "s")
    with pytest.raises(SessionBusy):
        await add_turn(store, "s", "now")
    pending.abandon()
    assert await store.list_turns(ALICE, "s") == before
    (await store.open_regeneration(ALICE, "s")).abandon()
    await add_turn(store, "s", "now")


async def test_refusals(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.open_regeneration(ALICE, "nowhere")
    await store.ensure_session(ALICE, "s")
    with pytest.raises(NothingToRegenerate, match="no reply to regenerate"):
        await store.open_regeneration(ALICE, "s")
    await add_turn(store, "s", "one")
    with pytest.raises(NotFound):
        await store.open_regeneration(BOB, "s")
    await add_turn(store, "s", "two", TurnState.STREAMING)
    with pytest.raises(SessionBusy):
        await store.open_regeneration(ALICE, "s")
    # Each refusal let the session go.
    assert [t.state for t in await store.list_turns(ALICE, "s")] == [
        TurnState.COMPLETE,
        TurnState.STREAMING,
    ]


async def test_a_turn_whose_process_died_is_replaced(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    await add_turn(store, "s", "one")
    stalled = (await begin_turn(store, ALICE, "s", Message.user("two"), PLAN, lease_s=0.05)).record
    await asyncio.sleep(0.1)
    pending = await store.open_regeneration(ALICE, "s")
    assert pending.turn.id == stalled.id
    new = await pending.commit(PLAN, 30)
    assert [t.id for t in await store.list_turns(ALICE, "s")][1:] == [new.id]


async def test_the_replaced_turns_idempotency_key_moves_to_the_new_turn(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    await add_turn(store, "s", "one", key="k1")
    pending = await store.open_regeneration(ALICE, "s")
    new = await finish(store, (await pending.commit(PLAN, 30)).id, "again")
    # A retried send with the key gets the reply that replaced the first.
    replay = await store.open_turn(ALICE, "s", Message.user("one"), idempotency_key="k1")
    assert isinstance(replay, TurnRecord)
    assert (replay.id, texts(replay.messages)) == (new.id, ["one", "again"])


async def test_the_view_the_replaced_turn_moved_stays_and_is_the_new_turns(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    await add_turn(store, "s", "one")
    # The second turn's call left the first out of the view, with a summary of it.
    fold = FoldRecord(ContextFold(2, "they said one"), "limit", 2)
    await add_turn(store, "s", "two", fold=fold)
    pending = await store.open_regeneration(ALICE, "s")
    history = await pending.context(None)
    assert (history.messages, history.fold) == ((), ContextFold(2, "they said one"))
    new = await finish(store, (await pending.commit(PLAN, 30)).id, "again")
    info = await store.get_session(ALICE, "s")
    assert info is not None
    assert info.fold == ContextFold(2, "they said one")
    after = await begin_turn(store, ALICE, "s", Message.user("three"), PLAN)
    assert texts(after.history) == ["two", "again"]
    if isinstance(store, SqlStore):
        rows = await store.db.read(
            lambda c: c.execute(text("SELECT turn_id, first_turn FROM context_folds")).all()
        )
        assert [tuple(r) for r in rows] == [(new.id, 2)]


@asynccontextmanager
async def elsewhere(store: SqlStore) -> AsyncIterator[SqlStore]:
    """Yield a second store on the same database: another process."""
    other = await open_store(store.db.url.render_as_string(hide_password=False))
    try:
        yield other
    finally:
        await other.close()


async def test_a_stale_read_is_refused_at_the_commit_and_changes_nothing(
    sql_store: SqlStore,
) -> None:
    await two_turns(sql_store)
    pending = await sql_store.open_regeneration(ALICE, "s")
    async with elsewhere(sql_store) as other:
        # Another process ran a turn since the read: the one read is no longer newest.
        await add_turn(other, "s", "meanwhile")
    before = await sql_store.list_turns(ALICE, "s")
    with pytest.raises(SessionBusy):
        await pending.commit(PLAN, 30)
    assert await sql_store.list_turns(ALICE, "s") == before
    assert texts([t.messages[0] for t in before]) == ["one", "two", "meanwhile"]


async def test_of_two_regenerations_read_together_only_one_is_stored(
    sql_store: SqlStore,
) -> None:
    old = await two_turns(sql_store)
    async with elsewhere(sql_store) as other:
        first = await sql_store.open_regeneration(ALICE, "s")
        second = await other.open_regeneration(ALICE, "s")
        await first.commit(PLAN, 30)
        with pytest.raises(SessionBusy):
            await second.commit(PLAN, 30)
    turns = await sql_store.list_turns(ALICE, "s")
    assert [(t.id, t.state) for t in turns][1:] == [(first.turn_id, TurnState.STREAMING)]
    assert old.id not in {t.id for t in turns}


async def test_a_continuation_begun_since_the_read_is_not_replaced(sql_store: SqlStore) -> None:
    await two_turns(sql_store, TurnState.TRUNCATED)
    pending = await sql_store.open_regeneration(ALICE, "s")
    async with elsewhere(sql_store) as other:
        continued = await other.open_continuation(ALICE, "s")
        await continued.commit(PLAN, 30)
    with pytest.raises(SessionBusy):
        await pending.commit(PLAN, 30)
    turns = await sql_store.list_turns(ALICE, "s")
    assert [t.state for t in turns] == [TurnState.COMPLETE, TurnState.STREAMING]
