"""A turn read but not yet written: what SqlStore's opens hand the engine, and their commits.

The engine plans and launches the model call between the read and the commit; the commit
claims the session in one transaction, refusing a stale read with SessionBusy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, Protocol
from uuid import uuid4

from sqlalchemy import Connection, exc

from chatd.store import queries as q
from chatd.store.database import Database
from chatd.store.rows import (
    UNFINISHED_TURN,
    busy,
    message,
    message_values,
    settings_values,
    title_from,
    turn_record,
)
from chatd.store.usage import move_turn
from chatd.types import (
    ContextFold,
    History,
    HistoryCut,
    Message,
    Role,
    SessionSettings,
    TurnPlan,
    TurnRecord,
    TurnState,
)

# A history message decoded, with its row (role, parts, tokens, turn seq, turn context_tokens).
Decoded = tuple[Message, Sequence[Any]]

# History rows fetched at a time: about what a short conversation holds.
HISTORY_BATCH = 50


class Holder(Protocol):
    """The store an opened turn belongs to: its database and what it tracks of beginnings."""

    db: Database
    # Sessions whose turn this process is beginning (between its read and its commit).
    _beginning: set[tuple[str, str]]

    def _remember(self, begun: Begun) -> None:
        """Keep a begun turn, so its finish can skip reading it back."""


@dataclass(frozen=True, slots=True)
class Begun:
    """A streaming turn as finish_turn needs it: where its reply's messages go, and its row."""

    session_pk: int
    next_message: int
    row: Mapping[str, Any]
    record: TurnRecord


@dataclass(frozen=True, slots=True)
class Draft:
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
    decoded: list[Decoded]
    # ...then its next rows (role, parts, tokens, turn seq, turn context_tokens), not yet
    # decoded: without a hint, all of them unless there are more than HISTORY_BATCH, then
    # HISTORY_BATCH + 1.
    rows: list[Sequence[Any]]
    # Whether decoded and rows hold the whole history.
    whole: bool
    # Only turns before this seq are in the history (a regeneration's: not the turn replaced).
    below: int | None = None


class Opened:
    """What a turn's open read: its session's draft and history, held here until written."""

    def __init__(
        self,
        store: Holder,
        user_id: str,
        session_id: str,
        draft: Draft,
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
            return history_of(draft.decoded, draft.fold)
        taken: list[Decoded] = []
        for d in draft.decoded:
            taken.append(d)
            if until is not None and until(d[0]):
                return history_of(taken, draft.fold)
        if take(draft.rows, taken, until) or draft.whole:
            return history_of(taken, draft.fold)
        # Longer than the open's read: the rest, in a read of its own (a stale one is refused
        # by the commit's claim).
        seen, pk = len(draft.decoded) + len(draft.rows), draft.pk
        assert pk is not None
        values = {"pk": pk, "first_turn": draft.fold.first_turn}

        def rest(conn: Connection) -> None:
            rows = context_rows(conn, values, draft.below)
            take(islice(rows, seen, None), taken, until)

        await self._store.db.read(rest)
        return history_of(taken, draft.fold)

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

    def _new_turn(
        self, pk: int | None, seq: int, plan: TurnPlan, lease_s: float, key: str | None
    ) -> dict[str, Any]:
        """Return the turns row of this turn, streaming under a lease from the read's time."""
        return {
            "id": self.turn_id,
            "session_pk": pk,
            "seq": seq,
            "state": q.STREAMING,
            "model": plan.model,
            "provider": plan.provider,
            "created_at": self._now,
            "lease_until": self._now + timedelta(seconds=lease_s),
            "idempotency_key": key,
            **UNFINISHED_TURN,
        }

    async def _begin(self, write: Callable[[Connection], Begun]) -> Begun:
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


class Pending(Opened):
    """A turn SqlStore read but has not written: the engine plans, launches, then commits."""

    def __init__(
        self,
        store: Holder,
        user_id: str,
        session_id: str,
        user_message: Message,
        draft: Draft,
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
        turn = self._new_turn(draft.pk, draft.last_turn + 1, plan, lease_s, self._key)
        record = turn_record(turn, session_id, (user_message,))

        # The session's first turn names it, unless its user already did.
        title = title_from(user_message) if draft.last_turn == 0 else None

        def write(conn: Connection) -> Begun:
            pk = draft.pk
            if pk is None:
                # Created here, in the turn's transaction: a refused turn leaves no session.
                assert self._create is not None
                values = session_row(self._user_id, session_id, self._create, now, title)
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
            return Begun(pk, seq + 1, row, record)

        return (await self._begin(write)).record


class Continuation(Opened):
    """A truncated turn SqlStore read to continue: the engine plans, launches, then commits."""

    def __init__(
        self,
        store: Holder,
        user_id: str,
        session_id: str,
        draft: Draft,
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

        def write(conn: Connection) -> Begun:
            # Nothing added to the session since the read: the turn is still its newest.
            self._claim(conn, pk)
            if q.CLAIM_CONTINUATION.execute(conn, {"turn_id": turn.id, "until": until}) != 1:
                raise busy(session_id)
            row = {**self._row, "state": q.STREAMING, "lease_until": until, "error": None}
            record = replace(turn, state=TurnState.STREAMING)
            return Begun(pk, draft.last_message + 1, row, record)

        return (await self._begin(write)).record


class Regeneration(Opened):
    """The newest turn SqlStore read to replace: the engine plans, launches, then commits."""

    def __init__(
        self,
        store: Holder,
        user_id: str,
        session_id: str,
        draft: Draft,
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
        # In the replaced turn's place (a view starting at it starts at this one), with its
        # key (a retried send with that key gets this reply).
        turn = self._new_turn(pk, old.seq, plan, lease_s, self._key)
        record = turn_record(turn, session_id, (user_message,))
        owner = (self._user_id, session_id)

        def write(conn: Connection) -> Begun:
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
            return Begun(pk, seq + 1, turn, record)

        return (await self._begin(write)).record


def session_row(
    user_id: str,
    session_id: str,
    settings: SessionSettings,
    now: datetime,
    title: str | None = None,
) -> dict[str, Any]:
    """Return the sessions row of a new session."""
    return {
        "user_id": user_id,
        "session_id": session_id,
        **settings_values(settings),
        "title": title,
        "created_at": now,
        "updated_at": now,
    }


def context_rows(
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


def take(rows: Iterable[Sequence[Any]], taken: list[Decoded], until: HistoryCut | None) -> bool:
    """Decode history rows newest first into taken until `until` says enough; tell if it did."""
    for row in rows:
        m = message(row[0], row[1])
        taken.append((m, row))
        if until is not None and until(m):
            return True
    return False


def _tokens(message: Message, row: Sequence[Any]) -> int | None:
    """Return a history message's tokens: its own, or its turn's user_tokens if it opens it."""
    if row[2] is not None or message.role is not Role.USER or message.tool_results:
        return row[2]  # type: ignore[no-any-return]
    return row[5]  # type: ignore[no-any-return]


def history_of(newest_first: Sequence[Decoded], fold: ContextFold) -> History:
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
