"""Usage over time: the usage records that outlive sessions, and reports over them and turns.

Three things keep a user's totals from ever dropping. Each stored turn holds its usage and cost.
When turns go (a session deleted, reset or pruned, or a last turn replaced by a regenerated
one), their usage moves to `usage_records` in the same transaction: the turns are deleted with
RETURNING, so exactly the rows that go are counted, at their final values even when a finish
raced the delete, and their sums go in one row per session, provider, model and UTC day. And
every stateless call (and any turn discarded while it ran, whose row was gone before it could
store its usage) is written there by `UsageLedger`.

`UsageLedger` writes after the call, never in its way: the engine tells it a finished call's
report (an observer: quick, never raises), it queues the row and one writer task takes whatever
is queued in one transaction, again until the queue is empty (so under load a write carries
many calls). A report read first waits for this process's queue, so a caller reads what it just
spent; closing the store waits for it too, and only a database that stays unreachable then
loses what is queued (logged with how many).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import String

from chatd.errors import StoreUnavailable
from chatd.prices import MICRO
from chatd.store.database import Database
from chatd.store.tables import sessions, turns, usage_records
from chatd.types import CallReport, TurnState, Usage, UsageLine, UsageQuery

log = logging.getLogger("chatd.store")

COMPLETION = "completion"
TURNS = "turns"
STREAMING = TurnState.STREAMING.value
# Records held while the database cannot be reached; beyond this the oldest are dropped.
MAX_QUEUED = 100_000
# How long a report waits for this process's queued records before reading without them.
FLUSH_WAIT_S = 2.0
# How long closing waits for the last records to be written.
CLOSE_WAIT_S = 10.0
# The first wait before writing again after the database could not be reached (then doubled).
RETRY_FIRST_S = 0.5


class UtcDay(FunctionElement[str]):
    """The UTC day (YYYY-MM-DD) of a timestamp column, on either database."""

    type = String()
    inherit_cache = True


@compiles(UtcDay, "sqlite")
def _utc_day_sqlite(element: UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps chatd's UTC timestamps as text, 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@compiles(UtcDay, "postgresql")
def _utc_day_postgresql(element: UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


INSERT_RECORDS = insert(usage_records)

# A session's turns deleted, with what each used (the messages go by ON DELETE CASCADE).
# Parameter: pk.
_GONE = (
    turns.c.session_pk,
    turns.c.provider,
    turns.c.model,
    turns.c.created_at,
    turns.c.input_tokens,
    turns.c.output_tokens,
    turns.c.cache_read_tokens,
    turns.c.cache_write_tokens,
    turns.c.usage_estimated,
    turns.c.cost_micro_usd,
    turns.c.state,
)
DELETE_TURNS = delete(turns).where(turns.c.session_pk == bindparam("pk")).returning(*_GONE)
# One turn deleted, unless it is streaming. Parameter: turn_id.
DELETE_TURN = (
    delete(turns)
    .where(turns.c.id == bindparam("turn_id"), turns.c.state != literal_column(f"'{STREAMING}'"))
    .returning(*_GONE)
)
# The same for several sessions. Parameter: pks (a list).
DELETE_TURNS_OF = (
    delete(turns).where(turns.c.session_pk.in_(bindparam("pks", expanding=True))).returning(*_GONE)
)


def _report_parts(query: UsageQuery) -> Any:
    """Return live turns and usage records in the range, as rows of one shape, for grouping."""
    live_range: list[ColumnElement[bool]] = [turns.c.created_at >= query.since]
    kept_range: list[ColumnElement[bool]] = [usage_records.c.created_at >= query.since]
    if query.until is not None:
        live_range.append(turns.c.created_at < query.until)
        kept_range.append(usage_records.c.created_at < query.until)
    if query.user_id is not None:
        live_range.append(sessions.c.user_id == query.user_id)
        kept_range.append(usage_records.c.user_id == query.user_id)
    # A turn still streaming has no cost yet: it is not unpriced.
    unpriced = and_(
        turns.c.cost_micro_usd.is_(None), turns.c.state != literal_column(f"'{STREAMING}'")
    )
    live = (
        select(
            sessions.c.user_id.label("user_id"),
            sessions.c.session_id.label("session_id"),
            turns.c.provider.label("provider"),
            turns.c.model.label("model"),
            turns.c.created_at.label("created_at"),
            turns.c.input_tokens.label("input_tokens"),
            turns.c.output_tokens.label("output_tokens"),
            turns.c.cache_read_tokens.label("cache_read_tokens"),
            turns.c.cache_write_tokens.label("cache_write_tokens"),
            case((turns.c.usage_estimated, 1), else_=0).label("estimated"),
            func.coalesce(turns.c.cost_micro_usd, 0).label("cost"),
            literal(1).label("turns"),
            literal(0).label("completions"),
            case((unpriced, 1), else_=0).label("unpriced"),
        )
        .select_from(turns.join(sessions, sessions.c.id == turns.c.session_pk))
        .where(and_(*live_range))
    )
    r = usage_records.c
    is_turns = r.kind == literal_column(f"'{TURNS}'")
    kept = select(
        r.user_id,
        r.session_id,
        r.provider,
        r.model,
        r.created_at,
        r.input_tokens,
        r.output_tokens,
        r.cache_read_tokens,
        r.cache_write_tokens,
        case((r.estimated, 1), else_=0),
        r.cost_micro_usd,
        case((is_turns, r.calls), else_=0),
        case((is_turns, 0), else_=r.calls),
        r.unpriced,
    ).where(and_(*kept_range))
    return union_all(live, kept).subquery("used")


def report_statement(query: UsageQuery) -> Any:
    """Return the statement of a usage report: the range's usage summed per group."""
    used = _report_parts(query)
    keys: list[ColumnElement[Any]] = {
        "day": [UtcDay(used.c.created_at)],
        "model": [used.c.provider, used.c.model],
        "session": [used.c.user_id, used.c.session_id],
        "user": [used.c.user_id],
    }[query.by]
    return select(
        *keys,
        func.sum(used.c.input_tokens),
        func.sum(used.c.output_tokens),
        func.sum(used.c.cache_read_tokens),
        func.sum(used.c.cache_write_tokens),
        func.max(used.c.estimated),
        func.sum(used.c.turns),
        func.sum(used.c.completions),
        func.sum(used.c.cost),
        func.sum(used.c.unpriced),
    ).group_by(*keys)


def report_lines(query: UsageQuery, rows: Iterable[Sequence[Any]]) -> list[UsageLine]:
    """Return a report's rows as lines, in the report's order (days in order, else costliest)."""
    width = {"day": 1, "model": 2, "session": 2, "user": 1}[query.by]
    lines = []
    for row in rows:
        key, owner = _key(query, row[:width])
        tokens, estimated, counts = row[width : width + 4], row[width + 4], row[width + 5 :]
        inputs, outputs, reads, writes = (int(n or 0) for n in tokens)
        usage = Usage(inputs, outputs, reads, writes, estimated=bool(estimated))
        t, c, cost, unpriced = (int(n or 0) for n in counts)
        lines.append(UsageLine(key, usage, t, c, cost, unpriced, owner))
    if query.by == "day":
        return sorted(lines, key=lambda line: line.key or "")
    return sorted(
        lines, key=lambda line: (-line.cost_micro_usd, line.key or "", line.user_id or "")
    )


def _key(query: UsageQuery, values: Sequence[Any]) -> tuple[str | None, str | None]:
    """Return a group's key, and its owner when grouped by session."""
    if query.by == "model":
        provider, model = values
        if model is None:
            return provider, None
        return (f"{provider}/{model}" if provider else model), None
    if query.by == "session":
        return values[1], values[0]
    return values[0], None


def moved_records(
    gone: Iterable[Sequence[Any]], owners: Mapping[int, tuple[str, str]], now: datetime
) -> list[dict[str, Any]]:
    """Return usage_records rows summing deleted turns per session, provider, model and day.

    `gone` holds DELETE_TURNS' rows; `owners` maps each session pk to (user id, session id).
    """
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for (
        pk,
        provider,
        model,
        created,
        inputs,
        outputs,
        reads,
        writes,
        estimated,
        cost,
        state,
    ) in gone:
        # A turn still streaming is counted when its run reports it discarded (its row holds
        # only what a continued turn's first part used, counted here).
        streaming = state == STREAMING
        if streaming and not (inputs or outputs or reads or writes or cost):
            continue
        created = created or now
        user_id, session_id = owners[pk]
        key = (user_id, session_id, provider, model, created.date())
        row = groups.get(key)
        if row is None:
            row = groups[key] = {
                "user_id": user_id,
                "session_id": session_id,
                "kind": TURNS,
                "provider": provider,
                "model": model,
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_read_tokens": 0,
                "cache_write_tokens": 0,
                "estimated": False,
                "cost_micro_usd": 0,
                "calls": 0,
                "unpriced": 0,
                "created_at": created,
            }
        row["input_tokens"] += inputs
        row["output_tokens"] += outputs
        row["cache_read_tokens"] += reads
        row["cache_write_tokens"] += writes
        row["estimated"] = row["estimated"] or bool(estimated)
        row["cost_micro_usd"] += cost or 0
        row["unpriced"] += cost is None and not streaming
        row["calls"] += not streaming
        row["created_at"] = min(row["created_at"], created)
    return list(groups.values())


def move_turns(conn: Connection, pks: Mapping[int, tuple[str, str]], now: datetime) -> int:
    """Delete these sessions' turns, moving their usage to usage_records; return how many."""
    if not pks:
        return 0
    if len(pks) == 1:
        (pk,) = pks
        gone = conn.execute(DELETE_TURNS, {"pk": pk}).all()
    else:
        gone = conn.execute(DELETE_TURNS_OF, {"pks": list(pks)}).all()
    records = moved_records(gone, pks, now)
    if records:
        conn.execute(INSERT_RECORDS, records)
    return len(gone)


def move_turn(
    conn: Connection, turn_id: str, pk: int, owner: tuple[str, str], now: datetime
) -> bool:
    """Delete one finished turn of session `pk`, moving its usage to usage_records.

    `owner` is the session's (user id, session id). False if the turn is not there, or is
    streaming (then nothing is deleted).
    """
    gone = conn.execute(DELETE_TURN, {"turn_id": turn_id}).all()
    records = moved_records(gone, {pk: owner}, now)
    if records:
        conn.execute(INSERT_RECORDS, records)
    return bool(gone)


def call_record(report: CallReport, now: datetime) -> dict[str, Any] | None:
    """Return the usage_records row of a call's report, or None if it is kept elsewhere.

    A stateless call's usage is kept only here; a turn's is kept in its row, unless the turn
    was discarded (its session went while it ran) before it could store it. A call that used
    nothing (it failed before any output) was not charged and is not recorded.
    """
    if report.kind != COMPLETION and report.state != "discarded":
        return None
    usage = report.usage
    if not (
        usage.input_tokens
        or usage.output_tokens
        or usage.cache_read_tokens
        or usage.cache_write_tokens
    ):
        return None
    cost = report.cost_usd
    return {
        "user_id": report.user_id,
        "session_id": report.session_id,
        "kind": COMPLETION if report.kind == COMPLETION else TURNS,
        "provider": report.provider,
        "model": report.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "estimated": usage.estimated,
        # The report's cost is a whole number of micro-dollars over MICRO: exact back.
        "cost_micro_usd": 0 if cost is None else round(cost * MICRO),
        "calls": 1,
        "unpriced": int(cost is None),
        "created_at": now,
    }


def _insert(rows: list[dict[str, Any]], conn: Connection) -> None:
    conn.execute(INSERT_RECORDS, rows)


class UsageLedger:
    """Writes calls' usage records after the calls, a batch at a time (see the module's doc)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queued: list[dict[str, Any]] = []
        self._writer: asyncio.Task[None] | None = None

    def record(self, report: CallReport, now: datetime) -> None:
        """Queue the record of a call's report, if it needs one; quick, never raises."""
        try:
            row = call_record(report, now)
            if row is None:
                return
            self._queued.append(row)
            if len(self._queued) > MAX_QUEUED:
                del self._queued[0]
                log.error("usage records queue full (database unreachable?): dropped the oldest")
            if self._writer is None or self._writer.done():
                self._writer = asyncio.get_running_loop().create_task(
                    self._write(), name="chatd-usage-records"
                )
        except Exception:
            log.exception("could not queue the usage record of a %s call", report.kind)

    async def flush(self, timeout_s: float = FLUSH_WAIT_S) -> None:
        """Wait (bounded) until what this process queued so far is written."""
        writer = self._writer
        if writer is not None and not writer.done():
            await asyncio.wait({writer}, timeout=timeout_s)

    async def aclose(self) -> None:
        """Write what is queued (waiting a bounded time), then stop; log what could not be."""
        await self.flush(CLOSE_WAIT_S)
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.wait({writer})
        if self._queued:
            log.error(
                "%d usage records could not be written before closing (database unreachable)",
                len(self._queued),
            )
            self._queued = []

    async def _write(self) -> None:
        delay = RETRY_FIRST_S
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                await self.db.write(partial(_insert, batch))
            except StoreUnavailable as exc:
                # Kept, in order, and tried again: the database may be restarting.
                self._queued[:0] = batch
                log.warning("usage records not written yet (%s); retrying", exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Exception:
                log.exception("%d usage records could not be written", len(batch))
            else:
                delay = RETRY_FIRST_S
