"""X-Request-ID and the log lines of the in-process server: one per request, one per turn,
as JSON, with the same id as the response; no key and no message text unless asked."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from chatd.api.app import create_app
from chatd.api.requests import choose_request_id
from chatd.config import Settings
from chatd.logs import JsonFormatter

KEY_ISH = "chatd_" + "k" * 30


class _Lines(logging.Handler):
    """Keep chatd's records as the JSON lines `chatd serve` would write."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def parsed(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines]

    def of(self, request_id: str) -> list[dict[str, Any]]:
        return [line for line in self.parsed() if line.get("request_id") == request_id]


@contextmanager
def captured() -> Iterator[_Lines]:
    """Capture chatd's log records (at INFO and up) as JSON lines while the block runs."""
    handler = _Lines()
    chatd = logging.getLogger("chatd")
    level = chatd.level
    chatd.addHandler(handler)
    chatd.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        chatd.removeHandler(handler)
        chatd.setLevel(level)


@pytest.fixture
def lines() -> Iterator[_Lines]:
    with captured() as handler:
        yield handler


def one(lines: _Lines, request_id: str, logger: str) -> dict[str, Any]:
    """Return the only line of this logger for the request, waiting for it a little.

    A request's line is written once its response has gone out: the client may have it first.
    """
    deadline = time.monotonic() + 5
    while True:
        matching = [line for line in lines.of(request_id) if line["logger"] == logger]
        if matching or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(matching) == 1, lines.of(request_id)
    return matching[0]


def test_a_send_logs_a_request_line_and_a_turn_line_with_the_response_id(
    client: httpx.Client, sid: str, lines: _Lines
) -> None:
    secret = "my passport number is X1234567"
    r = client.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": secret},
        headers={"X-Request-ID": "trace-me-1"},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "trace-me-1"
    request = one(lines, "trace-me-1", "chatd.request")
    turn = one(lines, "trace-me-1", "chatd.turn")
    assert request["msg"] == "request"
    assert (request["method"], request["route"], request["status"]) == (
        "POST",
        "/v1/sessions/{session_id}/messages",
        200,
    )
    assert request["user"] == "local"
    assert request["duration_ms"] >= 0
    assert request["bytes"] == len(r.content)
    reply = r.json()
    assert turn["msg"] == "turn"
    assert (turn["session"], turn["turn"], turn["user"]) == (sid, reply["turn_id"], "local")
    assert (turn["provider"], turn["model"], turn["state"]) == (
        "anthropic",
        "test-model",
        "complete",
    )
    usage = reply["usage"]
    assert (turn["input_tokens"], turn["output_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    for field in (
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
        "latency_ms",
        "ttft_ms",
        "retries",
        "upstream_errors",
        "context_moves",
        "tool_rounds",
        "error",
    ):
        assert field in turn
    assert turn["latency_ms"] > 0
    assert "prompt" not in turn
    assert "reply" not in turn
    everything = "\n".join(lines.lines)
    assert "X1234567" not in everything
    assert reply["text"][:20] not in everything


def test_a_stream_carries_the_id_and_is_logged_when_it_ends(
    client: httpx.Client, sid: str, lines: _Lines
) -> None:
    with client.stream(
        "POST", f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}
    ) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        body = b"".join(r.iter_bytes())
    assert b"message_end" in body
    request = one(lines, request_id, "chatd.request")
    assert request["route"] == "/v1/sessions/{session_id}/messages"
    assert request["bytes"] == len(body)
    assert one(lines, request_id, "chatd.turn")["state"] == "complete"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "route"),
    [
        ("GET", "/nowhere", None, 404, None),
        ("POST", "/v1/nothing/here", {"content": "x"}, 404, None),
        (
            "POST",
            "/v1/sessions/bad id!/messages",
            {"content": "x"},
            422,
            "/v1/sessions/{session_id}/messages",
        ),
        (
            "POST",
            "/v1/sessions/s/messages",
            {"content": ""},
            422,
            "/v1/sessions/{session_id}/messages",
        ),
        ("GET", "/v1/sessions/nope-404", None, 404, "/v1/sessions/{session_id}"),
        ("GET", "/healthz", None, 200, "/healthz"),
        ("POST", "/chat", {"message": "x" * 40_000}, 413, "/chat"),
    ],
)
def test_every_answer_carries_an_id_and_a_line(
    client: httpx.Client,
    lines: _Lines,
    method: str,
    path: str,
    body: Any,
    status: int,
    route: str | None,
) -> None:
    r = client.request(method, path, json=body)
    assert r.status_code == status
    request = one(lines, r.headers["x-request-id"], "chatd.request")
    assert (request["status"], request["route"]) == (status, route)
    # A path no route serves is logged as it came (there is no template to name it by).
    assert request["path"] == (path if route is None else None)


@pytest.mark.allow_5xx
def test_a_refused_turn_still_names_its_request(
    client: httpx.Client, sid: str, lines: _Lines
) -> None:
    r = client.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": "x [fake: status=400]"},
        headers={"X-Request-ID": "failing-1"},
    )
    assert r.status_code == 502
    assert r.headers["x-request-id"] == "failing-1"
    turn = one(lines, "failing-1", "chatd.turn")
    assert (turn["level"], turn["state"], turn["error"]) == (
        "warning",
        "failed",
        "UpstreamBadRequest",
    )
    assert one(lines, "failing-1", "chatd.request")["status"] == 502


@pytest.mark.parametrize("header", ["x" * 129, "tab\tinside", "é-accented", " "])
def test_an_insane_request_id_is_replaced(header: str) -> None:
    chosen = choose_request_id([(b"x-request-id", header.encode("latin-1"))])
    assert chosen != header
    assert len(chosen) == 32
    assert int(chosen, 16) >= 0


@pytest.mark.parametrize("header", ["a", "x" * 128, "abc-DEF_123:/.~", "with inner space"])
def test_a_sane_request_id_is_kept(header: str) -> None:
    assert choose_request_id([(b"x-request-id", header.encode())]) == header


def raw_request(url: str, head: bytes) -> bytes:
    """Send raw request bytes (what an HTTP client would refuse to send) and return the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_a_bad_request_id_from_the_wire_is_never_echoed(server: Any, lines: _Lines) -> None:
    # What a server lets through but is no sane id: 8-bit bytes, and far too long.
    bad = b"evil\xe9\xff" + b"y" * 200
    answer = raw_request(
        server.url,
        b"GET /healthz HTTP/1.1\r\nHost: chatd\r\nX-Request-ID: " + bad + b"\r\n"
        b"Connection: close\r\n\r\n",
    )
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200")
    echoed = [h for h in head.split(b"\r\n") if h.startswith(b"x-request-id:")]
    assert len(echoed) == 1
    given = echoed[0].split(b":", 1)[1].strip()
    assert b"evil" not in given
    assert one(lines, given.decode(), "chatd.request")["route"] == "/healthz"
    assert "evil" not in "\n".join(lines.lines)


def test_a_completion_logs_its_caller_and_request(client: httpx.Client, lines: _Lines) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"model": "test-model", "messages": [{"role": "user", "content": "sum it up"}]},
        headers={"X-Request-ID": "completion-1", "Authorization": f"Bearer {KEY_ISH}"},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "completion-1"
    call = one(lines, "completion-1", "chatd.turn")
    assert (call["msg"], call["kind"], call["user"], call["state"]) == (
        "completion",
        "completion",
        "local",
        "complete",
    )
    assert one(lines, "completion-1", "chatd.request")["route"] == "/v1/chat/completions"
    everything = "\n".join(lines.lines)
    assert KEY_ISH not in everything
    assert "sum it up" not in everything


def test_with_log_content_the_turn_line_has_the_text(
    make_server: Any, lines: _Lines, sid: str
) -> None:
    server = make_server(log_content=True)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post(f"/v1/sessions/{sid}/messages", json={"content": "the words to keep"})
        stateless = c.post(
            "/v1/chat/completions",
            json={"model": "test-model", "messages": [{"role": "user", "content": "and these"}]},
        )
    assert r.status_code == stateless.status_code == 200
    turn = one(lines, r.headers["x-request-id"], "chatd.turn")
    assert (turn["prompt"], turn["reply"]) == ("the words to keep", r.json()["text"])
    call = one(lines, stateless.headers["x-request-id"], "chatd.turn")
    assert call["prompt"] == "and these"
    assert call["reply"] == stateless.json()["choices"][0]["message"]["content"]


def test_cors_lets_a_browser_send_and_read_the_id(client: httpx.Client) -> None:
    preflight = client.options(
        "/v1/sessions",
        headers={
            "Origin": "http://allowed.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-request-id",
        },
    )
    assert preflight.status_code == 200
    assert "x-request-id" in preflight.headers["access-control-allow-headers"].lower()
    assert "x-request-id" in preflight.headers
    r = client.get("/v1/sessions", headers={"Origin": "http://allowed.test"})
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


@pytest.mark.allow_5xx
async def test_a_bug_is_answered_500_with_the_id_and_logged(tmp_path: Path, lines: _Lines) -> None:
    app = create_app(Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/c.db"))  # type: ignore[call-arg]

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://chatd") as c:
        r = await c.get("/v1/boom", headers={"X-Request-ID": "bug-1"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "bug-1"
    assert r.json() == {"error": {"type": "internal_error", "message": "internal server error"}}
    request = one(lines, "bug-1", "chatd.request")
    assert (request["level"], request["status"], request["route"]) == ("warning", 500, "/v1/boom")
