"""PostgreSQL going away under an open store: StoreUnavailable promptly, nothing partial, recovery.

These run on a server of their own (not the session's), since they stop it. (SQLite has no
outage worth testing: with the file's directory removed, open connections keep writing to the
unlinked file, and as root nothing is unreadable.)
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event

from chatd.errors import StoreUnavailable
from chatd.store import SqlStore, open_store
from chatd.testing.postgres import PostgresServer
from chatd.testing.turns import begin_turn
from chatd.types import Message, StopReason, TurnPlan, TurnRecord, TurnState, Usage

USER = "alice"
# Every call must fail (or succeed) well within this; a hang is a bug, not a slow test.
PROMPT_S = 5.0
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def server(postgres_installed: None) -> Iterator[PostgresServer]:
    with PostgresServer() as pg:
        yield pg


@pytest.fixture
async def db(server: PostgresServer) -> AsyncIterator[str]:
    """Yield the name of a fresh database on the outage server."""
    name = f"outage_{next(_numbers)}"
    server.create_database(name)
    yield name
    if not server.running:
        server.start()
    server.drop_database(name)


def snapshot(server: PostgresServer, dbname: str) -> dict[str, Any]:
    """Return every row of every chatd table, in a stable order, read with psql."""
    tables = server.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "AND table_name <> 'alembic_version' ORDER BY table_name",
        dbname,
    ).split()
    assert tables
    return {
        table: server.sql(
            f"SELECT coalesce(json_agg(t ORDER BY t::text), '[]') FROM {table} t", dbname
        )
        for table in tables
    }


async def finish(store: SqlStore, turn: TurnRecord, text: str) -> TurnRecord:
    return await store.finish_turn(
        turn.id,
        state=TurnState.COMPLETE,
        messages=[Message.assistant(text)],
        stop_reason=StopReason.END_TURN,
        usage=Usage(3, 4),
        latency_ms=12.0,
        ttft_ms=3.0,
    )


async def begin(store: SqlStore, session_id: str, text: str) -> TurnRecord:
    start = await begin_turn(
        store, USER, session_id, Message.user(text), TurnPlan("test-model", "demo")
    )
    return start.record


async def history(store: SqlStore) -> dict[str, Any]:
    """What the store itself reports: both sessions' turns and contexts."""
    return {
        sid: (await store.list_turns(USER, sid), await store.context_messages(USER, sid))
        for sid in ("done", "busy")
    }


async def seeded(url: str) -> tuple[SqlStore, TurnRecord]:
    """Open a store with one finished turn (session done) and one in flight (session busy)."""
    store = await open_store(url)
    for sid in ("done", "busy"):
        await store.ensure_session(USER, sid)
    await finish(store, await begin(store, "done", "first"), "first reply")
    return store, await begin(store, "busy", "in flight")


async def fail_mid_write(
    store: SqlStore, in_flight: TurnRecord, call: str, after_first_write: Callable[[str], None]
) -> None:
    """Run one write, calling after_first_write once its first INSERT/UPDATE ran; expect 503."""
    done = False

    def hook(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal done
        if not done and statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            done = True
            after_first_write(statement)

    event.listen(store.db.sync_engine, "after_cursor_execute", hook)
    try:
        write = (
            begin(store, "done", "half")
            if call == "begin_turn"
            else finish(store, in_flight, "half")
        )
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(PROMPT_S):
                await write
    finally:
        event.remove(store.db.sync_engine, "after_cursor_execute", hook)


async def test_postgres_down_gives_store_unavailable_fast_then_the_store_recovers(
    server: PostgresServer, db: str
) -> None:
    store, in_flight = await seeded(server.url(db))
    try:
        before_rows, before = snapshot(server, db), await history(store)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "get_session": lambda: store.get_session(USER, "done"),
            "context_messages": lambda: store.context_messages(USER, "done"),
            "list_turns": lambda: store.list_turns(USER, "done"),
            "begin_turn": lambda: begin(store, "done", "during the outage"),
            "finish_turn": lambda: finish(store, in_flight, "during the outage"),
            "ensure_session": lambda: store.ensure_session(USER, "new"),
        }
        with server.outage():
            for name, call in calls.items():
                with pytest.raises(StoreUnavailable) as caught:
                    async with asyncio.timeout(PROMPT_S):
                        await call()
                assert "\n" not in str(caught.value), name

        assert snapshot(server, db) == before_rows
        # The same store object works again: the pool drops its dead connections.
        assert await history(store) == before
        await finish(store, in_flight, "after the outage")
        await begin(store, "done", "after the outage")
        assert [t.state for t in await store.list_turns(USER, "busy")] == [TurnState.COMPLETE]
    finally:
        await store.close()


async def test_a_restart_between_calls_goes_unnoticed(server: PostgresServer, db: str) -> None:
    # A restart cuts every pooled connection; pre-ping must notice rather than fail the call.
    store, in_flight = await seeded(server.url(db))
    try:
        server.restart()
        async with asyncio.timeout(PROMPT_S):
            assert await store.get_session(USER, "done") is not None
            await finish(store, in_flight, "after a restart")
    finally:
        await store.close()


@pytest.mark.parametrize("call", ["begin_turn", "finish_turn"])
async def test_postgres_dying_mid_transaction_writes_nothing(
    server: PostgresServer, db: str, call: str
) -> None:
    store, in_flight = await seeded(server.url(db))
    try:
        before_rows, before = snapshot(server, db), await history(store)
        # Stop the server between the write's statements: after its first INSERT/UPDATE ran.
        # (Fast, not immediate: with synchronous_commit off a crash may lose recent commits.)
        await fail_mid_write(store, in_flight, call, lambda _: server.stop(keep=True))
        assert not server.running

        server.start()
        assert snapshot(server, db) == before_rows
        assert await history(store) == before
    finally:
        await store.close()


@pytest.mark.parametrize("call", ["begin_turn", "finish_turn"])
async def test_a_connection_the_server_terminates_mid_transaction_is_store_unavailable(
    server: PostgresServer, db: str, call: str
) -> None:
    # The server ends the store's connection (what a shutdown or an admin does: SQLSTATE
    # 57P01) between two statements of a write; however the driver's error is wrapped, the
    # caller gets StoreUnavailable and nothing of the write is kept.
    store, in_flight = await seeded(server.url(db))
    try:
        before_rows = snapshot(server, db)
        terminated: list[str] = []
        await fail_mid_write(
            store,
            in_flight,
            call,
            lambda _: terminated.append(
                server.sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    f"WHERE datname = '{db}' AND pid <> pg_backend_pid()",
                    "postgres",
                )
            ),
        )
        assert terminated
        assert terminated[0].strip() != "0"
        assert snapshot(server, db) == before_rows
        # The pool replaces the dead connection: the next call just works.
        await finish(store, in_flight, "after")
    finally:
        await store.close()
