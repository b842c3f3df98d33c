"""The ports the engine talks to: the session store and the key store, as protocols."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from chatd.keys import ApiKey, KeyLimits
from chatd.types import (
    GenerationParams,
    Launch,
    Message,
    Planner,
    SessionInfo,
    SessionSettings,
    StopReason,
    TurnPlan,
    TurnRecord,
    TurnStart,
    TurnState,
    Usage,
)


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
        plan: TurnPlan | Planner,
        *,
        create: SessionSettings | None = None,
        lease_s: float = 60.0,
        idempotency_key: str | None = None,
        launch: Launch | None = None,
        system_prompt: str | None = None,
    ) -> TurnStart:
        """Store the user's message in a new streaming turn holding a lease, committed on return.

        The plan (or what the planner makes of the session's settings) names the turn's model
        and provider and how far back its history is read. A missing session is created with
        `create`'s settings in the same transaction, or NotFound without it. Returns the new turn
        with the history in context before it, exactly as it is when the turn is stored (a turn
        that began or ended in between makes this SessionBusy): oldest first, and only as far
        back as the plan's `history_until` needs (all of it when None). Turns of this session
        whose lease ran out are marked interrupted first. SessionBusy if another turn is in
        flight. With an idempotency key used on this session: the same message gets the
        earlier turn back with no history (a finished state tells it is a replay) unless that
        turn failed or was interrupted, which frees the key for a new turn; another message is
        an IdempotencyConflict; a turn still in flight is SessionBusy.

        `system_prompt`, if given, becomes the session's (a new one's too) in the same write, and
        the planner sees it: a turn refused for any reason leaves the session's prompt as it was.
        A replayed turn changes nothing.

        `launch`, if given, is awaited with the new turn and its history (never for a replay)
        before the turn is stored, or after: if begin_turn then raises, the turn was not
        stored and whatever launch started must be stopped.
        """
        ...

    async def renew_leases(self, turn_ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend these turns' leases; return the ids renewed (those still streaming)."""
        ...

    async def existing_turns(self, turn_ids: Sequence[str]) -> set[str]:
        """Return the ids of these turns that are still stored, in any state.

        A held turn missing from a renewal is either taken by a sweep (still stored) or gone
        with its session (deleted or reset): this tells which.
        """
        ...

    async def expire_leases(self) -> int:
        """Mark every streaming turn whose lease ran out as interrupted; return how many."""
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

    async def prune_sessions(self, older_than: timedelta) -> int:
        """Delete every user's sessions idle for longer than this; return how many."""
        ...

    async def import_session(
        self,
        user_id: str,
        session_id: str,
        *,
        system_prompt: str | None,
        params: GenerationParams,
        provider: str | None,
        turns: Sequence[TurnRecord],
    ) -> SessionInfo:
        """Create a session with these finished turns in one transaction; AlreadyExists if taken."""
        ...

    async def page_sessions(
        self, user_id: str, *, limit: int, after: str | None = None
    ) -> tuple[Sequence[SessionInfo], str | None]:
        """Return up to limit sessions, oldest first, after the cursor, and the next cursor.

        The next cursor is None on the last page; InputError if `after` is not a cursor.
        """
        ...

    async def page_turns(
        self, user_id: str, session_id: str, *, limit: int, after_seq: int = 0
    ) -> tuple[Sequence[TurnRecord], int | None]:
        """Return up to limit turns with seq above after_seq, in order, and the seq to go on from.

        The seq to go on from is None on the last page; NotFound if there is no such session.
        """
        ...

    async def usage_totals(self, user_id: str) -> tuple[int, Usage]:
        """Return how many turns the user has, and their usage summed."""
        ...

    async def ping(self) -> None:
        """Check the store answers; StoreUnavailable if not."""
        ...

    async def session_stats(self, user_id: str | None) -> tuple[int, int]:
        """Return how many sessions there are and how many turns of them are in context.

        Counts one user's, or every user's when user_id is None.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class KeyStore(Protocol):
    """API keys, stored by the SHA-256 of the key; the key itself is never kept."""

    async def create_key(
        self,
        user_id: str,
        key_hash: str,
        prefix: str,
        *,
        admin: bool = False,
        limits: KeyLimits | None = None,
        expires_at: datetime | None = None,
    ) -> ApiKey:
        """Store a new key and return it."""
        ...

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """Return the key with this hash (revoked and expired ones too), or None."""
        ...

    async def list_keys(self, user_id: str | None = None) -> Sequence[ApiKey]:
        """Return every key (or one user's), oldest first."""
        ...

    async def revoke_key(self, ref: str) -> ApiKey:
        """Revoke the key with this id or display prefix; NotFound, or InputError if ambiguous."""
        ...

    async def touch_key(self, key_id: str, when: datetime) -> None:
        """Record that the key was used at this time."""
        ...
