"""The store interface the engine talks to; `chatd.store` implements it (SQL and in-memory)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chatd.types import (
    GenerationParams,
    Message,
    SessionInfo,
    StopReason,
    TurnRecord,
    TurnState,
    Usage,
)

DEFAULT_USER = "local"


class Store(Protocol):
    """Sessions and their turns; every call is scoped to one user."""

    async def get_session(self, user_id: str, session_id: str) -> SessionInfo | None:
        """Return the session, or None if it does not exist for this user."""
        ...

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
        ...

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
        ...

    async def list_sessions(self, user_id: str) -> Sequence[SessionInfo]:
        """Return the user's sessions, oldest first."""
        ...

    async def context_messages(self, user_id: str, session_id: str) -> Sequence[Message]:
        """Return the messages of complete and truncated turns, in order."""
        ...

    async def list_turns(self, user_id: str, session_id: str) -> Sequence[TurnRecord]:
        """Return every turn with its state and messages, in order."""
        ...

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
        ...

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
        ...

    async def reset_session(self, user_id: str, session_id: str) -> int | None:
        """Delete every turn but keep the session; return the turns removed, None if missing."""
        ...

    async def delete_session(self, user_id: str, session_id: str) -> bool:
        """Delete the session and all its rows; return whether it existed."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
