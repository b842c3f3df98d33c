"""A stop asked for in the store, on every store: marked, not renewed, told, then finished."""

from __future__ import annotations

import asyncio

import pytest

from chatd.engine.ports import Store
from chatd.errors import NotFound
from chatd.testing.turns import begin_turn
from chatd.types import Message, StopReason, TurnPlan, TurnState, Usage

ALICE = "alice"
PLAN = TurnPlan("m", "p")
WHY = "the reply was stopped on request"


async def test_a_stop_marks_the_turn_in_flight_whose_process_then_finishes_it(
    store: Store,
) -> None:
    await store.ensure_session(ALICE, "s")
    turn = (await begin_turn(store, ALICE, "s", Message.user("q"), PLAN)).record
    assert await store.stop_requested([turn.id]) == set()
    assert await store.request_stop(ALICE, "s", WHY) == turn.id
    # Still streaming (the session stays busy) until its process ends it; never renewed.
    assert await store.turn_state(turn.id) is TurnState.STREAMING
    assert await store.stop_requested([turn.id, "no-such-turn"]) == {turn.id}
    assert await store.renew_leases([turn.id], 60) == set()
    [listed] = await store.list_turns(ALICE, "s")
    assert (listed.state, listed.error) == (TurnState.STREAMING, WHY)
    # Asking again finds the same turn.
    assert await store.request_stop(ALICE, "s", WHY) == turn.id
    finished = await store.finish_turn(
        turn.id,
        state=TurnState.INTERRUPTED,
        messages=[Message.assistant("so far")],
        stop_reason=None,
        usage=Usage(10, 3, estimated=True),
        latency_ms=5.0,
        ttft_ms=1.0,
        error=WHY,
    )
    assert finished.state is TurnState.INTERRUPTED
    assert await store.turn_state(turn.id) is TurnState.INTERRUPTED
    assert await store.stop_requested([turn.id]) == set()
    assert await store.request_stop(ALICE, "s", WHY) is None
    [listed] = await store.list_turns(ALICE, "s")
    assert [m.text for m in listed.messages] == ["q", "so far"]
    assert listed.usage == Usage(10, 3, estimated=True)


async def test_nothing_to_stop_is_none_and_a_missing_session_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.request_stop(ALICE, "s", WHY)
    await store.ensure_session(ALICE, "s")
    assert await store.request_stop(ALICE, "s", WHY) is None
    await begin_turn(store, ALICE, "s", Message.user("q"), PLAN)
    # Another user's session is as missing as one that does not exist.
    with pytest.raises(NotFound):
        await store.request_stop("bob", "s", WHY)
    assert await store.turn_state("no-such-turn") is None


async def test_a_turn_whose_lease_ran_out_is_not_in_flight(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    orphan = (await begin_turn(store, ALICE, "s", Message.user("q"), PLAN, lease_s=0.05)).record
    await asyncio.sleep(0.1)
    assert await store.request_stop(ALICE, "s", WHY) is None
    assert await store.stop_requested([orphan.id]) == set()


async def test_a_continued_turn_does_not_inherit_an_earlier_note_as_a_stop(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    turn = (await begin_turn(store, ALICE, "s", Message.user("q"), PLAN)).record
    await store.finish_turn(
        turn.id,
        state=TurnState.TRUNCATED,
        messages=[Message.assistant("part")],
        stop_reason=StopReason.MAX_TOKENS,
        usage=Usage(1, 1),
        latency_ms=1.0,
        ttft_ms=1.0,
        error="the continuation was stopped: the reply was stopped on request",
    )
    pending = await store.open_continuation(ALICE, "s")
    await pending.commit(PLAN, 60)
    assert await store.stop_requested([turn.id]) == set()
    assert await store.renew_leases([turn.id], 60) == {turn.id}
