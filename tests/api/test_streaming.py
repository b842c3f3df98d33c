"""Chunks go out as they come; a client that hangs up leaves the server healthy."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from httpx_sse import connect_sse

SLOW = "[fake: chunks=8 delay_ms=100]"


def settled(client: httpx.Client, sid: str, timeout_s: float = 15) -> list[str]:
    """Wait until no turn of the session is streaming; return the turns' states."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = [t["state"] for t in client.get(f"/v1/sessions/{sid}/messages").json()["data"]]
        if "streaming" not in states or time.monotonic() > deadline:
            return states
        time.sleep(0.05)


def test_chunks_arrive_as_the_model_sends_them(client: httpx.Client, sid: str) -> None:
    body = {"message": f"hello {SLOW}", "session_id": sid}
    arrivals = []
    started = time.monotonic()
    with client.stream("POST", "/chat-stream", json=body) as response:
        for _ in response.iter_raw():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 6  # one per model chunk, but a stalled reader may see two at once
    # Spread over the reply's ~0.8 s, not all at the end.
    assert arrivals[0] < 0.5
    assert arrivals[-1] - arrivals[0] > 0.4


@pytest.mark.parametrize("route", ["/chat-stream", "/chat/{sid}", "/v1/sessions/{sid}/messages"])
def test_client_hanging_up_after_the_first_chunk_leaves_the_server_healthy(
    client: httpx.Client, sid: str, route: str
) -> None:
    body: dict[str, object] = {"message": f"hi {SLOW}", "session_id": sid}
    if route.startswith("/v1/"):
        body = {"content": f"hi {SLOW}", "stream": True}
    elif "{sid}" in route:
        body = {"message": f"hi {SLOW}"}
    with (
        httpx.Client(base_url=client.base_url, timeout=10) as hasty,
        hasty.stream("POST", route.format(sid=sid), json=body) as response,
    ):
        assert response.status_code == 200
        next(response.iter_raw())
    # Gone: the server keeps serving others at once, and this session once the turn is done.
    assert client.get("/healthz").status_code == 200
    other = client.post("/chat", json={"message": "meanwhile", "session_id": sid + "-other"})
    assert other.status_code == 200
    # The turn went on without its client and was stored whole (CHATD_ON_DISCONNECT=finish).
    assert settled(client, sid) == ["complete"]
    history = client.get(f"/history/{sid}").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert 'You said: "hi"' in history[1]["content"]
    after = client.post("/chat", json={"message": "next", "session_id": sid})
    assert after.status_code == 200


def test_openai_stream_hang_up_leaves_the_server_healthy(client: httpx.Client) -> None:
    body = {
        "model": "test-model",
        "stream": True,
        "messages": [{"role": "user", "content": f"hi {SLOW}"}],
    }
    with (
        httpx.Client(base_url=client.base_url, timeout=10) as hasty,
        hasty.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        next(response.iter_raw())
    body["stream"] = False
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_a_second_send_while_one_is_in_flight_is_409(client: httpx.Client, sid: str) -> None:
    url = f"/v1/sessions/{sid}/messages"
    with connect_sse(client, "POST", url, json={"content": f"a {SLOW}", "stream": True}) as source:
        events = source.iter_sse()
        assert next(events).event == "message_start"
        busy = client.post(url, json={"content": "b"})
        assert busy.status_code == 409
        assert busy.json()["error"]["type"] == "session_busy"
        assert [e.event for e in events][-1] == "message_end"
    assert settled(client, sid) == ["complete"]


def test_many_streams_at_once_each_end_once(client: httpx.Client, sid: str) -> None:
    def one(i: int) -> list[str]:
        with httpx.Client(base_url=client.base_url, timeout=20) as c:
            body = {"content": "hi [fake: chunks=5 delay_ms=20]", "stream": True}
            with connect_sse(c, "POST", f"/v1/sessions/{sid}-{i}/messages", json=body) as s:
                return [e.event for e in s.iter_sse()]

    with ThreadPoolExecutor(16) as pool:
        runs = list(pool.map(one, range(32)))
    for kinds in runs:
        assert kinds[0] == "message_start"
        assert kinds.count("delta") == 5
        assert kinds[-1] == "message_end"
        assert kinds.count("message_end") + kinds.count("error") == 1
