"""A turn's usage may be chatd's estimate: stored, exported and imported as such, and migrated."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from chatd.engine.ports import Store
from chatd.store import SqlStore, upgrade
from chatd.store.migrate import alembic_config
from chatd.testing.turns import begin_turn
from chatd.transfer import export_doc, parse_doc
from chatd.types import Message, StopReason, TurnPlan, TurnRecord, TurnState, Usage

PLAN = TurnPlan("m", "p")
USER = "ann"
GUESSED = Usage(120, 34, estimated=True)


async def finish(store: Store, session_id: str, state: TurnState, usage: Usage) -> TurnRecord:
    """Store one turn in this state with this usage."""
    await store.ensure_session(USER, session_id)
    turn = (await begin_turn(store, USER, session_id, Message.user("hi"), PLAN)).record
    return await store.finish_turn(
        turn.id,
        state=state,
        messages=[Message.assistant("partial")],
        stop_reason=StopReason.END_TURN if state is TurnState.COMPLETE else None,
        usage=usage,
        latency_ms=1.0,
        ttft_ms=0.5,
        error=None if state is TurnState.COMPLETE else "cut",
    )


async def test_an_estimated_usage_is_stored_as_one(store: Store) -> None:
    await finish(store, "s", TurnState.FAILED, GUESSED)
    await finish(store, "s", TurnState.COMPLETE, Usage(5, 6))
    guessed, reported = await store.list_turns(USER, "s")
    assert guessed.usage == GUESSED
    assert reported.usage == Usage(5, 6)
    assert not reported.usage.estimated


async def test_usage_totals_say_when_part_of_them_is_estimated(store: Store) -> None:
    await finish(store, "s", TurnState.COMPLETE, Usage(5, 6))
    assert await store.usage_totals(USER) == (1, Usage(5, 6))
    await finish(store, "s", TurnState.FAILED, GUESSED)
    assert await store.usage_totals(USER) == (2, Usage(125, 40, estimated=True))


async def test_export_then_import_keeps_an_estimate_marked(store: Store) -> None:
    await finish(store, "s", TurnState.INTERRUPTED, GUESSED)
    await finish(store, "s", TurnState.COMPLETE, Usage(5, 6))
    info = await store.get_session(USER, "s")
    assert info is not None
    document = export_doc(info, await store.list_turns(USER, "s"))
    assert [t["usage"]["estimated"] for t in document["turns"]] == [True, False]
    saved = parse_doc(document)
    await store.import_session(
        USER,
        "copy",
        system_prompt=saved.system_prompt,
        params=saved.params,
        provider=saved.provider,
        turns=saved.turns,
    )
    assert [t.usage for t in await store.list_turns(USER, "copy")] == [GUESSED, Usage(5, 6)]


def test_a_document_from_before_estimates_imports_as_reported() -> None:
    turn: dict[str, Any] = {
        "state": "complete",
        "usage": {"input_tokens": 7, "output_tokens": 8},
        "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    saved = parse_doc({"format": "chatd.session/1", "session_id": "old", "turns": [turn]})
    assert saved.turns[0].usage == Usage(7, 8)
    assert not saved.turns[0].usage.estimated


async def test_migration_0005_adds_the_flag_and_keeps_earlier_turns_reported(
    sql_store: SqlStore,
) -> None:
    await finish(sql_store, "s", TurnState.COMPLETE, Usage(5, 6))

    def downgrade(conn: Connection) -> None:
        from alembic import command

        command.downgrade(alembic_config(conn), "0004")

    await sql_store.db.write(downgrade)
    await upgrade(sql_store.db)
    (turn,) = await sql_store.list_turns(USER, "s")
    assert turn.usage == Usage(5, 6)
    assert not turn.usage.estimated
    await finish(sql_store, "s", TurnState.FAILED, GUESSED)
    assert (await sql_store.list_turns(USER, "s"))[-1].usage == GUESSED
