"""Streaming responses: chunks passed on as they come, pings while idle, clean client exits.

The body is pulled from an async iterator in the request's own task (no extra task per chunk).
One watcher task per stream waits for the client's disconnect and, for SSE, sends a comment
ping when nothing went out for a while. When the client is gone the stream stops pulling and
closes its source; what happens to the turn then is the engine's business.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping

from prometheus_client import Gauge
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from chatd.api.state import state_of

PING = b": ping\n\n"
# Where StreamHandoff leaves room in the scope for a stream to run after the framework returns.
HANDOFF = "chatd.stream_handoff"


def event_schema(names: list[str] | None = None) -> dict[str, object]:
    """Return the OpenAPI schema of one SSE event: its name and its JSON data line."""
    event: dict[str, object] = {"type": "string"}
    if names:
        event["enum"] = names
    return {
        "type": "object",
        "properties": {"event": event, "data": {"type": "string"}},
        "required": ["data"],
    }


SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class EventStream(StreamingResponse):
    """Send byte chunks as they come; stop and close the source when the client leaves."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        media_type: str,
        ping_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        super().__init__(chunks, status_code, headers, media_type)
        self.source = chunks
        self.ping_s = ping_s
        self.gauge: Gauge | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the body now, or leave it to StreamHandoff when that is in place."""
        live = state_of(scope)
        if live is not None:
            self.gauge = live.metrics.open_streams
        slot: list[EventStream] | None = scope.get(HANDOFF)
        if slot is not None:
            slot.append(self)
            return
        await self.run(receive, send)

    async def run(self, receive: Receive, send: Send) -> None:
        """Stream the body, watching for the client's disconnect."""
        state = _State(send)
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        watcher = asyncio.create_task(self._watch(receive, state))
        chunks = self.source
        gauge = self.gauge
        if gauge is not None:
            gauge.inc()
        try:
            async for chunk in chunks:
                if state.gone:
                    break
                await state.send(chunk)
                if state.gone:
                    break
            if not state.gone:
                await state.send(b"", more=False)
        finally:
            if gauge is not None:
                gauge.dec()
            watcher.cancel()
            await chunks.aclose()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, receive: Receive, state: _State) -> None:
        # Waiting on receive is how an ASGI app learns the client left (spec 2.3 sends no error).
        while True:
            timeout = None
            if self.ping_s is not None:
                timeout = max(0.0, state.last + self.ping_s - time.monotonic())
            try:
                # Not wait_for: on 3.11 it runs receive() in a task of its own (a KiB a stream).
                async with asyncio.timeout(timeout):
                    message = await receive()
            except TimeoutError:
                await state.ping(self.ping_s or 0)
                continue
            if message["type"] == "http.disconnect":
                state.gone = True
                return


class StreamHandoff:
    """Run a route's EventStream after the framework's handling of the request has returned.

    FastAPI and Starlette hold a chain of coroutine frames, exit stacks, the request and its
    scope additions while a response runs: for a stream open for minutes, that is held for
    nothing. An EventStream that finds this middleware's slot in the scope leaves itself
    there; the middleware runs it, on the receive and send it was given, once the framework
    has returned. Errors before the stream starts still go through the framework's handlers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; then run the stream it left, if any."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot: list[EventStream] = []
        scope[HANDOFF] = slot
        before = set(scope)
        await self.app(scope, receive, send)
        if slot:
            # What the framework put in the scope (its exit stacks, the route, the path
            # parameters) is of no use to the stream, and would live as long as it.
            for key in scope.keys() - before:
                del scope[key]
            await slot.pop().run(receive, send)


class _State:
    """What the body loop and the watcher share: one send at a time, and whether to stop.

    No lock on every chunk's way: the body loop sends directly, and marks that it is sending;
    the watcher pings only while nothing is being sent, and the body loop waits only in the
    rare case that its chunk comes while a ping is going out.
    """

    def __init__(self, send: Send) -> None:
        self.gone = False
        self.last = time.monotonic()
        self.sending = False
        self._send = send
        # Set while the watcher's ping is going out; the body loop waits on it.
        self._pinging: asyncio.Event | None = None

    async def send(self, body: bytes, *, more: bool = True) -> None:
        """Send one body chunk unless the client is gone; note when it turns out to be."""
        while self._pinging is not None:
            await self._pinging.wait()
        if self.gone:
            return
        self.sending = True
        try:
            await self._write(body, more)
        finally:
            self.sending = False

    async def ping(self, idle_s: float) -> None:
        """Send a ping if nothing went out for idle_s and nothing is going out now."""
        now = time.monotonic()
        if self.sending:
            # A chunk held up by a slow reader is output, not silence: look again later.
            self.last = now
            return
        if self.gone or now - self.last < idle_s:
            return
        done = self._pinging = asyncio.Event()
        try:
            await self._write(PING, True)
        finally:
            self._pinging = None
            done.set()

    async def _write(self, body: bytes, more: bool) -> None:
        try:
            await self._send({"type": "http.response.body", "body": body, "more_body": more})
        except OSError:
            # Servers on ASGI spec 2.4 raise here once the client is gone.
            self.gone = True
        self.last = time.monotonic()
