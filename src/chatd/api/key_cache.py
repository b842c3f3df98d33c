"""KeyCache: API-key lookups by hash, trusted for at most a second, and last-used hints."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta

from chatd.engine.ports import KeyStore
from chatd.errors import ChatdError
from chatd.keys import ApiKey

log = logging.getLogger("chatd.api")

_TOUCH_EVERY = timedelta(minutes=1)  # last-used is a hint: at most one write a minute per key
_CACHE_MAX = 10_000


class KeyCache:
    """Key lookups by hash, each answer (a miss too) trusted for at most ttl_s."""

    def __init__(self, store: KeyStore, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        self._touching: set[asyncio.Task[None]] = set()

    async def lookup(self, key_hash: str) -> ApiKey | None:
        """Return the stored key with this hash, or None."""
        now = time.monotonic()
        hit = self._entries.get(key_hash)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        found = await self.store.find_key(key_hash)
        if hit is None and len(self._entries) >= _CACHE_MAX:
            # Oldest first out: a flood of made-up keys cannot grow the cache without bound.
            del self._entries[next(iter(self._entries))]
        self._entries[key_hash] = (now, found)
        return found

    def forget(self) -> None:
        """Drop every cached answer (after a revocation in this process: effective at once)."""
        self._entries.clear()

    def touch(self, key_hash: str, key: ApiKey, now: datetime) -> None:
        """Record the key's use in the background, at most once a minute."""
        if key.last_used_at is not None and now - key.last_used_at < _TOUCH_EVERY:
            return
        cached = self._entries.get(key_hash)
        if cached is not None:
            self._entries[key_hash] = (cached[0], replace(key, last_used_at=now))
        task = asyncio.create_task(self._touch(key.id, now))
        self._touching.add(task)
        task.add_done_callback(self._touching.discard)

    async def _touch(self, key_id: str, now: datetime) -> None:
        try:
            await self.store.touch_key(key_id, now)
        except ChatdError as exc:
            log.warning("could not record the use of key %s: %s", key_id, exc.message)

    async def aclose(self) -> None:
        """Let pending last-used writes finish."""
        if self._touching:
            await asyncio.wait(set(self._touching), timeout=5)
