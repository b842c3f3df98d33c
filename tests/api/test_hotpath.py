"""Sends served ahead of the framework answer exactly as the framework's route does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson

# FastAPI decodes these as JSON too; the hot path leaves them to it.
FRAMEWORK_ONLY = "application/merge-patch+json"


def post(client: httpx.Client, url: str, body: Any, content_type: str, **headers: str) -> Any:
    """Post a JSON body with the given content type."""
    return client.post(
        url, content=orjson.dumps(body), headers={"content-type": content_type, **headers}
    )


def send(client: httpx.Client, sid: str, body: Any, content_type: str, **headers: str) -> Any:
    """Send a message to a session."""
    return post(client, f"/v1/sessions/{sid}/messages", body, content_type, **headers)


def complete(client: httpx.Client, body: Any, content_type: str, **headers: str) -> Any:
    """Post a Chat Completions body."""
    return post(client, "/v1/chat/completions", body, content_type, **headers)


def shape(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply without what differs from turn to turn (ids, the fake's numbered text)."""
    return {k: v for k, v in reply.items() if k not in ("turn_id", "text")}


def test_a_send_answers_the_same_on_either_path(client: httpx.Client, sid: str) -> None:
    hot = send(client, sid, {"content": "hello"}, "application/json")
    framework = send(client, sid + "-b", {"content": "hello"}, FRAMEWORK_ONLY)
    assert hot.status_code == framework.status_code == 200
    assert hot.headers["content-type"] == framework.headers["content-type"]
    assert shape(hot.json()) == {**shape(framework.json()), "session_id": sid}
    for session in (sid, sid + "-b"):
        turns = client.get(f"/v1/sessions/{session}/messages").json()["data"]
        assert [t["state"] for t in turns] == ["complete"]


def test_a_body_sent_in_pieces_is_read_whole(client: httpx.Client, sid: str) -> None:
    text = " ".join(["piece"] * 5000)

    def pieces() -> Iterator[bytes]:
        body = orjson.dumps({"content": text})
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = client.post(
        f"/v1/sessions/{sid}/messages",
        content=pieces(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    turns = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert turns[0]["messages"][0]["content"] == text


def test_a_refused_send_reads_the_same_on_either_path(client: httpx.Client, sid: str) -> None:
    body = {"content": "hi", "provider": "no-such-provider"}
    hot = send(client, sid, body, "application/json")
    framework = send(client, sid, body, FRAMEWORK_ONLY)
    assert hot.status_code == framework.status_code == 400, hot.text
    assert hot.json() == framework.json()
    assert client.get(f"/v1/sessions/{sid}/messages").status_code == 404


def test_a_bad_idempotency_key_still_gets_the_framework_s_422(
    client: httpx.Client, sid: str
) -> None:
    response = send(client, sid, {"content": "hi"}, "application/json", **{"Idempotency-Key": ""})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]["message"]


def test_a_retried_send_with_its_key_is_one_turn(client: httpx.Client, sid: str) -> None:
    first = send(client, sid, {"content": "once"}, "application/json", **{"Idempotency-Key": "k1"})
    again = send(client, sid, {"content": "once"}, "application/json", **{"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 200
    assert first.json()["turn_id"] == again.json()["turn_id"]
    assert len(client.get(f"/v1/sessions/{sid}/messages").json()["data"]) == 1


def test_a_streamed_send_on_the_hot_path_ends_with_message_end(
    client: httpx.Client, sid: str
) -> None:
    with client.stream(
        "POST",
        f"/v1/sessions/{sid}/messages",
        content=orjson.dumps({"content": "hi", "stream": True}),
        headers={"content-type": "application/json"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-content-type-options"] == "nosniff"
        events = [line for line in response.iter_lines() if line.startswith("event: ")]
    assert events[0] == "event: message_start"
    assert events[-1] == "event: message_end"


COMPLETION = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def test_a_completion_answers_the_same_on_either_path(client: httpx.Client) -> None:
    hot = complete(client, COMPLETION, "application/json")
    framework = complete(client, COMPLETION, FRAMEWORK_ONLY)
    assert hot.status_code == framework.status_code == 200
    assert hot.headers["content-type"] == framework.headers["content-type"]
    keep = ("object", "model", "usage")
    assert {k: hot.json()[k] for k in keep} == {k: framework.json()[k] for k in keep}
    assert hot.json()["choices"][0].keys() == framework.json()["choices"][0].keys()


def test_a_session_completion_on_the_hot_path_keeps_the_conversation(
    client: httpx.Client, sid: str
) -> None:
    for text in ("one", "two"):
        body = {**COMPLETION, "messages": [{"role": "user", "content": text}]}
        response = complete(client, body, "application/json", **{"X-Chatd-Session": sid})
        assert response.status_code == 200, response.text
    turns = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert [t["messages"][0]["content"] for t in turns] == ["one", "two"]


def test_a_refused_completion_reads_the_same_on_either_path(client: httpx.Client, sid: str) -> None:
    body = {**COMPLETION, "messages": [{"role": "assistant", "content": "not the user's"}]}
    hot = complete(client, body, "application/json", **{"X-Chatd-Session": sid})
    framework = complete(client, body, FRAMEWORK_ONLY, **{"X-Chatd-Session": sid})
    assert hot.status_code == framework.status_code == 400
    assert hot.json() == framework.json()


def test_a_bad_session_header_still_gets_the_framework_s_400(client: httpx.Client) -> None:
    response = complete(client, COMPLETION, "application/json", **{"X-Chatd-Session": "a b"})
    assert response.status_code == 400
    assert "X-Chatd-Session" in response.json()["error"]["message"]
