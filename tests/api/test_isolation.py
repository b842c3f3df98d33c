"""BOLA matrix: bob aims every id-bearing route at ann's session ids.

Whatever bob reads, deletes, resets or exports of ann's ids answers exactly as for an id that
exists for nobody (carol, who has nothing, asks the same: same status, same bytes); whatever
he writes lands in his own sessions of the same name; ann's data is unchanged afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chatd.testing.fake_upstream import FakeUpstream

SIDS = ("shared-compat", "shared-v1", "shared-openai")
SECRET = "ann-secret"
COMPLETIONS = "/v1/chat/completions"

# Every route that takes a session id and must not find another user's.
NOT_FOUND_MATRIX = [
    ("GET", "/history/{sid}", None),
    ("DELETE", "/history/{sid}", None),
    ("POST", "/reset/{sid}", None),
    ("GET", "/v1/sessions/{sid}", None),
    ("PATCH", "/v1/sessions/{sid}", {"temperature": 0.1, "system_prompt": "bob rules"}),
    ("GET", "/v1/sessions/{sid}/messages", None),
    ("GET", "/v1/sessions/{sid}/export", None),
    ("POST", "/v1/sessions/{sid}/continue", None),
    ("POST", "/v1/sessions/{sid}/regenerate", None),
    ("POST", "/v1/sessions/{sid}/stop", None),
    ("POST", "/v1/sessions/{sid}/reset", None),
    ("DELETE", "/v1/sessions/{sid}", None),
]


@pytest.fixture(scope="module")
def world(
    start_server: Any, make_key: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, httpx.Client]]:
    """Start a server with auth on, and give ann, bob and carol a key each."""
    db = tmp_path_factory.mktemp("bola") / "chatd.db"
    with start_server(db, auth="on") as srv:
        keys = {name: make_key(srv, name) for name in ("ann", "bob", "carol")}
        clients = {
            name: httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=30)
            for name, key in keys.items()
        }
        yield clients
        for c in clients.values():
            c.close()


@pytest.fixture(scope="module")
def ann_data(world: dict[str, httpx.Client]) -> dict[str, Any]:
    """Give ann a session on each route family, then snapshot everything she can see."""
    ann = world["ann"]
    chat = {"message": f"{SECRET} compat", "session_id": SIDS[0], "system_prompt": "ann's"}
    assert ann.post("/chat", json=chat).status_code == 200
    assert ann.post("/v1/sessions", json={"id": SIDS[1], "system_prompt": "ann"}).status_code == 201
    sent = ann.post(
        f"/v1/sessions/{SIDS[1]}/messages",
        json={"content": f"{SECRET} v1"},
        headers={"Idempotency-Key": "idem-1"},
    )
    assert sent.status_code == 200
    completion = {"model": "test-model", "messages": [{"role": "user", "content": SECRET}]}
    done = ann.post(COMPLETIONS, json=completion, headers={"X-Chatd-Session": SIDS[2]})
    assert done.status_code == 200
    return snapshot(ann) | {"turn_id": sent.json()["turn_id"]}


def snapshot(client: httpx.Client) -> dict[str, Any]:
    """Return everything a user can read about their sessions."""
    exports = {sid: client.get(f"/v1/sessions/{sid}/export").json() for sid in SIDS}
    return {
        "exports": exports,
        "sessions": client.get("/sessions").json(),
        "v1_sessions": client.get("/v1/sessions").json(),
        "usage": client.get("/v1/usage").json(),
        "stats": client.get("/stats").json(),
        "history": {sid: client.get(f"/history/{sid}").json() for sid in SIDS},
    }


@pytest.mark.parametrize(("method", "path", "body"), NOT_FOUND_MATRIX)
@pytest.mark.parametrize("sid", SIDS)
def test_another_users_id_is_indistinguishable_from_a_missing_one(
    world: dict[str, httpx.Client],
    ann_data: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    sid: str,
) -> None:
    url = path.format(sid=sid)
    bob = world["bob"].request(method, url, json=body)
    nobody = world["carol"].request(method, url, json=body)
    assert (bob.status_code, bob.content) == (nobody.status_code, nobody.content)
    assert bob.status_code in (200, 404)
    assert SECRET not in bob.text
    # Nothing of ann's moved.
    assert snapshot(world["ann"])["exports"] == ann_data["exports"]


def test_lists_usage_and_stats_show_only_the_callers(
    world: dict[str, httpx.Client], ann_data: dict[str, Any]
) -> None:
    bob = world["bob"]
    assert bob.get("/sessions").json() == {"sessions": []}
    assert bob.get("/v1/sessions").json()["data"] == []
    assert bob.get("/v1/usage").json()["turns"] == 0
    assert bob.get("/stats").json()["total_sessions"] == 0
    assert ann_data["stats"]["total_sessions"] == 3


def test_writes_to_anns_ids_land_in_bobs_own_sessions(
    world: dict[str, httpx.Client], ann_data: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    bob, ann = world["bob"], world["ann"]
    # Import a document of bob's own that names ann's id (bob has none of that name yet).
    doc = {**ann_data["exports"][SIDS[2]], "turns": [], "system_prompt": None}
    assert bob.post("/v1/sessions/import", json=doc).status_code == 201
    assert bob.post("/v1/sessions", json={"id": SIDS[1]}).status_code == 201
    # The same idempotency key on the same session id is bob's own: a new turn, no conflict.
    sent = bob.post(
        f"/v1/sessions/{SIDS[1]}/messages",
        json={"content": "bob one"},
        headers={"Idempotency-Key": "idem-1"},
    )
    assert sent.status_code == 200
    assert sent.json()["turn_id"] != ann_data["turn_id"]
    chat = bob.post("/chat", json={"message": "bob two", "session_id": SIDS[0]}).json()
    assert chat["turn_count"] == 1
    with bob.stream("POST", f"/chat/{SIDS[0]}", json={"message": "bob three"}) as r:
        assert r.status_code == 200
        r.read()
    assert bob.post("/chat-stream", json={"message": "bob 4", "session_id": SIDS[0]}).is_success
    completion = {"model": "test-model", "messages": [{"role": "user", "content": "bob five"}]}
    done = bob.post(COMPLETIONS, json=completion, headers={"X-Chatd-Session": SIDS[2]})
    assert done.status_code == 200
    # The model never saw a word of ann's conversations on bob's behalf.
    for request in fake_upstream.requests:
        assert SECRET not in str(request.body["messages"])
        assert request.body.get("system") != "ann's"
    assert snapshot(ann) == {k: v for k, v in ann_data.items() if k != "turn_id"}
    # Bob's sessions hold only bob's turns: the imported copy aside, one or three each.
    turns = {sid: bob.get(f"/v1/sessions/{sid}").json()["turn_count"] for sid in SIDS}
    assert turns[SIDS[0]] == 3
    assert turns[SIDS[1]] == 1
    # Ann's idempotency key still replays her own turn.
    again = ann.post(
        f"/v1/sessions/{SIDS[1]}/messages",
        json={"content": f"{SECRET} v1"},
        headers={"Idempotency-Key": "idem-1"},
    )
    assert again.json()["turn_id"] == ann_data["turn_id"]
    # And bob's deletes now reach his own sessions only.
    for sid in SIDS:
        assert bob.delete(f"/v1/sessions/{sid}").status_code == 204
    assert snapshot(ann) == {k: v for k, v in ann_data.items() if k != "turn_id"}
