"""GET /v1/usage and costs on the wire: what the fake upstream charged, whoever asks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from chatd.prices import MICRO, Price
from chatd.store import open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import Usage, UsageLine, UsageQuery

COMPLETIONS = "/v1/chat/completions"
MODEL = "anthropic/test-model"
# Whole micro-dollars per token, so a sum of calls' costs equals the cost of their sum.
RATES = {"input": 3.0, "output": 15.0, "cache_read": 1.0, "cache_write": 4.0}
PRICE = Price(**RATES)
PRICES = {"test-model": RATES}
TOTALS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def charged(fake: FakeUpstream) -> Usage:
    """Return the usage the fake reported over every model call it served."""
    total = Usage()
    for request in fake.requests:
        used = request.usage
        if used:
            total = total + Usage(
                used["input_tokens"],
                used["output_tokens"],
                used.get("cache_read", 0),
                used.get("cache_write", 0),
            )
    return total


def tokens(body: dict[str, Any]) -> Usage:
    """Return the token totals of a usage body."""
    return Usage(*(body[k] for k in TOTALS))


def completion(text: str, **extra: Any) -> dict[str, Any]:
    """Return an OpenAI-style request body."""
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def priced(make_server: Any) -> Iterator[httpx.Client]:
    """Yield a client of a server (auth off) with prices for the fake's model."""
    server = make_server(prices=PRICES)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_totals_and_cost_equal_what_the_upstream_charged_completions_included(
    make_server: Any, fake_upstream: FakeUpstream
) -> None:
    server = make_server(prices=PRICES)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        sent = c.post("/v1/sessions/a/messages", json={"content": "hi [fake: usage_in=1000]"})
        assert sent.status_code == 200
        with c.stream(
            "POST", "/v1/sessions/a/messages", json={"content": "more", "stream": True}
        ) as r:
            r.read()
        assert c.post("/chat", json={"message": "compat", "session_id": "b"}).status_code == 200
        failed = c.post("/v1/sessions/a/messages", json={"content": "x [fake: status=429]"})
        assert failed.status_code == 429
        # The official SDK against chatd, stateless: plain and streamed (with and without the
        # usage chunk).
        with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk:
            sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "one [fake: usage_out=77]"}]
            )
            for include in (True, False):
                stream = sdk.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"streamed {include}"}],
                    stream=True,
                    stream_options={"include_usage": include},
                )
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        report = c.get("/v1/usage").json()
    upstream = charged(fake_upstream)
    assert upstream.input_tokens > 1000
    assert tokens(report) == Usage(*(getattr(upstream, k) for k in TOTALS))
    assert (report["turns"], report["completions"], report["unpriced"]) == (4, 3, 0)
    assert report["estimated"] is False
    assert report["cost_usd"] == PRICE.micro_usd(upstream) / MICRO
    assert report["by"] == "day"
    assert report["user"] == "local"
    (day,) = report["data"]
    assert day["key"] == datetime.now(UTC).date().isoformat()
    assert {k: day[k] for k in (*TOTALS, "cost_usd")} == {
        k: report[k] for k in (*TOTALS, "cost_usd")
    }


def test_each_turn_and_session_shows_its_cost(priced: httpx.Client) -> None:
    one = priced.post("/v1/sessions/s/messages", json={"content": "a [fake: usage_in=100]"})
    two = priced.post("/v1/sessions/s/messages", json={"content": "b [fake: usage_out=10]"})
    costs = [r.json()["cost_usd"] for r in (one, two)]
    assert all(isinstance(c, float) and c > 0 for c in costs)
    listed = priced.get("/v1/sessions/s/messages").json()["data"]
    assert [t["cost_usd"] for t in listed] == costs
    for turn in listed:
        assert turn["cost_usd"] == PRICE.micro_usd(tokens(turn["usage"])) / MICRO
    session = priced.get("/v1/sessions/s").json()
    assert session["cost_usd"] == pytest.approx(sum(costs), abs=1e-9)
    (paged,) = priced.get("/v1/sessions").json()["data"]
    assert paged["cost_usd"] == session["cost_usd"]
    assert priced.post("/v1/sessions", json={"id": "empty"}).json()["cost_usd"] == 0.0


def test_deleted_and_reset_sessions_stay_counted(priced: httpx.Client) -> None:
    for session in ("gone", "emptied", "compat-gone", "kept"):
        assert priced.post(f"/v1/sessions/{session}/messages", json={"content": "hi"}).is_success
    before = priced.get("/v1/usage").json()
    assert priced.delete("/v1/sessions/gone").status_code == 204
    assert priced.post("/v1/sessions/emptied/reset").json()["previous_turns"] == 1
    assert priced.delete("/history/compat-gone").json()["status"] == "cleared"
    after = priced.get("/v1/usage").json()
    assert {k: v for k, v in after.items() if k != "data"} == {
        k: v for k, v in before.items() if k != "data"
    }
    by_session = priced.get("/v1/usage", params={"by": "session"}).json()["data"]
    assert sorted(g["key"] for g in by_session) == ["compat-gone", "emptied", "gone", "kept"]
    assert all(g["turns"] == 1 and g["cost_usd"] > 0 for g in by_session)


def test_ranges_and_groups(priced: httpx.Client) -> None:
    priced.post("/v1/sessions/s/messages", json={"content": "hi"})
    priced.post(COMPLETIONS, json=completion("hello"))
    today = datetime.now(UTC).date()
    tomorrow = (today + timedelta(days=1)).isoformat()
    everything = priced.get("/v1/usage").json()
    assert (everything["turns"], everything["completions"]) == (1, 1)
    assert priced.get("/v1/usage", params={"since": tomorrow}).json()["data"] == []
    # An end date is included whole; an end datetime is where it says.
    upto = priced.get("/v1/usage", params={"until": today.isoformat()}).json()
    assert upto["turns"] == 1
    assert upto["until"].startswith(tomorrow)
    past = priced.get("/v1/usage", params={"until": f"{today}T00:00:00+00:00"}).json()
    assert past["turns"] == 0
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert priced.get("/v1/usage", params={"since": hour_ago}).json()["completions"] == 1
    models = priced.get("/v1/usage", params={"by": "model"}).json()["data"]
    assert [(m["key"], m["turns"], m["completions"]) for m in models] == [
        ("anthropic/test-model", 1, 1)
    ]
    sessions = priced.get("/v1/usage", params={"by": "session"}).json()["data"]
    assert sorted((s["key"] or "", s["turns"]) for s in sessions) == [("", 0), ("s", 1)]
    users = priced.get("/v1/usage", params={"by": "user"}).json()
    assert users["user"] is None
    assert [u["key"] for u in users["data"]] == ["local"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"since": "yesterday"}, "since must be an ISO date"),
        ({"until": "2026-13-01"}, "until must be an ISO date"),
        ({"since": "2026-12-02", "until": "2026-12-01"}, "must be after since"),
        ({"since": "9999-12-31T23:59:59", "until": "9999-12-31"}, "until must be"),
        ({"by": "week"}, "by"),
        ({"since": ""}, "since"),
    ],
)
def test_a_bad_range_or_grouping_is_a_clear_422(
    priced: httpx.Client, params: dict[str, str], says: str
) -> None:
    refused = priced.get("/v1/usage", params=params)
    assert refused.status_code == 422
    assert says in refused.json()["error"]["message"]


def test_admins_see_anyones_usage_others_only_their_own(make_server: Any, make_key: Any) -> None:
    server = make_server(auth="on", prices=PRICES)
    keys = {
        "ann": make_key(server, "ann"),
        "bob": make_key(server, "bob"),
        "boss": make_key(server, "boss", admin=True),
    }

    def client(user: str) -> httpx.Client:
        return httpx.Client(base_url=server.url, headers={"x-api-key": keys[user]}, timeout=30)

    with client("ann") as ann, client("bob") as bob, client("boss") as boss:
        ann.post("/v1/sessions/s/messages", json={"content": "ann's [fake: usage_in=500]"})
        ann.post(COMPLETIONS, json=completion("ann's call"))
        bob.post("/v1/sessions/s/messages", json={"content": "bob's"})
        mine = ann.get("/v1/usage").json()
        assert (mine["user"], mine["turns"], mine["completions"]) == ("ann", 1, 1)
        assert ann.get("/v1/usage", params={"user": "ann"}).json() == mine
        # Another user's, anyone's, everyone's: the same refusal, whoever exists.
        for params in ({"user": "ann"}, {"user": "nobody"}, {"by": "user"}):
            refused = bob.get("/v1/usage", params=params)
            assert refused.status_code == 403
            assert refused.json()["error"]["type"] == "forbidden"
            assert "ann" not in refused.text
        assert boss.get("/v1/usage", params={"user": "ann"}).json() == mine
        assert boss.get("/v1/usage").json()["turns"] == 0
        everyone = boss.get("/v1/usage", params={"by": "user"}).json()
        assert everyone["user"] is None
        per_user = {u["key"]: u for u in everyone["data"]}
        assert set(per_user) == {"ann", "bob"}
        assert per_user["ann"]["cost_usd"] == mine["cost_usd"]
        # The costliest first.
        assert everyone["data"][0]["key"] == "ann"
        assert everyone["cost_usd"] == pytest.approx(
            per_user["ann"]["cost_usd"] + per_user["bob"]["cost_usd"], abs=1e-9
        )


def test_the_local_user_of_a_server_without_auth_may_see_every_user(
    priced: httpx.Client,
) -> None:
    assert priced.get("/v1/usage", params={"user": "someone"}).json()["turns"] == 0
    assert priced.get("/v1/usage", params={"by": "user"}).status_code == 200


def test_an_abandoned_stateless_stream_is_recorded_with_an_estimate(
    priced: httpx.Client,
) -> None:
    body = completion("x [fake: chunks=20 delay_ms=30 words=1000]", stream=True)
    with priced.stream("POST", COMPLETIONS, json=body) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break
    deadline = time.monotonic() + 10
    while (report := priced.get("/v1/usage").json())["completions"] == 0:
        assert time.monotonic() < deadline, "the abandoned call was never recorded"
        time.sleep(0.05)
    assert report["estimated"] is True
    assert 0 < report["output_tokens"] < 1000
    assert report["cost_usd"] > 0


def test_completions_answered_just_before_shutdown_are_recorded(
    start_server: Any, tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    db = tmp_path / "shutdown.db"
    with start_server(db, prices=PRICES) as server, httpx.Client(base_url=server.url) as c:
        for n in range(20):
            assert c.post(COMPLETIONS, json=completion(f"call {n}")).status_code == 200
    # The server is gone: what it recorded is in its database.

    async def read() -> list[UsageLine]:
        store = await open_store(f"sqlite:///{db}")
        try:
            since = datetime.now(UTC) - timedelta(days=1)
            return list(await store.usage_report(UsageQuery(since, None, "local", "day")))
        finally:
            await store.close()

    (line,) = asyncio.run(read())
    assert line.completions == 20
    assert line.usage == charged(fake_upstream)
    assert line.cost_micro_usd == PRICE.micro_usd(charged(fake_upstream))
