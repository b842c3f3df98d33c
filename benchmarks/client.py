"""A lean HTTP/1.1 load client: asyncio protocols on raw sockets, httptools to parse.

One `Conn` is one keep-alive connection doing one request at a time. For streams it timestamps
every socket read and cuts the body into events (SSE or NDJSON), so a test can tell when each
content chunk arrived and whether two chunks came in the same read (batched, not one for one).
It costs a few tens of microseconds per request, so on its own core it is not what limits a run.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import httptools
import orjson

# How a response body is cut into events and which events carry reply text:
#   "json"        not a stream; the whole body is kept
#   "sse-openai"  OpenAI chunks: `data: {json}` events, content in choices[0].delta.content,
#                 ending `data: [DONE]`
#   "sse-chatd"   chatd's /v1 SSE: `event: delta` events, ending `event: message_end`
#   "ndjson"      chatd's POST /chat/{id}: one {"delta": ...} line per chunk
Kind = Literal["json", "sse-openai", "sse-chatd", "ndjson"]


class ClientError(Exception):
    """The connection failed or the response could not be read."""


@dataclass
class Result:
    """One request's outcome and timings (perf_counter seconds)."""

    status: int = 0
    t_sent: float = 0.0
    t_end: float = 0.0
    body: bytes = b""
    # Streams: (time, read number) of each content event, and whether the stream ended well.
    content: list[tuple[float, int]] = field(default_factory=list)
    ended: bool = False
    error: str | None = None

    @property
    def latency(self) -> float:
        """Seconds from the request's write to the response's last byte."""
        return self.t_end - self.t_sent

    @property
    def ttft(self) -> float | None:
        """Seconds from the write to the first content event."""
        return self.content[0][0] - self.t_sent if self.content else None

    def gaps(self) -> list[float]:
        """Seconds between consecutive content events."""
        times = [t for t, _ in self.content]
        return [b - a for a, b in itertools.pairwise(times)]

    def batched(self) -> int:
        """How many content events arrived in the same socket read as the one before."""
        reads = [r for _, r in self.content]
        return sum(1 for a, b in itertools.pairwise(reads) if a == b)


def _is_openai_content(event: bytes) -> tuple[bool, bool, str | None]:
    """Classify one OpenAI SSE event: (carries text, is the end, error message)."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return False, True, None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False, False, "malformed chunk"
        if not isinstance(chunk, dict):
            return False, False, "malformed chunk"
        if "error" in chunk:
            return False, False, str(chunk["error"])[:200]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                return True, False, None
    return False, False, None


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to host:port; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._result: Result | None = None
        self._done: asyncio.Future[Result] | None = None
        self._kind: Kind = "json"
        self._buf = bytearray()
        self._chunks: list[bytes] = []
        self._reads = 0
        self._now = 0.0
        self._close_after = False
        self.closed = True

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        """Connect and return the connection."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: cls(host, port), host, port)
        except OSError as exc:
            raise ClientError(f"cannot connect to {host}:{port}: {exc}") from None
        return conn

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self._now = time.perf_counter()
        self._reads += 1
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection closed by the server")

    # httptools callbacks

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        assert self._result is not None
        self._result.status = self._parser.get_status_code()
        self._close_after = not self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self._kind == "json" or (self._result is not None and self._result.status != 200):
            self._chunks.append(body)
            return
        self._buf += body
        self._cut_events()

    def on_message_complete(self) -> None:
        result, done = self._result, self._done
        if result is None or done is None:
            return
        result.t_end = self._now
        if self._kind == "json" or result.status != 200:
            result.body = b"".join(self._chunks)
            result.ended = result.status == 200
        elif self._kind == "ndjson":
            # NDJSON has no end marker: a complete chunked body without an error line is the end.
            result.ended = result.error is None
        elif not result.ended and result.error is None:
            result.error = "stream ended without its final event"
        self._result = self._done = self._parser = None
        if self._close_after and self.transport is not None:
            self.transport.close()
        if not done.done():
            done.set_result(result)

    # the request

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        kind: Kind = "json",
        wait_s: float = 120.0,
    ) -> Result:
        """Send one request and wait for its whole response."""
        if self.closed or self.transport is None:
            raise ClientError("connection is closed")
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(body)}")
        head.extend(f"{k}: {v}" for k, v in headers)
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        self._kind = kind
        self._buf.clear()
        self._chunks = []
        self._close_after = False
        self._result = Result()
        self._done = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._result.t_sent = time.perf_counter()
        self.transport.write(data)
        try:
            return await asyncio.wait_for(self._done, wait_s)
        except TimeoutError:
            self.close()
            raise ClientError(f"no complete response within {wait_s} s") from None

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _fail(self, why: str) -> None:
        done, result = self._done, self._result
        self._result = self._done = self._parser = None
        if done is not None and not done.done():
            if result is not None and result.content:
                # Keep what arrived: a stream cut short still tells how many chunks came.
                result.error = why
                result.t_end = time.perf_counter()
                done.set_result(result)
            else:
                done.set_exception(ClientError(why))

    def _cut_events(self) -> None:
        result = self._result
        assert result is not None
        sep = b"\n" if self._kind == "ndjson" else b"\n\n"
        buf = self._buf
        start = 0
        while True:
            end = buf.find(sep, start)
            if end < 0:
                break
            event = bytes(buf[start:end])
            start = end + len(sep)
            if not event.strip() or event.startswith(b":"):
                continue  # blank or an SSE comment (ping)
            self._classify(event, result)
        del buf[:start]

    def _classify(self, event: bytes, result: Result) -> None:
        if self._kind == "sse-chatd":
            if event.startswith(b"event: delta"):
                result.content.append((self._now, self._reads))
            elif event.startswith(b"event: message_end"):
                result.ended = True
            elif event.startswith(b"event: error"):
                result.error = event.decode(errors="replace")[:200]
        elif self._kind == "ndjson":
            if event.startswith(b'{"delta"'):
                result.content.append((self._now, self._reads))
            elif event.startswith(b'{"error"'):
                result.error = event.decode(errors="replace")[:200]
        else:
            text, end, error = _is_openai_content(event)
            if text:
                result.content.append((self._now, self._reads))
            if end:
                result.ended = True
            if error:
                result.error = error


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
