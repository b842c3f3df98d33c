"""Rate limits over HTTP, as pure ASGI middleware: admit or 429, and the RateLimit headers.

The policy (which counters, reservations, settling) lives in `chatd.quotas`; this layer decides
which requests are metered (the route table says), answers 429 in the route family's
error shape, puts the request's Charge where the routes hand it to the engine, and gives an
unused reservation back when the response is over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.api.auth import principal_of
from chatd.api.errors import error_response
from chatd.api.state import state
from chatd.api.table import is_metered
from chatd.keys import KeyLimits
from chatd.quotas import Charge, LimiterUnavailable, Status

NO_LIMITS = KeyLimits()
CHARGE = "chatd.charge"  # where a metered request's Charge is kept in the scope's state


def charge_of(scope: Mapping[str, Any]) -> Charge | None:
    """Return the metered request's Charge, if the limit middleware made one."""
    state = scope.get("state")
    return None if state is None else state.get(CHARGE)


def shown(statuses: Sequence[Status]) -> Status:
    """Pick the limit to report: the exceeded one resetting last, else the nearest to empty."""
    exceeded = [s for s in statuses if s.exceeded]
    if exceeded:
        return max(exceeded, key=lambda s: s.reset_s)
    return min(statuses, key=lambda s: (s.remaining / s.limit, -s.reset_s))


def ratelimit_headers(status: Status) -> list[tuple[bytes, bytes]]:
    """Return the RateLimit-Limit/Remaining/Reset headers (reset in whole seconds)."""
    return [
        (b"ratelimit-limit", str(status.limit).encode()),
        (b"ratelimit-remaining", str(status.remaining).encode()),
        (b"ratelimit-reset", str(math.ceil(status.reset_s)).encode()),
    ]


class RateLimit:
    """Count each authenticated request against its key's limits."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit the request (adding RateLimit headers) or answer 429."""
        principal = principal_of(scope) if scope["type"] == "http" else None
        limits = None if principal is None else principal.limits
        if principal is None or limits is None or limits == NO_LIMITS:
            await self.app(scope, receive, send)
            return
        live = state(scope["app"])
        path: str = scope["path"]
        try:
            statuses, charge = await live.limiter.admit(
                principal.limit_id, limits, metered=is_metered(scope["method"], path)
            )
        except LimiterUnavailable as exc:
            live.metrics.refused("limiter_unavailable")
            response = error_response(path, 503, "limiter_unavailable", exc.message, retry_s=2)
            await response(scope, receive, send)
            return
        if not statuses:
            await self.app(scope, receive, send)
            return
        report = shown(statuses)
        headers = ratelimit_headers(report)
        if report.exceeded:
            live.metrics.refused(report.kind.name)
            wait = max(1, math.ceil(report.reset_s))
            response = error_response(path, 429, "rate_limited", report.describe(), retry_s=wait)
            response.raw_headers.extend(headers)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        if charge is not None:
            scope["state"][CHARGE] = charge
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if charge is not None:
                # A turn that is still running settles on its own when it ends.
                await charge.release()
