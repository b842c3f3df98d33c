"""The compatibility routes (docs/http.md): exact shapes and status codes over a real socket."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from chatd.testing.fake_upstream import FakeUpstream


def history(client: httpx.Client, sid: str) -> httpx.Response:
    """Return GET /history/{sid}."""
    return client.get(f"/history/{sid}")


def test_root_says_ok(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "chatd"}


def test_chat_answers_with_exact_fields_and_counts_exchanges(
    client: httpx.Client, sid: str
) -> None:
    first = client.post("/chat", json={"message": "my name is Ada", "session_id": sid})
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"response", "session_id", "timestamp", "turn_count"}
    assert body["session_id"] == sid
    assert body["turn_count"] == 1
    assert 'You said: "my name is Ada"' in body["response"]
    datetime.fromisoformat(body["timestamp"])
    second = client.post("/chat", json={"message": "again", "session_id": sid}).json()
    assert second["turn_count"] == 2
    assert "to 3 messages" in second["response"]


def test_chat_without_session_id_makes_one_up(client: httpx.Client) -> None:
    body = client.post("/chat", json={"message": "hi"}).json()
    assert body["session_id"]
    assert history(client, body["session_id"]).json()["turn_count"] == 1


def test_system_prompt_reaches_the_model_and_can_change(
    client: httpx.Client, sid: str, fake_upstream: FakeUpstream
) -> None:
    client.post("/chat", json={"message": "hi", "session_id": sid, "system_prompt": "Be brief."})
    assert fake_upstream.requests[-1].body["system"] == "Be brief."
    client.post("/chat", json={"message": "hi", "session_id": sid, "system_prompt": "Be long."})
    assert fake_upstream.requests[-1].body["system"] == "Be long."


def test_history_lists_complete_exchanges_in_order(client: httpx.Client, sid: str) -> None:
    replies = [
        client.post("/chat", json={"message": m, "session_id": sid}).json()["response"]
        for m in ("one", "two")
    ]
    response = history(client, sid)
    assert response.status_code == 200
    assert response.json() == {
        "session_id": sid,
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": replies[0]},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": replies[1]},
        ],
        "turn_count": 2,
    }


def test_history_of_an_unknown_session_is_404(client: httpx.Client, sid: str) -> None:
    response = history(client, sid)
    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.allow_5xx
def test_failed_chat_is_an_error_status_and_leaves_history(client: httpx.Client, sid: str) -> None:
    client.post("/chat", json={"message": "first", "session_id": sid})
    before = history(client, sid).json()
    response = client.post("/chat", json={"message": "x [fake: status=500]", "session_id": sid})
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert "500" in response.json()["detail"]
    assert history(client, sid).json() == before


def test_rate_limit_is_429_with_the_upstreams_retry_after(client: httpx.Client, sid: str) -> None:
    response = client.post(
        "/chat", json={"message": "x [fake: status=429 retry_after=7]", "session_id": sid}
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


@pytest.mark.allow_5xx
def test_upstream_auth_failure_is_502_naming_the_problem(client: httpx.Client, sid: str) -> None:
    response = client.post("/chat", json={"message": "x [fake: status=401]", "session_id": sid})
    assert response.status_code == 502
    assert "key was rejected" in response.json()["detail"]
    assert "test-key" not in response.text


def test_chat_stream_sends_plain_text_chunks(client: httpx.Client, sid: str) -> None:
    body = {"message": "hello [fake: chunks=4 delay_ms=50]", "session_id": sid}
    with client.stream("POST", "/chat-stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        chunks = list(response.iter_raw())
    assert len(chunks) >= 4
    text = b"".join(chunks).decode()
    assert text == history(client, sid).json()["messages"][1]["content"]


def test_chat_stream_failure_ends_with_an_error_line(client: httpx.Client, sid: str) -> None:
    client.post("/chat", json={"message": "first", "session_id": sid})
    before = history(client, sid).json()
    body = {"message": "x [fake: chunks=4 stream_error_after=2]", "session_id": sid}
    response = client.post("/chat-stream", json=body)
    assert response.status_code == 200
    assert response.text.splitlines()[-1].startswith("[error] ")
    assert history(client, sid).json() == before


def test_session_route_streams_ndjson_deltas(client: httpx.Client, sid: str) -> None:
    response = client.post(f"/chat/{sid}", json={"message": "hello [fake: chunks=3]"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [orjson.loads(line) for line in response.text.splitlines()]
    assert len(lines) == 3
    assert all(set(line) == {"delta"} for line in lines)
    reply = "".join(line["delta"] for line in lines)
    assert history(client, sid).json()["messages"][-1]["content"] == reply


def test_session_route_failure_ends_with_an_error_line(client: httpx.Client, sid: str) -> None:
    client.post(f"/chat/{sid}", json={"message": "first"})
    before = history(client, sid).json()
    response = client.post(f"/chat/{sid}", json={"message": "x [fake: status=503]"})
    lines = [orjson.loads(line) for line in response.text.splitlines()]
    assert set(lines[-1]) == {"error"}
    assert "503" in lines[-1]["error"]
    assert history(client, sid).json() == before


def test_delete_removes_the_session(client: httpx.Client, sid: str) -> None:
    client.post("/chat", json={"message": "hi", "session_id": sid})
    response = client.delete(f"/history/{sid}")
    assert response.json() == {"status": "cleared", "session_id": sid}
    assert history(client, sid).status_code == 404
    again = client.delete(f"/history/{sid}")
    assert again.status_code == 200
    assert again.json() == {"status": "not_found", "session_id": sid}


@pytest.mark.allow_5xx
def test_reset_keeps_the_session_empty(client: httpx.Client, sid: str) -> None:
    for m in ("one", "two"):
        client.post("/chat", json={"message": m, "session_id": sid})
    client.post("/chat", json={"message": "x [fake: status=500]", "session_id": sid})
    response = client.post(f"/reset/{sid}")
    assert response.json() == {"status": "reset", "session_id": sid, "previous_turns": 2}
    after = history(client, sid)
    assert after.status_code == 200
    assert after.json() == {"session_id": sid, "messages": [], "turn_count": 0}


def test_reset_of_an_unknown_session_is_not_found(client: httpx.Client, sid: str) -> None:
    response = client.post(f"/reset/{sid}")
    assert response.status_code == 200
    assert response.json() == {"status": "not_found", "session_id": sid, "previous_turns": 0}


@pytest.mark.allow_5xx
def test_sessions_and_stats_count_complete_exchanges(make_server: Any) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/sessions").json() == {"sessions": []}
        assert c.get("/stats").json() == {
            "total_sessions": 0,
            "total_messages": 0,
            "avg_messages_per_session": 0.0,
        }
        for sid, n in (("a", 1), ("b", 2)):
            for i in range(n):
                c.post("/chat", json={"message": f"m{i}", "session_id": sid})
        c.post("/chat", json={"message": "x [fake: status=500]", "session_id": "b"})
        sessions = c.get("/sessions").json()["sessions"]
        assert [(s["session_id"], s["turns"]) for s in sessions] == [("a", 1), ("b", 2)]
        assert all(set(s) == {"session_id", "turns", "created_at"} for s in sessions)
        assert c.get("/stats").json() == {
            "total_sessions": 2,
            "total_messages": 6,
            "avg_messages_per_session": 3.0,
        }
