"""Whether a database's schema is at the newest migration shipped with this chatd."""

from __future__ import annotations

from functools import cache

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from chatd.store.db import alembic_config
from chatd.store.repo import store_errors


@cache
def shipped_heads() -> frozenset[str]:
    """Return the head revisions of the migrations in the package (read once)."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


async def schema_is_current(engine: AsyncEngine) -> bool:
    """Tell whether every shipped migration is applied; StoreUnavailable if unreachable."""
    async with store_errors(), engine.connect() as conn:
        applied = await conn.run_sync(_applied_heads)
    return applied == shipped_heads()


def _applied_heads(connection: Connection) -> frozenset[str]:
    return frozenset(MigrationContext.configure(connection).get_current_heads())
