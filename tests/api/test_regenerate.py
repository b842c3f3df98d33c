"""POST /v1/sessions/{id}/regenerate: the last reply asked for again, the new turn in its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from chatd.testing.fake_upstream import FakeUpstream


def send(client: httpx.Client, sid: str, text: str, **extra: Any) -> dict[str, Any]:
    """Send a message and return the JSON reply, checking it was a 200."""
    response = client.post(f"/v1/sessions/{sid}/messages", json={"content": text, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def turns(client: httpx.Client, sid: str) -> list[dict[str, Any]]:
    """Return every turn of the session, as the message list shows them."""
    response = client.get(f"/v1/sessions/{sid}/messages")
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def said(turn: dict[str, Any]) -> list[tuple[str, str]]:
    """Return a listed turn's messages as (role, text)."""
    return [(m["role"], m["content"]) for m in turn["messages"]]


def prompt(fake: FakeUpstream) -> list[tuple[str, Any]]:
    """Return the messages of the model's last request as (role, content)."""
    return [(m["role"], m["content"]) for m in fake.requests[-1].body["messages"]]


def test_the_last_reply_is_replaced_by_a_new_one(
    client: httpx.Client, sid: str, fake_upstream: FakeUpstream
) -> None:
    first = send(client, sid, "hi")
    old = send(client, sid, "tell me a joke")
    # Another temperature makes the fake answer differently: its reply digests the request.
    response = client.post(f"/v1/sessions/{sid}/regenerate", json={"temperature": 0.9})
    assert response.status_code == 200
    new = response.json()
    assert new["session_id"] == sid
    assert new["turn_id"] != old["turn_id"]
    assert (new["state"], new["stop_reason"], new["truncated"]) == ("complete", "end_turn", False)
    assert new["text"] != old["text"]
    assert 'You said: "tell me a joke"' in new["text"]
    # The model was asked with the history before the replaced turn, and its user message.
    assert prompt(fake_upstream) == [
        ("user", "hi"),
        ("assistant", first["text"]),
        ("user", "tell me a joke"),
    ]
    assert fake_upstream.requests[-1].body["temperature"] == 0.9
    listed = turns(client, sid)
    assert [t["id"] for t in listed] == [first["turn_id"], new["turn_id"]]
    assert [t["seq"] for t in listed] == [1, 2]
    assert said(listed[1]) == [("user", "tell me a joke"), ("assistant", new["text"])]
    assert listed[1]["in_view"] is True
    # The model's next prompt has the new reply only.
    send(client, sid, "another")
    assert prompt(fake_upstream) == [
        ("user", "hi"),
        ("assistant", first["text"]),
        ("user", "tell me a joke"),
        ("assistant", new["text"]),
        ("user", "another"),
    ]
    history = client.get(f"/history/{sid}").json()
    assert old["text"] not in [m["content"] for m in history["messages"]]
    assert history["turn_count"] == 3


@pytest.mark.allow_5xx
def test_a_failed_last_turn_is_asked_again_in_its_place(
    client: httpx.Client, sid: str, fake_upstream: FakeUpstream
) -> None:
    send(client, sid, "hi")
    failing = client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "again [fake: status=500 fail_times=1]"}
    )
    assert failing.status_code >= 500
    assert [t["state"] for t in turns(client, sid)] == ["complete", "failed"]
    response = client.post(f"/v1/sessions/{sid}/regenerate")
    assert response.status_code == 200
    assert response.json()["state"] == "complete"
    listed = turns(client, sid)
    assert [t["state"] for t in listed] == ["complete", "complete"]
    ask = "again [fake: status=500 fail_times=1]"
    assert said(listed[1]) == [("user", ask), ("assistant", response.json()["text"])]


def test_a_regenerated_reply_streams_sse_from_start_to_one_end(
    client: httpx.Client, sid: str
) -> None:
    old = send(client, sid, "hello [fake: chunks=3]")
    body = {"stream": True, "max_tokens": 300}
    with connect_sse(client, "POST", f"/v1/sessions/{sid}/regenerate", json=body) as source:
        assert source.response.status_code == 200
        sse = list(source.iter_sse())
    assert sse[0].event == "message_start"
    start = sse[0].json()
    assert start["session_id"] == sid
    assert start["turn_id"] != old["turn_id"]
    assert [e.event for e in sse].count("delta") == 3
    assert [e.event for e in sse].count("message_end") == 1
    assert sse[-1].event == "message_end"
    end = sse[-1].json()
    assert (end["turn_id"], end["state"]) == (start["turn_id"], "complete")
    text = "".join(e.json()["text"] for e in sse if e.event == "delta")
    [turn] = turns(client, sid)
    assert turn["id"] == start["turn_id"]
    assert said(turn) == [("user", "hello [fake: chunks=3]"), ("assistant", text)]
    # Accept asks for SSE too, and the body may be left out.
    accepted = client.post(
        f"/v1/sessions/{sid}/regenerate", headers={"accept": "text/event-stream"}
    )
    assert accepted.status_code == 200
    assert accepted.headers["content-type"].startswith("text/event-stream")
    assert "event: message_end" in accepted.text
    assert len(turns(client, sid)) == 1


def test_refused_regenerates_change_nothing(
    make_server: Any, fake_upstream: FakeUpstream, sid: str
) -> None:
    server = make_server(models=["anthropic/test-model", "anthropic/other-model"])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        missing = c.post(f"/v1/sessions/{sid}/regenerate")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found"
        assert c.post("/v1/sessions", json={"id": sid}).status_code == 201
        empty = c.post(f"/v1/sessions/{sid}/regenerate", json={})
        assert empty.status_code == 409
        assert empty.json()["error"]["type"] == "nothing_to_regenerate"
        assert "no reply to regenerate" in empty.json()["error"]["message"]
        send(c, sid, "hi")
        before = turns(c, sid)
        usage = c.get("/v1/usage").json()
        calls = len(fake_upstream.requests)
        refusals = {
            400: {"model": "not-allowed"},
            422: {"content": "no such field"},
        }
        for status, body in refusals.items():
            refused = c.post(f"/v1/sessions/{sid}/regenerate", json=body)
            assert refused.status_code == status, refused.text
        for body in ({"max_tokens": 10**9}, {"temperature": 3}, {"stream": "yes please"}):
            refused = c.post(f"/v1/sessions/{sid}/regenerate", json=body)
            assert refused.status_code == 422
            assert refused.json()["error"]["type"] == "invalid_request"
        assert turns(c, sid) == before
        assert c.get("/v1/usage").json() == usage
        assert len(fake_upstream.requests) == calls
        # The allow-list holds for the model asked for, as on a send.
        other = c.post(f"/v1/sessions/{sid}/regenerate", json={"model": "other-model"})
        assert other.status_code == 200
        assert fake_upstream.requests[-1].body["model"] == "other-model"


def test_a_regenerate_is_refused_while_a_reply_streams(client: httpx.Client, sid: str) -> None:
    send(client, sid, "hi")
    slow = {"content": "slow [fake: chunks=4 delay_ms=100]", "stream": True}
    with connect_sse(client, "POST", f"/v1/sessions/{sid}/messages", json=slow) as source:
        events = source.iter_sse()
        assert next(events).event == "message_start"
        busy = client.post(f"/v1/sessions/{sid}/regenerate")
        assert busy.status_code == 409
        assert busy.json()["error"]["type"] == "session_busy"
        assert [e.event for e in events][-1] == "message_end"
    listed = turns(client, sid)
    assert [said(t)[0] for t in listed] == [("user", "hi"), ("user", slow["content"])]
    assert [t["state"] for t in listed] == ["complete", "complete"]


def test_the_replaced_turns_usage_stays_counted(make_server: Any, sid: str) -> None:
    prices = {"test-model": {"input": 1000.0, "output": 1000.0}}
    server = make_server(prices=prices)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        old = send(c, sid, "x [fake: usage_in=100 usage_out=7]")
        regenerated = c.post(f"/v1/sessions/{sid}/regenerate", json={"temperature": 0.5})
        assert regenerated.status_code == 200
        new = regenerated.json()
        assert new["usage"]["input_tokens"] == 100
        usage = c.get("/v1/usage").json()
        assert usage["turns"] == 2
        assert (usage["input_tokens"], usage["output_tokens"]) == (200, 14)
        assert usage["cost_usd"] == pytest.approx(old["cost_usd"] + new["cost_usd"])
        [by_session] = c.get("/v1/usage", params={"by": "session"}).json()["data"]
        assert (by_session["key"], by_session["turns"], by_session["input_tokens"]) == (
            sid,
            2,
            200,
        )
        # The session lists (and sums the cost of) the turns it holds: the new one.
        info = c.get(f"/v1/sessions/{sid}").json()
        assert (info["turn_count"], info["cost_usd"]) == (1, pytest.approx(new["cost_usd"]))


def test_regenerate_needs_the_sessions_owner_and_is_charged_to_quotas(
    start_server: Any, make_key: Any, tmp_path: Path
) -> None:
    with start_server(tmp_path / "chatd.db", auth="on") as srv:
        ann = make_key(srv, "ann", tokens_per_day=300)
        bob = make_key(srv, "bob")
        with httpx.Client(base_url=srv.url, headers={"x-api-key": ann}, timeout=30) as c:
            sent = c.post(
                "/v1/sessions/s1/messages", json={"content": "x [fake: usage_in=100 usage_out=5]"}
            )
            assert sent.status_code == 200
            before = turns(c, "s1")
            # Another user's session answers as a missing one, and is left alone.
            other = c.post("/v1/sessions/s1/regenerate", headers={"x-api-key": bob})
            assert other.status_code == 404
            assert other.json()["error"]["type"] == "not_found"
            assert c.post("/v1/sessions/nowhere/regenerate").status_code == 404
            assert turns(c, "s1") == before
            again = c.post("/v1/sessions/s1/regenerate", json={"temperature": 0.5})
            assert again.status_code == 200
            # Each answer shows what the earlier ones reported (less its own reservation).
            assert int(again.headers["ratelimit-remaining"]) == 300 - 105 - 1
            spent = c.post("/v1/sessions/s1/regenerate", json={"temperature": 0.7})
            assert spent.status_code == 200
            # The regenerate before it was charged too.
            assert int(spent.headers["ratelimit-remaining"]) == 300 - 2 * 105 - 1
            after = turns(c, "s1")
            refused = c.post("/v1/sessions/s1/regenerate")
            assert refused.status_code == 429
            assert "tokens_per_day" in refused.json()["error"]["message"]
            assert turns(c, "s1") == after
