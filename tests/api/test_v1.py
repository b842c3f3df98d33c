"""/v1 end to end: sessions as resources, messages as JSON and SSE, export/import, usage."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from chatd.testing.fake_upstream import FakeUpstream


def events(client: httpx.Client, sid: str, content: str, **extra: Any) -> list[ServerSentEvent]:
    """Send a message with stream on and return every SSE event."""
    body = {"content": content, "stream": True, **extra}
    with connect_sse(client, "POST", f"/v1/sessions/{sid}/messages", json=body) as source:
        assert source.response.status_code == 200
        return list(source.iter_sse())


def terminal(sse: list[ServerSentEvent]) -> ServerSentEvent:
    """Return the one terminal event, checking it is last and unique."""
    ends = [e for e in sse if e.event in ("message_end", "error")]
    assert len(ends) == 1
    assert sse[-1] is ends[0]
    return ends[0]


def test_session_create_get_update_delete(client: httpx.Client, sid: str) -> None:
    created = client.post(
        "/v1/sessions",
        json={"id": sid, "system_prompt": "Be kind.", "model": "anthropic/m1", "max_tokens": 50},
    )
    assert created.status_code == 201
    body = created.json()
    assert body["id"] == sid
    assert (body["provider"], body["model"], body["max_tokens"]) == ("anthropic", "m1", 50)
    assert body["turn_count"] == 0
    assert client.get(f"/v1/sessions/{sid}").json() == body
    patched = client.patch(f"/v1/sessions/{sid}", json={"temperature": 0.5, "model": "m2"}).json()
    assert (patched["temperature"], patched["model"], patched["max_tokens"]) == (0.5, "m2", 50)
    assert patched["system_prompt"] == "Be kind."
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    gone = client.get(f"/v1/sessions/{sid}")
    assert gone.status_code == 404
    assert gone.json()["error"]["type"] == "not_found"
    assert client.delete(f"/v1/sessions/{sid}").status_code == 404


def test_session_settings_reach_the_model(
    client: httpx.Client, sid: str, fake_upstream: FakeUpstream
) -> None:
    client.post(
        "/v1/sessions", json={"id": sid, "system_prompt": "Be kind.", "model": "m9", "stop": ["X"]}
    )
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})
    sent = fake_upstream.requests[-1].body
    assert (sent["system"], sent["model"], sent["stop_sequences"]) == ("Be kind.", "m9", ["X"])


def test_creating_a_taken_id_is_409(client: httpx.Client, sid: str) -> None:
    client.post("/v1/sessions", json={"id": sid})
    response = client.post("/v1/sessions", json={"id": sid})
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "already_exists"


def test_session_without_id_gets_one(client: httpx.Client) -> None:
    body = client.post("/v1/sessions", json={}).json()
    assert client.get(f"/v1/sessions/{body['id']}").status_code == 200


def test_session_list_pages_with_a_cursor(make_server: Any) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url) as c:
        for i in range(5):
            c.post("/v1/sessions", json={"id": f"s{i}"})
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/sessions", params=params).json()
            seen += [s["id"] for s in page["data"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"s{i}" for i in range(5)]
        assert pages == 3
        bad = c.get("/v1/sessions", params={"cursor": "garbage"})
        assert bad.status_code == 422
        assert bad.json()["error"]["type"] == "input_error"


def test_send_returns_json_with_state_and_usage(client: httpx.Client, sid: str) -> None:
    response = client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"})
    assert response.status_code == 200
    body = response.json()
    assert body["session_id"] == sid
    assert (body["state"], body["stop_reason"], body["truncated"]) == (
        "complete",
        "end_turn",
        False,
    )
    assert 'You said: "hello"' in body["text"]
    assert body["usage"]["output_tokens"] > 0


def test_send_streams_sse_from_start_to_one_end(client: httpx.Client, sid: str) -> None:
    sse = events(client, sid, "hello [fake: chunks=3]")
    assert sse[0].event == "message_start"
    start = sse[0].json()
    assert start["session_id"] == sid
    deltas = [e.json()["text"] for e in sse if e.event == "delta"]
    assert len(deltas) == 3
    assert any(e.event == "usage" for e in sse)
    end = terminal(sse).json()
    assert end["turn_id"] == start["turn_id"]
    assert (end["state"], end["stop_reason"], end["truncated"]) == ("complete", "end_turn", False)
    assert end["usage"]["output_tokens"] > 0
    turns = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert turns[-1]["messages"][-1]["content"] == "".join(deltas)


def test_accept_header_asks_for_sse(client: httpx.Client, sid: str) -> None:
    response = client.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": "hi"},
        headers={"accept": "text/event-stream"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event: message_end" in response.text


def test_max_tokens_is_reported_truncated(client: httpx.Client, sid: str) -> None:
    end = terminal(events(client, sid, "x [fake: stop=max_tokens]")).json()
    assert (end["truncated"], end["state"], end["stop_reason"]) == (True, "truncated", "max_tokens")
    plain = client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "x [fake: words=50]", "max_tokens": 5}
    ).json()
    assert plain["truncated"] is True


def test_upstream_failure_ends_the_stream_with_an_error_event(
    client: httpx.Client, sid: str
) -> None:
    sse = events(client, sid, "x [fake: status=429 retry_after=4]")
    assert sse[0].event == "message_start"
    error = terminal(sse)
    assert error.event == "error"
    assert error.json() == {
        "type": "upstream_rate_limited",
        "message": error.json()["message"],
        "retry_after": 4,
    }
    midway = terminal(events(client, sid, "y [fake: chunks=4 stream_error_after=2]")).json()
    assert midway["type"] == "upstream_stream_error"
    assert "retry_after" not in midway


@pytest.mark.allow_5xx
def test_message_list_shows_every_turn_with_state(client: httpx.Client, sid: str) -> None:
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "one"})
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "x [fake: status=500]"})
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "three [fake: stop=max_tokens]"})
    first = client.get(f"/v1/sessions/{sid}/messages", params={"limit": 2}).json()
    assert [t["state"] for t in first["data"]] == ["complete", "failed"]
    assert first["data"][1]["error"]
    assert first["data"][0]["messages"][0] == {
        "role": "user",
        "content": "one",
        "parts": [{"type": "text", "text": "one"}],
        # The session's first message: no earlier prompt to tell its size from the system's.
        "tokens": None,
    }
    rest = client.get(
        f"/v1/sessions/{sid}/messages", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [t["state"] for t in rest["data"]] == ["truncated"]
    assert rest["data"][0]["truncated"] is True
    assert rest["next_cursor"] is None


def test_tool_calls_and_results_stream_as_events(make_server: Any, sid: str) -> None:
    server = make_server(tools=["current_time", "calculate"])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        sse = events(client, sid, "time? [fake: tool=current_time]", tools=["current_time"])
    kinds = [e.event for e in sse]
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("message_end")
    call = next(e.json() for e in sse if e.event == "tool_call")
    result = next(e.json() for e in sse if e.event == "tool_result")
    assert call["name"] == "current_time"
    assert result["tool_call_id"] == call["id"]
    assert result["is_error"] is False


@pytest.mark.allow_5xx
def test_reset_keeps_the_session_and_counts_exchanges(client: httpx.Client, sid: str) -> None:
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "one"})
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "x [fake: status=500]"})
    response = client.post(f"/v1/sessions/{sid}/reset")
    assert response.json() == {"session_id": sid, "previous_turns": 1}
    assert client.get(f"/v1/sessions/{sid}/messages").json()["data"] == []
    assert client.get(f"/v1/sessions/{sid}").status_code == 200
    assert client.post("/v1/sessions/not-there-at-all/reset").status_code == 404


def test_export_then_import_under_a_new_id(client: httpx.Client, sid: str) -> None:
    client.post("/v1/sessions", json={"id": sid, "system_prompt": "Be kind."})
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "one"})
    document = client.get(f"/v1/sessions/{sid}/export").json()
    assert document["format"] == "chatd.session/1"
    taken = client.post("/v1/sessions/import", json=document)
    assert taken.status_code == 409
    copy = sid + "-copy"
    imported = client.post("/v1/sessions/import", json={**document, "session_id": copy})
    assert imported.status_code == 201
    assert (imported.json()["system_prompt"], imported.json()["turn_count"]) == ("Be kind.", 1)
    original = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    copied = client.get(f"/v1/sessions/{copy}/messages").json()["data"]

    def content(turns: list[dict[str, Any]]) -> list[list[tuple[str, Any]]]:
        # Sizes counted by a provider are not part of the document: the copy has none yet.
        return [[(m["role"], m["parts"]) for m in t["messages"]] for t in turns]

    assert content(copied) == content(original)


def test_import_refuses_a_malformed_document(client: httpx.Client) -> None:
    response = client.post("/v1/sessions/import", json={"format": "nope"})
    assert response.status_code == 422
    bad_id = {"format": "chatd.session/1", "session_id": "no spaces allowed", "turns": []}
    assert client.post("/v1/sessions/import", json=bad_id).status_code == 422


def test_usage_sums_the_callers_turns(make_server: Any) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v1/usage").json()["turns"] == 0
        one = c.post("/v1/sessions/a/messages", json={"content": "hi"}).json()["usage"]
        two = c.post("/v1/sessions/b/messages", json={"content": "ho"}).json()["usage"]
        total = c.get("/v1/usage").json()
        assert total["turns"] == 2
        assert total["output_tokens"] == one["output_tokens"] + two["output_tokens"]


def test_idempotency_key_is_accepted_and_a_retry_is_not_a_second_turn(
    client: httpx.Client, sid: str
) -> None:
    headers = {"Idempotency-Key": "k-123"}
    url = f"/v1/sessions/{sid}/messages"
    first = client.post(url, json={"content": "once"}, headers=headers).json()
    again = client.post(url, json={"content": "once"}, headers=headers).json()
    assert again["turn_id"] == first["turn_id"]
    assert len(client.get(url).json()["data"]) == 1
    bad = client.post(url, json={"content": "once"}, headers={"Idempotency-Key": "a b"})
    assert bad.status_code == 422


def test_sse_pings_while_the_model_is_silent(client: httpx.Client, sid: str) -> None:
    body = {"content": "slow [fake: chunks=2 delay_ms=500]", "stream": True}
    response = client.post(f"/v1/sessions/{sid}/messages", json=body)
    assert b": ping\n\n" in response.content
    assert orjson.loads(response.text.split("event: message_end\ndata: ")[1])["state"] == "complete"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_provider_or_model_prefix_is_400(
    client: httpx.Client, sid: str, stream: bool
) -> None:
    url = f"/v1/sessions/{sid}/messages"
    for extra in ({"provider": "nonesuch"}, {"provider": "openai"}):
        response = client.post(url, json={"content": "hi", "stream": stream, **extra})
        assert response.status_code == 400
        assert response.json()["error"]["type"] in ("config_error", "provider_not_configured")
    assert client.get(url).status_code == 404


def test_session_tools_and_context_policy_are_kept_and_used(
    make_server: Any, sid: str, fake_upstream: FakeUpstream
) -> None:
    server = make_server(tools=["current_time", "calculate"])
    body = {"id": sid, "tools": ["calculate"], "context": {"policy": "window", "limit": 2}}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        created = client.post("/v1/sessions", json=body)
        assert created.status_code == 201
        assert created.json()["tools"] == ["calculate"]
        assert created.json()["context"] == {"policy": "window", "limit": 2}
        for n in range(2):
            sent = client.post(f"/v1/sessions/{sid}/messages", json={"content": f"q{n}"})
            assert sent.status_code == 200
        request = fake_upstream.requests[-1].body
        assert [t["name"] for t in request["tools"]] == ["calculate"]
        assert [m["content"] for m in request["messages"]] == ["q1"]
        assert client.get(f"/v1/sessions/{sid}").json()["context"]["policy"] == "window"


def test_unknown_tool_or_bad_context_is_refused_at_create(client: httpx.Client, sid: str) -> None:
    unknown = client.post("/v1/sessions", json={"id": sid, "tools": ["rm_rf"]})
    assert unknown.status_code == 400
    assert "rm_rf" in unknown.json()["error"]["message"]
    bad = client.post("/v1/sessions", json={"id": sid, "context": {"policy": "everything"}})
    assert bad.status_code == 422
    assert client.get(f"/v1/sessions/{sid}").status_code == 404
