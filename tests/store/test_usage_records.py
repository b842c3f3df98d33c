"""Usage and cost over time, on every backend: turn costs, records outliving sessions, reports."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from chatd.engine.ports import Store
from chatd.errors import StoreUnavailable
from chatd.store import SqlStore, open_store, usage
from chatd.store.tables import usage_records
from chatd.testing.turns import begin_turn
from chatd.types import (
    CallReport,
    GenerationParams,
    Message,
    SessionSettings,
    StopReason,
    TurnPlan,
    TurnRecord,
    TurnState,
    Usage,
    UsageLine,
    UsageQuery,
)

ALICE, BOB = "alice", "bob"
PLAN = TurnPlan("model-a", "prov")
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def everything(user: str | None = ALICE, by: str = "day") -> UsageQuery:
    """Return a query over all time."""
    return UsageQuery(LONG_AGO, None, user, by)  # type: ignore[arg-type]


async def add_turn(
    store: Store,
    user: str,
    session: str,
    usage: Usage,
    cost: int | None,
    state: TurnState = TurnState.COMPLETE,
) -> TurnRecord:
    """Store one finished turn with this usage and cost."""
    started = await begin_turn(
        store, user, session, Message.user("hi"), PLAN, create=SessionSettings()
    )
    turn = started.record
    return await store.finish_turn(
        turn.id,
        state=state,
        messages=[Message.assistant("hello")],
        stop_reason=StopReason.END_TURN,
        usage=usage,
        latency_ms=1.0,
        ttft_ms=1.0,
        cost_micro_usd=cost,
    )


def completion(user: str, usage: Usage, cost_usd: float | None, **fields: object) -> CallReport:
    """Return a stateless call's report."""
    return CallReport(
        kind=fields.pop("kind", "completion"),  # type: ignore[arg-type]
        user_id=user,
        provider=str(fields.pop("provider", "prov")),
        model=str(fields.pop("model", "model-b")),
        state=str(fields.pop("state", "complete")),
        usage=usage,
        cost_usd=cost_usd,
        latency_ms=5.0,
        ttft_ms=None,
        **fields,  # type: ignore[arg-type]
    )


def total(lines: list[UsageLine] | tuple[UsageLine, ...]) -> UsageLine:
    return UsageLine.total(list(lines))


async def test_a_finished_turn_keeps_its_cost_and_its_session_sums_them(store: Store) -> None:
    first = await add_turn(store, ALICE, "s", Usage(10, 20), 1_500)
    await add_turn(store, ALICE, "s", Usage(1, 2), None, TurnState.FAILED)
    await add_turn(store, ALICE, "s", Usage(5, 5), 250, TurnState.INTERRUPTED)
    assert first.cost_micro_usd == 1_500
    turns = await store.list_turns(ALICE, "s")
    assert [t.cost_micro_usd for t in turns] == [1_500, None, 250]
    page, _ = await store.page_turns(ALICE, "s", limit=10)
    assert [t.cost_micro_usd for t in page] == [1_500, None, 250]
    info = await store.get_session(ALICE, "s")
    assert info is not None
    assert info.cost_micro_usd == 1_750
    (listed,) = await store.list_sessions(ALICE)
    (paged,), _ = await store.page_sessions(ALICE, limit=5)
    assert listed.cost_micro_usd == paged.cost_micro_usd == 1_750
    empty = await store.ensure_session(ALICE, "empty")
    assert empty.cost_micro_usd == 0
    changed = await store.update_session(ALICE, "s", system_prompt="new")
    assert changed.cost_micro_usd == 1_750


async def test_the_report_sums_every_turn_with_its_cost(store: Store) -> None:
    await add_turn(store, ALICE, "s", Usage(10, 20, 3, 4), 1_000)
    await add_turn(store, ALICE, "s", Usage(1, 2, estimated=True), 7, TurnState.FAILED)
    await add_turn(store, ALICE, "t", Usage(100, 0), None)
    await add_turn(store, BOB, "s", Usage(999, 999), 999_999)
    (line,) = await store.usage_report(everything())
    assert line.key == datetime.now(UTC).date().isoformat()
    assert line.usage == Usage(111, 22, 3, 4, estimated=True)
    assert (line.turns, line.completions, line.cost_micro_usd, line.unpriced) == (3, 0, 1_007, 1)


async def test_deleted_reset_and_pruned_sessions_leave_their_usage_counted(store: Store) -> None:
    for session in ("deleted", "reset", "pruned", "kept"):
        await add_turn(store, ALICE, session, Usage(10, 1), 100)
        await add_turn(store, ALICE, session, Usage(20, 2), None, TurnState.FAILED)
    before = total(await store.usage_report(everything()))
    assert await store.delete_session(ALICE, "deleted")
    assert await store.reset_session(ALICE, "reset") == 2
    # Only "pruned" stays idle: the others get a turn (of no usage) after the pause.
    await asyncio.sleep(0.05)
    await add_turn(store, ALICE, "kept", Usage(0, 0), 0)
    await add_turn(store, ALICE, "reset", Usage(0, 0), 0)
    assert await store.prune_sessions(timedelta(seconds=0.04)) == 1
    assert await store.get_session(ALICE, "pruned") is None
    after = total(await store.usage_report(everything()))
    assert after.usage == before.usage
    assert (after.turns, after.cost_micro_usd, after.unpriced) == (10, 400, 4)
    by_session = {line.key: line for line in await store.usage_report(everything(by="session"))}
    assert set(by_session) == {"deleted", "reset", "pruned", "kept"}
    assert by_session["deleted"].usage == Usage(30, 3)
    assert (by_session["deleted"].turns, by_session["deleted"].cost_micro_usd) == (2, 100)
    assert by_session["deleted"].user_id == ALICE
    assert (await store.get_session(ALICE, "reset")) is not None


async def test_a_deleted_session_with_many_turns_moves_its_usage_in_one_piece(
    store: Store,
) -> None:
    for n in range(30):
        await add_turn(store, ALICE, "long", Usage(n, 1), n)
    before = total(await store.usage_report(everything(by="model")))
    await store.delete_session(ALICE, "long")
    after = total(await store.usage_report(everything(by="model")))
    assert after == before
    assert (after.turns, after.cost_micro_usd) == (30, sum(range(30)))


async def test_stateless_calls_and_discarded_turns_are_recorded_others_not(store: Store) -> None:
    store.record_call(completion(ALICE, Usage(7, 8), 0.000123))
    store.record_call(completion(ALICE, Usage(1, 1, estimated=True), None, state="interrupted"))
    # Nothing used (it failed before any output): nothing charged, nothing recorded.
    store.record_call(completion(ALICE, Usage(), 0.0, state="failed"))
    # A turn's usage is in its row; only a discarded one's (its row went) is recorded.
    store.record_call(completion(ALICE, Usage(50, 50), 1.0, kind="turn", session_id="s"))
    store.record_call(
        completion(ALICE, Usage(3, 4), 0.5, kind="turn", state="discarded", session_id="gone")
    )
    store.record_call(completion(BOB, Usage(9, 9), 9.0))
    lines = await store.usage_report(everything(by="session"))
    by_key = {line.key: line for line in lines}
    assert set(by_key) == {None, "gone"}
    calls = by_key[None]
    assert calls.usage == Usage(8, 9, estimated=True)
    assert (calls.completions, calls.turns, calls.cost_micro_usd, calls.unpriced) == (2, 0, 123, 1)
    assert (by_key["gone"].turns, by_key["gone"].cost_micro_usd) == (1, 500_000)
    everyone = await store.usage_report(everything(None, by="user"))
    assert {line.key: line.completions for line in everyone} == {ALICE: 2, BOB: 1}


async def test_reports_group_by_day_model_session_and_user_within_the_range(
    store: Store,
) -> None:
    # Turns from an export keep their dates: three days, two models, two sessions.
    def turn(day: int, model: str, usage: Usage, cost: int | None) -> TurnRecord:
        return TurnRecord(
            id="x",
            session_id="x",
            seq=1,
            state=TurnState.COMPLETE,
            messages=(Message.user("q"), Message.assistant("a")),
            stop_reason=StopReason.END_TURN,
            usage=usage,
            model=model,
            provider="prov",
            created_at=datetime(2026, 3, day, 23, 30, tzinfo=UTC),
            cost_micro_usd=cost,
        )

    params = GenerationParams()
    one = [turn(1, "model-a", Usage(1, 1), 10), turn(2, "model-b", Usage(2, 2), 20)]
    two = [turn(2, "model-a", Usage(4, 4), 40), turn(3, "model-a", Usage(8, 8), None)]
    await store.import_session(
        ALICE, "one", system_prompt=None, params=params, provider=None, turns=one
    )
    await store.import_session(
        ALICE, "two", system_prompt=None, params=params, provider=None, turns=two
    )
    await store.import_session(
        BOB, "one", system_prompt=None, params=params, provider=None, turns=one
    )
    since = datetime(2026, 3, 2, tzinfo=UTC)
    until = datetime(2026, 3, 3, tzinfo=UTC)

    def query(by: str, user: str | None = ALICE, end: datetime | None = None) -> UsageQuery:
        return UsageQuery(since, end, user, by)  # type: ignore[arg-type]

    days = await store.usage_report(query("day"))
    assert [(d.key, d.usage.input_tokens, d.cost_micro_usd) for d in days] == [
        ("2026-03-02", 6, 60),
        ("2026-03-03", 8, 0),
    ]
    assert days[1].unpriced == 1
    bounded = await store.usage_report(query("day", end=until))
    assert [d.key for d in bounded] == ["2026-03-02"]
    models = await store.usage_report(query("model"))
    # The costliest first.
    assert [(m.key, m.usage.input_tokens, m.turns) for m in models] == [
        ("prov/model-a", 12, 2),
        ("prov/model-b", 2, 1),
    ]
    sessions = await store.usage_report(query("session"))
    assert [(s.key, s.cost_micro_usd) for s in sessions] == [("two", 40), ("one", 20)]
    users = await store.usage_report(query("user", None))
    assert [(u.key, u.usage.input_tokens) for u in users] == [(ALICE, 14), (BOB, 2)]
    both = await store.usage_report(query("session", None))
    assert {(s.user_id, s.key) for s in both} == {(ALICE, "one"), (ALICE, "two"), (BOB, "one")}
    nothing = await store.usage_report(
        UsageQuery(datetime(2030, 1, 1, tzinfo=UTC), None, ALICE, "day")
    )
    assert nothing == []


async def test_usage_records_queued_at_close_are_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chatd.db'}"
    store = await open_store(url)
    for n in range(50):
        store.record_call(completion(ALICE, Usage(n + 1, 1), 0.000001))
    # Closed at once: what is still queued is written before the connections go.
    await store.close()
    again = await open_store(url)
    try:
        rows = await again.db.read(
            lambda conn: conn.execute(select(func.count(), func.sum(usage_records.c.calls))).one()
        )
        assert tuple(rows) == (50, 50)
        (line,) = await again.usage_report(everything())
        assert (line.completions, line.usage.input_tokens) == (50, sum(range(1, 51)))
        assert line.cost_micro_usd == 50
    finally:
        await again.close()


async def test_records_wait_for_a_database_that_comes_back(
    sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What could not be written is kept, in order, and written once the database answers.
    monkeypatch.setattr(usage, "RETRY_FIRST_S", 0.01)
    real, failures = sql_store.db.write, [2]

    async def flaky(work: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise StoreUnavailable("database unavailable: restarting")
        return await real(work)

    monkeypatch.setattr(sql_store.db, "write", flaky)
    sql_store.record_call(completion(ALICE, Usage(5, 5), None))
    sql_store.record_call(completion(ALICE, Usage(1, 1), 0.000002))
    await sql_store.ledger.flush()
    assert failures == [0]
    (line,) = await sql_store.usage_report(everything())
    assert (line.completions, line.unpriced, line.cost_micro_usd) == (2, 1, 2)
    assert line.usage == Usage(6, 6)


async def test_a_turn_streaming_when_its_session_goes_is_counted_once_by_its_report(
    store: Store,
) -> None:
    # A continuation streams on a turn whose first part is stored: that part's usage moves
    # with the session, and the run's report (discarded) brings the rest and the turn itself.
    await add_turn(store, ALICE, "s", Usage(10, 10), 100, TurnState.TRUNCATED)
    pending = await store.open_continuation(ALICE, "s")
    await pending.commit(PLAN, 60.0)
    await begin_turn(store, ALICE, "t", Message.user("hi"), PLAN, create=SessionSettings())
    live = total(await store.usage_report(everything()))
    assert (live.turns, live.unpriced, live.cost_micro_usd) == (2, 0, 100)
    assert await store.delete_session(ALICE, "s")
    assert await store.reset_session(ALICE, "t") == 1
    gone = total(await store.usage_report(everything()))
    assert (gone.turns, gone.usage, gone.cost_micro_usd, gone.unpriced) == (
        0,
        Usage(10, 10),
        100,
        0,
    )
    for session in ("s", "t"):
        store.record_call(
            completion(
                ALICE, Usage(1, 2), 0.00005, kind="turn", state="discarded", session_id=session
            )
        )
    after = total(await store.usage_report(everything()))
    assert (after.turns, after.usage, after.cost_micro_usd) == (2, Usage(12, 14), 200)


async def test_turns_finished_before_costs_were_kept_count_as_unpriced(tmp_path: Path) -> None:
    # A database at 0006 (no costs, no usage records) with a finished turn, then upgraded.
    from alembic import command

    from chatd.store import create_database
    from chatd.store.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = create_database(url)
    try:
        await db.write(lambda conn: command.upgrade(alembic_config(conn), "0006"))
        old = SqlStore(db)
        await add_turn_without_cost(old)
    finally:
        await db.dispose()
    store = await open_store(url)
    try:
        (turn,) = await store.list_turns(ALICE, "s")
        assert turn.cost_micro_usd is None
        info = await store.get_session(ALICE, "s")
        assert info is not None
        assert info.cost_micro_usd == 0
        (line,) = await store.usage_report(everything())
        assert (line.turns, line.unpriced, line.cost_micro_usd) == (1, 1, 0)
        assert line.usage == Usage(10, 20)
    finally:
        await store.close()


async def add_turn_without_cost(store: SqlStore) -> None:
    """Store a finished turn as chatd did before it kept costs (no cost column written)."""
    from sqlalchemy import insert

    from chatd.store.tables import sessions, turns

    now = datetime.now(UTC)

    def work(conn: Any) -> None:
        pk = conn.execute(
            insert(sessions)
            .values(user_id=ALICE, session_id="s", created_at=now, updated_at=now)
            .returning(sessions.c.id)
        ).scalar_one()
        old_columns = {c.name for c in turns.c} - {"cost_micro_usd"}
        row = {
            "id": "t1",
            "session_pk": pk,
            "seq": 1,
            "state": "complete",
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "usage_estimated": False,
            "created_at": now,
        }
        conn.execute(insert(turns), row)
        assert set(row) <= old_columns

    await store.db.write(work)
