"""A turn begun in one call, by the steps the engine takes: for tests and benchmarks of a store."""

from __future__ import annotations

from chatd.engine.ports import TurnStore
from chatd.types import (
    HistoryCut,
    Message,
    Planner,
    SessionSettings,
    TurnPlan,
    TurnRecord,
    TurnStart,
)


async def begin_turn(
    store: TurnStore,
    user_id: str,
    session_id: str,
    user_message: Message,
    plan: TurnPlan | Planner,
    *,
    create: SessionSettings | None = None,
    lease_s: float = 60.0,
    idempotency_key: str | None = None,
    system_prompt: str | None = None,
    history_until: HistoryCut | None = None,
    same_as_hint: bool = False,
) -> TurnStart:
    """Open, plan, read the history and commit a turn; a replay comes back as it was stored."""
    opened = await store.open_turn(
        user_id,
        session_id,
        user_message,
        create=create,
        idempotency_key=idempotency_key,
        system_prompt=system_prompt,
        history_until=history_until,
    )
    if isinstance(opened, TurnRecord):
        return TurnStart(opened)
    try:
        chosen = plan(opened.settings) if callable(plan) else plan
        history = await opened.history(chosen.history_until, same_as_hint=same_as_hint)
        record = await opened.commit(chosen, lease_s)
    except BaseException:
        opened.abandon()
        raise
    return TurnStart(record, history)
