"""Every route is held to what the operator allows: models, providers, tools (promise 6)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from chatd.testing.fake_upstream import FakeUpstream


@pytest.fixture(params=["anthropic", "openai"])
def kind(request: pytest.FixtureRequest) -> str:
    """Return which SDK the server's default provider speaks."""
    return str(request.param)


def name_of(kind: str) -> str:
    """Return the name of the default provider start() gives a server of this kind."""
    return "openai-compatible" if kind == "openai" else "anthropic"


def start(make_server: Any, fake: FakeUpstream, kind: str, **overrides: Any) -> str:
    """Start a chatd whose default provider speaks kind's wire; return its URL."""
    if kind == "openai":
        # The OpenAI SDK provider, at the fake upstream (the test env has no OpenAI key).
        overrides = {"provider": name_of(kind), "base_url": fake.url + "/v1", **overrides}
    return str(make_server(**overrides).url)


def imported(sid: str, provider: str | None, model: str | None) -> dict[str, Any]:
    """Return a minimal export document whose session stores this provider and model."""
    params = {} if model is None else {"model": model}
    return {"format": "chatd.session/1", "session_id": sid, "provider": provider, "params": params}


def refused(response: httpx.Response, *words: str) -> str:
    """Check a 400 in /v1's shape (or OpenAI's) whose message has words; return the message."""
    assert response.status_code == 400, response.text
    message = str(response.json()["error"]["message"])
    for word in words:
        assert word in message
    return message


def test_the_model_list_holds_for_provider_only_sends_sessions_imports_and_completions(
    make_server: Any, fake_upstream: FakeUpstream, kind: str, sid: str
) -> None:
    name = name_of(kind)
    url = start(make_server, fake_upstream, kind, models=[f"{name}/good-model", "demo/demo-model"])
    with httpx.Client(base_url=url, timeout=30) as c:
        # A session that names only a provider runs that provider's default model.
        assert c.post("/v1/sessions", json={"id": sid, "provider": "demo"}).status_code == 201
        send = c.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})
        refused(send, "'test-model'", "demo", "good-model", "demo/demo-model")
        only_provider = c.post(
            f"/v1/sessions/{sid}-2/messages", json={"content": "hi", "provider": name}
        )
        refused(only_provider, "'test-model'")
        # With the session header a bare model was checked against the default provider, but
        # the turn ran on the session's own.
        body = {"model": "good-model", "messages": [{"role": "user", "content": "hi"}]}
        completion = c.post("/v1/chat/completions", json=body, headers={"X-Chatd-Session": sid})
        refused(completion, "'good-model'", "demo")
        assert completion.json()["error"]["type"] == "invalid_request_error"
        doc = imported(f"{sid}-imp", name, "outside-model")
        assert c.post("/v1/sessions/import", json=doc).status_code == 201
        refused(c.post(f"/v1/sessions/{sid}-imp/messages", json={"content": "hi"}), "outside-model")
        assert c.get(f"/v1/sessions/{sid}/messages").json()["data"] == []
        assert c.get(f"/v1/sessions/{sid}-imp/messages").json()["data"] == []
        assert c.get(f"/v1/sessions/{sid}-2").status_code == 404
        assert fake_upstream.requests == []
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [
            f"{name}/good-model",
            "demo/demo-model",
        ]
        ok = c.post(f"/v1/sessions/{sid}-3/messages", json={"content": "hi", "model": "good-model"})
        assert ok.status_code == 200, ok.text
        assert fake_upstream.requests[-1].body["model"] == "good-model"


def test_a_provider_the_operator_did_not_configure_is_refused_on_every_route(
    make_server: Any, fake_upstream: FakeUpstream, kind: str, sid: str
) -> None:
    # CHATD_BASE_URL sends every preset to the fake, so a request to any would be recorded.
    name = name_of(kind)
    url = start(make_server, fake_upstream, kind, base_url=fake_upstream.url + "/v1")
    with httpx.Client(base_url=url, timeout=30) as c:
        for preset in ("ollama", "vllm", "llamacpp"):
            words = (f"'{preset}' is not configured", name)
            refused(c.post("/v1/sessions", json={"id": sid, "provider": preset}), *words)
            send = c.post(
                f"/v1/sessions/{sid}/messages", json={"content": "hi", "provider": preset}
            )
            refused(send, *words)
            prefixed = {"content": "hi", "model": f"{preset}/llama3.2"}
            refused(c.post(f"/v1/sessions/{sid}/messages", json=prefixed), *words)
            body = {"model": f"{preset}/llama3.2", "messages": [{"role": "user", "content": "hi"}]}
            refused(c.post("/v1/chat/completions", json=body), *words)
            doc = imported(f"{sid}-{preset}", preset, None)
            assert c.post("/v1/sessions/import", json=doc).status_code == 201
            stored = c.post(f"/v1/sessions/{sid}-{preset}/messages", json={"content": "hi"})
            refused(stored, *words)
            body["model"] = "llama3.2"
            headers = {"X-Chatd-Session": f"{sid}-{preset}"}
            refused(c.post("/v1/chat/completions", json=body, headers=headers), *words)
            assert c.get(f"/v1/sessions/{sid}-{preset}/messages").json()["data"] == []
        assert c.get(f"/v1/sessions/{sid}").status_code == 404
    assert fake_upstream.requests == []


def test_tools_outside_chatd_tools_are_refused_not_enabled(
    make_server: Any, client: httpx.Client, sid: str
) -> None:
    none_allowed = client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "hi", "tools": ["current_time"]}
    )
    refused(none_allowed, "current_time")
    assert client.get(f"/v1/sessions/{sid}").status_code == 404
    server = make_server(tools=["current_time"])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        refused(c.post("/v1/sessions", json={"id": sid, "tools": ["calculate"]}), "calculate")
        asked = {"content": "hi", "tools": ["calculate"]}
        refused(c.post(f"/v1/sessions/{sid}/messages", json=asked), "calculate")
        assert c.get(f"/v1/sessions/{sid}").status_code == 404
        assert c.post("/v1/sessions", json={"id": sid}).status_code == 201
        refused(c.patch(f"/v1/sessions/{sid}", json={"tools": ["calculate"]}), "calculate")
        doc = imported(f"{sid}-imp", None, None)
        doc["params"] = {"tools": ["calculate"]}
        assert c.post("/v1/sessions/import", json=doc).status_code == 201
        refused(c.post(f"/v1/sessions/{sid}-imp/messages", json={"content": "hi"}), "calculate")
        ok = c.post(
            f"/v1/sessions/{sid}/messages", json={"content": "hi", "tools": ["current_time"]}
        )
        assert ok.status_code == 200, ok.text
