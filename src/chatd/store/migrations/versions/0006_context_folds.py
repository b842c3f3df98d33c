"""Context views: where each session's view starts and its summary, folds, token counts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the view columns, the per-message and per-turn token counts, and context_folds."""
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("context_from", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("context_summary", sa.Text(), nullable=True))
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("context_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("user_tokens", sa.Integer(), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("tokens", sa.Integer(), nullable=True))
    op.create_table(
        "context_folds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_pk", sa.Integer(), nullable=False),
        sa.Column("turn_id", sa.String(32), nullable=True),
        sa.Column("first_turn", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("dropped_messages", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_pk"],
            ["sessions.id"],
            name="fk_context_folds_session_pk_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_context_folds"),
    )
    op.create_index(
        "ix_context_folds_session_pk_first_turn", "context_folds", ["session_pk", "first_turn"]
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_context_folds_session_pk_first_turn", table_name="context_folds")
    op.drop_table("context_folds")
    # Not in batch mode: on SQLite that copies each table, and dropping the old sessions
    # table would cascade to every turn. SQLite drops a plain column in place (3.35+).
    op.drop_column("messages", "tokens")
    op.drop_column("turns", "context_tokens")
    op.drop_column("turns", "user_tokens")
    op.drop_column("sessions", "context_summary")
    op.drop_column("sessions", "context_from")
