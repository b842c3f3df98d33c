"""POST /v1/sessions/{id}/stop: a user's stop of the turn in flight, wherever it runs.

The stopped turn is kept, interrupted, with what it said so far (never in the model's context)
and its usage charged; the stream reading it ends with one error event; the session takes the
next send at once. Nothing to stop is a 409, another user's session a 404.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from chatd.testing.fake_upstream import FakeUpstream

SLOW = "tell me a long story [fake: chunks=200 delay_ms=20]"  # about 4 s of reply


@pytest.fixture
def other(client: httpx.Client) -> Iterator[httpx.Client]:
    """Yield a second client of the same server: the one that presses Stop."""
    with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
        yield c


def events_of(lines: list[str]) -> list[tuple[str, Any]]:
    """Return the (event, data) pairs of SSE lines."""
    pairs: list[tuple[str, Any]] = []
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name is not None:
            pairs.append((name, orjson.loads(line.removeprefix("data: "))))
            name = None
    return pairs


def stream_until_text(response: httpx.Response) -> tuple[Iterator[str], list[str]]:
    """Read an SSE response up to its first delta; return the line iterator and lines read."""
    lines = response.iter_lines()
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if line.startswith("event: delta"):
            seen.append(next(lines))
            return lines, seen
    raise AssertionError(f"the stream ended before any text: {seen}")


def wait_for_cut(fake: FakeUpstream) -> list[int]:
    """Return the deltas sent by each upstream stream its client left, once the fake noticed."""
    for _ in range(100):
        if fake.cut_short:
            break
        time.sleep(0.02)
    return [sent for _, sent in fake.cut_short]


def reply_text(turn: dict[str, Any]) -> str:
    """Return the text of a listed turn's assistant messages."""
    return "".join(m["content"] for m in turn["messages"] if m["role"] == "assistant")


def test_stop_mid_stream_ends_the_stream_keeps_the_partial_reply_and_frees_the_session(
    client: httpx.Client, other: httpx.Client, fake_upstream: FakeUpstream, sid: str
) -> None:
    assert client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"}).is_success
    body = {"content": SLOW, "stream": True}
    with client.stream("POST", f"/v1/sessions/{sid}/messages", json=body) as response:
        lines, seen = stream_until_text(response)
        began = time.monotonic()
        stopped = other.post(f"/v1/sessions/{sid}/stop")
        took = time.monotonic() - began
        rest = list(lines)
    events = events_of([*seen, *rest])
    turn_id = events[0][1]["turn_id"]
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {"session_id": sid, "turn_id": turn_id, "state": "interrupted"}
    assert took < 1.5
    # The stream ends with exactly one final event: the stop's error, no message_end.
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "error"
    assert names.count("error") == 1
    assert "message_end" not in names
    error = events[-1][1]
    assert error["type"] == "turn_stopped_on_request"
    assert "stopped on request" in error["message"]
    assert "retry_after" not in error
    # The model call was called off, long before its 200 deltas.
    sent = wait_for_cut(fake_upstream)
    assert len(sent) == 1
    assert sent[0] < 100
    # Kept as interrupted, with exactly the text that went out, and charged (an estimate:
    # the provider's usage of a stream cut short never came).
    turns = other.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert [t["state"] for t in turns] == ["complete", "interrupted"]
    stopped_turn = turns[1]
    assert stopped_turn["id"] == turn_id
    said = "".join(data["text"] for name, data in events if name == "delta")
    assert said
    assert reply_text(stopped_turn) == said
    assert stopped_turn["error"] == "the reply was stopped on request"
    assert stopped_turn["usage"]["output_tokens"] > 0
    assert stopped_turn["usage"]["estimated"] is True
    # The session takes the next send at once, and the model never sees the stopped turn.
    fake_upstream.clear()
    after = other.post(f"/v1/sessions/{sid}/messages", json={"content": "and now?"})
    assert after.status_code == 200, after.text
    assert after.json()["state"] == "complete"
    sent_messages = fake_upstream.requests[-1].body["messages"]
    assert [m["role"] for m in sent_messages] == ["user", "assistant", "user"]
    assert "hello" in str(sent_messages[0])
    assert "long story" not in str(sent_messages)
    # Nothing is in flight any more.
    again = other.post(f"/v1/sessions/{sid}/stop")
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "nothing_to_stop"


def test_a_send_waiting_for_json_gets_the_stop_as_its_answer(
    client: httpx.Client, other: httpx.Client, sid: str
) -> None:

    answers: list[httpx.Response] = []
    sending = threading.Thread(
        target=lambda: answers.append(
            client.post(f"/v1/sessions/{sid}/messages", json={"content": SLOW})
        )
    )
    sending.start()
    try:
        stopped = wait_for_a_turn_to_stop(other, sid)
    finally:
        sending.join(timeout=30)
    assert stopped.json()["state"] == "interrupted"
    assert answers[0].status_code == 409
    assert answers[0].json()["error"]["type"] == "turn_stopped_on_request"
    turns = other.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert [t["state"] for t in turns] == ["interrupted"]


def wait_for_a_turn_to_stop(client: httpx.Client, sid: str) -> httpx.Response:
    """Ask to stop the session's turn until one is in flight to stop; return the answer."""
    for _ in range(200):
        answer = client.post(f"/v1/sessions/{sid}/stop")
        if answer.status_code == 200:
            return answer
        assert answer.status_code in (404, 409), answer.text
        time.sleep(0.02)
    raise AssertionError("no turn was ever in flight")


def test_nothing_to_stop_is_409_and_a_missing_session_404(client: httpx.Client, sid: str) -> None:
    missing = client.post(f"/v1/sessions/{sid}/stop")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    assert client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).is_success
    idle = client.post(f"/v1/sessions/{sid}/stop")
    assert idle.status_code == 409
    assert idle.json()["error"] == {
        "type": "nothing_to_stop",
        "message": f"no turn is in flight on session {sid!r}",
    }
    assert client.post("/v1/sessions/bad%20id/stop").status_code == 422
    # The finished turn is as it was.
    turns = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert [t["state"] for t in turns] == ["complete"]


def test_another_users_session_is_404_and_its_turn_runs_on(
    make_server: Callable[..., Any], make_key: Callable[..., str], sid: str
) -> None:
    srv = make_server(auth="on")
    ann_key, bob_key = make_key(srv, "ann"), make_key(srv, "bob")
    with (
        httpx.Client(base_url=srv.url, headers={"x-api-key": ann_key}, timeout=30) as ann,
        httpx.Client(base_url=srv.url, headers={"x-api-key": bob_key}, timeout=30) as bob,
    ):
        body = {"content": "a story [fake: chunks=20 delay_ms=20]", "stream": True}
        with ann.stream("POST", f"/v1/sessions/{sid}/messages", json=body) as response:
            lines, seen = stream_until_text(response)
            refused = bob.post(f"/v1/sessions/{sid}/stop")
            nobody = bob.post("/v1/sessions/nobody-has-this/stop")
            rest = list(lines)
        assert refused.status_code == 404
        assert refused.json() == {"error": {"type": "not_found", "message": f"no session {sid!r}"}}
        assert nobody.status_code == 404
        names = [name for name, _ in events_of([*seen, *rest])]
        assert names[-1] == "message_end"
        assert "error" not in names
        turns = ann.get(f"/v1/sessions/{sid}/messages").json()["data"]
        assert [t["state"] for t in turns] == ["complete"]
        assert ann.post(f"/v1/sessions/{sid}/stop").status_code == 409


def test_a_turn_running_on_another_instance_stops_at_its_next_lease_renewal(
    make_server: Callable[..., Any], fake_upstream: FakeUpstream, tmp_path: Path, sid: str
) -> None:
    # Two instances on one database, as behind a load balancer; a short lease so that the one
    # running the turn renews (and so learns of the stop) every 0.2 s.
    shared = {"database_url": f"sqlite:///{tmp_path / 'shared.db'}", "turn_lease_s": 0.6}
    first, second = make_server(**shared), make_server(**shared)
    with (
        httpx.Client(base_url=first.url, timeout=30) as runs,
        httpx.Client(base_url=second.url, timeout=30) as stops,
    ):
        assert runs.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"}).is_success
        body = {"content": SLOW, "stream": True}
        with runs.stream("POST", f"/v1/sessions/{sid}/messages", json=body) as response:
            lines, seen = stream_until_text(response)
            began = time.monotonic()
            stopped = stops.post(f"/v1/sessions/{sid}/stop")
            took = time.monotonic() - began
            rest = list(lines)
        events = events_of([*seen, *rest])
        turn_id = events[0][1]["turn_id"]
        # Answered once the instance running it stopped it and stored its end.
        assert stopped.status_code == 200, stopped.text
        assert stopped.json() == {"session_id": sid, "turn_id": turn_id, "state": "interrupted"}
        assert took < 2
        names = [name for name, _ in events]
        assert names[-1] == "error"
        assert names.count("error") == 1
        assert "message_end" not in names
        assert events[-1][1]["type"] == "turn_stopped_on_request"
        assert wait_for_cut(fake_upstream)[0] < 150
        # Stored by the instance that ran it: interrupted, with what it said, charged.
        turns = stops.get(f"/v1/sessions/{sid}/messages").json()["data"]
        assert [t["state"] for t in turns] == ["complete", "interrupted"]
        said = "".join(data["text"] for name, data in events if name == "delta")
        assert said
        assert reply_text(turns[1]) == said
        assert turns[1]["usage"]["output_tokens"] > 0
        # Either instance takes the next send at once.
        after = stops.post(f"/v1/sessions/{sid}/messages", json={"content": "and now?"})
        assert after.status_code == 200, after.text
        assert "long story" not in str(fake_upstream.requests[-1].body["messages"])
