"""MemoryKeyStore: the KeyStore port in process memory, with the same semantics as SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from uuid import uuid4

from chatd.errors import InputError, NotFound
from chatd.keys import ApiKey, KeyLimits


class MemoryKeyStore:
    """API keys kept in a dict by hash; for tests and throwaway runs."""

    def __init__(self) -> None:
        self._by_hash: dict[str, ApiKey] = {}

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
        if key_hash in self._by_hash:
            raise ValueError("a key with this hash exists already")
        key = ApiKey(uuid4().hex, prefix, user_id, admin, limits or KeyLimits(), _now(), expires_at)
        self._by_hash[key_hash] = key
        return key

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """Return the key with this hash (revoked and expired ones too), or None."""
        return self._by_hash.get(key_hash)

    async def list_keys(self, user_id: str | None = None) -> Sequence[ApiKey]:
        """Return every key (or one user's), oldest first."""
        return [k for k in self._by_hash.values() if user_id in (None, k.user_id)]

    async def revoke_key(self, ref: str) -> ApiKey:
        """Revoke the key with this id or display prefix; NotFound, or InputError if ambiguous."""
        found = [(h, k) for h, k in self._by_hash.items() if ref in (k.id, k.prefix)]
        if not found:
            raise NotFound(f"no key {ref!r}")
        if len(found) > 1:
            raise InputError(f"{ref!r} matches {len(found)} keys; give the key's id")
        key_hash, key = found[0]
        if key.revoked_at is None:
            key = self._by_hash[key_hash] = replace(key, revoked_at=_now())
        return key

    async def touch_key(self, key_id: str, when: datetime) -> None:
        """Record that the key was used at this time."""
        for key_hash, key in self._by_hash.items():
            if key.id == key_id:
                self._by_hash[key_hash] = replace(key, last_used_at=when)


def _now() -> datetime:
    return datetime.now(UTC)
