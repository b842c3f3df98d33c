"""Session titles: what a session is called in a list (set by its user, or its first message).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-09 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add sessions.title (sessions made before it have none)."""
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("title", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop it."""
    # Not in batch mode: on SQLite that would copy the table (see 0006).
    op.drop_column("sessions", "title")
