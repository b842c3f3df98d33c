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
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

PING = b": ping\n\n"


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


def sse(event: str, data: Any) -> bytes:
    """Encode one SSE event with a JSON payload."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def sse_data(data: Any) -> bytes:
    """Encode one unnamed SSE event (the OpenAI stream's shape)."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the body, watching for the client's disconnect."""
        state = _State()
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        watcher = asyncio.create_task(self._watch(receive, send, state))
        chunks = self.source
        try:
            async for chunk in chunks:
                if state.gone:
                    break
                await state.send(send, chunk)
                if state.gone:
                    break
            if not state.gone:
                await state.send(send, b"", more=False)
        finally:
            watcher.cancel()
            await chunks.aclose()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, receive: Receive, send: Send, state: _State) -> None:
        # Waiting on receive is how an ASGI app learns the client left (spec 2.3 sends no error).
        while True:
            timeout = None
            if self.ping_s is not None:
                timeout = max(0.0, state.last + self.ping_s - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                if time.monotonic() - state.last >= (self.ping_s or 0):
                    await state.send(send, PING)
                continue
            if message["type"] == "http.disconnect":
                state.gone = True
                return


class _State:
    """What the body loop and the watcher share: one send at a time, and whether to stop."""

    def __init__(self) -> None:
        self.gone = False
        self.last = time.monotonic()
        self._lock = asyncio.Lock()

    async def send(self, send: Send, body: bytes, *, more: bool = True) -> None:
        """Send one body chunk unless the client is gone; note when it turns out to be."""
        async with self._lock:
            if self.gone:
                return
            try:
                await send({"type": "http.response.body", "body": body, "more_body": more})
            except OSError:
                # Servers on ASGI spec 2.4 raise here once the client is gone.
                self.gone = True
            self.last = time.monotonic()
