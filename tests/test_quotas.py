"""The limit policy on both backends (process memory, a real Redis): atomic admission,
reservations settled with reported usage, costs from the price table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from chatd.keys import KeyLimits
from chatd.prices import MICRO, Price, PriceTable, load_prices
from chatd.quotas import COST, RPM, TPD, TPM, Limiter, LimiterUnavailable, open_limiter
from chatd.types import Usage

PRICES = PriceTable({"m": Price(input=1.0, output=2.0)})  # USD per million tokens


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    """Yield a limiter on each backend, with empty counters."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    opened = open_limiter(url, PRICES)
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_a_burst_admits_at_most_the_limit(limiter: Limiter) -> None:
    limits = KeyLimits(rpm=7)
    results = await asyncio.gather(*(limiter.admit("k", limits, metered=False) for _ in range(50)))
    admitted = [statuses for statuses, _ in results if not statuses[0].exceeded]
    assert len(admitted) == 7
    assert sorted(s[0].remaining for s in admitted) == list(range(7))
    refused = [statuses[0] for statuses, _ in results if statuses[0].exceeded]
    assert all(s.kind is RPM and s.remaining == 0 and 0 < s.reset_s <= 60 for s in refused)


async def test_keys_are_counted_apart(limiter: Limiter) -> None:
    limits = KeyLimits(rpm=1)
    assert not (await limiter.admit("a", limits, metered=False))[0][0].exceeded
    assert not (await limiter.admit("b", limits, metered=False))[0][0].exceeded
    assert (await limiter.admit("a", limits, metered=False))[0][0].exceeded


async def test_no_limits_means_no_counting(limiter: Limiter) -> None:
    assert await limiter.admit("k", KeyLimits(), metered=True) == ([], None)


async def test_token_quota_spends_reported_usage(limiter: Limiter) -> None:
    limits = KeyLimits(tpm=1000, tokens_per_day=1500)
    statuses, charge = await limiter.admit("k", limits, metered=True)
    assert charge is not None
    # One unit is held while the call runs.
    assert [(s.kind, s.remaining) for s in statuses] == [(TPM, 999), (TPD, 1499)]
    await charge(Usage(input_tokens=600, output_tokens=300, cache_read_tokens=5000), "m")
    statuses, charge = await limiter.admit("k", limits, metered=True)
    assert [(s.kind, s.remaining) for s in statuses] == [(TPM, 99), (TPD, 599)]
    assert charge is not None
    # The second call overshoots the minute's quota: only calls already in flight can.
    await charge(Usage(input_tokens=200, output_tokens=100), "m")
    statuses, charge = await limiter.admit("k", limits, metered=True)
    assert charge is None
    assert [(s.kind, s.exceeded) for s in statuses] == [(TPM, True), (TPD, False)]
    # The refusal held nothing: the day's count is what was used.
    statuses, _ = await limiter.admit("k", KeyLimits(tokens_per_day=1500), metered=True)
    assert statuses[0].remaining == 1500 - 1200 - 1


async def test_a_burst_against_a_nearly_spent_quota_is_bounded(limiter: Limiter) -> None:
    limits = KeyLimits(tokens_per_day=100)
    _, charge = await limiter.admit("k", limits, metered=True)
    assert charge is not None
    await charge(Usage(input_tokens=95), "m")
    results = await asyncio.gather(*(limiter.admit("k", limits, metered=True) for _ in range(50)))
    # Each admitted call holds a unit until it settles: five were left, five get in.
    assert sum(1 for _, c in results if c is not None) == 5


async def test_release_gives_an_unused_reservation_back(limiter: Limiter) -> None:
    limits = KeyLimits(tokens_per_day=10)
    _, charge = await limiter.admit("k", limits, metered=True)
    assert charge is not None
    await charge.release()
    await charge.release()
    statuses, charge = await limiter.admit("k", limits, metered=True)
    assert statuses[0].remaining == 9
    assert charge is not None
    # Usage reported after the release (a turn outliving its request) still counts in full.
    await charge.release()
    await charge(Usage(input_tokens=4), "m")
    statuses, _ = await limiter.admit("k", limits, metered=True)
    assert statuses[0].remaining == 10 - 4 - 1


async def test_cost_quota_uses_the_price_table(limiter: Limiter) -> None:
    limits = KeyLimits(budget_usd_per_day=0.01)  # 10,000 micro-dollars
    statuses, charge = await limiter.admit("k", limits, metered=True)
    assert (statuses[0].kind, statuses[0].limit) == (COST, 10_000)
    assert charge is not None
    # 1,000 in at $1/M + 2,000 out at $2/M = $0.005.
    await charge(Usage(input_tokens=1000, output_tokens=2000), "m")
    statuses, charge = await limiter.admit("k", limits, metered=True)
    assert statuses[0].remaining == 10_000 - 5_000 - 1
    assert charge is not None
    await charge(Usage(input_tokens=5000, output_tokens=1000), "m")
    statuses, charge = await limiter.admit("k", limits, metered=True)
    assert charge is None
    assert statuses[0].exceeded
    assert "$0.01 per day (budget_usd_per_day)" in statuses[0].describe()
    assert "UTC midnight" in statuses[0].describe()


async def test_unmetered_requests_spend_no_token_quota(limiter: Limiter) -> None:
    limits = KeyLimits(rpm=10, tokens_per_day=1)
    statuses, charge = await limiter.admit("k", limits, metered=False)
    assert ([s.kind for s in statuses], charge) == ([RPM], None)


async def test_an_unreachable_redis_refuses_with_503() -> None:
    limiter = open_limiter("redis://127.0.0.1:1/0", PRICES)
    try:
        with pytest.raises(LimiterUnavailable) as caught:
            await limiter.admit("k", KeyLimits(rpm=1), metered=False)
        assert caught.value.status == 503
    finally:
        await limiter.aclose()


def test_price_lookup_and_cost(caplog: pytest.LogCaptureFixture) -> None:
    table = load_prices({"test-model": {"input": 3.0, "output": 15.0}})
    assert table.find("claude-sonnet-4-5-20250929") == table.find("claude-sonnet-4-5")
    assert table.find("anthropic/claude-haiku-4-5") is not None
    assert table.find("gpt-4o-mini") != table.find("gpt-4o")
    assert table.micro_usd("test-model", Usage(1_000_000, 1_000_000)) == 18 * MICRO
    # OpenAI counts cached tokens inside the prompt: they are not charged twice.
    gpt = table.find("gpt-4o")
    assert gpt is not None
    assert gpt.micro_usd(Usage(input_tokens=1000, cache_read_tokens=1000)) == 1.25 * 1000
    with caplog.at_level(logging.WARNING, "chatd.prices"):
        assert table.micro_usd("mystery", Usage(1000, 1000)) == 0
        assert table.micro_usd("mystery", Usage(1000, 1000)) == 0
    assert [r.getMessage() for r in caplog.records].count(
        "no price known for model 'mystery': its calls count as costing 0"
    ) == 1
