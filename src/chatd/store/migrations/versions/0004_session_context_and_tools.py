"""Per-session context policy and tools.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the session's tool names and context policy (NULL: use the server's defaults)."""
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("tools", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("context_policy", sa.String(16), nullable=True))
        batch.add_column(sa.Column("context_limit", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop the three columns."""
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("context_limit")
        batch.drop_column("context_policy")
        batch.drop_column("tools")
