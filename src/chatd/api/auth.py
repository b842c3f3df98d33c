"""API-key auth as pure ASGI middleware: who is calling, with which limits.

The key comes from `Authorization: Bearer …` or `x-api-key` only (a query string ends up in
access logs and browser history). Keys are looked up by their SHA-256 through a cache that
trusts an answer for at most `key_cache_s` (1 s), so a revocation reaches every process
within a second, and each process reads a key at most once a second however busy it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from chatd.api.errors import error_response
from chatd.api.state import state
from chatd.api.table import is_public
from chatd.keys import KeyLimits, hash_key, looks_like_key
from chatd.types import DEFAULT_USER

log = logging.getLogger("chatd.api")

PRINCIPAL = "chatd.principal"  # where the caller is kept in the ASGI scope's state


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
