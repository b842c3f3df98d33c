"""Continuing a reply cut at max_tokens: one turn, one reply, asked for as each provider says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anthropic
import pytest

from chatd.engine import ChatService, TurnOptions
from chatd.errors import NotFound, NothingToContinue, SessionBusy, UpstreamBadRequest
from chatd.providers.openai_compat import CONTINUE_PROMPT
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import (
    GenerationParams,
    Message,
    Role,
    StopReason,
    TextDelta,
    TurnEnded,
    TurnEvent,
    TurnRecord,
    TurnStarted,
    TurnState,
    Usage,
    UsageEvent,
)

ServiceFactory = Callable[..., Awaitable[ChatService]]

# The fake cuts its reply at max_tokens words; `words=40` makes it long enough to be cut.
CUT = GenerationParams(max_tokens=10)
ROOM = GenerationParams(max_tokens=1000)
ASK = "tell me everything [fake: words=40]"


async def run(service: ChatService, session: str, text: str, **opts: Any) -> list[TurnEvent]:
    """Run a turn to the end and return its events."""
    return [e async for e in service.turn(session, text, TurnOptions(**opts))]


async def go_on(service: ChatService, session: str = "s1", **opts: Any) -> list[TurnEvent]:
    """Continue the session's last reply to the end and return the events."""
    return [e async for e in service.continue_turn(session, TurnOptions(**opts))]


def ended(events: list[TurnEvent]) -> TurnEnded:
    """Return the final event, checking it is last and unique."""
    assert isinstance(events[-1], TurnEnded)
    assert sum(isinstance(e, TurnEnded) for e in events) == 1
    return events[-1]


def said(events: list[TurnEvent]) -> str:
    """Return the text the events streamed."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def truncate(service: ChatService, text: str = ASK, session: str = "s1") -> TurnEnded:
    """Run a turn whose reply is cut at max_tokens."""
    end = ended(await run(service, session, text, params=CUT))
    assert end.state is TurnState.TRUNCATED
    return end


def sent(fake: FakeUpstream, index: int = -1) -> list[dict[str, Any]]:
    """Return the messages of a recorded model call, system messages left out."""
    return [m for m in fake.requests[index].body["messages"] if m["role"] != "system"]


def kind(service: ChatService) -> str:
    """Return the name of the service's provider: anthropic or openai."""
    return service.providers.get().name


class Charged:
    """A usage sink that keeps what it was charged."""

    def __init__(self) -> None:
        self.charged: list[Usage] = []

    async def __call__(self, usage: Usage, model: str) -> None:
        """Keep the usage."""
        self.charged.append(usage)


async def test_a_continued_reply_is_one_turn_whose_text_is_both_parts(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    first = await truncate(service)
    sink = Charged()
    events = await go_on(service, params=ROOM, usage_sink=sink)
    assert isinstance(events[0], TurnStarted)
    assert events[0].turn_id == first.turn_id
    end = ended(events)
    more = said(events)
    assert (end.turn_id, end.state, end.stop_reason) == (
        first.turn_id,
        TurnState.COMPLETE,
        StopReason.END_TURN,
    )
    assert more
    assert end.text == first.text + more
    # The model was asked to go on from the cut reply, as its provider documents.
    if kind(service) == "anthropic":
        # A prefill: the reply so far is the final message, and the model continues it.
        assert sent(fake_upstream) == [
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": first.text},
        ]
    else:
        # No prefill in Chat Completions: a user message asks for the rest, sent this once.
        assert sent(fake_upstream) == [
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
    [turn] = await service.store.list_turns("local", "s1")
    assert turn.state is TurnState.COMPLETE
    assert [(m.role, m.text) for m in turn.messages] == [
        (Role.USER, ASK),
        (Role.ASSISTANT, first.text),
        (Role.ASSISTANT, more),
    ]
    # The turn's usage is both parts'; only the continuation's call is charged now.
    [call] = [e.usage for e in events if isinstance(e, UsageEvent)]
    assert sink.charged == [call]
    assert turn.usage == end.usage == first.usage + call
    assert turn.error is None


async def test_the_next_turn_sends_the_continued_reply_as_one_assistant_message(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    await truncate(service)
    whole = ended(await go_on(service, params=ROOM)).text
    after = ended(await run(service, "s1", "and then?"))
    assert after.state is TurnState.COMPLETE
    assert [(m["role"], m["content"]) for m in sent(fake_upstream)] == [
        ("user", ASK),
        ("assistant", whole),
        ("user", "and then?"),
    ]
    assert "to 3 messages" in after.text


async def test_a_reply_cut_again_is_continued_again_from_all_of_it(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    first = await truncate(service)
    second = ended(await go_on(service, params=CUT))
    assert second.state is TurnState.TRUNCATED
    assert second.text.startswith(first.text)
    assert len(second.text) > len(first.text)
    third = ended(await go_on(service, params=ROOM))
    assert third.state is TurnState.COMPLETE
    assert third.text.startswith(second.text)
    # The reply so far went out as one assistant message, both of its stored parts joined.
    assert sent(fake_upstream)[1] == {"role": "assistant", "content": second.text}
    [turn] = await service.store.list_turns("local", "s1")
    assert len(turn.messages) == 4
    assert "".join(m.text for m in turn.messages[1:]) == third.text


async def test_only_a_truncated_last_reply_can_be_continued_and_a_refusal_changes_nothing(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    with pytest.raises(NotFound):
        await go_on(service, "nowhere")
    await service.store.ensure_session("local", "empty")
    with pytest.raises(NothingToContinue, match="no reply to continue"):
        await go_on(service, "empty")
    await truncate(service)
    ended(await run(service, "s1", "hello"))
    before = await service.store.list_turns("local", "s1")
    calls = len(fake_upstream.requests)
    with pytest.raises(NothingToContinue, match="is complete, not truncated"):
        await go_on(service, params=ROOM)
    assert await service.store.list_turns("local", "s1") == before
    assert len(fake_upstream.requests) == calls
    # Nothing is held: the session takes a new turn at once.
    ended(await run(service, "s1", "again"))


async def test_a_continuation_is_refused_while_a_reply_streams(service: ChatService) -> None:
    await truncate(service)
    tried = False
    async for event in service.turn("s1", "slow [fake: chunks=4 delay_ms=50]"):
        if isinstance(event, TextDelta) and not tried:
            tried = True
            with pytest.raises(SessionBusy):
                await go_on(service)
    turns = await service.store.list_turns("local", "s1")
    assert [t.state for t in turns] == [TurnState.TRUNCATED, TurnState.COMPLETE]


async def test_a_continuation_that_fails_keeps_the_first_part_in_context(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    first = await truncate(service)
    before = await service.store.context_messages("local", "s1")
    # The prompt no longer fits the model's window: the call is refused, nothing comes back.
    fake_upstream.app.context_limit = 5
    try:
        with pytest.raises(UpstreamBadRequest):
            await go_on(service, params=ROOM)
    finally:
        fake_upstream.app.context_limit = None
    [turn] = await service.store.list_turns("local", "s1")
    assert turn.state is TurnState.TRUNCATED
    assert turn.stop_reason is StopReason.MAX_TOKENS
    assert [m.text for m in turn.messages] == [ASK, first.text]
    assert (turn.error or "").startswith("the continuation failed: ")
    assert await service.store.context_messages("local", "s1") == before
    # It can be continued again once the trouble is over.
    end = ended(await go_on(service, params=ROOM))
    assert end.state is TurnState.COMPLETE
    assert (await service.store.list_turns("local", "s1"))[0].error is None


async def test_a_stopped_continuation_keeps_what_it_said_and_goes_on_from_there(
    make_service: ServiceFactory, fake_upstream: FakeUpstream
) -> None:
    service = await make_service("anthropic")
    first = await truncate(service, "tell me [fake: words=40 chunks=8 delay_ms=30]")
    stream = service.continue_turn("s1", TurnOptions(params=ROOM, on_disconnect="abort"))
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    await stream.aclose()  # type: ignore[attr-defined]
    [turn] = await service.store.list_turns("local", "s1")
    assert turn.state is TurnState.TRUNCATED
    assert turn.error == "the continuation was stopped: the reply was stopped before it finished"
    partial = turn.messages[2].text
    assert partial
    assert turn.messages[1].text == first.text
    context = await service.store.context_messages("local", "s1")
    assert [m.text for m in context] == [m.text for m in turn.messages]
    end = ended(await go_on(service, params=ROOM))
    assert end.state is TurnState.COMPLETE
    assert end.text.startswith(first.text + partial)
    prefill = sent(fake_upstream)[-1]
    assert prefill == {"role": "assistant", "content": (first.text + partial).rstrip()}


async def test_a_prefill_never_ends_in_whitespace(
    make_service: ServiceFactory, fake_upstream: FakeUpstream
) -> None:
    service = await make_service("anthropic")
    # Anthropic refuses a final assistant message that ends in whitespace (so does the fake).
    client = anthropic.AsyncAnthropic(base_url=fake_upstream.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="trailing whitespace"):
        await client.messages.create(
            model="test-model",
            max_tokens=50,
            messages=[
                {"role": "user", "content": "list them"},
                {"role": "assistant", "content": "The list:\n\n"},
            ],
        )
    await client.close()
    cut = TurnRecord(
        id="t",
        session_id="s1",
        seq=1,
        state=TurnState.TRUNCATED,
        messages=(Message.user("list them"), Message.assistant("The list:\n\n")),
        stop_reason=StopReason.MAX_TOKENS,
        usage=Usage(5, 3),
        model="test-model",
        provider="anthropic",
        created_at=datetime.now(UTC),
    )
    await service.store.import_session(
        "local", "s1", system_prompt=None, params=GenerationParams(), provider=None, turns=[cut]
    )
    end = ended(await go_on(service, params=ROOM))
    assert end.state is TurnState.COMPLETE
    assert sent(fake_upstream)[-1] == {"role": "assistant", "content": "The list:"}
    [turn] = await service.store.list_turns("local", "s1")
    # The stored first part is kept as it was; the continuation follows it.
    assert turn.messages[1].text == "The list:\n\n"
    assert end.text == "The list:\n\n" + turn.messages[2].text


async def test_a_continuation_keeps_the_sizes_the_first_part_learned(service: ChatService) -> None:
    ended(await run(service, "s1", "hello"))
    await truncate(service)
    before = (await service.store.list_turns("local", "s1"))[1].tokens
    assert None not in before  # the user message's and the first part's, as counted
    ended(await go_on(service, params=ROOM))
    after = (await service.store.list_turns("local", "s1"))[1].tokens
    # The first part's sizes stay; the continuation's own is added after them.
    assert after[:2] == before
    assert len(after) == 3
