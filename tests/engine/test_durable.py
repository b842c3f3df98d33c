"""Promises 1 and 2 on both databases: one turn in flight, idempotency, leases, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest

from chatd.engine import ChatService, TurnOptions
from chatd.engine.ports import PendingTurn, Store
from chatd.errors import IdempotencyConflict, SessionBusy, StoreUnavailable, UpstreamUnavailable
from chatd.store import SqlStore, open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.testing.turns import begin_turn
from chatd.types import (
    Message,
    Role,
    StopReason,
    TextDelta,
    TurnEnded,
    TurnEvent,
    TurnPlan,
    TurnRecord,
    TurnState,
    Usage,
)

PLAN = TurnPlan("m", "p")

ServiceFactory = Callable[..., Awaitable[ChatService]]


async def run(service: ChatService, text: str, **opts: object) -> list[TurnEvent]:
    """Run a turn on session s to the end and return its events."""
    return [e async for e in service.turn("s", text, TurnOptions(**opts))]  # type: ignore[arg-type]


def last(events: list[TurnEvent]) -> TurnEnded:
    """Return the TurnEnded that closes a turn's events."""
    assert isinstance(events[-1], TurnEnded)
    return events[-1]


async def test_concurrent_sends_let_exactly_one_through(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    await run(service, "warm up")
    outcomes = await asyncio.gather(
        *(run(service, f"message {i} [fake: chunks=3 delay_ms=200]") for i in range(8)),
        return_exceptions=True,
    )
    done = [o for o in outcomes if isinstance(o, list)]
    busy = [o for o in outcomes if isinstance(o, SessionBusy)]
    assert len(done) == 1
    assert len(busy) == 7
    assert busy[0].status == 409
    context = await service.store.context_messages("local", "s")
    assert [m.role for m in context] == [Role.USER, Role.ASSISTANT] * 2
    assert len(await service.store.list_turns("local", "s")) == 2
    await asyncio.sleep(0.1)  # for a request the fake had yet to record
    # The refused sends never reached the model (the warm-up and the one let through did).
    assert len(fake_upstream.requests) == 2


async def test_concurrent_sends_from_two_processes_let_exactly_one_through(
    service: ChatService,
) -> None:
    store = service.store
    assert isinstance(store, SqlStore)
    await run(service, "warm up")
    # Another process: its own store (connections, and no knowledge of this one's turns).
    other_store = await open_store(store.db.url.render_as_string(hide_password=False))
    other = ChatService(other_store, service.providers, service.config, service.tools)
    try:
        sends = [
            run(chat, f"message {i} [fake: chunks=3 delay_ms=100]")
            for i in range(4)
            for chat in (service, other)
        ]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        assert await other.wait_idle(5)
        assert await service.wait_idle(5)
    finally:
        await other_store.close()
    done = [o for o in outcomes if isinstance(o, list)]
    assert len(done) == 1, outcomes
    assert all(isinstance(o, SessionBusy) for o in outcomes if not isinstance(o, list))
    turns = await store.list_turns("local", "s")
    assert [t.state for t in turns] == [TurnState.COMPLETE] * 2
    context = await store.context_messages("local", "s")
    assert [m.role for m in context] == [Role.USER, Role.ASSISTANT] * 2
    assert context[3].text == last(done[0]).text


async def test_a_send_while_a_reply_streams_fails_fast(service: ChatService) -> None:
    stream = service.turn("s", "long [fake: chunks=5 delay_ms=100]")
    first = await anext(stream)  # type: ignore[call-overload]
    assert first.kind == "message_start"
    with pytest.raises(SessionBusy):
        await asyncio.wait_for(run(service, "second"), timeout=5)
    rest = [e async for e in stream]
    assert last(rest).state is TurnState.COMPLETE


async def test_a_send_while_a_reply_streams_never_reaches_the_model(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    stream = service.turn("s", "long [fake: chunks=3 delay_ms=100]")
    await anext(stream)  # type: ignore[call-overload]
    with pytest.raises(SessionBusy):
        await run(service, "second")
    assert last([e async for e in stream]).state is TurnState.COMPLETE
    await asyncio.sleep(0.1)  # for a request the fake had yet to record
    # Refused on what the turn's read saw, before any model call: nobody pays for it.
    assert len(fake_upstream.requests) == 1


class _FinishedMeanwhile:
    """The real store, but a stalled turn's process completes it while a new turn launches."""

    def __init__(self, store: Store, stalled: str) -> None:
        self.store = store
        self.stalled = stalled

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def open_turn(self, *args: Any, **kwargs: Any) -> PendingTurn | TurnRecord:
        opened = await self.store.open_turn(*args, **kwargs)
        assert not isinstance(opened, TurnRecord)
        real_commit = opened.commit

        async def commit(plan: TurnPlan, lease_s: float) -> TurnRecord:
            # The model call was launched; before the write, the stalled turn completes.
            done = [Message.assistant("late")]
            await self.store.finish_turn(
                self.stalled,
                state=TurnState.COMPLETE,
                messages=done,
                stop_reason=StopReason.END_TURN,
                usage=Usage(),
                latency_ms=None,
                ttft_ms=None,
            )
            return await real_commit(plan, lease_s)

        cast(Any, opened).commit = commit
        return opened


async def test_a_turn_that_could_not_be_stored_calls_its_model_call_off(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    store = service.store
    await store.ensure_session("local", "s")
    stalled = await begin_turn(store, "local", "s", Message.user("slow"), PLAN, lease_s=0.05)
    await asyncio.sleep(0.1)
    service.store = cast(Store, _FinishedMeanwhile(store, stalled.record.id))
    with pytest.raises(SessionBusy):
        await run(service, "new [fake: chunks=5 delay_ms=200]")
    # The model call had started (it overlaps the store's write) and is stopped, not left
    # waiting for a turn that will never be stored.
    assert await service.wait_idle(1.0)
    turns = await store.list_turns("local", "s")
    assert [(t.id, t.state) for t in turns] == [(stalled.record.id, TurnState.COMPLETE)]


async def test_idempotent_retry_returns_the_first_turn_and_stores_one(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    first = last(await run(service, "hello", idempotency_key="k1"))
    again = await run(service, "hello", idempotency_key="k1")
    assert last(again).turn_id == first.turn_id
    assert last(again).text == first.text
    assert "".join(e.text for e in again if isinstance(e, TextDelta)) == first.text
    assert len(fake_upstream.requests) == 1
    assert len(await service.store.list_turns("local", "s")) == 1


async def test_same_key_with_another_message_is_a_conflict(service: ChatService) -> None:
    await run(service, "hello", idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        await run(service, "something else", idempotency_key="k1")
    assert len(await service.store.list_turns("local", "s")) == 1


async def test_same_key_while_the_first_is_running_is_busy(service: ChatService) -> None:
    stream = service.turn(
        "s", "slow [fake: chunks=4 delay_ms=100]", TurnOptions(idempotency_key="k")
    )
    await anext(stream)  # type: ignore[call-overload]
    with pytest.raises(SessionBusy):
        await run(service, "slow [fake: chunks=4 delay_ms=100]", idempotency_key="k")
    assert last([e async for e in stream]).state is TurnState.COMPLETE


async def test_a_failed_turn_frees_its_key_for_a_real_retry(service: ChatService) -> None:
    with pytest.raises(UpstreamUnavailable):
        await run(service, "hi [fake: status=503 fail_times=3]", idempotency_key="k")
    end = last(await run(service, "hi [fake: status=503 fail_times=3]", idempotency_key="k"))
    assert end.state is TurnState.COMPLETE
    states = [t.state for t in await service.store.list_turns("local", "s")]
    assert states == [TurnState.FAILED, TurnState.COMPLETE]


async def test_a_retry_after_a_crash_takes_over_its_key_once_the_lease_runs_out(
    service: ChatService,
) -> None:
    store = service.store
    await store.ensure_session("local", "s")
    # The first attempt's process died mid-turn: its turn is still marked streaming.
    crashed = await begin_turn(
        store, "local", "s", Message.user("hello"), PLAN, lease_s=0.05, idempotency_key="k"
    )
    await asyncio.sleep(0.1)
    end = last(await run(service, "hello", idempotency_key="k"))
    assert end.state is TurnState.COMPLETE
    turns = await store.list_turns("local", "s")
    assert [(t.id, t.state) for t in turns] == [
        (crashed.record.id, TurnState.INTERRUPTED),
        (end.turn_id, TurnState.COMPLETE),
    ]
    # The key now answers with the retry's turn.
    again = last(await run(service, "hello", idempotency_key="k"))
    assert again.turn_id == end.turn_id


async def test_an_orphaned_turn_is_interrupted_once_its_lease_runs_out(
    service: ChatService,
) -> None:
    store = service.store
    await store.ensure_session("local", "s")
    # A process that began a turn and died: nobody renews this lease.
    start = await begin_turn(store, "local", "s", Message.user("lost"), PLAN, lease_s=0.2)
    orphan = start.record
    with pytest.raises(SessionBusy):
        await run(service, "too soon")
    await asyncio.sleep(0.3)
    end = last(await run(service, "after the lease"))
    assert end.state is TurnState.COMPLETE
    turns = await store.list_turns("local", "s")
    assert [t.state for t in turns] == [TurnState.INTERRUPTED, TurnState.COMPLETE]
    assert turns[0].id == orphan.id
    assert turns[0].messages[0].text == "lost"
    assert turns[0].error is not None
    assert "lease" in turns[0].error


async def test_the_sweep_marks_expired_turns_across_sessions(service: ChatService) -> None:
    store = service.store
    for sid in ("a", "b"):
        await store.ensure_session("local", sid)
        await begin_turn(store, "local", sid, Message.user("x"), PLAN, lease_s=0.05)
    await asyncio.sleep(0.1)
    assert await store.expire_leases() == 2
    assert await store.expire_leases() == 0
    for sid in ("a", "b"):
        assert [t.state for t in await store.list_turns("local", sid)] == [TurnState.INTERRUPTED]


async def test_a_live_turn_keeps_renewing_its_lease(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic", lease_s=0.3)
    end = last(await run(service, "slow [fake: chunks=8 delay_ms=100]"))
    assert end.state is TurnState.COMPLETE
    assert await service.store.expire_leases() == 0


async def test_a_turn_that_lost_its_lease_stops(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic", lease_s=0.3)
    stream = service.turn("s", "slow [fake: chunks=20 delay_ms=100]")
    await anext(stream)  # type: ignore[call-overload]
    # Another process's sweep decides this turn is dead (as if its renewals never landed).
    assert await _force_expire(service)
    with pytest.raises(StoreUnavailable, match="lease"):
        await asyncio.wait_for(drain(stream), timeout=5)
    turn = (await service.store.list_turns("local", "s"))[-1]
    assert turn.state is TurnState.INTERRUPTED


async def drain(stream: AsyncIterator[TurnEvent]) -> None:
    """Consume the rest of a turn's events."""
    async for _ in stream:
        pass


async def _force_expire(service: ChatService) -> bool:
    from sqlalchemy import update

    from chatd.store import SqlStore
    from chatd.store.rows import utc_now
    from chatd.store.tables import turns

    assert isinstance(service.store, SqlStore)
    expired = update(turns).where(turns.c.state == "streaming").values(lease_until=utc_now())
    await service.store.db.write(lambda c: c.execute(expired))
    return await service.store.expire_leases() == 1


async def test_shutdown_lets_turns_in_flight_finish(service: ChatService) -> None:
    stream = service.turn("s", "bye [fake: chunks=4 delay_ms=50]")
    await anext(stream)  # type: ignore[call-overload]
    await stream.aclose()  # type: ignore[attr-defined]
    await service.aclose(grace_s=10)
    turns = await service.store.list_turns("local", "s")
    assert [t.state for t in turns] == [TurnState.COMPLETE]


async def test_shutdown_past_the_grace_period_interrupts_the_turn(service: ChatService) -> None:
    stream = service.turn("s", "long [fake: chunks=50 delay_ms=100]")
    await anext(stream)  # type: ignore[call-overload]
    await stream.aclose()  # type: ignore[attr-defined]
    await service.aclose(grace_s=0.2)
    turns = await service.store.list_turns("local", "s")
    assert [t.state for t in turns] == [TurnState.INTERRUPTED]


async def test_no_database_connection_is_held_while_the_model_talks(
    service: ChatService,
) -> None:
    assert isinstance(service.store, SqlStore)
    pool = service.store.db.sync_engine.pool
    # On SQLite the store's calls share one connection, checked out from its first call on.
    await service.store.ping()
    idle = pool.checkedout()  # type: ignore[attr-defined]
    held = []
    async for event in service.turn("s", "hello [fake: chunks=4 delay_ms=50]"):
        if isinstance(event, TextDelta):
            held.append(pool.checkedout())  # type: ignore[attr-defined]
    # After the last chunk the turn is being stored, which rightly takes a connection.
    assert len(held) == 4
    assert held[:3] == [idle] * 3
