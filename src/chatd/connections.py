"""Connection limits for `chatd serve`: header deadlines, a cap, and shedding idle connections.

uvicorn's httptools protocol has no deadline for a request's headers: a client that connects
and sends nothing, or sends its headers a byte at a time (slowloris), holds a connection and a
file descriptor for ever. `GuardedProtocol` gives every request `header_timeout_s` from the
moment the connection is ready for it (opened, or the previous response sent) until its headers
are complete; uvicorn's `timeout_keep_alive` still closes a kept-alive connection that sends
nothing sooner.

Each process also keeps at most `max_connections` open, fewer if its file-descriptor limit
would run out first (an `accept` failing with EMFILE locks everyone out, the legitimate client
too). When the cap is reached, a new connection closes the one that has been idle longest:
waiting for its headers or between requests, never one whose request is running or streaming.
Only when every other connection is busy is the new one refused, with a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import weakref
from dataclasses import dataclass
from functools import cache
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from chatd.config import Settings

log = logging.getLogger("chatd.connections")
_WARN_EVERY_S = 60.0

# File descriptors left for everything but client connections: the database, upstream
# connections of the requests in flight, Redis, logs, the listening sockets, the event loop.
FD_RESERVE_FRACTION = 0.25
FD_RESERVE_MIN = 32

_REFUSED_BODY = b"every connection is busy; try again\n"
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a request's headers may take, and how many connections a process keeps."""

    header_timeout_s: float
    max_connections: int


def fd_limit() -> int | None:
    """Return this process's soft limit on open files, or None where there is none to read."""
    if sys.platform == "win32":
        return None
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard limit, as Go's runtime does at start."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # macOS refuses RLIM_INFINITY: the soft limit then stays, and the cap follows it.
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connection_cap(configured: int, files: int | None) -> int:
    """Return how many connections to keep: as configured, but within the file limit."""
    if files is None:
        return configured
    reserve = max(FD_RESERVE_MIN, int(files * FD_RESERVE_FRACTION))
    return max(1, min(configured, files - reserve))


@cache
def process_limits() -> ConnectionLimits:
    """Return this process's limits, read once from CHATD_* settings and its file limit."""
    settings = Settings()
    return ConnectionLimits(
        settings.header_timeout_s, connection_cap(settings.max_connections, fd_limit())
    )


# Per server: its idle connections, longest idle first (dicts keep insertion order).
_IDLE: weakref.WeakKeyDictionary[ServerState, dict[GuardedProtocol, None]] = (
    weakref.WeakKeyDictionary()
)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a per-process connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = process_limits()
        self.idle = _IDLE.setdefault(server_state, {})
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline, then make room under the cap."""
        super().connection_made(transport)
        self._await_request()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self._stop_deadline()
        self.idle.pop(self, None)
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        """Stop the deadline: the request runs, and is no longer idle, until its response ends."""
        self._stop_deadline()
        self.idle.pop(self, None)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """Give the next request on this connection its own header deadline."""
        super().on_response_complete()
        # Unless the connection is closing or a pipelined request has just been started.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_request()

    def _await_request(self) -> None:
        self._stop_deadline()
        self.header_deadline = self.loop.call_later(
            self.limits.header_timeout_s, self._headers_too_slow
        )
        self.idle.pop(self, None)
        self.idle[self] = None

    def _stop_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        self._drop()

    def _drop(self) -> None:
        # abort, not close: the descriptor is freed now, not once a client that stopped
        # reading has taken what was buffered for it.
        self.idle.pop(self, None)
        self.connections.discard(self)
        self.transport.abort()

    def _make_room(self) -> None:
        excess = len(self.connections) - self.limits.max_connections
        if excess > 0:
            _warn_full(self.limits.max_connections)
        while excess > 0:
            oldest = next((c for c in self.idle if c is not self), None)
            if oldest is None:
                self._refuse()
                return
            oldest._drop()
            excess -= 1

    def _refuse(self) -> None:
        self._stop_deadline()
        self.idle.pop(self, None)
        self.connections.discard(self)
        self.transport.write(_REFUSED)
        self.transport.close()


_warned_at = -_WARN_EVERY_S


def _warn_full(cap: int) -> None:
    # Once a minute at most: a flood would otherwise write a line per connection.
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= _WARN_EVERY_S:
        _warned_at = now
        log.warning(
            "chatd: %d connections open, the most this process keeps (CHATD_MAX_CONNECTIONS "
            "and the open-files limit): closing the longest idle",
            cap,
        )
