"""Auth on: keys in headers only, 401 in each route family's shape, revocation at once,
admin routes for admin keys, /stats by role, and no key in any log line of the run."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from chatd.store import SqlKeyStore, open_store

ISSUED: list[str] = []  # every key this module made: none may show up in a log
LINES: list[str] = []
_TEST_THREAD = threading.get_ident()


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        # The tests' own HTTP client logs the URLs it asks for: that is the client's log.
        if record.name.startswith(("httpx", "httpcore")) and record.thread == _TEST_THREAD:
            return
        LINES.append(self.format(record))


@contextmanager
def capture_logs() -> Iterator[list[str]]:
    """Capture every log line, uvicorn's access log included, until the block ends."""
    handler = _Keep(logging.DEBUG)
    watched = [logging.getLogger(n) for n in ("", "uvicorn.access", "uvicorn.error")]
    levels = [lg.level for lg in watched]
    for lg in watched:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield LINES
    for lg, level in zip(watched, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture(scope="module")
def srv(start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Yield one chatd with auth on for the module, every log line of it captured."""
    db = tmp_path_factory.mktemp("auth") / "chatd.db"
    # uvicorn sets up its loggers when the server is built: capture from after that.
    with start_server(db, auth="on") as started, capture_logs():
        yield started


@pytest.fixture
def logs(srv: Any) -> list[str]:
    """Return the log lines captured so far."""
    return LINES


@pytest.fixture(scope="module")
def keys(srv: Any, make_key: Any) -> dict[str, str]:
    """Return keys of users ann and bob, and of an admin."""
    made = {
        "ann": make_key(srv, "ann"),
        "bob": make_key(srv, "bob"),
        "admin": make_key(srv, "root", admin=True),
    }
    ISSUED.extend(made.values())
    return made


def key_of(srv: Any, make_key: Any, user: str, **options: Any) -> str:
    """Make a key and remember it for the log check."""
    key = make_key(srv, user, **options)
    ISSUED.append(key)
    return key


def auth(key: str) -> dict[str, str]:
    """Return the Authorization header for a key."""
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def http(srv: Any) -> Iterator[httpx.Client]:
    """Yield a client of the module's server without any key."""
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def test_public_routes_need_no_key(http: httpx.Client) -> None:
    assert http.get("/").json()["status"] == "ok"
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "family"),
    [
        ("GET", "/sessions", "compat"),
        ("POST", "/chat", "compat"),
        ("GET", "/history/x", "compat"),
        ("GET", "/stats", "compat"),
        ("GET", "/metrics", "compat"),
        ("GET", "/docs", "compat"),
        ("GET", "/openapi.json", "compat"),
        ("GET", "/no-such-route", "compat"),
        ("GET", "/v1/sessions", "v1"),
        ("POST", "/v1/sessions/x/messages", "v1"),
        ("GET", "/v1/usage", "v1"),
        ("GET", "/v1/admin/keys", "v1"),
        ("POST", "/v1/chat/completions", "openai"),
        ("GET", "/v1/models", "openai"),
    ],
)
def test_every_other_route_needs_a_key(
    http: httpx.Client, method: str, path: str, family: str
) -> None:
    response = http.request(method, path, json={"message": "hi"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="chatd"'
    body = response.json()
    message = "this server needs an API key: send it as 'Authorization: Bearer <key>' or "
    if family == "compat":
        assert body["detail"].startswith(message)
    elif family == "v1":
        assert body["error"]["type"] == "unauthorized"
        assert body["error"]["message"].startswith(message)
    else:
        assert body["error"]["code"] == "unauthorized"
        assert body["error"]["type"] == "invalid_request_error"


def test_bearer_and_x_api_key_both_work(http: httpx.Client, keys: dict[str, str]) -> None:
    key = keys["ann"]
    assert http.get("/sessions", headers=auth(key)).status_code == 200
    assert http.get("/sessions", headers={"Authorization": f"bearer {key}"}).status_code == 200
    assert http.get("/sessions", headers={"x-api-key": key}).status_code == 200


def test_a_key_in_the_query_string_is_refused(http: httpx.Client, keys: dict[str, str]) -> None:
    for name in ("api_key", "key", "token", "access_token"):
        assert http.get(f"/sessions?{name}={keys['ann']}").status_code == 401


def test_bad_keys_are_refused_without_echo(http: httpx.Client, keys: dict[str, str]) -> None:
    almost = keys["ann"][:-1] + ("A" if keys["ann"][-1] != "A" else "B")
    for bad in ("nope", "chatd_short", almost, "Basic abc"):
        response = http.get("/v1/sessions", headers=auth(bad))
        assert response.status_code == 401
        assert bad not in response.text
        assert response.json()["error"]["message"] == "invalid API key"
    response = http.get("/v1/sessions", headers={"Authorization": f"Basic {keys['ann']}"})
    assert response.status_code == 401


def test_expired_key_is_refused(srv: Any, http: httpx.Client, make_key: Any) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    key = key_of(srv, make_key, "carl", expires_at=past)
    response = http.get("/sessions", headers=auth(key))
    assert (response.status_code, response.json()) == (401, {"detail": "this API key has expired"})
    fresh = key_of(srv, make_key, "carl", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert http.get("/sessions", headers=auth(fresh)).status_code == 200


def test_revocation_through_the_api_is_effective_on_the_next_request(
    srv: Any, http: httpx.Client, keys: dict[str, str], make_key: Any
) -> None:
    key = key_of(srv, make_key, "dora")
    assert http.get("/sessions", headers=auth(key)).status_code == 200
    listed = http.get("/v1/admin/keys?user=dora", headers=auth(keys["admin"])).json()["data"]
    revoked = http.delete(f"/v1/admin/keys/{listed[0]['id']}", headers=auth(keys["admin"]))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    response = http.get("/sessions", headers=auth(key))
    assert (response.status_code, response.json()) == (
        401,
        {"detail": "this API key has been revoked"},
    )


def test_revocation_elsewhere_is_effective_within_a_second(
    srv: Any, http: httpx.Client, make_key: Any
) -> None:
    key = key_of(srv, make_key, "eve")
    assert http.get("/sessions", headers=auth(key)).status_code == 200

    async def revoke() -> None:
        # As `chatd keys revoke` does from another process: straight to the database.
        store = await open_store(srv.settings.database_url)
        try:
            keys = SqlKeyStore(store.db)
            await keys.revoke_key((await keys.list_keys("eve"))[0].prefix)
        finally:
            await store.close()

    asyncio.run(revoke())
    revoked_at = time.monotonic()
    while http.get("/sessions", headers=auth(key)).status_code == 200:
        assert time.monotonic() - revoked_at < 1.5
        time.sleep(0.05)


def test_admin_routes_refuse_normal_keys(http: httpx.Client, keys: dict[str, str]) -> None:
    for method, path in (
        ("GET", "/v1/admin/keys"),
        ("POST", "/v1/admin/keys"),
        ("DELETE", "/v1/admin/keys/x"),
        ("GET", "/v1/admin/users"),
    ):
        response = http.request(method, path, headers=auth(keys["bob"]), json={"user": "x"})
        assert response.status_code == 403
        assert response.json()["error"]["type"] == "forbidden"


def test_admin_manages_keys_and_users(http: httpx.Client, keys: dict[str, str]) -> None:
    admin = auth(keys["admin"])
    created = http.post(
        "/v1/admin/keys",
        headers=admin,
        json={"user": "fred", "rpm": 5, "budget_usd_per_day": 2.5, "expires_in_days": 30},
    )
    assert created.status_code == 201
    body = created.json()
    ISSUED.append(body["key"])
    assert body["key"].startswith(body["prefix"])
    assert (body["user"], body["rpm"], body["budget_usd_per_day"]) == ("fred", 5, 2.5)
    assert http.get("/v1/sessions", headers=auth(body["key"])).status_code == 200
    listed = http.get("/v1/admin/keys", headers=admin)
    assert body["key"] not in listed.text
    fred = [k for k in listed.json()["data"] if k["user"] == "fred"]
    assert [k["prefix"] for k in fred] == [body["prefix"]]
    assert "key" not in fred[0]
    users = {u["user"]: u for u in http.get("/v1/admin/users", headers=admin).json()["data"]}
    assert users["fred"]["keys"] == users["fred"]["active_keys"] == 1
    gone = http.delete(f"/v1/admin/keys/{body['prefix']}", headers=admin)
    assert gone.status_code == 200
    assert http.get("/v1/sessions", headers=auth(body["key"])).status_code == 401
    assert http.delete("/v1/admin/keys/nothing", headers=admin).status_code == 404
    bad = http.post("/v1/admin/keys", headers=admin, json={"user": "has space"})
    assert bad.status_code == 422


def test_stats_show_an_admin_everything_and_a_user_their_own(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    http.post("/chat", headers=auth(keys["ann"]), json={"message": "hi", "session_id": "st1"})
    ann = http.get("/stats", headers=auth(keys["ann"])).json()
    bob = http.get("/stats", headers=auth(keys["bob"])).json()
    everyone = http.get("/stats", headers=auth(keys["admin"])).json()
    assert ann["total_sessions"] >= 1
    assert everyone["total_sessions"] >= ann["total_sessions"] + bob["total_sessions"]
    assert everyone["total_messages"] >= ann["total_messages"] + bob["total_messages"]


def test_last_use_is_recorded(http: httpx.Client, keys: dict[str, str], srv: Any) -> None:
    http.get("/sessions", headers=auth(keys["bob"]))
    deadline = time.monotonic() + 5
    while True:
        listed = http.get("/v1/admin/keys?user=bob", headers=auth(keys["admin"])).json()
        if listed["data"][0]["last_used_at"] is not None:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_openai_sdk_sends_its_key(srv: Any, keys: dict[str, str]) -> None:
    with openai.OpenAI(base_url=srv.url + "/v1", api_key=keys["ann"], max_retries=0) as sdk:
        assert sdk.models.list().data
    with (
        openai.OpenAI(base_url=srv.url + "/v1", api_key="chatd_wrong", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError),
    ):
        sdk.models.list()


def test_no_log_line_of_the_run_holds_a_key(
    http: httpx.Client, keys: dict[str, str], logs: list[str], tmp_path: Path
) -> None:
    # Even a key a client wrongly put in the URL stays out of the access log.
    http.get(f"/sessions?api_key={keys['ann']}")
    http.get("/v1/sessions", headers=auth(keys["bob"] + "x"))
    assert any("GET /sessions?api_key=chatd_[redacted]" in line for line in logs), logs[-5:]
    assert len(ISSUED) >= 8
    for key in ISSUED:
        assert not [line for line in logs if key in line or key[6:] in line]


def test_metrics_need_an_admin_key(http: httpx.Client, keys: dict[str, str]) -> None:
    refused = http.get("/metrics", headers=auth(keys["bob"]))
    assert refused.status_code == 403
    assert refused.json() == {
        "detail": "/metrics needs an admin key (create one with `chatd keys create --admin`)"
    }
    assert http.get("/metrics").status_code == 401
    allowed = http.get("/metrics", headers=auth(keys["admin"]))
    assert allowed.status_code == 200
    assert "chatd_http_requests_total" in allowed.text
