"""The Store contract, on every backend; then what only the SQL store promises."""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, exc, inspect, text

from chatd.engine.ports import Store
from chatd.errors import ConfigError, InputError, NotFound, SessionBusy, StoreUnavailable
from chatd.store import SqlStore, open_store, upgrade
from chatd.store.migrate import alembic_config
from chatd.store.tables import metadata
from chatd.testing.turns import begin_turn
from chatd.types import (
    GenerationParams,
    Message,
    Part,
    Role,
    SessionSettings,
    StopReason,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    TurnPlan,
    TurnRecord,
    TurnState,
    Usage,
)

PLAN = TurnPlan("m", "p")

ALICE, BOB = "alice", "bob"
# At most one turn streams per session, so a test that wants one of each ends on it.
STATES_STREAMING_LAST = [s for s in TurnState if s is not TurnState.STREAMING]
STATES_STREAMING_LAST.append(TurnState.STREAMING)


def sqlite_url(directory: Path) -> str:
    """Return the URL of a SQLite file in this directory."""
    return f"sqlite:///{directory / 'chatd.db'}"


STOP_FOR = {
    TurnState.COMPLETE: StopReason.END_TURN,
    TurnState.TRUNCATED: StopReason.MAX_TOKENS,
    TurnState.REFUSED: StopReason.REFUSAL,
}

TOOL_LOOP = (
    Message(
        Role.ASSISTANT,
        (
            TextPart("Let me look."),
            ToolCallPart("call_1", "weather", {"city": "Oslo", "days": [1, 2], "opts": {"f": 1.5}}),
        ),
    ),
    Message(
        Role.USER,
        (ToolResultPart("call_1", "rain, 4°C"), ToolResultPart("call_2", "boom", is_error=True)),
    ),
    Message(Role.ASSISTANT, (TextPart("It rains ☔ in Oslo.\nTake a coat."),)),
)


async def add_turn(
    store: Store,
    user_id: str,
    session_id: str,
    text: str,
    state: TurnState = TurnState.COMPLETE,
    reply: Sequence[Message] | None = None,
) -> TurnRecord:
    """Store one turn ending in this state; failed turns carry an error and no reply."""
    turn = (await begin_turn(store, user_id, session_id, Message.user(text), PLAN)).record
    if state is TurnState.STREAMING:
        return turn
    failed = state is TurnState.FAILED
    return await store.finish_turn(
        turn.id,
        state=state,
        messages=[] if failed else (reply or [Message.assistant(f"re: {text}")]),
        stop_reason=STOP_FOR.get(state),
        usage=Usage(10, 20, 3, 4),
        latency_ms=12.5,
        ttft_ms=2.5,
        error="upstream exploded" if failed else None,
    )


async def finish_with_tool_loop(store: Store, turn_id: str) -> TurnRecord:
    """Finish a turn as complete with a short tool loop."""
    return await store.finish_turn(
        turn_id,
        state=TurnState.COMPLETE,
        messages=TOOL_LOOP,
        stop_reason=StopReason.END_TURN,
        usage=Usage(1, 1),
        latency_ms=1.0,
        ttft_ms=1.0,
    )


def texts(messages: Sequence[Message]) -> list[str]:
    """Return each message's text."""
    return [m.text for m in messages]


# The contract, on every store.


async def test_begin_turn_returns_the_history_in_context_before_it(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    await add_turn(store, ALICE, "s", "one")
    await add_turn(store, ALICE, "s", "broken", state=TurnState.FAILED)
    await add_turn(store, ALICE, "s", "two", reply=TOOL_LOOP)
    start = await begin_turn(store, ALICE, "s", Message.user("now"), PLAN)
    assert start.history == (
        Message.user("one"),
        Message.assistant("re: one"),
        Message.user("two"),
        *TOOL_LOOP,
    )
    assert texts(start.record.messages) == ["now"]


async def test_begin_turn_reads_history_only_as_far_back_as_asked(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    for n in range(5):
        await add_turn(store, ALICE, "s", f"q{n}")
    fed: list[str] = []

    def three(message: Message) -> bool:
        fed.append(message.text)
        return len(fed) == 3

    start = await begin_turn(store, ALICE, "s", Message.user("now"), TurnPlan("m", "p", three))
    assert fed == ["re: q4", "q4", "re: q3"]  # newest first, and no further
    assert texts(start.history) == ["re: q3", "q4", "re: q4"]


async def test_a_history_longer_than_the_opens_read_is_read_to_where_asked(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    for n in range(40):  # 80 messages: more than the open reads at once
        await add_turn(store, ALICE, "s", f"q{n}")
    fed: list[str] = []

    def seventy(message: Message) -> bool:
        fed.append(message.text)
        return len(fed) == 70

    start = await begin_turn(store, ALICE, "s", Message.user("now"), TurnPlan("m", "p", seventy))
    assert len(fed) == 70
    assert texts(start.history) == [t for n in range(5, 40) for t in (f"q{n}", f"re: q{n}")]
    await finish_with_tool_loop(store, start.record.id)
    whole = await begin_turn(store, ALICE, "s", Message.user("all"), PLAN)
    assert whole.history == tuple(await store.context_messages(ALICE, "s"))
    assert len(whole.history) == 81 + len(TOOL_LOOP)


async def test_begin_turn_creates_a_missing_session_with_the_given_settings(store: Store) -> None:
    seen: list[SessionSettings] = []

    def plan(settings: SessionSettings) -> TurnPlan:
        seen.append(settings)
        return PLAN

    new = SessionSettings(system_prompt="be brief", provider="p")
    start = await begin_turn(store, ALICE, "fresh", Message.user("hi"), plan, create=new)
    assert seen == [new]
    assert start.history == ()
    info = await store.get_session(ALICE, "fresh")
    assert info is not None
    assert (info.system_prompt, info.provider) == ("be brief", "p")
    with pytest.raises(NotFound):
        await begin_turn(store, ALICE, "other", Message.user("hi"), PLAN)


async def test_the_planner_is_given_the_sessions_stored_settings(store: Store) -> None:
    params = GenerationParams(
        model="x", max_tokens=77, stop=("END",), tools=("calculate",), context_policy="window"
    )
    await store.ensure_session(ALICE, "s", system_prompt="sys", params=params, provider="prov")
    seen: list[SessionSettings] = []

    def plan(settings: SessionSettings) -> TurnPlan:
        seen.append(settings)
        return TurnPlan("chosen-model", "chosen-provider")

    ignored = SessionSettings(system_prompt="not this")
    turn = (await begin_turn(store, ALICE, "s", Message.user("q"), plan, create=ignored)).record
    assert seen == [SessionSettings("sys", params, "prov")]
    assert (turn.model, turn.provider) == ("chosen-model", "chosen-provider")


async def test_a_refused_plan_stores_nothing(store: Store) -> None:
    def refuse(settings: SessionSettings) -> TurnPlan:
        raise InputError("no tool named 'nope'")

    with pytest.raises(InputError, match="nope"):
        await begin_turn(store, ALICE, "new", Message.user("q"), refuse, create=SessionSettings())
    assert await store.get_session(ALICE, "new") is None
    await store.ensure_session(ALICE, "s")
    with pytest.raises(InputError, match="nope"):
        await begin_turn(store, ALICE, "s", Message.user("q"), refuse)
    assert await store.list_turns(ALICE, "s") == []


async def test_renewing_leases_keeps_only_turns_still_streaming(store: Store) -> None:
    for sid in ("a", "b", "c"):
        await store.ensure_session(ALICE, sid)
    live, short = [
        (await begin_turn(store, ALICE, sid, Message.user("q"), PLAN, lease_s=0.05)).record
        for sid in ("a", "c")
    ]
    done = await add_turn(store, ALICE, "b", "done")
    await asyncio.sleep(0.1)  # both leases ran out, but no sweep came yet
    kept = await store.renew_leases([live.id, done.id, short.id, "no-such-turn"], 60)
    assert kept == {live.id, short.id}
    assert await store.expire_leases() == 0
    assert await store.renew_leases([], 60) == set()


async def test_messages_with_every_part_type_round_trip(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    question = Message.user("Weather in Oslo? «ünïcode» 🌧")
    turn = (await begin_turn(store, ALICE, "s", question, PLAN)).record
    finished = await store.finish_turn(
        turn.id,
        state=TurnState.COMPLETE,
        messages=TOOL_LOOP,
        stop_reason=StopReason.END_TURN,
        usage=Usage(1, 2),
        latency_ms=1.0,
        ttft_ms=0.5,
    )
    expected = (question, *TOOL_LOOP)
    assert finished.messages == expected
    assert (await store.list_turns(ALICE, "s"))[0].messages == expected
    assert tuple(await store.context_messages(ALICE, "s")) == expected


async def test_awkward_json_values_round_trip(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    odd = Message(
        Role.ASSISTANT,
        (ToolCallPart("c", "t", {"big": 2**70, "lone": "\ud800", "nested": [[{}], None]}),),
    )
    await add_turn(store, ALICE, "s", "go", reply=[odd])
    assert (await store.context_messages(ALICE, "s"))[1] == odd


async def test_context_holds_only_complete_and_truncated_turns(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    for n, state in enumerate(STATES_STREAMING_LAST, start=1):
        await add_turn(store, ALICE, "s", f"q{n}-{state.value}", state)
    context = await store.context_messages(ALICE, "s")
    assert texts(context) == ["q1-complete", "re: q1-complete", "q2-truncated", "re: q2-truncated"]
    assert [m.role for m in context] == [Role.USER, Role.ASSISTANT] * 2


async def test_turn_count_counts_complete_and_truncated_turns(store: Store) -> None:
    assert (await store.ensure_session(ALICE, "s")).turn_count == 0
    states = [TurnState.COMPLETE, TurnState.FAILED, TurnState.TRUNCATED, TurnState.INTERRUPTED]
    for state in [*states, TurnState.REFUSED, TurnState.STREAMING]:
        await add_turn(store, ALICE, "s", "hi", state)
    info = await store.get_session(ALICE, "s")
    assert info is not None
    assert info.turn_count == 2
    assert [s.turn_count for s in await store.list_sessions(ALICE)] == [2]


async def test_list_turns_shows_every_state_with_its_usage(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    before = datetime.now(UTC) - timedelta(seconds=1)
    for state in STATES_STREAMING_LAST:
        await add_turn(store, ALICE, "s", state.value, state)
    turns = await store.list_turns(ALICE, "s")
    assert [t.state for t in turns] == STATES_STREAMING_LAST
    assert [t.seq for t in turns] == list(range(1, len(TurnState) + 1))
    complete, _, _, _, failed, streaming = turns
    assert streaming.usage == Usage()
    assert streaming.stop_reason is None
    assert texts(streaming.messages) == ["streaming"]
    assert complete.usage == Usage(10, 20, 3, 4)
    assert complete.stop_reason is StopReason.END_TURN
    assert (complete.latency_ms, complete.ttft_ms, complete.error) == (12.5, 2.5, None)
    assert (complete.model, complete.provider, complete.session_id) == ("m", "p", "s")
    assert texts(complete.messages) == ["complete", "re: complete"]
    assert failed.error == "upstream exploded"
    assert texts(failed.messages) == ["failed"]
    assert all(t.created_at.utcoffset() == timedelta(0) and t.created_at > before for t in turns)


async def test_same_session_id_for_two_users_never_crosses(store: Store) -> None:
    await store.ensure_session(ALICE, "s", system_prompt="alice's")
    await store.ensure_session(BOB, "s", system_prompt="bob's")
    await add_turn(store, ALICE, "s", "alice secret")
    await add_turn(store, BOB, "s", "bob secret")
    await add_turn(store, BOB, "s", "bob again")
    assert texts(await store.context_messages(ALICE, "s")) == ["alice secret", "re: alice secret"]
    assert texts(await store.context_messages(BOB, "s"))[::2] == ["bob secret", "bob again"]
    alice = await store.get_session(ALICE, "s")
    assert alice is not None
    assert alice.system_prompt == "alice's"
    assert alice.turn_count == 1
    assert [s.user_id for s in await store.list_sessions(ALICE)] == [ALICE]
    assert await store.reset_session(BOB, "s") == 2
    assert await store.delete_session(BOB, "s") is True
    assert len(await store.list_turns(ALICE, "s")) == 1


async def test_another_users_session_answers_as_missing(store: Store) -> None:
    await store.ensure_session(ALICE, "mine")
    await add_turn(store, ALICE, "mine", "private")
    assert await store.get_session(BOB, "mine") is None
    assert await store.list_sessions(BOB) == []
    with pytest.raises(NotFound):
        await store.context_messages(BOB, "mine")
    with pytest.raises(NotFound):
        await store.list_turns(BOB, "mine")
    with pytest.raises(NotFound):
        await begin_turn(store, BOB, "mine", Message.user("x"), PLAN)
    with pytest.raises(NotFound):
        await store.update_session(BOB, "mine", system_prompt="hijack")
    assert await store.reset_session(BOB, "mine") is None
    assert await store.delete_session(BOB, "mine") is False
    assert texts(await store.context_messages(ALICE, "mine")) == ["private", "re: private"]


async def test_reset_empties_the_session_but_keeps_it(store: Store) -> None:
    await store.ensure_session(ALICE, "s", system_prompt="keep me")
    for state in (TurnState.COMPLETE, TurnState.FAILED, TurnState.COMPLETE):
        await add_turn(store, ALICE, "s", "hi", state)
    assert await store.reset_session(ALICE, "s") == 3
    info = await store.get_session(ALICE, "s")
    assert info is not None
    assert info.turn_count == 0
    assert info.system_prompt == "keep me"
    assert await store.context_messages(ALICE, "s") == []
    assert await store.list_turns(ALICE, "s") == []
    turn = await add_turn(store, ALICE, "s", "fresh start")
    assert turn.seq == 1
    assert texts(await store.context_messages(ALICE, "s")) == ["fresh start", "re: fresh start"]
    assert await store.reset_session(ALICE, "nope") is None


async def test_delete_removes_the_session_and_everything_in_it(store: Store) -> None:
    await store.ensure_session(ALICE, "s", system_prompt="old")
    await add_turn(store, ALICE, "s", "hi")
    assert await store.delete_session(ALICE, "s") is True
    assert await store.get_session(ALICE, "s") is None
    with pytest.raises(NotFound):
        await store.list_turns(ALICE, "s")
    assert await store.delete_session(ALICE, "s") is False
    again = await store.ensure_session(ALICE, "s")
    assert again.system_prompt is None
    assert again.turn_count == 0
    assert await store.context_messages(ALICE, "s") == []


async def test_finish_turn_is_all_or_nothing(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    turn = (await begin_turn(store, ALICE, "s", Message.user("q"), PLAN)).record
    broken = Message(Role.ASSISTANT, (cast(Part, object()),))
    finish: dict[str, Any] = {
        "state": TurnState.COMPLETE,
        "stop_reason": StopReason.END_TURN,
        "usage": Usage(1, 1),
        "latency_ms": 1.0,
        "ttft_ms": 1.0,
    }
    with pytest.raises(AttributeError):
        await store.finish_turn(turn.id, messages=[Message.assistant("a"), broken], **finish)
    [stored] = await store.list_turns(ALICE, "s")
    assert stored.state is TurnState.STREAMING
    assert texts(stored.messages) == ["q"]
    assert stored.usage == Usage()
    done = await store.finish_turn(turn.id, messages=[Message.assistant("a")], **finish)
    assert done.state is TurnState.COMPLETE
    assert texts(await store.context_messages(ALICE, "s")) == ["q", "a"]


async def test_a_turn_is_finished_exactly_once(store: Store) -> None:
    await store.ensure_session(ALICE, "s")
    turn = await add_turn(store, ALICE, "s", "q")
    with pytest.raises(NotFound):
        await add_turn(store, ALICE, "nope", "q")
    for turn_id in (turn.id, "0" * 32):
        with pytest.raises(NotFound):
            await store.finish_turn(
                turn_id,
                state=TurnState.FAILED,
                messages=[],
                stop_reason=None,
                usage=Usage(),
                latency_ms=None,
                ttft_ms=None,
            )
    [stored] = await store.list_turns(ALICE, "s")
    assert stored.state is TurnState.COMPLETE


async def test_ensure_session_creates_once_and_keeps_settings(store: Store) -> None:
    params = GenerationParams(model="m1", max_tokens=100, temperature=0.2, stop=("END",))
    first = await store.ensure_session(ALICE, "s", system_prompt="one", params=params, provider="x")
    again = await store.ensure_session(ALICE, "s", system_prompt="two", provider="y")
    assert again == first
    assert (again.system_prompt, again.params, again.provider) == ("one", params, "x")
    assert first.created_at.utcoffset() == timedelta(0)


async def test_update_session_changes_only_the_given_fields(store: Store) -> None:
    params = GenerationParams(model="m1", max_tokens=100, temperature=0.2, stop=("END",))
    await store.ensure_session(ALICE, "s", system_prompt="one", params=params, provider="x")
    info = await store.update_session(ALICE, "s", params=GenerationParams(temperature=0.0))
    assert info.params == GenerationParams("m1", 100, 0.0, ("END",))
    assert (info.system_prompt, info.provider) == ("one", "x")
    info = await store.update_session(ALICE, "s", system_prompt="two", provider="y")
    assert (info.system_prompt, info.provider, info.params.temperature) == ("two", "y", 0.0)
    assert await store.get_session(ALICE, "s") == info
    with pytest.raises(NotFound):
        await store.update_session(ALICE, "missing", system_prompt="x")


async def test_turns_keep_the_session_updated_at_current(store: Store) -> None:
    created = await store.ensure_session(ALICE, "s")
    turn = (await begin_turn(store, ALICE, "s", Message.user("q"), PLAN)).record
    began = await store.get_session(ALICE, "s")
    assert began is not None
    assert began.updated_at >= turn.created_at >= created.updated_at
    before_finish = datetime.now(UTC)
    await store.finish_turn(
        turn.id,
        state=TurnState.COMPLETE,
        messages=[Message.assistant("a")],
        stop_reason=StopReason.END_TURN,
        usage=Usage(),
        latency_ms=None,
        ttft_ms=None,
    )
    finished = await store.get_session(ALICE, "s")
    assert finished is not None
    assert finished.updated_at >= before_finish
    assert finished.created_at == created.created_at


async def test_sessions_are_listed_oldest_first(store: Store) -> None:
    for name in ("c", "a", "b"):
        await store.ensure_session(ALICE, name)
    await store.ensure_session(BOB, "z")
    assert [s.id for s in await store.list_sessions(ALICE)] == ["c", "a", "b"]


# What only the SQL store promises.


@asynccontextmanager
async def statements(store: SqlStore) -> AsyncIterator[list[str]]:
    """Record every statement the database runs (an executemany once per row), values as `?`."""
    seen: list[str] = []
    engine = store.db.sync_engine
    if engine.dialect.name == "sqlite":
        # Traced by SQLite itself, on the connection the store's calls share: chatd runs a
        # turn's statements on the driver (store.direct), past SQLAlchemy's statement events.
        def trace(on: bool) -> Callable[[Connection], None]:
            def work(conn: Connection) -> None:
                driver = cast(sqlite3.Connection, conn.connection.driver_connection)
                driver.set_trace_callback((lambda sql: seen.append(_shape(sql))) if on else None)

            return work

        await store.db.read(trace(True))
        seen.clear()
        try:
            yield seen
        finally:
            await store.db.read(trace(False))
        return

    def record(_c: Connection, _cur: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        seen.extend([_shape(sql)] * (len(params) if many else 1))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _shape(sql: str) -> str:
    # SQLite's trace has the values in the text: the same statement must read the same.
    return re.sub(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b", "?", " ".join(sql.split()))


async def test_storing_a_turn_writes_only_that_turns_rows(sql_store: SqlStore) -> None:
    issued = {}
    for session_id, history_turns in (("short", 1), ("long", 25)):
        await sql_store.ensure_session(ALICE, session_id)
        for n in range(history_turns):
            await add_turn(sql_store, ALICE, session_id, f"q{n}")
        assert len(await sql_store.context_messages(ALICE, session_id)) == 2 * history_turns
        async with statements(sql_store) as seen:
            turn = await add_turn(sql_store, ALICE, session_id, "now", reply=TOOL_LOOP)
        issued[session_id] = seen
        assert turn.messages[1:] == TOOL_LOOP
    short, long = issued["short"], issued["long"]
    assert short == long
    assert not [sql for sql in long if sql.startswith(("UPDATE messages", "DELETE"))]
    inserts = [sql for sql in long if sql.startswith("INSERT INTO messages")]
    assert len(inserts) == 1 + len(TOOL_LOOP)  # the question, then the reply


async def test_finish_turn_rolls_back_when_the_database_fails_midway(sql_store: SqlStore) -> None:
    await sql_store.ensure_session(ALICE, "s")
    start = await begin_turn(sql_store, ALICE, "s", Message.user("q"), PLAN)
    turn = start.record
    # A failure inside the database, after the turn update and the message insert.
    if sql_store.db.sync_engine.dialect.name == "sqlite":
        fail = [
            "CREATE TRIGGER fail BEFORE UPDATE ON sessions "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ]
    else:
        fail = [
            "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
            "CREATE TRIGGER fail BEFORE UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION fail()",
        ]
    await sql_store.db.write(lambda c: [c.execute(text(sql)) for sql in fail])
    with pytest.raises(exc.DBAPIError, match="injected failure"):
        await finish_with_tool_loop(sql_store, turn.id)
    [stored] = await sql_store.list_turns(ALICE, "s")
    assert stored.state is TurnState.STREAMING
    assert texts(stored.messages) == ["q"]
    assert await sql_store.db.read(lambda c: c.scalar(text("SELECT count(*) FROM messages"))) == 1


async def test_begin_turn_is_committed_before_it_returns(sql_store: SqlStore) -> None:
    await sql_store.ensure_session(ALICE, "s")
    await begin_turn(sql_store, ALICE, "s", Message.user("hold on"), PLAN)
    other = await open_store(sql_store.db.url.render_as_string(hide_password=False))
    try:
        [seen] = await other.list_turns(ALICE, "s")
    finally:
        await other.close()
    assert seen.state is TurnState.STREAMING
    assert texts(seen.messages) == ["hold on"]


async def test_a_turn_begun_elsewhere_is_finished_from_what_is_stored(
    sql_store: SqlStore,
) -> None:
    await sql_store.ensure_session(ALICE, "s")
    await add_turn(sql_store, ALICE, "s", "earlier")
    here = (await begin_turn(sql_store, ALICE, "s", Message.user("q"), PLAN)).record
    # Another process (or this one, having forgotten it) finishes the turn.
    other = await open_store(sql_store.db.url.render_as_string(hide_password=False))
    try:
        done = await finish_with_tool_loop(other, here.id)
    finally:
        await other.close()
    assert done.messages == (Message.user("q"), *TOOL_LOOP)
    assert (done.session_id, done.seq, done.state) == ("s", 2, TurnState.COMPLETE)
    stored = await sql_store.list_turns(ALICE, "s")
    assert stored[1] == done
    assert texts(await sql_store.context_messages(ALICE, "s"))[:3] == [
        "earlier",
        "re: earlier",
        "q",
    ]
    # And the turn this process began itself comes back the same as it is stored.
    mine = await add_turn(sql_store, ALICE, "s", "again", reply=TOOL_LOOP)
    assert (await sql_store.list_turns(ALICE, "s"))[2] == mine


async def test_deleting_a_session_leaves_no_rows_behind(sql_store: SqlStore) -> None:
    for session_id in ("gone", "reset"):
        await sql_store.ensure_session(ALICE, session_id)
        await add_turn(sql_store, ALICE, session_id, "q", reply=TOOL_LOOP)
    await sql_store.delete_session(ALICE, "gone")
    await sql_store.reset_session(ALICE, "reset")

    def count(table: str) -> Any:
        return sql_store.db.read(lambda c: c.scalar(text(f"SELECT count(*) FROM {table}")))

    assert [await count(t) for t in ("turns", "messages", "sessions")] == [0, 0, 1]


async def test_migrations_build_exactly_the_declared_schema(sql_store: SqlStore) -> None:
    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    assert await sql_store.db.read(differences) == []
    names = await sql_store.db.read(lambda c: set(inspect(c).get_table_names()))
    assert names >= {"sessions", "turns", "messages", "alembic_version"}


async def test_upgrading_a_current_schema_changes_nothing(sql_store: SqlStore) -> None:
    await sql_store.ensure_session(ALICE, "s")
    await add_turn(sql_store, ALICE, "s", "keep me")
    async with statements(sql_store) as seen:
        await upgrade(sql_store.db)
        await upgrade(sql_store.db)
    changes = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")
    assert not [sql for sql in seen if sql.upper().startswith(changes)]
    versions = await sql_store.db.read(
        lambda c: c.execute(text("SELECT version_num FROM alembic_version")).all()
    )
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert versions == [(head,)]
    assert texts(await sql_store.context_messages(ALICE, "s")) == ["keep me", "re: keep me"]


async def test_data_survives_reopening(sql_store: SqlStore) -> None:
    await sql_store.ensure_session(ALICE, "s", system_prompt="remember")
    await add_turn(sql_store, ALICE, "s", "q", reply=TOOL_LOOP)
    url = sql_store.db.url.render_as_string(hide_password=False)
    await sql_store.close()
    reopened = await open_store(url)
    try:
        info = await reopened.get_session(ALICE, "s")
        assert info is not None
        assert info.system_prompt == "remember"
        assert info.turn_count == 1
        assert tuple(await reopened.context_messages(ALICE, "s"))[1:] == TOOL_LOOP
    finally:
        await reopened.close()


# SQLite specifics and opening errors.


async def test_sqlite_checkpoints_keep_the_wal_bounded(tmp_path: Path) -> None:
    store = await open_store(sqlite_url(tmp_path))
    try:
        # Each write adds a few 4 KiB pages to the WAL: 1,000 of them, never checkpointed,
        # leave it over 8 MiB. Checkpoints every hundred writes let it start over instead.
        for n in range(1000):
            await store.ensure_session(ALICE, f"s{n}")
            if n % 100 == 99:
                await asyncio.sleep(0.1)  # checkpoints run on threads of their own
        await store.ensure_session(ALICE, "after")
        # Measured while open: closing the last connection checkpoints and removes the WAL.
        wal_bytes = (tmp_path / "chatd.db-wal").stat().st_size
    finally:
        await store.close()
    assert wal_bytes < 3 * 2**20


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    store = await open_store(sqlite_url(tmp_path / "made" / "on" / "demand"))
    try:
        names = ("journal_mode", "foreign_keys", "synchronous")
        pragmas = await store.db.read(
            lambda c: {name: c.scalar(text(f"PRAGMA {name}")) for name in names}
        )
    finally:
        await store.close()
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 1}


async def test_sqlite_waits_for_another_process_lock_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    store = await open_store(sqlite_url(tmp_path))
    other = sqlite3.connect(tmp_path / "chatd.db", isolation_level=None)
    try:
        await store.ensure_session(ALICE, "s")
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        began = time.monotonic()
        turn = await add_turn(store, ALICE, "s", "waited")
        waited = time.monotonic() - began
        ticker.cancel()
    finally:
        other.close()
        await store.close()
    assert turn.state is TurnState.COMPLETE
    assert waited >= 0.25  # it really waited for the lock, and then went through
    assert ticks >= 15  # meanwhile the event loop went on serving others


async def test_urls_written_for_earlier_chatd_still_open(tmp_path: Path) -> None:
    # chatd ran on aiosqlite before; configurations that name it keep working.
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await store.ensure_session(ALICE, "s")
        await add_turn(store, ALICE, "s", "still here")
        assert texts(await store.context_messages(ALICE, "s")) == ["still here", "re: still here"]
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "mysql+aiomysql://chatd@localhost/chatd",
        "postgresql+psycopg2://chatd@localhost/chatd",
        "nosuchdb://x",
    ],
)
async def test_a_bad_database_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await open_store(url)
    assert "\n" not in str(caught.value)


def closed_port() -> int:
    """Return a local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("where", ["under_a_file", "a_directory", "postgres_down"])
async def test_an_unreachable_database_is_store_unavailable(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    url = {
        "under_a_file": sqlite_url(tmp_path / "file" / "sub"),
        "a_directory": f"sqlite:///{tmp_path}",
        "postgres_down": f"postgresql+asyncpg://chatd:secret@127.0.0.1:{closed_port()}/chatd",
    }[where]
    with pytest.raises(StoreUnavailable) as caught:
        await open_store(url)
    assert "\n" not in str(caught.value)
    assert "secret" not in str(caught.value)


def test_the_schema_head_constant_matches_the_shipped_migrations() -> None:
    from chatd.store import SCHEMA_HEAD

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert heads == [SCHEMA_HEAD]


async def test_begin_turn_is_busy_if_the_history_changed_after_its_read(
    sql_store: SqlStore,
) -> None:
    await sql_store.ensure_session(ALICE, "s")
    # A turn whose process stalled past its lease: a new turn may take the session over.
    stalled = await begin_turn(sql_store, ALICE, "s", Message.user("slow"), PLAN, lease_s=0.05)
    await asyncio.sleep(0.1)
    opened = await sql_store.open_turn(ALICE, "s", Message.user("new"))
    assert not isinstance(opened, TurnRecord)
    history = await opened.history(PLAN.history_until)
    # Between this turn's read and its write, the stalled process wakes and completes.
    await sql_store.finish_turn(
        stalled.record.id,
        state=TurnState.COMPLETE,
        messages=[Message.assistant("late answer")],
        stop_reason=StopReason.END_TURN,
        usage=Usage(),
        latency_ms=None,
        ttft_ms=None,
    )
    with pytest.raises(SessionBusy):
        await opened.commit(PLAN, 60.0)
    # What the new turn read lacks the late answer: it must not be stored on that history.
    assert history == ()
    turns = await sql_store.list_turns(ALICE, "s")
    assert [t.state for t in turns] == [TurnState.COMPLETE]
    assert texts(await sql_store.context_messages(ALICE, "s")) == ["slow", "late answer"]
