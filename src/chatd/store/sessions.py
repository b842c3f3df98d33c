"""SqlStore: the store ports on prebuilt SQLAlchemy Core statements, one function per call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any
from uuid import uuid4

from sqlalchemy import Connection, exc, text, update

from chatd.errors import (
    AlreadyExists,
    IdempotencyConflict,
    NotFound,
)
from chatd.store import queries as q
from chatd.store.database import Database
from chatd.store.paging import parse_session_cursor, session_cursor
from chatd.store.rows import (
    UNFINISHED_TURN,
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
    settings_values,
    title_from,
    turn_record,
    utc_now,
)
from chatd.store.tables import sessions
from chatd.store.usage import (
    UsageLedger,
    move_turn,
    move_turns,
    report_lines,
    report_statement,
)
from chatd.types import (
    CallReport,
    ContextFold,
    FoldRecord,
    GenerationParams,
    History,
    HistoryCut,
    Message,
    Role,
    SessionInfo,
    SessionOrder,
    SessionSettings,
    StopReason,
    TurnPlan,
    TurnRecord,
    TurnState,
    TurnTokens,
    Usage,
    UsageLine,
    UsageQuery,
)

# Each order's statements: its first page, and its pages after a cursor.
_SESSION_PAGES = {
    "created": (q.PAGE_SESSIONS, q.PAGE_SESSIONS_AFTER),
    "recent": (q.PAGE_SESSIONS_RECENT, q.PAGE_SESSIONS_RECENT_AFTER),
}

# A history message decoded, with its row (role, parts, tokens, turn seq, turn context_tokens).
_Decoded = tuple[Message, Sequence[Any]]

# History rows fetched at a time: about what a short conversation holds.
HISTORY_BATCH = 50
# Sessions pruned per statement: far below any SQLite's limit on bound parameters.
PRUNE_BATCH = 500
# Turns begun here whose finish_turn can skip reading them back (beyond: it reads).
BEGUN_KEPT = 4096


@dataclass(frozen=True, slots=True)
class _Begun:
    """A streaming turn as finish_turn needs it: where its reply's messages go, and its row."""

    session_pk: int
    next_message: int
    row: Mapping[str, Any]
    record: TurnRecord


@dataclass(frozen=True, slots=True)
class _Draft:
    """What open_turn read: the session as it was, and the newest of its history's rows."""

    pk: int | None  # None: the session is created by the commit
    last_turn: int
    last_message: int
    streaming: bool  # a turn whose lease ran out is still marked streaming
    release: str | None  # the failed turn whose idempotency key this turn takes over
    settings: SessionSettings
    fold: ContextFold
    # The history's newest messages in the view, decoded as far back as open_turn's hint
    # asked, each with its row...
    decoded: list[_Decoded]
    # ...then its next rows (role, parts, tokens, turn seq, turn context_tokens), not yet
    # decoded: without a hint, all of them unless there are more than HISTORY_BATCH, then
    # HISTORY_BATCH + 1.
    rows: list[Sequence[Any]]
    # Whether decoded and rows hold the whole history.
    whole: bool
    # Only turns before this seq are in the history (a regeneration's: not the turn replaced).
    below: int | None = None


class _Opened:
    """What a turn's open read: its session's draft and history, held here until written."""

    def __init__(
        self,
        store: SqlStore,
        user_id: str,
        session_id: str,
        draft: _Draft,
        *,
        now: datetime,
        hinted: bool,
    ) -> None:
        self.turn_id = uuid4().hex
        self.settings = draft.settings
        self._store = store
        self._user_id = user_id
        self._session_id = session_id
        self._draft = draft
        self._now = now
        self._open = True
        self._hinted = hinted

    async def history(
        self, until: HistoryCut | None, *, same_as_hint: bool = False
    ) -> tuple[Message, ...]:
        """Return the history before the turn, oldest first, decoded only as far as needed."""
        return (await self.context(until, same_as_hint=same_as_hint)).messages

    async def context(self, until: HistoryCut | None, *, same_as_hint: bool = False) -> History:
        """Return the history in the view before the turn, with its sizes, as far as needed."""
        draft = self._draft
        if same_as_hint and self._hinted:
            # The open applied this very cut while it read: its messages are the answer.
            return _history_of(draft.decoded, draft.fold)
        taken: list[_Decoded] = []
        for d in draft.decoded:
            taken.append(d)
            if until is not None and until(d[0]):
                return _history_of(taken, draft.fold)
        if _take(draft.rows, taken, until) or draft.whole:
            return _history_of(taken, draft.fold)
        # Longer than the open's read: the rest, in a read of its own (a stale one is refused
        # by the commit's claim).
        seen, pk = len(draft.decoded) + len(draft.rows), draft.pk
        assert pk is not None
        values = {"pk": pk, "first_turn": draft.fold.first_turn}

        def rest(conn: Connection) -> None:
            rows = _context_rows(conn, values, draft.below)
            _take(islice(rows, seen, None), taken, until)

        await self._store.db.read(rest)
        return _history_of(taken, draft.fold)

    def abandon(self) -> None:
        """Let the session go in this process; the turn is not (or is already) stored."""
        if self._open:
            self._open = False
            self._store._beginning.discard((self._user_id, self._session_id))

    def _claim(self, conn: Connection, pk: int, prompt: str | None = None) -> None:
        """Claim the session in the commit's transaction; SessionBusy if the read is stale."""
        draft, now = self._draft, self._now
        # Nothing added to the session since the read.
        claim = {"pk": pk, "now": now, "last_message": draft.last_message}
        if prompt is None:
            claimed = q.CLAIM_SESSION.execute(conn, claim)
        else:
            claimed = q.CLAIM_SESSION_PROMPT.execute(conn, {**claim, "prompt": prompt})
        if claimed != 1:
            raise busy(self._session_id)
        if draft.streaming:
            # Its process may have died: an expired lease frees the session (marked as the
            # sweep marks it).
            conn.execute(q.EXPIRE_SESSION_LEASES, {"pk": pk, "now": now})

    async def _begin(self, write: Callable[[Connection], _Begun]) -> _Begun:
        """Run the commit's write once, then let the session go; SessionBusy on a race."""
        if not self._open:
            raise RuntimeError("this turn was already committed or abandoned")
        try:
            begun = await self._store.db.write(write)
        except exc.IntegrityError:
            # One streaming turn per session (a partial unique index), unique seqs and keys:
            # another turn is in flight or began on this session just now.
            raise busy(self._session_id) from None
        finally:
            self.abandon()
        self._store._remember(begun)
        return begun


class _Pending(_Opened):
    """A turn SqlStore read but has not written: the engine plans, launches, then commits."""

    def __init__(
        self,
        store: SqlStore,
        user_id: str,
        session_id: str,
        user_message: Message,
        draft: _Draft,
        *,
        create: SessionSettings | None,
        idempotency_key: str | None,
        system_prompt: str | None,
        now: datetime,
        hinted: bool,
    ) -> None:
        super().__init__(store, user_id, session_id, draft, now=now, hinted=hinted)
        self._message = user_message
        self._create = create
        self._key = idempotency_key
        self._prompt = system_prompt

    async def commit(self, plan: TurnPlan, lease_s: float) -> TurnRecord:
        """Write the turn and its user message in one transaction; SessionBusy if stale."""
        draft, now, session_id = self._draft, self._now, self._session_id
        turn_id, user_message, prompt = self.turn_id, self._message, self._prompt
        turn = {
            "id": turn_id,
            "session_pk": draft.pk,
            "seq": draft.last_turn + 1,
            "state": q.STREAMING,
            "model": plan.model,
            "provider": plan.provider,
            "created_at": now,
            "lease_until": now + timedelta(seconds=lease_s),
            "idempotency_key": self._key,
            **UNFINISHED_TURN,
        }
        record = turn_record(turn, session_id, (user_message,))

        # The session's first turn names it, unless its user already did.
        title = title_from(user_message) if draft.last_turn == 0 else None

        def write(conn: Connection) -> _Begun:
            pk = draft.pk
            if pk is None:
                # Created here, in the turn's transaction: a refused turn leaves no session.
                assert self._create is not None
                values = _session_row(self._user_id, session_id, self._create, now, title)
                pk = conn.execute(q.CREATE_SESSION, values).scalar_one()
            else:
                self._claim(conn, pk, prompt)
                if draft.release is not None:
                    conn.execute(q.RELEASE_KEY, {"turn_id": draft.release})
                if title is not None:
                    conn.execute(q.TITLE_IF_NONE, {"pk": pk, "title": title})
            row = {**turn, "session_pk": pk}
            q.INSERT_TURN.execute(conn, row)
            seq = draft.last_message + 1
            q.INSERT_MESSAGES.execute(conn, message_values(turn_id, pk, seq, user_message, now))
            return _Begun(pk, seq + 1, row, record)

        return (await self._begin(write)).record


class _Continuation(_Opened):
    """A truncated turn SqlStore read to continue: the engine plans, launches, then commits."""

    def __init__(
        self,
        store: SqlStore,
        user_id: str,
        session_id: str,
        draft: _Draft,
        turn: TurnRecord,
        row: Mapping[str, Any],
        *,
        now: datetime,
        hinted: bool,
    ) -> None:
        super().__init__(store, user_id, session_id, draft, now=now, hinted=hinted)
        self.turn_id = turn.id
        self.turn = turn
        self._row = row

    async def commit(self, plan: TurnPlan, lease_s: float) -> TurnRecord:
        """Make the turn stream again, holding a lease; SessionBusy if the read is stale."""
        draft, now, session_id, turn = self._draft, self._now, self._session_id, self.turn
        pk = draft.pk
        assert pk is not None
        until = now + timedelta(seconds=lease_s)

        def write(conn: Connection) -> _Begun:
            # Nothing added to the session since the read: the turn is still its newest.
            self._claim(conn, pk)
            if q.CLAIM_CONTINUATION.execute(conn, {"turn_id": turn.id, "until": until}) != 1:
                raise busy(session_id)
            row = {**self._row, "state": q.STREAMING, "lease_until": until, "error": None}
            record = replace(turn, state=TurnState.STREAMING)
            return _Begun(pk, draft.last_message + 1, row, record)

        return (await self._begin(write)).record


class _Regeneration(_Opened):
    """The newest turn SqlStore read to replace: the engine plans, launches, then commits."""

    def __init__(
        self,
        store: SqlStore,
        user_id: str,
        session_id: str,
        draft: _Draft,
        turn: TurnRecord,
        key: str | None,
        *,
        now: datetime,
        hinted: bool,
    ) -> None:
        super().__init__(store, user_id, session_id, draft, now=now, hinted=hinted)
        self.turn = turn
        self._key = key

    async def commit(self, plan: TurnPlan, lease_s: float) -> TurnRecord:
        """Replace the turn with a new one, streaming, in one transaction; SessionBusy if stale."""
        draft, now, session_id, old = self._draft, self._now, self._session_id, self.turn
        pk = draft.pk
        assert pk is not None
        user_message = old.messages[0]
        turn = {
            "id": self.turn_id,
            "session_pk": pk,
            # In the replaced turn's place: a view starting at it starts at this one.
            "seq": old.seq,
            "state": q.STREAMING,
            "model": plan.model,
            "provider": plan.provider,
            "created_at": now,
            "lease_until": now + timedelta(seconds=lease_s),
            # A retried send with the replaced turn's key gets this reply.
            "idempotency_key": self._key,
            **UNFINISHED_TURN,
        }
        record = turn_record(turn, session_id, (user_message,))
        owner = (self._user_id, session_id)

        def write(conn: Connection) -> _Begun:
            # Nothing added to the session since the read: the turn is still its newest.
            self._claim(conn, pk)
            # Its usage stays counted, moved to the usage records; its messages go with it.
            if not move_turn(conn, old.id, pk, owner, now):
                raise busy(session_id)
            conn.execute(q.MOVE_FOLDS, {"old": old.id, "new": self.turn_id})
            q.INSERT_TURN.execute(conn, turn)
            seq = draft.last_message + 1
            values = message_values(self.turn_id, pk, seq, user_message, now)
            q.INSERT_MESSAGES.execute(conn, values)
            return _Begun(pk, seq + 1, turn, record)

        return (await self._begin(write)).record


class SqlStore:
    """The store ports over SQL; each call is one function run on one connection."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Stateless calls' usage, written after the calls (chatd.store.usage).
        self.ledger = UsageLedger(db)
        self._begun: dict[str, _Begun] = {}
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
        row = _session_row(
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
    ) -> _Pending | TurnRecord:
        """Read the session's head, settings, idempotency key and newest history, in one read."""
        # A send that arrives while another to the same session is between its open and its
        # commit here would read the same history and launch its own model call, only for
        # its write to be refused: refuse it now, before it costs anything.
        beginning = (user_id, session_id)
        if beginning in self._beginning:
            raise busy(session_id)
        now, key = utc_now(), _key(user_id, session_id)
        if create is not None and system_prompt is not None:
            create = replace(create, system_prompt=system_prompt)

        def read(conn: Connection) -> _Draft | TurnRecord:
            head = q.BEGIN_HEAD.first(conn, key)
            if head is None:
                if create is None:
                    raise NotFound(f"no session {session_id!r}")
                return _Draft(None, 0, 0, False, None, create, ContextFold(), [], [], True)
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

        self._beginning.add(beginning)
        try:
            draft = await self.db.read(read)
        except BaseException:
            self._beginning.discard(beginning)
            raise
        if isinstance(draft, TurnRecord):
            self._beginning.discard(beginning)
            return draft
        return _Pending(
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
    ) -> _Continuation:
        """Read the session's truncated newest turn, its settings and history, in one read."""
        beginning = (user_id, session_id)
        if beginning in self._beginning:
            raise busy(session_id)
        now, key = utc_now(), _key(user_id, session_id)

        def read(conn: Connection) -> tuple[_Draft, TurnRecord, dict[str, Any]]:
            head = q.BEGIN_HEAD.first(conn, key)
            if head is None:
                raise NotFound(f"no session {session_id!r}")
            until = head["streaming_until"]
            if until is not None and until >= now:
                raise busy(session_id)
            row = conn.execute(q.NEWEST_TURN, {"pk": head["id"]}).one_or_none()
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

        self._beginning.add(beginning)
        try:
            draft, record, row = await self.db.read(read)
        except BaseException:
            self._beginning.discard(beginning)
            raise
        return _Continuation(
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
    ) -> _Regeneration:
        """Read the session's newest turn (to replace), its settings and the history before it."""
        beginning = (user_id, session_id)
        if beginning in self._beginning:
            raise busy(session_id)
        now, key = utc_now(), _key(user_id, session_id)

        def read(conn: Connection) -> tuple[_Draft, TurnRecord, str | None]:
            head = q.BEGIN_HEAD.first(conn, key)
            if head is None:
                raise NotFound(f"no session {session_id!r}")
            until = head["streaming_until"]
            if until is not None and until >= now:
                raise busy(session_id)
            row = conn.execute(q.NEWEST_TURN, {"pk": head["id"]}).one_or_none()
            if row is None:
                raise nothing_to_regenerate(session_id)
            rows = conn.execute(q.TURN_MESSAGES, {"turn_id": row.id})
            messages = tuple(message(r.role, r.parts) for r in rows)
            if not messages or messages[0].role is not Role.USER:
                raise nothing_to_regenerate(session_id)
            record = turn_record(row._mapping, session_id, messages)
            draft = _draft(conn, head, session_settings(head), None, history_until, row.seq)
            return draft, record, row.idempotency_key

        self._beginning.add(beginning)
        try:
            draft, record, idempotency_key = await self.db.read(read)
        except BaseException:
            self._beginning.discard(beginning)
            raise
        return _Regeneration(
            self,
            user_id,
            session_id,
            draft,
            record,
            idempotency_key,
            now=now,
            hinted=history_until is not None,
        )

    def _remember(self, begun: _Begun) -> None:
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
        session = _session_row(
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


def _session_row(
    user_id: str,
    session_id: str,
    settings: SessionSettings,
    now: datetime,
    title: str | None = None,
) -> dict[str, Any]:
    """Return the sessions row of a new session."""
    return {
        **_key(user_id, session_id),
        **settings_values(settings),
        "title": title,
        "created_at": now,
        "updated_at": now,
    }


def _session(conn: Connection, user_id: str, session_id: str) -> SessionInfo | None:
    row = conn.execute(q.GET_SESSION, _key(user_id, session_id)).one_or_none()
    return None if row is None else session_info(row._mapping)


def _history(conn: Connection, pk: int, until: HistoryCut | None) -> tuple[Message, ...]:
    """Read the in-context history newest first, decoding only as far as `until` needs."""
    # Fetched a batch at a time (a row at a time costs more), decoded one at a time.
    rows = q.CONTEXT_MESSAGES_NEWEST.rows(conn, {"pk": pk, "first_turn": 0}, HISTORY_BATCH)
    return read_back((message(r[0], r[1]) for r in rows), until)


def _draft(
    conn: Connection,
    head: Mapping[str, Any],
    settings: SessionSettings,
    release: str | None,
    history_until: HistoryCut | None,
    below: int | None = None,
) -> _Draft:
    """Read the newest history of the session `head` (BEGIN_HEAD's row) into a draft.

    With `below`, only the turns before that seq are its history.
    """
    pk, fold = head["id"], session_fold(head)
    values = {"pk": pk, "first_turn": fold.first_turn}
    rows = _context_rows(conn, values, below)
    decoded: list[_Decoded] = []
    if history_until is not None:
        # As far back as the hint says, whatever the history's length, in this read.
        whole = not _take(rows, decoded, history_until)
        newest: list[Sequence[Any]] = []
    else:
        # The newest batch (and one more row: is there more?), decoded later only as far back
        # as the engine's plan needs.
        newest = list(islice(rows, HISTORY_BATCH + 1))
        whole = len(newest) <= HISTORY_BATCH
    last_turn, last_message = head["last_turn"] or 0, head["last_message"] or 0
    streaming = head["streaming_until"] is not None
    return _Draft(
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


def _context_rows(
    conn: Connection, values: Mapping[str, Any], below: int | None
) -> Iterator[Sequence[Any]]:
    """Yield CONTEXT_MESSAGES_NEWEST's rows, only those of turns before `below` if given."""
    rows = q.CONTEXT_MESSAGES_NEWEST.rows(conn, values, HISTORY_BATCH)
    if below is None:
        return rows
    return _before(rows, below)


def _before(rows: Iterator[Sequence[Any]], below: int) -> Iterator[Sequence[Any]]:
    try:
        for row in rows:
            if row[3] < below:
                yield row
    finally:
        # However the reading ends, the statement is done with (see Direct.rows).
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def _finish_head(conn: Connection, turn_id: str) -> _Begun:
    """Read back a streaming turn that was begun elsewhere (another process, or forgotten)."""
    rows = conn.execute(q.FINISH_HEAD, {"turn_id": turn_id}).all()
    if not rows or rows[0].state != q.STREAMING:
        raise NotFound(f"no turn {turn_id!r} in flight")
    head = rows[0]
    earlier = tuple(message(r.role, r.parts) for r in rows if r.role is not None)
    record = turn_record(head._mapping, head.session_id, earlier)
    return _Begun(head.session_pk, (head.last_message or 0) + 1, dict(head._mapping), record)


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


def _take(rows: Iterable[Sequence[Any]], taken: list[_Decoded], until: HistoryCut | None) -> bool:
    """Decode history rows newest first into taken until `until` says enough; tell if it did."""
    for row in rows:
        m = message(row[0], row[1])
        taken.append((m, row))
        if until is not None and until(m):
            return True
    return False


def _turn_with(row: Mapping[Any, Any], session_id: str, rows: Sequence[Any]) -> TurnRecord:
    """Build a turn from its row and its messages' rows (role, parts, tokens)."""
    messages = tuple([message(m.role, m.parts) for m in rows])
    tokens = [m.tokens for m in rows]
    if tokens and tokens[0] is None:
        tokens[0] = row["user_tokens"]
    return turn_record(row, session_id, messages, tuple(tokens))


def _tokens(message: Message, row: Sequence[Any]) -> int | None:
    """Return a history message's tokens: its own, or its turn's user_tokens if it opens it."""
    if row[2] is not None or message.role is not Role.USER or message.tool_results:
        return row[2]  # type: ignore[no-any-return]
    return row[5]  # type: ignore[no-any-return]


def _history_of(newest_first: Sequence[_Decoded], fold: ContextFold) -> History:
    """Return decoded history rows, newest first, as the History the engine plans from."""
    if not newest_first:
        return History(fold=fold)
    oldest_first = newest_first[::-1]
    return History(
        messages=tuple([d[0] for d in oldest_first]),
        turns=tuple([d[1][3] for d in oldest_first]),
        tokens=tuple([_tokens(m, row) for m, row in oldest_first]),
        context_tokens=newest_first[0][1][4],
        fold=fold,
    )


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
