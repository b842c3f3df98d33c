"""Sessions most recently active first: an index on (user_id, updated_at, session_id).

It serves GET /v1/sessions?order=recent (WHERE user_id = ? ORDER BY updated_at DESC,
session_id DESC, read backwards); ix_sessions_updated_at, for pruning, has no user_id.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ix_sessions_user_id_updated_at."""
    op.create_index(
        "ix_sessions_user_id_updated_at", "sessions", ["user_id", "updated_at", "session_id"]
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_sessions_user_id_updated_at", table_name="sessions")
