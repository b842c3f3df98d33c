"""Any retry hint an upstream sends: a clear 429/503 with a small Retry-After, or one end event.

Promise 5: upstream trouble never reaches the client raw, whatever the upstream's `retry-after`
or `retry-after-ms` says (infinity, not a number, negative, 20 digits, dates far off).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import connect_sse

from chatd.api.encoders import encode, ndjson_failure, sse_failure, text_failure
from chatd.errors import UpstreamRateLimited
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import TurnEvent, TurnStarted

FUTURE = "Wed,%2021%20Oct%209999%2007:28:00%20GMT"
PAST = "Thu,%2001%20Jan%201970%2000:00:01%20GMT"
NO_CALENDAR = "Wed,%2021%20Oct%2099999%2007:28:00%20GMT"
NONSENSE = ["inf", "-inf", "1e400", "nan", "-5", "9" * 20, FUTURE, PAST, NO_CALENDAR, "soon"]
HINTS = [f"{key}={value}" for key in ("retry_after", "retry_after_ms") for value in NONSENSE]
MAX_HINT_S = 300


@pytest.fixture(scope="module", params=["anthropic", "openai"])
def hinted(
    request: pytest.FixtureRequest,
    start_server: Any,
    _fake_upstream_server: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """Yield a chatd on each SDK provider, pointed at the fake upstream, with no retries."""
    db = tmp_path_factory.mktemp("hints") / "chatd.db"
    if request.param == "anthropic":
        overrides: dict[str, Any] = {}
    else:
        overrides = {"provider": "openai-compatible", "base_url": _fake_upstream_server.url + "/v1"}
    with start_server(db, **overrides) as started:
        yield started


@pytest.fixture
def http(hinted: Any) -> Iterator[httpx.Client]:
    """Yield a client of the hinted server."""
    with httpx.Client(base_url=hinted.url, timeout=30) as c:
        yield c


def assert_sane_wait(value: object) -> None:
    """Check a wait told to the client is a small non-negative whole number of seconds."""
    text = str(value)
    assert text.isdigit(), text
    assert 0 <= int(text) <= MAX_HINT_S


def assert_clear_refusal(response: httpx.Response) -> None:
    """Check a JSON route answered 429/503 with a sane Retry-After."""
    assert response.status_code in (429, 503), response.text
    assert_sane_wait(response.headers["retry-after"])


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.allow_5xx
def test_compat_chat_answers_any_retry_hint_with_a_sane_retry_after(
    http: httpx.Client, status: int
) -> None:
    for hint in HINTS:
        message = f"x [fake: status={status} {hint}]"
        response = http.post("/chat", json={"message": message, "session_id": "hint-chat"})
        assert_clear_refusal(response)
        assert response.json()["detail"]


def test_v1_send_answers_any_retry_hint_with_a_sane_retry_after(http: httpx.Client) -> None:
    for hint in HINTS:
        body = {"content": f"x [fake: status=429 {hint}]"}
        response = http.post("/v1/sessions/hint-v1/messages", json=body)
        assert_clear_refusal(response)
        assert response.json()["error"]["type"] == "upstream_rate_limited"


@pytest.mark.allow_5xx
def test_completions_answer_any_retry_hint_with_a_sane_retry_after(http: httpx.Client) -> None:
    for hint in HINTS:
        for session in ({}, {"x-chatd-session": "hint-openai"}):
            messages = [{"role": "user", "content": f"x [fake: status=529 {hint}]"}]
            body = {"model": "test-model", "messages": messages}
            response = http.post("/v1/chat/completions", json=body, headers=session)
            assert_clear_refusal(response)
            assert response.json()["error"]["code"] == "upstream_unavailable"


def test_every_stream_ends_with_one_error_whatever_the_retry_hint(http: httpx.Client) -> None:
    for hint in HINTS:
        body = {"content": f"x [fake: status=429 {hint}]", "stream": True}
        with connect_sse(http, "POST", "/v1/sessions/hint-sse/messages", json=body) as source:
            sse = list(source.iter_sse())
        ends = [e for e in sse if e.event in ("message_end", "error")]
        assert [e.event for e in ends] == ["error"], hint
        assert sse[-1] is ends[0]
        assert_sane_wait(ends[0].json()["retry_after"])

        response = http.post("/chat/hint-ndjson", json={"message": f"x [fake: status=503 {hint}]"})
        lines = [orjson.loads(line) for line in response.text.splitlines()]
        assert [line for line in lines if "error" in line] == [lines[-1]], hint
        assert "503" in lines[-1]["error"]

        body = {"message": f"x [fake: status=429 {hint}]", "session_id": "hint-text"}
        text = http.post("/chat-stream", json=body).text
        assert text.splitlines()[-1].startswith("[error] "), hint

        messages = [{"role": "user", "content": f"x [fake: chunks=4 stream_error_after=1 {hint}]"}]
        completion = {"model": "test-model", "messages": messages, "stream": True}
        chunks = http.post("/v1/chat/completions", json=completion).text.split("\n\n")
        last = [c for c in chunks if c.strip()][-1]
        assert "error" in orjson.loads(last.removeprefix("data: ")), hint


async def _failing(error: Exception) -> Iterator[TurnEvent]:  # type: ignore[misc]
    raise error
    yield


@pytest.mark.parametrize("failure", [sse_failure, ndjson_failure, text_failure])
async def test_a_stream_ends_with_its_error_even_when_the_error_cannot_be_encoded(
    failure: object,
) -> None:
    # An upstream's message with a lone surrogate, and an infinite hint set after the fact.
    error = UpstreamRateLimited("rate limited: \ud800 <- no such character")
    error.retry_after = float("inf")
    events = _failing(error)
    chunks = [c async for c in encode(TurnStarted("s", "t"), events, lambda e: None, failure)]  # type: ignore[arg-type]
    assert len(chunks) == 1
    last = chunks[0]
    assert b"error" in last
    last.decode("utf-8")
