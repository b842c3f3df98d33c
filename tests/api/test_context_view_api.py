"""/v1 shows what the model sees: the `context` event, the session's view, per-turn marks."""

from __future__ import annotations

import httpx
from httpx_sse import connect_sse


def send(client: httpx.Client, sid: str, content: str) -> list[tuple[str, str]]:
    """Send a message with stream on; return (event, data) pairs."""
    body = {"content": content, "stream": True}
    with connect_sse(client, "POST", f"/v1/sessions/{sid}/messages", json=body) as source:
        assert source.response.status_code == 200
        return [(e.event, e.data) for e in source.iter_sse()]


def test_a_moving_view_is_an_event_and_the_message_list_marks_what_the_model_sees(
    client: httpx.Client, sid: str
) -> None:
    created = client.post(
        "/v1/sessions", json={"id": sid, "context": {"policy": "window", "limit": 4}}
    )
    assert created.status_code == 201, created.text
    assert created.json()["view"] == {"first_turn": 0, "summary": None}
    kinds = [[kind for kind, _ in send(client, sid, f"question {n}")] for n in range(4)]
    # Turn 3 brings the fifth message into a 4-message window: the view moves, before the reply.
    assert ["context" in k for k in kinds] == [False, False, True, False]
    moved = kinds[2]
    assert moved.index("context") < moved.index("delta")
    session = client.get(f"/v1/sessions/{sid}").json()
    first = session["view"]["first_turn"]
    assert first == 3
    turns = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert [t["in_view"] for t in turns] == [t["seq"] >= first for t in turns]
    # Sizes as the provider counted, once a later call showed them.
    assert turns[1]["messages"][0]["tokens"] > 0
    assert turns[0]["messages"][1]["tokens"] > 0


def test_the_summary_policy_is_accepted_and_shown(client: httpx.Client, sid: str) -> None:
    body = {"id": sid, "context": {"policy": "summary", "limit": 2}}
    assert client.post("/v1/sessions", json=body).status_code == 201
    for n in range(3):
        send(client, sid, f"fact {n}")
    events = send(client, sid, "fact 3")
    context = [data for kind, data in events if kind == "context"]
    assert len(context) == 1
    assert '"summarized":true' in context[0].replace(" ", "")
    view = client.get(f"/v1/sessions/{sid}").json()["view"]
    assert view["summary"]
    assert view["first_turn"] > 1
    # The whole history is still listed.
    assert len(client.get(f"/v1/sessions/{sid}/messages").json()["data"]) == 4


def test_an_unknown_policy_is_refused(client: httpx.Client, sid: str) -> None:
    body = {"id": sid, "context": {"policy": "forget-everything"}}
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 422
    assert "policy" in response.text


def test_a_message_longer_than_the_models_window_is_413_and_leaves_the_context(
    client: httpx.Client, sid: str
) -> None:
    assert client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).status_code == 200
    # Nothing older to drop can make this message fit a 50-token window.
    words = " ".join(f"w{n}" for n in range(80))
    # A model of its own: the server remembers the window the refusal states, per model.
    body = {"content": f"{words} [fake: context_limit=50]", "model": "tiny-window-model"}
    response = client.post(f"/v1/sessions/{sid}/messages", json=body)
    assert response.status_code == 413, response.text
    assert "context window" in response.json()["error"]["message"]
    turns = client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert [t["state"] for t in turns] == ["complete", "failed"]
    assert [t["in_view"] for t in turns] == [True, False]
