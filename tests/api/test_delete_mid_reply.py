"""Promise 1 over HTTP: a refused /chat changes nothing; deleting or resetting a session while
its reply streams ends the stream with one clear error event and calls the model call off."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from chatd.testing.fake_upstream import FakeUpstream

SLOW = "tell me a long story [fake: chunks=200 delay_ms=20]"  # about 4 s of reply
ENDS = {
    "DELETE /history": ("DELETE", "/history/{}", "deleted"),
    "DELETE /v1/sessions": ("DELETE", "/v1/sessions/{}", "deleted"),
    "POST /reset": ("POST", "/reset/{}", "reset"),
    "POST /v1/sessions/reset": ("POST", "/v1/sessions/{}/reset", "reset"),
}


def prompt_of(client: httpx.Client, sid: str) -> str | None:
    """Return the session's stored system prompt."""
    prompt: str | None = client.get(f"/v1/sessions/{sid}").json()["system_prompt"]
    return prompt


def test_chat_refused_as_busy_leaves_the_system_prompt_as_it_was(
    client: httpx.Client, sid: str
) -> None:
    client.post("/chat", json={"message": "hi", "session_id": sid, "system_prompt": "Be brief."})
    with client.stream("POST", f"/chat/{sid}", json={"message": SLOW}) as streaming:
        next(streaming.iter_lines())
        with httpx.Client(base_url=str(client.base_url), timeout=30) as other:
            busy = other.post(
                "/chat", json={"message": "hi", "session_id": sid, "system_prompt": "Be loud."}
            )
            assert busy.status_code == 409
            assert prompt_of(other, sid) == "Be brief."
            empty = other.post(
                "/chat", json={"message": " ", "session_id": sid, "system_prompt": "Be loud."}
            )
            assert empty.status_code == 422
            assert prompt_of(other, sid) == "Be brief."
    # Accepted, the prompt changes with the turn.
    for _ in range(100):
        done = client.post(
            "/chat", json={"message": "hi", "session_id": sid, "system_prompt": "Be loud."}
        )
        if done.status_code != 409:
            break
        time.sleep(0.1)
    assert done.status_code == 200
    assert prompt_of(client, sid) == "Be loud."


@pytest.fixture
def other(client: httpx.Client) -> Iterator[httpx.Client]:
    """Yield a second client of the same server, for requests made while a stream is open."""
    with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
        yield c


def wait_for_cut(fake: FakeUpstream) -> list[int]:
    """Return the deltas sent by each upstream stream its client left, once the fake noticed."""
    for _ in range(100):
        if fake.cut_short:
            break
        time.sleep(0.02)
    return [sent for _, sent in fake.cut_short]


@pytest.mark.parametrize("end", list(ENDS))
def test_deleting_a_session_mid_reply_ends_its_sse_stream_with_one_clear_error(
    client: httpx.Client, other: httpx.Client, fake_upstream: FakeUpstream, sid: str, end: str
) -> None:
    method, path, how = ENDS[end]
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"})
    body = {"content": SLOW, "stream": True}
    with client.stream("POST", f"/v1/sessions/{sid}/messages", json=body) as response:
        lines = response.iter_lines()
        seen = [line for line, _ in zip(lines, range(6), strict=False)]
        assert any("event: delta" in line for line in seen)
        began = time.monotonic()
        assert other.request(method, path.format(sid)).status_code in (200, 204)
        rest = list(lines)
        took = time.monotonic() - began
    events = [line.removeprefix("event: ") for line in [*seen, *rest] if line.startswith("event:")]
    assert events[-1] == "error"
    assert "message_end" not in events
    assert events.count("error") == 1
    error = orjson.loads(next(line for line in reversed(rest) if line.startswith("data:"))[5:])
    assert error["type"] == "turn_discarded"
    assert f"session was {how} while the reply was streaming" in error["message"]
    assert took < 1.5
    sent = wait_for_cut(fake_upstream)
    assert len(sent) == 1
    assert sent[0] < 100
    # Nothing half-written remains, and a reset session takes the next send.
    after = other.post(f"/v1/sessions/{sid}/messages", json={"content": "again"})
    assert after.status_code == 200
    turns = other.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert [t["state"] for t in turns] == ["complete"]


@pytest.mark.parametrize("end", ["DELETE /history", "POST /reset"])
def test_deleting_a_session_mid_reply_ends_its_ndjson_stream_with_one_error_line(
    client: httpx.Client, other: httpx.Client, fake_upstream: FakeUpstream, sid: str, end: str
) -> None:
    method, path, how = ENDS[end]
    with client.stream("POST", f"/chat/{sid}", json={"message": SLOW}) as response:
        lines = response.iter_lines()
        first = orjson.loads(next(lines))
        assert "delta" in first
        began = time.monotonic()
        assert other.request(method, path.format(sid)).json()["status"] in ("cleared", "reset")
        rest = [orjson.loads(line) for line in lines]
        took = time.monotonic() - began
    assert [line for line in rest if "error" in line] == [rest[-1]]
    assert f"session was {how} while the reply was streaming" in rest[-1]["error"]
    assert took < 1.5
    assert wait_for_cut(fake_upstream)[0] < 100
