"""Each request's id (X-Request-ID) and its one log line; its span when tracing is on.

The id is the client's `X-Request-ID` when that is sane (1-128 printable ASCII characters), a
new one otherwise; it goes back on every response, errors and streams included, into the turn
the request starts (TurnOptions.request_id, through `Caller`), and into both log lines. The
request's line is written once the response has ended (for a stream, when it closes), from what
passed by: no header is ever logged, so no key either.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.api.auth import principal_of
from chatd.api.errors import error_response
from chatd.api.table import ROUTES, path_pattern
from chatd.logs import REQUESTS, emit, log_report
from chatd.runtime import Runtime

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from chatd.tracing import Tracing

HEADER = b"x-request-id"
# Where the id is kept in the scope, for the routes (`request_id_of`).
REQUEST_ID = "chatd.request_id"
# Visible ASCII at both ends, spaces allowed inside; at most 128 characters.
_SANE = re.compile(rb"[!-~](?:[ -~]{0,126}[!-~])?")

log = logging.getLogger(REQUESTS)


def request_id_of(scope: Mapping[str, Any]) -> str | None:
    """Return the id RequestLog gave the request, if it ran."""
    found: str | None = scope.get(REQUEST_ID)
    return found


def choose_request_id(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """Return the client's X-Request-ID if it is sane, else a new id (never the raw value)."""
    for name, value in headers:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(16).hex()


class RequestLog:
    """Give each request its id, send it back, and log one line once the response has ended."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing | None = None) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request with its id; log it (and span it, when tracing)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.tracing is None:
            await self._serve(scope, receive, send, None)
            return
        with self.tracing.request(scope) as span:
            await self._serve(scope, receive, send, span)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, span: Span | None) -> None:
        started = time.perf_counter()
        request_id = choose_request_id(scope["headers"])
        scope[REQUEST_ID] = request_id
        echo = (HEADER, request_id.encode("ascii"))
        status, sent = 0, 0

        # Not a coroutine of its own: it hands back send's, one frame less on every chunk.
        def send_with_id(message: Message) -> Awaitable[None]:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            return send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status == 0:
                # The framework answers a bug from outside every middleware, without the id:
                # answer it here, as its handler would; it still logs the traceback.
                response = error_response(
                    scope["path"], 500, "internal_error", "internal server error"
                )
                await response(scope, receive, send_with_id)
            raise
        finally:
            route = self._route(scope)
            principal = principal_of(scope)
            user = None if principal is None else principal.user_id
            if span is not None and self.tracing is not None:
                self.tracing.answered(span, scope["method"], route, status, user, request_id)
            level = logging.WARNING if status >= 500 else logging.INFO
            if log.isEnabledFor(level):
                client = scope.get("client")
                fields = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    # Only for a path no route matched: a matched one is named by its template.
                    "path": scope["path"][:200] if route is None else None,
                    "status": status or None,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    "user": user,
                    "bytes": sent,
                    "client": None if client is None else client[0],
                }
                emit(log, level, "request", fields)

    @staticmethod
    def _route(scope: Scope) -> str | None:
        """Return the template of the route that served the request, or None if none matched."""
        # The router leaves it in the scope, unless the fast path served the request or a
        # stream was run past the framework (which takes its additions away): those routes
        # are all in the route table.
        template = getattr(scope.get("route"), "path", None)
        if isinstance(template, str):
            return template
        path: str = scope["path"]
        found = _TABLE_EXACT.get(path)
        if found is not None:
            return found
        for pattern, template in _TABLE_PATTERNED:
            if pattern.fullmatch(path):
                return template
        return None


_TABLE_EXACT = {r.path: r.path for r in ROUTES if "{" not in r.path}
_TABLE_PATTERNED = tuple(
    (re.compile(path_pattern(r.path)), r.path) for r in ROUTES if "{" in r.path
)


def framework_tracing_off() -> dict[str, Any]:
    """Return FastAPI's keyword that switches its own request spans off ({} where it has none)."""
    # FastAPI 0.16x traces every request itself once the process has a tracer provider. The
    # request's span is RequestLog's (it names the fast path's routes and carries the id):
    # one span per request with CHATD_OTEL, none without it.
    if "telemetry" in inspect.signature(FastAPI).parameters:
        return {"telemetry": {"tracing": False}}
    return {}


def watch(runtime: Runtime, tracing: Tracing | None) -> None:
    """Log a line for each turn and stateless call the runtime runs; trace them when tracing."""
    runtime.service.observers.append(log_report)
    if tracing is not None:
        tracing.instrument(runtime.service, runtime.store.db.sync_engine)
