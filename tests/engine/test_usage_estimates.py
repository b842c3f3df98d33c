"""Every upstream call is charged: where its provider's usage never came, an estimate, marked.

docs/promises.md, promise 6.
"""

from __future__ import annotations

from typing import Any

import pytest

from chatd.engine import ChatService, CompletionOptions, TurnOptions
from chatd.engine.run import Progress
from chatd.errors import UpstreamError
from chatd.tokens import CallUsage, estimate_usage
from chatd.types import (
    ChatRequest,
    Message,
    StopEvent,
    StopReason,
    TextDelta,
    ToolResultEvent,
    TurnRecord,
    TurnState,
    Usage,
    UsageEvent,
)

SLOW = "[fake: chunks=20 delay_ms=30 words=200]"


class Charged:
    """A usage sink that keeps what it was told, as a key's quota would be charged."""

    def __init__(self) -> None:
        self.calls: list[tuple[Usage, str]] = []

    async def __call__(self, usage: Usage, model: str) -> None:
        """Keep one charge."""
        self.calls.append((usage, model))

    @property
    def total(self) -> Usage:
        """Return everything charged."""
        return sum((u for u, _ in self.calls), Usage())


async def last_turn(service: ChatService, session: str) -> TurnRecord:
    """Return the session's newest stored turn."""
    return (await service.store.list_turns("local", session))[-1]


async def leave_when(stream: Any, deltas_after_tools: int = 0) -> None:
    """Read until a text chunk (one that follows a tool result, if asked), then hang up."""
    tool_results = 0
    async for event in stream:
        if isinstance(event, ToolResultEvent):
            tool_results += 1
        if isinstance(event, TextDelta) and tool_results >= deltas_after_tools:
            break
    await stream.aclose()


async def test_an_aborted_turn_is_stored_and_charged_an_estimated_usage(
    service: ChatService,
) -> None:
    charged = Charged()
    options = TurnOptions(on_disconnect="abort", usage_sink=charged)
    await leave_when(service.turn("s", f"hello {SLOW}", options))
    turn = await last_turn(service, "s")
    assert turn.state is TurnState.INTERRUPTED
    assert turn.usage.estimated
    assert turn.usage.input_tokens > 0
    assert turn.usage.output_tokens > 0
    # What arrived before the hang-up, not the whole reply the model was asked for.
    assert turn.usage.output_tokens < 200
    assert charged.calls == [(turn.usage, "test-model")]


@pytest.mark.parametrize("fault", ["drop_after=2", "stream_error_after=2"])
async def test_a_turn_whose_stream_breaks_after_output_is_stored_failed_with_an_estimate(
    service: ChatService, fault: str
) -> None:
    charged = Charged()
    with pytest.raises(UpstreamError):
        await service.reply("s", f"hi [fake: chunks=4 {fault}]", TurnOptions(usage_sink=charged))
    turn = await last_turn(service, "s")
    assert turn.state is TurnState.FAILED
    assert turn.usage.estimated
    assert turn.usage.input_tokens > 0
    assert turn.usage.output_tokens > 0
    assert charged.total == turn.usage


async def test_a_turn_that_fails_before_any_output_is_not_charged(service: ChatService) -> None:
    charged = Charged()
    with pytest.raises(UpstreamError):
        await service.reply("s", "hi [fake: status=400]", TurnOptions(usage_sink=charged))
    turn = await last_turn(service, "s")
    assert turn.state is TurnState.FAILED
    assert turn.usage == Usage()
    assert charged.total == Usage()


async def test_a_normal_turn_keeps_the_providers_exact_usage(service: ChatService) -> None:
    charged = Charged()
    text = "hi [fake: usage_in=123 usage_out=45]"
    end = await service.reply("s", text, TurnOptions(usage_sink=charged))
    assert end.usage == Usage(123, 45)
    assert not end.usage.estimated
    assert (await last_turn(service, "s")).usage == Usage(123, 45)
    assert charged.calls == [(Usage(123, 45), "test-model")]


async def test_a_tool_turn_cut_in_its_second_round_keeps_the_first_rounds_report(
    service: ChatService,
) -> None:
    charged = Charged()
    text = "time? [fake: tool=current_time usage_in=500 usage_out=7 chunks=20 delay_ms=30]"
    options = TurnOptions(tools=("current_time",), on_disconnect="abort", usage_sink=charged)
    await leave_when(service.turn("s", text, options), deltas_after_tools=1)
    turn = await last_turn(service, "s")
    assert turn.state is TurnState.INTERRUPTED
    assert turn.usage.estimated
    # Round one as reported (500 in), round two an estimate of a short request.
    assert 500 < turn.usage.input_tokens < 1000
    assert turn.usage.output_tokens > 7
    assert charged.total == turn.usage


async def test_an_abandoned_stateless_completion_is_charged_an_estimate(
    service: ChatService,
) -> None:
    charged = Charged()
    options = CompletionOptions(usage_sink=charged)
    await leave_when(service.complete([Message.user(f"hello {SLOW}")], options))
    ((usage, model),) = charged.calls
    assert model == "test-model"
    assert usage.estimated
    assert usage.input_tokens > 0
    assert 0 < usage.output_tokens < 200


async def test_a_stateless_completion_keeps_the_providers_exact_usage(
    service: ChatService,
) -> None:
    charged = Charged()
    messages = [Message.user("hi [fake: usage_in=123 usage_out=45]")]
    events = [e async for e in service.complete(messages, CompletionOptions(usage_sink=charged))]
    assert isinstance(events[-1], StopEvent)
    assert charged.calls == [(Usage(123, 45), "test-model")]
    assert not charged.calls[0][0].estimated


def test_a_round_whose_usage_came_keeps_it_and_a_cut_one_is_estimated() -> None:
    request = ChatRequest("m", (Message.user("x" * 400),), max_tokens=100)
    progress = Progress()
    progress.call = CallUsage(request)
    for event in (TextDelta("hi"), UsageEvent(Usage(7, 3)), StopEvent(StopReason.TOOL_USE)):
        progress.call.see(event)
    progress.end_call(worked=True)
    progress.call = CallUsage(request)
    progress.call.see(TextDelta("y" * 40))
    progress.end_call(worked=False)
    assert progress.usage == Usage(7, 3) + estimate_usage(request, 40)
    assert progress.usage == Usage(7 + 100 + 4, 3 + 10, estimated=True)


def test_a_call_that_failed_before_output_is_not_estimated_but_a_stopped_one_is() -> None:
    request = ChatRequest("m", (Message.user("x" * 400),), max_tokens=100)
    assert CallUsage(request).total(worked=False) == Usage()
    assert CallUsage(request).total(worked=True) == Usage(104, 0, estimated=True)
