"""Durable turns: one streaming turn per session, idempotency keys, lease lookups.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STREAMING = sa.text("state = 'streaming'")


def upgrade() -> None:
    """Add the idempotency key and the indexes that keep one turn in flight per session."""
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
    # At most one streaming turn per session, enforced by the database across processes.
    op.create_index(
        "ix_turns_one_streaming",
        "turns",
        ["session_pk"],
        unique=True,
        sqlite_where=STREAMING,
        postgresql_where=STREAMING,
    )
    # NULLs are distinct in unique indexes on both databases: keys are optional.
    op.create_index(
        "ix_turns_session_pk_idempotency_key",
        "turns",
        ["session_pk", "idempotency_key"],
        unique=True,
    )
    op.create_index(
        "ix_turns_streaming_lease",
        "turns",
        ["lease_until"],
        sqlite_where=STREAMING,
        postgresql_where=STREAMING,
    )
    op.create_index("ix_sessions_updated_at", "sessions", ["updated_at"])


def downgrade() -> None:
    """Drop what upgrade added."""
    op.drop_index("ix_sessions_updated_at", "sessions")
    op.drop_index("ix_turns_streaming_lease", "turns")
    op.drop_index("ix_turns_session_pk_idempotency_key", "turns")
    op.drop_index("ix_turns_one_streaming", "turns")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("idempotency_key")
