"""Whether a database's schema is at the newest migration shipped with this chatd."""

from __future__ import annotations

from chatd.store.database import Database
from chatd.store.db import SCHEMA_HEAD, applied_revisions


async def schema_is_current(db: Database) -> bool:
    """Tell whether every shipped migration is applied; StoreUnavailable if unreachable."""
    return await applied_revisions(db) == {SCHEMA_HEAD}
