"""Rate limits and quotas over HTTP: bursts, 429s and their headers in every route family,
token and cost quotas charged from provider-reported usage (streamed replies too), the
max_tokens ceiling, and one limit shared by two servers through Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

COMPLETIONS = "/v1/chat/completions"
MODEL = "anthropic/test-model"


def completion(text: str, **extra: Any) -> dict[str, Any]:
    """Return an OpenAI-style request body."""
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """Return the Redis URL to share limits through, or None for process memory."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
def servers(start_server: Any, tmp_path: Path) -> Iterator[Any]:
    """Yield start(**settings): servers on one database, stopped after the test."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> Any:
            return stack.enter_context(start_server(tmp_path / "chatd.db", **overrides))

        yield start


async def burst(url: str, key: str, n: int) -> list[httpx.Response]:
    """Send n completions at once."""
    async with httpx.AsyncClient(base_url=url, headers={"x-api-key": key}, timeout=30) as c:
        return await asyncio.gather(*(c.post(COMPLETIONS, json=completion("hi")) for _ in range(n)))


def test_a_burst_of_50_admits_at_most_the_limit(
    servers: Any, make_key: Any, backend: str | None, fresh_minute: Any
) -> None:
    srv = servers(auth="on", redis_url=backend)
    key = make_key(srv, "ann", rpm=5)
    fresh_minute(10)
    responses = asyncio.run(burst(srv.url, key, 50))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 45
    admitted = [r for r in responses if r.status_code == 200]
    assert sorted(int(r.headers["ratelimit-remaining"]) for r in admitted) == [0, 1, 2, 3, 4]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["retry-after"] == refused.headers["ratelimit-reset"]
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_exceeded", "rate_limited")
    assert "5 requests per minute (requests_per_minute)" in error["message"]


def test_two_servers_on_one_redis_enforce_one_limit(
    servers: Any, make_key: Any, redis_url: str, fresh_minute: Any
) -> None:
    first, second = servers(auth="on", redis_url=redis_url), servers(auth="on", redis_url=redis_url)
    key = make_key(first, "ann", rpm=4)
    fresh_minute(10)
    codes = [
        httpx.get(f"{srv.url}/v1/sessions", headers={"x-api-key": key}).status_code
        for srv in (first, second) * 5
    ]
    assert codes == [200] * 4 + [429] * 6


def test_429_speaks_each_route_familys_shape(
    servers: Any, make_key: Any, fresh_minute: Any
) -> None:
    srv = servers(auth="on")
    key = make_key(srv, "a", rpm=1)
    fresh_minute(10)
    with httpx.Client(base_url=srv.url, headers={"x-api-key": key}) as c:
        ok = c.get("/sessions")
        assert ok.status_code == 200
        assert (ok.headers["ratelimit-limit"], ok.headers["ratelimit-remaining"]) == ("1", "0")
        assert 0 < int(ok.headers["ratelimit-reset"]) <= 60
        compat = c.get("/sessions")
        assert compat.status_code == 429
        assert "requests_per_minute" in compat.json()["detail"]
        assert "resets in" in compat.json()["detail"]
        v1 = c.get("/v1/sessions").json()["error"]
        assert v1["type"] == "rate_limited"
        assert "requests_per_minute" in v1["message"]
        assert c.get("/v1/models").json()["error"]["type"] == "rate_limit_exceeded"
        # Health checks are nobody's request: never limited.
        assert c.get("/healthz").status_code == 200


def _v1_stream(c: httpx.Client, text: str) -> httpx.Response:
    with c.stream("POST", "/v1/sessions/s1/messages", json={"content": text, "stream": True}) as r:
        r.read()
        assert "event: message_end" in r.text
    return r


def _compat_stream(c: httpx.Client, text: str) -> httpx.Response:
    with c.stream("POST", "/chat-stream", json={"message": text, "session_id": "s2"}) as r:
        r.read()
    return r


def _ndjson_stream(c: httpx.Client, text: str) -> httpx.Response:
    with c.stream("POST", "/chat/s3", json={"message": text}) as r:
        r.read()
    return r


def _openai_stream(c: httpx.Client, text: str) -> httpx.Response:
    body = completion(text, stream=True)
    with c.stream("POST", COMPLETIONS, json=body) as r:
        r.read()
        assert "[DONE]" in r.text
    return r


def _openai_session_stream(c: httpx.Client, text: str) -> httpx.Response:
    body = completion(text, stream=True)
    with c.stream("POST", COMPLETIONS, json=body, headers={"X-Chatd-Session": "s4"}) as r:
        r.read()
    return r


def _openai_plain(c: httpx.Client, text: str) -> httpx.Response:
    return c.post(COMPLETIONS, json=completion(text))


@pytest.mark.parametrize(
    "send",
    [
        _v1_stream,
        _compat_stream,
        _ndjson_stream,
        _openai_stream,
        _openai_session_stream,
        _openai_plain,
    ],
)
def test_token_quota_spends_what_the_provider_reported(
    servers: Any, make_key: Any, send: Any
) -> None:
    srv = servers(auth="on")
    key = make_key(srv, "ann", tokens_per_day=10_000)
    with httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=30) as c:
        seen = []
        for _ in range(3):
            r = send(c, "hi [fake: usage_in=1200 usage_out=34 cache_read=500]")
            assert r.status_code == 200
            seen.append(int(r.headers["ratelimit-remaining"]))
        # Each request sees what the earlier ones reported (cache reads are not counted).
        assert seen == [9999, 9999 - 1234, 9999 - 2 * 1234]


def test_token_quota_refuses_once_spent(servers: Any, make_key: Any, fresh_minute: Any) -> None:
    srv = servers(auth="on")
    key = make_key(srv, "ann", tpm=1000)
    fresh_minute(10)
    with httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=30) as c:
        assert _v1_stream(c, "x [fake: usage_in=900 usage_out=200]").status_code == 200
        refused = c.post("/v1/sessions/s1/messages", json={"content": "more"})
        assert refused.status_code == 429
        assert "1000 tokens per minute (tokens_per_minute)" in refused.json()["error"]["message"]
        # Reading is not spending: unmetered routes still answer.
        assert c.get("/v1/sessions/s1/messages").status_code == 200


def test_cost_quota_uses_the_price_table(servers: Any, make_key: Any) -> None:
    # $1,000 per million tokens: a tenth of a cent each.
    prices = {"test-model": {"input": 1000.0, "output": 1000.0}}
    srv = servers(auth="on", prices=prices)
    key = make_key(srv, "ann", budget_usd_per_day=0.5)
    with httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=30) as c:
        first = _openai_stream(c, "x [fake: usage_in=300 usage_out=150]")
        assert first.headers["ratelimit-limit"] == "500000"  # micro-dollars
        second = _openai_stream(c, "y")
        assert int(second.headers["ratelimit-remaining"]) == 500_000 - 450_000 - 1
        _v1_stream(c, "z [fake: usage_in=100]")
        refused = c.post(COMPLETIONS, json=completion("again"))
        assert refused.status_code == 429
        assert "$0.50 per day (budget_usd_per_day)" in refused.json()["error"]["message"]
        assert "UTC midnight" in refused.json()["error"]["message"]


def test_auth_off_has_no_limits_unless_configured(servers: Any, fresh_minute: Any) -> None:
    plain = servers()
    response = httpx.post(f"{plain.url}/chat", json={"message": "hi"})
    assert response.status_code == 200
    assert "ratelimit-limit" not in response.headers
    limited = servers(limit_rpm=2)
    fresh_minute(10)
    codes = [httpx.get(f"{limited.url}/sessions").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert httpx.get(f"{limited.url}/healthz").status_code == 200


def test_configured_limits_apply_to_keys_without_their_own(
    servers: Any, make_key: Any, fresh_minute: Any
) -> None:
    srv = servers(auth="on", limit_rpm=1)
    own = make_key(srv, "ann", rpm=3)
    default = make_key(srv, "bob")
    fresh_minute(10)
    for key, allowed in ((own, 3), (default, 1)):
        codes = [
            httpx.get(f"{srv.url}/sessions", headers={"x-api-key": key}).status_code
            for _ in range(4)
        ]
        assert codes.count(200) == allowed


def test_max_tokens_over_the_ceiling_is_refused_not_clamped(servers: Any) -> None:
    srv = servers(max_tokens=50, max_tokens_ceiling=100)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        over = c.post("/v1/sessions/m/messages", json={"content": "hi", "max_tokens": 101})
        assert over.status_code == 422
        assert (
            over.json()["error"]["message"] == "max_tokens 101 is over this server's ceiling of 100"
        )
        assert c.post("/v1/sessions", json={"max_tokens": 101}).status_code == 422
        openai = c.post(COMPLETIONS, json=completion("hi", max_tokens=101))
        assert openai.status_code == 400
        assert "ceiling of 100" in openai.json()["error"]["message"]
        assert c.post(COMPLETIONS, json=completion("hi", max_tokens=100)).status_code == 200


@pytest.mark.allow_5xx
def test_readiness_checks_the_shared_limit_store(servers: Any, redis_url: str) -> None:
    up = httpx.get(f"{servers(redis_url=redis_url).url}/readyz")
    assert (up.status_code, up.json()["checks"]["limits"]) == (200, "ok: redis")
    down = httpx.get(f"{servers(redis_url='redis://127.0.0.1:1/0').url}/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["limits"].startswith("redis unreachable")


def test_admin_routes_need_auth_on(servers: Any) -> None:
    response = httpx.get(f"{servers().url}/v1/admin/keys")
    assert response.status_code == 403
    assert "CHATD_AUTH=on" in response.json()["error"]["message"]


def test_a_client_that_leaves_mid_stream_is_still_charged(servers: Any, make_key: Any) -> None:
    srv = servers(auth="on")
    key = make_key(srv, "ann", tokens_per_day=10_000)
    text = "x [fake: chunks=20 delay_ms=20 usage_in=700 usage_out=77]"
    with httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=30) as c:
        body = {"content": text, "stream": True}
        with c.stream("POST", "/v1/sessions/d/messages", json=body) as r:
            next(r.iter_bytes())  # the first event, then hang up
        # The turn finishes on its own and settles what the provider reported.
        deadline = time.monotonic() + 10
        while True:
            probe = c.get("/v1/sessions/d/messages").json()["data"]
            if probe and probe[-1]["state"] != "streaming":
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        after = c.post(COMPLETIONS, json=completion("y"))
        assert int(after.headers["ratelimit-remaining"]) == 10_000 - 777 - 1


def _spent(c: httpx.Client) -> bool:
    """Tell whether the key's token quota refuses; the probe is invalid, so it never runs."""
    probe = c.post(COMPLETIONS, json={"model": MODEL, "messages": []})
    assert probe.status_code in (400, 422, 429)
    return probe.status_code == 429


def test_an_abandoned_stateless_stream_is_charged_an_estimate(servers: Any, make_key: Any) -> None:
    srv = servers(auth="on")
    key = make_key(srv, "ann", tokens_per_day=100)
    # Over 1,000 tokens if read to the end; the client takes three chunks of ~75 and leaves.
    body = completion("x [fake: chunks=20 delay_ms=30 words=1000]", stream=True)
    with httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=30) as c:
        with c.stream("POST", COMPLETIONS, json=body) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += '"content":"' in line and '"content":""' not in line
                if seen == 3:
                    break
        deadline = time.monotonic() + 10
        while not _spent(c):
            assert time.monotonic() < deadline, "the abandoned call was never charged"
            time.sleep(0.05)
        refused = c.post(COMPLETIONS, json=completion("more"))
        assert refused.status_code == 429
        assert "tokens_per_day" in refused.json()["error"]["message"]


def test_an_aborted_turn_is_listed_with_an_estimate_and_charged(
    servers: Any, make_key: Any
) -> None:
    srv = servers(auth="on", on_disconnect="abort")
    key = make_key(srv, "ann", tokens_per_day=10_000)
    text = "x [fake: chunks=20 delay_ms=30 words=1000]"
    with httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=30) as c:
        body = {"content": text, "stream": True}
        with c.stream("POST", "/v1/sessions/a/messages", json=body) as r:
            for line in r.iter_lines():
                if line == "event: delta":
                    break  # the first chunk of the reply, then hang up
        deadline = time.monotonic() + 10
        while True:
            turns = c.get("/v1/sessions/a/messages").json()["data"]
            if turns and turns[-1]["state"] != "streaming":
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (turn,) = turns
        usage = turn["usage"]
        assert turn["state"] == "interrupted"
        assert usage["estimated"] is True
        assert usage["input_tokens"] > 0
        assert 0 < usage["output_tokens"] < 1000
        assert c.get("/v1/usage").json()["estimated"] is True
        after = c.post(COMPLETIONS, json=completion("y"))
        spent = usage["input_tokens"] + usage["output_tokens"]
        assert int(after.headers["ratelimit-remaining"]) == 10_000 - spent - 1


def test_a_normal_turn_is_listed_with_the_providers_usage_not_an_estimate(
    servers: Any,
) -> None:
    srv = servers()
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        sent = c.post(
            "/v1/sessions/n/messages", json={"content": "hi [fake: usage_in=9 usage_out=4]"}
        )
        assert sent.json()["usage"]["estimated"] is False
        (turn,) = c.get("/v1/sessions/n/messages").json()["data"]
        assert turn["usage"] == {
            "input_tokens": 9,
            "output_tokens": 4,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "estimated": False,
        }
