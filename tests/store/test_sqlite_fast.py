"""Statements run on SQLite's driver store and read exactly what SQLAlchemy's execution would."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, exc, insert, select, text

from chatd.store import SqlStore, open_store
from chatd.store import queries as q
from chatd.store.rows import UNFINISHED_TURN
from chatd.store.sqlite_fast import Direct
from chatd.store.tables import sessions, turns
from chatd.testing.turns import begin_turn
from chatd.types import (
    GenerationParams,
    Message,
    Role,
    SessionSettings,
    StopReason,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    TurnPlan,
    TurnState,
    Usage,
)

ALICE = "alice"
PLAN = TurnPlan("m", "p")
NEW = SessionSettings(None, GenerationParams(), None)
# Every kind of part, and text that JSON must escape.
REPLY = (
    Message(
        Role.ASSISTANT,
        (TextPart("Let me look."), ToolCallPart("c1", "weather", {"city": "Oslo", "n": [1.5]})),
    ),
    Message(Role.USER, (ToolResultPart("c1", "rain, 4°C", is_error=True),)),
    Message(Role.ASSISTANT, (TextPart('It rains ☔ "here".\nTake a coat.'),)),
)

TABLES = ("sessions", "turns", "messages")
# Values that differ between two runs of the same calls: random ids and the clock.
VARYING = {"id", "turn_id", "created_at", "updated_at", "finished_at", "lease_until", "latency_ms"}


async def _exercise(store: SqlStore) -> list[Any]:
    """Run every call that uses direct statements; return what the store answered."""
    params = GenerationParams(model="m", temperature=0.5, stop=("x", "y"), tools=None)
    await store.ensure_session(ALICE, "s", system_prompt="be brief", params=params)
    answers: list[Any] = []
    for n in range(3):
        answers.append(await _turn(store, f"q{n}"))
    answers.append(await store.context_messages(ALICE, "s"))
    await store.reset_session(ALICE, "s")
    for n in range(2):
        answers.append(await _turn(store, f"after reset {n}"))
    answers.append(await store.get_session(ALICE, "s"))
    return [_masked(a) for a in answers]


async def _turn(store: SqlStore, text: str) -> Any:
    start = await begin_turn(store, ALICE, "s", Message.user(text), PLAN)
    done = await store.finish_turn(
        start.record.id,
        state=TurnState.COMPLETE,
        messages=REPLY,
        stop_reason=StopReason.END_TURN,
        usage=Usage(10, 20, 3, 4),
        latency_ms=1.0,
        ttft_ms=0.5,
    )
    return start.history, done.messages, done.usage, done.seq


def _masked(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__") and hasattr(value, "updated_at"):
        return (value.system_prompt, value.params, value.provider, value.turn_count)
    return value


def _dump(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    dump = {}
    for table in TABLES:
        rows = conn.execute(text(f"SELECT * FROM {table}")).mappings()
        kept = ({k: v for k, v in r.items() if k not in VARYING} for r in rows)
        dump[table] = sorted(kept, key=repr)
    return dump


async def test_the_driver_path_stores_and_reads_what_sqlalchemy_would(tmp_path: Path) -> None:
    direct = await open_store(f"sqlite:///{tmp_path / 'direct.db'}")
    through = await open_store(f"sqlite:///{tmp_path / 'through.db'}")
    # A statement listener sends every statement through SQLAlchemy's execution.
    event.listen(through.db.sync_engine, "before_cursor_execute", lambda *_: None)
    try:
        assert await _exercise(direct) == await _exercise(through)
        stored = await direct.db.read(_dump)
        assert stored == await through.db.read(_dump)
        assert len(stored["turns"]) == 2
        assert len(stored["messages"]) == 2 * (1 + len(REPLY))
    finally:
        await direct.close()
        await through.close()


async def test_direct_reads_convert_types_as_sqlalchemy_does(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'chatd.db'}")
    try:
        await store.ensure_session(ALICE, "s", params=GenerationParams(stop=("end",)))
        key = {"user_id": ALICE, "session_id": "s"}
        head = await store.db.read(lambda c: q.BEGIN_HEAD.first(c, key))
        assert head is not None
        assert head["stop"] == ["end"]  # JSON decoded
        assert isinstance(head["created_at"], datetime)
        assert head["created_at"].tzinfo is UTC
        assert head["streaming_until"] is None
        assert head["last_turn"] is None
        await begin_turn(store, ALICE, "s", Message.user("q"), PLAN)
        head = await store.db.read(lambda c: q.BEGIN_HEAD.first(c, key))
        assert head is not None
        # A subquery's value, read back as its column's type (SQLite returns text).
        assert isinstance(head["streaming_until"], datetime)
        assert head["streaming_until"].tzinfo is UTC
        assert head["last_turn"] == 1
    finally:
        await store.close()


async def test_direct_errors_are_sqlalchemys(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'chatd.db'}")
    try:
        await begin_turn(store, ALICE, "s", Message.user("q"), PLAN, create=NEW)
        [turn] = await store.list_turns(ALICE, "s")
        again = {**_turn_row(turn.id), "session_pk": 1}
        with pytest.raises(exc.IntegrityError, match="UNIQUE"):
            await store.db.write(lambda c: q.INSERT_TURN.execute(c, again))
    finally:
        await store.close()


async def test_a_statement_that_needs_sqlalchemys_execution_is_refused(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'chatd.db'}")
    partial = Direct(insert(turns))  # the token columns have defaults SQLAlchemy computes
    listed = Direct(select(sessions.c.id).where(sessions.c.user_id.in_(["a", "b"])))
    try:
        with pytest.raises(TypeError, match="needs SQLAlchemy"):
            await store.db.write(lambda c: partial.execute(c, {"id": "t", "session_pk": 1}))
        with pytest.raises(TypeError, match="needs SQLAlchemy"):
            await store.db.read(lambda c: listed.first(c, {}))
    finally:
        await store.close()


def _turn_row(turn_id: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        **UNFINISHED_TURN,
        "id": turn_id,
        "seq": 9,
        "state": "complete",
        "model": "m",
        "provider": "p",
        "created_at": now,
        "finished_at": now,
        "lease_until": None,
        "idempotency_key": None,
    }
