"""SSEDecoder: split a streamed response body into server-sent events.

The providers open a stream with their SDK (its request building, status errors, timeouts and
transport) and read the response's bytes themselves: the SDKs' own event iterators (an SSE
line decoder, `json.loads` and five async-generator layers) cost more than the relaying they
serve. Framing follows the WHATWG event-stream rules: lines end
in LF, CRLF or CR; a blank line ends an event; `data` lines join with LF; `:` lines are comments;
an event without data is not dispatched; an unfinished event at the end of the body is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSE:
    """One server-sent event: its name (empty when unnamed) and its data, as bytes."""

    event: str
    data: bytes


class SSEDecoder:
    """Turn body chunks, split anywhere, into complete events."""

    __slots__ = ("_after_cr", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""
        # The last chunk ended in CR: a LF starting the next one is the rest of that CRLF.
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[SSE]:
        """Return the events that this chunk completes."""
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk
        if b"\n\n" not in chunk and not (chunk[:1] == b"\n" and self._buffer[-1:] == b"\n"):
            # No event ends here (a long one arriving in pieces): do not split it again.
            self._buffer = buffer
            return []
        *blocks, self._buffer = buffer.split(b"\n\n")
        events: list[SSE] = []
        for block in blocks:
            # The common shape, one `data: ...` line, without splitting it into lines.
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(SSE("", block[6:]))
            elif block:
                event = _parse(block)
                if event is not None:
                    events.append(event)
        return events


def _parse(block: bytes) -> SSE | None:
    name = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
        # `id` and `retry` serve a client that reconnects; a provider call never does.
    if not data:
        return None
    return SSE(name.decode("utf-8", "replace"), b"\n".join(data))
