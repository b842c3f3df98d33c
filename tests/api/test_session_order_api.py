"""GET /v1/sessions?order=: by creation (the default) or most recently active first, each
paged by a cursor of its own."""

from __future__ import annotations

from typing import Any

import httpx


def ids(client: httpx.Client, **params: Any) -> list[str]:
    """Return the ids of one page of the caller's sessions."""
    response = client.get("/v1/sessions", params=params)
    assert response.status_code == 200
    return [s["id"] for s in response.json()["data"]]


def walk(client: httpx.Client, limit: int, **params: Any) -> tuple[list[str], int]:
    """Return the ids of every page, followed by cursor, and how many pages there were."""
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        more = {"cursor": cursor} if cursor else {}
        response = client.get("/v1/sessions", params={"limit": limit, **params, **more})
        assert response.status_code == 200
        body = response.json()
        seen += [s["id"] for s in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages


def send(client: httpx.Client, sid: str) -> None:
    """Send one message to the session and check the turn completed."""
    response = client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"})
    assert response.status_code == 200
    assert response.json()["state"] == "complete"


def test_order_recent_lists_the_session_with_the_newest_turn_first(make_server: Any) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for sid in ("a", "b", "c"):
            assert c.post("/v1/sessions", json={"id": sid}).status_code == 201
        send(c, "a")
        assert ids(c, order="recent") == ["a", "c", "b"]
        page = c.get("/v1/sessions", params={"order": "recent"}).json()["data"]
        assert page[0]["updated_at"] > page[1]["updated_at"] > page[2]["updated_at"]
        assert c.patch("/v1/sessions/b", json={"title": "Renamed"}).status_code == 200
        assert ids(c, order="recent") == ["b", "a", "c"]
        # The default, and order=created, are as before: by creation, oldest first.
        assert ids(c) == ids(c, order="created") == ["a", "b", "c"]


def test_order_recent_pages_by_cursor_with_no_gap_or_repeat(make_server: Any) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(7):
            assert c.post("/v1/sessions", json={"id": f"s{i}"}).status_code == 201
        for sid in ("s3", "s0", "s5"):
            send(c, sid)
        whole = ids(c, order="recent", limit=200)
        assert whole == ["s5", "s0", "s3", "s6", "s4", "s2", "s1"]
        assert walk(c, 2, order="recent") == (whole, 4)
        assert walk(c, 3) == ([f"s{i}" for i in range(7)], 3)


def test_a_cursor_given_with_the_other_order_is_a_422(make_server: Any) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for sid in ("a", "b", "c"):
            c.post("/v1/sessions", json={"id": sid})
        created = c.get("/v1/sessions", params={"limit": 1}).json()["next_cursor"]
        recent = c.get("/v1/sessions", params={"limit": 1, "order": "recent"})
        recent_cursor = recent.json()["next_cursor"]
        for cursor, params, made, given in (
            (created, {"order": "recent"}, "created", "recent"),
            (recent_cursor, {}, "recent", "created"),
            (recent_cursor, {"order": "created"}, "recent", "created"),
        ):
            response = c.get("/v1/sessions", params={"limit": 1, "cursor": cursor, **params})
            assert response.status_code == 422
            error = response.json()["error"]
            assert error["type"] == "input_error"
            assert f"this cursor is for order={made}, not order={given}" in error["message"]
        # Each in its own order pages on.
        assert ids(c, limit=5, cursor=created) == ["b", "c"]
        assert ids(c, limit=5, cursor=recent_cursor, order="recent") == ["b", "a"]


def test_an_unknown_order_is_a_422(make_server: Any) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for order in ("newest", "", "RECENT", "updated"):
            response = c.get("/v1/sessions", params={"order": order})
            assert response.status_code == 422
            error = response.json()["error"]
            assert error["type"] == "invalid_request"
            assert "order" in error["message"]
            assert "'created' or 'recent'" in error["message"]


def test_order_is_documented_in_the_openapi_schema(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/sessions"]["get"]
    (order,) = [p for p in operation["parameters"] if p["name"] == "order"]
    assert order["in"] == "query"
    assert order["schema"]["enum"] == ["created", "recent"]
    assert order["schema"]["default"] == "created"
    assert "most recently active first" in order["description"]
    assert "order=recent" in operation["description"]
