"""The ports the engine and the adapters talk to, as narrow protocols; a store implements them all.

`TurnStore` is the engine's: a turn opened (the read), committed (the write) and finished.
`LeaseStore` is the lease keeper's and the sweep's. `SessionReader` and `SessionWriter` are what
the API, the CLI and the session documents use, with `UsageStore` (usage and cost over time).
`Store` is all of them: what a backend provides. `KeyStore` is the API keys'.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from chatd.keys import ApiKey, KeyLimits
from chatd.types import (
    CallReport,
    FoldRecord,
    GenerationParams,
    History,
    HistoryCut,
    Message,
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


class PendingTurn(Protocol):
    """A turn read but not yet stored: what `TurnStore.open_turn` hands the engine.

    It holds the session in this process until committed or abandoned: another send to the
    session here is SessionBusy meanwhile, before it costs a model call.
    """

    @property
    def turn_id(self) -> str:
        """Return the id the turn is stored under once committed."""
        ...

    @property
    def settings(self) -> SessionSettings:
        """Return what the turn plans from: the session's settings, with the turn's prompt."""
        ...

    async def history(
        self, until: HistoryCut | None, *, same_as_hint: bool = False
    ) -> tuple[Message, ...]:
        """Return the history in context before the turn, oldest first, as the open read it.

        Only as far back as `until` needs (all of it when None): fed the messages newest first,
        it says when no older one could reach the model. `same_as_hint` says `until` cuts
        where open_turn's `history_until` did, so what the open read is the answer as it is.
        """
        ...

    async def context(self, until: HistoryCut | None, *, same_as_hint: bool = False) -> History:
        """Return the history in the session's context view, as `history` does, and its sizes.

        Only turns from the view's first turn on; the view (its fold) comes with it.
        """
        ...

    async def commit(self, plan: TurnPlan, lease_s: float) -> TurnRecord:
        """Store the turn (streaming, holding a lease) and its user message; committed on return.

        In one transaction: a missing session is created; an existing one is claimed only if
        its newest message is still the one the open read saw (else SessionBusy: the history
        is stale), with the turn's system prompt if it brought one; turns of the session whose
        lease ran out are marked interrupted; a failed or interrupted turn's idempotency key
        moves to this one; the session's first turn (none before it) gives a session without a
        title its title, from the user message. Any race (another process's too) is
        SessionBusy. Ends the hold.
        """
        ...

    def abandon(self) -> None:
        """Give the turn up unstored (its plan was refused, or the engine stopped); idempotent."""
        ...


class PendingContinuation(PendingTurn, Protocol):
    """A truncated turn read to be continued: what `TurnStore.open_continuation` hands the engine.

    `turn_id` is the truncated turn's own id; `history` and `context` include that turn, as
    the newest in context. `commit` makes the turn stream again rather than adding one: in one
    transaction, only if nothing was added to the session since the read (the turn is still
    its newest) and the turn is still truncated (else SessionBusy); turns whose lease ran out
    are marked as the sweep marks them. It returns the turn, streaming, with its messages so
    far; `finish_turn` then appends the continuation's messages after them.
    """

    @property
    def turn(self) -> TurnRecord:
        """Return the truncated turn as the open read it: its messages, usage and stop reason."""
        ...


class PendingRegeneration(PendingTurn, Protocol):
    """The newest turn read to be replaced: what `TurnStore.open_regeneration` hands the engine.

    `turn_id` is the new turn's id; `history` and `context` end before the replaced turn.
    `commit` replaces it in one transaction, only if nothing was added to the session since
    the read and the turn is not streaming (else SessionBusy): turns whose lease ran out are
    marked as the sweep marks them; the replaced turn is deleted with its messages, its usage
    moved to the usage records as a reset's; the new turn is stored in its place (its seq,
    streaming, holding a lease) with the same user message and idempotency key, and context
    view changes recorded for the replaced turn are recorded for it. The session's view is
    left as it is: it never starts after the replaced turn.
    """

    @property
    def turn(self) -> TurnRecord:
        """Return the turn to replace, as the open read it: its messages, state and usage."""
        ...


class TurnStore(Protocol):
    """The engine's port: a turn opened, committed and finished; every call scoped to one user."""

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
    ) -> PendingTurn | TurnRecord:
        """Read what a new turn needs: the session's settings, its head and its history.

        `history_until` is the engine's guess of how far back the history is needed (the
        server's default context policy): read that far in the same read, so that the common
        turn needs no second one whatever its history's length.

        Nothing is written. A missing session is NotFound, unless `create` gives the settings
        it is created with at commit. SessionBusy if a turn on the session is in flight (its
        lease still live), or another send to it in this process is between its open and its
        commit. With an idempotency key used on this session: the same message gets the
        earlier, finished turn back (a TurnRecord: a replay, nothing to commit) unless that
        turn failed or was interrupted, which frees the key for this one; another message is
        an IdempotencyConflict; a turn still in flight is SessionBusy. `system_prompt`, if
        given, is in the settings the turn plans from and becomes the session's at commit.
        """
        ...

    async def open_continuation(
        self, user_id: str, session_id: str, *, history_until: HistoryCut | None = None
    ) -> PendingContinuation:
        """Read what continuing the session's newest turn needs: the turn, settings, history.

        Nothing is written. NotFound without the session; SessionBusy if a turn on it is in
        flight or being opened in this process; NothingToContinue unless its newest turn is
        truncated (a continuation whose process died counts as truncated: the commit's sweep
        makes it so). `history_until` is read as open_turn reads it.
        """
        ...

    async def open_regeneration(
        self, user_id: str, session_id: str, *, history_until: HistoryCut | None = None
    ) -> PendingRegeneration:
        """Read what replacing the session's newest turn needs: the turn, settings, history.

        Nothing is written. NotFound without the session; SessionBusy if a turn on it is in
        flight or being opened in this process; NothingToRegenerate if it has no turn. The
        history is what came before the newest turn, read as open_turn reads it.
        """
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
        tokens: TurnTokens | None = None,
        fold: FoldRecord | None = None,
        cost_micro_usd: int | None = None,
    ) -> TurnRecord:
        """Append the reply's messages and set the final state, in one transaction.

        With `tokens`, the sizes the turn's calls showed are kept with its messages; with
        `fold`, the session's context view changes (and the change is recorded) in the same
        transaction. `cost_micro_usd` is what the turn's usage cost (None: no price known).
        """
        ...

    async def request_stop(self, user_id: str, session_id: str, why: str) -> str | None:
        """Ask whichever process runs the session's turn in flight to stop it; return its id.

        Marks the streaming turn whose lease is live with `why` as its error: from then on
        its lease is not renewed, and the process running it learns at its next renewal
        (`LeaseStore.stop_requested`) and ends it. The turn stays streaming until then.
        NotFound without the session; None when no turn is in flight on it.
        """
        ...

    async def turn_state(self, turn_id: str) -> TurnState | None:
        """Return the turn's state now, or None if it is no longer stored."""
        ...


class LeaseStore(Protocol):
    """Streaming turns' leases: renewed by the process running them, expired by the sweep."""

    async def renew_leases(self, turn_ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend these turns' leases; return the ids renewed (those still streaming).

        A turn asked to stop (`TurnStore.request_stop`) is not renewed.
        """
        ...

    async def stop_requested(self, turn_ids: Sequence[str]) -> set[str]:
        """Return the ids of these turns that are streaming with a stop asked for."""
        ...

    async def existing_turns(self, turn_ids: Sequence[str]) -> set[str]:
        """Return the ids of these turns that are still stored, in any state.

        A held turn missing from a renewal (and not asked to stop) is either taken by a sweep
        (still stored) or gone with its session (deleted or reset): this tells which.
        """
        ...

    async def expire_leases(self) -> int:
        """Mark every streaming turn whose lease ran out as interrupted; return how many."""
        ...


class SessionReader(Protocol):
    """Sessions and their turns, read; every call is scoped to one user."""

    async def get_session(self, user_id: str, session_id: str) -> SessionInfo | None:
        """Return the session, or None if it does not exist for this user."""
        ...

    async def list_sessions(self, user_id: str) -> Sequence[SessionInfo]:
        """Return the user's sessions, oldest first."""
        ...

    async def page_sessions(
        self,
        user_id: str,
        *,
        limit: int,
        after: str | None = None,
        order: SessionOrder = "created",
    ) -> tuple[Sequence[SessionInfo], str | None]:
        """Return up to limit sessions in this order after the cursor, and the next cursor.

        created: oldest first, by (created_at, id); recent: most recently active first, by
        (updated_at, id) descending. The next cursor is None on the last page; InputError if
        `after` is not a cursor, or was made for the other order.
        """
        ...

    async def list_turns(self, user_id: str, session_id: str) -> Sequence[TurnRecord]:
        """Return every turn with its state and messages, in order."""
        ...

    async def page_turns(
        self, user_id: str, session_id: str, *, limit: int, after_seq: int = 0
    ) -> tuple[Sequence[TurnRecord], int | None]:
        """Return up to limit turns with seq above after_seq, in order, and the seq to go on from.

        The seq to go on from is None on the last page; NotFound if there is no such session.
        """
        ...

    async def context_messages(self, user_id: str, session_id: str) -> Sequence[Message]:
        """Return the messages of complete and truncated turns, in order."""
        ...

    async def usage_totals(self, user_id: str) -> tuple[int, Usage]:
        """Return how many turns the user has, and their usage summed."""
        ...

    async def session_stats(self, user_id: str | None) -> tuple[int, int]:
        """Return how many sessions there are and how many turns of them are in context.

        Counts one user's, or every user's when user_id is None.
        """
        ...


class SessionWriter(Protocol):
    """Sessions created, changed, emptied, deleted and imported; scoped to one user."""

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
        ...

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
        """Change the given settings (None leaves one as it is); NotFound if missing.

        A title of "" clears the session's title.
        """
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
        title: str | None = None,
    ) -> SessionInfo:
        """Create a session with these finished turns in one transaction; AlreadyExists if taken."""
        ...


class UsageStore(Protocol):
    """Usage and cost over time: stored turns, and records that outlive their sessions.

    A deleted, reset or pruned session's turns leave their usage behind as records, so totals
    never drop when history goes.
    """

    def record_call(self, report: CallReport) -> None:
        """Keep a finished call's usage where no turn row holds it (a report observer).

        A stateless call's, or a turn's discarded with its session while it ran; others are
        ignored, and so is a call that used nothing. Quick and never raises: the record is
        written after the call, and a report read in this process waits for it.
        """
        ...

    async def usage_report(self, query: UsageQuery) -> Sequence[UsageLine]:
        """Return the usage and cost of calls made in the range, grouped as the query says.

        Turns count by when they began, failed and interrupted ones too; one user's, or every
        user's when `query.user_id` is None.
        """
        ...


class SessionStore(SessionReader, SessionWriter, UsageStore, Protocol):
    """Sessions read and written, and usage: what the API's session routes and the CLI use."""


class Store(TurnStore, LeaseStore, SessionStore, Protocol):
    """Every port a backend provides (SqlStore, MemoryStore), with its health and lifetime."""

    async def ping(self) -> None:
        """Check the store answers; StoreUnavailable if not."""
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
