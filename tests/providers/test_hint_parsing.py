"""Retry hints from the upstream, however absurd, become a bounded wait or none (promise 5)."""

from __future__ import annotations

import math
import time

import pytest

from chatd.errors import UpstreamRateLimited, UpstreamUnavailable
from chatd.providers.base import Provider, parse_retry_after
from chatd.providers.retry import RetryPolicy, stream_with_retries
from chatd.types import ChatRequest, Message

ABSURD = ["inf", "-inf", "1e400", "nan", "-5", "9" * 20, "soon", "Wed, 21 Oct 99999 07:28:00 GMT"]
FAR_FUTURE = "Wed, 21 Oct 9999 07:28:00 GMT"
FAR_PAST = "Thu, 01 Jan 1970 00:00:01 GMT"
# The longest wait chatd takes or passes on (chatd.errors.MAX_RETRY_AFTER_S).
MAX_RETRY_AFTER_S = 300


def bounded(wait: float | None) -> bool:
    """Tell whether a parsed hint is absent or a finite wait within the cap."""
    return wait is None or (math.isfinite(wait) and 0 <= wait <= MAX_RETRY_AFTER_S)


def test_any_retry_after_header_parses_to_a_bounded_wait_or_none() -> None:
    for value in [*ABSURD, FAR_FUTURE, FAR_PAST]:
        assert bounded(parse_retry_after({"retry-after": value})), value
        assert bounded(parse_retry_after({"retry-after-ms": value})), value
    assert parse_retry_after({"retry-after": FAR_FUTURE}) == MAX_RETRY_AFTER_S
    assert parse_retry_after({"retry-after": "1e400"}) == MAX_RETRY_AFTER_S
    assert parse_retry_after({"retry-after": FAR_PAST}) == 0
    assert parse_retry_after({"retry-after": "nan"}) is None
    # A nonsense retry-after-ms gives way to a sound retry-after.
    assert parse_retry_after({"retry-after-ms": "nan", "retry-after": "3"}) == 3


def test_a_retry_policy_never_waits_an_unbounded_time() -> None:
    policy = RetryPolicy()
    for hint in (math.inf, -math.inf, math.nan, -5.0, 1e20):
        wait = policy.delay(1, hint)
        assert math.isfinite(wait), hint
        assert 0 <= wait <= MAX_RETRY_AFTER_S, hint


def test_an_upstream_error_keeps_only_a_bounded_hint() -> None:
    assert UpstreamRateLimited("x", retry_after=math.inf).retry_after == MAX_RETRY_AFTER_S
    assert UpstreamUnavailable("x", retry_after=math.nan).retry_after is None
    assert UpstreamUnavailable("x", retry_after=-5).retry_after == 0


@pytest.mark.parametrize("key", ["retry_after", "retry_after_ms"])
async def test_absurd_retry_hints_give_up_soon_with_a_bounded_hint(
    provider: Provider, key: str
) -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_total_s=5)
    for value in ["inf", "1e400", "nan", "-5", "9" * 20, "Wed,%2021%20Oct%209999%2007:28:00%20GMT"]:
        text = f"hi [fake: status=429 {key}={value}]"
        request = ChatRequest(model="m", messages=(Message.user(text),), max_tokens=50)
        began = time.monotonic()
        with pytest.raises(UpstreamRateLimited) as info:
            async for _ in stream_with_retries(provider, request, policy):
                pass
        assert time.monotonic() - began < 5, value
        assert bounded(info.value.retry_after), value
