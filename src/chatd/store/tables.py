"""The database schema: sessions, their turns, the turns' messages (append-only rows), keys,
and the usage records that outlive sessions."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)

# Named constraints let later migrations alter them, SQLite batch mode included.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC, refusing naive values."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to what SQLite hands back naive."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


STREAMING = text("state = 'streaming'")

# SQLite only auto-increments an INTEGER PRIMARY KEY, so BIGINT elsewhere, INTEGER there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


# Core tables, not ORM classes: chatd runs prebuilt statements, and the ORM would cost every
# process about 9 MB of imports for nothing.
metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _utc(name: str, *, nullable: bool = False) -> Column[datetime]:
    return Column(name, UTCDateTime(), nullable=nullable)


def _str(name: str, length: int, *, nullable: bool = True) -> Column[str]:
    return Column(name, String(length), nullable=nullable)


# A conversation, identified by (user_id, session_id).
sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    _str("user_id", 255, nullable=False),
    _str("session_id", 255, nullable=False),
    Column("system_prompt", Text),
    _str("provider", 64),
    _str("model", 255),
    Column("max_tokens", Integer),
    Column("temperature", Float),
    Column("stop", JSON),
    Column("tools", JSON),
    _str("context_policy", 16),
    Column("context_limit", Integer),
    # The context view: the seq of the oldest turn the model sees, and what stands in for the
    # turns before it (None: they are dropped). Changed only with a context_folds row.
    Column("context_from", Integer),
    Column("context_summary", Text),
    # What the session is called in a list: its user's, or its first message's first line.
    Column("title", Text),
    _utc("created_at"),
    _utc("updated_at"),
    UniqueConstraint("user_id", "session_id"),
    Index("ix_sessions_updated_at", "updated_at"),
    # A user's sessions most recently active first (GET /v1/sessions?order=recent).
    Index("ix_sessions_user_id_updated_at", "user_id", "updated_at", "session_id"),
)

# One user message and what came back, with how it ended.
turns = Table(
    "turns",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("session_pk", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    _str("state", 16, nullable=False),
    _str("stop_reason", 32),
    _str("model", 255),
    _str("provider", 64),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cache_read_tokens", Integer, nullable=False, default=0),
    Column("cache_write_tokens", Integer, nullable=False, default=0),
    # The token counts are chatd's estimate: a call's usage never came from its provider.
    Column("usage_estimated", Boolean, nullable=False, default=False, server_default=false()),
    # The context's size after this turn (its last call's prompt and output), as its provider
    # counted: what the next turn's prompt is, but for its new message.
    Column("context_tokens", Integer),
    # The tokens its user message adds to a prompt, as its provider counted (kept here, not on
    # the message: known only when the turn ends, and one statement fewer than updating it).
    Column("user_tokens", Integer),
    Column("latency_ms", Float),
    Column("ttft_ms", Float),
    Column("error", Text),
    # What the usage cost at the price table's rates when the turn finished, in micro-dollars
    # (None: no price known for its model, or finished before chatd kept costs).
    Column("cost_micro_usd", BigInteger),
    _utc("created_at"),
    _utc("finished_at", nullable=True),
    _utc("lease_until", nullable=True),
    _str("idempotency_key", 255),
    Index("ix_turns_session_pk_seq", "session_pk", "seq", unique=True),
    Index(
        "ix_turns_one_streaming",
        "session_pk",
        unique=True,
        sqlite_where=STREAMING,
        postgresql_where=STREAMING,
    ),
    Index("ix_turns_session_pk_idempotency_key", "session_pk", "idempotency_key", unique=True),
    Index(
        "ix_turns_streaming_lease",
        "lease_until",
        sqlite_where=STREAMING,
        postgresql_where=STREAMING,
    ),
)

# One message of a turn; rows are only ever inserted, never rewritten. The seq index is not
# unique: ordering is (turn seq, message seq), so a reply stored while another turn began
# concurrently still lands in its own turn instead of failing.
messages = Table(
    "messages",
    metadata,
    Column("id", BigId, primary_key=True),
    Column(
        "turn_id",
        String(32),
        ForeignKey("turns.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("session_pk", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    _str("role", 16, nullable=False),
    Column("parts", JSON, nullable=False),
    # The tokens this message adds to a prompt, as its provider counted (None: not known).
    Column("tokens", Integer),
    _utc("created_at"),
    Index("ix_messages_session_pk_seq", "session_pk", "seq"),
)

# Each change of a session's context view: from which turn the model sees the conversation,
# and the summary that then stands in for the turns before it. The full history stays.
context_folds = Table(
    "context_folds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("session_pk", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    # The turn whose call the change was made for.
    Column("turn_id", String(32)),
    Column("first_turn", Integer, nullable=False),
    Column("summary", Text),
    # "limit" (the session's policy) or "overflow" (the provider said the prompt was too long).
    _str("reason", 16, nullable=False),
    Column("dropped_messages", Integer, nullable=False),
    # The model that wrote the summary.
    _str("model", 255),
    _utc("created_at"),
    Index("ix_context_folds_session_pk_first_turn", "session_pk", "first_turn"),
)

# An API key: the SHA-256 of the key (never the key), its owner, limits and lifetime.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    _str("key_hash", 64, nullable=False),
    _str("prefix", 32, nullable=False),
    _str("user_id", 255, nullable=False),
    Column("admin", Boolean, nullable=False, default=False),
    Column("rpm", Integer),
    Column("tpm", BigInteger),
    Column("tokens_per_day", BigInteger),
    Column("budget_usd_per_day", Float),
    _utc("created_at"),
    _utc("expires_at", nullable=True),
    _utc("revoked_at", nullable=True),
    _utc("last_used_at", nullable=True),
    Index("ix_api_keys_key_hash", "key_hash", unique=True),
    Index("ix_api_keys_user_id", "user_id"),
    Index("ix_api_keys_prefix", "prefix"),
)

# Usage kept apart from sessions, so that totals never drop when history is deleted: one row per
# stateless call (kind "completion"), and the usage of turns whose rows went with their session
# (kind "turns": deleted, reset or pruned, aggregated per provider, model and UTC day; or a turn
# discarded while it ran). Never updated; no foreign key, as it outlives what it counts.
usage_records = Table(
    "usage_records",
    metadata,
    Column("id", BigId, primary_key=True),
    _str("user_id", 255, nullable=False),
    # The session the usage was spent in, by its id (None: a call outside any session).
    _str("session_id", 255),
    _str("kind", 16, nullable=False),
    _str("provider", 64),
    _str("model", 255),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("estimated", Boolean, nullable=False),
    # Summed over the calls with a known price; `unpriced` counts those without one.
    Column("cost_micro_usd", BigInteger, nullable=False),
    Column("calls", Integer, nullable=False),
    Column("unpriced", Integer, nullable=False),
    # When the call was made (for moved turns: the earliest of the group's, in the same day).
    _utc("created_at"),
    Index("ix_usage_records_user_id_created_at", "user_id", "created_at"),
    Index("ix_usage_records_created_at", "created_at"),
)
