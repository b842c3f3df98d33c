"""POST /v1/sessions/{id}/continue: a truncated reply goes on in the same turn, JSON or SSE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from chatd.testing.fake_upstream import FakeUpstream

ASK = "tell me everything [fake: words=40]"


def truncated(client: httpx.Client, sid: str, text: str = ASK) -> dict[str, Any]:
    """Send a message whose reply is cut at max_tokens; return the reply."""
    reply = client.post(f"/v1/sessions/{sid}/messages", json={"content": text, "max_tokens": 8})
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    assert (body["state"], body["truncated"]) == ("truncated", True)
    return body


def test_a_continued_reply_answers_as_one_turn_with_all_its_text(
    client: httpx.Client, sid: str, fake_upstream: FakeUpstream
) -> None:
    first = truncated(client, sid)
    response = client.post(f"/v1/sessions/{sid}/continue", json={"max_tokens": 500})
    assert response.status_code == 200
    body = response.json()
    assert body["session_id"] == sid
    assert body["turn_id"] == first["turn_id"]
    assert (body["state"], body["stop_reason"], body["truncated"]) == (
        "complete",
        "end_turn",
        False,
    )
    assert body["text"].startswith(first["text"])
    assert len(body["text"]) > len(first["text"])
    assert body["usage"]["output_tokens"] > first["usage"]["output_tokens"]
    # The model was given the reply so far to go on from (Anthropic: as a prefill).
    assert fake_upstream.requests[-1].body["messages"][-1] == {
        "role": "assistant",
        "content": first["text"],
    }
    [turn] = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert (turn["id"], turn["state"], turn["truncated"]) == (first["turn_id"], "complete", False)
    assert [m["role"] for m in turn["messages"]] == ["user", "assistant", "assistant"]
    assert "".join(m["content"] for m in turn["messages"][1:]) == body["text"]
    assert turn["usage"] == body["usage"]


def test_a_continuation_streams_sse_from_start_to_one_end(client: httpx.Client, sid: str) -> None:
    first = truncated(client, sid, "more please [fake: words=40 chunks=5]")
    body = {"stream": True, "max_tokens": 500}
    with connect_sse(client, "POST", f"/v1/sessions/{sid}/continue", json=body) as source:
        assert source.response.status_code == 200
        sse = list(source.iter_sse())
    assert sse[0].event == "message_start"
    assert sse[0].json() == {"session_id": sid, "turn_id": first["turn_id"]}
    assert [e.event for e in sse].count("delta") == 5
    assert sse[-1].event == "message_end"
    end = sse[-1].json()
    assert (end["turn_id"], end["state"], end["truncated"]) == (first["turn_id"], "complete", False)
    more = "".join(e.json()["text"] for e in sse if e.event == "delta")
    [turn] = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert turn["messages"][-1]["content"] == more


def test_accept_header_asks_for_sse_and_the_body_may_be_left_out(
    client: httpx.Client, sid: str
) -> None:
    truncated(client, sid)
    response = client.post(f"/v1/sessions/{sid}/continue", headers={"accept": "text/event-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event: message_end" in response.text
    # The session's max_tokens (the server's here) applies: the rest fits, so it is complete.
    assert '"state":"complete"' in response.text


def test_refusals_are_plain_errors_and_change_nothing(client: httpx.Client, sid: str) -> None:
    missing = client.post(f"/v1/sessions/{sid}/continue")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"})
    before = client.get(f"/v1/sessions/{sid}/messages").json()
    done = client.post(f"/v1/sessions/{sid}/continue", json={})
    assert done.status_code == 409
    error = done.json()["error"]
    assert error["type"] == "nothing_to_continue"
    assert "is complete, not truncated" in error["message"]
    assert client.get(f"/v1/sessions/{sid}/messages").json() == before
    bad = client.post(f"/v1/sessions/{sid}/continue", json={"content": "no such field"})
    assert bad.status_code == 422
    assert bad.json()["error"]["type"] == "invalid_request"
    over = client.post(f"/v1/sessions/{sid}/continue", json={"max_tokens": 10**9})
    assert over.status_code == 422


def test_a_continuation_is_refused_while_a_reply_streams(client: httpx.Client, sid: str) -> None:
    truncated(client, sid)
    slow = {"content": "slow [fake: chunks=4 delay_ms=100]", "stream": True}
    with connect_sse(client, "POST", f"/v1/sessions/{sid}/messages", json=slow) as source:
        events = source.iter_sse()
        assert next(events).event == "message_start"
        busy = client.post(f"/v1/sessions/{sid}/continue")
        assert busy.status_code == 409
        assert busy.json()["error"]["type"] == "session_busy"
        assert [e.event for e in events][-1] == "message_end"


def test_a_continuation_is_charged_to_the_callers_quota(
    start_server: Any, make_key: Any, tmp_path: Path
) -> None:
    with start_server(tmp_path / "chatd.db", auth="on") as srv:
        key = make_key(srv, "ann", tokens_per_day=10_000)
        with httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=30) as c:
            ask = {"content": "x [fake: words=40 usage_in=100 usage_out=5]", "max_tokens": 8}
            sent = c.post("/v1/sessions/s1/messages", json=ask)
            assert sent.json()["state"] == "truncated"
            more = c.post("/v1/sessions/s1/continue", json={"max_tokens": 500})
            assert more.status_code == 200
            again = c.post("/v1/sessions/s1/messages", json={"content": "thanks"})
            # Each answer shows what the earlier ones reported: the continuation's call alone.
            seen = [int(r.headers["ratelimit-remaining"]) for r in (sent, more, again)]
            assert seen == [9999, 9999 - 105, 9999 - 210]
            # Another user's session answers as a missing one.
            other = make_key(srv, "bob")
            bob = c.post("/v1/sessions/s1/continue", headers={"x-api-key": other})
            assert bob.status_code == 404
