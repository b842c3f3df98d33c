"""MemoryStore: the Store port in process memory, with the same semantics as SqlStore."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import uuid4

from chatd.errors import NotFound
from chatd.store.codec import message_from_dict, message_to_dict
from chatd.types import (
    GenerationParams,
    Message,
    SessionInfo,
    StopReason,
    TurnRecord,
    TurnState,
    Usage,
)


@dataclass
class _Session:
    info: SessionInfo
    turns: list[TurnRecord] = field(default_factory=list)


class MemoryStore:
    """The Store port kept in dicts; for tests and throwaway runs."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._turn_owner: dict[str, tuple[str, str]] = {}

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
    ) -> SessionInfo:
        """Return the session, creating it with these settings if it is new."""
        key = (user_id, session_id)
        if key not in self._sessions:
            now = _now()
            info = SessionInfo(
                session_id, user_id, system_prompt, params or GenerationParams(), provider, now, now
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
    ) -> SessionInfo:
        """Change the given settings (None leaves one as it is); NotFound if missing."""
        session = self._get(user_id, session_id)
        info = session.info
        session.info = replace(
            info,
            system_prompt=info.system_prompt if system_prompt is None else system_prompt,
            provider=info.provider if provider is None else provider,
            params=info.params if params is None else params.over(info.params),
            updated_at=_now(),
        )
        return _info(session)

    async def list_sessions(self, user_id: str) -> Sequence[SessionInfo]:
        """Return the user's sessions, oldest first."""
        # Dicts keep insertion order, which is creation order.
        return [_info(s) for (user, _), s in self._sessions.items() if user == user_id]

    async def context_messages(self, user_id: str, session_id: str) -> Sequence[Message]:
        """Return the messages of complete and truncated turns, in order."""
        session = self._get(user_id, session_id)
        return [m for t in session.turns if t.state.in_context for m in t.messages]

    async def list_turns(self, user_id: str, session_id: str) -> Sequence[TurnRecord]:
        """Return every turn with its state and messages, in order."""
        return list(self._get(user_id, session_id).turns)

    async def begin_turn(
        self,
        user_id: str,
        session_id: str,
        user_message: Message,
        *,
        model: str,
        provider: str,
    ) -> TurnRecord:
        """Store the user's message in a new turn in state streaming, committed on return."""
        session = self._get(user_id, session_id)
        now = _now()
        seq = session.turns[-1].seq + 1 if session.turns else 1
        turn = TurnRecord(
            id=uuid4().hex,
            session_id=session_id,
            seq=seq,
            state=TurnState.STREAMING,
            messages=(_copy(user_message),),
            stop_reason=None,
            usage=Usage(),
            model=model,
            provider=provider,
            created_at=now,
        )
        session.turns.append(turn)
        self._turn_owner[turn.id] = (user_id, session_id)
        session.info = replace(session.info, updated_at=now)
        return turn

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
    ) -> TurnRecord:
        """Append the reply's messages and set the final state, in one transaction."""
        if state is TurnState.STREAMING:
            raise ValueError("finish_turn needs a final state")
        session, index = self._in_flight(turn_id)
        turn = session.turns[index]
        finished = replace(
            turn,
            state=state,
            messages=(*turn.messages, *(_copy(m) for m in messages)),
            stop_reason=stop_reason,
            usage=usage,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            error=error,
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
        for turn in session.turns:
            self._turn_owner.pop(turn.id, None)
        session.turns.clear()
        session.info = replace(session.info, updated_at=_now())
        return removed

    async def delete_session(self, user_id: str, session_id: str) -> bool:
        """Delete the session and all its rows; return whether it existed."""
        session = self._sessions.pop((user_id, session_id), None)
        if session is None:
            return False
        for turn in session.turns:
            self._turn_owner.pop(turn.id, None)
        return True

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


def _info(session: _Session) -> SessionInfo:
    count = sum(1 for t in session.turns if t.state.in_context)
    return replace(session.info, turn_count=count)


def _copy(message: Message) -> Message:
    # Through the codec, as the SQL store does, so later edits to a caller's dicts never leak in.
    return message_from_dict(message_to_dict(message))


def _now() -> datetime:
    return datetime.now(UTC)
