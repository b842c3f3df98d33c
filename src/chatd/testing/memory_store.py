"""MemoryStore: the store ports in process memory, with the same semantics as SqlStore."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from chatd.errors import AlreadyExists, IdempotencyConflict, NotFound
from chatd.store.codec import message_from_dict, message_to_dict
from chatd.store.paging import parse_session_cursor, session_cursor
from chatd.store.rows import (
    CONTINUATION_EXPIRED,
    LEASE_EXPIRED,
    busy,
    not_continuable,
    nothing_to_regenerate,
    title_from,
)
from chatd.store.usage import call_record
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


@dataclass
class _Session:
    info: SessionInfo
    turns: list[TurnRecord] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    # Each finished turn's context_tokens, by turn id.
    context_tokens: dict[str, int] = field(default_factory=dict)
    folds: list[FoldRecord] = field(default_factory=list)


class MemoryStore:
    """The store ports kept in dicts; for tests and throwaway runs."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._turn_owner: dict[str, tuple[str, str]] = {}
        self._leases: dict[str, datetime] = {}
        # Sessions with a turn opened here and not yet committed or abandoned.
        self._beginning: set[tuple[str, str]] = set()
        # The usage of turns that went with their sessions, and of stateless calls.
        self._records: list[_Used] = []

    async def get_session(self, user_id: str, session_id: str) -> SessionInfo | None:
        """Return the session, or None if it does not exist for this user."""
        found = self._sessions.get((user_id, session_id))
        return None if found is None else _info(found)

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
        key = (user_id, session_id)
        if key not in self._sessions:
            now = _now()
            params = params or GenerationParams()
            info = SessionInfo(
                session_id, user_id, system_prompt, params, provider, now, now, title=title or None
            )
            self._sessions[key] = _Session(info)
        return _info(self._sessions[key])

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
        session = self._get(user_id, session_id)
        info = session.info
        session.info = replace(
            info,
            system_prompt=info.system_prompt if system_prompt is None else system_prompt,
            provider=info.provider if provider is None else provider,
            params=info.params if params is None else params.over(info.params),
            title=info.title if title is None else title or None,
            updated_at=_now(),
        )
        return _info(session)

    async def list_sessions(self, user_id: str) -> Sequence[SessionInfo]:
        """Return the user's sessions, oldest first."""
        # Dicts keep insertion order, which is creation order.
        return [_info(s) for (user, _), s in self._sessions.items() if user == user_id]

    async def context_messages(self, user_id: str, session_id: str) -> Sequence[Message]:
        """Return the messages of complete and truncated turns, in order."""
        return _in_context(self._get(user_id, session_id))

    async def list_turns(self, user_id: str, session_id: str) -> Sequence[TurnRecord]:
        """Return every turn with its state and messages, in order."""
        return list(self._get(user_id, session_id).turns)

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
        """Read what a new turn needs; SessionBusy, NotFound or a replay as SqlStore says."""
        key = (user_id, session_id)
        if key in self._beginning:
            raise busy(session_id)
        found = self._sessions.get(key)
        settings = found.info.settings if found is not None else create
        if settings is None:
            raise NotFound(f"no session {session_id!r}")
        if system_prompt is not None:
            settings = replace(settings, system_prompt=system_prompt)
        now = _now()
        if found is not None:
            self._expire(found.turns, now)
            if idempotency_key is not None:
                prior = self._replay(found, idempotency_key, user_message, session_id)
                if prior is not None:
                    return prior
            if any(t.state is TurnState.STREAMING for t in found.turns):
                raise busy(session_id)
        self._beginning.add(key)
        return _Pending(self, key, user_message, settings, found, idempotency_key, system_prompt)

    def _newest(
        self, user_id: str, session_id: str
    ) -> tuple[tuple[str, str], _Session, TurnRecord | None]:
        """Read a session with no turn in flight, and its newest turn; SessionBusy if one is."""
        key = (user_id, session_id)
        if key in self._beginning:
            raise busy(session_id)
        found = self._get(user_id, session_id)
        self._expire(found.turns, _now())
        if any(t.state is TurnState.STREAMING for t in found.turns):
            raise busy(session_id)
        return key, found, found.turns[-1] if found.turns else None

    async def open_continuation(
        self, user_id: str, session_id: str, *, history_until: HistoryCut | None = None
    ) -> _Continuation:
        """Read the truncated newest turn to continue; errors as SqlStore's say."""
        key, found, newest = self._newest(user_id, session_id)
        if newest is None or newest.state is not TurnState.TRUNCATED:
            raise not_continuable(session_id, None if newest is None else newest.state)
        self._beginning.add(key)
        return _Continuation(self, key, found, newest)

    async def open_regeneration(
        self, user_id: str, session_id: str, *, history_until: HistoryCut | None = None
    ) -> _Regeneration:
        """Read the newest turn to replace; errors as SqlStore's say."""
        key, found, newest = self._newest(user_id, session_id)
        if newest is None or not newest.messages or newest.messages[0].role is not Role.USER:
            raise nothing_to_regenerate(session_id)
        self._beginning.add(key)
        return _Regeneration(self, key, found, newest)

    async def renew_leases(self, turn_ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend these turns' leases; return the ids renewed (streaming, not asked to stop)."""
        until = _now() + timedelta(seconds=lease_s)
        asked = await self.stop_requested(turn_ids)
        kept = {t for t in turn_ids if t in self._leases and t not in asked}
        self._leases.update(dict.fromkeys(kept, until))
        return kept

    async def stop_requested(self, turn_ids: Sequence[str]) -> set[str]:
        """Return the ids of these turns that are streaming with a stop asked for."""
        asked: set[str] = set()
        for turn_id in turn_ids:
            try:
                session, index = self._in_flight(turn_id)
            except NotFound:
                continue
            if session.turns[index].error is not None:
                asked.add(turn_id)
        return asked

    async def request_stop(self, user_id: str, session_id: str, why: str) -> str | None:
        """Mark the session's turn in flight to be stopped (its error says why); return its id."""
        session = self._get(user_id, session_id)
        now = _now()
        for index, turn in enumerate(session.turns):
            until = self._leases.get(turn.id)
            if turn.state is TurnState.STREAMING and until is not None and until >= now:
                session.turns[index] = replace(turn, error=why)
                return turn.id
        return None

    async def turn_state(self, turn_id: str) -> TurnState | None:
        """Return the turn's state now, or None if it is no longer stored."""
        owner = self._turn_owner.get(turn_id)
        session = None if owner is None else self._sessions.get(owner)
        if session is None:
            return None
        return next((t.state for t in session.turns if t.id == turn_id), None)

    async def existing_turns(self, turn_ids: Sequence[str]) -> set[str]:
        """Return the ids of these turns that are still stored, in any state."""
        return {t for t in turn_ids if t in self._turn_owner}

    async def expire_leases(self) -> int:
        """Mark every streaming turn whose lease ran out as interrupted; return how many."""
        now = _now()
        return sum(self._expire(s.turns, now) for s in self._sessions.values())

    def _expire(self, turns: list[TurnRecord], now: datetime) -> int:
        expired = 0
        for index, turn in enumerate(turns):
            until = self._leases.get(turn.id)
            if until is not None and until < now:
                del self._leases[turn.id]
                if turn.stop_reason is not None:
                    # A continuation: its first part goes back into the context, as it was.
                    swept = replace(turn, state=TurnState.TRUNCATED, error=CONTINUATION_EXPIRED)
                else:
                    swept = replace(turn, state=TurnState.INTERRUPTED, error=LEASE_EXPIRED)
                turns[index] = swept
                expired += 1
        return expired

    def _replay(
        self, session: _Session, key: str, user_message: Message, session_id: str
    ) -> TurnRecord | None:
        prior = next((t for t in session.turns if t.id == session.keys.get(key)), None)
        if prior is None:
            return None
        if prior.messages[0] != user_message:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different message; use a new key"
            )
        if prior.state is TurnState.STREAMING:
            raise busy(session_id)
        if prior.state in (TurnState.FAILED, TurnState.INTERRUPTED):
            # The new turn takes the key at its commit.
            return None
        return prior

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
        session, index = self._in_flight(turn_id)
        self._leases.pop(turn_id, None)
        turn = session.turns[index]
        sizes = tokens or TurnTokens()
        reply = (*sizes.reply, *([None] * (len(messages) - len(sizes.reply))))[: len(messages)]
        # The sizes of the messages stored so far (the user's, and a continued turn's first
        # part); the user message's, if learned, as SqlStore keeps it (turns.user_tokens).
        earlier = [*turn.tokens, *([None] * len(turn.messages))][: len(turn.messages)]
        if sizes.user is not None:
            earlier[0] = sizes.user
        if sizes.context is not None:
            session.context_tokens[turn_id] = sizes.context
        if fold is not None:
            session.folds.append(fold)
            session.info = replace(session.info, fold=fold.fold)
        finished = replace(
            turn,
            state=state,
            messages=(*turn.messages, *(_copy(m) for m in messages)),
            stop_reason=stop_reason,
            usage=usage,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            error=error,
            tokens=(*earlier, *reply),
            cost_micro_usd=cost_micro_usd,
        )
        session.turns[index] = finished
        session.info = replace(session.info, updated_at=_now())
        return finished

    async def reset_session(self, user_id: str, session_id: str) -> int | None:
        """Delete every turn but keep the session; return the turns removed, None if missing."""
        session = self._sessions.get((user_id, session_id))
        if session is None:
            return None
        removed = len(session.turns)
        self._keep_usage(user_id, session_id, session.turns)
        for turn in session.turns:
            self._turn_owner.pop(turn.id, None)
            self._leases.pop(turn.id, None)
        session.turns.clear()
        session.keys.clear()
        session.context_tokens.clear()
        session.folds.clear()
        session.info = replace(session.info, updated_at=_now(), fold=ContextFold())
        return removed

    async def delete_session(self, user_id: str, session_id: str) -> bool:
        """Delete the session and all its rows; return whether it existed."""
        session = self._sessions.pop((user_id, session_id), None)
        if session is None:
            return False
        self._keep_usage(user_id, session_id, session.turns)
        for turn in session.turns:
            self._turn_owner.pop(turn.id, None)
            # Else a turn streaming on it would go on renewing a lease it no longer has.
            self._leases.pop(turn.id, None)
        return True

    async def prune_sessions(self, older_than: timedelta) -> int:
        """Delete every user's sessions idle for longer than this; return how many."""
        cutoff = _now() - older_than
        stale = [
            key
            for key, s in self._sessions.items()
            if s.info.updated_at < cutoff
            and not any(t.state is TurnState.STREAMING for t in s.turns)
        ]
        for key in stale:
            await self.delete_session(*key)
        return len(stale)

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
        if (user_id, session_id) in self._sessions:
            raise AlreadyExists(f"session {session_id!r} already exists")
        now = _now()
        info = SessionInfo(
            session_id, user_id, system_prompt, params, provider, now, now, title=title or None
        )
        session = _Session(info)
        for seq, t in enumerate(turns, start=1):
            state = TurnState.INTERRUPTED if t.state is TurnState.STREAMING else t.state
            turn = replace(
                t,
                id=uuid4().hex,
                session_id=session_id,
                seq=seq,
                state=state,
                messages=tuple(_copy(m) for m in t.messages),
            )
            session.turns.append(turn)
            self._turn_owner[turn.id] = (user_id, session_id)
        self._sessions[(user_id, session_id)] = session
        return _info(session)

    async def page_sessions(
        self,
        user_id: str,
        *,
        limit: int,
        after: str | None = None,
        order: SessionOrder = "created",
    ) -> tuple[Sequence[SessionInfo], str | None]:
        """Return up to limit sessions in this order after the cursor, and the next cursor."""
        mine = [s.info for (user, _), s in self._sessions.items() if user == user_id]
        start = None if after is None else parse_session_cursor(after, order)
        if order == "created":
            mine.sort(key=lambda i: (i.created_at, i.id))
            if start is not None:
                mine = [i for i in mine if (i.created_at, i.id) > start]
        else:
            mine.sort(key=lambda i: (i.updated_at, i.id), reverse=True)
            if start is not None:
                mine = [i for i in mine if (i.updated_at, i.id) < start]
        page = [_info(self._sessions[(user_id, i.id)]) for i in mine[:limit]]
        return page, session_cursor(page[-1], order) if len(mine) > limit else None

    async def page_turns(
        self, user_id: str, session_id: str, *, limit: int, after_seq: int = 0
    ) -> tuple[Sequence[TurnRecord], int | None]:
        """Return up to limit turns after seq after_seq, in order, and the seq to go on from."""
        later = [t for t in self._get(user_id, session_id).turns if t.seq > after_seq]
        page = later[:limit]
        return page, page[-1].seq if len(later) > limit else None

    async def usage_totals(self, user_id: str) -> tuple[int, Usage]:
        """Return how many turns the user has, and their usage summed."""
        turns = [t for (user, _), s in self._sessions.items() if user == user_id for t in s.turns]
        return len(turns), sum((t.usage for t in turns), Usage())

    def record_call(self, report: CallReport) -> None:
        """Keep a finished call's usage if no turn row holds it (written at once, here)."""
        row = call_record(report, _now())
        if row is not None:
            self._records.append(_Used.of_record(row))

    async def usage_report(self, query: UsageQuery) -> Sequence[UsageLine]:
        """Return usage and cost over the range, grouped, as SqlStore's report does."""
        live = [
            _Used.of_turn(user, session_id, t)
            for (user, session_id), s in self._sessions.items()
            for t in s.turns
        ]
        groups: dict[tuple[str | None, ...], UsageLine] = {}
        for used in (*live, *self._records):
            if used.at < query.since or (query.until is not None and used.at >= query.until):
                continue
            if query.user_id is not None and used.user_id != query.user_id:
                continue
            key = used.key(query)
            line = used.line(key[0], key[1] if query.by == "session" else None)
            found = groups.get(key)
            groups[key] = line if found is None else found + line
        lines = list(groups.values())
        if query.by == "day":
            return sorted(lines, key=lambda line: line.key or "")
        return sorted(lines, key=lambda n: (-n.cost_micro_usd, n.key or "", n.user_id or ""))

    def _keep_usage(self, user_id: str, session_id: str, turns: Sequence[TurnRecord]) -> None:
        # What SqlStore moves to its usage records when turns go: they stay counted. A turn
        # still streaming is counted when its run reports it discarded: only what its row
        # holds (a continued turn's first part) is kept here.
        for t in turns:
            used = _Used.of_turn(user_id, session_id, t)
            if t.state is TurnState.STREAMING:
                if t.usage == Usage() and not t.cost_micro_usd:
                    continue
                used = replace(used, turns=0)
            self._records.append(used)

    async def session_stats(self, user_id: str | None) -> tuple[int, int]:
        """Return how many sessions there are (one user's, or all) and their turns in context."""
        found = [s for (user, _), s in self._sessions.items() if user_id in (None, user)]
        return len(found), sum(1 for s in found for t in s.turns if t.state.in_context)

    async def ping(self) -> None:
        """Do nothing: memory is always there."""

    async def close(self) -> None:
        """Do nothing: there are no connections."""

    def _in_flight(self, turn_id: str) -> tuple[_Session, int]:
        owner = self._turn_owner.get(turn_id)
        session = None if owner is None else self._sessions.get(owner)
        if session is not None:
            for index, turn in enumerate(session.turns):
                if turn.id == turn_id and turn.state is TurnState.STREAMING:
                    return session, index
        raise NotFound(f"no turn {turn_id!r} in flight")

    def _get(self, user_id: str, session_id: str) -> _Session:
        session = self._sessions.get((user_id, session_id))
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        return session


class _Pending:
    """A turn MemoryStore read but has not stored: committed in one step, or abandoned."""

    def __init__(
        self,
        store: MemoryStore,
        key: tuple[str, str],
        user_message: Message,
        settings: SessionSettings,
        found: _Session | None,
        idempotency_key: str | None,
        system_prompt: str | None,
    ) -> None:
        self.turn_id = uuid4().hex
        self.settings = settings
        self._store = store
        self._key = key
        self._message = user_message
        self._found = found
        self._idempotency_key = idempotency_key
        self._prompt = system_prompt
        # What the commit checks is unchanged: no turn began or ended since the read.
        self._stamp = None if found is None else _stamp(found)
        self._open = True
        # Only turns before this seq are in the history (a regeneration's: not the one replaced).
        self._below: int | None = None

    async def history(
        self, until: HistoryCut | None, *, same_as_hint: bool = False
    ) -> tuple[Message, ...]:
        """Return the in-context history as read, oldest first, only as far back as needed."""
        return (await self.context(until, same_as_hint=same_as_hint)).messages

    async def context(self, until: HistoryCut | None, *, same_as_hint: bool = False) -> History:
        """Return the history in the session's view, as SqlStore's does."""
        if self._found is None:
            return History()
        session = self._found
        fold = session.info.fold
        rows = [
            (_copy(m), t.seq, t.tokens[i] if i < len(t.tokens) else None, t.id)
            for t in session.turns
            if t.state.in_context
            and t.seq >= fold.first_turn
            and (self._below is None or t.seq < self._below)
            for i, m in enumerate(t.messages)
        ]
        taken: list[tuple[Message, int, int | None, str]] = []
        for row in reversed(rows):
            taken.append(row)
            if until is not None and until(row[0]):
                break
        taken.reverse()
        return History(
            messages=tuple(r[0] for r in taken),
            turns=tuple(r[1] for r in taken),
            tokens=tuple(r[2] for r in taken),
            context_tokens=session.context_tokens.get(taken[-1][3]) if taken else None,
            fold=fold,
        )

    async def commit(self, plan: TurnPlan, lease_s: float) -> TurnRecord:
        """Store the turn, as SqlStore's commit does; SessionBusy if the session changed."""
        if not self._open:
            raise RuntimeError("this turn was already committed or abandoned")
        try:
            return await self._commit(plan, lease_s)
        finally:
            self.abandon()

    def _append(
        self, session: _Session, seq: int, plan: TurnPlan, lease_s: float, now: datetime
    ) -> TurnRecord:
        """Add this turn to the session, streaming under a lease, and return it."""
        turn = TurnRecord(
            id=self.turn_id,
            session_id=self._key[1],
            seq=seq,
            state=TurnState.STREAMING,
            messages=(_copy(self._message),),
            stop_reason=None,
            usage=Usage(),
            model=plan.model,
            provider=plan.provider,
            created_at=now,
        )
        session.turns.append(turn)
        self._store._turn_owner[turn.id] = self._key
        self._store._leases[turn.id] = now + timedelta(seconds=lease_s)
        return turn

    async def _commit(self, plan: TurnPlan, lease_s: float) -> TurnRecord:
        store, (user_id, session_id) = self._store, self._key
        session = store._sessions.get(self._key)
        now = _now()
        if self._found is None:
            if session is not None:
                raise busy(session_id)
            settings = self.settings
            await store.ensure_session(
                user_id,
                session_id,
                system_prompt=settings.system_prompt,
                params=settings.params,
                provider=settings.provider,
            )
            session = store._get(user_id, session_id)
        elif session is not self._found or _stamp(session) != self._stamp:
            raise busy(session_id)
        store._expire(session.turns, now)
        if any(t.state is TurnState.STREAMING for t in session.turns):
            raise busy(session_id)
        seq = session.turns[-1].seq + 1 if session.turns else 1
        turn = self._append(session, seq, plan, lease_s, now)
        if self._idempotency_key is not None:
            session.keys[self._idempotency_key] = turn.id
        prompt = session.info.system_prompt if self._prompt is None else self._prompt
        title = session.info.title
        if seq == 1 and title is None:
            # The session's first turn names it, unless its user already did.
            title = title_from(self._message)
        session.info = replace(session.info, system_prompt=prompt, title=title, updated_at=now)
        return turn

    def abandon(self) -> None:
        """Let the session go; the turn is not (or is already) stored."""
        if self._open:
            self._open = False
            self._store._beginning.discard(self._key)


class _Continuation(_Pending):
    """A truncated turn MemoryStore read to continue: committed in one step, or abandoned."""

    def __init__(
        self, store: MemoryStore, key: tuple[str, str], found: _Session, turn: TurnRecord
    ) -> None:
        first = turn.messages[0] if turn.messages else Message.user("")
        super().__init__(store, key, first, found.info.settings, found, None, None)
        self.turn_id = turn.id
        self.turn = turn

    async def _commit(self, plan: TurnPlan, lease_s: float) -> TurnRecord:
        store, (_, session_id) = self._store, self._key
        session = store._sessions.get(self._key)
        now = _now()
        if session is None or session is not self._found or _stamp(session) != self._stamp:
            raise busy(session_id)
        store._expire(session.turns, now)
        if any(t.state is TurnState.STREAMING for t in session.turns):
            raise busy(session_id)
        newest = session.turns[-1]
        if newest.id != self.turn_id or newest.state is not TurnState.TRUNCATED:
            raise busy(session_id)
        # Its stop reason stays (set if an imported turn had none): the sweep reads it.
        stop = newest.stop_reason or StopReason.MAX_TOKENS
        # A streaming turn's error is a stop asked for: an earlier note goes.
        turn = replace(newest, state=TurnState.STREAMING, stop_reason=stop, error=None)
        session.turns[-1] = turn
        store._leases[turn.id] = now + timedelta(seconds=lease_s)
        session.info = replace(session.info, updated_at=now)
        return turn


class _Regeneration(_Pending):
    """The newest turn MemoryStore read to replace: committed in one step, or abandoned."""

    def __init__(
        self, store: MemoryStore, key: tuple[str, str], found: _Session, turn: TurnRecord
    ) -> None:
        super().__init__(store, key, turn.messages[0], found.info.settings, found, None, None)
        self.turn = turn
        self._below = turn.seq

    async def _commit(self, plan: TurnPlan, lease_s: float) -> TurnRecord:
        store, (user_id, session_id) = self._store, self._key
        session = store._sessions.get(self._key)
        now = _now()
        if session is None or session is not self._found or _stamp(session) != self._stamp:
            raise busy(session_id)
        store._expire(session.turns, now)
        if any(t.state is TurnState.STREAMING for t in session.turns):
            raise busy(session_id)
        old = session.turns[-1]
        if old.id != self.turn.id:
            raise busy(session_id)
        # Its usage stays counted, as SqlStore moves it to the usage records.
        store._keep_usage(user_id, session_id, [old])
        session.turns.pop()
        store._turn_owner.pop(old.id, None)
        session.context_tokens.pop(old.id, None)
        turn = self._append(session, old.seq, plan, lease_s, now)
        # A retried send with the replaced turn's key gets this reply.
        session.keys = {k: turn.id if t == old.id else t for k, t in session.keys.items()}
        session.info = replace(session.info, updated_at=now)
        return turn


@dataclass(frozen=True, slots=True)
class _Used:
    """What a turn or a recorded call used, and when, for usage reports."""

    user_id: str
    session_id: str | None
    provider: str | None
    model: str | None
    at: datetime
    usage: Usage
    turns: int
    completions: int
    cost: int | None
    # Still streaming: no cost known yet, which is not "no price".
    streaming: bool = False

    @classmethod
    def of_turn(cls, user_id: str, session_id: str, turn: TurnRecord) -> _Used:
        """Return a stored turn's usage."""
        return cls(
            user_id,
            session_id,
            turn.provider,
            turn.model,
            turn.created_at,
            turn.usage,
            1,
            0,
            turn.cost_micro_usd,
            turn.state is TurnState.STREAMING,
        )

    @classmethod
    def of_record(cls, row: dict[str, Any]) -> _Used:
        """Return a usage record's (chatd.store.usage.call_record's row)."""
        usage = Usage(
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            row["estimated"],
        )
        completion = row["kind"] == "completion"
        return cls(
            row["user_id"],
            row["session_id"],
            row["provider"],
            row["model"],
            row["created_at"],
            usage,
            0 if completion else 1,
            1 if completion else 0,
            None if row["unpriced"] else row["cost_micro_usd"],
        )

    def key(self, query: UsageQuery) -> tuple[str | None, ...]:
        """Return the group this usage falls in, as the SQL report keys it."""
        if query.by == "day":
            return (self.at.astimezone(UTC).date().isoformat(),)
        if query.by == "model":
            name = self.model
            if name is not None and self.provider:
                name = f"{self.provider}/{name}"
            return (name if self.model is not None else self.provider,)
        if query.by == "session":
            return (self.session_id, self.user_id)
        return (self.user_id,)

    def line(self, key: str | None, owner: str | None) -> UsageLine:
        """Return this usage as a report line."""
        unpriced = self.cost is None and not self.streaming
        return UsageLine(
            key,
            self.usage,
            self.turns,
            self.completions,
            self.cost or 0,
            int(unpriced) * (self.turns + self.completions),
            owner,
        )


def _stamp(session: _Session) -> tuple[int, int]:
    return len(session.turns), sum(len(t.messages) for t in session.turns)


def _info(session: _Session) -> SessionInfo:
    count = sum(1 for t in session.turns if t.state.in_context)
    cost = sum(t.cost_micro_usd or 0 for t in session.turns)
    return replace(session.info, turn_count=count, cost_micro_usd=cost)


def _in_context(session: _Session) -> list[Message]:
    return [m for t in session.turns if t.state.in_context for m in t.messages]


def _copy(message: Message) -> Message:
    # Through the codec, as the SQL store does, so later edits to a caller's dicts never leak in.
    return message_from_dict(message_to_dict(message))


def _now() -> datetime:
    return datetime.now(UTC)
