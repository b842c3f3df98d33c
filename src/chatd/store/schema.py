"""Whether a database's schema is at the newest migration shipped with this chatd."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from chatd.store.db import SCHEMA_HEAD, applied_revisions


async def schema_is_current(engine: AsyncEngine) -> bool:
    """Tell whether every shipped migration is applied; StoreUnavailable if unreachable."""
    return await applied_revisions(engine) == {SCHEMA_HEAD}
