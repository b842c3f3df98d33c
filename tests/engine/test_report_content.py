"""With log_content on, reports carry the user's message and the reply; off, never; the turn
wrapper runs each turn's task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from chatd.engine import ChatService, CompletionOptions, TurnOptions
from chatd.types import CallReport, GenerationParams, Message

ServiceFactory = Callable[..., Awaitable[ChatService]]


def reported(service: ChatService) -> list[CallReport]:
    """Attach a list the service's reports go to."""
    reports: list[CallReport] = []
    service.observers.append(reports.append)
    return reports


async def test_reports_carry_no_text_by_default(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic")
    reports = reported(service)
    end = await service.reply("c1", "tell me a secret")
    async for _ in service.complete([Message.user("and another")]):
        pass
    assert end.text
    assert [(r.prompt, r.reply) for r in reports] == [(None, None), (None, None)]


async def test_reports_carry_the_message_and_reply_with_log_content(
    make_service: ServiceFactory,
) -> None:
    service = await make_service("openai", log_content=True)
    reports = reported(service)
    end = await service.reply("c2", "what is the weather")
    options = CompletionOptions(params=GenerationParams(max_tokens=50))
    said = []
    async for event in service.complete([Message.user("hello there")], options):
        said.append(getattr(event, "text", ""))
    turn, completion = reports
    assert (turn.prompt, turn.reply) == ("what is the weather", end.text)
    assert end.text
    assert (completion.prompt, completion.reply) == ("hello there", "".join(said))


async def test_a_continuation_reports_no_prompt(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic", log_content=True)
    reports = reported(service)
    cut = TurnOptions(params=GenerationParams(max_tokens=10))
    await service.reply("c3", "tell me everything [fake: words=40]", cut)
    room = TurnOptions(params=GenerationParams(max_tokens=1000))
    events = [e async for e in service.continue_turn("c3", room)]
    assert events
    assert reports[-1].kind == "continuation"
    assert reports[-1].prompt is None
    assert reports[-1].reply


async def test_the_turn_wrapper_runs_each_turn(make_service: ServiceFactory) -> None:
    service = await make_service("anthropic")
    wrapped: list[str] = []

    async def wrapper(work: Coroutine[Any, Any, None]) -> None:
        wrapped.append(asyncio.current_task().get_name())  # type: ignore[union-attr]
        await work

    service.turn_wrapper = wrapper
    end = await service.reply("c4", "hi")
    assert wrapped == [f"turn-{end.turn_id}"]
