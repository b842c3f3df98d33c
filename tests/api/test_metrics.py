"""Prometheus /metrics against a real server and the fake upstream: requests by route, turns,
tokens, cost, retries, upstream errors, limit refusals, open streams, the pool, bounded labels."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatd.api.metrics import MAX_VALUES, OTHER, UNMATCHED


class Server(Protocol):
    """What these tests use of the api conftest's running server."""

    url: str


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MESSAGES = "/v1/sessions/{session_id}/messages"
# USD per million tokens, so that the cost counter has something to add.
PRICES = {"test-model": {"input": 3, "output": 15}}


def scrape(server: Server, key: str | None = None) -> Samples:
    """Return every sample /metrics shows, by name and labels."""
    headers = {"x-api-key": key} if key else {}
    response = httpx.get(f"{server.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Add up the samples of a name whose labels include these."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def values_of(samples: Samples, name: str, label: str) -> set[str]:
    """Return the values one label takes in a metric's samples."""
    return {dict(got)[label] for (n, got), _ in samples.items() if n == name and label in dict(got)}


def send(server: Server, sid: str, content: str, **body: Any) -> httpx.Response:
    """Send a /v1 message; a streamed reply is read to its end."""
    return httpx.post(
        f"{server.url}/v1/sessions/{sid}/messages", json={"content": content, **body}, timeout=30
    )


def test_metrics_move_as_scripted_traffic_goes(make_server: Callable[..., Server]) -> None:
    server = make_server(prices=PRICES)
    reply = send(server, "m1", "hello").json()
    completion = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "test-model", "messages": [{"role": "user", "content": "hi there"}]},
        timeout=30,
    ).json()
    httpx.get(f"{server.url}/v1/sessions/m1")
    httpx.get(f"{server.url}/v1/sessions/missing-one")
    samples = scrape(server)

    turns = "chatd_turns_total"
    labels = {"provider": "anthropic", "model": "test-model"}
    assert total(samples, turns, kind="turn", state="complete", **labels) == 1
    assert total(samples, turns, kind="completion", state="complete", **labels) == 1
    input_tokens = reply["usage"]["input_tokens"] + completion["usage"]["prompt_tokens"]
    output_tokens = reply["usage"]["output_tokens"] + completion["usage"]["completion_tokens"]
    assert total(samples, "chatd_tokens_total", kind="input", **labels) == input_tokens
    assert total(samples, "chatd_tokens_total", kind="output", **labels) == output_tokens
    cost = (input_tokens * 3 + output_tokens * 15) / 1e6
    assert total(samples, "chatd_cost_usd_total", **labels) == pytest.approx(cost)
    assert total(samples, "chatd_unpriced_calls_total") == 0
    assert total(samples, "chatd_turn_duration_seconds_count", **labels) == 2
    assert total(samples, "chatd_turn_ttft_seconds_count", **labels) == 2

    requests = "chatd_http_requests_total"
    assert total(samples, requests, route=MESSAGES, method="POST", status="200") == 1
    assert total(samples, requests, route="/v1/chat/completions", status="200") == 1
    one = "/v1/sessions/{session_id}"
    assert total(samples, requests, route=one, method="GET", status="200") == 1
    assert total(samples, requests, route=one, method="GET", status="404") == 1
    duration = "chatd_http_request_duration_seconds_count"
    assert total(samples, duration, route=MESSAGES, method="POST") == 1
    # Nothing failed upstream, nothing was refused, nothing streams now.
    assert total(samples, "chatd_upstream_retries_total") == 0
    assert total(samples, "chatd_upstream_errors_total") == 0
    assert total(samples, "chatd_rate_limit_refusals_total") == 0
    assert total(samples, "chatd_open_streams") == 0
    # The database pool, read as the metrics are scraped: the loop's connection at least.
    assert total(samples, "chatd_db_pool_size") >= 1
    assert total(samples, "chatd_db_pool_checked_out") == 0
    # One process: the client library's own process metrics too.
    assert total(samples, "process_resident_memory_bytes") > 0


def test_streamed_and_buffered_replies_count_the_same(make_server: Callable[..., Server]) -> None:
    server = make_server(prices=PRICES)
    watched = (
        "chatd_turns_total",
        "chatd_tokens_total",
        "chatd_cost_usd_total",
        "chatd_turn_duration_seconds_count",
        "chatd_turn_ttft_seconds_count",
        "chatd_http_requests_total",
        "chatd_http_request_duration_seconds_count",
    )

    def moved(before: Samples, after: Samples) -> dict[Any, float]:
        return {
            key: after[key] - before.get(key, 0)
            for key in after
            if key[0] in watched and after[key] != before.get(key, 0)
        }

    start = scrape(server)
    buffered = send(server, "b1", "the same words [fake: chunks=5]")
    after_buffered = scrape(server)
    streamed = send(server, "b2", "the same words [fake: chunks=5]", stream=True)
    after_streamed = scrape(server)
    assert buffered.status_code == streamed.status_code == 200
    assert "text/event-stream" in streamed.headers["content-type"]
    # Each scrape counts the one before it: leave /metrics itself out.
    first, second = moved(start, after_buffered), moved(after_buffered, after_streamed)
    first = {k: v for k, v in first.items() if ("route", "/metrics") not in k[1]}
    second = {k: v for k, v in second.items() if ("route", "/metrics") not in k[1]}
    assert first == pytest.approx(second)
    assert any(k[0] == "chatd_tokens_total" for k in first)


@pytest.mark.allow_5xx  # the upstream's 400 is a 502 here
def test_a_retried_529_shows_in_retries_and_upstream_errors(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(retry_max_attempts=2, retry_base_delay_s=0.01)
    reply = send(server, "r1", "hi [fake: status=529 fail_times=1]")
    assert reply.json()["state"] == "complete"
    failed = send(server, "r2", "hi [fake: status=400]")
    assert failed.status_code == 502
    samples = scrape(server)
    assert total(samples, "chatd_upstream_retries_total", provider="anthropic") == 1
    errors = "chatd_upstream_errors_total"
    assert total(samples, errors, provider="anthropic", error="UpstreamUnavailable") == 1
    assert total(samples, errors, provider="anthropic", error="UpstreamBadRequest") == 1
    assert total(samples, "chatd_turns_total", kind="turn", state="complete") == 1
    assert total(samples, "chatd_turns_total", kind="turn", state="failed") == 1


def test_limit_refusals_count_by_limit(
    make_server: Callable[..., Server], make_key: Any, fresh_minute: Any
) -> None:
    server = make_server(auth="on")
    admin = make_key(server, "root", admin=True)
    by_minute = make_key(server, "ann", rpm=1)
    by_day = make_key(server, "bob", tokens_per_day=1)
    fresh_minute(10)
    for _ in range(2):
        httpx.get(f"{server.url}/v1/sessions", headers={"x-api-key": by_minute})
    body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    codes = [
        httpx.post(
            f"{server.url}/v1/chat/completions", json=body, headers={"x-api-key": by_day}
        ).status_code
        for _ in range(2)
    ]
    assert codes == [200, 429]
    samples = scrape(server, admin)
    refusals = "chatd_rate_limit_refusals_total"
    assert total(samples, refusals, limit="requests_per_minute") == 1
    assert total(samples, refusals, limit="tokens_per_day") == 1
    assert total(samples, "chatd_http_requests_total", status="429") == 2


@contextmanager
def streaming(server: Server, sid: str, content: str) -> Iterator[list[bytes]]:
    """Run a streamed send in a thread once its first chunk arrived; yield what it read."""
    arrived, read = threading.Event(), []

    def run() -> None:
        url = f"{server.url}/v1/sessions/{sid}/messages"
        with httpx.stream("POST", url, json={"content": content, "stream": True}) as r:
            for chunk in r.iter_bytes():
                read.append(chunk)
                arrived.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert arrived.wait(20), "the stream sent nothing"
        yield read
    finally:
        thread.join(30)


def settle(server: Server, name: str, expected: float) -> float:
    """Scrape until a metric shows the expected value (a stream ends just after its last byte)."""
    deadline = time.monotonic() + 5
    while True:
        found = total(scrape(server), name)
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_open_streams_gauge_is_one_during_a_slow_stream(
    make_server: Callable[..., Server],
) -> None:
    server = make_server()
    with streaming(server, "s1", "slowly now [fake: delay_ms=400 chunks=4]") as read:
        assert total(scrape(server), "chatd_open_streams") == 1
    assert b"message_end" in b"".join(read)
    assert settle(server, "chatd_open_streams", 0) == 0


def test_labels_stay_bounded_whatever_callers_send(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(300):
            client.get(f"/no/such/path/{i}")
        client.request("PURGE", "/cache")
        extra = 20
        for i in range(MAX_VALUES + extra):
            body = {"model": f"bogus-{i}", "messages": [{"role": "user", "content": "hi"}]}
            client.post("/v1/chat/completions", json=body)
    samples = scrape(server)
    requests = "chatd_http_requests_total"
    assert total(samples, requests, route=UNMATCHED, method="GET") == 300
    assert total(samples, requests, route=UNMATCHED, method="OTHER") == 1
    routes = values_of(samples, requests, "route")
    assert not [r for r in routes if r.startswith("/no/")]
    models = values_of(samples, "chatd_turns_total", "model")
    assert len(models) == MAX_VALUES + 1
    assert OTHER in models
    assert total(samples, "chatd_turns_total", kind="completion") == MAX_VALUES + extra
    assert total(samples, "chatd_turns_total", model=OTHER) == extra
    for name in ("chatd_tokens_total", "chatd_turn_duration_seconds_count"):
        assert len(values_of(samples, name, "model")) <= MAX_VALUES + 1
