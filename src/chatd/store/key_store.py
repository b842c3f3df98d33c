"""SqlKeyStore: the KeyStore port on the same database (and connections) as the sessions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import Connection, RowMapping, insert, or_, select, update

from chatd.errors import InputError, NotFound
from chatd.keys import ApiKey, KeyLimits
from chatd.store.database import Database
from chatd.store.rows import utc_now
from chatd.store.tables import api_keys

_ORDER = (api_keys.c.created_at, api_keys.c.id)


class SqlKeyStore:
    """API keys in the `api_keys` table; each call is one function run on one connection."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_key(
        self,
        user_id: str,
        key_hash: str,
        prefix: str,
        *,
        admin: bool = False,
        limits: KeyLimits | None = None,
        expires_at: datetime | None = None,
    ) -> ApiKey:
        """Store a new key and return it."""
        limits = limits or KeyLimits()
        key = ApiKey(uuid4().hex, prefix, user_id, admin, limits, utc_now(), expires_at)
        row = {
            "id": key.id,
            "key_hash": key_hash,
            "prefix": prefix,
            "user_id": user_id,
            "admin": admin,
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "tokens_per_day": limits.tokens_per_day,
            "budget_usd_per_day": limits.budget_usd_per_day,
            "created_at": key.created_at,
            "expires_at": expires_at,
        }
        await self.db.write(lambda conn: conn.execute(insert(api_keys), row))
        return key

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """Return the key with this hash (revoked and expired ones too), or None."""
        statement = select(api_keys).where(api_keys.c.key_hash == key_hash)
        row = await self.db.read(lambda conn: conn.execute(statement).one_or_none())
        return None if row is None else api_key(row._mapping)

    async def list_keys(self, user_id: str | None = None) -> Sequence[ApiKey]:
        """Return every key (or one user's), oldest first."""
        statement = select(api_keys).order_by(*_ORDER)
        if user_id is not None:
            statement = statement.where(api_keys.c.user_id == user_id)
        rows = await self.db.read(lambda conn: conn.execute(statement).all())
        return [api_key(r._mapping) for r in rows]

    async def revoke_key(self, ref: str) -> ApiKey:
        """Revoke the key with this id or display prefix; NotFound, or InputError if ambiguous."""
        match = or_(api_keys.c.id == ref, api_keys.c.prefix == ref)

        def work(conn: Connection) -> ApiKey:
            rows = conn.execute(select(api_keys).where(match)).all()
            if not rows:
                raise NotFound(f"no key {ref!r}")
            if len(rows) > 1:
                raise InputError(f"{ref!r} matches {len(rows)} keys; give the key's id")
            found = api_key(rows[0]._mapping)
            if found.revoked_at is not None:
                return found
            now = utc_now()
            statement = update(api_keys).where(api_keys.c.id == found.id).values(revoked_at=now)
            conn.execute(statement)
            return ApiKey(**{**_fields(found), "revoked_at": now})

        return await self.db.write(work)

    async def touch_key(self, key_id: str, when: datetime) -> None:
        """Record that the key was used at this time."""
        statement = update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=when)
        await self.db.write(lambda conn: conn.execute(statement))


def api_key(row: RowMapping) -> ApiKey:
    """Build an ApiKey from a row of api_keys."""
    return ApiKey(
        id=row["id"],
        prefix=row["prefix"],
        user_id=row["user_id"],
        admin=bool(row["admin"]),
        limits=KeyLimits(row["rpm"], row["tpm"], row["tokens_per_day"], row["budget_usd_per_day"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def _fields(key: ApiKey) -> dict[str, Any]:
    return {name: getattr(key, name) for name in ApiKey.__slots__}
