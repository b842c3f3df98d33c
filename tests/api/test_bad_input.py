"""Bad input gets a clear 4xx and leaves history as it was (docs/promises.md, promise 4)."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

MiB = 1024 * 1024
CHAT_ROUTES = ["/chat", "/chat-stream", "/chat/{sid}", "/v1/sessions/{sid}/messages"]


def send(client: httpx.Client, route: str, sid: str, text: str) -> httpx.Response:
    """Send text on one of the chat routes, each with its own body shape."""
    url = route.format(sid=sid)
    if route.startswith("/v1/"):
        return client.post(url, json={"content": text})
    if "{sid}" in route:
        return client.post(url, json={"message": text})
    return client.post(url, json={"message": text, "session_id": sid})


def snapshot(client: httpx.Client, sid: str) -> Any:
    """Return every stored turn of the session (404 body if it does not exist)."""
    return client.get(f"/v1/sessions/{sid}/messages").json()


@pytest.fixture
def seeded(client: httpx.Client, sid: str) -> str:
    """Return a session with one complete exchange."""
    client.post("/chat", json={"message": "first", "session_id": sid})
    return sid


@pytest.mark.parametrize("route", CHAT_ROUTES)
@pytest.mark.parametrize("text", ["", "   \n\t ", "\x00\x07"])
def test_empty_message_is_422(client: httpx.Client, seeded: str, route: str, text: str) -> None:
    before = snapshot(client, seeded)
    response = send(client, route, seeded, text)
    assert response.status_code == 422
    assert "empty" in response.text
    assert snapshot(client, seeded) == before


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_message_over_the_cap_is_413_naming_it(
    client: httpx.Client, seeded: str, route: str
) -> None:
    before = snapshot(client, seeded)
    response = send(client, route, seeded, "x" * 32_001)
    assert response.status_code == 413
    assert "32000" in response.text
    assert snapshot(client, seeded) == before


def test_a_new_session_is_not_created_by_bad_input(client: httpx.Client, sid: str) -> None:
    client.post("/chat", json={"message": " ", "session_id": sid, "system_prompt": "p"})
    assert client.get(f"/history/{sid}").status_code == 404


def test_bad_message_does_not_change_the_system_prompt(client: httpx.Client, seeded: str) -> None:
    client.post("/chat", json={"message": "", "session_id": seeded, "system_prompt": "new"})
    assert client.get(f"/v1/sessions/{seeded}").json()["system_prompt"] is None


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "émoji", "semi;colon", "a,b"])
def test_bad_session_ids_are_422(client: httpx.Client, bad: str) -> None:
    assert client.post("/chat", json={"message": "hi", "session_id": bad}).status_code == 422
    for method, url in [
        ("POST", f"/chat/{bad}"),
        ("GET", f"/history/{bad}"),
        ("DELETE", f"/history/{bad}"),
        ("POST", f"/reset/{bad}"),
        ("GET", f"/v1/sessions/{bad}"),
        ("POST", f"/v1/sessions/{bad}/messages"),
    ]:
        response = client.request(method, url, json={"message": "hi", "content": "hi"})
        assert response.status_code == 422, (method, url)
    created = client.post("/v1/sessions", json={"id": bad})
    assert created.status_code == 422
    assert created.json()["error"]["type"] == "invalid_request"
    if bad.isascii() and bad.isprintable():  # else the client cannot even send it as a header
        headers = {"X-Chatd-Session": bad}
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 400


def test_longest_allowed_session_id_works(client: httpx.Client) -> None:
    sid = "a.b_c:d-" + "z" * 120
    assert client.post("/chat", json={"message": "hi", "session_id": sid}).status_code == 200


def test_control_characters_are_stripped_before_storage(client: httpx.Client, sid: str) -> None:
    client.post(
        "/chat",
        json={
            "message": "he\x00llo\x1b[31m\nworld\t!",
            "session_id": sid,
            "system_prompt": "p\x07",
        },
    )
    messages = client.get(f"/history/{sid}").json()["messages"]
    assert messages[0]["content"] == "hello[31m\nworld\t!"
    assert client.get(f"/v1/sessions/{sid}").json()["system_prompt"] == "p"


@pytest.mark.parametrize(
    ("url", "shape"),
    [("/chat", "detail"), ("/v1/sessions/{sid}/messages", "error"), ("/v1/sessions", "error")],
)
@pytest.mark.parametrize("body", [b'{"message": "hi"', b"not json", b"[1, 2]", b'"text"'])
def test_malformed_json_is_422(
    client: httpx.Client, seeded: str, url: str, shape: str, body: bytes
) -> None:
    before = snapshot(client, seeded)
    response = client.post(
        url.format(sid=seeded), content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert shape in response.json()
    assert snapshot(client, seeded) == before


def test_invalid_utf8_is_422_saying_so(client: httpx.Client, seeded: str) -> None:
    before = snapshot(client, seeded)
    body = b'{"message": "caf\xe9", "session_id": "' + seeded.encode() + b'"}'
    for url in ("/chat", f"/v1/sessions/{seeded}/messages", "/v1/sessions"):
        response = client.post(url, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert "not UTF-8" in response.text
    assert snapshot(client, seeded) == before


def test_a_json_syntax_error_says_where(client: httpx.Client, seeded: str) -> None:
    response = client.post(
        f"/v1/sessions/{seeded}/messages",
        content=b'{"content": hi}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert message.startswith("the request body is not valid JSON")
    assert "character 12" in message


def test_unknown_fields_are_refused_on_v1(client: httpx.Client, seeded: str) -> None:
    response = client.post(f"/v1/sessions/{seeded}/messages", json={"content": "hi", "extra": 1})
    assert response.status_code == 422
    assert "extra" in response.json()["error"]["message"]
    assert client.post("/v1/sessions", json={"nmae": "typo"}).status_code == 422


def test_out_of_range_settings_are_422(client: httpx.Client, sid: str) -> None:
    for bad in ({"temperature": 3}, {"max_tokens": 0}, {"stop": [""]}, {"stop": ["x"] * 9}):
        assert client.post("/v1/sessions", json={"id": sid, **bad}).status_code == 422


def test_unknown_provider_or_tool_is_400_and_nothing_is_stored(
    client: httpx.Client, sid: str
) -> None:
    assert client.post("/v1/sessions", json={"id": sid, "provider": "nonesuch"}).status_code == 400
    assert client.post("/v1/sessions", json={"id": sid, "model": "groq/llama"}).status_code == 400
    response = client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "hi", "tools": ["no_such_tool"]}
    )
    assert response.status_code == 400
    assert client.get(f"/v1/sessions/{sid}").status_code == 404


def test_body_over_the_cap_is_413_by_content_length(client: httpx.Client, seeded: str) -> None:
    before = snapshot(client, seeded)
    big = {"message": "x" * (MiB + 10), "session_id": seeded}
    response = client.post("/chat", json=big)
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body is over the limit of {MiB} bytes"}
    v1 = client.post(f"/v1/sessions/{seeded}/messages", json={"content": "x" * (MiB + 10)})
    assert v1.status_code == 413
    assert v1.json()["error"]["type"] == "input_too_large"
    assert snapshot(client, seeded) == before


def test_completions_take_bigger_bodies_up_to_their_own_cap(client: httpx.Client) -> None:
    history = [{"role": "user", "content": "x" * 1000}, {"role": "assistant", "content": "ok"}]
    messages = history * 700 + [{"role": "user", "content": "hi"}]
    body = {"model": "test-model", "messages": messages}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    body["messages"] = history * 2500 + [{"role": "user", "content": "hi"}]
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def raw_request(server_url: str, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request over a raw socket, even if the server stops reading; return the reply."""
    parts = urlsplit(server_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed before taking it all: what we test
        reply = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            reply += data
    return reply


def test_streamed_body_over_the_cap_is_cut_off_with_413(server: Any, client: httpx.Client) -> None:
    head = (
        b"POST /chat HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    piece = b'{"message": "' + b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 24 + [b"0\r\n\r\n"]
    reply = raw_request(server.url, head, chunks)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert client.get("/healthz").status_code == 200


def test_declared_huge_body_is_refused_without_waiting_for_it(server: Any) -> None:
    head = (
        b"POST /chat HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 50000000\r\n\r\n"
    )
    reply = raw_request(server.url, head, [b'{"message": '])
    assert reply.startswith(b"HTTP/1.1 413 ")
