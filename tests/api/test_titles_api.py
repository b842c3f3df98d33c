"""Session titles over /v1: set at create and PATCH, cleared, checked, taken from the first
message when the user gave none, and carried by export and import."""

from __future__ import annotations

import httpx
import pytest


def session(client: httpx.Client, sid: str) -> dict[str, object]:
    """Return the session's body."""
    response = client.get(f"/v1/sessions/{sid}")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


def test_a_title_is_set_at_create_renamed_and_cleared(client: httpx.Client, sid: str) -> None:
    created = client.post("/v1/sessions", json={"id": sid, "title": "  Trip to Lisbon "})
    assert created.status_code == 201
    assert created.json()["title"] == "Trip to Lisbon"
    assert session(client, sid)["title"] == "Trip to Lisbon"
    # PATCH without a title leaves it; with one renames; "" clears.
    kept = client.patch(f"/v1/sessions/{sid}", json={"temperature": 0.3}).json()
    assert (kept["title"], kept["temperature"]) == ("Trip to Lisbon", 0.3)
    renamed = client.patch(f"/v1/sessions/{sid}", json={"title": "Lisbon, day 2"})
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Lisbon, day 2"
    cleared = client.patch(f"/v1/sessions/{sid}", json={"title": ""}).json()
    assert cleared["title"] is None
    assert session(client, sid)["title"] is None
    untitled = client.post("/v1/sessions", json={"id": sid + "-b"}).json()
    assert untitled["title"] is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("x" * 201, "at most 200 characters"),
        ("two\nlines", "control characters"),
        ("bell\x07", "control characters"),
        ("\x1b]0;owned\x07", "control characters"),
        ("c1\x9b", "control characters"),
        (5, "valid string"),
    ],
)
def test_a_bad_title_is_a_422_and_changes_nothing(
    client: httpx.Client, sid: str, value: object, says: str
) -> None:
    client.post("/v1/sessions", json={"id": sid, "title": "Kept"})
    for response in (
        client.patch(f"/v1/sessions/{sid}", json={"title": value}),
        client.post("/v1/sessions", json={"id": sid + "-new", "title": value}),
    ):
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["type"] == "invalid_request"
        assert "title" in error["message"]
        assert says in error["message"]
    assert session(client, sid)["title"] == "Kept"
    assert client.get(f"/v1/sessions/{sid}-new").status_code == 404


def test_a_title_of_200_characters_after_trimming_is_kept(client: httpx.Client, sid: str) -> None:
    longest = "é" * 200
    created = client.post("/v1/sessions", json={"id": sid, "title": f"\t {longest} \n"})
    assert created.status_code == 201
    assert created.json()["title"] == longest


def test_the_first_message_names_an_untitled_session(client: httpx.Client, sid: str) -> None:
    first = "  How do I   boil an egg?  \nI like them soft."
    client.post(f"/v1/sessions/{sid}/messages", json={"content": first})
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "And hard ones?"})
    assert session(client, sid)["title"] == "How do I boil an egg?"
    # Long first lines are cut to 80 characters, the last an ellipsis.
    long_sid = sid + "-long"
    client.post(f"/v1/sessions/{long_sid}/messages", json={"content": "word " * 100})
    made = session(client, long_sid)["title"]
    assert isinstance(made, str)
    assert len(made) == 80
    assert made.endswith("word…")
    # The list shows them too: the two most recently active of the shared server's sessions.
    page = client.get("/v1/sessions", params={"order": "recent", "limit": 2}).json()["data"]
    listed = {s["id"]: s["title"] for s in page}
    assert listed[sid] == "How do I boil an egg?"
    assert listed[long_sid] == made


def test_a_users_title_is_never_overwritten(client: httpx.Client, sid: str) -> None:
    client.post("/v1/sessions", json={"id": sid, "title": "Eggs"})
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "How do I boil an egg?"})
    assert session(client, sid)["title"] == "Eggs"
    client.patch(f"/v1/sessions/{sid}", json={"title": "Eggs, soft"})
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "And hard ones?"})
    assert session(client, sid)["title"] == "Eggs, soft"


def test_export_and_import_carry_the_title(client: httpx.Client, sid: str) -> None:
    client.post("/v1/sessions", json={"id": sid, "title": "Keep me"})
    client.post(f"/v1/sessions/{sid}/messages", json={"content": "one"})
    document = client.get(f"/v1/sessions/{sid}/export").json()
    assert document["title"] == "Keep me"
    copied = client.post("/v1/sessions/import", json={**document, "session_id": sid + "-copy"})
    assert copied.status_code == 201
    assert copied.json()["title"] == "Keep me"
    assert session(client, sid + "-copy")["title"] == "Keep me"
    # Documents from before titles have none, and are imported as they are.
    older = {k: v for k, v in document.items() if k != "title"}
    bare = client.post("/v1/sessions/import", json={**older, "session_id": sid + "-old"})
    assert bare.status_code == 201
    assert bare.json()["title"] is None
    for bad in ("no\ncontrols", "x" * 201):
        refused = client.post(
            "/v1/sessions/import", json={**document, "session_id": sid + "-bad", "title": bad}
        )
        assert refused.status_code == 422
        assert "title" in refused.json()["error"]["message"]
    assert client.get(f"/v1/sessions/{sid}-bad").status_code == 404
