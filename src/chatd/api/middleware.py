"""Pure-ASGI middleware: body-size caps, security headers, request counts."""

from __future__ import annotations

from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.api.errors import error_response
from chatd.api.table import LARGE_BODY_PATHS

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
# The interactive docs load their own scripts and styles; everything else is data.
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DOCS = "/docs"  # a prefix: the page's scripts and styles are served under it
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class SecurityHeaders:
    """Add the standard security headers to every response; count responses for /metrics."""

    def __init__(self, app: ASGIApp, counts: Counter[tuple[str, int]] | None = None) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, adding headers to the response's start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = not scope["path"].startswith(_DOCS)
        # Any token is a method to the server; only known ones get their own counter.
        method: str = scope["method"] if scope["method"] in _METHODS else "OTHER"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.extend(_SECURITY)
                if csp:
                    headers.append(_CSP)
                message["headers"] = headers
                if self.counts is not None:
                    self.counts[(method, message["status"])] += 1
            await send(message)

        await self.app(scope, receive, send_with_headers)


def prometheus_text(counts: Counter[tuple[str, int]]) -> str:
    """Render request counts in the Prometheus text format."""
    lines = [
        "# HELP chatd_http_responses_total HTTP responses sent, by method and status.",
        "# TYPE chatd_http_responses_total counter",
    ]
    for (method, status), n in sorted(counts.items()):
        lines.append(f'chatd_http_responses_total{{method="{method}",status="{status}"}} {n}')
    return "\n".join(lines) + "\n"
