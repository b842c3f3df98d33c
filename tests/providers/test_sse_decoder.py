"""The event-stream framing the providers read their replies with."""

from __future__ import annotations

import pytest

from chatd.errors import UpstreamStreamError
from chatd.providers.base import stream_json
from chatd.providers.sse import SSE, SSEDecoder

BODY = (
    b'event: message_start\ndata: {"a":1}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"b":2}\n\n'
    b"data: line one\ndata: line two\n\n"
    b"event: ping\ndata: {}\n\n"
)
EXPECTED = [
    SSE("message_start", b'{"a":1}'),
    SSE("", b'{"b":2}'),
    SSE("", b"line one\nline two"),
    SSE("ping", b"{}"),
]


def feed_all(decoder: SSEDecoder, pieces: list[bytes]) -> list[SSE]:
    return [event for piece in pieces for event in decoder.feed(piece)]


def test_events_come_whole_however_the_body_is_cut() -> None:
    for size in (1, 2, 3, 7, 64, len(BODY)):
        pieces = [BODY[i : i + size] for i in range(0, len(BODY), size)]
        assert feed_all(SSEDecoder(), pieces) == EXPECTED, size


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_endings_frame_events_as_lf_does(ending: bytes) -> None:
    body = BODY.replace(b"\n", ending)
    assert feed_all(SSEDecoder(), [body]) == EXPECTED
    # A CRLF split between two chunks is one line ending, not two.
    pieces = [body[i : i + 1] for i in range(len(body))]
    assert feed_all(SSEDecoder(), pieces) == EXPECTED


def test_fields_without_space_and_without_data() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"event:x\ndata:{}\nid: 7\nretry: 10\n\nevent: empty\n\n")
    # An event with no data is not dispatched.
    assert events == [SSE("x", b"{}")]


def test_an_unfinished_event_at_the_end_is_never_dispatched() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: {"cut') == [SSE("", b'{"a":1}')]
    assert decoder.feed(b"") == []


def test_data_that_is_not_json_fails_the_stream_with_a_plain_message() -> None:
    with pytest.raises(UpstreamStreamError) as info:
        stream_json("openai", b"<html>bad gateway</html>")
    assert "openai sent an event that is not JSON" in info.value.message
    assert "bad gateway" in info.value.message


def test_a_long_event_in_many_pieces_comes_whole_once() -> None:
    data = b'{"arguments":"' + b"x" * 200_000 + b'"}'
    body = b"data: " + data + b"\n\ndata: {}\n\n"
    pieces = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    assert feed_all(SSEDecoder(), pieces) == [SSE("", data), SSE("", b"{}")]
