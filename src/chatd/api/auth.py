"""API-key auth as pure ASGI middleware: who is calling, with which limits.

The key comes from `Authorization: Bearer …` or `x-api-key` only (a query string ends up in
access logs and browser history). Keys are looked up by their SHA-256 through a cache that
trusts an answer for at most `key_cache_s` (1 s), so a revocation reaches every process
within a second, and each process reads a key at most once a second however busy it is.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from chatd.api.errors import error_response
from chatd.api.state import state
from chatd.api.table import is_public
from chatd.engine.ports import KeyStore
from chatd.errors import ChatdError
from chatd.keys import ApiKey, KeyLimits, hash_key, looks_like_key
from chatd.types import DEFAULT_USER

log = logging.getLogger("chatd.api")

PRINCIPAL = "chatd.principal"  # where the caller is kept in the ASGI scope's state
_TOUCH_EVERY = timedelta(minutes=1)  # last-used is a hint: at most one write a minute per key
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the user every read and write is scoped to, and the key's limits."""

    user_id: str
    admin: bool
    limits: KeyLimits
    key_id: str | None = None

    @property
    def limit_id(self) -> str:
        """Return what limits are counted under: the key, or the local user with auth off."""
        return self.key_id or f"user:{self.user_id}"


def local_principal(limits: KeyLimits) -> Principal:
    """Return the single local user of a server with auth off."""
    return Principal(DEFAULT_USER, admin=False, limits=limits)


def principal_of(scope: Mapping[str, Any]) -> Principal | None:
    """Return the caller the auth middleware put in the scope, if any."""
    state = scope.get("state")
    return None if state is None else state.get(PRINCIPAL)


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


class Authenticate:
    """Put the caller in the scope, or answer 401; public paths and auth off pass as local."""

    def __init__(self, app: ASGIApp, *, enabled: bool, default_limits: KeyLimits) -> None:
        self.app = app
        self.enabled = enabled
        self.default_limits = default_limits
        self.local = local_principal(default_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate an HTTP request, then pass it on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if is_public(scope["method"], scope["path"]):
            pass  # health checks are nobody's requests: no key, no limits
        elif not self.enabled:
            state[PRINCIPAL] = self.local
        else:
            principal, problem = await self._check(scope)
            if principal is None:
                response = error_response(scope["path"], 401, "unauthorized", problem)
                response.headers["www-authenticate"] = 'Bearer realm="chatd"'
                await response(scope, receive, send)
                return
            state[PRINCIPAL] = principal
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope) -> tuple[Principal | None, str]:
        key = presented_key(scope["headers"])
        if key is None:
            return None, (
                "this server needs an API key: send it as 'Authorization: Bearer <key>' "
                "or 'x-api-key: <key>'"
            )
        # Never echo the key: it may be a real key of someone else's, pasted by mistake.
        if not looks_like_key(key):
            return None, "invalid API key"
        digest = hash_key(key)
        cache = state(scope["app"]).key_cache
        found = await cache.lookup(digest)
        if found is None:
            return None, "invalid API key"
        now = datetime.now(UTC)
        if found.revoked_at is not None:
            return None, "this API key has been revoked"
        if not found.usable(now):
            return None, "this API key has expired"
        cache.touch(digest, found, now)
        limits = found.limits.over(self.default_limits)
        return Principal(found.user_id, found.admin, limits, found.id), ""


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Return the key from Authorization (Bearer) or x-api-key, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


_KEYLIKE = re.compile(r"chatd_[A-Za-z0-9_-]{8,}")


class RedactKeys(logging.Filter):
    """Blank anything shaped like a chatd key out of a log record (e.g. a URL in an access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message and arguments; always keep the record."""
        if isinstance(record.msg, str):
            record.msg = _KEYLIKE.sub("chatd_[redacted]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                _KEYLIKE.sub("chatd_[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def redact_access_logs() -> None:
    """Install RedactKeys on uvicorn's access log once: clients may put keys in URLs anyway."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactKeys) for f in access.filters):
        access.addFilter(RedactKeys())
