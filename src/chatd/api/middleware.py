"""Pure-ASGI middleware: body-size caps, security headers, request metrics."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.api.errors import error_response
from chatd.api.metrics import Metrics
from chatd.api.table import LARGE_BODY_PATHS
from chatd.api.web import PAGE, PAGE_CSP

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


class BodyLimit:
    """Refuse request bodies over a cap with 413, by Content-Length or while they stream in.

    `large` is the cap of the paths the route table marks `large_body`, `default` of the rest.
    """

    def __init__(self, app: ASGIApp, default: int, large: int) -> None:
        self.app = app
        self.default = default
        self.large = large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, cutting its body off past the cap."""
        if scope["type"] != "http" or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.large if path in LARGE_BODY_PATHS else self.default
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await _too_large(path, limit, send)
                    return
                # The server holds the body to its declared length (and refuses a request
                # that also says chunked), so nothing here could trip: no wrapper on every
                # message of the request and, for a stream, of every chunk of its reply.
                await self.app(scope, receive, send)
                return
        seen = 0
        started = refused = False

        async def capped_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # The app stops reading at a disconnect; the client gets our 413.
                    refused = True
                    if not started:
                        await _too_large(path, limit, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, capped_receive, guarded_send)


async def _too_large(path: str, limit: int, send: Send) -> None:
    response = error_response(
        path, 413, "input_too_large", f"request body is over the limit of {limit} bytes"
    )
    # Close the connection: the rest of the body is never read.
    response.headers["connection"] = "close"
    await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


_SECURITY = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# The interactive docs load their own scripts and styles, the chat page its own (a policy of
# its own); everything else is data.
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_PAGE_CSP = (b"content-security-policy", PAGE_CSP.encode())
_DOCS = "/docs"  # a prefix: the page's scripts and styles are served under it
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# A request whose app returned without answering: the client left before an answer (nginx's code).
CLIENT_LEFT = 499


class SecurityHeaders:
    """Add the standard security headers to every response; count and time requests."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, adding headers to the response's start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        path: str = scope["path"]
        csp = None if path.startswith(_DOCS) else _PAGE_CSP if path.startswith(PAGE) else _CSP
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.extend(_SECURITY)
                if csp is not None:
                    headers.append(csp)
                message["headers"] = headers
                status = message["status"]
            await send(message)

        metrics = self.metrics
        if metrics is None:
            await self.app(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # An error that escapes is answered 500 further out, unless an answer had begun;
            # a cancelled request (the server stopping) counts as left without an answer.
            status = status or 500
            raise
        finally:
            # Counted when the response is over, so a stream's duration is all of it.
            method: str = scope["method"]
            if method not in _METHODS:
                method = "OTHER"  # any token is a method to the server: bounded here
            metrics.request(
                scope["path"], method, status or CLIENT_LEFT, time.perf_counter() - began
            )
