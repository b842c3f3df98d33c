"""What turns cost, stored with them, on both databases and both SDK providers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from chatd.engine import ChatService, TurnOptions
from chatd.errors import TurnDiscarded
from chatd.prices import Price, PriceTable
from chatd.testing.fake_upstream import FakeUpstream, RecordedRequest
from chatd.types import (
    GenerationParams,
    TextDelta,
    TurnEnded,
    TurnState,
    Usage,
    UsageLine,
    UsageQuery,
)

ServiceFactory = Callable[..., Awaitable[ChatService]]
USER = "local"
PRICE = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)
PRICES = PriceTable({"test-model": PRICE})
EVER = UsageQuery(datetime(2000, 1, 1, tzinfo=UTC), None, USER, "day")


def charged(request: RecordedRequest, provider: str) -> Usage:
    """Return the usage the fake reported for one call, as chatd counts it."""
    used = request.usage
    return Usage(
        used["input_tokens"],
        used["output_tokens"],
        used.get("cache_read", 0),
        used.get("cache_write", 0),
    )


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_turn_stores_what_its_usage_cost_at_the_price_tables_rates(
    make_service: ServiceFactory, fake_upstream: FakeUpstream, kind: str
) -> None:
    service = await make_service(kind, prices=PRICES)
    end = await service.reply("s", "hello [fake: usage_in=1234 usage_out=567]")
    used = charged(fake_upstream.requests[-1], kind)
    assert (used.input_tokens, used.output_tokens) == (1234, 567)
    expected = PRICE.micro_usd(used)
    assert expected == 1234 * 3 + 567 * 15
    assert end.cost_micro_usd == expected
    (turn,) = await service.store.list_turns(USER, "s")
    assert turn.cost_micro_usd == expected
    info = await service.store.get_session(USER, "s")
    assert info is not None
    assert info.cost_micro_usd == expected
    # A replay answers with the stored cost.
    again = await service.reply("s", "x", TurnOptions(idempotency_key="k"))
    replayed = await service.reply("s", "x", TurnOptions(idempotency_key="k"))
    assert replayed.cost_micro_usd == again.cost_micro_usd is not None


async def test_a_turn_of_a_model_with_no_price_has_no_cost(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic", prices=PriceTable({"other": PRICE}))
    end = await service.reply("s", "hello")
    assert end.cost_micro_usd is None
    (turn,) = await service.store.list_turns(USER, "s")
    assert turn.cost_micro_usd is None
    (line,) = await service.store.usage_report(EVER)
    assert (line.cost_micro_usd, line.unpriced, line.turns) == (0, 1, 1)


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_continued_turn_costs_both_of_its_parts(
    make_service: ServiceFactory, fake_upstream: FakeUpstream, kind: str
) -> None:
    service = await make_service(kind, prices=PRICES)
    first = await service.reply(
        "s",
        "tell me everything [fake: words=40]",
        TurnOptions(params=GenerationParams(max_tokens=10)),
    )
    assert first.state is TurnState.TRUNCATED
    part_one = PRICE.micro_usd(charged(fake_upstream.requests[-1], kind))
    assert first.cost_micro_usd == part_one
    events = [e async for e in service.continue_turn("s", TurnOptions())]
    end = events[-1]
    assert isinstance(end, TurnEnded)
    part_two = PRICE.micro_usd(charged(fake_upstream.requests[-1], kind))
    assert end.cost_micro_usd == part_one + part_two
    (turn,) = await service.store.list_turns(USER, "s")
    assert turn.cost_micro_usd == part_one + part_two
    (line,) = await service.store.usage_report(EVER)
    assert (line.turns, line.cost_micro_usd) == (1, part_one + part_two)


async def test_a_reply_stopped_by_its_sessions_deletion_still_counts_what_it_used(
    make_service: ServiceFactory, fake_upstream: FakeUpstream
) -> None:
    service = await make_service("anthropic", prices=PRICES)
    service.observers.append(service.store.record_call)
    await service.reply("s", "hello")
    hello = charged(fake_upstream.requests[-1], "anthropic")
    events = service.turn("s", "a long story [fake: chunks=200 delay_ms=20]")
    async for event in events:
        if isinstance(event, TextDelta):
            break
    ending = asyncio.ensure_future(anext(events))
    assert await service.delete_session(USER, "s")
    with pytest.raises(TurnDiscarded):
        await ending
    assert await service.wait_idle(5)
    lines = await service.store.usage_report(EVER)
    used = UsageLine.total(lines)
    # The first turn moved with its session; the stopped one recorded apart (its input as
    # the stream's start reported it, its output an estimate).
    assert used.turns == 2
    assert used.usage.input_tokens >= 2 * hello.input_tokens
    assert used.usage.output_tokens > hello.output_tokens
    assert used.usage.estimated
    assert used.cost_micro_usd > PRICE.micro_usd(hello)
