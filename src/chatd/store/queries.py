"""The statements SqlStore runs, built once with bound parameters (Core, no ORM)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)

from chatd.store.rows import CONTINUATION_EXPIRED, LEASE_EXPIRED
from chatd.store.sqlite_fast import Direct
from chatd.store.tables import context_folds, messages, sessions, turns
from chatd.types import StopReason, TurnState

IN_CONTEXT_STATES = tuple(s.value for s in TurnState if s.in_context)
STREAMING = TurnState.STREAMING.value
# The state inline in the SQL, not a bound parameter: only then can SQLite (and PostgreSQL, for
# generic plans) use the partial indexes on streaming turns instead of scanning the session's.
IS_STREAMING = turns.c.state == literal_column(f"'{STREAMING}'")
# Inline too: a bound list is expanded per execution, which chatd.store.direct does not do.
IN_CONTEXT = turns.c.state.in_([literal_column(f"'{s}'") for s in IN_CONTEXT_STATES])

# Parameters: user_id and session_id.
THIS_SESSION = and_(
    sessions.c.user_id == bindparam("user_id"),
    sessions.c.session_id == bindparam("session_id"),
)

_turn_count = (
    select(func.count())
    .where(turns.c.session_pk == sessions.c.id, IN_CONTEXT)
    .correlate_except(turns)
    .scalar_subquery()
    .label("turn_count")
)
# What the session's turns cost, their unpriced ones at 0: read with the session, in its query
# (one more look at the turns its turn_count already reads).
_session_cost = (
    select(func.coalesce(func.sum(turns.c.cost_micro_usd), 0))
    .where(turns.c.session_pk == sessions.c.id)
    .correlate_except(turns)
    .scalar_subquery()
    .label("cost_micro_usd")
)
_last_turn_seq = (
    select(func.max(turns.c.seq))
    .where(turns.c.session_pk == sessions.c.id)
    .correlate_except(turns)
    .scalar_subquery()
)
# Aliased: finish_turn's read also joins messages, which must not correlate in here.
_earlier = messages.alias("earlier")
_last_message_seq = (
    select(func.max(_earlier.c.seq)).where(_earlier.c.session_pk == sessions.c.id).scalar_subquery()
)

GET_SESSION = select(sessions, _turn_count, _session_cost).where(THIS_SESSION)
LIST_SESSIONS = (
    select(sessions, _turn_count, _session_cost)
    .where(sessions.c.user_id == bindparam("user_id"))
    .order_by(sessions.c.created_at, sessions.c.id)
)
SESSION_PK = select(sessions.c.id).where(THIS_SESSION)
INSERT_SESSION = insert(sessions)
CREATE_SESSION = INSERT_SESSION.returning(sessions.c.id)
# Parameters: pk, now.
TOUCH_SESSION = Direct(
    update(sessions).where(sessions.c.id == bindparam("pk")).values(updated_at=bindparam("now"))
)
DELETE_SESSION = delete(sessions).where(THIS_SESSION)
# A session's first turn names it, unless its user already did. Parameters: pk, title.
TITLE_IF_NONE = (
    update(sessions)
    .where(sessions.c.id == bindparam("pk"), sessions.c.title.is_(None))
    .values(title=bindparam("title"))
)

# The messages of complete and truncated turns, newest first, of one session by pk: ordered by
# turn, then message, so a turn's messages stay together whatever the timing.
# Parameters: pk, and first_turn: the context view's first turn (0 for the whole history).
# Each row: role, parts, the message's tokens, its turn's seq, context_tokens and user_tokens.
CONTEXT_MESSAGES_NEWEST = Direct(
    select(
        messages.c.role,
        messages.c.parts,
        messages.c.tokens,
        turns.c.seq,
        turns.c.context_tokens,
        turns.c.user_tokens,
    )
    # Driven from the session's turns, then each turn's messages by index: on a freshly
    # filled table PostgreSQL misjudged the other way round (messages first) as 10x slower.
    .select_from(turns)
    .join(messages, messages.c.turn_id == turns.c.id)
    .where(
        turns.c.session_pk == bindparam("pk"),
        IN_CONTEXT,
        turns.c.seq >= bindparam("first_turn"),
    )
    .order_by(turns.c.seq.desc(), messages.c.seq.desc())
)
LIST_TURNS = (
    select(turns)
    .join(sessions, sessions.c.id == turns.c.session_pk)
    .where(THIS_SESSION)
    .order_by(turns.c.seq)
)
SESSION_MESSAGES = (
    select(messages.c.turn_id, messages.c.role, messages.c.parts, messages.c.tokens)
    .join(sessions, sessions.c.id == messages.c.session_pk)
    .where(THIS_SESSION)
    .order_by(messages.c.seq)
)

# What open_turn needs in one read: the session (its pk and settings), its last turn and
# message seqs, and the lease of a turn streaming on it (None when none is).
BEGIN_HEAD = Direct(
    select(
        sessions,
        _last_turn_seq.label("last_turn"),
        _last_message_seq.label("last_message"),
        select(func.max(turns.c.lease_until))
        .where(turns.c.session_pk == sessions.c.id, IS_STREAMING)
        .correlate_except(turns)
        .scalar_subquery()
        .label("streaming_until"),
    ).where(THIS_SESSION)
)
# A turn's commit, first: touch the session only if no message was added to it since the
# read (parameters pk, now, last_message). No row changed means another turn began or ended
# in between, so the history read may be stale.
_CLAIM = (
    update(sessions)
    .where(
        sessions.c.id == bindparam("pk"),
        func.coalesce(
            select(func.max(messages.c.seq))
            .where(messages.c.session_pk == bindparam("pk"))
            .scalar_subquery(),
            0,
        )
        == bindparam("last_message"),
    )
    .values(updated_at=bindparam("now"))
)
CLAIM_SESSION = Direct(_CLAIM)
# The same claim, also setting the system prompt the turn brought (parameter prompt), so that
# the prompt changes with the turn's commit or not at all.
CLAIM_SESSION_PROMPT = Direct(_CLAIM.values(system_prompt=bindparam("prompt")))
INSERT_TURN = Direct(insert(turns))
INSERT_MESSAGES = Direct(insert(messages))

# What a continuation reads: the session's newest turn (parameter pk), and its messages
# (TURN_MESSAGES below).
NEWEST_TURN = (
    select(turns).where(turns.c.session_pk == bindparam("pk")).order_by(turns.c.seq.desc()).limit(1)
)
# A continuation's claim, after CLAIM_SESSION: the turn streams again, with a lease, only if it
# is still truncated (parameters turn_id, until). Its stop reason stays (set if an imported turn
# had none): what tells the lease sweep that the turn has a first part to go back to.
CLAIM_CONTINUATION = Direct(
    update(turns)
    .where(
        turns.c.id == bindparam("turn_id"),
        turns.c.state == literal_column(f"'{TurnState.TRUNCATED.value}'"),
    )
    .values(
        state=literal_column(f"'{STREAMING}'"),
        lease_until=bindparam("until"),
        stop_reason=func.coalesce(turns.c.stop_reason, StopReason.MAX_TOKENS.value),
        # A streaming turn's error is a stop asked for (REQUEST_STOP): an earlier note goes.
        error=None,
    )
)

# What finish_turn needs in one read: the turn, its session id and last message seq, and the
# turn's messages so far (one row each; outer join, so a row even if there are none).
# Parameter: turn_id.
FINISH_HEAD = (
    select(
        turns,
        sessions.c.session_id,
        _last_message_seq.label("last_message"),
        messages.c.role,
        messages.c.parts,
    )
    .join(sessions, sessions.c.id == turns.c.session_pk)
    .outerjoin(messages, messages.c.turn_id == turns.c.id)
    .where(turns.c.id == bindparam("turn_id"))
    .order_by(messages.c.seq)
)
# Parameters: turn_id and the final column values; only a turn still streaming is finished.
FINISH_TURN = Direct(update(turns).where(turns.c.id == bindparam("turn_id"), IS_STREAMING))

# A change of the context view. Parameters: pk, first, text.
SET_FOLD = Direct(
    update(sessions)
    .where(sessions.c.id == bindparam("pk"))
    .values(context_from=bindparam("first"), context_summary=bindparam("text"))
)
INSERT_FOLD = Direct(insert(context_folds))
# Parameter: pk.
CLEAR_FOLD = (
    update(sessions)
    .where(sessions.c.id == bindparam("pk"))
    .values(context_from=None, context_summary=None)
)
DELETE_SESSION_FOLDS = delete(context_folds).where(context_folds.c.session_pk == bindparam("pk"))
# A regenerated turn takes the place of the turn it replaces in the view's history too
# (parameters old, new): the view it moved to is the one its replacement starts from.
MOVE_FOLDS = (
    update(context_folds)
    .where(context_folds.c.turn_id == bindparam("old"))
    .values(turn_id=bindparam("new"))
)

# Parameter: pk.
DELETE_SESSION_MESSAGES = delete(messages).where(messages.c.session_pk == bindparam("pk"))

# Leases. Parameter: now (and pk for one session's turns).
_expired = and_(
    IS_STREAMING,
    turns.c.lease_until < bindparam("now"),
)
# A streaming turn that already has a stop reason is a truncated one being continued: its first
# part is stored and in context, so it goes back to truncated rather than out of the context.
_continuing = turns.c.stop_reason.is_not(None)
_interrupt: dict[str, Any] = {
    "state": case(
        (_continuing, literal_column(f"'{TurnState.TRUNCATED.value}'")),
        else_=literal_column(f"'{TurnState.INTERRUPTED.value}'"),
    ),
    "error": case((_continuing, CONTINUATION_EXPIRED), else_=LEASE_EXPIRED),
    "finished_at": bindparam("now"),
    "lease_until": None,
}
EXPIRE_LEASES = update(turns).where(_expired).values(_interrupt)
EXPIRE_SESSION_LEASES = (
    update(turns).where(turns.c.session_pk == bindparam("pk"), _expired).values(_interrupt)
)
# A streaming turn with an error is one asked to stop: the error says why it is to end.
_STOP_ASKED = turns.c.error.is_not(None)
# Parameters: turn_ids (a list), until. A turn asked to stop is not renewed: its process
# learns from the renewal's answer, and a process that died lets the lease run out.
RENEW_LEASES = (
    update(turns)
    .where(
        turns.c.id.in_(bindparam("turn_ids", expanding=True)),
        IS_STREAMING,
        turns.c.error.is_(None),
    )
    .values(lease_until=bindparam("until"))
    .returning(turns.c.id)
)
# Parameter: turn_ids (a list).
STOP_REQUESTED = select(turns.c.id).where(
    turns.c.id.in_(bindparam("turn_ids", expanding=True)), IS_STREAMING, _STOP_ASKED
)
# Parameters: pk, now, why. The session's turn in flight (its lease live) is asked to stop.
REQUEST_STOP = (
    update(turns)
    .where(
        turns.c.session_pk == bindparam("pk"),
        IS_STREAMING,
        turns.c.lease_until >= bindparam("now"),
    )
    .values(error=bindparam("why"))
    .returning(turns.c.id)
)
# Parameter: turn_id.
TURN_STATE = select(turns.c.state).where(turns.c.id == bindparam("turn_id"))

# Parameter: turn_ids (a list).
EXISTING_TURNS = select(turns.c.id).where(turns.c.id.in_(bindparam("turn_ids", expanding=True)))

# Idempotency. Parameters: pk, key / turn_id.
TURN_BY_KEY = select(turns).where(
    turns.c.session_pk == bindparam("pk"), turns.c.idempotency_key == bindparam("key")
)
TURN_MESSAGES = (
    select(messages.c.role, messages.c.parts)
    .where(messages.c.turn_id == bindparam("turn_id"))
    .order_by(messages.c.seq)
)
RELEASE_KEY = update(turns).where(turns.c.id == bindparam("turn_id")).values(idempotency_key=None)

# Retention. Parameter: cutoff. A session with a turn in flight is never pruned. Locked (on
# PostgreSQL) until the prune commits: a turn beginning on one meanwhile waits for its claim,
# then finds the session gone.
PRUNABLE_SESSIONS = (
    select(sessions.c.id, sessions.c.user_id, sessions.c.session_id)
    .where(
        sessions.c.updated_at < bindparam("cutoff"),
        ~exists().where(turns.c.session_pk == sessions.c.id, IS_STREAMING),
    )
    .with_for_update(of=sessions)
)
# Parameter: pks (a list).
DELETE_SESSIONS = delete(sessions).where(sessions.c.id.in_(bindparam("pks", expanding=True)))

# Paging. Sessions in (created_at, session_id) order: a stable key the cursor can carry.
# Parameters: user_id, limit (and after_at, after_id past the first page).
PAGE_SESSIONS = (
    select(sessions, _turn_count, _session_cost)
    .where(sessions.c.user_id == bindparam("user_id"))
    .order_by(sessions.c.created_at, sessions.c.session_id)
    .limit(bindparam("limit"))
)
PAGE_SESSIONS_AFTER = PAGE_SESSIONS.where(
    or_(
        sessions.c.created_at > bindparam("after_at"),
        and_(
            sessions.c.created_at == bindparam("after_at"),
            sessions.c.session_id > bindparam("after_id"),
        ),
    )
)
# Most recently active first: (updated_at, session_id) descending, on the index
# ix_sessions_user_id_updated_at read backwards. Parameters as above, after_at an updated_at.
PAGE_SESSIONS_RECENT = (
    select(sessions, _turn_count, _session_cost)
    .where(sessions.c.user_id == bindparam("user_id"))
    .order_by(sessions.c.updated_at.desc(), sessions.c.session_id.desc())
    .limit(bindparam("limit"))
)
PAGE_SESSIONS_RECENT_AFTER = PAGE_SESSIONS_RECENT.where(
    # Implied by the or_, but only so does PostgreSQL start the index scan at the cursor.
    sessions.c.updated_at <= bindparam("after_at"),
    or_(
        sessions.c.updated_at < bindparam("after_at"),
        and_(
            sessions.c.updated_at == bindparam("after_at"),
            sessions.c.session_id < bindparam("after_id"),
        ),
    ),
)
# Parameters: user_id, session_id, after_seq, limit.
PAGE_TURNS = LIST_TURNS.where(turns.c.seq > bindparam("after_seq")).limit(bindparam("limit"))
# Parameter: turn_ids (a list).
MESSAGES_OF_TURNS = (
    select(messages.c.turn_id, messages.c.role, messages.c.parts, messages.c.tokens)
    .where(messages.c.turn_id.in_(bindparam("turn_ids", expanding=True)))
    .order_by(messages.c.seq)
)
# Parameter: user_id.
# Sessions, and their turns that are in context; filtered by user, or not at all.
SESSION_STATS = select(
    select(func.count()).select_from(sessions).scalar_subquery(),
    select(func.count()).select_from(turns).where(IN_CONTEXT).scalar_subquery(),
)
USER_SESSION_STATS = select(
    select(func.count())
    .select_from(sessions)
    .where(sessions.c.user_id == bindparam("user_id"))
    .scalar_subquery(),
    select(func.count())
    .select_from(turns.join(sessions, sessions.c.id == turns.c.session_pk))
    .where(sessions.c.user_id == bindparam("user_id"), IN_CONTEXT)
    .scalar_subquery(),
)
USAGE_TOTALS = (
    select(
        func.count(),
        func.coalesce(func.sum(turns.c.input_tokens), 0),
        func.coalesce(func.sum(turns.c.output_tokens), 0),
        func.coalesce(func.sum(turns.c.cache_read_tokens), 0),
        func.coalesce(func.sum(turns.c.cache_write_tokens), 0),
        # Whether any of it is an estimate; max over 0/1, as PostgreSQL has no max(boolean).
        func.coalesce(func.max(case((turns.c.usage_estimated, 1), else_=0)), 0),
    )
    .select_from(turns.join(sessions, sessions.c.id == turns.c.session_pk))
    .where(sessions.c.user_id == bindparam("user_id"))
)
