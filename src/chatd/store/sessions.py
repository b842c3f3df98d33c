"""SqlStore: the store ports on prebuilt SQLAlchemy Core statements, one function per call."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import Connection, exc, text, update

from chatd.errors import (
    AlreadyExists,
    IdempotencyConflict,
    NotFound,
)
from chatd.store import queries as q
from chatd.store.database import Database
from chatd.store.opened import (
    HISTORY_BATCH,
    Begun,
    Continuation,
    Decoded,
    Draft,
    Pending,
    Regeneration,
    context_rows,
    session_row,
    take,
)
from chatd.store.paging import parse_session_cursor, session_cursor
from chatd.store.rows import (
    busy,
    final_values,
    imported_rows,
    message,
    message_values,
    not_continuable,
    nothing_to_regenerate,
    param_values,
    read_back,
    session_fold,
    session_info,
    session_settings,
    turn_record,
    utc_now,
)
from chatd.store.tables import sessions
from chatd.store.usage import (
    UsageLedger,
    move_turns,
    report_lines,
    report_statement,
)
from chatd.types import (
    CallReport,
    ContextFold,
    FoldRecord,
    GenerationParams,
    HistoryCut,
    Message,
    Role,
    SessionInfo,
    SessionOrder,
    SessionSettings,
    StopReason,
    TurnRecord,
    TurnState,
    TurnTokens,
    Usage,
    UsageLine,
    UsageQuery,
)

T = TypeVar("T")

# Each order's statements: its first page, and its pages after a cursor.
_SESSION_PAGES = {
    "created": (q.PAGE_SESSIONS, q.PAGE_SESSIONS_AFTER),
    "recent": (q.PAGE_SESSIONS_RECENT, q.PAGE_SESSIONS_RECENT_AFTER),
}

# Sessions pruned per statement: far below any SQLite's limit on bound parameters.
PRUNE_BATCH = 500
# Turns begun here whose finish_turn can skip reading them back (beyond: it reads).
BEGUN_KEPT = 4096


class SqlStore:
    """The store ports over SQL; each call is one function run on one connection."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Stateless calls' usage, written after the calls (chatd.store.usage).
        self.ledger = UsageLedger(db)
        self._begun: dict[str, Begun] = {}
        # Sessions whose turn this process is beginning (between its read and its commit).
        self._beginning: set[tuple[str, str]] = set()

    async def get_session(self, user_id: str, session_id: str) -> SessionInfo | None:
        """Return the session, or None if it does not exist for this user."""
        return await self.db.read(lambda conn: _session(conn, user_id, session_id))

    async def ensure_session(
        self,
        user_id: str,
        session_id: str,
        *,
        system_prompt: str | None = None,
        params: GenerationParams | None = None,
        provider: str | None = None,
        title: str | None = None,
    ) -> SessionInfo:
        """Return the session, creating it with these settings if it is new."""
        found = await self.get_session(user_id, session_id)
        if found is not None:
            return found
        params, now, title = params or GenerationParams(), utc_now(), title or None
        row = session_row(
            user_id, session_id, SessionSettings(system_prompt, params, provider), now, title
        )
        try:
            await self.db.write(lambda conn: conn.execute(q.INSERT_SESSION, row))
        except exc.IntegrityError:
            # A concurrent caller created it first; theirs wins.
            created = await self.get_session(user_id, session_id)
            if created is None:
                raise
            return created
        return SessionInfo(
            session_id, user_id, system_prompt, params, provider, now, now, 0, title=title
        )

    async def update_session(
        self,
        user_id: str,
        session_id: str,
        *,
        system_prompt: str | None = None,
        params: GenerationParams | None = None,
        provider: str | None = None,
        title: str | None = None,
    ) -> SessionInfo:
        """Change the given settings (None leaves one as it is, a title "" clears it)."""
        given = {"system_prompt": system_prompt, "provider": provider}
        if params is not None:
            given.update(param_values(params))
        values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if title is not None:
            values["title"] = title or None
        key = _key(user_id, session_id)
        # Built per call (the columns vary); literal keys, as bound names may not shadow columns.
        statement = (
            update(sessions)
            .where(sessions.c.user_id == user_id, sessions.c.session_id == session_id)
            .values({**values, "updated_at": utc_now()})
        )

        def work(conn: Connection) -> SessionInfo:
            if conn.execute(statement).rowcount == 0:
                raise NotFound(f"no session {session_id!r}")
            return session_info(conn.execute(q.GET_SESSION, key).one()._mapping)

        return await self.db.write(work)

    async def list_sessions(self, user_id: str) -> Sequence[SessionInfo]:
        """Return the user's sessions, oldest first."""

        def work(conn: Connection) -> list[SessionInfo]:
            rows = conn.execute(q.LIST_SESSIONS, {"user_id": user_id})
            return [session_info(r._mapping) for r in rows]

        return await self.db.read(work)

    async def context_messages(self, user_id: str, session_id: str) -> Sequence[Message]:
        """Return the messages of complete and truncated turns, in order."""
        key = _key(user_id, session_id)

        def work(conn: Connection) -> list[Message]:
            pk = conn.scalar(q.SESSION_PK, key)
            if pk is None:
                raise NotFound(f"no session {session_id!r}")
            return list(_history(conn, pk, None))

        return await self.db.read(work)

    async def list_turns(self, user_id: str, session_id: str) -> Sequence[TurnRecord]:
        """Return every turn with its state and messages, in order."""
        key = _key(user_id, session_id)

        def work(conn: Connection) -> list[TurnRecord]:
            turns = conn.execute(q.LIST_TURNS, key).all()
            if not turns:
                if conn.scalar(q.SESSION_PK, key) is None:
                    raise NotFound(f"no session {session_id!r}")
                return []
            by_turn: dict[str, list[Any]] = {t.id: [] for t in turns}
            for m in conn.execute(q.SESSION_MESSAGES, key):
                by_turn[m.turn_id].append(m)
            return [_turn_with(t._mapping, session_id, by_turn[t.id]) for t in turns]

        return await self.db.read(work)

    async def open_turn(
        self,
        user_id: str,
        session_id: str,
        user_message: Message,
        *,
        create: SessionSettings | None = None,
        idempotency_key: str | None = None,
        system_prompt: str | None = None,
        history_until: HistoryCut | None = None,
    ) -> Pending | TurnRecord:
        """Read the session's head, settings, idempotency key and newest history, in one read."""
        now, key = utc_now(), _key(user_id, session_id)
        if create is not None and system_prompt is not None:
            create = replace(create, system_prompt=system_prompt)

        def read(conn: Connection) -> Draft | TurnRecord:
            head = q.BEGIN_HEAD.first(conn, key)
            if head is None:
                if create is None:
                    raise NotFound(f"no session {session_id!r}")
                return Draft(None, 0, 0, False, None, create, ContextFold(), [], [], True)
            settings = session_settings(head)
            if system_prompt is not None:
                settings = replace(settings, system_prompt=system_prompt)
            pk, until = head["id"], head["streaming_until"]
            if until is not None and until >= now:
                raise busy(session_id)
            release = None
            if idempotency_key is not None:
                prior = _replay(conn, pk, idempotency_key, user_message, session_id, now)
                if isinstance(prior, TurnRecord):
                    return prior
                release = prior
            return _draft(conn, head, settings, release, history_until)

        draft = await self._open(user_id, session_id, read)
        if isinstance(draft, TurnRecord):
            self._beginning.discard((user_id, session_id))
            return draft
        return Pending(
            self,
            user_id,
            session_id,
            user_message,
            draft,
            create=create,
            idempotency_key=idempotency_key,
            system_prompt=system_prompt,
            now=now,
            hinted=history_until is not None,
        )

    async def open_continuation(
        self, user_id: str, session_id: str, *, history_until: HistoryCut | None = None
    ) -> Continuation:
        """Read the session's truncated newest turn, its settings and history, in one read."""
        now = utc_now()

        def read(conn: Connection) -> tuple[Draft, TurnRecord, dict[str, Any]]:
            head, row = _newest_turn(conn, user_id, session_id, now)
            if row is None:
                raise not_continuable(session_id, None)
            state = TurnState(row.state)
            if state is TurnState.STREAMING and row.stop_reason is not None:
                # A continuation whose process died: the commit's sweep makes it truncated again.
                state = TurnState.TRUNCATED
            if state is not TurnState.TRUNCATED:
                raise not_continuable(session_id, state)
            rows = conn.execute(q.TURN_MESSAGES, {"turn_id": row.id})
            messages = tuple(message(r.role, r.parts) for r in rows)
            record = replace(turn_record(row._mapping, session_id, messages), state=state)
            draft = _draft(conn, head, session_settings(head), None, history_until)
            return draft, record, dict(row._mapping)

        draft, record, row = await self._open(user_id, session_id, read)
        return Continuation(
            self,
            user_id,
            session_id,
            draft,
            record,
            row,
            now=now,
            hinted=history_until is not None,
        )

    async def open_regeneration(
        self, user_id: str, session_id: str, *, history_until: HistoryCut | None = None
    ) -> Regeneration:
        """Read the session's newest turn (to replace), its settings and the history before it."""
        now = utc_now()

        def read(conn: Connection) -> tuple[Draft, TurnRecord, str | None]:
            head, row = _newest_turn(conn, user_id, session_id, now)
            if row is None:
                raise nothing_to_regenerate(session_id)
            rows = conn.execute(q.TURN_MESSAGES, {"turn_id": row.id})
            messages = tuple(message(r.role, r.parts) for r in rows)
            if not messages or messages[0].role is not Role.USER:
                raise nothing_to_regenerate(session_id)
            record = turn_record(row._mapping, session_id, messages)
            draft = _draft(conn, head, session_settings(head), None, history_until, row.seq)
            return draft, record, row.idempotency_key

        draft, record, idempotency_key = await self._open(user_id, session_id, read)
        return Regeneration(
            self,
            user_id,
            session_id,
            draft,
            record,
            idempotency_key,
            now=now,
            hinted=history_until is not None,
        )

    async def _open(self, user_id: str, session_id: str, read: Callable[[Connection], T]) -> T:
        """Run an open's read, holding the session in this process; SessionBusy if it is held.

        A send that arrives while another to the same session is between its open and its
        commit here would read the same history and launch its own model call, only for its
        write to be refused: it is refused now, before it costs anything. The pending turn
        lets the session go when committed or abandoned; a read that fails lets it go here.
        """
        beginning = (user_id, session_id)
        if beginning in self._beginning:
            raise busy(session_id)
        self._beginning.add(beginning)
        try:
            return await self.db.read(read)
        except BaseException:
            self._beginning.discard(beginning)
            raise

    def _remember(self, begun: Begun) -> None:
        # What finish_turn would otherwise read back; bounded, as a turn whose task never ran
        # is never finished here (its lease runs out).
        if len(self._begun) >= BEGUN_KEPT:
            del self._begun[next(iter(self._begun))]
        self._begun[begun.record.id] = begun

    async def renew_leases(self, turn_ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend these turns' leases; return the ids renewed (those still streaming)."""
        if not turn_ids:
            return set()
        values = {"turn_ids": list(turn_ids), "until": utc_now() + timedelta(seconds=lease_s)}
        rows = await self.db.write(lambda conn: conn.execute(q.RENEW_LEASES, values).all())
        return {r.id for r in rows}

    async def existing_turns(self, turn_ids: Sequence[str]) -> set[str]:
        """Return the ids of these turns that are still stored, in any state."""
        if not turn_ids:
            return set()
        values = {"turn_ids": list(turn_ids)}
        rows = await self.db.read(lambda conn: conn.execute(q.EXISTING_TURNS, values).all())
        return {r.id for r in rows}

    async def expire_leases(self) -> int:
        """Mark every streaming turn whose lease ran out as interrupted; return how many."""
        values = {"now": utc_now()}
        return await self.db.write(lambda conn: conn.execute(q.EXPIRE_LEASES, values).rowcount)

    async def stop_requested(self, turn_ids: Sequence[str]) -> set[str]:
        """Return the ids of these turns that are streaming with a stop asked for."""
        if not turn_ids:
            return set()
        values = {"turn_ids": list(turn_ids)}
        rows = await self.db.read(lambda conn: conn.execute(q.STOP_REQUESTED, values).all())
        return {r.id for r in rows}

    async def request_stop(self, user_id: str, session_id: str, why: str) -> str | None:
        """Mark the session's turn in flight to be stopped; return its id (None: no such turn)."""

        def work(conn: Connection) -> str | None:
            pk = conn.scalar(q.SESSION_PK, _key(user_id, session_id))
            if pk is None:
                raise NotFound(f"no session {session_id!r}")
            values = {"pk": pk, "now": utc_now(), "why": why}
            turn_id: str | None = conn.execute(q.REQUEST_STOP, values).scalar()
            return turn_id

        return await self.db.write(work)

    async def turn_state(self, turn_id: str) -> TurnState | None:
        """Return the turn's state now, or None if it is no longer stored."""
        values = {"turn_id": turn_id}
        state = await self.db.read(lambda conn: conn.scalar(q.TURN_STATE, values))
        return None if state is None else TurnState(state)

    async def finish_turn(
        self,
        turn_id: str,
        *,
        state: TurnState,
        messages: Sequence[Message],
        stop_reason: StopReason | None,
        usage: Usage,
        latency_ms: float | None,
        ttft_ms: float | None,
        error: str | None = None,
        tokens: TurnTokens | None = None,
        fold: FoldRecord | None = None,
        cost_micro_usd: int | None = None,
    ) -> TurnRecord:
        """Append the reply's messages and set the final state, in one transaction."""
        if state is TurnState.STREAMING:
            raise ValueError("finish_turn needs a final state")
        now = utc_now()
        final = final_values(
            state, stop_reason, usage, latency_ms, ttft_ms, error, now, cost_micro_usd
        )
        sizes = tokens or TurnTokens()
        final["context_tokens"] = sizes.context
        if sizes.user is not None:
            # Only when learned: a continued turn's user message keeps what its first part showed.
            final["user_tokens"] = sizes.user
        reply_tokens = (*sizes.reply, *([None] * (len(messages) - len(sizes.reply))))

        begun = self._begun.pop(turn_id, None)

        def work(conn: Connection) -> TurnRecord:
            head = begun or _finish_head(conn, turn_id)
            # The state check in the statement settles a race with another finisher (or the
            # sweep that took an expired lease); the messages go in only after it.
            if q.FINISH_TURN.execute(conn, {"turn_id": turn_id, **final}) != 1:
                raise NotFound(f"no turn {turn_id!r} in flight")
            pk = head.session_pk
            if messages:
                q.INSERT_MESSAGES.execute(
                    conn,
                    [
                        message_values(turn_id, pk, head.next_message + i, m, now, n)
                        for i, (m, n) in enumerate(zip(messages, reply_tokens, strict=False))
                    ],
                )
            if fold is not None:
                _store_fold(conn, pk, turn_id, fold, now)
            q.TOUCH_SESSION.execute(conn, {"pk": pk, "now": now})
            earlier = head.record.messages
            return turn_record({**head.row, **final}, head.record.session_id, (*earlier, *messages))

        return await self.db.write(work)

    async def reset_session(self, user_id: str, session_id: str) -> int | None:
        """Delete every turn but keep the session; return the turns removed, None if missing."""

        def work(conn: Connection) -> int | None:
            pk = conn.scalar(q.SESSION_PK, _key(user_id, session_id))
            if pk is None:
                return None
            now = utc_now()
            conn.execute(q.DELETE_SESSION_MESSAGES, {"pk": pk})
            # Their usage stays counted: moved to the usage records in this transaction.
            removed = move_turns(conn, {pk: (user_id, session_id)}, now)
            conn.execute(q.DELETE_SESSION_FOLDS, {"pk": pk})
            conn.execute(q.CLEAR_FOLD, {"pk": pk})
            q.TOUCH_SESSION.execute(conn, {"pk": pk, "now": now})
            return removed

        return await self.db.write(work)

    async def delete_session(self, user_id: str, session_id: str) -> bool:
        """Delete the session and all its rows (their usage stays); return whether it existed."""

        def work(conn: Connection) -> bool:
            pk = conn.scalar(q.SESSION_PK, _key(user_id, session_id))
            if pk is None:
                return False
            # The turns first, their usage moved to the usage records; the messages go with
            # them and the rest with the session, by ON DELETE CASCADE.
            move_turns(conn, {pk: (user_id, session_id)}, utc_now())
            conn.execute(q.DELETE_SESSIONS, {"pks": [pk]})
            return True

        return await self.db.write(work)

    async def prune_sessions(self, older_than: timedelta) -> int:
        """Delete every user's sessions idle longer than this (their usage stays); count them."""
        values = {"cutoff": utc_now() - older_than}

        def work(conn: Connection) -> int:
            found = conn.execute(q.PRUNABLE_SESSIONS, values).all()
            now = utc_now()
            for start in range(0, len(found), PRUNE_BATCH):
                owners = {
                    r.id: (r.user_id, r.session_id) for r in found[start : start + PRUNE_BATCH]
                }
                move_turns(conn, owners, now)
                conn.execute(q.DELETE_SESSIONS, {"pks": list(owners)})
            return len(found)

        return await self.db.write(work)

    async def import_session(
        self,
        user_id: str,
        session_id: str,
        *,
        system_prompt: str | None,
        params: GenerationParams,
        provider: str | None,
        turns: Sequence[TurnRecord],
        title: str | None = None,
    ) -> SessionInfo:
        """Create a session with these finished turns in one transaction; AlreadyExists if taken."""
        now, title = utc_now(), title or None
        session = session_row(
            user_id, session_id, SessionSettings(system_prompt, params, provider), now, title
        )

        def work(conn: Connection) -> None:
            pk = conn.execute(q.CREATE_SESSION, session).scalar_one()
            turn_rows, message_rows = imported_rows(pk, turns, now)
            if turn_rows:
                q.INSERT_TURN.execute(conn, turn_rows)
                q.INSERT_MESSAGES.execute(conn, message_rows)

        try:
            await self.db.write(work)
        except exc.IntegrityError:
            raise AlreadyExists(f"session {session_id!r} already exists") from None
        count = sum(1 for t in turns if t.state.in_context)
        return SessionInfo(
            session_id, user_id, system_prompt, params, provider, now, now, count, title=title
        )

    async def page_sessions(
        self,
        user_id: str,
        *,
        limit: int,
        after: str | None = None,
        order: SessionOrder = "created",
    ) -> tuple[Sequence[SessionInfo], str | None]:
        """Return up to limit sessions in this order after the cursor, and the next cursor."""
        values: dict[str, Any] = {"user_id": user_id, "limit": limit + 1}
        first, later = _SESSION_PAGES[order]
        statement = first
        if after is not None:
            values["after_at"], values["after_id"] = parse_session_cursor(after, order)
            statement = later
        rows = await self.db.read(lambda conn: conn.execute(statement, values).all())
        page = [session_info(r._mapping) for r in rows[:limit]]
        return page, session_cursor(page[-1], order) if len(rows) > limit else None

    async def page_turns(
        self, user_id: str, session_id: str, *, limit: int, after_seq: int = 0
    ) -> tuple[Sequence[TurnRecord], int | None]:
        """Return up to limit turns after seq after_seq, in order, and the seq to go on from."""
        key = _key(user_id, session_id)

        def work(conn: Connection) -> tuple[list[TurnRecord], int | None]:
            values = {**key, "after_seq": after_seq, "limit": limit + 1}
            rows = conn.execute(q.PAGE_TURNS, values).all()
            if not rows and conn.scalar(q.SESSION_PK, key) is None:
                raise NotFound(f"no session {session_id!r}")
            page = rows[:limit]
            by_turn: dict[str, list[Any]] = {t.id: [] for t in page}
            if page:
                ids = {"turn_ids": list(by_turn)}
                for m in conn.execute(q.MESSAGES_OF_TURNS, ids):
                    by_turn[m.turn_id].append(m)
            turns = [_turn_with(t._mapping, session_id, by_turn[t.id]) for t in page]
            return turns, turns[-1].seq if len(rows) > limit else None

        return await self.db.read(work)

    async def usage_totals(self, user_id: str) -> tuple[int, Usage]:
        """Return how many turns the user has, and their usage summed."""
        values = {"user_id": user_id}
        row = await self.db.read(lambda conn: conn.execute(q.USAGE_TOTALS, values).one())
        count, inputs, outputs, cache_reads, cache_writes, estimated = row
        tokens = (int(inputs), int(outputs), int(cache_reads), int(cache_writes))
        return count, Usage(*tokens, estimated=bool(estimated))

    def record_call(self, report: CallReport) -> None:
        """Keep a finished call's usage if no turn row holds it; written soon after, in a batch."""
        self.ledger.record(report, utc_now())

    async def usage_report(self, query: UsageQuery) -> Sequence[UsageLine]:
        """Return usage and cost over the range, grouped: stored turns and usage records."""
        # What this process just recorded is read too.
        await self.ledger.flush()
        statement = report_statement(query)
        rows = await self.db.read(lambda conn: conn.execute(statement).all())
        return report_lines(query, rows)

    async def session_stats(self, user_id: str | None) -> tuple[int, int]:
        """Return how many sessions there are (one user's, or all) and their turns in context."""
        statement = q.SESSION_STATS if user_id is None else q.USER_SESSION_STATS
        values = {"user_id": user_id}
        count, turns = await self.db.read(lambda conn: conn.execute(statement, values).one())
        return int(count), int(turns)

    async def ping(self) -> None:
        """Check the database answers; StoreUnavailable if not."""
        await self.db.read(lambda conn: conn.execute(text("SELECT 1")))

    async def close(self) -> None:
        """Write the usage records still queued, then release connections."""
        try:
            await self.ledger.aclose()
        finally:
            await self.db.dispose()


def _key(user_id: str, session_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "session_id": session_id}


def _session(conn: Connection, user_id: str, session_id: str) -> SessionInfo | None:
    row = conn.execute(q.GET_SESSION, _key(user_id, session_id)).one_or_none()
    return None if row is None else session_info(row._mapping)


def _history(conn: Connection, pk: int, until: HistoryCut | None) -> tuple[Message, ...]:
    """Read the in-context history newest first, decoding only as far as `until` needs."""
    # Fetched a batch at a time (a row at a time costs more), decoded one at a time.
    rows = q.CONTEXT_MESSAGES_NEWEST.rows(conn, {"pk": pk, "first_turn": 0}, HISTORY_BATCH)
    return read_back((message(r[0], r[1]) for r in rows), until)


def _newest_turn(conn: Connection, user_id: str, session_id: str, now: datetime) -> tuple[Any, Any]:
    """Read a session's head and newest turn's row (None without turns); busy or missing raise.

    SessionBusy while a turn on it holds a live lease; NotFound without the session.
    """
    head = q.BEGIN_HEAD.first(conn, _key(user_id, session_id))
    if head is None:
        raise NotFound(f"no session {session_id!r}")
    until = head["streaming_until"]
    if until is not None and until >= now:
        raise busy(session_id)
    return head, conn.execute(q.NEWEST_TURN, {"pk": head["id"]}).one_or_none()


def _draft(
    conn: Connection,
    head: Mapping[str, Any],
    settings: SessionSettings,
    release: str | None,
    history_until: HistoryCut | None,
    below: int | None = None,
) -> Draft:
    """Read the newest history of the session `head` (BEGIN_HEAD's row) into a draft.

    With `below`, only the turns before that seq are its history.
    """
    pk, fold = head["id"], session_fold(head)
    values = {"pk": pk, "first_turn": fold.first_turn}
    rows = context_rows(conn, values, below)
    decoded: list[Decoded] = []
    if history_until is not None:
        # As far back as the hint says, whatever the history's length, in this read.
        whole = not take(rows, decoded, history_until)
        newest: list[Sequence[Any]] = []
    else:
        # The newest batch (and one more row: is there more?), decoded later only as far back
        # as the engine's plan needs.
        newest = list(islice(rows, HISTORY_BATCH + 1))
        whole = len(newest) <= HISTORY_BATCH
    last_turn, last_message = head["last_turn"] or 0, head["last_message"] or 0
    streaming = head["streaming_until"] is not None
    return Draft(
        pk,
        last_turn,
        last_message,
        streaming,
        release,
        settings,
        fold,
        decoded,
        newest,
        whole,
        below,
    )


def _finish_head(conn: Connection, turn_id: str) -> Begun:
    """Read back a streaming turn that was begun elsewhere (another process, or forgotten)."""
    rows = conn.execute(q.FINISH_HEAD, {"turn_id": turn_id}).all()
    if not rows or rows[0].state != q.STREAMING:
        raise NotFound(f"no turn {turn_id!r} in flight")
    head = rows[0]
    earlier = tuple(message(r.role, r.parts) for r in rows if r.role is not None)
    record = turn_record(head._mapping, head.session_id, earlier)
    return Begun(head.session_pk, (head.last_message or 0) + 1, dict(head._mapping), record)


def _replay(
    conn: Connection, pk: int, key: str, user_message: Message, session_id: str, now: datetime
) -> TurnRecord | str | None:
    """Return the finished turn this key produced, or the failed one's id to free, or None."""
    prior = conn.execute(q.TURN_BY_KEY, {"pk": pk, "key": key}).one_or_none()
    if prior is None:
        return None
    rows = conn.execute(q.TURN_MESSAGES, {"turn_id": prior.id})
    messages = tuple(message(r.role, r.parts) for r in rows)
    if not messages or messages[0] != user_message:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different message; use a new key"
        )
    state = TurnState(prior.state)
    if state is TurnState.STREAMING and prior.lease_until is not None and prior.lease_until < now:
        # Its process died: the write marks it interrupted, as a turn whose key is free; or
        # truncated again, if it was a continuation (it has a stop reason), kept as before.
        state = TurnState.TRUNCATED if prior.stop_reason is not None else TurnState.INTERRUPTED
    if state is TurnState.STREAMING:
        raise busy(session_id)
    if state in (TurnState.FAILED, TurnState.INTERRUPTED):
        # A retry after a failure should get a real answer: the new turn takes the key.
        return str(prior.id)
    return replace(turn_record(prior._mapping, session_id, messages), state=state)


def _turn_with(row: Mapping[Any, Any], session_id: str, rows: Sequence[Any]) -> TurnRecord:
    """Build a turn from its row and its messages' rows (role, parts, tokens)."""
    messages = tuple([message(m.role, m.parts) for m in rows])
    tokens = [m.tokens for m in rows]
    if tokens and tokens[0] is None:
        tokens[0] = row["user_tokens"]
    return turn_record(row, session_id, messages, tuple(tokens))


def _store_fold(conn: Connection, pk: int, turn_id: str, record: FoldRecord, now: datetime) -> None:
    """Move the session's context view and record the change."""
    fold = record.fold
    q.SET_FOLD.execute(conn, {"pk": pk, "first": fold.first_turn, "text": fold.summary})
    q.INSERT_FOLD.execute(
        conn,
        {
            "session_pk": pk,
            "turn_id": turn_id,
            "first_turn": fold.first_turn,
            "summary": fold.summary,
            "reason": record.reason,
            "dropped_messages": record.dropped_messages,
            "model": record.model,
            "created_at": now,
        },
    )
